//! Both adapters behind one face, for the integration tests that run every scenario through
//! the tower layer and the reqwest middleware (`tests/interop.rs`, `tests/reliability.rs`).
//! Each test binary includes it with `#[path = "support/adapters.rs"] mod adapters;` and uses
//! what it needs.
#![allow(dead_code, reason = "each including test binary uses a different part")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client_auth::{AuthorizationProvider, Error, ReqwestTransport, TokenTransport, TowerTransport};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_reqwest::reqwest_middleware::{self, ClientWithMiddleware};
use client_auth_tower::{AuthorizeLayer, BoxError};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;
pub(crate) type TowerClient =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Bytes>, BoxError>;

pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

/// The token-endpoint transport that goes with `adapter`: the tower side asks the token
/// endpoint through a hyper client (`TowerTransport`), the reqwest side through
/// `ReqwestTransport` (with no proxy, as the builder's default is for loopback).
pub(crate) fn token_transport(adapter: Adapter) -> Arc<dyn TokenTransport> {
    match adapter {
        Adapter::Tower => Arc::new(TowerTransport::<_, Full<Bytes>>::new(http_client())),
        Adapter::Reqwest => Arc::new(
            ReqwestTransport::from_client_builder(reqwest::Client::builder().no_proxy())
                .expect("a reqwest client without TLS settings builds"),
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adapter {
    Tower,
    Reqwest,
}

pub(crate) const ADAPTERS: [Adapter; 2] = [Adapter::Tower, Adapter::Reqwest];

#[derive(Clone)]
pub(crate) enum AuthClient {
    Tower(TowerClient),
    Reqwest(ClientWithMiddleware),
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Status(StatusCode),
    Auth(Error),
    Other(#[allow(dead_code, reason = "read through Debug")] String),
}

impl Outcome {
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether the request got a 200.
    pub(crate) fn is_ok(&self) -> bool {
        self.status() == Some(StatusCode::OK)
    }
}

/// Collects a hyper response body so the tower side has one concrete response type.
async fn collect(
    response: http::Response<hyper::body::Incoming>,
) -> Result<http::Response<Bytes>, BoxError> {
    let (parts, body) = response.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

impl AuthClient {
    /// An adapter sending `provider`'s credentials to `origin` (plain http allowed).
    pub(crate) fn new<P: AuthorizationProvider + Clone>(
        adapter: Adapter,
        provider: P,
        origin: &str,
    ) -> Self {
        match adapter {
            Adapter::Tower => {
                let layer = AuthorizeLayer::builder(provider)
                    .allow_origin(origin)
                    .allow_http(true)
                    .build()
                    .unwrap();
                AuthClient::tower(layer.layer(http_client()))
            }
            Adapter::Reqwest => AuthClient::Reqwest(
                reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                    .with(
                        AuthorizationMiddleware::builder(provider)
                            .allow_origin(origin)
                            .allow_http(true)
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ),
        }
    }

    pub(crate) fn tower<S>(service: S) -> Self
    where
        S: Service<
                http::Request<Full<Bytes>>,
                Response = http::Response<hyper::body::Incoming>,
                Error = BoxError,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        AuthClient::Tower(BoxCloneSyncService::new(service.and_then(collect)))
    }

    pub(crate) async fn get(&self, url: &str) -> Outcome {
        let fut = async {
            match self {
                AuthClient::Tower(service) => {
                    let request = http::Request::get(url).body(Full::default()).unwrap();
                    match service.clone().oneshot(request).await {
                        Ok(response) => Outcome::Status(response.status()),
                        Err(e) => match e.downcast_ref::<Error>() {
                            Some(auth) => Outcome::Auth(auth.clone()),
                            None => Outcome::Other(e.to_string()),
                        },
                    }
                }
                AuthClient::Reqwest(client) => match client.get(url).send().await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.bytes().await;
                        Outcome::Status(status)
                    }
                    Err(reqwest_middleware::Error::Middleware(e)) => {
                        match e.downcast_ref::<Error>() {
                            Some(auth) => Outcome::Auth(auth.clone()),
                            None => Outcome::Other(e.to_string()),
                        }
                    }
                    Err(e) => Outcome::Other(e.to_string()),
                },
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("no answer within 20 s")
    }
}
