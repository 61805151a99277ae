//! The middleware under reqwest-retry's `RetryTransientMiddleware` with `AuthRetryableStrategy`,
//! against the testkit server over loopback: which authorization failures are retried, and how
//! the provider's error (and its own cause) is found from the final error.
#![cfg(feature = "retry")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client_auth::{
    AuthorizationProvider, CustomerToken, Error, OAuthProvider, TransportError, TransportErrorKind,
};
use client_auth_reqwest::reqwest_middleware::{self, ClientBuilder, ClientWithMiddleware};
use client_auth_reqwest::reqwest_retry::policies::ExponentialBackoff;
use client_auth_reqwest::reqwest_retry::{RetryError, RetryTransientMiddleware};
use client_auth_reqwest::{AuthRetryableStrategy, AuthorizationMiddleware, auth_error};
use client_auth_testkit::{Fault, TestServer};
use http::StatusCode;

/// A callback's own error type, to be found at the end of the chain.
#[derive(Debug)]
struct IdentityDown;

impl fmt::Display for IdentityDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the identity service is down")
    }
}

impl StdError for IdentityDown {}

/// What an SDK built on reqwest-middleware returns: its own error, with the client's as source.
#[derive(Debug)]
enum SdkError {
    Http(reqwest_middleware::Error),
}

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the SDK call failed")
    }
}

impl StdError for SdkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SdkError::Http(e) => Some(e),
        }
    }
}

/// Retries after 1 to 5 ms, at most `retries` times.
fn client_with_retries<P: AuthorizationProvider>(
    server: &TestServer,
    provider: P,
    retries: u32,
) -> ClientWithMiddleware {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(retries);
    ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy_and_strategy(
            policy,
            AuthRetryableStrategy::default(),
        ))
        .with(
            AuthorizationMiddleware::builder(provider)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()
                .unwrap(),
        )
        .build()
}

/// Every error of the chain, from `error` down, by plain `source()` walking.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source()).collect()
}

#[tokio::test]
async fn a_callback_error_is_not_retried_and_its_own_type_is_reached_from_the_sdk_error() {
    let server = TestServer::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let provider = CustomerToken::from_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<Option<String>, _>(IdentityDown) }
    });
    let client = client_with_retries(&server, provider, 3);

    let error = client.get(server.resource_url()).send().await.unwrap_err();

    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert!(server.seen_requests().is_empty(), "never sent");
    // reqwest-retry wraps it (no retries: `RetryError::Error`, a transparent variant).
    let reqwest_middleware::Error::Middleware(outer) = &error else {
        panic!("{error:?}")
    };
    assert!(matches!(
        outer.downcast_ref::<RetryError>(),
        Some(RetryError::Error(_))
    ));
    let sdk = SdkError::Http(error);
    let auth = auth_error(&sdk).expect("the provider's error");
    assert!(matches!(auth, Error::Callback(_)), "{auth:?}");
    // Plain walking reaches the same error, then the callback's own type.
    let levels = chain(&sdk);
    let at = levels
        .iter()
        .position(|e| e.is::<Error>())
        .expect("client_auth::Error in the source chain");
    assert!(levels[at + 1].downcast_ref::<IdentityDown>().is_some());
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_the_cause_is_reached_after_the_retries() {
    let server = TestServer::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // A callback that reports a transport failure of its own backend: transient.
    let provider = CustomerToken::from_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<Option<String>, _>(Error::Transport(TransportError::new(
                TransportErrorKind::Connect,
                IdentityDown,
            )))
        }
    });
    let client = client_with_retries(&server, provider, 2);

    let error = client.get(server.resource_url()).send().await.unwrap_err();

    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the first try and two retries"
    );
    let reqwest_middleware::Error::Middleware(outer) = &error else {
        panic!("{error:?}")
    };
    assert!(matches!(
        outer.downcast_ref::<RetryError>(),
        Some(RetryError::WithRetries { retries: 2, .. })
    ));
    let auth = auth_error(&error).expect("the provider's error");
    assert!(auth.is_transient(), "{auth:?}");
    let sdk = SdkError::Http(error);
    let levels = chain(&sdk);
    assert!(levels.iter().any(|e| e.is::<TransportError>()));
    assert!(levels.iter().any(|e| e.is::<IdentityDown>()), "{levels:?}");
}

fn oauth(server: &TestServer) -> OAuthProvider {
    let grant = server.issue_grant("alice", None);
    OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        // Shorter than the retry interval, so that the retry asks the token endpoint again.
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_token_endpoint_that_is_briefly_unavailable_is_retried_until_the_request_succeeds() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    ));
    // Room for a retry that lands inside the provider's backoff (same error, no token call).
    let client = client_with_retries(&server, oauth(&server), 5);

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let stats = server.stats();
    assert_eq!(stats.faults_served, 1);
    assert_eq!(stats.token_successes, 1);
}

#[tokio::test]
async fn a_session_that_ended_is_never_retried() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
    let client = client_with_retries(&server, oauth(&server), 3);

    let error = client.get(server.resource_url()).send().await.unwrap_err();

    assert!(
        auth_error(&error).is_some_and(Error::is_session_ended),
        "{error:?}"
    );
    assert_eq!(server.stats().token_calls, 1, "one token request, no retry");
    assert!(server.seen_requests().is_empty());
}
