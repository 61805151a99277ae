//! The customer-token cache: one token, kept until its `exp` minus the hard window, fetched by
//! one callback call at a time on a task of its own.
//!
//! - Reads are lock-free ([`ArcSwapOption`]); a usable token is served without waiting.
//! - A request that finds no usable token joins the fetch in flight or starts one through the
//!   crate's [`SingleFlight`]: the callback runs on a task spawned on the current tokio
//!   runtime, so a request that is dropped, or parked and never polled again, neither cancels
//!   the fetch nor holds up the requests that share it.
//! - "Look at the cache, then join or start" and "publish the token, then free the slot" each
//!   happen under one lock, so a request never starts a second callback call for a token it
//!   could have had.
//! - [`Cache::invalidate`] starts a new epoch with a flight of its own: a fetch started before
//!   it publishes nothing afterwards, and requests after it neither join nor wait for that
//!   fetch (it is for the previous customer).
//! - A fetch gives the callback at most the callback timeout; then its requests get
//!   [`Error::RefreshAborted`] and the next request starts a new fetch. The flight counts a
//!   fetch as stranded a little after that timeout ([`stranded_after`]): a fetch whose task
//!   sits on a runtime that is no longer driven (so its timer never fires) is replaced too,
//!   and the requests waiting for it are released.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::claims::jwt_expiry;
use super::source::{Answers, CustomerTokenFuture};
use crate::clock::Clock;
use crate::error::Error;
use crate::provider::Credential;
use crate::single_flight::{Completion, SingleFlight, Waiter};

/// What one fetch hands to every request that shares it.
type Outcome = Result<Credential, Error>;

/// A cached token is treated as expired this long before its `exp`, at most…
const HARD_WINDOW_MAX: Duration = Duration::from_secs(10);
/// …and never more than this share of the lifetime left when it was fetched.
const HARD_WINDOW_RATIO: f64 = 0.25;

/// How long a fetch gives the callback by default.
pub(super) const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The age past which a fetch that the callback timeout did not end counts as stranded (its
/// task's runtime no longer driven): the timeout plus as much again, at least 100 ms and at
/// most 1 s. The margin covers the time between the fetch's start and its task's first poll,
/// so a fetch on a driven runtime always ends by its own timeout first.
pub(super) fn stranded_after(callback_timeout: Duration) -> Duration {
    let margin = callback_timeout.clamp(Duration::from_millis(100), Duration::from_secs(1));
    callback_timeout.saturating_add(margin)
}

/// How long before its `exp` a cached token is treated as expired:
/// `min(max, ratio × lifetime left at fetch time)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HardWindow {
    max: Duration,
    /// In `0.0..=1.0`.
    ratio: f64,
}

impl Default for HardWindow {
    fn default() -> Self {
        Self {
            max: HARD_WINDOW_MAX,
            ratio: HARD_WINDOW_RATIO,
        }
    }
}

impl HardWindow {
    /// A window of `min(max, ratio × lifetime)`; `ratio` is clamped to `0.0..=1.0` (NaN → 0).
    pub(super) fn new(max: Duration, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self { max, ratio }
    }

    pub(super) fn max(&self) -> Duration {
        self.max
    }

    pub(super) fn ratio(&self) -> f64 {
        self.ratio
    }

    /// When a token fetched at `started` (`started_unix` on the wall clock) stops being
    /// usable; `None` when it has no `exp` (usable until invalidated).
    fn stale_at(&self, token: &str, started: Instant, started_unix: SystemTime) -> Option<Instant> {
        jwt_expiry(token).map(|exp| {
            let left = exp.duration_since(started_unix).unwrap_or(Duration::ZERO);
            // `ratio` is finite and in 0..=1, so the product is at most `left`.
            let hard = self.max.min(left.mul_f64(self.ratio));
            started
                .checked_add(left.saturating_sub(hard))
                .unwrap_or(started)
        })
    }
}

/// What a request that found no usable token at first glance will take from the cache when it
/// looks again under the lock, instead of joining or starting a fetch.
pub(super) enum Accept<'a> {
    /// Any usable token.
    Usable,
    /// A usable token other than this one (the one a 401 rejected).
    Not(&'a HeaderValue),
    /// Nothing cached: only a fetch will do (a forced refresh).
    New,
}

/// Where [`Cache::lookup`] found the credential.
pub(super) enum Lookup {
    /// In the cache.
    Cached(Credential),
    /// In the fetch in flight, joined or just started.
    Fetching(Fetching),
}

/// A request's share of one fetch.
pub(super) struct Fetching(Waiter<Outcome>);

impl Fetching {
    /// The fetch's outcome.
    ///
    /// # Errors
    ///
    /// The callback's error, shared by every request of this fetch, or
    /// [`Error::RefreshAborted`] when the callback did not answer within the callback timeout,
    /// or the fetch task stopped first (its runtime shut down, or the callback panicked), or
    /// the fetch is stranded (its runtime is no longer driven).
    pub(super) async fn credential(self) -> Result<Credential, Error> {
        self.0.wait().await?
    }
}

/// The cache of one provider and its clones. Only built when the cache is on.
pub(super) struct Cache {
    shared: Arc<Shared>,
}

/// What the cache and its fetch tasks share.
struct Shared {
    /// Makes the source's answers credentials.
    answers: Arc<Answers>,
    clock: Arc<dyn Clock>,
    window: HardWindow,
    /// How long a fetch waits for the callback.
    callback_timeout: Duration,
    /// The cached token. Read without locking; written under `state`.
    current: ArcSwapOption<Cached>,
    state: Mutex<State>,
}

struct State {
    /// Bumped by `invalidate`; a fetch started in an older epoch publishes nothing.
    epoch: u64,
    /// The fetches of this epoch; `invalidate` replaces it.
    flight: SingleFlight<Outcome>,
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

impl Cache {
    /// An empty cache whose expiry decisions use `clock`, and whose fetches give the callback
    /// `callback_timeout`.
    pub(super) fn new(
        answers: Arc<Answers>,
        clock: Arc<dyn Clock>,
        window: HardWindow,
        callback_timeout: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                answers,
                clock,
                window,
                callback_timeout,
                current: ArcSwapOption::empty(),
                state: Mutex::new(State {
                    epoch: 0,
                    flight: new_flight(callback_timeout),
                }),
            }),
        }
    }

    /// The cached credential if it is usable (lock-free: the fresh path).
    pub(super) fn usable(&self) -> Option<Credential> {
        self.shared.acceptable(&Accept::Usable)
    }

    /// Whether a token is cached, usable or not.
    pub(super) fn holds_a_token(&self) -> bool {
        self.shared.current.load().is_some()
    }

    /// Drops the cached token and starts a new epoch: a fetch in flight publishes nothing,
    /// and later requests start a fetch of their own.
    pub(super) fn invalidate(&self) {
        let mut state = self.shared.lock();
        state.epoch = state.epoch.wrapping_add(1);
        state.flight = new_flight(self.shared.callback_timeout);
        self.shared.current.store(None);
    }

    /// After a 401 for `failed`: the cached credential when it is usable and another token
    /// (the request was sent with an older one); otherwise `None`, and `failed` is no longer
    /// cached.
    pub(super) fn after_unauthorized(&self, failed: &HeaderValue) -> Option<Credential> {
        let current = self.shared.current.load_full();
        let cached = current.as_ref()?;
        if cached.credential.header_value() == failed {
            // Only if nothing newer was published meanwhile.
            self.shared.current.compare_and_swap(&current, None);
            return None;
        }
        cached
            .usable(self.shared.clock.now())
            .then(|| cached.credential.clone())
    }

    /// The cached credential if `accept` takes it; otherwise a share of the fetch in flight,
    /// or of a new one that runs on a task of its own.
    ///
    /// `source` is called once the request has joined or started a fetch (never when the cache
    /// answers), outside the lock: the future it makes is what a new fetch awaits, and is
    /// dropped unpolled when the request joined one already in flight.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when a fetch must start and no tokio runtime runs on this thread.
    pub(super) fn lookup(
        &self,
        accept: Accept<'_>,
        source: impl FnOnce() -> CustomerTokenFuture,
    ) -> Result<Lookup, Error> {
        let mut hand_over = None;
        let waiter = {
            let state = self.shared.lock();
            if let Some(credential) = self.shared.acceptable(&accept) {
                return Ok(Lookup::Cached(credential));
            }
            let epoch = state.epoch;
            state.flight.join_or_start(|completion| {
                let (tx, rx) = oneshot::channel();
                hand_over = Some((tx, state.flight.clone()));
                // A child of the request that starts the fetch.
                let span = tracing::debug_span!("client_auth.customer_token_fetch");
                run(Arc::clone(&self.shared), completion, epoch, rx).instrument(span)
            })?
        };
        // Outside the lock, so that no code of the source's runs under it. The new task gets
        // the future; a task its runtime dropped at once hands it back, and it is dropped
        // here, as it is when the request joined a fetch in flight.
        let future = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(source)) {
            Ok(future) => future,
            Err(panic) => {
                // The source panicked before the new fetch got its work: free the slot now,
                // so the next request starts a fetch instead of joining one that can only
                // abort. The panic is the source's own; it goes on to this request.
                if let Some((_, flight)) = &hand_over {
                    flight.abandon(&waiter);
                }
                std::panic::resume_unwind(panic);
            }
        };
        if let Some((tx, _)) = hand_over {
            let _ = tx.send(future);
        }
        Ok(Lookup::Fetching(Fetching(waiter)))
    }
}

/// A flight whose fetches count as stranded a little after the callback timeout.
fn new_flight(callback_timeout: Duration) -> SingleFlight<Outcome> {
    SingleFlight::with_max_age(Some(stranded_after(callback_timeout)))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before anything in it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acceptable(&self, accept: &Accept<'_>) -> Option<Credential> {
        let current = self.current.load();
        let cached = current.as_ref()?;
        let wanted = match accept {
            Accept::Usable => true,
            Accept::Not(failed) => cached.credential.header_value() != *failed,
            Accept::New => false,
        };
        (wanted && cached.usable(self.clock.now())).then(|| cached.credential.clone())
    }
}

/// The fetch task: awaits the callback (for at most the callback timeout), caches its token
/// (unless the epoch changed), then hands the outcome to every request that shares it. A
/// callback that does not answer in time is dropped and the requests get
/// [`Error::RefreshAborted`]. Dropped half-way (its runtime shut down, or the callback
/// panicked), `completion`'s drop frees the slot and the requests see
/// [`Error::RefreshAborted`] too.
async fn run(
    shared: Arc<Shared>,
    completion: Completion<Outcome>,
    epoch: u64,
    future: oneshot::Receiver<CustomerTokenFuture>,
) {
    // Sent by the request that started this task, right after the spawn (an error: its
    // source panicked).
    let Ok(future) = future.await else {
        return;
    };
    let (started, started_unix) = (shared.clock.now(), shared.clock.unix_now());
    let fetch = Arc::clone(&shared.answers).fetch(future);
    let outcome = match tokio::time::timeout(shared.callback_timeout, fetch).await {
        Ok(fetched) => fetched,
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(shared.callback_timeout.as_millis()).unwrap_or(u64::MAX),
                "the customer-token callback did not answer within the callback timeout; its requests fail"
            );
            Err(Error::RefreshAborted)
        }
    };
    let outcome = outcome.map(|fetched| {
        let stale_at = shared
            .window
            .stale_at(&fetched.token, started, started_unix);
        Arc::new(Cached {
            credential: fetched.credential,
            stale_at,
        })
    });
    {
        let state = shared.lock();
        match &outcome {
            Ok(cached) if state.epoch == epoch => shared.current.store(Some(Arc::clone(cached))),
            Ok(_) => {
                tracing::debug!("the customer changed during the fetch; its token is not cached")
            }
            Err(_) => {}
        }
        // One step with the publication for `lookup`, which looks under the same lock.
        completion.release_slot();
    }
    completion.complete(outcome.map(|cached| cached.credential.clone()));
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    use http::{Extensions, HeaderMap, Method, StatusCode};

    use super::*;
    use crate::clock::ManualClock;
    use crate::customer::tests::{
        authorize, authorize_now, counting, gated, jwt_with_exp, unauthorized, unix_secs,
    };
    use crate::customer::{BoxError, CustomerToken};
    use crate::provider::{AuthorizationProvider, AuthorizeFuture, RequestView, Unauthorized};

    /// Long enough for any fetch of these tests; only reached when the code under test hangs.
    const HANG: Duration = Duration::from_secs(5);

    /// Polls `future` once; `true` when it is still pending.
    async fn poll_once(future: &mut AuthorizeFuture) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx).is_pending())).await
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        tokio::time::timeout(HANG, async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the condition should hold by now");
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
    async fn a_parked_request_does_not_block_other_requests() {
        // Cache off: the second request has a callback call of its own.
        let (provider, calls, _gate) = gated(|n| n == 0);
        let mut parked = authorize_now(&provider);
        assert!(poll_once(&mut parked).await, "the first call waits");
        let second = tokio::time::timeout(HANG, authorize(&provider))
            .await
            .expect("the second request must not wait for the parked one")
            .unwrap();
        assert_eq!(second.header_value(), "Bearer token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(parked);

        // Cache on: the second request joins the one fetch and finishes when it does, though
        // the request that started it is never polled again.
        let (provider, calls, gate) = gated(|_| true);
        let provider = provider.cache(true);
        let mut parked = authorize_now(&provider);
        assert!(poll_once(&mut parked).await);
        let second = {
            let provider = provider.clone();
            tokio::spawn(async move { authorize(&provider).await })
        };
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished(), "the fetch has not answered yet");
        gate.send_replace(true);
        let second = tokio::time::timeout(HANG, second)
            .await
            .expect("the second request must not wait for the parked one")
            .unwrap()
            .unwrap();
        assert_eq!(second.header_value(), "Bearer token-0");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for both");
        assert!(provider.is_cached());
        drop(parked);
    }

    #[tokio::test]
    async fn dropping_the_request_that_started_a_fetch_does_not_cancel_it() {
        let (provider, calls, gate) = gated(|_| true);
        let provider = provider.cache(true);
        let first = {
            let provider = provider.clone();
            tokio::spawn(async move { authorize(&provider).await })
        };
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        gate.send_replace(true);
        // The fetch finishes without its request and caches its token.
        until(|| provider.is_cached()).await;
        let next = authorize_now(&provider)
            .take_ready()
            .expect("served from the cache")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer token-0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_fetch_task_dropped_unpolled_does_not_wedge_the_provider() {
        let (provider, calls) = counting(vec![Some("t".to_owned())]);
        let provider = provider.cache(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        // Spawning on a runtime that has shut down drops the fetch task unpolled.
        let first = {
            let _enter = handle.enter();
            authorize_now(&provider)
        };
        let healthy = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let first = healthy.block_on(first);
        assert!(matches!(first, Err(Error::RefreshAborted)), "{first:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the fetch never ran");
        let next = healthy
            .block_on(async { tokio::time::timeout(HANG, authorize(&provider)).await })
            .expect("the provider must not be wedged")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer t");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_callback_fails_its_requests_without_wedging_the_cache() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "a callback bug");
                Ok::<_, BoxError>(Some("t".to_owned()))
            }
        })
        .cache(true);
        let first = tokio::time::timeout(HANG, authorize(&provider))
            .await
            .expect("the request must not hang");
        assert!(matches!(first, Err(Error::RefreshAborted)), "{first:?}");
        let next = tokio::time::timeout(HANG, authorize(&provider))
            .await
            .expect("the provider must not be wedged")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer t");
    }

    /// A provider over an async callback whose first call never answers and whose call `n`
    /// (from 0) answers `token-{n}` otherwise; counts calls when polled.
    fn first_call_never_answers() -> (CustomerToken, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = CustomerToken::from_fn(move || {
            let counter = Arc::clone(&counter);
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Some(format!("token-{n}")))
            }
        });
        (provider, calls)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_callback_that_never_answers_fails_its_requests_after_the_callback_timeout() {
        let timeout = Duration::from_millis(150);
        let (provider, calls) = first_call_never_answers();
        let provider = provider.cache(true).callback_timeout(timeout);
        let started = Instant::now();
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let provider = provider.clone();
                tokio::spawn(async move { authorize(&provider).await })
            })
            .collect();
        for request in requests {
            let outcome = tokio::time::timeout(HANG, request)
                .await
                .expect("the requests must not wait for the callback for ever")
                .unwrap();
            let error = outcome.expect_err("the callback never answered");
            assert!(matches!(error, Error::RefreshAborted), "{error:?}");
            assert!(error.is_transient());
        }
        let waited = started.elapsed();
        assert!(
            waited >= timeout,
            "failed after {waited:?}, before the timeout"
        );
        assert!(
            waited < Duration::from_secs(2),
            "failed only after {waited:?}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one call for the three requests"
        );
        assert!(!provider.is_cached());
        // The next request starts a new call, which answers.
        let next = tokio::time::timeout(HANG, authorize(&provider))
            .await
            .expect("the provider must not be wedged")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_fetch_stranded_on_an_idle_runtime_is_replaced() {
        // Stranded after 500 ms.
        let timeout = Duration::from_millis(250);
        let (provider, calls) = first_call_never_answers();
        let provider = provider.cache(true).callback_timeout(timeout);
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let healthy = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The fetch task is spawned on `idle`, polled once there (its callback call starts and
        // never answers), and then nobody drives `idle` again: its timeout never fires.
        let mut stranded = {
            let _enter = idle.enter();
            authorize_now(&provider)
        };
        idle.block_on(async {
            assert!(poll_once(&mut stranded).await);
            until(|| calls.load(Ordering::SeqCst) == 1).await;
        });
        // A request on `healthy` joins the stranded fetch; it is released once the fetch is
        // older than the stranded age, and the next request starts a new fetch.
        let started = Instant::now();
        let joined = healthy
            .block_on(async { tokio::time::timeout(HANG, authorize(&provider)).await })
            .expect("a request must not wait for a stranded fetch for ever");
        assert!(matches!(joined, Err(Error::RefreshAborted)), "{joined:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let next = healthy
            .block_on(async { tokio::time::timeout(HANG, authorize(&provider)).await })
            .expect("the provider must not be wedged")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(stranded);
        drop(idle);
    }

    #[test]
    fn the_stranded_age_is_a_little_above_the_callback_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(stranded_after(Duration::ZERO), ms(100));
        assert_eq!(stranded_after(ms(150)), ms(300));
        assert_eq!(stranded_after(DEFAULT_CALLBACK_TIMEOUT), ms(6_000));
        assert_eq!(stranded_after(Duration::from_secs(30)), ms(31_000));
        assert_eq!(stranded_after(Duration::MAX), Duration::MAX);
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
    async fn invalidate_during_a_fetch_keeps_its_token_out_of_the_cache() {
        // The first customer's fetch hangs until released.
        let (provider, calls, gate) = gated(|n| n == 0);
        let provider = provider.cache(true);
        let first = {
            let provider = provider.clone();
            tokio::spawn(async move { authorize(&provider).await })
        };
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        provider.invalidate();
        // The next customer's request neither waits for nor shares the old fetch.
        let next = tokio::time::timeout(HANG, authorize(&provider))
            .await
            .expect("must not wait for the previous customer's fetch")
            .unwrap();
        assert_eq!(next.header_value(), "Bearer token-1");
        // The old fetch finishes last: its request gets its token, the cache does not.
        gate.send_replace(true);
        let old = tokio::time::timeout(HANG, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(old.header_value(), "Bearer token-0");
        let cached = authorize_now(&provider)
            .take_ready()
            .expect("the new customer's token is cached")
            .unwrap();
        assert_eq!(cached.header_value(), "Bearer token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_401s_for_one_token_share_one_callback_call() {
        // Call 0 answers at once; call 1 (after the 401s) waits until released.
        let (provider, calls, gate) = gated(|n| n == 1);
        let provider = provider.cache(true);
        let failed = authorize(&provider).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(provider.on_unauthorized(
                    &failed,
                    StatusCode::UNAUTHORIZED,
                    &HeaderMap::new(),
                ))
            })
            .collect();
        gate.send_replace(true);
        for task in tasks {
            let answer = task.await.unwrap().unwrap();
            assert!(
                matches!(&answer, Unauthorized::Retry(c) if c.header_value() == "Bearer token-1"),
                "{answer:?}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
