//! The quickstart's scenario with metrics: a Prometheus recorder is installed, the scenario runs
//! against the in-process testkit server, and the scrape is printed, so you see every name and
//! label `client-auth` records (feature `metrics`; the table is in `client_auth::metrics`).
//!
//! 1. an API key (nothing is recorded: a request whose credential is at hand costs nothing);
//! 2. an OAuth 2.0 access token that expires: concurrent requests wait for one token request;
//! 3. a revoked access token: 401, refresh, one retry;
//! 4. a revoked grant: the session ends.
//!
//! Run it with `cargo run -p client-auth-example-metrics --example metrics`. It lives in a package of its own
//! (`examples/metrics/Cargo.toml`), so `cargo run --example quickstart` never compiles the
//! Prometheus exporter.

use std::time::Duration;

use client_auth::{OAuthProvider, StaticToken};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{ServerConfig, TestServer};
use metrics_exporter_prometheus::PrometheusBuilder;
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Install the recorder first; the metrics' units and help texts are optional.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    client_auth::metrics::describe();

    let server = TestServer::start_with(
        ServerConfig::default()
            .api_key("demo-api-key")
            .access_token_lifetime(Duration::from_secs(2)),
    )
    .await?;

    // 1. A static API key.
    let api_key = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(StaticToken::api_key("demo-api-key")?)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()?,
        )
        .build();
    let status = api_key.get(server.resource_url()).send().await?.status();
    println!("1. API key: GET -> {status}");

    // 2. OAuth 2.0 refresh_token grant, named for the dashboards.
    let grant = server.issue_grant("alice", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap_or_default())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(2)))
        .metrics_name("quickstart-oauth")
        .build()?;
    let oauth = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(provider.clone())
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()?,
        )
        .build();
    oauth.get(server.resource_url()).send().await?;
    // Past the hard window, the requests wait for one refresh.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(oauth.get(server.resource_url()).send()))
        .collect();
    for request in requests {
        request.await??;
    }
    println!(
        "2. OAuth: 20 requests after expiry, token endpoint calls: {}",
        server.stats().token_calls
    );

    // 3. A revoked access token: 401 -> refresh -> one retry.
    let current = provider.access_token().await?;
    server.revoke_access_token(current.expose_secret());
    let status = oauth.get(server.resource_url()).send().await?.status();
    println!("3. revoked access token: GET -> {status} after one retry");

    // 4. A revoked grant: the next refresh gets `invalid_grant` and the session ends.
    server.revoke_all_grants();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let failed = oauth.get(server.resource_url()).send().await.is_err();
    println!(
        "4. revoked grant: request failed = {failed}, session = {:?}",
        provider.session_state()
    );

    println!("\n# the Prometheus scrape\n{}", prometheus.render());
    Ok(())
}
