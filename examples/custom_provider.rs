//! Plugging your own provider: an HMAC-style signed header computed per request (here a simple
//! stand-in), used through the reqwest middleware. Any `AuthorizationProvider` works with both
//! adapters, boxed or in an `Arc<dyn AuthorizationProvider>`.
//!
//! Run it with `cargo run --example custom_provider`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Error, Generation, RequestView,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{ServerConfig, TestServer};
use http::HeaderValue;
use reqwest_middleware::ClientBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `Token <key>` and counts what it signed. A real one would sign method + path.
struct CountingKey {
    key: String,
    signed: AtomicU64,
}

impl AuthorizationProvider for CountingKey {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        let n = self.signed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(path = request.path(), n, "signing");
        let value = HeaderValue::from_str(&format!("Token {}", self.key))
            .map_err(|_| Error::InvalidHeaderValue)
            .map(|v| Credential::new(v, Generation::new(0)));
        AuthorizeFuture::ready(value)
    }

    /// Never retries a 401, so the adapters skip the request snapshot.
    fn can_recover(&self) -> bool {
        false
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = TestServer::start_with(ServerConfig::default().api_key("custom-key")).await?;
    let provider = Arc::new(CountingKey {
        key: "custom-key".into(),
        signed: AtomicU64::new(0),
    });
    // An `Arc<dyn AuthorizationProvider>` is a provider too.
    let dynamic: Arc<dyn AuthorizationProvider> = provider.clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(dynamic)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()?,
        )
        .build();
    for _ in 0..3 {
        let status = client.get(server.resource_url()).send().await?.status();
        assert_eq!(status, 200);
    }
    println!(
        "3 requests OK, signed {} times",
        provider.signed.load(Ordering::Relaxed)
    );
    Ok(())
}
