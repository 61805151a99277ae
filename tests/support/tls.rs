//! https on loopback, for scenarios that need real `https://` origins (`any_https_origin()`
//! only ever matches https): a TLS front that terminates TLS for a testkit server, and clients
//! of both adapters that trust the test CA and resolve every name to 127.0.0.1.
//!
//! `tls/server.pem` (key `tls/server.key`) names api.example.com, bucket.storage.example,
//! webhook.attacker.example, localhost and 127.0.0.1 and is signed by `tls/ca.pem`, a CA made
//! for these tests whose private key was discarded once it had signed: the files open nothing
//! but these loopback tests. Include with `#[path = "support/tls.rs"] mod tls;`.
#![allow(dead_code, reason = "each including test binary uses a different part")]

use std::future::{Ready, ready};
use std::iter::{Once, once};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

const CA_PEM: &[u8] = include_bytes!("tls/ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("tls/server.key");

/// The host names the test certificate is valid for.
pub(crate) const HOSTS: [&str; 3] = [
    "api.example.com",
    "bucket.storage.example",
    "webhook.attacker.example",
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Terminates TLS on a free loopback port and forwards every connection, unchanged, to a
/// plain-HTTP backend (a testkit server). Stops accepting when dropped.
pub(crate) struct TlsFront {
    port: u16,
    accept: AbortHandle,
}

impl TlsFront {
    pub(crate) async fn start(backend: SocketAddr) -> Self {
        let certs = CertificateDer::pem_slice_iter(SERVER_PEM)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        })
        .abort_handle();
        Self { port, accept }
    }

    /// `https://{host}:{port}`; `host` is one of [`HOSTS`].
    pub(crate) fn origin(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// `https://{host}:{port}{path}`.
    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        format!("{}{path}", self.origin(host))
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A reqwest client that trusts the test CA only and sends every test host to 127.0.0.1.
pub(crate) fn reqwest_client() -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(CA_PEM).unwrap();
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    HOSTS
        .iter()
        .fold(
            reqwest::Client::builder().tls_certs_only([ca]),
            |b, host| b.resolve(host, loopback),
        )
        .build()
        .unwrap()
}

/// Resolves every name to 127.0.0.1 (the connector keeps the URI's port).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loopback;

impl tower::Service<Name> for Loopback {
    type Response = Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        ready(Ok(once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))))
    }
}

pub(crate) type HttpsClient<B> = Client<HttpsConnector<HttpConnector<Loopback>>, B>;

/// A hyper-util client (http and https) that trusts the test CA only and connects every
/// host to 127.0.0.1.
pub(crate) fn hyper_client<B>() -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA_PEM).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(Loopback);
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}
