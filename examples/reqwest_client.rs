//! The reqwest-middleware middleware with an OAuth `refresh_token` provider: a POST whose access
//! token was revoked is refreshed and retried once, body intact.
//!
//! Run it with `cargo run --example reqwest_client`.

use client_auth::{AuthorizationControl, OAuthProvider};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::TestServer;
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = TestServer::start().await?;
    let grant = server.issue_grant("alice", Some("read"));
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap_or_default())
        .refresh_token(grant.refresh_token.as_str())
        .build()?;

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(provider.clone())
                .allow_origin(server.base_url())
                .allow_http(true) // loopback test server; real APIs are https
                .build()?,
        )
        .build();

    let echo = server.url("/api/echo");
    let response = client.post(&echo).body("first order").send().await?;
    println!(
        "POST (first token fetched on demand) -> {}",
        response.status()
    );

    // The server revokes the token: the next request gets a 401, the middleware refreshes
    // once and replays the request (its body was cloned before the first send).
    server.revoke_access_token(provider.access_token().await?.expose_secret());
    let response = client.post(&echo).body("second order").send().await?;
    let status = response.status();
    let json: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    println!(
        "POST after revocation -> {status}, echoed body {}",
        json["body"]
    );
    assert_eq!(json["body"], "second order");

    // Per request: send one request without credentials.
    let response = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::Skip)
        .send()
        .await?;
    println!(
        "GET with AuthorizationControl::Skip -> {}",
        response.status()
    );
    assert_eq!(response.status(), 401);
    println!("token endpoint calls: {}", server.stats().token_calls);
    Ok(())
}
