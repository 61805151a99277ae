//! The token cache: lock-free reads, exactly one refresh in flight, stale-while-refresh,
//! cancellation-safe refreshes on a spawned task, generation-checked 401 handling, backoff.
//!
//! Reads go through an `ArcSwapOption` and never lock while a usable token exists, whatever
//! the state (backing off included). Everything that decides whether to refresh takes the
//! `state` mutex briefly (never across an `.await`). A refresh runs on its own task through the
//! crate's single-flight primitive, so dropping the request that started it changes nothing.
//!
//! Session operations (`logout`, `clear`, `set_tokens`) bump an epoch. A refresh that started
//! under an older epoch writes nothing: its store write happens under the `write_gate` after an
//! epoch check, and a session operation takes the same gate for its own store write, so the
//! store always ends with what the last session operation or a refresh of the current session
//! wrote. The superseded refresh's waiters join the new session's state.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, StatusCode};
use tracing::Instrument as _;

use super::response::{GrantKind, MAX_LIFETIME, parse_token_response, rotated_refresh_token};
use super::{Config, Inputs, TokenTransport, Tokens};
use crate::clock::Clock;
use crate::error::{Error, SessionEnd, StoreError, TransportError};
use crate::provider::{AuthorizeFuture, Credential, Generation, Unauthorized, UnauthorizedFuture};
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
use crate::provider::{Binding, RequestView};
use crate::secret::{AccessToken, RefreshToken};
use crate::session::{SessionReason, SessionState, SessionWatch};
use crate::single_flight::{Completion, SingleFlight, Waiter};
use crate::store::{RefreshLease, StoredTokens, TokenStore};
use crate::www_authenticate::{claims_challenge, refresh_may_help};

/// A published access token with its decision points.
#[derive(Debug)]
pub(crate) struct Cached {
    credential: Credential,
    token: AccessToken,
    /// From here on, serve and refresh in the background (soft window, jittered).
    refresh_at: Option<Instant>,
    /// From here on, treat as expired (hard window).
    stale_at: Option<Instant>,
    scope: Option<String>,
    /// The claims its token request carried (a claims challenge's), if any.
    claims: Option<String>,
    /// Set the first time a response other than 401 came back for this token.
    accepted: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Fresh,
    Soft,
    Stale,
}

impl Cached {
    fn freshness(&self, now: Instant) -> Freshness {
        if self.stale_at.is_some_and(|t| now >= t) {
            Freshness::Stale
        } else if self.refresh_at.is_some_and(|t| now >= t) {
            Freshness::Soft
        } else {
            Freshness::Fresh
        }
    }
}

/// When a token expires: its whole lifetime (for the windows) and its deadline.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    lifetime: Duration,
    at: Instant,
}

type Outcome = Result<Arc<Cached>, Error>;

/// What a caller needs before it may skip a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A token not yet in the hard window.
    Usable,
    /// A token not yet in the soft window (background refresh).
    Fresh,
    /// A new token, whatever the current one.
    New,
}

enum Join<T = Arc<Cached>> {
    Current(T),
    Wait(Waiter<Outcome>),
}

#[derive(Debug, Default)]
struct State {
    refresh_token: Option<RefreshToken>,
    /// Whether the store has been read (or tokens were handed in).
    loaded: bool,
    /// Set when there is no session: every caller gets this error without network.
    ended: Option<Error>,
    /// Until when failed refreshes are not retried, and the error callers get meanwhile.
    backoff: Option<(Instant, Error)>,
    failures: u32,
    /// Consecutive answers with a lifetime under the floor.
    short_lived: u32,
    /// 401s for never-accepted tokens refresh only after this instant.
    cooldown_until: Option<Instant>,
    /// Bumped by every session operation; a refresh from an older epoch publishes nothing.
    epoch: u64,
    /// A session operation could not write the store: it may still hold tokens from before
    /// that operation, so nothing is adopted from it until a write succeeds.
    store_stale: bool,
    /// The span of the refresh in flight (or the last one): it is linked to every request that
    /// starts or waits for it, so a slow request leads to the token call that held it.
    refresh_span: Option<tracing::Span>,
}

/// The state behind an `OAuthProvider`.
pub(crate) struct Engine {
    pub(crate) config: Config,
    transport: Arc<dyn TokenTransport>,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    current: ArcSwapOption<Cached>,
    state: Mutex<State>,
    flight: SingleFlight<Outcome>,
    /// Serialises store writes of refreshes with those of session operations.
    write_gate: tokio::sync::Mutex<()>,
    /// Counts `set_tokens` calls: a token request under way when it changes is abandoned, so
    /// the new session's callers do not wait for it.
    replaced: tokio::sync::watch::Sender<u64>,
    /// Steps of the 401 cooldown for never-accepted tokens; reset when any token is accepted.
    cooldown_step: AtomicU32,
    /// A claims challenge's `claims`, sent with the next token request only.
    claims: Mutex<Option<String>>,
    /// The claims the last token request that carried any asked for: a challenge repeating
    /// them is an ordinary 401 (cooldown included), since asking again would not change the
    /// answer.
    claims_asked: Mutex<Option<String>>,
    /// While backing off, no refresh-ahead before this point (nanoseconds after `base`), so the
    /// hot path in the soft window stays lock-free.
    ahead_not_before: AtomicU64,
    base: Instant,
    pub(crate) session: SessionWatch,
    generation: AtomicU64,
}

/// Tokens a refresh got, from the token endpoint or from the store.
struct Refreshed {
    cached: Arc<Cached>,
    refresh_token: Option<RefreshToken>,
    reason: SessionReason,
    /// What to write to the store (`None` when the tokens came from it).
    stored: Option<StoredTokens>,
    short_lived: bool,
    /// Whether the token endpoint's answer carried a new refresh token.
    rotated: bool,
}

/// A failed refresh, with a rotated refresh token its answer carried, if any.
struct Failed {
    error: Error,
    rotated: Option<RefreshToken>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            rotated: None,
        }
    }
}

/// `work`, unless `set_tokens` is called first (`None`).
async fn until_replaced<T>(
    mut replaced: tokio::sync::watch::Receiver<u64>,
    work: impl Future<Output = T>,
) -> Option<T> {
    let seen = *replaced.borrow_and_update();
    let mut work = pin!(work);
    let mut replaced = pin!(replaced.wait_for(|now| *now != seen));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match replaced.as_mut().poll(cx) {
            Poll::Ready(Ok(_)) => Poll::Ready(None),
            // The sender lives in the engine, which this refresh holds: never closed here.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Tokens handed to `set_tokens` after validation.
struct Handed {
    cached: Option<Arc<Cached>>,
    stored: StoredTokens,
    refresh_token: Option<RefreshToken>,
}

impl Engine {
    pub(crate) fn new(
        config: Config,
        transport: Arc<dyn TokenTransport>,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
        refresh_token: Option<RefreshToken>,
        access_token: Option<(AccessToken, Option<Duration>)>,
    ) -> Result<Self, Error> {
        let handed_in = refresh_token.is_some() || access_token.is_some();
        let base = clock.now();
        // The longest a refresh can legitimately take: reads and writes of the store, the lease,
        // the token request (twice, after an invalid_grant with a newer stored token).
        let max_refresh = config
            .store_timeout
            .saturating_mul(8)
            .saturating_add(config.lease_ttl)
            .saturating_add(config.timeout.saturating_mul(3));
        let engine = Self {
            config,
            transport,
            store,
            clock,
            current: ArcSwapOption::empty(),
            state: Mutex::new(State {
                refresh_token,
                loaded: handed_in,
                ..State::default()
            }),
            flight: SingleFlight::with_max_age(Some(max_refresh)),
            write_gate: tokio::sync::Mutex::new(()),
            replaced: tokio::sync::watch::Sender::new(0),
            cooldown_step: AtomicU32::new(0),
            claims: Mutex::new(None),
            claims_asked: Mutex::new(None),
            ahead_not_before: AtomicU64::new(0),
            base,
            session: SessionWatch::new(if handed_in {
                SessionState::Authenticated(SessionReason::Authenticated)
            } else {
                SessionState::Unknown
            }),
            generation: AtomicU64::new(0),
        };
        if let Some((token, expires_in)) = access_token {
            let now = engine.clock.now();
            let expiry = engine.expiry_from_now(expires_in, None, now);
            let cached = engine.make_cached(token, expiry, None, false)?;
            engine.current.store(Some(cached));
        }
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before it can panic, so a poisoned
        // lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn session_state(&self) -> SessionState {
        self.session.get()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The expiry of a token with `remaining` time left from `now`, whose whole lifetime was
    /// `lifetime` (when known; otherwise the remaining time is taken as the whole). Both are
    /// capped like a network answer's.
    fn expiry_from_now(
        &self,
        remaining: Option<Duration>,
        lifetime: Option<Duration>,
        now: Instant,
    ) -> Option<Expiry> {
        let remaining = remaining.or(self.config.assume_lifetime)?.min(MAX_LIFETIME);
        let lifetime = lifetime
            .filter(|l| *l >= remaining)
            .unwrap_or(remaining)
            .min(MAX_LIFETIME);
        Some(Expiry {
            lifetime,
            at: now.checked_add(remaining)?,
        })
    }

    fn make_cached(
        &self,
        token: AccessToken,
        expiry: Option<Expiry>,
        scope: Option<String>,
        dpop_bound: bool,
    ) -> Result<Arc<Cached>, Error> {
        // Empty or whitespace-only tokens (from a store, too) are refused like any other.
        let scheme = if dpop_bound { "DPoP" } else { "Bearer" };
        let value = crate::auth_header::header_value(scheme, token.expose_secret())?;
        let generation = Generation::new(self.generation.fetch_add(1, Ordering::Relaxed) + 1);
        let mut credential = Credential::new(value, generation);
        if dpop_bound {
            credential = self.dpop_template(credential, &token)?;
        }
        let (refresh_at, stale_at) = match expiry {
            None => (None, None),
            Some(Expiry { lifetime, at }) => {
                let w = &self.config.windows;
                let (soft, hard) = w.for_lifetime(lifetime);
                let jitter = soft
                    .saturating_sub(hard)
                    .mul_f64(fastrand::f64() * w.jitter);
                let before = |d: Duration| at.checked_sub(d).unwrap_or(at);
                let refresh_at = before(soft.saturating_sub(jitter));
                (Some(refresh_at), Some(before(hard)))
            }
        };
        Ok(Arc::new(Cached {
            credential,
            token,
            refresh_at,
            stale_at,
            scope,
            claims: None,
            accepted: AtomicBool::new(false),
        }))
    }

    /// The fast path for a request: a credential at hand, or a wait for the one refresh.
    pub(crate) fn authorize(self: &Arc<Self>, force: bool) -> AuthorizeFuture {
        match self.get(force, |cached| cached.credential.clone()) {
            Ok(Join::Current(credential)) => AuthorizeFuture::ready(Ok(credential)),
            Ok(Join::Wait(waiter)) => {
                let (metrics, timer) = self.wait_timer();
                AuthorizeFuture::pending(async move {
                    let outcome = waiter.wait().await;
                    metrics.refresh_wait_done(timer);
                    outcome?.map(|c| c.credential.clone())
                })
            }
            Err(e) => AuthorizeFuture::ready(Err(e)),
        }
    }

    /// What a caller that waits for a refresh records when its wait ends.
    fn wait_timer(&self) -> (crate::metrics::OAuthMetrics, crate::metrics::Timer) {
        let metrics = self.config.metrics.clone();
        let timer = metrics.refresh_wait();
        (metrics, timer)
    }

    /// The current access token for callers that set headers themselves.
    pub(crate) async fn current_token(self: &Arc<Self>, force: bool) -> Result<AccessToken, Error> {
        match self.get(force, |cached| cached.token.clone())? {
            Join::Current(token) => Ok(token),
            Join::Wait(waiter) => {
                let timer = self.config.metrics.refresh_wait();
                let outcome = waiter.wait().await;
                self.config.metrics.refresh_wait_done(timer);
                Ok(outcome??.token.clone())
            }
        }
    }

    /// Marks the token behind `credential` as accepted by the server: no lock, no allocation.
    pub(crate) fn accepted(&self, credential: &Credential) {
        if let Some(cached) = &*self.current.load()
            && cached.credential.generation() == credential.generation()
            && !cached.accepted.load(Ordering::Relaxed)
        {
            cached.accepted.store(true, Ordering::Relaxed);
            // Once per token: a token was accepted, so the 401 cooldown starts over.
            self.cooldown_step.store(0, Ordering::Relaxed);
        }
    }

    /// The current token (through `pick`, so the hot path clones only what it needs) or the
    /// refresh to wait for.
    fn get<T>(
        self: &Arc<Self>,
        force: bool,
        pick: impl Fn(&Arc<Cached>) -> T,
    ) -> Result<Join<T>, Error> {
        let now = self.clock.now();
        if !force && let Some(cached) = &*self.current.load() {
            match cached.freshness(now) {
                Freshness::Fresh => return Ok(Join::Current(pick(cached))),
                Freshness::Soft => {
                    self.refresh_ahead(now);
                    return Ok(Join::Current(pick(cached)));
                }
                Freshness::Stale => {}
            }
        }
        Ok(
            match self.join(if force { Need::New } else { Need::Usable }, now)? {
                Join::Current(cached) => Join::Current(pick(&cached)),
                Join::Wait(waiter) => Join::Wait(waiter),
            },
        )
    }

    /// Inside the soft window: make sure one background refresh runs; never wait. Lock-free
    /// while a refresh runs or while backing off.
    fn refresh_ahead(self: &Arc<Self>, now: Instant) {
        if self.flight.is_running()
            || self.nanos(now) < self.ahead_not_before.load(Ordering::Relaxed)
        {
            return;
        }
        match self.join(Need::Fresh, now) {
            Ok(_) => {}
            Err(Error::NoRuntime) => {
                tracing::debug!("no tokio runtime: the token is served without refreshing ahead");
            }
            Err(_) => {} // backing off or no session: the still-valid token is served
        }
    }

    /// Joins the refresh in flight, or starts one, unless the current token meets `need`.
    fn join(self: &Arc<Self>, need: Need, now: Instant) -> Result<Join, Error> {
        let mut st = self.lock();
        if let Some(e) = &st.ended {
            return Err(e.clone());
        }
        if let Some(waiter) = self.flight.current() {
            follow_refresh(&st);
            return Ok(Join::Wait(waiter));
        }
        let current = self.current.load_full();
        if let Some(cached) = &current {
            let enough = match need {
                Need::Usable => cached.freshness(now) != Freshness::Stale,
                Need::Fresh => cached.freshness(now) == Freshness::Fresh,
                Need::New => false,
            };
            if enough {
                return Ok(Join::Current(Arc::clone(cached)));
            }
        }
        if let Some((until, error)) = &st.backoff
            && now < *until
        {
            return Err(error.clone());
        }
        self.start(&mut st, current).map(Join::Wait)
    }

    /// Starts the one refresh, replacing `known` (the token it must not adopt back from the
    /// store). Called with the state lock held and nothing in flight.
    fn start(
        self: &Arc<Self>,
        st: &mut State,
        known: Option<Arc<Cached>>,
    ) -> Result<Waiter<Outcome>, Error> {
        let epoch = st.epoch;
        let engine = Arc::clone(self);
        // Made here, in the caller's context, so the caller's span can follow from it.
        let span = tracing::info_span!(
            parent: None,
            "client_auth.refresh",
            provider = self.config.metrics.name(),
            grant = self.config.grant.name(),
            namespace = %self.config.namespace,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            generation = tracing::field::Empty,
        );
        st.refresh_span = Some(span.clone());
        let waiter = self
            .flight
            .join_or_start(move |done| engine.run_refresh(done, epoch, known, span))?;
        follow_refresh(st);
        Ok(waiter)
    }

    async fn run_refresh(
        self: Arc<Self>,
        done: Completion<Outcome>,
        epoch: u64,
        known: Option<Arc<Cached>>,
        span: tracing::Span,
    ) {
        let started = self.clock.now();
        let outcome = match self
            .refresh(epoch, known.as_deref(), &done)
            .instrument(span.clone())
            .await
        {
            Some(outcome) => outcome,
            None => {
                // A session operation superseded this refresh: its waiters join the new state.
                tracing::debug!(parent: &span, "refresh superseded by a session operation");
                self.follow().await
            }
        };
        let elapsed = self.clock.now().saturating_duration_since(started);
        span.record(
            "duration_ms",
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        );
        let class = crate::metrics::outcome_class(outcome.as_ref().map(|_| ()));
        span.record("outcome", class);
        match &outcome {
            Ok(cached) => {
                span.record("generation", cached.credential.generation().get());
            }
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, outcome = class, "refresh failed");
            }
        }
        done.complete(outcome);
    }

    /// The state after a session operation: its token, its refresh, or its error.
    async fn follow(self: &Arc<Self>) -> Outcome {
        match self.join(Need::Usable, self.clock.now())? {
            Join::Current(cached) => Ok(cached),
            Join::Wait(waiter) => waiter.wait().await?,
        }
    }

    /// One refresh: read the store the first time, take the store's lease, adopt what another
    /// process wrote or call the token endpoint, write the store, publish. `None` when a session
    /// operation superseded it (nothing was written or published).
    async fn refresh(
        &self,
        epoch: u64,
        known: Option<&Cached>,
        done: &Completion<Outcome>,
    ) -> Option<Outcome> {
        let ns = self.config.namespace.as_str();
        let (loaded, mut refresh_token) = {
            let st = self.lock();
            (st.loaded, st.refresh_token.clone())
        };
        if !loaded {
            match self.store_op("read", self.store.load(ns)).await {
                Ok(Some(stored)) => {
                    if let Some(found) = self.adopt(&stored, known, SessionReason::FoundToken) {
                        return self.publish(epoch, Ok(found), done);
                    }
                    if stored.refresh_token.is_some() {
                        refresh_token = stored.refresh_token;
                    }
                }
                Ok(None) => {}
                Err(e) if refresh_token.is_some() => {
                    tracing::warn!(error = %e, "token store unreadable; refreshing with the refresh token in memory");
                }
                Err(e) => return self.publish(epoch, Err(e.into()), done),
            }
            {
                let mut st = self.lock();
                if st.epoch != epoch {
                    done.release_slot();
                    return None;
                }
                st.loaded = true;
                st.refresh_token.clone_from(&refresh_token);
                if refresh_token.is_some() {
                    self.session
                        .set(SessionState::Authenticated(SessionReason::FoundToken));
                }
            }
            if refresh_token.is_none() && self.config.grant == GrantKind::RefreshToken {
                let no_token = Error::NoSession {
                    reason: SessionReason::NoToken,
                };
                return self.publish(epoch, Err(no_token.into()), done);
            }
        }

        let lease = match self.take_lease().await {
            Ok(lease) => lease,
            Err(e) => return self.publish(epoch, Err(e.into()), done),
        };
        // Another process's tokens are only looked for on a shared store, and only while the
        // store is known to hold nothing from before the last session operation.
        let shared = lease.is_some() && !self.lock().store_stale;
        let obtained = until_replaced(
            self.replaced.subscribe(),
            self.renewing(lease.as_deref(), self.obtain(known, refresh_token, shared)),
        )
        .await;
        let outcome = match obtained {
            Some(result) => self.commit(epoch, result, done).await,
            None => {
                tracing::debug!("token request abandoned: set_tokens replaced the session");
                done.release_slot();
                None
            }
        };
        self.release_lease(lease);
        outcome
    }

    /// The store's refresh lease (`None` for a store used by one process), waiting at most
    /// for a holder's whole refresh.
    async fn take_lease(&self) -> Result<Option<Box<dyn RefreshLease>>, Error> {
        let ttl = self.config.lease_ttl;
        let wait = self
            .config
            .store_timeout
            .saturating_add(self.config.timeout)
            .saturating_add(ttl);
        let ns = self.config.namespace.as_str();
        self.bounded(wait, "lease", self.store.lock_refresh(ns, ttl))
            .await
    }

    /// The lease for a session operation's store write: on a shared store, another process's
    /// refresh under way writes first and this write lands last. Without it (the store failed
    /// to give one), the write goes ahead.
    async fn session_lease(&self) -> Option<Box<dyn RefreshLease>> {
        match self.take_lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "no refresh lease for the session operation; writing without it");
                None
            }
        }
    }

    /// Releases `lease` in the background: nobody waits for it.
    fn release_lease(&self, lease: Option<Box<dyn RefreshLease>>) {
        let Some(lease) = lease else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // dropped instead: a lease with a ttl lapses, a file lock is closed
        };
        let limit = self.config.store_timeout;
        let release = lease.release();
        runtime.spawn(async move {
            match tokio::time::timeout(limit, release).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not release the refresh lease"),
                Err(_) => tracing::warn!("the refresh lease release did not answer in time"),
            }
        });
    }

    /// Under the lease: adopt what another process wrote, or exchange. On a `shared` store
    /// (one with a lease), the store is read first (another process may have refreshed while
    /// this one waited for the lease), and when the server rejects the refresh token while the
    /// store holds a newer one (another process rotated it meanwhile), that one is tried
    /// instead: at most two exchanges.
    async fn obtain(
        &self,
        known: Option<&Cached>,
        mut refresh_token: Option<RefreshToken>,
        shared: bool,
    ) -> Result<Refreshed, (Failed, Option<RefreshToken>)> {
        let ns = self.config.namespace.as_str();
        let mut reread = shared;
        let mut tried_newer = !shared;
        loop {
            let stored = if reread {
                self.store_op("read", self.store.load(ns)).await
            } else {
                Ok(None)
            };
            match stored {
                Ok(Some(stored)) => {
                    if let Some(theirs) = self.adopt(&stored, known, SessionReason::Refreshed) {
                        return Ok(theirs);
                    }
                    if stored.refresh_token.is_some() {
                        refresh_token = stored.refresh_token;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "token store unreadable; refreshing with the refresh token in memory");
                }
            }
            // Without a refresh token, a refresh-token exchange asks nothing.
            let asks = self.config.grant != GrantKind::RefreshToken || refresh_token.is_some();
            let timer = self.config.metrics.token_request();
            // Code of the caller's runs in the exchange (the transport, a token answer map, an
            // assertion source): a panic there fails this refresh like any error, with backoff.
            let exchanged = crate::single_flight::caught(self.exchange(refresh_token.clone()))
                .await
                .unwrap_or_else(|| {
                    tracing::warn!("the token request panicked (a transport, a token answer map or an assertion source); handled as a failed refresh");
                    Err(Error::Callback(crate::error::SharedError::new(
                        "the token request panicked",
                    ))
                    .into())
                });
            if asks {
                let result = exchanged.as_ref().map(|_| ()).map_err(|f| &f.error);
                self.config.metrics.token_request_done(timer, result);
            }
            match exchanged {
                Ok(refreshed) => return Ok(refreshed),
                Err(failed)
                    if failed.error.is_session_ended()
                        && !tried_newer
                        && refresh_token.is_some() =>
                {
                    // Another process may have rotated the token after our read.
                    let newer = match self.store_op("read", self.store.load(ns)).await {
                        Ok(Some(stored)) => stored
                            .refresh_token
                            .filter(|rt| Some(rt) != refresh_token.as_ref()),
                        _ => None,
                    };
                    if newer.is_none() {
                        return Err((failed, refresh_token));
                    }
                    tracing::debug!("refresh token rejected; another process stored a newer one");
                    tried_newer = true;
                    reread = true;
                }
                Err(failed) => return Err((failed, refresh_token)),
            }
        }
    }

    /// Writes the store for a refresh of the current session, under the write gate: nothing is
    /// written once a session operation has superseded the refresh.
    async fn commit(
        &self,
        epoch: u64,
        result: Result<Refreshed, (Failed, Option<RefreshToken>)>,
        done: &Completion<Outcome>,
    ) -> Option<Outcome> {
        let gate = self.write_gate.lock().await;
        let rotated = match &result {
            Ok(refreshed) if refreshed.rotated => refreshed.refresh_token.clone(),
            Ok(_) => None,
            Err((failed, _)) => failed.rotated.clone(),
        };
        if self.lock().epoch != epoch {
            drop(gate);
            done.release_slot();
            self.revoke_if_logged_out(rotated).await;
            return None;
        }
        let ns = self.config.namespace.as_str();
        match result {
            Ok(refreshed) => {
                if let Some(stored) = &refreshed.stored {
                    // A failed write is logged; the tokens are still used from memory.
                    if self
                        .save(stored, stored.refresh_token.is_some())
                        .await
                        .is_ok()
                    {
                        self.lock().store_stale = false;
                    }
                }
                let published = self.publish(epoch, Ok(refreshed), done);
                if published.is_none() {
                    // A logout landed during the store write.
                    drop(gate);
                    self.revoke_if_logged_out(rotated).await;
                }
                published
            }
            Err((failed, used)) if failed.error.is_session_ended() => {
                // Clear the store before publishing, so no other process or restart picks the
                // dead refresh token up again; a newer one another process wrote survives.
                if let Some(used) = &used {
                    match self
                        .store_op("clear", self.store.clear_if_refresh_token(ns, used))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => tracing::debug!(
                            "the store holds another refresh token; it is kept for its owner"
                        ),
                        Err(e) => tracing::error!(error = %e, "could not clear the token store"),
                    }
                } else if let Err(e) = self.store_op("clear", self.store.clear(ns)).await {
                    // No refresh token at all (on a shared store, one another process stored
                    // would have been read under the lease): the stored access token is dead.
                    tracing::error!(error = %e, "could not clear the token store");
                }
                self.publish(epoch, Err(failed), done)
            }
            Err((failed, _)) => {
                if let Some(rotated) = &failed.rotated {
                    let stored = StoredTokens {
                        refresh_token: Some(rotated.clone()),
                        ..StoredTokens::default()
                    };
                    tracing::warn!(
                        "the token answer was unusable but rotated the refresh token; it is kept"
                    );
                    let _ = self.save(&stored, true).await;
                }
                self.publish(epoch, Err(failed), done)
            }
        }
    }

    /// A logout that raced a token request revoked the refresh token it knew; the one that
    /// request's answer rotated to would otherwise stay alive at the server.
    async fn revoke_if_logged_out(&self, rotated: Option<RefreshToken>) {
        let logged_out = matches!(
            &self.lock().ended,
            Some(Error::NoSession {
                reason: SessionReason::Logout
            })
        );
        if logged_out
            && let (Some(url), Some(rotated)) = (&self.config.revocation_url, rotated)
            && let Err(e) = self.revoke(url, &rotated).await
        {
            tracing::warn!(error = %e, "could not revoke the refresh token a logged-out session's refresh obtained");
        }
    }

    /// Runs `work` while renewing `lease` every third of its ttl (real time: the lease lives in
    /// the store's time, not in the injected clock's).
    async fn renewing<T>(
        &self,
        lease: Option<&dyn RefreshLease>,
        work: impl Future<Output = T>,
    ) -> T {
        let Some(lease) = lease else {
            return work.await;
        };
        let ttl = self.config.lease_ttl;
        let period = (ttl / 3).max(Duration::from_millis(10));
        let renew = async {
            loop {
                tokio::time::sleep(period).await;
                // A failure may be passing (the store unreachable for a moment): keep renewing,
                // or the lease lapses and another process refreshes with the same token.
                if let Err(e) = self.bounded(period, "renew", lease.renew(ttl)).await {
                    tracing::warn!(error = %e, "could not renew the refresh lease; trying again");
                }
            }
        };
        let mut work = pin!(work);
        let mut renew = pin!(renew);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            let _ = renew.as_mut().poll(cx);
            Poll::Pending
        })
        .await
    }

    /// Stored tokens, when their access token is usable and is not the one being replaced.
    fn adopt(
        &self,
        stored: &StoredTokens,
        known: Option<&Cached>,
        reason: SessionReason,
    ) -> Option<Refreshed> {
        let token = stored.access_token.as_ref()?;
        if known.is_some_and(|k| k.token == *token) {
            return None;
        }
        // A claims challenge waits for a token asked for with its claims, not a stored one.
        if self
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return None;
        }
        // A DPoP-bound token is usable only with the key it is bound to.
        if stored.dpop_jkt.is_some() && stored.dpop_jkt.as_deref() != self.dpop_jkt() {
            tracing::debug!("the stored access token is bound to another DPoP key; refreshing");
            return None;
        }
        let now = self.clock.now();
        let expiry = match stored.expires_at {
            Some(at) => {
                let remaining = at.duration_since(self.clock.unix_now()).ok()?;
                let lifetime = stored.issued_at.and_then(|i| at.duration_since(i).ok());
                Some(self.expiry_from_now(Some(remaining), lifetime, now)?)
            }
            None => self.expiry_from_now(None, None, now),
        };
        let cached = match self.make_cached(
            token.clone(),
            expiry,
            stored.scope.clone(),
            stored.dpop_jkt.is_some(),
        ) {
            Ok(cached) => cached,
            Err(e) => {
                tracing::warn!(error = %e, "the stored access token is unusable; refreshing");
                return None;
            }
        };
        if cached.freshness(now) == Freshness::Stale {
            return None;
        }
        Some(Refreshed {
            cached,
            refresh_token: stored.refresh_token.clone(),
            reason,
            stored: None,
            short_lived: false,
            rotated: false,
        })
    }

    /// The token-endpoint call.
    async fn exchange(&self, refresh_token: Option<RefreshToken>) -> Result<Refreshed, Failed> {
        if self.config.grant == GrantKind::RefreshToken && refresh_token.is_none() {
            return Err(Error::SessionEnded(SessionEnd::NoRefreshToken).into());
        }
        let sent_at = self.clock.now();
        let sent_unix = self.clock.unix_now();
        let (parts, mut body, inputs) = self.token_call(refresh_token.as_ref()).await?;
        if let Some(map) = &self.config.response_map
            && parts.status.is_success()
        {
            body = map.apply(&body);
        }
        let rotated_on_failure = |error: Error| Failed {
            rotated: if parts.status.is_success() {
                rotated_refresh_token(&body)
            } else {
                None
            },
            error,
        };
        let parsed = parse_token_response(
            parts.status,
            &parts.headers,
            &body,
            self.config.grant,
            self.clock.unix_now(),
            self.dpop_jkt().is_some(),
        )
        .map_err(|e| {
            rotated_on_failure(
                self.redacted(e, refresh_token.as_ref())
                    .redacted(&inputs.secrets()),
            )
        })?;
        let mut lifetime = parsed.expires_in.or(self.config.assume_lifetime);
        let short_lived = lifetime.is_some_and(|l| l < self.config.min_lifetime);
        if short_lived {
            // Use the token for a growing while instead of asking again for every request.
            let streak = self.lock().short_lived.saturating_add(1);
            let hold = self.backoff_delay(streak).max(self.config.min_lifetime);
            tracing::warn!(
                hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                "the token endpoint issued a token with a lifetime under the floor; it is used until the hold ends"
            );
            lifetime = Some(hold);
        }
        // RFC 9700 §4.14.2: a returned refresh token replaces the old one; none keeps it.
        let rotated = parsed.refresh_token.is_some();
        let refresh_token = parsed.refresh_token.or(refresh_token);
        let expiry = lifetime.and_then(|l| {
            Some(Expiry {
                lifetime: l,
                at: sent_at.checked_add(l)?,
            })
        });
        let dpop_jkt = self.dpop_jkt().filter(|_| parsed.dpop).map(str::to_owned);
        let mut cached = self
            .make_cached(parsed.access_token, expiry, parsed.scope, parsed.dpop)
            .map_err(|error| Failed {
                error,
                rotated: if rotated { refresh_token.clone() } else { None },
            })?;
        if let Some(fresh) = Arc::get_mut(&mut cached) {
            fresh.claims = inputs.claims.clone();
        }
        let stored = StoredTokens {
            access_token: Some(cached.token.clone()),
            refresh_token: refresh_token.clone(),
            expires_at: lifetime.and_then(|l| sent_unix.checked_add(l)),
            scope: cached.scope.clone(),
            issued_at: Some(sent_unix),
            dpop_jkt,
        };
        Ok(Refreshed {
            cached,
            refresh_token,
            reason: SessionReason::Refreshed,
            stored: Some(stored),
            short_lived,
            rotated,
        })
    }

    /// The token request, with a DPoP proof when the provider has a key: a `400
    /// use_dpop_nonce` answer is remembered and the request sent once more with its nonce.
    async fn token_call(
        &self,
        refresh_token: Option<&RefreshToken>,
    ) -> Result<(http::response::Parts, bytes::Bytes, Inputs), Error> {
        // Claims go with this token request only, whatever becomes of it.
        let claims = self
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if claims.is_some() {
            *self
                .claims_asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = claims.clone();
        }
        let mut inputs = self.config.inputs(true).await?;
        inputs.claims = claims;
        // `None` before the first send; the nonce of a `use_dpop_nonce` answer after it.
        let mut nonce: Option<String> = None;
        loop {
            let mut request = self.config.token_request(refresh_token, &inputs)?;
            self.prove_token_request(&mut request, nonce.as_deref())?;
            inputs.proof = request
                .headers()
                .get("dpop")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (parts, body) = self
                .send(request, refresh_token)
                .await
                .map_err(|e| e.redacted(&inputs.secrets()))?
                .into_parts();
            match self.token_nonce(&parts, &body) {
                Some(asked) if nonce.is_none() => nonce = Some(asked),
                _ => return Ok((parts, body, inputs)),
            }
            tracing::debug!("the token endpoint asked for a DPoP nonce; asking once more with it");
        }
    }

    /// One request to the token or revocation endpoint, bounded by the request timeout; a
    /// transport error loses the secrets the request carried.
    async fn send(
        &self,
        request: http::Request<bytes::Bytes>,
        refresh_token: Option<&RefreshToken>,
    ) -> Result<http::Response<bytes::Bytes>, Error> {
        let span = crate::telemetry::client_span(&request);
        let result = tokio::time::timeout(
            self.config.timeout,
            self.transport.send(request, self.config.max_body),
        )
        .instrument(span.clone())
        .await
        .map_err(|_| Error::Transport(TransportError::timeout()))
        .and_then(|sent| sent.map_err(|e| self.redacted(e, refresh_token)));
        crate::telemetry::record_response(&span, &result);
        result
    }

    /// `error` without the secrets this provider sends, should the server have echoed them.
    fn redacted(&self, error: Error, refresh_token: Option<&RefreshToken>) -> Error {
        let secret = self.config.client_secret.as_ref();
        // The Basic credential the request carried, should the server echo the header.
        let basic = secret.map(|s| self.config.basic_credential(s));
        let error = error.redacted(&[
            refresh_token.map_or("", RefreshToken::expose_secret),
            secret.map_or("", |s| s.expose_secret()),
            basic.as_deref().map_or("", String::as_str),
        ]);
        // A gateway key in a token request header is a secret too.
        let headers: Vec<&str> = self
            .config
            .extra_headers
            .values()
            .filter_map(|v| v.to_str().ok())
            .collect();
        error.redacted(&headers)
    }

    /// A store call, bounded by the store timeout.
    async fn store_op<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Error> {
        self.bounded(self.config.store_timeout, what, call).await
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        what: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(Error::Store),
            Err(_) => Err(Error::Store(StoreError::transient(format!(
                "the token store did not answer ({what}) within {} ms",
                limit.as_millis()
            )))),
        }
    }

    /// Writes the store, retrying a few times. A failure is logged (without tokens) and the
    /// tokens are still used from memory: losing a rotated refresh token to a store hiccup
    /// would end the session.
    async fn save(&self, stored: &StoredTokens, rotated: bool) -> Result<(), Error> {
        let attempts = self.config.store_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .store_op("write", self.store.save(&self.config.namespace, stored))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt < attempts && !matches!(e, Error::NoRuntime) => {
                    tracing::debug!(error = %e, attempt, "token store write failed; retrying");
                    self.clock
                        .sleep(Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        attempts,
                        rotated_refresh_token = rotated,
                        "token store write failed; the new tokens are kept in memory only"
                    );
                    return Err(e);
                }
            }
        }
    }

    /// Publishes a refresh's outcome in memory and frees the in-flight slot, in one step under
    /// the state lock. `None` when a session operation superseded the refresh.
    fn publish(
        &self,
        epoch: u64,
        result: Result<Refreshed, Failed>,
        done: &Completion<Outcome>,
    ) -> Option<Outcome> {
        let now = self.clock.now();
        let mut st = self.lock();
        done.release_slot();
        if st.epoch != epoch {
            return None;
        }
        match result {
            Ok(refreshed) => {
                self.current.store(Some(Arc::clone(&refreshed.cached)));
                st.refresh_token = refreshed.refresh_token;
                st.loaded = true;
                st.failures = 0;
                st.backoff = None;
                st.ended = None;
                st.short_lived = if refreshed.short_lived {
                    st.short_lived.saturating_add(1)
                } else {
                    0
                };
                self.ahead_not_before.store(0, Ordering::Relaxed);
                // Under the state lock: a session operation's state is never overwritten.
                self.session
                    .set(SessionState::Authenticated(refreshed.reason));
                drop(st);
                Some(Ok(refreshed.cached))
            }
            Err(Failed { error, .. }) if error.is_session_ended() => {
                let reason = match &error {
                    Error::NoSession { reason } => reason.clone(),
                    Error::SessionEnded(end) => SessionReason::Invalid(end.code().to_owned()),
                    _ => SessionReason::Invalid("unknown".to_owned()),
                };
                self.current.store(None);
                st.refresh_token = None;
                st.loaded = true;
                st.backoff = None;
                st.ended = Some(Error::NoSession {
                    reason: reason.clone(),
                });
                if self.session.set(SessionState::NoSession(reason.clone())) {
                    self.config.metrics.session_ended(&reason);
                }
                drop(st);
                tracing::warn!(error = %error, "the session ended");
                Some(Err(error))
            }
            Err(Failed { error, rotated }) => {
                if rotated.is_some() {
                    st.refresh_token = rotated;
                }
                st.failures = st.failures.saturating_add(1);
                let delay = self
                    .backoff_delay(st.failures)
                    .max(error.retry_after().unwrap_or_default());
                let until = now.checked_add(delay).unwrap_or(now);
                st.backoff = Some((until, error.clone()));
                self.ahead_not_before
                    .store(self.nanos(until), Ordering::Relaxed);
                drop(st);
                tracing::warn!(
                    error = %error,
                    transient = error.is_transient(),
                    backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "token refresh failed; backing off"
                );
                Some(Err(error))
            }
        }
    }

    /// Exponential backoff from the configured initial delay to the maximum: `initial ×
    /// 2^(n-1)` plus up to half of it at random, never above the maximum.
    fn backoff_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let max = self.config.backoff_max;
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(max);
        base.saturating_add(base.mul_f64(fastrand::f64() * 0.5))
            .min(max)
    }

    /// A 401 for `failed`: retry with a newer token, refresh once, or give up.
    ///
    /// A token the server accepted before is refreshed at once (it was revoked, or its key
    /// rotated): once per token, since the refresh replaces it. A token the server never
    /// accepted refreshes under a cooldown that grows from the initial to the maximum, because
    /// a new token may well be rejected the same way (wrong audience).
    pub(crate) fn on_unauthorized(
        self: &Arc<Self>,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        // A 403 counts as a 401 only for a provider that opted in.
        let status = match status {
            StatusCode::FORBIDDEN if self.config.retry_forbidden => StatusCode::UNAUTHORIZED,
            other => other,
        };
        if !refresh_may_help(status, headers) {
            self.config.metrics.declined("not_refreshable");
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        }
        let now = self.clock.now();
        let failed_generation = failed.generation();
        let mut st = self.lock();
        if let Some(e) = &st.ended {
            return UnauthorizedFuture::ready(Err(e.clone()));
        }
        let current = self.current.load_full();
        // A claims challenge asks for a token with more claims: the next token request carries
        // them. Claims not asked for yet skip the cooldown, since a token without them can
        // never pass; claims asked for already make an ordinary 401, cooldown included, since
        // asking again would not change the answer.
        let claims = claims_challenge(headers);
        let new_claims = claims.as_ref().is_some_and(|claims| {
            self.claims_asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_deref()
                != Some(claims.as_str())
        });
        if let Some(claims) = &claims {
            tracing::debug!("401 with a claims challenge: the next token request asks for them");
            *self.claims.lock().unwrap_or_else(PoisonError::into_inner) = Some(claims.clone());
        }
        if let Some(cached) = &current
            && cached.credential.generation() != failed_generation
            && cached.freshness(now) != Freshness::Stale
            && claims
                .as_deref()
                .is_none_or(|wanted| cached.claims.as_deref() == Some(wanted))
        {
            tracing::debug!("401 for an older token; retrying with the current one");
            return UnauthorizedFuture::ready(Ok(Unauthorized::Retry(cached.credential.clone())));
        }
        let waiter = match self.flight.current() {
            Some(waiter) => {
                follow_refresh(&st);
                waiter
            }
            None => {
                if st.backoff.as_ref().is_some_and(|(until, _)| now < *until) {
                    tracing::debug!("401 returned unchanged: token refreshes are backing off");
                    self.config.metrics.declined("backoff");
                    return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
                }
                let failed_current = current
                    .as_ref()
                    .filter(|c| c.credential.generation() == failed_generation);
                match failed_current {
                    Some(cached) if cached.accepted.load(Ordering::Relaxed) || new_claims => {
                        self.cooldown_step.store(0, Ordering::Relaxed);
                        st.cooldown_until = None;
                    }
                    Some(_) => {
                        let step = self.cooldown_step.load(Ordering::Relaxed);
                        if step > 0 && st.cooldown_until.is_some_and(|until| now < until) {
                            tracing::debug!(
                                "401 returned unchanged: the token was never accepted and the cooldown runs"
                            );
                            self.config.metrics.declined("cooldown");
                            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
                        }
                        let delay = self
                            .config
                            .cooldown_initial
                            .saturating_mul(1u32 << step.min(30))
                            .min(self.config.cooldown);
                        self.cooldown_step
                            .store(step.saturating_add(1), Ordering::Relaxed);
                        st.cooldown_until = now.checked_add(delay);
                    }
                    None => {}
                }
                let replacing = failed_current.cloned();
                let waiter = match self.start(&mut st, current.clone()) {
                    Ok(waiter) => waiter,
                    Err(_) => {
                        self.config.metrics.declined("refresh_failed");
                        return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
                    }
                };
                // Started: only now stop serving the rejected token.
                if replacing.is_some() {
                    self.current.store(None);
                }
                waiter
            }
        };
        drop(st);
        let (metrics, timer) = self.wait_timer();
        let engine = Arc::clone(self);
        UnauthorizedFuture::pending(async move {
            let mut outcome = waiter.wait().await;
            metrics.refresh_wait_done(timer);
            // A claims challenge that met a refresh already under way: that refresh asked
            // without the claims, so one more, which takes them, answers it.
            if let Some(wanted) = &claims
                && let Ok(Ok(got)) = &outcome
                && got.claims.as_deref() != Some(wanted.as_str())
            {
                outcome = match engine.get(true, Arc::clone) {
                    Ok(Join::Current(cached)) => Ok(Ok(cached)),
                    Ok(Join::Wait(waiter)) => waiter.wait().await,
                    Err(e) => Ok(Err(e)),
                };
            }
            match outcome.and_then(|outcome| outcome) {
                Ok(c)
                    if claims
                        .as_deref()
                        .is_some_and(|wanted| c.claims.as_deref() != Some(wanted)) =>
                {
                    metrics.declined("no_new_token");
                    Ok(Unauthorized::GiveUp)
                }
                Ok(c) if c.credential.generation() != failed_generation => {
                    Ok(Unauthorized::Retry(c.credential.clone()))
                }
                Ok(_) => {
                    metrics.declined("no_new_token");
                    Ok(Unauthorized::GiveUp)
                }
                Err(e) if e.is_session_ended() => Err(e),
                Err(_) => {
                    metrics.declined("refresh_failed");
                    Ok(Unauthorized::GiveUp)
                }
            }
        })
    }

    /// Starts a session operation: a new epoch, so that no refresh started before it writes or
    /// publishes anything.
    fn new_epoch(&self, st: &mut State) -> u64 {
        st.epoch += 1;
        st.backoff = None;
        st.failures = 0;
        st.short_lived = 0;
        st.cooldown_until = None;
        st.loaded = true;
        self.cooldown_step.store(0, Ordering::Relaxed);
        self.ahead_not_before.store(0, Ordering::Relaxed);
        st.epoch
    }

    /// Whether `epoch` is still the latest session operation's (its store write is due).
    fn is_latest(&self, epoch: u64) -> bool {
        self.lock().epoch == epoch
    }

    /// `logout()` and `clear()`.
    pub(crate) async fn end_session(&self, revoke: bool) -> Result<(), Error> {
        let reason = if revoke {
            SessionReason::Logout
        } else {
            SessionReason::Cleared
        };
        let (epoch, refresh_token, was_loaded) = {
            let mut st = self.lock();
            let was_loaded = st.loaded;
            let epoch = self.new_epoch(&mut st);
            self.current.store(None);
            if self.config.grant == GrantKind::RefreshToken {
                st.ended = Some(Error::NoSession {
                    reason: reason.clone(),
                });
            }
            if self.session.set(SessionState::NoSession(reason.clone())) {
                self.config.metrics.session_ended(&reason);
            }
            (epoch, st.refresh_token.take(), was_loaded)
        };
        let revoking = revoke && self.config.revocation_url.is_some();
        let lease = self.session_lease().await;
        let (refresh_token, cleared) = {
            // After any store write under way; skipped when a later session operation has
            // already superseded this one (it writes its own state).
            let _gate = self.write_gate.lock().await;
            // A session still only in the store (nothing requested yet) is revoked too.
            let refresh_token = match refresh_token {
                None if revoking && !was_loaded => self
                    .store_op("read", self.store.load(&self.config.namespace))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|stored| stored.refresh_token),
                known => known,
            };
            let cleared = if self.is_latest(epoch) {
                let cleared = self
                    .store_op("clear", self.store.clear(&self.config.namespace))
                    .await;
                self.lock().store_stale = cleared.is_err();
                cleared
            } else {
                Ok(())
            };
            (refresh_token, cleared)
        };
        self.release_lease(lease);
        let revoked = match (&self.config.revocation_url, refresh_token, revoke) {
            (Some(url), Some(token), true) => self.revoke(url, &token).await,
            _ => Ok(()),
        };
        cleared.and(revoked)
    }

    async fn revoke(&self, url: &http::Uri, token: &RefreshToken) -> Result<(), Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let inputs = self.config.inputs(false).await?;
        let request = self.config.form_request(
            url,
            &[
                ("token", token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ],
            &inputs,
        )?;
        let response = self.send(request, Some(token)).await?;
        if response.status().is_success() {
            return Ok(());
        }
        let (parts, body) = response.into_parts();
        match parse_token_response(
            parts.status,
            &parts.headers,
            &body,
            GrantKind::ClientCredentials,
            self.clock.unix_now(),
            false,
        ) {
            Err(e) => Err(self.redacted(e, Some(token))),
            Ok(_) => Ok(()),
        }
    }

    fn handed(&self, tokens: Tokens) -> Result<Handed, Error> {
        let now = self.clock.now();
        let unix_now = self.clock.unix_now();
        let expiry = self.expiry_from_now(tokens.expires_in, tokens.lifetime, now);
        if tokens.dpop_bound && self.dpop_jkt().is_none() {
            return Err(Error::Config(
                "a DPoP-bound access token was handed to a provider without a DPoP key".into(),
            ));
        }
        let cached = tokens
            .access_token
            .map(|t| self.make_cached(t, expiry, None, tokens.dpop_bound))
            .transpose()?;
        let remaining = tokens.expires_in.or(self.config.assume_lifetime);
        let expires_at = remaining.and_then(|r| unix_now.checked_add(r.min(MAX_LIFETIME)));
        let issued_at = match (expires_at, expiry) {
            (Some(at), Some(e)) => at.checked_sub(e.lifetime),
            _ => None::<SystemTime>,
        };
        Ok(Handed {
            stored: StoredTokens {
                access_token: cached.as_ref().map(|c| c.token.clone()),
                refresh_token: tokens.refresh_token.clone(),
                expires_at,
                scope: None,
                issued_at,
                dpop_jkt: self
                    .dpop_jkt()
                    .filter(|_| tokens.dpop_bound && cached.is_some())
                    .map(str::to_owned),
            },
            cached,
            refresh_token: tokens.refresh_token,
        })
    }

    /// `set_tokens()`: under the write gate, so that the store write of a refresh under way
    /// lands first and the new session's own refreshes land after: publish, then store.
    pub(crate) async fn set_tokens(&self, tokens: Tokens) -> Result<(), Error> {
        let handed = self.handed(tokens)?;
        let lease = self.session_lease().await;
        let gate = self.write_gate.lock().await;
        {
            let mut st = self.lock();
            self.new_epoch(&mut st);
            st.refresh_token = handed.refresh_token;
            st.ended = None;
            self.current.store(handed.cached);
            self.session
                .set(SessionState::Authenticated(SessionReason::Authenticated));
        }
        // A token request of the replaced session is abandoned: its callers join this session
        // at once instead of waiting for an answer that would be discarded.
        self.replaced.send_modify(|n| *n = n.wrapping_add(1));
        let saved = self.save(&handed.stored, false).await;
        self.lock().store_stale = saved.is_err();
        drop(gate);
        self.release_lease(lease);
        saved.map_err(|e| match e {
            Error::NoRuntime => Error::NoRuntime,
            _ => Error::Store(StoreError::transient(
                "the tokens could not be written to the store; they are used from memory",
            )),
        })
    }
}

/// Links the refresh in flight to the caller's span (the request that started it or waits for
/// it), so that a trace leads from a slow request to the token call that held it.
fn follow_refresh(st: &State) {
    if let Some(refresh) = &st.refresh_span {
        refresh.follows_from(tracing::Span::current());
    }
}

/// DPoP (RFC 9449): proofs on token and resource requests, and the nonce retries.
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
impl Engine {
    /// The thumbprint of the provider's DPoP key, if it has one.
    fn dpop_jkt(&self) -> Option<&str> {
        self.config.dpop.as_ref().map(|d| d.key.thumbprint())
    }

    /// The template of a DPoP-bound token's credentials: its `ath`, computed once per token.
    fn dpop_template(
        &self,
        credential: Credential,
        token: &AccessToken,
    ) -> Result<Credential, Error> {
        if self.config.dpop.is_none() {
            return Err(Error::Config("a DPoP-bound token needs a DPoP key".into()));
        }
        Ok(credential.bound(Binding {
            ath: super::dpop::ath(token.expose_secret()),
            request: None,
        }))
    }

    /// Adds a proof for the token endpoint to `request`, with `nonce` or the remembered one.
    fn prove_token_request(
        &self,
        request: &mut http::Request<bytes::Bytes>,
        nonce: Option<&str>,
    ) -> Result<(), Error> {
        let Some(dpop) = &self.config.dpop else {
            return Ok(());
        };
        let url = &self.config.token_url;
        let htu = super::dpop::htu(
            url.scheme_str().unwrap_or("https"),
            url.authority().map_or("", |a| a.as_str()),
            url.path(),
        );
        let proof = dpop.proof_for(&http::Method::POST, &htu, None, nonce, SystemTime::now())?;
        request.headers_mut().insert(&super::dpop::DPOP, proof);
        Ok(())
    }

    /// Remembers the token endpoint's nonce; the nonce to retry with when the answer asks
    /// for one.
    fn token_nonce(&self, parts: &http::response::Parts, body: &bytes::Bytes) -> Option<String> {
        let dpop = self.config.dpop.as_ref()?;
        let url = self.config.token_url.to_string();
        let fresh = dpop.remember_nonce(super::dpop::origin_of(&url), &parts.headers)?;
        super::response::is_use_dpop_nonce(parts.status, body).then_some(fresh)
    }

    /// `credential` (a DPoP-bound token's template, or a Bearer token's credential) for this
    /// request: with a new proof bound to its method and URL.
    fn bind(
        &self,
        credential: Credential,
        method: http::Method,
        htu: Arc<str>,
        nonce: Option<&str>,
    ) -> Result<Credential, Error> {
        let (Some(dpop), Some(binding)) = (&self.config.dpop, credential.binding()) else {
            return Ok(credential);
        };
        let ath = Arc::clone(&binding.ath);
        let proof = dpop.proof_for(&method, &htu, Some(&ath), nonce, SystemTime::now())?;
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(&super::dpop::DPOP, proof);
        Ok(credential
            .bound(Binding {
                ath,
                request: Some((method, htu)),
            })
            .with_extra_headers(headers))
    }

    /// The fast path of a provider with a DPoP key: the token, then a proof for this request.
    pub(crate) fn authorize_dpop(self: &Arc<Self>, request: &RequestView<'_>) -> AuthorizeFuture {
        let htu: Arc<str> =
            super::dpop::htu(request.scheme(), request.authority(), request.path()).into();
        let method = request.method().clone();
        match self.get(request.force_refresh(), |cached| cached.credential.clone()) {
            Ok(Join::Current(credential)) => {
                AuthorizeFuture::ready(self.bind(credential, method, htu, None))
            }
            Ok(Join::Wait(waiter)) => {
                let engine = Arc::clone(self);
                let timer = engine.config.metrics.refresh_wait();
                AuthorizeFuture::pending(async move {
                    let outcome = waiter.wait().await;
                    engine.config.metrics.refresh_wait_done(timer);
                    let cached = outcome??;
                    engine.bind(cached.credential.clone(), method, htu, None)
                })
            }
            Err(e) => AuthorizeFuture::ready(Err(e)),
        }
    }

    /// A 401 to a request sent with a DPoP-bound credential: a nonce challenge is answered with
    /// a new proof carrying the nonce (no refresh, no cooldown); a rejected proof is returned
    /// as is; anything else is a 401 for the token, and its retry gets a proof for the same
    /// request.
    pub(crate) fn on_dpop_unauthorized(
        self: &Arc<Self>,
        failed: &Credential,
        binding: &Binding,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        let (Some(dpop), Some((method, htu))) = (&self.config.dpop, binding.request.clone()) else {
            return self.on_unauthorized(failed, status, headers);
        };
        let fresh_nonce = dpop.remember_nonce(super::dpop::origin_of(&htu), headers);
        match crate::www_authenticate::scheme_error(headers, "dpop").as_deref() {
            Some("use_dpop_nonce") if status == StatusCode::UNAUTHORIZED => {
                let Some(nonce) = fresh_nonce else {
                    tracing::debug!(
                        "401 use_dpop_nonce without a usable DPoP-Nonce: returned unchanged"
                    );
                    return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
                };
                // The session may have ended or moved on since the request was sent: only a
                // token still current is retried as it is, with the nonce.
                if let Some(ended) = &self.lock().ended {
                    return UnauthorizedFuture::ready(Err(ended.clone()));
                }
                let now = self.clock.now();
                let template = match self.current.load_full() {
                    Some(current)
                        if current.credential.generation() == failed.generation()
                            && current.freshness(now) != Freshness::Stale =>
                    {
                        Some(failed.clone().bound(Binding {
                            ath: Arc::clone(&binding.ath),
                            request: None,
                        }))
                    }
                    // Replaced (a refresh, `set_tokens`): the current token, with the nonce.
                    Some(current) if current.freshness(now) != Freshness::Stale => {
                        Some(current.credential.clone())
                    }
                    // No usable token (a logout, an expiry): the ordinary path decides.
                    _ => None,
                };
                if let Some(template) = template {
                    tracing::debug!("the resource asked for a DPoP nonce; retrying with it");
                    return UnauthorizedFuture::ready(
                        self.bind(template, method, htu, Some(&nonce))
                            .map(Unauthorized::Retry),
                    );
                }
            }
            Some("invalid_dpop_proof") => {
                tracing::debug!("401 invalid_dpop_proof: returned unchanged");
                return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
            }
            _ => {}
        }
        let answer = self.on_unauthorized(failed, status, headers);
        let engine = Arc::clone(self);
        UnauthorizedFuture::pending(async move {
            match answer.await? {
                Unauthorized::Retry(credential) => engine
                    .bind(credential, method, htu, None)
                    .map(Unauthorized::Retry),
                other => Ok(other),
            }
        })
    }
}

/// Without a JOSE backend there is no DPoP: nothing to prove, no key to match.
#[cfg(not(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))]
impl Engine {
    fn dpop_jkt(&self) -> Option<&str> {
        None
    }

    fn dpop_template(&self, _: Credential, _: &AccessToken) -> Result<Credential, Error> {
        Err(Error::Config(
            "DPoP needs feature `jwt-aws-lc-rs` or `jwt-rust-crypto`".into(),
        ))
    }

    fn prove_token_request(
        &self,
        _: &mut http::Request<bytes::Bytes>,
        _: Option<&str>,
    ) -> Result<(), Error> {
        Ok(())
    }

    fn token_nonce(&self, _: &http::response::Parts, _: &bytes::Bytes) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use crate::clock::ManualClock;
    use crate::oauth::OAuthProvider;
    use crate::provider::AuthorizationProvider;
    use bytes::Bytes;

    /// A token endpoint that is always unavailable.
    #[derive(Debug)]
    struct Down;

    impl TokenTransport for Down {
        fn send(
            &self,
            _request: http::Request<Bytes>,
            _max_body: usize,
        ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
            Box::pin(async {
                Ok(http::Response::builder()
                    .status(503)
                    .body(Bytes::new())
                    .unwrap())
            })
        }
    }

    fn provider(clock: &ManualClock) -> OAuthProvider {
        OAuthProvider::refresh_token_grant("https://auth.example.com/token")
            .client_id("client")
            .transport(Arc::new(Down))
            .clock(Arc::new(clock.clone()))
            .refresh_token("rt")
            .access_token("at", Some(Duration::from_secs(100)))
            .jitter(0.0)
            .build()
            .unwrap()
    }

    #[test]
    fn backoff_runs_from_the_initial_delay_to_the_maximum() {
        let engine = provider(&ManualClock::new()).engine;
        for _ in 0..200 {
            let first = engine.backoff_delay(1);
            assert!(
                first >= Duration::from_secs(1) && first < Duration::from_millis(1_500),
                "{first:?}"
            );
            assert_eq!(engine.backoff_delay(6), Duration::from_secs(30));
            assert_eq!(engine.backoff_delay(u32::MAX), Duration::from_secs(30));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_soft_window_path_takes_no_lock_while_backing_off() {
        let clock = ManualClock::new();
        let provider = provider(&clock);
        clock.advance(Duration::from_secs(60)); // inside the soft window (50 s before expiry)
        let ext = http::Extensions::new();
        let view =
            || crate::RequestView::new(&http::Method::GET, "https", "a.example", "/", None, &ext);
        provider.authorize(&view()).await.unwrap(); // starts the background refresh
        while provider.engine.flight.is_running() {
            tokio::task::yield_now().await;
        }
        assert!(
            provider.engine.lock().backoff.is_some(),
            "the refresh failed"
        );

        // With the state lock held here, a request in the soft window must still be served.
        let held = provider.engine.lock();
        let other = provider.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ext = http::Extensions::new();
            let view =
                crate::RequestView::new(&http::Method::GET, "https", "a.example", "/", None, &ext);
            let mut fut = other.authorize(&view);
            let _ = tx.send(fut.take_ready().map(|r| r.is_ok()));
        });
        let served = rx.recv_timeout(Duration::from_secs(5));
        drop(held);
        assert_eq!(served, Ok(Some(true)), "served at once, without the lock");
    }
}
