//! Customer tokens: a callback asked for the current customer's JWT ([`CustomerToken`]).

mod cache;
mod claims;
mod source;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use self::cache::{Accept, Cache, DEFAULT_CALLBACK_TIMEOUT, HardWindow, Lookup};
use self::claims::token_of;
use self::source::{Answers, AsyncFn, BlockingFn};
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, RequestView, Unauthorized,
    UnauthorizedFuture,
};
use crate::www_authenticate::refresh_may_help;

#[cfg(test)]
pub(crate) use self::claims::jwt_expiry;
pub use self::source::{BoxError, CustomerTokenFuture, CustomerTokenSource};

/// A provider that asks a callback for the current customer's token.
///
/// It asks a callback of yours for the token of the customer a request is sent for (as SDKs of
/// customer-facing APIs do), in one of three forms:
/// - [`CustomerToken::from_fn`]: an async closure;
/// - [`CustomerToken::from_blocking_fn`]: a blocking closure, run on tokio's blocking pool
///   (`spawn_blocking`);
/// - [`CustomerToken::new`]: a [`CustomerTokenSource`], which sees the request (a customer id
///   in its extensions, say).
///
/// ```
/// use client_auth::{AuthorizationProvider, BoxError, CustomerToken, Error, RequestView};
/// use http::{Extensions, Method};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let provider = CustomerToken::from_fn(|| async {
///     // The signed-in customer's token, or `None` when nobody is signed in.
///     Ok::<_, BoxError>(Some("eyJhbGciOiJIUzI1NiJ9.e30.c2ln".to_owned()))
/// })
/// .cache(true);
///
/// let extensions = Extensions::new();
/// let request = RequestView::new(&Method::GET, "https", "api.example.com", "/v1/me", None, &extensions);
/// let credential = provider.authorize(&request).await?;
/// assert_eq!(credential.header_value(), "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln");
///
/// // This token has no `exp`: it stays cached until the customer changes.
/// assert!(provider.is_cached());
/// provider.invalidate();
/// assert!(!provider.is_cached());
/// # Ok(()) }
/// ```
///
/// - `Ok(None)` from the callback → [`Error::NoCredentials`]: the adapter does not send the
///   request. A callback error → [`Error::Callback`] (or the [`Error`] it carried).
/// - The token is sent as `Bearer TOKEN`; a token that already starts with `Bearer` and
///   whitespace (any case) does not get the scheme twice. No token after the scheme →
///   [`Error::EmptyCredential`]; characters a header cannot carry →
///   [`Error::InvalidHeaderValue`]. The header value is marked sensitive.
/// - On a 401 (not an `insufficient_scope` challenge) the callback is asked once more; a
///   different token is retried once, the same token or none returns the 401 unchanged.
///
/// Clones share the cache. Set options right after construction: each option setter returns a
/// provider with a fresh, empty cache of its own.
///
/// # Cache
///
/// Off by default: the callback is asked for every request. With [`cache(true)`](Self::cache)
/// the token is kept until its JWT `exp` claim minus a hard window of
/// `min(10 s, 25 % of the lifetime left when it was fetched)`. The claims are decoded without
/// verifying the signature (the token is only being looked at, not trusted) and without any
/// crypto backend. **A token that is not a JWT, or has no `exp`, is kept until
/// [`invalidate`](Self::invalidate) or a 401.**
///
/// A request that finds no usable token starts one callback call, and every request that
/// arrives before it answers shares its outcome (the 401s of one token too: one call for all).
/// The call runs on a task of its own, spawned on the current tokio runtime: a request that is
/// dropped, or parked and never polled again, neither cancels it nor holds up the requests
/// that share it. After [`invalidate`](Self::invalidate), requests start a call of their own
/// at once instead of sharing one made for the previous customer.
///
/// # Callback timeout
///
/// With the cache on, a callback call gets at most
/// [`callback_timeout`](Self::callback_timeout) (default: 5 s). Its requests share one call,
/// on a task that no request owns, so their own timeouts cannot end it: without this bound one
/// callback that never answers would hold up every later request. When the time is up the call
/// is dropped, every request that shares it fails with [`Error::RefreshAborted`] (transient:
/// [`Error::is_transient`] is `true`), and the next request starts a new call. A fetch that
/// has not ended a little after the timeout (its task sits on a runtime that is no longer
/// driven, so its timer never fires) counts as stranded: the requests waiting for it fail
/// with [`Error::RefreshAborted`] too, and the next request starts a new call.
///
/// With the cache off there is no callback timeout: the callback runs in the request, so the
/// caller's own timeout applies (dropping the request drops the callback's future).
///
/// The cache holds one token, so turn it on only for a provider that serves one customer at a
/// time (one provider per customer session, say), and call [`invalidate`](Self::invalidate)
/// when that customer changes.
///
/// # Runtime
///
/// With the cache on, and for [`from_blocking_fn`](Self::from_blocking_fn), asking the
/// callback needs a tokio runtime; without one the request fails with [`Error::NoRuntime`],
/// never a panic. A cached token is served without one. With the cache on, that runtime must
/// have its time driver enabled (`enable_time` or `enable_all`, as `#[tokio::main]` does) for
/// the [callback timeout](Self#callback-timeout).
#[derive(Clone)]
pub struct CustomerToken {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Config {
    cache: bool,
    clock: Arc<dyn Clock>,
    hard_window: HardWindow,
    callback_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cache: false,
            clock: Arc::new(SystemClock),
            hard_window: HardWindow::default(),
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
        }
    }
}

struct Inner {
    source: Arc<dyn CustomerTokenSource>,
    config: Config,
    answers: Arc<Answers>,
    /// `Some` when the cache is on.
    cache: Option<Cache>,
}

impl CustomerToken {
    /// A provider asking `source` for each request's token.
    pub fn new(source: impl CustomerTokenSource) -> Self {
        Self::from_source(Arc::new(source), Config::default())
    }

    /// A provider asking an async closure for the token.
    ///
    /// ```
    /// use client_auth::{BoxError, CustomerToken};
    ///
    /// let provider = CustomerToken::from_fn(|| async {
    ///     let token: Option<String> = Some("eyJ...".to_owned()); // from your session
    ///     Ok::<_, BoxError>(token)
    /// });
    /// # let _ = provider;
    /// ```
    pub fn from_fn<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::new(AsyncFn(f))
    }

    /// A provider asking a blocking closure for the token, run through
    /// `tokio::task::spawn_blocking` so it never blocks the runtime's workers.
    ///
    /// Without a tokio runtime the request fails with [`Error::NoRuntime`]; a panic in the
    /// closure becomes [`Error::Callback`].
    ///
    /// ```
    /// use client_auth::CustomerToken;
    ///
    /// let provider = CustomerToken::from_blocking_fn(|| {
    ///     // Read the token from a blocking store.
    ///     Ok::<_, std::io::Error>(Some("eyJ...".to_owned()))
    /// });
    /// # let _ = provider;
    /// ```
    pub fn from_blocking_fn<F, E>(f: F) -> Self
    where
        F: Fn() -> Result<Option<String>, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        Self::new(BlockingFn(Arc::new(f)))
    }

    fn from_source(source: Arc<dyn CustomerTokenSource>, config: Config) -> Self {
        let answers = Arc::new(Answers::default());
        let cache = config.cache.then(|| {
            Cache::new(
                Arc::clone(&answers),
                Arc::clone(&config.clock),
                config.hard_window,
                config.callback_timeout,
            )
        });
        Self {
            inner: Arc::new(Inner {
                source,
                config,
                answers,
                cache,
            }),
        }
    }

    fn configure(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.inner.config.clone();
        change(&mut config);
        Self::from_source(Arc::clone(&self.inner.source), config)
    }

    /// Keeps the token until its `exp` minus the hard window instead of asking the callback
    /// for every request (default: off). See [Cache](Self#cache).
    pub fn cache(self, enabled: bool) -> Self {
        self.configure(|c| c.cache = enabled)
    }

    /// The clock that expiry decisions use (default: [`SystemClock`]). Tests pass a
    /// `ManualClock` and advance it.
    pub fn clock(self, clock: Arc<dyn Clock>) -> Self {
        self.configure(|c| c.clock = clock)
    }

    /// The hard window: a cached token closer to its `exp` than
    /// `min(max, ratio × lifetime left at fetch time)` is treated as expired. Defaults: 10 s
    /// and 0.25. `ratio` is clamped to `0.0..=1.0`.
    pub fn hard_window(self, max: Duration, ratio: f64) -> Self {
        self.configure(|c| c.hard_window = HardWindow::new(max, ratio))
    }

    /// How long, with the cache on, one callback call may take (default: 5 s). Past it the
    /// call is dropped and every request that shares it fails with [`Error::RefreshAborted`],
    /// a transient error; the next request starts a new call. See
    /// [Callback timeout](Self#callback-timeout).
    ///
    /// With the cache off it does not apply: the callback runs in the request, under the
    /// caller's own timeout. A [`from_blocking_fn`](Self::from_blocking_fn) closure cannot be
    /// interrupted: past the timeout its requests fail, but the closure keeps its thread of
    /// the blocking pool until it returns.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use client_auth::{BoxError, CustomerToken};
    ///
    /// let provider = CustomerToken::from_fn(|| async { Ok::<_, BoxError>(Some("eyJ...".to_owned())) })
    ///     .cache(true)
    ///     .callback_timeout(Duration::from_secs(2));
    /// # let _ = provider;
    /// ```
    pub fn callback_timeout(self, timeout: Duration) -> Self {
        self.configure(|c| c.callback_timeout = timeout)
    }

    /// Drops the cached token: call it when the customer identity changes. A fetch already in
    /// flight does not put its token in the cache afterwards, and requests made from now on
    /// do not share it.
    pub fn invalidate(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate();
        }
    }

    /// Whether the cache holds a token that is not yet treated as expired.
    pub fn is_cached(&self) -> bool {
        self.inner
            .cache
            .as_ref()
            .is_some_and(|cache| cache.usable().is_some())
    }
}

impl fmt::Debug for CustomerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.inner.config;
        f.debug_struct("CustomerToken")
            .field("cache", &config.cache)
            .field("clock", &config.clock)
            .field("hard_window_max", &config.hard_window.max())
            .field("hard_window_ratio", &config.hard_window.ratio())
            .field("callback_timeout", &config.callback_timeout)
            .field(
                "cached",
                &self.inner.cache.as_ref().is_some_and(Cache::holds_a_token),
            )
            .field("generation", &self.inner.answers.generations())
            .finish_non_exhaustive()
    }
}

impl AuthorizationProvider for CustomerToken {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        let inner = &self.inner;
        let Some(cache) = &inner.cache else {
            let fetch = Arc::clone(&inner.answers).fetch(inner.source.token(request));
            return AuthorizeFuture::pending(async move { Ok(fetch.await?.credential) });
        };
        let force = request.force_refresh();
        if !force && let Some(credential) = cache.usable() {
            return AuthorizeFuture::ready(Ok(credential));
        }
        let accept = if force { Accept::New } else { Accept::Usable };
        match cache.lookup(accept, || inner.source.token(request)) {
            Ok(Lookup::Cached(credential)) => AuthorizeFuture::ready(Ok(credential)),
            Ok(Lookup::Fetching(fetching)) => AuthorizeFuture::pending(fetching.credential()),
            Err(e) => AuthorizeFuture::ready(Err(e)),
        }
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        if !refresh_may_help(status, headers) {
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        }
        let inner = &self.inner;
        let failed = failed.header_value();
        if let Some(cache) = &inner.cache
            && let Some(current) = cache.after_unauthorized(failed)
        {
            tracing::debug!("401 for an older customer token; retrying with the current one");
            return UnauthorizedFuture::ready(Ok(Unauthorized::Retry(current)));
        }
        let Some(failed_token) = token_of(failed) else {
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        };
        let failed = failed.clone();
        let Some(cache) = &inner.cache else {
            let fetch = Arc::clone(&inner.answers)
                .fetch(inner.source.token_after_unauthorized(&failed_token));
            return UnauthorizedFuture::pending(async move {
                Ok(retry_or_give_up(fetch.await.map(|f| f.credential), &failed))
            });
        };
        let lookup = cache.lookup(Accept::Not(&failed), || {
            inner.source.token_after_unauthorized(&failed_token)
        });
        match lookup {
            Ok(Lookup::Cached(credential)) => {
                UnauthorizedFuture::ready(Ok(retry_or_give_up(Ok(credential), &failed)))
            }
            Ok(Lookup::Fetching(fetching)) => UnauthorizedFuture::pending(async move {
                Ok(retry_or_give_up(fetching.credential().await, &failed))
            }),
            Err(e) => UnauthorizedFuture::ready(Ok(retry_or_give_up(Err(e), &failed))),
        }
    }

    fn can_recover(&self) -> bool {
        true
    }
}

/// After a 401 for `failed`: retry once with a new token, give up otherwise.
fn retry_or_give_up(outcome: Result<Credential, Error>, failed: &HeaderValue) -> Unauthorized {
    match outcome {
        Ok(credential) if credential.header_value() != failed => {
            tracing::debug!(
                generation = credential.generation().get(),
                "401: retrying once with a new customer token"
            );
            Unauthorized::Retry(credential)
        }
        Ok(_) => {
            tracing::debug!("401: the callback returned the rejected token again");
            Unauthorized::GiveUp
        }
        Err(e) => {
            tracing::debug!(error = %e, "401: no new customer token");
            Unauthorized::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use base64::Engine as _;
    use http::header::WWW_AUTHENTICATE;
    use http::{Extensions, Method};

    use super::*;
    use crate::provider::Generation;

    pub(super) fn jwt_with_exp(exp: Option<u64>) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = match exp {
            Some(exp) => format!(r#"{{"sub":{{"registered":"c-1"}},"exp":{exp}}}"#),
            None => r#"{"sub":{"registered":"c-1"}}"#.to_owned(),
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(&claims)
        )
    }

    pub(super) fn unix_secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    /// `provider.authorize` for a plain GET, as a future that borrows nothing.
    pub(super) fn authorize_now(provider: &CustomerToken) -> AuthorizeFuture {
        let extensions = Extensions::new();
        let request = RequestView::new(
            &Method::GET,
            "https",
            "api.example.com",
            "/",
            None,
            &extensions,
        );
        provider.authorize(&request)
    }

    pub(super) async fn authorize(provider: &CustomerToken) -> Result<Credential, Error> {
        authorize_now(provider).await
    }

    /// A provider over an async callback that counts its calls (polls, not future creations)
    /// and returns the tokens in turn (the last one forever).
    pub(super) fn counting(tokens: Vec<Option<String>>) -> (CustomerToken, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let tokens = Arc::new(tokens);
        let provider = CustomerToken::from_fn(move || {
            let (counter, tokens) = (Arc::clone(&counter), Arc::clone(&tokens));
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(tokens[n.min(tokens.len() - 1)].clone())
            }
        });
        (provider, calls)
    }

    /// A provider over an async callback whose call number `n` (from 0) answers `token-{n}`;
    /// the calls for which `blocks(n)` is true wait until the returned sender says `true` (or
    /// is dropped). Counts calls when polled.
    pub(super) fn gated(
        blocks: fn(usize) -> bool,
    ) -> (
        CustomerToken,
        Arc<AtomicUsize>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_fn(move || {
            let counter = Arc::clone(&counter);
            let mut gate_rx = gate_rx.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if blocks(n) {
                    let _ = gate_rx.wait_for(|open| *open).await;
                }
                Ok::<_, BoxError>(Some(format!("token-{n}")))
            }
        });
        (provider, calls, gate)
    }

    /// A minimal executor that is not tokio.
    pub(super) fn block_on_outside_tokio<F: Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Thread(std::thread::Thread);
        impl Wake for Thread {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Thread(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }

    pub(super) async fn unauthorized(
        provider: &CustomerToken,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Unauthorized {
        provider
            .on_unauthorized(failed, status, headers)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn without_cache_every_request_asks_the_callback() {
        let (provider, calls) = counting(vec![Some(jwt_with_exp(None))]);
        for _ in 0..3 {
            authorize(&provider).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_once_with_a_new_token_after_401() {
        for cache in [false, true] {
            let (provider, calls) = counting(vec![Some("old".to_owned()), Some("new".to_owned())]);
            let provider = provider.cache(cache);
            let failed = authorize(&provider).await.unwrap();
            let answer = unauthorized(
                &provider,
                &failed,
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
            )
            .await;
            let Unauthorized::Retry(retry) = answer else {
                panic!("expected a retry, got {answer:?} (cache {cache})");
            };
            assert_eq!(retry.header_value(), "Bearer new");
            assert_ne!(retry.generation(), failed.generation());
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            if cache {
                // The new token is cached.
                authorize(&provider).await.unwrap();
                assert_eq!(calls.load(Ordering::SeqCst), 2);
            }
        }
    }

    #[tokio::test]
    async fn gives_up_after_401_when_the_callback_returns_the_same_token() {
        for cache in [false, true] {
            let (provider, calls) = counting(vec![Some("same".to_owned())]);
            let provider = provider.cache(cache);
            let failed = authorize(&provider).await.unwrap();
            let answer = unauthorized(
                &provider,
                &failed,
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
            )
            .await;
            assert!(matches!(answer, Unauthorized::GiveUp), "{answer:?}");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                2,
                "asked once more (cache {cache})"
            );
        }
    }

    #[tokio::test]
    async fn does_not_retry_403_or_insufficient_scope() {
        let (provider, calls) = counting(vec![Some("old".to_owned()), Some("new".to_owned())]);
        let failed = authorize(&provider).await.unwrap();
        let answer =
            unauthorized(&provider, &failed, StatusCode::FORBIDDEN, &HeaderMap::new()).await;
        assert!(matches!(answer, Unauthorized::GiveUp));
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
        );
        let answer = unauthorized(&provider, &failed, StatusCode::UNAUTHORIZED, &headers).await;
        assert!(matches!(answer, Unauthorized::GiveUp));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_trait_source_sees_the_request_and_gives_up_on_401_by_default() {
        #[derive(Clone)]
        struct CustomerId(&'static str);
        struct PerCustomer;
        impl CustomerTokenSource for PerCustomer {
            fn token(&self, request: &RequestView<'_>) -> CustomerTokenFuture {
                let id = request.extensions().get::<CustomerId>().map(|c| c.0);
                Box::pin(async move { Ok(id.map(|id| format!("token-{id}"))) })
            }
        }
        let provider = CustomerToken::new(PerCustomer);
        let mut extensions = Extensions::new();
        extensions.insert(CustomerId("42"));
        let request = RequestView::new(&Method::GET, "https", "a", "/", None, &extensions);
        let credential = provider.authorize(&request).await.unwrap();
        assert_eq!(credential.header_value(), "Bearer token-42");
        assert!(matches!(
            authorize(&provider).await,
            Err(Error::NoCredentials)
        ));
        let answer = unauthorized(
            &provider,
            &credential,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
        )
        .await;
        assert!(matches!(answer, Unauthorized::GiveUp));
        assert!(provider.can_recover());
    }

    #[tokio::test]
    async fn debug_never_prints_the_token() {
        let marker = "MARKER-CUSTOMER-TOKEN-9876";
        let (provider, _) = counting(vec![Some(marker.to_owned())]);
        let provider = provider.cache(true);
        let credential = authorize(&provider).await.unwrap();
        let printed = format!("{provider:?} {credential:?}");
        assert!(!printed.contains(marker), "{printed}");
    }

    #[test]
    fn with_the_cache_on_no_runtime_is_an_error_not_a_panic() {
        let (provider, calls) = counting(vec![Some("t".to_owned())]);
        let provider = provider.cache(true);
        let mut future = authorize_now(&provider);
        assert!(matches!(future.take_ready(), Some(Err(Error::NoRuntime))));
        let failed = Credential::new(HeaderValue::from_static("Bearer t"), Generation::new(1));
        let answer = block_on_outside_tokio(provider.on_unauthorized(
            &failed,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
        ));
        assert!(matches!(answer, Ok(Unauthorized::GiveUp)), "{answer:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
