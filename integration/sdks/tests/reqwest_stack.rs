//! `AuthorizationMiddleware` in a reqwest-middleware stack with reqwest-retry and
//! reqwest-tracing, in both orders, against the testkit server over loopback sockets.
//! Token expiry moves with a `ManualClock`; the retry policy waits a millisecond or two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client_auth::{ManualClock, OAuthProvider};
use client_auth_reqwest::{AuthRetryableStrategy, AuthorizationMiddleware};
use client_auth_testkit::{IssuedTokens, TestServer};
use http::{Extensions, StatusCode};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_tracing::TracingMiddleware;

fn logged_in(server: &TestServer, clock: &ManualClock) -> (OAuthProvider, IssuedTokens) {
    let grant = server.issue_grant("alice", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    (provider, grant)
}

fn authorization(
    server: &TestServer,
    provider: OAuthProvider,
) -> AuthorizationMiddleware<OAuthProvider> {
    AuthorizationMiddleware::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .build()
        .unwrap()
}

fn retry() -> RetryTransientMiddleware<ExponentialBackoff, AuthRetryableStrategy> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(2))
        .build_with_max_retries(2);
    RetryTransientMiddleware::new_with_policy_and_strategy(policy, AuthRetryableStrategy::default())
}

/// Stands for a gateway that answers the first attempt with a 503 (before it reaches the API).
#[derive(Default)]
struct UnavailableOnce {
    attempts: AtomicUsize,
}

#[async_trait::async_trait]
impl Middleware for UnavailableOnce {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut unavailable = http::Response::new("");
            *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(reqwest::Response::from(unavailable));
        }
        next.run(request, extensions).await
    }
}

fn seen_authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|s| s.authorization)
        .collect()
}

#[tokio::test]
async fn behind_tracing_and_retry_a_revoked_token_is_refreshed_and_the_request_retried() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let client: ClientWithMiddleware = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(retry())
        .with(authorization(&server, provider))
        .build();
    server.revoke_access_token(&grant.access_token);

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.resource_calls.get(&401), Some(&1));
    assert_eq!(stats.resource_calls.get(&200), Some(&1));
}

#[tokio::test]
async fn inside_the_retry_each_attempt_is_stamped_from_the_cached_token_without_a_token_call() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let gateway = Arc::new(UnavailableOnce::default());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(retry())
        .with(authorization(&server, provider))
        .with_arc(Arc::clone(&gateway) as Arc<dyn Middleware>)
        .build();

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        gateway.attempts.load(Ordering::SeqCst),
        2,
        "the 503 was retried"
    );
    assert_eq!(
        server.stats().token_calls,
        0,
        "the cached token served both attempts"
    );
    assert_eq!(
        seen_authorizations(&server),
        [Some(format!("Bearer {}", grant.access_token))]
    );
}

#[tokio::test]
async fn outside_the_retry_the_middleware_stamps_once_and_still_recovers_a_401() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let gateway = Arc::new(UnavailableOnce::default());
    // The other order: the retry runs inside the stamped request; its default strategy
    // returns a 401 as it is, and the middleware recovers it.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(authorization(&server, provider))
        .with(TracingMiddleware::default())
        .with(retry())
        .with_arc(Arc::clone(&gateway) as Arc<dyn Middleware>)
        .build();
    server.revoke_access_token(&grant.access_token);

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        gateway.attempts.load(Ordering::SeqCst),
        3,
        "503, 401, then the retry"
    );
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.resource_calls.get(&401), Some(&1));
    assert_eq!(stats.resource_calls.get(&200), Some(&1));
}
