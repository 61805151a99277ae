//! A tour of client-auth in a few seconds, against the in-process testkit server:
//!
//! 1. an API key sent as `Authorization: Token KEY`;
//! 2. an OAuth 2.0 client whose access token expires and is refreshed exactly once;
//! 3. a revoked access token recovered by 401 → refresh → retry;
//! 4. a revoked grant ending the session, with the session-state change printed.
//!
//! Run it with `cargo run --example quickstart`.

use std::time::Duration;

use client_auth::{OAuthProvider, SessionState, StaticToken};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{ServerConfig, TestServer};
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Tokens live 2 s here so the demo does not wait an hour; real ones typically live 1 h.
    let server = TestServer::start_with(
        ServerConfig::default()
            .api_key("demo-api-key")
            .access_token_lifetime(Duration::from_secs(2)),
    )
    .await?;
    println!("testkit server on {}", server.base_url());

    // 1. A static API key with the `Token` scheme.
    let api_key = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(StaticToken::api_key("demo-api-key")?)
                .allow_origin(server.base_url())
                .allow_http(true) // loopback test server; real APIs are https
                .build()?,
        )
        .build();
    let status = api_key.get(server.resource_url()).send().await?.status();
    println!("1. API key: GET /api/resource -> {status}");
    assert_eq!(status, 200);

    // 2. OAuth 2.0 refresh_token grant. The refresh token comes from a sign-in.
    let grant = server.issue_grant("alice", None);
    // Clones of a provider share one token cache: one refresh in flight, whoever asks.
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap_or_default())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(2)))
        .build()?;
    let mut session = provider.session();
    let oauth = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(provider.clone())
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()?,
        )
        .build();
    let status = oauth.get(server.resource_url()).send().await?.status();
    println!(
        "2. OAuth: GET with the signed-in token -> {status} (token endpoint calls: {})",
        server.stats().token_calls
    );
    // Past the hard window (the last 0.5 s of a 2 s token), requests wait for one refresh.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let requests = (0..20).map(|_| oauth.get(server.resource_url()).send());
    let statuses: Vec<_> = futures_join_all(requests).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    println!(
        "   after expiry: {ok}/20 concurrent requests OK, token endpoint calls: {} (one refresh)",
        server.stats().token_calls
    );
    assert_eq!(ok, 20);
    assert_eq!(server.stats().token_calls, 1);

    // 3. The server revokes the access token: 401 -> one refresh -> the retry succeeds.
    let current = provider.access_token().await?;
    server.revoke_access_token(current.expose_secret());
    let status = oauth.get(server.resource_url()).send().await?.status();
    println!(
        "3. revoked access token: GET -> {status} after a refresh and one retry (token endpoint calls: {})",
        server.stats().token_calls
    );
    assert_eq!(status, 200);

    // 4. The grant is revoked (the user signed out elsewhere). The next refresh gets
    //    `invalid_grant`: the session ends and the request fails with a typed error.
    session.borrow_and_update();
    server.revoke_all_grants();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let error = oauth
        .get(server.resource_url())
        .send()
        .await
        .err()
        .ok_or("the request should fail once the grant is revoked")?;
    println!("4. revoked grant: {error}");
    session.changed().await?;
    let state = session.borrow().clone();
    println!("   session state is now {state:?}");
    assert!(matches!(state, SessionState::NoSession(_)));
    println!("done");
    Ok(())
}

/// Sends every request concurrently and collects the statuses (0 for a failed request).
async fn futures_join_all<F>(requests: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = Result<reqwest::Response, reqwest_middleware::Error>>
        + Send
        + 'static,
{
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        let status = match task.await {
            Ok(Ok(response)) => response.status().as_u16(),
            _ => 0,
        };
        statuses.push(status);
    }
    statuses
}
