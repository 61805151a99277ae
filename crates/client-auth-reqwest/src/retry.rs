//! A reqwest-retry strategy that knows the middleware's errors.

use std::fmt;

use reqwest::Response;
use reqwest_retry::{DefaultRetryableStrategy, Retryable, RetryableStrategy};

use crate::error::auth_error;

/// A reqwest-retry [`RetryableStrategy`] that retries a transient failure to get a credential
/// (the token endpoint unreachable, timing out, answering 5xx or 429:
/// [`client_auth::Error::is_transient`]) and never any other authorization error (a session
/// that ended, a configuration problem). Every other outcome is left to the wrapped strategy,
/// reqwest-retry's `DefaultRetryableStrategy` unless you pass another. (The default strategy
/// treats every middleware error as fatal, so without this one a token endpoint that is down
/// for a second fails the request.)
///
/// Put the retry middleware **before** (outside) [`AuthorizationMiddleware`] so that a retry
/// runs the authorization again. A retry that arrives while the provider is backing off after
/// the failure gets the same error without a new token request, so give the retry policy room
/// (the provider's backoff starts at 1 s):
///
/// ```
/// use client_auth_reqwest::{AuthRetryableStrategy, AuthorizationMiddleware};
/// use client_auth_reqwest::client_auth::StaticToken;
/// use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
///
/// # fn main() -> Result<(), client_auth_reqwest::client_auth::Error> {
/// let policy = ExponentialBackoff::builder().build_with_max_retries(3);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryTransientMiddleware::new_with_policy_and_strategy(
///         policy,
///         AuthRetryableStrategy::default(),
///     ))
///     .with(
///         AuthorizationMiddleware::builder(StaticToken::api_key("k")?)
///             .allow_origin("https://api.example.com")
///             .build()?,
///     )
///     .build();
/// # let _ = client;
/// # Ok(()) }
/// ```
///
/// Needs the `retry` feature (reqwest-retry 0.9).
///
/// [`AuthorizationMiddleware`]: crate::AuthorizationMiddleware
#[derive(Clone, Copy)]
pub struct AuthRetryableStrategy<R = DefaultRetryableStrategy> {
    inner: R,
}

impl AuthRetryableStrategy {
    /// Authorization errors decided here, everything else by `DefaultRetryableStrategy`.
    pub fn new() -> Self {
        Self::wrapping(DefaultRetryableStrategy)
    }
}

impl Default for AuthRetryableStrategy {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> AuthRetryableStrategy<R> {
    /// Authorization errors decided here, everything else by `inner`.
    pub fn wrapping(inner: R) -> Self {
        Self { inner }
    }
}

impl<R: RetryableStrategy> RetryableStrategy for AuthRetryableStrategy<R> {
    fn handle(&self, result: &Result<Response, reqwest_middleware::Error>) -> Option<Retryable> {
        if let Err(error) = result
            && let Some(auth) = auth_error(error)
        {
            return Some(if auth.is_transient() {
                Retryable::Transient
            } else {
                Retryable::Fatal
            });
        }
        self.inner.handle(result)
    }
}

impl<R> fmt::Debug for AuthRetryableStrategy<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRetryableStrategy")
            .field("inner", &std::any::type_name::<R>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use client_auth::{Error, OAuthError, SessionEnd};
    use http::StatusCode;

    use super::*;
    use crate::error::middleware_error;

    fn decide(error: Error) -> Option<Retryable> {
        AuthRetryableStrategy::default().handle(&Err(middleware_error(error)))
    }

    #[test]
    fn transient_authorization_failures_are_retried_and_others_are_not() {
        let unavailable = Error::Unavailable {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(decide(unavailable) == Some(Retryable::Transient));
        let ended = Error::SessionEnded(SessionEnd::Server(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
        )));
        assert!(decide(ended) == Some(Retryable::Fatal));
        assert!(decide(Error::NoCredentials) == Some(Retryable::Fatal));
    }

    #[test]
    fn other_outcomes_are_left_to_the_wrapped_strategy() {
        struct Always;
        impl RetryableStrategy for Always {
            fn handle(&self, _: &Result<Response, reqwest_middleware::Error>) -> Option<Retryable> {
                Some(Retryable::Transient)
            }
        }
        let other = reqwest_middleware::Error::Middleware(anyhow::anyhow!("not ours"));
        let strategy = AuthRetryableStrategy::wrapping(Always);
        assert!(strategy.handle(&Err(other)) == Some(Retryable::Transient));
        let ok = Ok(Response::from(http::Response::new("")));
        assert!(strategy.handle(&ok) == Some(Retryable::Transient));
        assert!(AuthRetryableStrategy::default().handle(&ok).is_none());
    }
}
