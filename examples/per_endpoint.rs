//! An API with two kinds of credential: the API key (`Authorization: Token KEY`) by default, and a customer JWT for
//! the customer-facing endpoints, chosen per request with `AuthorizationControl::Provider`.
//! The customer token comes from a callback asked per request; a backend can mint it with
//! `CustomerTokenSigner` (features `jwt-aws-lc-rs` / `jwt-rust-crypto`).
//!
//! Run it with `cargo run -p client-auth-example-per-endpoint --example per_endpoint`: it has a
//! package of its own (`examples/per_endpoint/Cargo.toml`), outside the default members, so that
//! `cargo run --example quickstart` never compiles the JWT signer.

use std::sync::Arc;

use client_auth::{AuthorizationControl, AuthorizationProvider, CustomerToken, StaticToken};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{ServerConfig, TestServer};
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let customer_secret = b"customer-signing-key-0123456789ab".to_vec();
    let server = TestServer::start_with(
        ServerConfig::default()
            .api_key("project-api-key")
            .customer_key("key-1", &customer_secret),
    )
    .await?;

    // The customer JWT: here minted in-process; in an app it comes from your backend.
    let signer = client_auth::CustomerTokenSigner::hs256("key-1", customer_secret)?;
    let mut ids = serde_json::Map::new();
    ids.insert("registered".into(), "alice@example.com".into());
    let jwt = signer.sign(&ids, Some(std::time::Duration::from_secs(3600)))?;
    let jwt = jwt.expose_secret().to_owned();
    let customer: Arc<dyn AuthorizationProvider> = Arc::new(
        CustomerToken::from_fn(move || {
            let jwt = jwt.clone();
            async move { Ok::<_, std::convert::Infallible>(Some(jwt)) }
        })
        .cache(true),
    );

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(StaticToken::api_key("project-api-key")?)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()?,
        )
        .build();

    let response = client.get(server.url("/api/catalog")).send().await?;
    let project: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    println!("catalog (API key): kind={}", project["kind"]);
    assert_eq!(project["kind"], "api_key");

    let response = client
        .get(server.url("/api/customers/me"))
        .with_extension(AuthorizationControl::Provider(customer.clone()))
        .send()
        .await?;
    let mine: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    println!(
        "customers/me (customer JWT): kind={} subject={}",
        mine["kind"], mine["subject"]
    );
    assert_eq!(mine["kind"], "customer_jwt");
    Ok(())
}
