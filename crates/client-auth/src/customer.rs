//! Customer tokens: a callback asked for the current customer's JWT.
//!
//! [`CustomerToken`] asks a callback of yours for the token of the customer a request is sent
//! for (as Bloomreach's SDK does) and sends it as `Authorization: Bearer TOKEN`. The callback
//! answers `Ok(Some(token))`, `Ok(None)` when there is no customer (the request is then **not
//! sent**: the adapter gets [`Error::NoCredentials`]), or an error ([`Error::Callback`]).
//!
//! Three forms of callback:
//! - [`CustomerToken::from_fn`]: an async closure.
//! - [`CustomerToken::from_blocking_fn`]: a blocking closure, run on tokio's blocking pool
//!   (`spawn_blocking`).
//! - [`CustomerToken::new`]: a [`CustomerTokenSource`], which sees the request (a customer id
//!   in its extensions, say).
//!
//! By default the callback is asked for every request. [`CustomerToken::cache`] keeps the
//! token until shortly before its `exp` claim instead, and concurrent requests share one
//! callback call; [`CustomerToken::invalidate`] drops it when the customer changes.
//!
//! ```
//! use client_auth::{AuthorizationProvider, BoxError, CustomerToken, RequestView};
//! use http::{Extensions, Method};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), client_auth::Error> {
//! // A real callback would read the signed-in customer's token from your session.
//! let provider = CustomerToken::from_fn(|| async {
//!     Ok::<_, BoxError>(Some("eyJhbGciOiJIUzI1NiJ9.e30.c2ln".to_owned()))
//! })
//! .cache(true);
//!
//! let extensions = Extensions::new();
//! let request = RequestView::new(&Method::GET, "https", "api.example.com", "/v1/me", None, &extensions);
//! let credential = provider.authorize(&request).await?;
//! assert_eq!(credential.header_value(), "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln");
//! assert!(credential.header_value().is_sensitive());
//!
//! // No customer: the request must not be sent.
//! let anonymous = CustomerToken::from_fn(|| async { Ok::<_, BoxError>(None) });
//! assert!(matches!(
//!     anonymous.authorize(&request).await,
//!     Err(client_auth::Error::NoCredentials)
//! ));
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use zeroize::Zeroizing;

use crate::BoxFuture;
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, Generation, RequestView, Unauthorized,
    UnauthorizedFuture,
};
use crate::secret::CustomerJwt;
use crate::www_authenticate::refresh_may_help;

/// A boxed error, `Send + Sync`: what customer-token callbacks fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a [`CustomerTokenSource`] returns: the customer's token, `None` when there is none.
pub type CustomerTokenFuture = BoxFuture<'static, Result<Option<String>, BoxError>>;

/// Longest hard window: a token closer to its `exp` than this is treated as expired.
const HARD_WINDOW_MAX: Duration = Duration::from_secs(10);
/// Share of the remaining lifetime (at fetch time) that the hard window never exceeds.
const HARD_WINDOW_RATIO: f64 = 0.25;

/// Where a [`CustomerToken`] gets its tokens: implement it for sources that look at the
/// request (a customer id in the extensions, say). Closures are adapted to it by
/// [`CustomerToken::from_fn`] and [`CustomerToken::from_blocking_fn`].
///
/// The returned future should do its work when polled, not when created: with the cache on,
/// requests that arrive while another one is fetching create a future that is dropped without
/// being polled (they share the other request's answer).
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
struct AsyncFn<F>(F);

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
struct BlockingFn<F>(Arc<F>);

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

/// A provider that asks a callback for the current customer's token.
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
/// - The token is sent as `Bearer TOKEN` unless it already starts with `Bearer ` (any case).
///   Characters a header cannot carry → [`Error::InvalidHeaderValue`]. The header value is
///   marked sensitive.
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
/// [`invalidate`](Self::invalidate) or a 401.** Requests that find the cache empty or expired
/// share one callback call, and all of them get its outcome.
///
/// The cache holds one token, so turn it on only for a provider that serves one customer at a
/// time (one provider per customer session, say), and call [`invalidate`](Self::invalidate)
/// when that customer changes.
///
/// # Runtime
///
/// [`from_blocking_fn`](Self::from_blocking_fn) needs a tokio runtime; without one the request
/// fails with [`Error::NoRuntime`], never a panic.
#[derive(Clone)]
pub struct CustomerToken {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Config {
    cache: bool,
    clock: Arc<dyn Clock>,
    hard_window_max: Duration,
    hard_window_ratio: f64,
}

struct Inner {
    source: Arc<dyn CustomerTokenSource>,
    config: Config,
    /// The cached token (cache on only). Read without locking.
    current: ArcSwapOption<Cached>,
    /// Bumped by `invalidate`; a fetch started in an older epoch publishes nothing. Held while
    /// publishing so an invalidation cannot slip between the check and the store.
    epoch: Mutex<u64>,
    /// Held by the one fetch in flight (cache on); keeps the last fetch's outcome.
    flight: tokio::sync::Mutex<LastFetch>,
    /// How many fetches have completed (mirrors `LastFetch::seq`, readable without the lock).
    fetches: AtomicU64,
    /// The last token fetched and its generation: a new generation per distinct token.
    last_token: Mutex<Option<(HeaderValue, Generation)>>,
    generations: AtomicU64,
}

/// A cached token and the instant from which it is treated as expired.
struct Cached {
    credential: Credential,
    stale_at: Option<Instant>,
}

impl Cached {
    fn usable(&self, now: Instant) -> bool {
        self.stale_at.is_none_or(|at| now < at)
    }
}

#[derive(Default)]
struct LastFetch {
    seq: u64,
    epoch: u64,
    outcome: Option<Result<Credential, Error>>,
}

/// What a caller waiting for the fetch lock will accept instead of fetching itself.
enum Accept {
    /// A usable cached token.
    Usable,
    /// A usable cached token whose value differs from this one (after a 401).
    Not(HeaderValue),
    /// Only a fetch that completed while waiting (forced refresh).
    FetchedOnly,
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
        Self {
            inner: Arc::new(Inner {
                source,
                config,
                current: ArcSwapOption::empty(),
                epoch: Mutex::new(0),
                flight: tokio::sync::Mutex::new(LastFetch::default()),
                fetches: AtomicU64::new(0),
                last_token: Mutex::new(None),
                generations: AtomicU64::new(0),
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
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.configure(|c| {
            c.hard_window_max = max;
            c.hard_window_ratio = ratio;
        })
    }

    /// Drops the cached token: call it when the customer identity changes. A fetch already in
    /// flight does not put its token in the cache afterwards.
    pub fn invalidate(&self) {
        let mut epoch = self.inner.lock_epoch();
        *epoch = epoch.wrapping_add(1);
        self.inner.current.store(None);
    }

    /// Whether the cache holds a token that is not yet treated as expired.
    pub fn is_cached(&self) -> bool {
        let now = self.inner.config.clock.now();
        self.inner
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.usable(now))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cache: false,
            clock: Arc::new(SystemClock),
            hard_window_max: HARD_WINDOW_MAX,
            hard_window_ratio: HARD_WINDOW_RATIO,
        }
    }
}

impl fmt::Debug for CustomerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.inner.config;
        f.debug_struct("CustomerToken")
            .field("cache", &config.cache)
            .field("clock", &config.clock)
            .field("hard_window_max", &config.hard_window_max)
            .field("hard_window_ratio", &config.hard_window_ratio)
            .field("cached", &self.inner.current.load().is_some())
            .field(
                "generation",
                &self.inner.generations.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl AuthorizationProvider for CustomerToken {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        let inner = &self.inner;
        if !inner.config.cache {
            let future = inner.source.token(request);
            let inner = Arc::clone(inner);
            return AuthorizeFuture::pending(async move { inner.fetch(future).await });
        }
        let force = request.force_refresh();
        if !force
            && let Some(cached) = &*inner.current.load()
            && cached.usable(inner.config.clock.now())
        {
            return AuthorizeFuture::ready(Ok(cached.credential.clone()));
        }
        let accept = if force {
            Accept::FetchedOnly
        } else {
            Accept::Usable
        };
        let ticket = inner.ticket();
        let future = inner.source.token(request);
        let inner = Arc::clone(inner);
        AuthorizeFuture::pending(async move { inner.single_flight(ticket, accept, future).await })
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
        let failed_value = failed.header_value().clone();
        if inner.config.cache {
            let current = inner.current.load_full();
            if let Some(cached) = &current {
                if cached.credential.header_value() != failed_value
                    && cached.usable(inner.config.clock.now())
                {
                    tracing::debug!(
                        "401 for an older customer token; retrying with the current one"
                    );
                    return UnauthorizedFuture::ready(Ok(Unauthorized::Retry(
                        cached.credential.clone(),
                    )));
                }
                if cached.credential.header_value() == failed_value {
                    inner.current.compare_and_swap(&current, None);
                }
            }
        }
        let Some(failed_token) = token_of(&failed_value) else {
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        };
        let future = inner.source.token_after_unauthorized(&failed_token);
        drop(failed_token);
        let inner = Arc::clone(inner);
        let ticket = inner.ticket();
        UnauthorizedFuture::pending(async move {
            let outcome = if inner.config.cache {
                inner
                    .single_flight(ticket, Accept::Not(failed_value.clone()), future)
                    .await
            } else {
                inner.fetch(future).await
            };
            match outcome {
                Ok(credential) if credential.header_value() != failed_value => {
                    tracing::debug!(
                        generation = credential.generation().get(),
                        "401: retrying once with a new customer token"
                    );
                    Ok(Unauthorized::Retry(credential))
                }
                Ok(_) => {
                    tracing::debug!("401: the callback returned the rejected token again");
                    Ok(Unauthorized::GiveUp)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "401: no new customer token");
                    Ok(Unauthorized::GiveUp)
                }
            }
        })
    }

    fn can_recover(&self) -> bool {
        true
    }
}

/// Where a waiter stood when it started waiting: a later fetch's outcome is its outcome too.
#[derive(Clone, Copy)]
struct Ticket {
    seen: u64,
    epoch: u64,
}

impl Inner {
    fn lock_epoch(&self) -> MutexGuard<'_, u64> {
        // The guarded value is a counter, always consistent.
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ticket(&self) -> Ticket {
        Ticket {
            seen: self.fetches.load(Ordering::Acquire),
            epoch: *self.lock_epoch(),
        }
    }

    /// The cache's slow path: exactly one caller fetches; callers that waited meanwhile take
    /// its outcome. Dropping the fetching caller releases the lock, and the next one fetches.
    async fn single_flight(
        &self,
        ticket: Ticket,
        accept: Accept,
        future: CustomerTokenFuture,
    ) -> Result<Credential, Error> {
        let mut last = self.flight.lock().await;
        if last.seq > ticket.seen
            && last.epoch == ticket.epoch
            && let Some(outcome) = &last.outcome
        {
            return outcome.clone();
        }
        if let Some(cached) = &*self.current.load() {
            let acceptable = match &accept {
                Accept::Usable => true,
                Accept::Not(failed) => cached.credential.header_value() != failed,
                Accept::FetchedOnly => false,
            };
            if acceptable && cached.usable(self.config.clock.now()) {
                return Ok(cached.credential.clone());
            }
        }
        let epoch = *self.lock_epoch();
        let outcome = self.fetch_cached(future, epoch).await;
        last.seq = last.seq.wrapping_add(1);
        last.epoch = epoch;
        last.outcome = Some(outcome.clone());
        self.fetches.store(last.seq, Ordering::Release);
        outcome
    }

    /// One callback call whose token is cached (unless the identity changed meanwhile).
    async fn fetch_cached(
        &self,
        future: CustomerTokenFuture,
        epoch: u64,
    ) -> Result<Credential, Error> {
        let clock = &self.config.clock;
        let (started, started_unix) = (clock.now(), clock.unix_now());
        let (credential, token) = self.call(future).await?;
        let stale_at = jwt_expiry(&token).map(|exp| {
            let left = exp.duration_since(started_unix).unwrap_or(Duration::ZERO);
            let hard = self
                .config
                .hard_window_max
                .min(left.mul_f64(self.config.hard_window_ratio));
            started
                .checked_add(left.saturating_sub(hard))
                .unwrap_or(started)
        });
        drop(token);
        let cached = Arc::new(Cached {
            credential: credential.clone(),
            stale_at,
        });
        let guard = self.lock_epoch();
        if *guard == epoch {
            self.current.store(Some(cached));
        } else {
            tracing::debug!("the customer changed during the fetch; its token is not cached");
        }
        drop(guard);
        Ok(credential)
    }

    /// One callback call, no cache.
    async fn fetch(&self, future: CustomerTokenFuture) -> Result<Credential, Error> {
        self.call(future).await.map(|(credential, _)| credential)
    }

    /// Awaits the callback and builds the credential. Also returns the bare token (without
    /// its scheme) for the expiry decode.
    async fn call(
        &self,
        future: CustomerTokenFuture,
    ) -> Result<(Credential, Zeroizing<String>), Error> {
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
        let bare = strip_bearer(&token);
        if bare.trim().is_empty() {
            return Err(Error::InvalidHeaderValue);
        }
        let value = if bare.len() == token.len() {
            let mut raw = Zeroizing::new(String::with_capacity(token.len() + 7));
            raw.push_str("Bearer ");
            raw.push_str(&token);
            HeaderValue::from_str(&raw)
        } else {
            HeaderValue::from_str(&token)
        }
        .map_err(|_| Error::InvalidHeaderValue)?;
        let generation = self.generation_for(&value);
        let bare = Zeroizing::new(bare.to_owned());
        Ok((Credential::new(value, generation), bare))
    }

    /// The generation of `value`: the last one's if it is the same token, a new one otherwise.
    fn generation_for(&self, value: &HeaderValue) -> Generation {
        let mut last = self
            .last_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        Err(other) => Error::Callback(Arc::from(other)),
    }
}

/// `token` without a leading `Bearer ` (any case).
fn strip_bearer(token: &str) -> &str {
    match token.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => &token[7..],
        _ => token,
    }
}

/// The token inside an `Authorization` value, without its `Bearer ` prefix.
fn token_of(value: &HeaderValue) -> Option<CustomerJwt> {
    value
        .to_str()
        .ok()
        .map(|v| CustomerJwt::new(strip_bearer(v).trim_start()))
}

/// The `exp` claim of a compact JWS, decoded **without** verifying anything. `None` when the
/// token is not a JWT or has no numeric `exp`.
pub(crate) fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if exp <= 0.0 || !exp.is_finite() {
        return Some(SystemTime::UNIX_EPOCH);
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::header::WWW_AUTHENTICATE;
    use http::{Extensions, Method};

    use super::*;
    use crate::clock::ManualClock;

    fn jwt_with_exp(exp: Option<u64>) -> String {
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

    fn unix_secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    async fn authorize(provider: &CustomerToken) -> Result<Credential, Error> {
        let extensions = Extensions::new();
        let request = RequestView::new(
            &Method::GET,
            "https",
            "api.example.com",
            "/",
            None,
            &extensions,
        );
        provider.authorize(&request).await
    }

    /// A provider over an async callback that counts its calls (polls, not future creations)
    /// and returns the tokens in turn (the last one forever).
    fn counting(tokens: Vec<Option<String>>) -> (CustomerToken, Arc<AtomicUsize>) {
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

    #[tokio::test]
    async fn adds_bearer_scheme_and_marks_the_value_sensitive() {
        let (provider, _) = counting(vec![Some("abc.def.ghi".to_owned())]);
        let credential = authorize(&provider).await.unwrap();
        assert_eq!(credential.header_value(), "Bearer abc.def.ghi");
        assert!(credential.header_value().is_sensitive());
    }

    #[tokio::test]
    async fn keeps_an_existing_bearer_scheme_in_any_case() {
        for given in ["Bearer abc", "bearer abc"] {
            let (provider, _) = counting(vec![Some(given.to_owned())]);
            let credential = authorize(&provider).await.unwrap();
            assert_eq!(credential.header_value(), given);
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
        for bad in ["line\nbreak", "", "Bearer "] {
            let (provider, _) = counting(vec![Some(bad.to_owned())]);
            assert!(
                matches!(authorize(&provider).await, Err(Error::InvalidHeaderValue)),
                "{bad:?}"
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
    async fn without_cache_every_request_asks_the_callback() {
        let (provider, calls) = counting(vec![Some(jwt_with_exp(None))]);
        for _ in 0..3 {
            authorize(&provider).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
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

    /// A minimal executor that is not tokio.
    fn block_on_outside_tokio<F: Future>(future: F) -> F::Output {
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

    #[tokio::test]
    async fn cache_serves_until_exp_minus_hard_window() {
        let clock = ManualClock::new();
        let exp = unix_secs(clock.unix_now()) + 100;
        let (provider, calls) = counting(vec![Some(jwt_with_exp(Some(exp)))]);
        let provider = provider.cache(true).clock(Arc::new(clock.clone()));

        authorize(&provider).await.unwrap();
        // Lifetime left ≈ 99-100 s: hard window = 10 s, so stale from ≈ 89-90 s.
        clock.advance(Duration::from_secs(88));
        let mut fresh = provider.authorize(&RequestView::new(
            &Method::GET,
            "https",
            "a",
            "/",
            None,
            &Extensions::new(),
        ));
        assert!(
            fresh.take_ready().is_some(),
            "a fresh cached token is served without waiting"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        clock.advance(Duration::from_secs(3));
        assert!(!provider.is_cached());
        authorize(&provider).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn hard_window_is_a_quarter_of_a_short_lifetime() {
        let clock = ManualClock::new();
        // Whole seconds: start the lifetime on a second boundary of the manual clock.
        let now = clock.unix_now();
        let frac = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        clock.advance(Duration::from_nanos(u64::from(1_000_000_000 - frac)));
        let exp = unix_secs(clock.unix_now()) + 20;
        let (provider, calls) = counting(vec![Some(jwt_with_exp(Some(exp)))]);
        let provider = provider.cache(true).clock(Arc::new(clock.clone()));

        authorize(&provider).await.unwrap();
        // 20 s left: hard window = 5 s, so the token is fresh until 15 s.
        clock.advance(Duration::from_millis(14_900));
        assert!(provider.is_cached());
        clock.advance(Duration::from_millis(200));
        assert!(!provider.is_cached());
        authorize(&provider).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn token_without_exp_is_cached_until_invalidate() {
        let clock = ManualClock::new();
        let (provider, calls) = counting(vec![Some("opaque-token".to_owned())]);
        let provider = provider.cache(true).clock(Arc::new(clock.clone()));
        authorize(&provider).await.unwrap();
        clock.advance(Duration::from_secs(365 * 24 * 3600));
        authorize(&provider).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        provider.invalidate();
        assert!(!provider.is_cached());
        authorize(&provider).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn already_expired_token_is_used_once_but_not_cached() {
        let clock = ManualClock::new();
        let exp = unix_secs(clock.unix_now()) - 5;
        let (provider, calls) = counting(vec![Some(jwt_with_exp(Some(exp)))]);
        let provider = provider.cache(true).clock(Arc::new(clock));
        authorize(&provider).await.unwrap();
        authorize(&provider).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn force_refresh_asks_the_callback_despite_a_fresh_cache() {
        let (provider, calls) = counting(vec![Some("a".to_owned()), Some("b".to_owned())]);
        let provider = provider.cache(true);
        authorize(&provider).await.unwrap();
        let mut extensions = Extensions::new();
        extensions.insert(crate::AuthorizationControl::ForceRefresh);
        let request = RequestView::new(&Method::GET, "https", "a", "/", None, &extensions);
        let credential = provider.authorize(&request).await.unwrap();
        assert_eq!(credential.header_value(), "Bearer b");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_on_an_empty_cache_share_one_callback_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let (counter, creations) = (Arc::clone(&calls), Arc::clone(&created));
        let provider = CustomerToken::from_fn(move || {
            creations.fetch_add(1, Ordering::SeqCst);
            let counter = Arc::clone(&counter);
            let mut released = released.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, BoxError>(Some("shared".to_owned()))
            }
        })
        .cache(true);

        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let provider = provider.clone();
                tokio::spawn(async move { authorize(&provider).await })
            })
            .collect();
        // Every request is on the slow path (its future created) before the callback answers.
        while created.load(Ordering::SeqCst) < 16 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut generations = Vec::new();
        for task in tasks {
            generations.push(task.await.unwrap().unwrap().generation());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(generations.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_waiters_share_a_callback_error() {
        let calls = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let (counter, creations) = (Arc::clone(&calls), Arc::clone(&created));
        let provider = CustomerToken::from_fn(move || {
            creations.fetch_add(1, Ordering::SeqCst);
            let counter = Arc::clone(&counter);
            let mut released = released.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Ok::<Option<String>, BoxError>(None)
            }
        })
        .cache(true);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let provider = provider.clone();
                tokio::spawn(async move { authorize(&provider).await })
            })
            .collect();
        while created.load(Ordering::SeqCst) < 8 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Err(Error::NoCredentials)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_the_fetching_request_lets_the_next_one_fetch() {
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut gate_rx = gate_rx.clone();
            async move {
                if n == 0 {
                    // The first call never answers: its request is dropped.
                    let _ = gate_rx.wait_for(|g| *g).await;
                }
                Ok::<_, BoxError>(Some("second".to_owned()))
            }
        })
        .cache(true);
        let first = {
            let provider = provider.clone();
            tokio::spawn(async move { authorize(&provider).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        first.abort();
        let _ = first.await;
        let credential = tokio::time::timeout(Duration::from_secs(5), authorize(&provider))
            .await
            .expect("the next request must not hang")
            .unwrap();
        assert_eq!(credential.header_value(), "Bearer second");
        drop(gate);
    }

    #[tokio::test]
    async fn invalidate_during_a_fetch_keeps_the_old_customers_token_out_of_the_cache() {
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut gate_rx = gate_rx.clone();
            async move {
                let _ = gate_rx.wait_for(|g| *g).await;
                Ok::<_, BoxError>(Some(format!("customer-{n}")))
            }
        })
        .cache(true);
        let first = {
            let provider = provider.clone();
            tokio::spawn(async move { authorize(&provider).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        provider.invalidate();
        gate.send_replace(true);
        assert_eq!(
            first.await.unwrap().unwrap().header_value(),
            "Bearer customer-0"
        );
        assert!(!provider.is_cached());
        let next = authorize(&provider).await.unwrap();
        assert_eq!(next.header_value(), "Bearer customer-1");
    }

    #[tokio::test]
    async fn fresh_cached_path_is_ready_without_polling() {
        let (provider, _) = counting(vec![Some("t".to_owned())]);
        let provider = provider.cache(true);
        authorize(&provider).await.unwrap();
        let extensions = Extensions::new();
        let request = RequestView::new(&Method::GET, "https", "a", "/", None, &extensions);
        let mut future = provider.authorize(&request);
        assert!(matches!(future, AuthorizeFuture::Ready(_)));
        assert_eq!(
            future.take_ready().unwrap().unwrap().header_value(),
            "Bearer t"
        );
    }

    async fn unauthorized(
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
    async fn gives_up_after_401_when_the_callback_returns_none() {
        let (provider, _) = counting(vec![Some("old".to_owned()), None]);
        let provider = provider.cache(true);
        let failed = authorize(&provider).await.unwrap();
        let answer = unauthorized(
            &provider,
            &failed,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
        )
        .await;
        assert!(matches!(answer, Unauthorized::GiveUp));
        assert!(!provider.is_cached(), "the rejected token was dropped");
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
    async fn a_401_for_an_older_token_retries_with_the_cached_one_without_a_call() {
        let (provider, calls) = counting(vec![Some("old".to_owned()), Some("new".to_owned())]);
        let provider = provider.cache(true);
        let old = authorize(&provider).await.unwrap();
        let Unauthorized::Retry(new) =
            unauthorized(&provider, &old, StatusCode::UNAUTHORIZED, &HeaderMap::new()).await
        else {
            panic!("expected a retry");
        };
        // A second request that had also been sent with `old` gets `new` at once.
        let answer =
            unauthorized(&provider, &old, StatusCode::UNAUTHORIZED, &HeaderMap::new()).await;
        assert!(matches!(answer, Unauthorized::Retry(c) if c.header_value() == new.header_value()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
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
    fn decodes_exp_without_verification() {
        let token = jwt_with_exp(Some(1_700_000_000));
        assert_eq!(
            jwt_expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_expiry(&jwt_with_exp(None)), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("a.b.c.d.e"), None);
    }
}
