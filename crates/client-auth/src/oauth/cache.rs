//! The token cache: lock-free reads, exactly one refresh in flight, stale-while-refresh,
//! cancellation-safe refreshes on a spawned task, generation-checked 401 handling, backoff.
//!
//! Reads go through an `ArcSwapOption` and never lock while a fresh token exists. Everything
//! that decides whether to refresh takes the `state` mutex briefly (never across an `.await`).
//! A refresh runs on its own tokio task and publishes its outcome on a `watch` channel that
//! every waiter holds, so dropping the request that started it changes nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::response::{GrantKind, parse_token_response};
use super::{Config, TokenTransport, Tokens};
use crate::clock::Clock;
use crate::error::{Error, SessionEnd, TransportError};
use crate::provider::{AuthorizeFuture, Credential, Generation, Unauthorized, UnauthorizedFuture};
use crate::secret::{AccessToken, RefreshToken};
use crate::session::{SessionReason, SessionState, SessionWatch};
use crate::store::{StoredTokens, TokenStore};
use crate::www_authenticate::refresh_may_help;

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

type Outcome = Option<Result<Arc<Cached>, Error>>;

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
    Wait(watch::Receiver<Outcome>),
}

#[derive(Debug, Default)]
struct State {
    refresh_token: Option<RefreshToken>,
    /// Whether the store has been read (or tokens were handed in).
    loaded: bool,
    /// Set when there is no session: every caller gets this error without network.
    ended: Option<Error>,
    in_flight: Option<watch::Receiver<Outcome>>,
    /// Until when failed refreshes are not retried, and the error callers get meanwhile.
    backoff: Option<(Instant, Error)>,
    failures: u32,
    /// When a 401 last forced a refresh (cooldown).
    last_forced: Option<Instant>,
    /// Bumped when tokens are set or cleared by hand, so an older refresh does not overwrite.
    epoch: u64,
}

/// The state behind an `OAuthProvider`.
pub(crate) struct Engine {
    pub(crate) config: Config,
    transport: Arc<dyn TokenTransport>,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    current: ArcSwapOption<Cached>,
    state: Mutex<State>,
    refreshing: AtomicBool,
    pub(crate) session: SessionWatch,
    generation: AtomicU64,
}

struct Refreshed {
    cached: Arc<Cached>,
    refresh_token: Option<RefreshToken>,
    reason: SessionReason,
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
            refreshing: AtomicBool::new(false),
            session: SessionWatch::new(if handed_in {
                SessionState::Authenticated(SessionReason::Authenticated)
            } else {
                SessionState::Unknown
            }),
            generation: AtomicU64::new(0),
        };
        if let Some((token, expires_in)) = access_token {
            let now = engine.clock.now();
            let cached = engine.make_cached(
                token,
                expires_in.or(engine.config.assume_lifetime),
                now,
                None,
            )?;
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

    fn make_cached(
        &self,
        token: AccessToken,
        lifetime: Option<Duration>,
        sent_at: Instant,
        scope: Option<String>,
    ) -> Result<Arc<Cached>, Error> {
        let raw = zeroize::Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let value = HeaderValue::from_str(&raw).map_err(|_| Error::InvalidHeaderValue)?;
        let generation = Generation::new(self.generation.fetch_add(1, Ordering::Relaxed) + 1);
        let (refresh_at, stale_at) = match lifetime.and_then(|l| Some((l, sent_at.checked_add(l)?)))
        {
            None => (None, None),
            Some((lifetime, expires)) => {
                let w = &self.config.windows;
                let (soft, hard) = w.for_lifetime(lifetime);
                let jitter = soft
                    .saturating_sub(hard)
                    .mul_f64(fastrand::f64() * w.jitter);
                let at = |before: Duration| expires.checked_sub(before).unwrap_or(sent_at);
                (Some(at(soft) + jitter), Some(at(hard)))
            }
        };
        Ok(Arc::new(Cached {
            credential: Credential::new(value, generation),
            token,
            refresh_at,
            stale_at,
            scope,
        }))
    }

    /// The fast path for a request: a credential at hand, or a wait for the one refresh.
    pub(crate) fn authorize(self: &Arc<Self>, force: bool) -> AuthorizeFuture {
        match self.get(force, |cached| cached.credential.clone()) {
            Ok(Join::Current(credential)) => AuthorizeFuture::ready(Ok(credential)),
            Ok(Join::Wait(rx)) => {
                AuthorizeFuture::pending(
                    async move { wait(rx).await.map(|c| c.credential.clone()) },
                )
            }
            Err(e) => AuthorizeFuture::ready(Err(e)),
        }
    }

    /// The current access token for callers that set headers themselves.
    pub(crate) async fn current_token(self: &Arc<Self>, force: bool) -> Result<AccessToken, Error> {
        match self.get(force, |cached| cached.token.clone())? {
            Join::Current(token) => Ok(token),
            Join::Wait(rx) => Ok(wait(rx).await?.token.clone()),
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
                Join::Wait(rx) => Join::Wait(rx),
            },
        )
    }

    /// Inside the soft window: make sure one background refresh runs; never wait.
    fn refresh_ahead(self: &Arc<Self>, now: Instant) {
        if self.refreshing.load(Ordering::Acquire) {
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
        if let Some(rx) = &st.in_flight {
            return Ok(Join::Wait(rx.clone()));
        }
        if let Some(cached) = self.current.load_full() {
            let enough = match need {
                Need::Usable => cached.freshness(now) != Freshness::Stale,
                Need::Fresh => cached.freshness(now) == Freshness::Fresh,
                Need::New => false,
            };
            if enough {
                return Ok(Join::Current(cached));
            }
        }
        if let Some((until, error)) = &st.backoff
            && now < *until
        {
            return Err(error.clone());
        }
        self.start_locked(&mut st).map(Join::Wait)
    }

    /// Spawns the one refresh. Called with the state lock held and nothing in flight.
    fn start_locked(self: &Arc<Self>, st: &mut State) -> Result<watch::Receiver<Outcome>, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (tx, rx) = watch::channel(None);
        st.in_flight = Some(rx.clone());
        self.refreshing.store(true, Ordering::Release);
        let epoch = st.epoch;
        let engine = Arc::clone(self);
        handle.spawn(async move { engine.run_refresh(tx, epoch).await });
        Ok(rx)
    }

    async fn run_refresh(self: Arc<Self>, tx: watch::Sender<Outcome>, epoch: u64) {
        // If this task is dropped half-way (its runtime shut down), waiters see the channel
        // close (`RefreshAborted`) and the next caller may start a new refresh.
        let mut guard = InFlightGuard {
            engine: &self,
            armed: true,
        };
        let grant = match self.config.grant {
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::ClientCredentials => "client_credentials",
        };
        let span = tracing::info_span!(
            "client_auth.refresh",
            provider = "oauth",
            grant,
            namespace = %self.config.namespace,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            generation = tracing::field::Empty,
        );
        let started = self.clock.now();
        let result = self.refresh_once().instrument(span.clone()).await;
        let outcome = self.finish(result, epoch).instrument(span.clone()).await;
        let elapsed = self.clock.now().saturating_duration_since(started);
        span.record("duration_ms", elapsed.as_millis() as u64);
        match &outcome {
            Ok(cached) => {
                span.record("outcome", "ok");
                span.record("generation", cached.credential.generation().get());
            }
            Err(e) => {
                span.record("outcome", tracing::field::display(e));
            }
        }
        guard.armed = false;
        let _ = tx.send(Some(outcome));
    }

    /// One refresh: read the store the first time, take the store's lease, call the token
    /// endpoint, write the store. Publishes nothing.
    async fn refresh_once(&self) -> Result<Refreshed, Error> {
        let ns = self.config.namespace.as_str();
        let (loaded, mut refresh_token) = {
            let st = self.lock();
            (st.loaded, st.refresh_token.clone())
        };
        if !loaded {
            let stored = self.store.load(ns).await.map_err(Error::Store)?;
            if let Some(stored) = stored {
                if let Some(found) = self.adopt(&stored, SessionReason::FoundToken)? {
                    return Ok(found);
                }
                refresh_token = stored.refresh_token;
            }
            let mut st = self.lock();
            st.loaded = true;
            st.refresh_token.clone_from(&refresh_token);
            if refresh_token.is_none() && self.config.grant == GrantKind::RefreshToken {
                return Err(Error::NoSession {
                    reason: SessionReason::NoToken,
                });
            }
        }

        let lease = self
            .store
            .lock_refresh(ns, self.config.timeout.saturating_mul(3))
            .await
            .map_err(Error::Store)?;
        let result = async {
            if lease.is_some() {
                // Another process may have refreshed while this one waited for the lease.
                if let Some(stored) = self.store.load(ns).await.map_err(Error::Store)?
                    && stored.refresh_token != refresh_token
                {
                    if let Some(theirs) = self.adopt(&stored, SessionReason::Refreshed)? {
                        return Ok(theirs);
                    }
                    refresh_token = stored.refresh_token;
                }
            }
            self.exchange(refresh_token).await
        }
        .await;
        if let Some(lease) = lease
            && let Err(e) = lease.release().await
        {
            tracing::warn!(error = %e, "could not release the refresh lease");
        }
        result
    }

    /// Uses stored tokens when their access token is still usable.
    fn adopt(
        &self,
        stored: &StoredTokens,
        reason: SessionReason,
    ) -> Result<Option<Refreshed>, Error> {
        let Some(token) = &stored.access_token else {
            return Ok(None);
        };
        let now = self.clock.now();
        let lifetime = match stored.expires_at {
            Some(at) => match at.duration_since(self.clock.unix_now()) {
                Ok(left) => Some(left),
                Err(_) => return Ok(None),
            },
            None => self.config.assume_lifetime,
        };
        let cached = self.make_cached(token.clone(), lifetime, now, stored.scope.clone())?;
        if cached.freshness(now) == Freshness::Stale {
            return Ok(None);
        }
        Ok(Some(Refreshed {
            cached,
            refresh_token: stored.refresh_token.clone(),
            reason,
        }))
    }

    /// The token-endpoint call, then store-before-publish.
    async fn exchange(&self, refresh_token: Option<RefreshToken>) -> Result<Refreshed, Error> {
        if self.config.grant == GrantKind::RefreshToken && refresh_token.is_none() {
            return Err(Error::SessionEnded(SessionEnd::NoRefreshToken));
        }
        let request = self.config.token_request(refresh_token.as_ref())?;
        let sent_at = self.clock.now();
        let sent_unix = self.clock.unix_now();
        let response = tokio::time::timeout(
            self.config.timeout,
            self.transport.send(request, self.config.max_body),
        )
        .await
        .map_err(|_| Error::Transport(TransportError::timeout()))??;
        let (parts, body) = response.into_parts();
        let parsed = parse_token_response(
            parts.status,
            &parts.headers,
            &body,
            self.config.grant,
            self.clock.unix_now(),
        )?;
        let lifetime = parsed.expires_in.or(self.config.assume_lifetime);
        let rotated = parsed.refresh_token.is_some();
        // RFC 9700 §4.14.2: a returned refresh token replaces the old one; none keeps it.
        let refresh_token = parsed.refresh_token.or(refresh_token);
        let cached = self.make_cached(parsed.access_token, lifetime, sent_at, parsed.scope)?;
        let stored = StoredTokens {
            access_token: Some(cached.token.clone()),
            refresh_token: refresh_token.clone(),
            expires_at: lifetime.and_then(|l| sent_unix.checked_add(l)),
            scope: cached.scope.clone(),
            issued_at: Some(sent_unix),
        };
        self.save(&stored, rotated).await;
        Ok(Refreshed {
            cached,
            refresh_token,
            reason: SessionReason::Refreshed,
        })
    }

    /// Writes the store, retrying a few times. A failure is logged (without tokens) and the
    /// tokens are still used from memory: losing a rotated refresh token to a store hiccup
    /// would end the session.
    async fn save(&self, stored: &StoredTokens, rotated: bool) -> bool {
        let attempts = self.config.store_attempts.max(1);
        for attempt in 1..=attempts {
            match self.store.save(&self.config.namespace, stored).await {
                Ok(()) => return true,
                Err(e) if attempt < attempts => {
                    tracing::debug!(error = %e, attempt, "token store write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        attempts,
                        rotated_refresh_token = rotated,
                        "token store write failed; the new tokens are kept in memory only"
                    );
                }
            }
        }
        false
    }

    /// Publishes a refresh's outcome and clears the in-flight marker.
    async fn finish(
        &self,
        result: Result<Refreshed, Error>,
        epoch: u64,
    ) -> Result<Arc<Cached>, Error> {
        match result {
            Ok(refreshed) => {
                let mut st = self.lock();
                self.clear_in_flight(&mut st);
                if st.epoch != epoch {
                    // Tokens were set or cleared by hand meanwhile: theirs win.
                    return self.current.load_full().ok_or_else(|| ended_error(&st));
                }
                self.current.store(Some(Arc::clone(&refreshed.cached)));
                st.refresh_token = refreshed.refresh_token;
                st.loaded = true;
                st.failures = 0;
                st.backoff = None;
                st.ended = None;
                drop(st);
                self.session
                    .set(SessionState::Authenticated(refreshed.reason));
                Ok(refreshed.cached)
            }
            Err(e) if e.is_session_ended() => {
                let reason = match &e {
                    Error::NoSession { reason } => reason.clone(),
                    Error::SessionEnded(end) => SessionReason::Invalid(end.code().to_owned()),
                    _ => SessionReason::Invalid("unknown".to_owned()),
                };
                // Clear the store before publishing, so no other process or restart picks the
                // dead refresh token up again.
                let same_epoch = self.lock().epoch == epoch;
                if same_epoch
                    && let Err(store_error) = self.store.clear(&self.config.namespace).await
                {
                    tracing::error!(error = %store_error, "could not clear the token store");
                }
                let mut st = self.lock();
                self.clear_in_flight(&mut st);
                if st.epoch == epoch {
                    self.current.store(None);
                    st.refresh_token = None;
                    st.loaded = true;
                    st.backoff = None;
                    st.ended = Some(Error::NoSession {
                        reason: reason.clone(),
                    });
                    drop(st);
                    tracing::warn!(error = %e, "the session ended");
                    self.session.set(SessionState::NoSession(reason));
                }
                Err(e)
            }
            Err(e) => {
                let now = self.clock.now();
                let mut st = self.lock();
                self.clear_in_flight(&mut st);
                if st.epoch == epoch {
                    st.failures = st.failures.saturating_add(1);
                    let delay = self
                        .backoff_delay(st.failures)
                        .max(e.retry_after().unwrap_or_default());
                    st.backoff = Some((now + delay, e.clone()));
                    drop(st);
                    tracing::warn!(
                        error = %e,
                        transient = e.is_transient(),
                        backoff_ms = delay.as_millis() as u64,
                        "token refresh failed; backing off"
                    );
                }
                Err(e)
            }
        }
    }

    fn clear_in_flight(&self, st: &mut State) {
        st.in_flight = None;
        self.refreshing.store(false, Ordering::Release);
    }

    /// Exponential backoff with jitter: `initial × 2^(n-1)`, capped, then a random point in
    /// its upper half.
    fn backoff_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// A 401 for `failed`: retry with a newer token, refresh once, or give up.
    pub(crate) fn on_unauthorized(
        self: &Arc<Self>,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        if !refresh_may_help(status, headers) {
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        }
        let now = self.clock.now();
        let failed_generation = failed.generation();
        let mut st = self.lock();
        if let Some(e) = &st.ended {
            return UnauthorizedFuture::ready(Err(e.clone()));
        }
        let current = self.current.load_full();
        if let Some(cached) = &current
            && cached.credential.generation() != failed_generation
            && cached.freshness(now) != Freshness::Stale
        {
            tracing::debug!("401 for an older token; retrying with the current one");
            return UnauthorizedFuture::ready(Ok(Unauthorized::Retry(cached.credential.clone())));
        }
        let rx = match &st.in_flight {
            Some(rx) => rx.clone(),
            None => {
                let cooling = st
                    .last_forced
                    .is_some_and(|t| now.saturating_duration_since(t) < self.config.cooldown);
                let backing_off = st.backoff.as_ref().is_some_and(|(until, _)| now < *until);
                if cooling || backing_off {
                    tracing::debug!(
                        cooling,
                        backing_off,
                        "401 returned unchanged without a refresh"
                    );
                    return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
                }
                if current
                    .as_ref()
                    .is_some_and(|c| c.credential.generation() == failed_generation)
                {
                    self.current.store(None);
                }
                st.last_forced = Some(now);
                match self.start_locked(&mut st) {
                    Ok(rx) => rx,
                    Err(_) => return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp)),
                }
            }
        };
        drop(st);
        UnauthorizedFuture::pending(async move {
            match wait(rx).await {
                Ok(c) if c.credential.generation() != failed_generation => {
                    Ok(Unauthorized::Retry(c.credential.clone()))
                }
                Ok(_) => Ok(Unauthorized::GiveUp),
                Err(e) if e.is_session_ended() => Err(e),
                Err(_) => Ok(Unauthorized::GiveUp),
            }
        })
    }

    /// `logout()` and `clear()`.
    pub(crate) async fn end_session(&self, revoke: bool) -> Result<(), Error> {
        let reason = if revoke {
            SessionReason::Logout
        } else {
            SessionReason::Cleared
        };
        let refresh_token = {
            let mut st = self.lock();
            st.epoch += 1;
            st.backoff = None;
            st.failures = 0;
            st.last_forced = None;
            st.loaded = true;
            self.current.store(None);
            if self.config.grant == GrantKind::RefreshToken {
                st.ended = Some(Error::NoSession {
                    reason: reason.clone(),
                });
            }
            st.refresh_token.take()
        };
        self.session.set(SessionState::NoSession(reason));
        let cleared = self
            .store
            .clear(&self.config.namespace)
            .await
            .map_err(Error::Store);
        let revoked = match (&self.config.revocation_url, refresh_token, revoke) {
            (Some(url), Some(token), true) => self.revoke(url, &token).await,
            _ => Ok(()),
        };
        cleared.and(revoked)
    }

    async fn revoke(&self, url: &http::Uri, token: &RefreshToken) -> Result<(), Error> {
        let request = self.config.form_request(
            url,
            &[
                ("token", token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ],
        )?;
        let response = tokio::time::timeout(
            self.config.timeout,
            self.transport.send(request, self.config.max_body),
        )
        .await
        .map_err(|_| Error::Transport(TransportError::timeout()))??;
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
        ) {
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    /// `set_tokens()`: store, then publish.
    pub(crate) async fn set_tokens(&self, tokens: Tokens) -> Result<(), Error> {
        let now = self.clock.now();
        let lifetime = tokens.expires_in.or(self.config.assume_lifetime);
        let cached = tokens
            .access_token
            .map(|t| self.make_cached(t, lifetime, now, None))
            .transpose()?;
        let stored = StoredTokens {
            access_token: cached.as_ref().map(|c| c.token.clone()),
            refresh_token: tokens.refresh_token.clone(),
            expires_at: lifetime.and_then(|l| self.clock.unix_now().checked_add(l)),
            scope: None,
            issued_at: None,
        };
        let saved = self.save(&stored, false).await;
        {
            let mut st = self.lock();
            st.epoch += 1;
            st.refresh_token = tokens.refresh_token;
            st.loaded = true;
            st.ended = None;
            st.backoff = None;
            st.failures = 0;
            st.last_forced = None;
            self.current.store(cached);
        }
        self.session
            .set(SessionState::Authenticated(SessionReason::Authenticated));
        if saved {
            Ok(())
        } else {
            Err(Error::Store(crate::error::StoreError::transient(
                "the tokens could not be written to the store; they are used from memory",
            )))
        }
    }
}

fn ended_error(st: &State) -> Error {
    st.ended.clone().unwrap_or(Error::NoSession {
        reason: SessionReason::Cleared,
    })
}

/// Waits for a refresh's outcome.
async fn wait(mut rx: watch::Receiver<Outcome>) -> Result<Arc<Cached>, Error> {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(Error::RefreshAborted)),
        Err(_) => Err(Error::RefreshAborted),
    }
}

/// Clears the in-flight marker if a refresh task is dropped before it finishes.
struct InFlightGuard<'a> {
    engine: &'a Engine,
    armed: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.engine.lock();
            self.engine.clear_in_flight(&mut st);
        }
    }
}
