//! A tower stack in the supported order: tracing outermost, then `AuthorizeLayer`, then
//! tower-http's `FollowRedirect` with `client_auth_tower::RedirectPolicy`, then the hyper-util
//! client.
//!
//! `AuthorizeLayer` stamps the request the caller sends (the first hop); `RedirectPolicy` keeps
//! the credential on same-origin hops and drops it from the first hop that leaves the origin to
//! the end of the chain. A redirect follower *outside* `AuthorizeLayer` would have every hop
//! stamped: a foreign site could redirect our client to the API and get an authorized request.
//!
//! Run it with `cargo run --example tower_stack`.

use bytes::Bytes;
use client_auth::StaticToken;
use client_auth_testkit::{ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, BoxError, RedirectPolicy};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::trace::TraceLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let api = TestServer::start_with(ServerConfig::default().api_key("stack-key")).await?;
    let other = TestServer::start().await?;

    let mut client = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(
            AuthorizeLayer::builder(StaticToken::api_key("stack-key")?)
                .allow_origin(api.base_url())
                .allow_http(true)
                .build()?,
        )
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // Same-origin redirect: both hops carry the credential.
    let same = format!("{}?to={}", api.url("/redirect"), api.resource_url());
    let response = client
        .ready()
        .await?
        .call(Request::get(same).body(Full::default())?)
        .await?;
    println!("same-origin redirect -> {}", response.status());
    assert!(response.status().is_success());

    // Cross-origin redirect: the other origin never sees our credential.
    let cross = format!("{}?to={}", api.url("/redirect"), other.resource_url());
    let response = client
        .ready()
        .await?
        .call(Request::get(cross).body(Full::default())?)
        .await?;
    let seen = other.seen_requests();
    println!(
        "cross-origin redirect -> {} (the other origin saw Authorization: {:?})",
        response.status(),
        seen.iter()
            .map(|r| r.authorization.is_some())
            .collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|r| r.authorization.is_none()));
    Ok(())
}
