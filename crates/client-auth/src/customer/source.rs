//! Where customer tokens come from: the [`CustomerTokenSource`] trait, the adapters that turn
//! closures into sources, and how a source's answer becomes a [`Credential`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderValue;
use zeroize::Zeroizing;

use super::claims::{authorization_value, strip_bearer};
use crate::BoxFuture;
use crate::error::{Error, SharedError};
use crate::provider::{Credential, Generation, RequestView};
use crate::secret::CustomerJwt;

/// A boxed error, `Send + Sync`: what customer-token callbacks fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a [`CustomerTokenSource`] returns: the customer's token, `None` when there is none.
pub type CustomerTokenFuture = BoxFuture<'static, Result<Option<String>, BoxError>>;

/// Where a [`CustomerToken`](super::CustomerToken) gets its tokens: implement it for sources
/// that look at the request (a customer id in the extensions, say). Closures are adapted to it
/// by [`CustomerToken::from_fn`](super::CustomerToken::from_fn) and
/// [`CustomerToken::from_blocking_fn`](super::CustomerToken::from_blocking_fn).
///
/// The returned future should do its work when polled, not when created: with the cache on,
/// requests that arrive while another one is fetching create a future that is dropped without
/// being polled (they share the other request's answer). With the cache on, the future that is
/// polled runs on a task of its own, not in the request that created it: it must not rely on
/// the caller's task-local values.
///
/// If the error you return is a [`client_auth::Error`](Error), it reaches the caller as it
/// is; any other error becomes [`Error::Callback`].
///
/// ```
/// use client_auth::{CustomerToken, CustomerTokenFuture, CustomerTokenSource, RequestView};
///
/// /// The customer id the caller put in the request's extensions.
/// #[derive(Clone)]
/// struct CustomerId(String);
///
/// struct Tokens;
///
/// impl CustomerTokenSource for Tokens {
///     fn token(&self, request: &RequestView<'_>) -> CustomerTokenFuture {
///         let customer = request.extensions().get::<CustomerId>().cloned();
///         Box::pin(async move {
///             // Look the customer's token up (a session store, a signer, ...).
///             Ok(customer.map(|CustomerId(id)| format!("token-of-{id}")))
///         })
///     }
/// }
///
/// let provider = CustomerToken::new(Tokens);
/// # let _ = provider;
/// ```
pub trait CustomerTokenSource: Send + Sync + 'static {
    /// The token for `request`'s customer; `Ok(None)` when there is none (the request is not
    /// sent). A token without a scheme is sent as `Bearer TOKEN`.
    fn token(&self, request: &RequestView<'_>) -> CustomerTokenFuture;

    /// A new token after the server answered 401 to a request sent with `failed` (without its
    /// `Bearer ` prefix). The request itself is no longer at hand here, so a source that
    /// chooses the customer from the request must find it another way (the failed token's
    /// claims, say).
    ///
    /// The default answers `Ok(None)`: the 401 is returned to the caller unchanged. Returning a
    /// token asks for one retry with it (when it differs from `failed`); never return the
    /// token of another customer than `failed`'s.
    fn token_after_unauthorized(&self, failed: &CustomerJwt) -> CustomerTokenFuture {
        let _ = failed;
        Box::pin(std::future::ready(Ok(None)))
    }
}

impl<S: CustomerTokenSource + ?Sized> CustomerTokenSource for Arc<S> {
    fn token(&self, request: &RequestView<'_>) -> CustomerTokenFuture {
        (**self).token(request)
    }
    fn token_after_unauthorized(&self, failed: &CustomerJwt) -> CustomerTokenFuture {
        (**self).token_after_unauthorized(failed)
    }
}

impl<S: CustomerTokenSource + ?Sized> CustomerTokenSource for Box<S> {
    fn token(&self, request: &RequestView<'_>) -> CustomerTokenFuture {
        (**self).token(request)
    }
    fn token_after_unauthorized(&self, failed: &CustomerJwt) -> CustomerTokenFuture {
        (**self).token_after_unauthorized(failed)
    }
}

// The trait must stay dyn-compatible: this fails to compile otherwise.
const _: fn(&dyn CustomerTokenSource) = |_| {};

/// An async closure as a source. It does not see the request, so after a 401 it is simply
/// asked again.
pub(super) struct AsyncFn<F>(pub(super) F);

impl<F, Fut, E> CustomerTokenSource for AsyncFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self, _request: &RequestView<'_>) -> CustomerTokenFuture {
        let future = (self.0)();
        Box::pin(async move { future.await.map_err(Into::into) })
    }
    fn token_after_unauthorized(&self, _failed: &CustomerJwt) -> CustomerTokenFuture {
        let future = (self.0)();
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

/// A blocking closure as a source, run on tokio's blocking pool when its future is polled.
pub(super) struct BlockingFn<F>(pub(super) Arc<F>);

impl<F, E> BlockingFn<F>
where
    F: Fn() -> Result<Option<String>, E> + Send + Sync + 'static,
    E: Into<BoxError>,
{
    fn call(&self) -> CustomerTokenFuture {
        let f = Arc::clone(&self.0);
        Box::pin(async move {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| -> BoxError { Box::new(Error::NoRuntime) })?;
            match handle.spawn_blocking(move || f().map_err(Into::into)).await {
                Ok(result) => result,
                Err(join) if join.is_panic() => Err(BoxError::from(
                    "the blocking customer-token callback panicked",
                )),
                Err(_) => Err(Box::new(Error::NoRuntime) as BoxError),
            }
        })
    }
}

impl<F, E> CustomerTokenSource for BlockingFn<F>
where
    F: Fn() -> Result<Option<String>, E> + Send + Sync + 'static,
    E: Into<BoxError>,
{
    fn token(&self, _request: &RequestView<'_>) -> CustomerTokenFuture {
        self.call()
    }
    fn token_after_unauthorized(&self, _failed: &CustomerJwt) -> CustomerTokenFuture {
        self.call()
    }
}

/// Turns a source's answers into credentials: the `Bearer` scheme, a sensitive header value,
/// and a new generation for each token that differs from the one before.
#[derive(Default)]
pub(super) struct Answers {
    /// The last token and its generation.
    last: Mutex<Option<(HeaderValue, Generation)>>,
    /// How many distinct tokens have been seen.
    generations: AtomicU64,
}

/// A source's token as a credential, with the bare token (no scheme) for the expiry decode.
pub(super) struct Fetched {
    pub(super) credential: Credential,
    pub(super) token: Zeroizing<String>,
}

impl Answers {
    /// Awaits the source's answer and makes it a credential.
    ///
    /// # Errors
    ///
    /// [`Error::NoCredentials`] for `Ok(None)`, the callback's error (see [`callback_error`]),
    /// [`Error::InvalidHeaderValue`] or [`Error::EmptyCredential`]. None contains the token.
    pub(super) async fn fetch(
        self: Arc<Self>,
        future: CustomerTokenFuture,
    ) -> Result<Fetched, Error> {
        let token = match future.await {
            Ok(Some(token)) => Zeroizing::new(token),
            Ok(None) => {
                tracing::debug!("the customer-token callback returned no token");
                return Err(Error::NoCredentials);
            }
            Err(e) => {
                let e = callback_error(e);
                tracing::debug!(error = %e, "the customer-token callback failed");
                return Err(e);
            }
        };
        let value = authorization_value(&token)?;
        let generation = self.generation_for(&value);
        Ok(Fetched {
            credential: Credential::new(value, generation),
            token: Zeroizing::new(strip_bearer(&token).to_owned()),
        })
    }

    /// How many distinct tokens have been seen (the latest generation).
    pub(super) fn generations(&self) -> u64 {
        self.generations.load(Ordering::Relaxed)
    }

    /// The generation of `value`: the last one's if it is the same token, a new one otherwise.
    fn generation_for(&self, value: &HeaderValue) -> Generation {
        // The guarded value is replaced whole: a poisoned lock is still consistent.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((previous, generation)) if previous == value => *generation,
            _ => {
                let generation =
                    Generation::new(self.generations.fetch_add(1, Ordering::Relaxed) + 1);
                *last = Some((value.clone(), generation));
                generation
            }
        }
    }
}

/// A callback's error as an [`Error`]: an `Error` it carries passes through unchanged.
fn callback_error(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        // The callback's text is foreign: URLs in it lose their userinfo and query values.
        Err(other) => Error::Callback(SharedError::new(other)).redacted(&[]),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::{Extensions, Method};

    use super::*;
    use crate::customer::CustomerToken;
    use crate::customer::tests::{authorize, block_on_outside_tokio, counting};
    use crate::provider::AuthorizationProvider;

    #[tokio::test]
    async fn adds_bearer_scheme_and_marks_the_value_sensitive() {
        let (provider, _) = counting(vec![Some("abc.def.ghi".to_owned())]);
        let credential = authorize(&provider).await.unwrap();
        assert_eq!(credential.header_value(), "Bearer abc.def.ghi");
        assert!(credential.header_value().is_sensitive());
    }

    #[tokio::test]
    async fn does_not_repeat_an_existing_bearer_scheme_in_any_case_or_spacing() {
        for given in ["Bearer abc", "bearer abc", " BEARER\tabc ", "abc"] {
            let (provider, _) = counting(vec![Some(given.to_owned())]);
            let credential = authorize(&provider).await.unwrap();
            assert_eq!(credential.header_value(), "Bearer abc", "{given:?}");
        }
    }

    #[tokio::test]
    async fn none_from_the_callback_is_no_credentials() {
        let (provider, _) = counting(vec![None]);
        assert!(matches!(
            authorize(&provider).await,
            Err(Error::NoCredentials)
        ));
    }

    #[tokio::test]
    async fn invalid_header_characters_are_an_error_not_a_panic() {
        let (provider, _) = counting(vec![Some("line\nbreak".to_owned())]);
        assert!(matches!(
            authorize(&provider).await,
            Err(Error::InvalidHeaderValue)
        ));
        for empty in ["", " \t", "Bearer ", "bearer\t"] {
            let (provider, _) = counting(vec![Some(empty.to_owned())]);
            assert!(
                matches!(authorize(&provider).await, Err(Error::EmptyCredential)),
                "{empty:?}"
            );
        }
    }

    #[tokio::test]
    async fn callback_error_is_a_callback_error_without_the_token() {
        let provider = CustomerToken::from_fn(|| async {
            Err::<Option<String>, _>(std::io::Error::other("session store is down"))
        });
        let error = authorize(&provider).await.unwrap_err();
        assert!(matches!(error, Error::Callback(_)), "{error:?}");
        assert!(error.to_string().contains("session store is down"));
    }

    #[tokio::test]
    async fn an_error_the_callback_returns_passes_through_unchanged() {
        let provider = CustomerToken::from_fn(|| async {
            Err::<Option<String>, BoxError>(Box::new(Error::NoRuntime))
        });
        assert!(matches!(authorize(&provider).await, Err(Error::NoRuntime)));
    }

    #[tokio::test]
    async fn generation_changes_only_when_the_token_changes() {
        let (provider, _) = counting(vec![
            Some("one".to_owned()),
            Some("one".to_owned()),
            Some("two".to_owned()),
        ]);
        let a = authorize(&provider).await.unwrap().generation();
        let b = authorize(&provider).await.unwrap().generation();
        let c = authorize(&provider).await.unwrap().generation();
        assert_eq!(a, b);
        assert_ne!(b, c);
    }

    #[tokio::test]
    async fn blocking_callback_runs_on_the_blocking_pool() {
        let provider = CustomerToken::from_blocking_fn(|| {
            Ok::<_, std::io::Error>(Some("blocking-token".to_owned()))
        });
        let credential = authorize(&provider).await.unwrap();
        assert_eq!(credential.header_value(), "Bearer blocking-token");
    }

    #[tokio::test]
    async fn blocking_callback_runs_on_the_fetch_task_with_the_cache_on() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_blocking_fn(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some("blocking-token".to_owned()))
        })
        .cache(true);
        for _ in 0..3 {
            let credential = authorize(&provider).await.unwrap();
            assert_eq!(credential.header_value(), "Bearer blocking-token");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn blocking_callback_panic_is_a_callback_error() {
        let provider = CustomerToken::from_blocking_fn(|| -> Result<Option<String>, BoxError> {
            panic!("boom")
        });
        assert!(matches!(
            authorize(&provider).await,
            Err(Error::Callback(_))
        ));
    }

    #[test]
    fn blocking_callback_without_a_runtime_is_no_runtime_not_a_panic() {
        let provider = CustomerToken::from_blocking_fn(|| Ok::<_, BoxError>(Some("t".to_owned())));
        let extensions = Extensions::new();
        let request = RequestView::new(&Method::GET, "https", "a", "/", None, &extensions);
        let future = provider.authorize(&request);
        // Polled by an executor that is not tokio.
        let result = block_on_outside_tokio(future);
        assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    }
}
