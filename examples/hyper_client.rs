//! The tower layer around a hyper-util client, with an OAuth `client_credentials` provider whose
//! token-endpoint transport is the same hyper client (feature `tower` of `client-auth`).
//!
//! Run it with `cargo run --example hyper_client`.

use std::sync::Arc;

use bytes::Bytes;
use client_auth::{OAuthProvider, TowerTransport};
use client_auth_testkit::TestServer;
use client_auth_tower::{AuthorizeLayer, BoxError};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = TestServer::start().await?;
    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    // The token endpoint is reached through the same hyper client (which, like every
    // token transport, must not follow redirects: hyper-util's client never does).
    let provider = OAuthProvider::client_credentials(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap_or_default())
        .scope("read")
        .transport(Arc::new(TowerTransport::<_, Full<Bytes>>::new(
            hyper_client.clone(),
        )))
        .build()?;

    let mut client = ServiceBuilder::new()
        .layer(
            AuthorizeLayer::builder(provider)
                .allow_origin(server.base_url())
                .allow_http(true) // loopback test server; real APIs are https
                .build()?,
        )
        .service(hyper_client);

    for i in 1..=3 {
        let request = Request::get(server.resource_url()).body(Full::default())?;
        let response = client.ready().await?.call(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("request {i}: {status} {}", String::from_utf8_lossy(&body));
        assert!(status.is_success());
    }
    let stats = server.stats();
    println!(
        "token endpoint calls: {} (one token, cached)",
        stats.token_calls
    );
    assert_eq!(stats.client_credentials_grants, 1);
    Ok(())
}
