//! A model-based test of `OAuthProvider` (the session, cache and 401 contract): random
//! interleavings of requests, token-endpoint answers, 401s, session operations, store faults,
//! clock moves and runtime shutdowns, checked after every step against a reference model of the
//! contract — not against what today's code happens to do. Public API only.
//!
//! # Layout
//!
//! - [`Gate`]: a `TokenTransport` whose every exchange waits until the test answers it (rotation,
//!   no rotation, `invalid_grant`, 503, a reset connection, an unusable answer that still carries
//!   a rotated refresh token, or no answer at all so the provider's own 200 ms timeout fires). It
//!   counts exchanges in flight and remembers the refresh token each one sent.
//! - [`ModelStore`]: a `TokenStore` that logs every call, can fail the next calls or stall the
//!   next one until the following operation has run, and takes writes from "another process".
//! - [`ModelClock`]: the `ManualClock`, plus a list of the provider's pending sleeps, so that
//!   short ones (store-write retries) can be let pass; everything else moves only on `Advance`.
//! - [`Model`]: the tokens issued per session epoch (and since when each one must never be seen
//!   again), which refresh token is current and why, what the store must hold, the expected
//!   session state, which error class callers may see, the 401 cooldown.
//! - [`Harness`]: interprets a proptest-generated `Vec<Op>` step by step on a current-thread
//!   runtime; after each step it lets the provider settle, replays what happened (exchanges,
//!   store calls, finished requests — each stamped with a global event number) in order against
//!   the model, and checks the invariants. A state or store mismatch is recorded and the case
//!   goes on; anything the model cannot follow past (a wrong token or error handed to a caller,
//!   a wrong refresh token sent, a hang) stops the case.
//! - `model_*` tests: one per invariant, each failing with the shortest sequence that breaks
//!   it (proptest's shrinking, then single-operation removal). A case stopped by another
//!   invariant is not judged further by that test.
//! - Named regression tests for the defects reviewers reproduced, and one the model found.
//!
//! `CLIENT_AUTH_MODEL_CASES` sets the number of cases per invariant (default [`DEFAULT_CASES`],
//! about 30 s for the whole file on 2 cores). Nothing is persisted: proptest's failure files are
//! turned off. `CLIENT_AUTH_MODEL_TOLERATE` (comma-separated message fragments) ignores the
//! violations whose message contains one of them, to look for the next distinct failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, AuthorizationControl, AuthorizationProvider, Clock, Credential, Error,
    ManualClock, OAuthProvider, OAuthProviderBuilder, RefreshToken, RequestView, SessionReason,
    SessionState, StoreError, StoredTokens, SuppliedTransport, TokenStore, TokenTransport, Tokens,
    TransportError, TransportErrorKind, Unauthorized,
};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NS: &str = "model-user";
const TOKEN_URL: &str = "https://auth.example.com/token";
/// The provider's token-request timeout (real tokio time).
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(200);
/// `expires_in` of every token the gate issues, and of tokens set or written by hand.
const LIFETIME: u64 = 3600;
/// The hard window of a `LIFETIME` token: `min(10 s, 25 %)`.
const HARD: u64 = 10;
/// Longest real-time wait for anything in the harness.
const WAIT: Duration = Duration::from_secs(5);
/// Cases per invariant when `CLIENT_AUTH_MODEL_CASES` is not set.
const DEFAULT_CASES: u32 = 384;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A global event counter: every exchange, store call, request completion and session operation
/// takes a number, so the harness can replay them in the order they happened.
#[derive(Debug, Clone, Default)]
struct Seq(Arc<AtomicU64>);

impl Seq {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

// ---------------------------------------------------------------------------------------------
// The controllable token endpoint
// ---------------------------------------------------------------------------------------------

/// What the test answers an exchange with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200 with a new access token and a new (rotated) refresh token.
    Rotate,
    /// 200 with a new access token and no refresh token (the old one stays).
    Keep,
    /// 400 `invalid_grant`.
    InvalidGrant,
    /// 503.
    Unavailable,
    /// The connection breaks (a transport error).
    Reset,
    /// 200 with a rotated refresh token, but the rest is unusable.
    Garbled(Garble),
    /// Never answers: the provider's timeout must fire.
    Timeout,
}

/// How an answer that carries a rotated refresh token is unusable otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Garble {
    TokenTypeMac,
    BadExpiresIn,
    EmptyAccessToken,
    CrLfInAccessToken,
}

const GARBLES: [Garble; 4] = [
    Garble::TokenTypeMac,
    Garble::BadExpiresIn,
    Garble::EmptyAccessToken,
    Garble::CrLfInAccessToken,
];

#[derive(Debug)]
enum Reply {
    Http(http::Response<Bytes>),
    Reset,
    Never,
}

fn json_response(status: u16, body: &serde_json::Value) -> http::Response<Bytes> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

/// The answer `answer`, issuing access token `at` and (when it rotates) refresh token `rt`.
fn reply_for(answer: Answer, at: &str, rt: &str) -> Reply {
    let body = match answer {
        Answer::Rotate => json!({
            "access_token": at, "token_type": "Bearer", "expires_in": LIFETIME, "refresh_token": rt,
        }),
        Answer::Keep => {
            json!({ "access_token": at, "token_type": "Bearer", "expires_in": LIFETIME })
        }
        Answer::InvalidGrant => {
            return Reply::Http(json_response(
                400,
                &json!({ "error": "invalid_grant", "error_description": "the grant was revoked" }),
            ));
        }
        Answer::Unavailable => {
            return Reply::Http(json_response(
                503,
                &json!({ "error": "temporarily_unavailable" }),
            ));
        }
        Answer::Reset => return Reply::Reset,
        Answer::Timeout => return Reply::Never,
        Answer::Garbled(Garble::TokenTypeMac) => json!({
            "access_token": at, "token_type": "mac", "expires_in": LIFETIME, "refresh_token": rt,
        }),
        Answer::Garbled(Garble::BadExpiresIn) => json!({
            "access_token": at, "token_type": "Bearer", "expires_in": "soon", "refresh_token": rt,
        }),
        Answer::Garbled(Garble::EmptyAccessToken) => json!({
            "access_token": "", "token_type": "Bearer", "expires_in": LIFETIME, "refresh_token": rt,
        }),
        Answer::Garbled(Garble::CrLfInAccessToken) => json!({
            "access_token": format!("{at}\r\nX-Injected: 1"), "token_type": "Bearer",
            "expires_in": LIFETIME, "refresh_token": rt,
        }),
    };
    Reply::Http(json_response(200, &body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExState {
    /// Waiting for the test's answer.
    Pending,
    /// Told never to answer; waiting for the provider to give up.
    Hanging,
    Answered,
    /// Dropped by the provider (its timeout, or its runtime went away) before an answer.
    Abandoned,
}

#[derive(Debug)]
struct ExRec {
    sent_rt: Option<String>,
    sent_seq: u64,
    state: ExState,
    ended_seq: Option<u64>,
    hanging_since: Option<Instant>,
    tx: Option<oneshot::Sender<Reply>>,
}

#[derive(Debug, Default)]
struct GateState {
    exchanges: Vec<ExRec>,
    live: Vec<usize>,
    max_in_flight: usize,
    overlap: Option<String>,
}

/// A token endpoint whose every exchange blocks until the test answers it.
#[derive(Debug, Clone, Default)]
struct Gate {
    state: Arc<Mutex<GateState>>,
    seq: Seq,
}

/// Marks an exchange finished (or abandoned) when the provider drops its future.
struct LiveExchange {
    gate: Gate,
    id: usize,
}

impl Drop for LiveExchange {
    fn drop(&mut self) {
        let seq = self.gate.seq.next();
        let mut s = lock(&self.gate.state);
        s.live.retain(|&i| i != self.id);
        let rec = &mut s.exchanges[self.id];
        rec.ended_seq = Some(seq);
        if matches!(rec.state, ExState::Pending | ExState::Hanging) {
            rec.state = ExState::Abandoned;
            rec.tx = None;
        }
    }
}

fn refresh_token_in(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned())
}

impl TokenTransport for Gate {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let sent_rt = refresh_token_in(request.body());
        let (tx, rx) = oneshot::channel();
        let id = {
            let sent_seq = self.seq.next();
            let mut s = lock(&self.state);
            let id = s.exchanges.len();
            s.exchanges.push(ExRec {
                sent_rt,
                sent_seq,
                state: ExState::Pending,
                ended_seq: None,
                hanging_since: None,
                tx: Some(tx),
            });
            s.live.push(id);
            s.max_in_flight = s.max_in_flight.max(s.live.len());
            if s.live.len() > 1 && s.overlap.is_none() {
                let list: Vec<String> = s
                    .live
                    .iter()
                    .map(|&i| format!("#{i} (sent {:?})", s.exchanges[i].sent_rt))
                    .collect();
                s.overlap = Some(format!(
                    "{} exchanges in flight at once: {}",
                    s.live.len(),
                    list.join(", ")
                ));
            }
            id
        };
        let live = LiveExchange {
            gate: self.clone(),
            id,
        };
        Box::pin(async move {
            let _live = live;
            match rx.await {
                Ok(Reply::Http(response)) => Ok(response),
                Ok(Reply::Reset) => Err(Error::Transport(TransportError::new(
                    TransportErrorKind::Other,
                    "connection reset (model)",
                ))),
                Ok(Reply::Never) | Err(_) => std::future::pending().await,
            }
        })
    }
}

impl Gate {
    fn len(&self) -> usize {
        lock(&self.state).exchanges.len()
    }

    fn oldest_pending(&self) -> Option<usize> {
        lock(&self.state)
            .exchanges
            .iter()
            .position(|e| e.state == ExState::Pending)
    }

    fn pending_sending(&self, rt: &str) -> Option<usize> {
        lock(&self.state)
            .exchanges
            .iter()
            .position(|e| e.state == ExState::Pending && e.sent_rt.as_deref() == Some(rt))
    }

    fn sent_rt(&self, id: usize) -> Option<String> {
        lock(&self.state).exchanges[id].sent_rt.clone()
    }

    /// Whether the provider is done with exchange `id` (its future completed or was dropped).
    fn ended(&self, id: usize) -> bool {
        lock(&self.state).exchanges[id].ended_seq.is_some()
    }

    fn in_flight(&self) -> usize {
        lock(&self.state).live.len()
    }

    /// Exchanges still waiting for an answer (or for the provider's timeout).
    fn waiting(&self) -> Vec<usize> {
        lock(&self.state)
            .exchanges
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.state, ExState::Pending | ExState::Hanging))
            .map(|(i, _)| i)
            .collect()
    }

    fn hanging_for(&self) -> Option<Duration> {
        lock(&self.state)
            .exchanges
            .iter()
            .filter(|e| e.state == ExState::Hanging)
            .filter_map(|e| e.hanging_since.map(|t| t.elapsed()))
            .max()
    }

    fn overlap(&self) -> Option<String> {
        lock(&self.state).overlap.clone()
    }

    /// `(sent_seq, sent_rt, ended_seq if abandoned)` of every exchange.
    fn snapshot(&self) -> Vec<(u64, Option<String>, Option<u64>)> {
        lock(&self.state)
            .exchanges
            .iter()
            .map(|e| {
                let abandoned = (e.state == ExState::Abandoned)
                    .then_some(e.ended_seq)
                    .flatten();
                (e.sent_seq, e.sent_rt.clone(), abandoned)
            })
            .collect()
    }

    /// Answers exchange `id`. Returns false if it was not waiting for an answer.
    fn answer(&self, id: usize, reply: Reply, hang: bool) -> bool {
        let tx = {
            let mut s = lock(&self.state);
            let rec = &mut s.exchanges[id];
            if rec.state != ExState::Pending {
                return false;
            }
            rec.state = if hang {
                rec.hanging_since = Some(Instant::now());
                ExState::Hanging
            } else {
                ExState::Answered
            };
            rec.tx.take()
        };
        tx.is_some_and(|tx| tx.send(reply).is_ok())
    }
}

// ---------------------------------------------------------------------------------------------
// The controllable store
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Load,
    Save,
    Clear,
    ClearIf,
}

/// One store call, as it completed.
#[derive(Debug, Clone)]
struct StoreEvent {
    seq: u64,
    call: Call,
    ok: bool,
    external: bool,
    /// What a load returned or a save wrote.
    tokens: Option<StoredTokens>,
    /// Whether a clear removed the entry.
    cleared: bool,
}

/// A fault for the next store calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The next `n` calls fail (transient).
    Fail(u32),
    /// The next call waits until the harness has run the next operation.
    Stall,
}

#[derive(Debug, Default)]
struct StoreState {
    content: HashMap<String, StoredTokens>,
    log: Vec<StoreEvent>,
    fail_next: u32,
    stall_next: bool,
    stalled: Vec<oneshot::Sender<()>>,
    failures: u64,
    /// When a save last failed, if no store call came after it (a retry may be on its way).
    failed_save_at: Option<Instant>,
}

/// A `MemoryStore`-like map that records every call and can be made to fail or stall.
#[derive(Debug, Default)]
struct ModelStore {
    state: Mutex<StoreState>,
    seq: Seq,
}

impl ModelStore {
    fn new(seq: Seq) -> Self {
        Self {
            state: Mutex::default(),
            seq,
        }
    }

    fn peek(&self) -> Option<StoredTokens> {
        lock(&self.state).content.get(NS).cloned()
    }

    fn put(&self, tokens: StoredTokens) {
        lock(&self.state).content.insert(NS.to_owned(), tokens);
    }

    /// Another process writes the store (no fault applies).
    fn external_write(&self, tokens: StoredTokens) {
        let seq = self.seq.next();
        let mut s = lock(&self.state);
        s.content.insert(NS.to_owned(), tokens.clone());
        s.log.push(StoreEvent {
            seq,
            call: Call::Save,
            ok: true,
            external: true,
            tokens: Some(tokens),
            cleared: false,
        });
    }

    fn arm(&self, fault: Fault) {
        let mut s = lock(&self.state);
        match fault {
            Fault::Fail(n) => s.fail_next = n,
            Fault::Stall => s.stall_next = true,
        }
    }

    fn release_stalled(&self) {
        let stalled = std::mem::take(&mut lock(&self.state).stalled);
        for tx in stalled {
            let _ = tx.send(());
        }
    }

    /// Calls waiting for [`release_stalled`](Self::release_stalled) (not counting calls whose
    /// caller is gone).
    fn stalled(&self) -> usize {
        lock(&self.state)
            .stalled
            .iter()
            .filter(|tx| !tx.is_closed())
            .count()
    }

    fn failures(&self) -> u64 {
        lock(&self.state).failures
    }

    fn log_len(&self) -> usize {
        lock(&self.state).log.len()
    }

    fn log_from(&self, from: usize) -> Vec<StoreEvent> {
        lock(&self.state).log[from..].to_vec()
    }

    /// Whether a save failed within `window` and nothing came after it: the provider may be
    /// sleeping before a retry.
    fn retry_expected(&self, window: Duration) -> bool {
        lock(&self.state)
            .failed_save_at
            .is_some_and(|t| t.elapsed() < window)
    }

    /// Decides, when a call starts, whether it fails and whether it stalls.
    fn admit(&self) -> (bool, Option<oneshot::Receiver<()>>) {
        let mut s = lock(&self.state);
        let fail = s.fail_next > 0;
        if fail {
            s.fail_next -= 1;
        }
        let stall = s.stall_next.then(|| {
            s.stall_next = false;
            let (tx, rx) = oneshot::channel();
            s.stalled.push(tx);
            rx
        });
        (fail, stall)
    }

    fn complete<T>(
        &self,
        call: Call,
        fail: bool,
        apply: impl FnOnce(&mut HashMap<String, StoredTokens>) -> (T, Option<StoredTokens>),
    ) -> Result<T, StoreError> {
        let seq = self.seq.next();
        let mut s = lock(&self.state);
        s.failed_save_at = None;
        if fail {
            s.failures += 1;
            if call == Call::Save {
                s.failed_save_at = Some(Instant::now());
            }
            s.log.push(StoreEvent {
                seq,
                call,
                ok: false,
                external: false,
                tokens: None,
                cleared: false,
            });
            return Err(StoreError::transient("the model store is unavailable"));
        }
        let before = s.content.contains_key(NS);
        let (value, tokens) = apply(&mut s.content);
        let cleared = before && !s.content.contains_key(NS);
        s.log.push(StoreEvent {
            seq,
            call,
            ok: true,
            external: false,
            tokens,
            cleared,
        });
        Ok(value)
    }
}

async fn unstall(stall: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = stall {
        let _ = rx.await;
    }
}

impl TokenStore for ModelStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        let (fail, stall) = self.admit();
        Box::pin(async move {
            unstall(stall).await;
            self.complete(Call::Load, fail, |c| {
                let found = c.get(namespace).cloned();
                (found.clone(), found)
            })
        })
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (fail, stall) = self.admit();
        Box::pin(async move {
            unstall(stall).await;
            self.complete(Call::Save, fail, |c| {
                c.insert(namespace.to_owned(), tokens.clone());
                ((), Some(tokens.clone()))
            })
        })
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let (fail, stall) = self.admit();
        Box::pin(async move {
            unstall(stall).await;
            self.complete(Call::Clear, fail, |c| {
                c.remove(namespace);
                ((), None)
            })
        })
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (fail, stall) = self.admit();
        Box::pin(async move {
            unstall(stall).await;
            self.complete(Call::ClearIf, fail, |c| {
                let holds = c
                    .get(namespace)
                    .is_some_and(|t| t.refresh_token.as_ref() == Some(refresh_token));
                if holds {
                    c.remove(namespace);
                }
                (holds, None)
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The clock
// ---------------------------------------------------------------------------------------------

/// A `ManualClock` that knows which sleeps the provider is in, so the harness can let short
/// ones (store-write retries) pass instead of waiting forever for an `Advance`.
#[derive(Debug, Clone, Default)]
struct ModelClock {
    inner: ManualClock,
    sleeps: Arc<Mutex<Vec<(u64, Duration)>>>,
    ids: Arc<AtomicU64>,
}

/// Forgets a sleep when it completes or is dropped.
struct SleepGuard {
    sleeps: Arc<Mutex<Vec<(u64, Duration)>>>,
    id: u64,
}

impl Drop for SleepGuard {
    fn drop(&mut self) {
        lock(&self.sleeps).retain(|(id, _)| *id != self.id);
    }
}

impl Clock for ModelClock {
    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn unix_now(&self) -> SystemTime {
        self.inner.unix_now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let id = self.ids.fetch_add(1, Ordering::SeqCst);
        lock(&self.sleeps).push((id, self.inner.elapsed() + duration));
        let guard = SleepGuard {
            sleeps: Arc::clone(&self.sleeps),
            id,
        };
        let sleep = self.inner.sleep(duration);
        Box::pin(async move {
            let _guard = guard;
            sleep.await;
        })
    }
}

impl ModelClock {
    /// How far the clock must move for the earliest pending sleep to end.
    fn next_sleep(&self) -> Option<Duration> {
        let now = self.inner.elapsed();
        lock(&self.sleeps)
            .iter()
            .map(|(_, deadline)| deadline.saturating_sub(now))
            .filter(|d| !d.is_zero())
            .min()
    }
}

/// Sleeps of the provider up to this long are let pass by the harness (store-write retries).
const SHORT_SLEEP: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Helpers shared by the model and the regression tests
// ---------------------------------------------------------------------------------------------

fn builder(
    gate: &Gate,
    store: &Arc<ModelStore>,
    clock: Arc<dyn Clock>,
) -> OAuthProviderBuilder<SuppliedTransport> {
    OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("model-client")
        .transport(Arc::new(gate.clone()))
        .store(store.clone(), NS)
        .clock(clock)
        .timeout(EXCHANGE_TIMEOUT)
        .backoff(secs(1), secs(1))
        .jitter(0.0)
}

fn authorize_with(provider: &OAuthProvider, force: bool) -> client_auth::AuthorizeFuture {
    let mut ext = Extensions::new();
    if force {
        ext.insert(AuthorizationControl::ForceRefresh);
    }
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/m", None, &ext);
    provider.authorize(&view)
}

fn token_of(c: &Credential) -> String {
    c.header_value()
        .to_str()
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
        .unwrap_or_else(|_| "<not ascii>".to_owned())
}

fn unauthorized_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer error="invalid_token""#),
    );
    h
}

async fn yield_many(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic>".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Operations and scenarios
// ---------------------------------------------------------------------------------------------

/// How the provider starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    /// `.refresh_token(rt-init)`; the first request refreshes.
    RefreshToken,
    /// `.refresh_token(rt-init).access_token(at-init, 1 h)`.
    AccessAndRefresh,
    /// The store holds `rt-init`; the first request reads it and refreshes.
    StoredRefreshToken,
    /// The store holds `at-init` (30 min left) and `rt-init`.
    StoredTokens,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// `authorize` (served at once, or a spawned task that waits).
    Authorize,
    /// `access_token()` on a spawned task.
    AccessToken,
    /// `verify_session()` on a spawned task.
    VerifySession,
    /// Answer the oldest exchange that waits for an answer.
    Release(Answer),
    /// A 401 for a credential handed out earlier (0 = the newest).
    Unauthorized(usize),
    /// `on_accepted` for a credential handed out earlier (0 = the newest).
    Accepted(usize),
    Logout,
    Clear,
    /// `set_tokens` for a new user.
    SetTokens {
        access: bool,
        refresh: bool,
        lifetime: bool,
    },
    /// Move the `ManualClock` forward (seconds).
    Advance(u64),
    /// Another process writes new tokens to the store.
    ExternalWrite,
    StoreFault(Fault),
    /// Start a refresh on a second current-thread runtime, then drop that runtime.
    DropRuntime {
        before_first_poll: bool,
    },
    /// `authorize` and `access_token` outside any runtime.
    WithoutRuntime,
}

fn init_strategy() -> impl Strategy<Value = Init> {
    prop_oneof![
        3 => Just(Init::RefreshToken),
        2 => Just(Init::AccessAndRefresh),
        2 => Just(Init::StoredRefreshToken),
        1 => Just(Init::StoredTokens),
    ]
}

fn answer_strategy() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => Just(Answer::Rotate),
        4 => Just(Answer::Keep),
        3 => Just(Answer::InvalidGrant),
        2 => Just(Answer::Unavailable),
        4 => (0..GARBLES.len()).prop_map(|i| Answer::Garbled(GARBLES[i])),
        2 => Just(Answer::Reset),
        1 => Just(Answer::Timeout),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        7 => Just(Op::Authorize),
        9 => answer_strategy().prop_map(Op::Release),
        2 => Just(Op::Logout),
        3 => (any::<bool>(), prop::bool::weighted(0.85), any::<bool>()).prop_map(
            |(access, refresh, lifetime)| Op::SetTokens {
                access: access || !refresh,
                refresh,
                lifetime,
            }
        ),
        2 => Just(Op::AccessToken),
        1 => Just(Op::VerifySession),
        1 => Just(Op::Clear),
        3 => prop_oneof![Just(1u64), Just(2), Just(60), Just(3250), Just(3595), Just(4000)]
            .prop_map(Op::Advance),
        2 => (0usize..3).prop_map(Op::Unauthorized),
        1 => (0usize..3).prop_map(Op::Accepted),
        1 => Just(Op::ExternalWrite),
        3 => prop_oneof![
            3 => Just(Fault::Stall),
            2 => Just(Fault::Fail(1)),
            2 => Just(Fault::Fail(3)),
            1 => Just(Fault::Fail(5)),
        ]
        .prop_map(Op::StoreFault),
        1 => any::<bool>().prop_map(|before_first_poll| Op::DropRuntime { before_first_poll }),
        1 => Just(Op::WithoutRuntime),
    ]
}

fn scenario() -> impl Strategy<Value = (Init, Vec<Op>)> {
    (init_strategy(), prop::collection::vec(op_strategy(), 1..36))
}

// ---------------------------------------------------------------------------------------------
// Invariants and violations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inv {
    /// 1. Never two exchanges in flight per provider.
    OneExchange,
    /// 2. After `logout`/`clear`/`set_tokens` returns, no token issued before it appears again
    ///    in memory or in the store.
    SessionOpsWin,
    /// 3. A rotated refresh token that was received is in the store and is what the next
    ///    exchange sends, unless a later session operation superseded it.
    RotationKept,
    /// 4a. `session_state()` matches the model.
    SessionState,
    /// 4b. What callers get (a token, or an error of which class) matches the model.
    ErrorClasses,
    /// 5. No panic, with or without a runtime; no call waits past its timeout.
    NoPanicNoHang,
    /// 6. After a runtime that held a refresh is dropped, the provider still works.
    RuntimeDrop,
    /// 401 handling: generation check, refresh of an accepted token once per generation.
    Unauthorized,
}

impl Inv {
    fn label(self) -> &'static str {
        match self {
            Inv::OneExchange => "1 (never two exchanges in flight)",
            Inv::SessionOpsWin => "2 (session operations win over in-flight refreshes)",
            Inv::RotationKept => "3 (a received rotated refresh token is stored and sent next)",
            Inv::SessionState => "4a (session_state() matches the model)",
            Inv::ErrorClasses => "4b (callers see the token or error class the model expects)",
            Inv::NoPanicNoHang => "5 (no panic, no call waits past its timeout)",
            Inv::RuntimeDrop => "6 (a dropped runtime does not wedge the provider)",
            Inv::Unauthorized => "401 handling (generation check, accepted tokens refreshed)",
        }
    }
}

#[derive(Debug)]
struct Violation {
    inv: Inv,
    what: String,
}

fn violation(inv: Inv, what: impl Into<String>) -> Violation {
    Violation {
        inv,
        what: what.into(),
    }
}

/// What a case found: the violations in the order they happened (the last one may have
/// stopped the case), with the trace of the run.
#[derive(Debug)]
struct Failure {
    violations: Vec<Violation>,
    /// Whether the case stopped early (a violation the model cannot follow past).
    stopped: Option<Inv>,
    trace: Vec<String>,
}

impl Failure {
    /// The first violation of `inv` that is not tolerated.
    fn of(&self, inv: Inv) -> Option<&Violation> {
        self.violations
            .iter()
            .find(|v| v.inv == inv && !tolerated(v))
    }

    fn report(&self, v: &Violation) -> String {
        format!(
            "VIOLATION of invariant {}: {}\n--- trace ---\n{}",
            v.inv.label(),
            v.what,
            self.trace.join("\n")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Tok {
    epoch: u32,
    /// Model time from which it is past its hard window; `None`: valid until a 401.
    stale_at: Option<Duration>,
    /// Since when (event number) it must never appear again, why, and which invariant its
    /// reappearance breaks.
    dead: Option<(u64, String, Inv)>,
    /// The access token of an unusable answer: never to be served or stored.
    never_serve: bool,
    external: bool,
}

/// The access token the model believes the provider serves.
#[derive(Debug, Clone)]
struct Access {
    name: String,
    /// The provider may or may not hold it (adopted from the store, or a 401 may have
    /// invalidated it): do not require it to be served at once.
    uncertain: bool,
}

#[derive(Debug, Clone)]
enum StoreExpect {
    Any,
    Holds { rt: String, why: String },
    Empty { why: String },
    NotHolding { rt: String, why: String },
}

/// A session operation that has started but whose return has not been replayed yet: what
/// happens meanwhile may already belong to the new state.
#[derive(Debug, Clone)]
enum InProgress {
    Ending,
    NewSession { rt: Option<String> },
}

#[derive(Debug, Clone)]
struct GrantRace {
    id: usize,
    seq: u64,
    rejected: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class {
    transient: bool,
    ended: bool,
}

const TRANSIENT: Class = Class {
    transient: true,
    ended: false,
};
const CONFIG: Class = Class {
    transient: false,
    ended: false,
};

fn class(e: &Error) -> Class {
    Class {
        transient: e.is_transient(),
        ended: e.is_session_ended(),
    }
}

#[derive(Debug, Clone)]
struct ExInfo {
    epoch: u32,
    side: bool,
    sent_at: Duration,
    sent_rt: Option<String>,
}

#[derive(Debug)]
struct Model {
    now: Duration,
    /// Bumped by every session operation and by a session end.
    epoch: u32,
    session: SessionState,
    ended: bool,
    /// The refresh token the next exchange must send.
    rt: Option<String>,
    rt_why: String,
    /// Whether the provider has read the store (or was handed tokens).
    loaded: bool,
    access: Option<Access>,
    tokens: HashMap<String, Tok>,
    /// The class of the last failed refresh of this session, while callers may still get it.
    backoff: Option<Class>,
    store_expect: StoreExpect,
    /// A store call failed since `store_expect` was set: do not judge the store's content.
    store_expect_relaxed: bool,
    /// A clear or write failed: stale content may linger in the store.
    store_relaxed: bool,
    /// `(access, refresh)` tokens another process wrote since the provider's own last changed.
    ext: Vec<(String, String)>,
    /// An `invalid_grant` answered while another process had written newer tokens: the
    /// provider may end the session or adopt those tokens; decided once it has processed it.
    grant_race: Option<GrantRace>,
    exchanges: HashMap<usize, ExInfo>,
    side: HashSet<usize>,
    accepted: HashSet<u64>,
    refreshed_for: HashSet<u64>,
    /// 401-forced refreshes for never-accepted tokens since a token was last accepted, and
    /// until when the cooldown after the last one runs (1 s doubling to 30 s).
    forced_streak: u32,
    cooldown_until: Option<Duration>,
    runtime_dropped: bool,
    in_progress: Option<InProgress>,
    /// Session operations so far.
    session_ops: u32,
}

impl Model {
    fn new() -> Self {
        Self {
            now: Duration::ZERO,
            epoch: 0,
            session: SessionState::Unknown,
            ended: false,
            rt: None,
            rt_why: "none yet".into(),
            loaded: false,
            access: None,
            tokens: HashMap::new(),
            backoff: None,
            store_expect: StoreExpect::Any,
            store_expect_relaxed: false,
            store_relaxed: false,
            ext: Vec::new(),
            grant_race: None,
            exchanges: HashMap::new(),
            side: HashSet::new(),
            accepted: HashSet::new(),
            refreshed_for: HashSet::new(),
            forced_streak: 0,
            cooldown_until: None,
            runtime_dropped: false,
            in_progress: None,
            session_ops: 0,
        }
    }

    fn mint(&mut self, name: &str, stale_at: Option<Duration>, never_serve: bool, external: bool) {
        self.tokens.insert(
            name.to_owned(),
            Tok {
                epoch: self.epoch,
                stale_at,
                dead: None,
                never_serve,
                external,
            },
        );
    }

    fn kill(&mut self, name: &str, seq: u64, why: &str, inv: Inv) {
        if let Some(t) = self.tokens.get_mut(name)
            && t.dead.is_none()
        {
            t.dead = Some((seq, why.to_owned(), inv));
        }
    }

    /// Every token known so far must never appear again after event `seq`. A session
    /// operation makes their reappearance a breach of invariant 2; a session end (the server's
    /// answer) one of 4b. Another process's tokens survive a session end (compare-and-delete).
    fn kill_all(&mut self, seq: u64, why: &str, session_op: bool) {
        let inv = if session_op {
            Inv::SessionOpsWin
        } else {
            Inv::ErrorClasses
        };
        let epoch = self.epoch;
        for t in self.tokens.values_mut() {
            if t.dead.is_none() && t.epoch <= epoch && (session_op || !t.external) {
                t.dead = Some((seq, why.to_owned(), inv));
            }
        }
    }

    fn expect_store(&mut self, expect: StoreExpect) {
        self.store_expect = expect;
        self.store_expect_relaxed = false;
    }

    /// The session ends (logout, clear, `invalid_grant`, no refresh token).
    fn end(&mut self, seq: u64, reason: SessionReason, why: &str, session_op: bool) {
        self.epoch += 1;
        self.kill_all(seq, why, session_op);
        self.ended = true;
        self.session = SessionState::NoSession(reason);
        self.rt = None;
        self.rt_why = format!("none: {why}");
        self.access = None;
        self.backoff = None;
        self.loaded = true;
        self.ext.clear();
        self.grant_race = None;
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct UnauthCheck {
    failed: Credential,
    failed_token: String,
    /// The current token the provider must retry with (the failed one is older).
    retry_current: Option<String>,
    /// The failed token is current, was not refreshed for yet, and was accepted or no cooldown
    /// runs.
    must_refresh: bool,
    accepted: bool,
    access_at_call: Option<String>,
}

#[derive(Debug, Clone)]
enum ReqKind {
    Authorize,
    AccessToken,
    Verify,
    Unauthorized(Box<UnauthCheck>),
    SideRuntime,
    NoRuntime,
}

impl ReqKind {
    fn label(&self) -> String {
        match self {
            ReqKind::Authorize => "authorize".into(),
            ReqKind::AccessToken => "access_token".into(),
            ReqKind::Verify => "verify_session".into(),
            ReqKind::Unauthorized(c) => format!("on_unauthorized for {}", c.failed_token),
            ReqKind::SideRuntime => "authorize(force) on the dropped runtime".into(),
            ReqKind::NoRuntime => "without a runtime".into(),
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Cred(Credential),
    Token(AccessToken),
    Verified,
    Retry(Credential),
    GiveUp,
    Failed(Error),
}

impl Outcome {
    fn of_cred(r: Result<Credential, Error>) -> Self {
        r.map_or_else(Outcome::Failed, Outcome::Cred)
    }

    fn of_token(r: Result<AccessToken, Error>) -> Self {
        r.map_or_else(Outcome::Failed, Outcome::Token)
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Cred(c) => format!(
                "token {} (generation {})",
                token_of(c),
                c.generation().get()
            ),
            Outcome::Token(t) => format!("token {}", t.expose_secret()),
            Outcome::Verified => "Ok(())".into(),
            Outcome::Retry(c) => format!("Retry with {}", token_of(c)),
            Outcome::GiveUp => "GiveUp".into(),
            Outcome::Failed(e) => format!(
                "error {e} [transient: {}, session ended: {}]",
                e.is_transient(),
                e.is_session_ended()
            ),
        }
    }
}

struct Req {
    id: usize,
    kind: ReqKind,
    /// Session operations done when it started.
    ops: u32,
    handle: JoinHandle<(Outcome, u64)>,
}

enum Event {
    Sent {
        seq: u64,
        id: usize,
        rt: Option<String>,
    },
    Abandoned {
        seq: u64,
        id: usize,
    },
    Store(StoreEvent),
    Done {
        seq: u64,
        req: usize,
        kind: ReqKind,
        ops: u32,
        outcome: Outcome,
    },
}

impl Event {
    fn seq(&self) -> u64 {
        match self {
            Event::Sent { seq, .. }
            | Event::Abandoned { seq, .. }
            | Event::Done { seq, .. }
            | Event::Store(StoreEvent { seq, .. }) => *seq,
        }
    }
}

struct Harness {
    seq: Seq,
    clock: ModelClock,
    gate: Gate,
    store: Arc<ModelStore>,
    provider: OAuthProvider,
    m: Model,
    reqs: Vec<Req>,
    next_req: usize,
    creds: Vec<Credential>,
    names: u64,
    trace: Vec<String>,
    gate_seen: Vec<(bool, bool)>,
    store_seen: usize,
    buffer: Vec<Event>,
    auto_advances: u32,
    /// Violations recorded without stopping the case.
    soft: Vec<Violation>,
    /// Access tokens answered in this step: their waiters get them even if the exchange took
    /// so long (in model time) that they are already in their hard window.
    answered_now: HashSet<String>,
}

impl Harness {
    fn new(init: Init) -> Self {
        let seq = Seq::default();
        let clock = ModelClock::default();
        let gate = Gate {
            state: Arc::default(),
            seq: seq.clone(),
        };
        let store = Arc::new(ModelStore::new(seq.clone()));
        let mut m = Model::new();
        let mut b = builder(&gate, &store, Arc::new(clock.clone()));
        let full = Some(secs(LIFETIME - HARD));
        m.mint("rt-init", None, false, false);
        match init {
            Init::RefreshToken | Init::AccessAndRefresh => {
                b = b.refresh_token("rt-init");
                m.rt = Some("rt-init".into());
                m.rt_why = "handed to the builder".into();
                m.loaded = true;
                m.session = SessionState::Authenticated(SessionReason::Authenticated);
                if init == Init::AccessAndRefresh {
                    b = b.access_token("at-init", Some(secs(LIFETIME)));
                    m.mint("at-init", full, false, false);
                    m.access = Some(Access {
                        name: "at-init".into(),
                        uncertain: false,
                    });
                }
            }
            Init::StoredRefreshToken => store.put(StoredTokens {
                refresh_token: Some(RefreshToken::new("rt-init")),
                ..StoredTokens::default()
            }),
            Init::StoredTokens => {
                let now = clock.unix_now();
                m.mint("at-init", Some(secs(1800 - HARD)), false, false);
                store.put(StoredTokens {
                    access_token: Some(AccessToken::new("at-init")),
                    refresh_token: Some(RefreshToken::new("rt-init")),
                    expires_at: Some(now + secs(1800)),
                    scope: None,
                    issued_at: Some(now - secs(1800)),
                    dpop_jkt: None,
                });
            }
        }
        let provider = b.build().expect("the provider builds");
        Self {
            seq,
            clock,
            gate,
            store,
            provider,
            m,
            reqs: Vec::new(),
            next_req: 0,
            creds: Vec::new(),
            names: 0,
            trace: vec![format!("init {init:?}")],
            gate_seen: Vec::new(),
            store_seen: 0,
            buffer: Vec::new(),
            auto_advances: 0,
            soft: Vec::new(),
            answered_now: HashSet::new(),
        }
    }

    fn note(&mut self, line: impl Into<String>) {
        self.trace.push(format!("    {}", line.into()));
    }

    fn fresh_name(&mut self) -> u64 {
        self.names += 1;
        self.names
    }

    fn usable(&self, token: &str) -> bool {
        self.m
            .tokens
            .get(token)
            .is_some_and(|t| t.stale_at.is_none_or(|s| self.m.now < s))
    }

    /// The token the provider must serve at once, if the model is sure of one.
    fn valid_access(&self) -> Option<String> {
        if self.m.ended || !self.m.loaded {
            return None;
        }
        self.m
            .access
            .as_ref()
            .filter(|a| !a.uncertain && self.usable(&a.name))
            .map(|a| a.name.clone())
    }

    // -- one step ------------------------------------------------------------------------------

    fn step(&mut self, rt: &Runtime, op: &Op) -> Result<(), Violation> {
        self.trace.push(format!("> {op:?}"));
        self.answered_now.clear();
        match op {
            Op::DropRuntime { before_first_poll } => self.drop_runtime(*before_first_poll)?,
            Op::WithoutRuntime => self.without_runtime()?,
            _ => rt.block_on(self.run_op(op))?,
        }
        self.store.release_stalled();
        rt.block_on(self.settle())
    }

    async fn run_op(&mut self, op: &Op) -> Result<(), Violation> {
        match op {
            Op::Authorize => self.authorize()?,
            Op::AccessToken => {
                let p = self.provider.clone();
                self.spawn(ReqKind::AccessToken, async move {
                    Outcome::of_token(p.access_token().await)
                });
            }
            Op::VerifySession => {
                let p = self.provider.clone();
                self.spawn(ReqKind::Verify, async move {
                    p.verify_session()
                        .await
                        .map_or_else(Outcome::Failed, |()| Outcome::Verified)
                });
            }
            Op::Release(answer) => self.release(*answer)?,
            Op::Unauthorized(pick) => self.unauthorized(*pick)?,
            Op::Accepted(pick) => {
                if let Some(c) = self.pick(*pick) {
                    self.provider.on_accepted(&c);
                    self.m.accepted.insert(c.generation().get());
                    if self.valid_access() == Some(token_of(&c)) {
                        // The current token was accepted: the cooldown starts over.
                        self.m.forced_streak = 0;
                    }
                    self.note(format!("accepted {}", token_of(&c)));
                }
            }
            Op::Logout | Op::Clear | Op::SetTokens { .. } => return self.session_op(op).await,
            Op::Advance(s) => {
                self.clock.inner.advance(secs(*s));
                self.m.now += secs(*s);
                // Backoff is at most 1 s (`.backoff(1 s, 1 s)`).
                self.m.backoff = None;
            }
            Op::ExternalWrite => {
                let k = self.fresh_name();
                let (at, rt) = (format!("at-ext{k}"), format!("rt-ext{k}"));
                let stale = Some(self.m.now + secs(LIFETIME - HARD));
                self.m.mint(&at, stale, false, true);
                self.m.mint(&rt, None, false, true);
                let now = self.clock.unix_now();
                self.store.external_write(StoredTokens {
                    access_token: Some(AccessToken::new(at.as_str())),
                    refresh_token: Some(RefreshToken::new(rt.as_str())),
                    expires_at: Some(now + secs(LIFETIME)),
                    scope: None,
                    issued_at: Some(now),
                    dpop_jkt: None,
                });
                self.m.ext.push((at.clone(), rt.clone()));
                self.m.expect_store(StoreExpect::Any);
                self.note(format!("another process wrote {at} / {rt}"));
            }
            Op::StoreFault(f) => self.store.arm(*f),
            Op::DropRuntime { .. } | Op::WithoutRuntime => unreachable!("run outside the runtime"),
        }
        // Let the operation's tasks run before a stalled store call is let through.
        yield_many(32).await;
        Ok(())
    }

    fn spawn(
        &mut self,
        kind: ReqKind,
        fut: impl Future<Output = Outcome> + Send + 'static,
    ) -> usize {
        let seq = self.seq.clone();
        let handle = tokio::spawn(async move {
            let outcome = fut.await;
            (outcome, seq.next())
        });
        let id = self.next_req;
        self.next_req += 1;
        self.note(format!("request #{id} ({}) waits", kind.label()));
        self.reqs.push(Req {
            id,
            kind,
            ops: self.m.session_ops,
            handle,
        });
        id
    }

    fn new_req_id(&mut self) -> usize {
        self.next_req += 1;
        self.next_req - 1
    }

    fn pick(&self, pick: usize) -> Option<Credential> {
        let n = self.creds.len();
        (n > 0).then(|| self.creds[n - 1 - pick % n].clone())
    }

    fn authorize(&mut self) -> Result<(), Violation> {
        let must_be_ready = self.valid_access();
        let mut fut = authorize_with(&self.provider, false);
        match fut.take_ready() {
            Some(r) => {
                let seq = self.seq.next();
                let id = self.new_req_id();
                let ops = self.m.session_ops;
                self.on_done(seq, id, ReqKind::Authorize, ops, Outcome::of_cred(r), true)
            }
            None => {
                if let Some(at) = must_be_ready {
                    return Err(violation(
                        Inv::ErrorClasses,
                        format!(
                            "authorize waited although {at} is valid (a read never waits while a \
                             valid token exists)"
                        ),
                    ));
                }
                self.spawn(
                    ReqKind::Authorize,
                    async move { Outcome::of_cred(fut.await) },
                );
                Ok(())
            }
        }
    }

    fn unauthorized(&mut self, pick: usize) -> Result<(), Violation> {
        let Some(failed) = self.pick(pick) else {
            self.note("no credential handed out yet");
            return Ok(());
        };
        let failed_token = token_of(&failed);
        let generation = failed.generation().get();
        let current = self.valid_access();
        let retry_current = current.clone().filter(|c| *c != failed_token);
        // a token the server accepted and now rejects is refreshed, once per generation.
        // One never accepted is refreshed unless a cooldown runs: it starts after a 401-forced
        // refresh, is at most 30 s, and resets when a token is accepted.
        let cooling = self.m.forced_streak > 0
            && self
                .m
                .cooldown_until
                .is_some_and(|until| self.m.now <= until);
        let must_refresh = current.as_deref() == Some(failed_token.as_str())
            && (self.m.accepted.contains(&generation) || !cooling)
            && self.m.backoff.is_none()
            && self.m.rt.is_some()
            && !self.m.refreshed_for.contains(&generation);
        let check = Box::new(UnauthCheck {
            failed: failed.clone(),
            failed_token: failed_token.clone(),
            retry_current,
            must_refresh,
            accepted: self.m.accepted.contains(&generation),
            access_at_call: self.m.access.as_ref().map(|a| a.name.clone()),
        });
        let mut fut = self.provider.on_unauthorized(
            &failed,
            StatusCode::UNAUTHORIZED,
            &unauthorized_headers(),
        );
        match fut.take_ready() {
            Some(r) => {
                let seq = self.seq.next();
                let id = self.new_req_id();
                let ops = self.m.session_ops;
                let outcome = match r {
                    Ok(Unauthorized::Retry(c)) => Outcome::Retry(c),
                    Ok(_) => Outcome::GiveUp,
                    Err(e) => Outcome::Failed(e),
                };
                self.on_done(seq, id, ReqKind::Unauthorized(check), ops, outcome, true)
            }
            None => {
                if self
                    .m
                    .access
                    .as_ref()
                    .is_some_and(|a| a.name == failed_token)
                {
                    // The provider may have dropped the rejected token; it refreshes for it.
                    if let Some(a) = self.m.access.as_mut() {
                        a.uncertain = true;
                    }
                    self.m.refreshed_for.insert(generation);
                    if self.m.accepted.contains(&generation) {
                        self.m.forced_streak = 0;
                        self.m.cooldown_until = None;
                    } else {
                        let delay = secs(1u64 << self.m.forced_streak.min(5)).min(secs(30));
                        self.m.cooldown_until = Some(self.m.now + delay);
                        self.m.forced_streak += 1;
                    }
                }
                self.spawn(ReqKind::Unauthorized(check), async move {
                    match fut.await {
                        Ok(Unauthorized::Retry(c)) => Outcome::Retry(c),
                        Ok(_) => Outcome::GiveUp,
                        Err(e) => Outcome::Failed(e),
                    }
                });
                Ok(())
            }
        }
    }

    fn release(&mut self, answer: Answer) -> Result<(), Violation> {
        let Some(id) = self.gate.oldest_pending() else {
            self.note("no exchange waits for an answer");
            return Ok(());
        };
        let Some(info) = self.m.exchanges.get(&id).cloned() else {
            return Err(violation(
                Inv::NoPanicNoHang,
                format!("harness: exchange #{id} was never replayed"),
            ));
        };
        let k = self.fresh_name();
        let (at, rt) = (format!("at{k}"), format!("rt{k}"));
        let current = info.epoch == self.m.epoch && !info.side && !self.m.ended;
        let seq = self.seq.next();
        let superseded = format!(
            "the session operation that superseded exchange #{id} returned (its answer belongs to \
             the old session)"
        );
        let stale_at = Some(info.sent_at + secs(LIFETIME - HARD));
        match answer {
            Answer::Rotate | Answer::Keep => {
                self.m.mint(&at, stale_at, false, false);
                self.answered_now.insert(at.clone());
                if answer == Answer::Rotate {
                    self.m.mint(&rt, None, false, false);
                }
                if current {
                    self.m.access = Some(Access {
                        name: at.clone(),
                        uncertain: false,
                    });
                    if answer == Answer::Rotate {
                        self.m.rt = Some(rt.clone());
                        self.m.rt_why = format!("rotated in the answer to exchange #{id}");
                        self.m.ext.clear();
                    }
                    let kept = self.m.rt.clone().unwrap_or_default();
                    self.m.expect_store(StoreExpect::Holds {
                        rt: kept,
                        why: format!("the answer to exchange #{id} was stored"),
                    });
                    self.m.session = SessionState::Authenticated(SessionReason::Refreshed);
                    self.m.backoff = None;
                    self.m.runtime_dropped = false;
                } else {
                    self.m.kill(&at, seq, &superseded, Inv::SessionOpsWin);
                    self.m.kill(&rt, seq, &superseded, Inv::SessionOpsWin);
                }
            }
            Answer::InvalidGrant => {
                if current {
                    let rejected = info.sent_rt.clone().unwrap_or_default();
                    if self.m.ext.is_empty() {
                        self.end_by_invalid_grant(id, seq, rejected);
                    } else {
                        self.m.grant_race = Some(GrantRace { id, seq, rejected });
                    }
                }
            }
            Answer::Unavailable | Answer::Reset => {
                if current {
                    self.m.backoff = Some(TRANSIENT);
                }
            }
            Answer::Garbled(g) => {
                self.m.mint(&at, stale_at, true, false);
                self.m.mint(&rt, None, false, false);
                if current {
                    self.m.rt = Some(rt.clone());
                    self.m.rt_why =
                        format!("rotated in the unusable answer ({g:?}) to exchange #{id}");
                    self.m.ext.clear();
                    self.m.expect_store(StoreExpect::Holds {
                        rt: rt.clone(),
                        why: format!(
                            "the rotated refresh token of the unusable answer ({g:?}) to exchange \
                             #{id} must be kept"
                        ),
                    });
                    self.m.backoff = Some(CONFIG);
                } else {
                    self.m.kill(&rt, seq, &superseded, Inv::SessionOpsWin);
                }
            }
            Answer::Timeout => {}
        }
        let issued = match answer {
            Answer::Rotate | Answer::Garbled(_) => format!(" -> {at} / {rt}"),
            Answer::Keep => format!(" -> {at}"),
            _ => String::new(),
        };
        self.note(format!(
            "exchange #{id} (sent {:?}, {}) answered {answer:?}{issued}",
            info.sent_rt,
            if current {
                "current session"
            } else {
                "superseded"
            }
        ));
        if !self
            .gate
            .answer(id, reply_for(answer, &at, &rt), answer == Answer::Timeout)
        {
            return Err(violation(
                Inv::NoPanicNoHang,
                format!("harness: exchange #{id} could not be answered"),
            ));
        }
        Ok(())
    }

    fn end_for_want_of_a_refresh_token(&mut self, seq: u64) {
        self.m.end(
            seq,
            SessionReason::Invalid("no_refresh_token".into()),
            "the session ended for want of a refresh token (SessionEnded(NoRefreshToken))",
            false,
        );
        self.m.expect_store(StoreExpect::Any);
    }

    fn end_by_invalid_grant(&mut self, id: usize, seq: u64, rejected: String) {
        let why = format!("invalid_grant for exchange #{id}");
        self.m.end(
            seq,
            SessionReason::Invalid("invalid_grant".into()),
            &why,
            false,
        );
        self.m
            .expect_store(StoreExpect::NotHolding { rt: rejected, why });
    }

    /// Once the provider has processed an `invalid_grant` that raced another process's write,
    /// follows its choice: end the session, or adopt the other process's newer tokens.
    fn resolve_grant_race(&mut self) -> Result<(), Violation> {
        let Some(race) = self.m.grant_race.clone() else {
            return Ok(());
        };
        if !self.gate.ended(race.id) || self.store.stalled() > 0 {
            // The provider has not processed the answer yet.
            return Ok(());
        }
        self.m.grant_race = None;
        let state = self.provider.session_state();
        if matches!(state, SessionState::NoSession(_)) {
            self.note("the provider ended the session");
            self.end_by_invalid_grant(race.id, race.seq, race.rejected);
            return Ok(());
        }
        if !state.is_authenticated() {
            return Err(violation(
                Inv::SessionState,
                format!("after invalid_grant, session_state() is {state:?}"),
            ));
        }
        let Some((at, rt)) = self.m.ext.last().cloned() else {
            return Err(violation(
                Inv::SessionState,
                format!(
                    "harness: no write of another process to adopt, yet the state is {state:?}"
                ),
            ));
        };
        self.note(format!(
            "the provider adopted {at} / {rt}, which another process wrote"
        ));
        let why = format!("invalid_grant for exchange #{}", race.id);
        self.m
            .kill(&race.rejected, race.seq, &why, Inv::ErrorClasses);
        self.m.rt = Some(rt);
        self.m.rt_why = format!("adopted from another process after {why}");
        self.m.access = self.usable(&at).then_some(Access {
            name: at,
            uncertain: true,
        });
        self.m.session = state;
        self.m.expect_store(StoreExpect::NotHolding {
            rt: race.rejected,
            why,
        });
        Ok(())
    }

    async fn session_op(&mut self, op: &Op) -> Result<(), Violation> {
        let p = self.provider.clone();
        let seq = self.seq.clone();
        let failures_before = self.store.failures();
        let mut new_tokens: Option<(Option<String>, Option<String>, bool)> = None;
        let label = match op {
            Op::Logout => "logout()".to_owned(),
            Op::Clear => "clear()".to_owned(),
            _ => "set_tokens() for a new user".to_owned(),
        };
        let handle = match op {
            Op::Logout => {
                self.m.in_progress = Some(InProgress::Ending);
                tokio::spawn(async move { (p.logout().await, seq.next()) })
            }
            Op::Clear => {
                self.m.in_progress = Some(InProgress::Ending);
                tokio::spawn(async move { (p.clear().await, seq.next()) })
            }
            Op::SetTokens {
                access,
                refresh,
                lifetime,
            } => {
                let k = self.fresh_name();
                let at = access.then(|| format!("at-user{k}"));
                let rt = refresh.then(|| format!("rt-user{k}"));
                // Minted for the next epoch now: the provider may hand them out before
                // `set_tokens` returns.
                self.m.epoch += 1;
                let stale = lifetime.then(|| self.m.now + secs(LIFETIME - HARD));
                if let Some(at) = &at {
                    self.m.mint(at, stale, false, false);
                }
                if let Some(rt) = &rt {
                    self.m.mint(rt, None, false, false);
                }
                self.m.epoch -= 1;
                self.m.in_progress = Some(InProgress::NewSession { rt: rt.clone() });
                let tokens = Tokens {
                    access_token: at.as_deref().map(AccessToken::new),
                    refresh_token: rt.as_deref().map(RefreshToken::new),
                    expires_in: lifetime.then(|| secs(LIFETIME)),
                    lifetime: None,
                    dpop_bound: false,
                };
                self.note(format!("set_tokens({at:?}, {rt:?}, lifetime: {lifetime})"));
                new_tokens = Some((at, rt, *lifetime));
                tokio::spawn(async move { (p.set_tokens(tokens).await, seq.next()) })
            }
            _ => unreachable!(),
        };
        yield_many(32).await;
        self.store.release_stalled();
        let started = Instant::now();
        while !handle.is_finished() {
            yield_many(8).await;
            if handle.is_finished() {
                break;
            }
            if !self.let_short_sleep_pass() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if started.elapsed() > Duration::from_secs(2) {
                return Err(violation(
                    Inv::NoPanicNoHang,
                    format!(
                        "{label} did not return within 2 s (exchanges waiting: {:?}, provider \
                         sleeping on the clock for {:?}); a session operation must not wait for \
                         an in-flight refresh",
                        self.gate.waiting(),
                        self.clock.next_sleep()
                    ),
                ));
            }
        }
        let (result, done) = match handle.await {
            Err(e) => return Err(violation(Inv::NoPanicNoHang, format!("{label}: {e}"))),
            Ok(x) => x,
        };
        // What happened before the operation returned belongs to the old session, or already
        // to the new state.
        self.process(Some(done)).await?;
        self.m.in_progress = None;
        self.m.session_ops += 1;
        self.note(format!(
            "{label} returned {:?}",
            result.as_ref().map_err(ToString::to_string)
        ));
        let store_failed = self.store.failures() > failures_before;
        if let Err(e) = &result
            && !store_failed
        {
            return Err(violation(
                Inv::ErrorClasses,
                format!("{label} failed although the store did not: {e}"),
            ));
        }
        match new_tokens {
            None => {
                let reason = if *op == Op::Logout {
                    SessionReason::Logout
                } else {
                    SessionReason::Cleared
                };
                let why = format!("{label} returned");
                self.m.end(done, reason, &why, true);
                self.m.expect_store(StoreExpect::Empty { why });
            }
            Some((at, rt, _)) => {
                self.m.kill_all(done, &format!("{label} returned"), true);
                self.m.epoch += 1;
                self.m.ended = false;
                self.m.session = SessionState::Authenticated(SessionReason::Authenticated);
                self.m.access = at.map(|name| Access {
                    name,
                    uncertain: false,
                });
                self.m.rt.clone_from(&rt);
                self.m.rt_why = format!("set by {label}");
                self.m.backoff = None;
                self.m.loaded = true;
                self.m.ext.clear();
                self.m.expect_store(match rt {
                    Some(rt) => StoreExpect::Holds {
                        rt,
                        why: format!("{label} stored it"),
                    },
                    None => StoreExpect::Any,
                });
            }
        }
        if result.is_err() {
            self.m.store_relaxed = true;
            self.m.store_expect_relaxed = true;
        }
        Ok(())
    }

    /// Starts a refresh on a second runtime and drops that runtime, with the refresh task either
    /// never polled or waiting for the token endpoint.
    fn drop_runtime(&mut self, before_first_poll: bool) -> Result<(), Violation> {
        let first_new = self.gate.len();
        let side = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let provider = self.provider.clone();
        let gate = self.gate.clone();
        let seq = self.seq.clone();
        let immediate = side.block_on(async move {
            let mut fut = authorize_with(&provider, true);
            if let Some(r) = fut.take_ready() {
                return Some((r, seq.next()));
            }
            if !before_first_poll {
                for _ in 0..256 {
                    if gate.len() > first_new {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            None
        });
        drop(side);
        for id in first_new..self.gate.len() {
            self.m.side.insert(id);
        }
        match immediate {
            Some((r, seq)) => {
                let id = self.new_req_id();
                let ops = self.m.session_ops;
                self.on_done(
                    seq,
                    id,
                    ReqKind::SideRuntime,
                    ops,
                    Outcome::of_cred(r),
                    true,
                )
            }
            None => {
                self.m.runtime_dropped = true;
                self.note(format!(
                    "runtime dropped with its refresh ({} exchange(s) started on it)",
                    self.gate.len() - first_new
                ));
                Ok(())
            }
        }
    }

    /// `authorize` and `access_token` with no runtime on this thread.
    fn without_runtime(&mut self) -> Result<(), Violation> {
        assert!(tokio::runtime::Handle::try_current().is_err());
        let valid = self.valid_access();
        let provider = self.provider.clone();
        let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut fut = authorize_with(&provider, false);
            let first = fut.take_ready().map(Outcome::of_cred);
            let mut second = Box::pin(provider.access_token());
            let waker = Waker::noop();
            let polled = match second.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Ready(r) => Some(Outcome::of_token(r)),
                Poll::Pending => None,
            };
            [first, polled]
        }));
        let outcomes = attempt.map_err(|p| {
            violation(
                Inv::NoPanicNoHang,
                format!(
                    "the provider panicked without a runtime: {}",
                    panic_message(&*p)
                ),
            )
        })?;
        for outcome in outcomes {
            match outcome {
                None => self.note("without a runtime: joined a refresh in flight"),
                Some(Outcome::Failed(Error::NoRuntime)) => {
                    if let Some(at) = &valid {
                        return Err(violation(
                            Inv::ErrorClasses,
                            format!("without a runtime, NoRuntime although {at} is valid"),
                        ));
                    }
                    self.note("without a runtime: NoRuntime");
                }
                Some(o) => {
                    let seq = self.seq.next();
                    let id = self.new_req_id();
                    let ops = self.m.session_ops;
                    self.on_done(seq, id, ReqKind::NoRuntime, ops, o, true)?;
                }
            }
        }
        Ok(())
    }

    // -- settling and replaying ----------------------------------------------------------------

    /// Lets the provider run until nothing moves, replaying what happened, then checks the
    /// invariants that hold between steps.
    async fn settle(&mut self) -> Result<(), Violation> {
        let started = Instant::now();
        let mut last = None;
        let mut stable = 0;
        loop {
            yield_many(24).await;
            self.process(None).await?;
            let fingerprint = (
                self.gate.len(),
                self.gate.in_flight(),
                self.gate.waiting().len(),
                self.store.log_len(),
                self.reqs.len(),
                self.store.stalled(),
                format!("{:?}", self.provider.session_state()),
            );
            if let Some(t) = self.gate.hanging_for()
                && t > Duration::from_secs(2)
            {
                return Err(violation(
                    Inv::NoPanicNoHang,
                    format!(
                        "an exchange that never answers was still running after {t:?}; the \
                         provider's timeout is {EXCHANGE_TIMEOUT:?}"
                    ),
                ));
            }
            // A failed store write may be retried after a sleep: on the injected clock (seen
            // in `next_sleep`, let pass below) or on the real one (wait a little).
            let busy = self.gate.hanging_for().is_some()
                || (self.store.retry_expected(Duration::from_millis(60))
                    && self.clock.next_sleep().is_none());
            if !busy && last.as_ref() == Some(&fingerprint) {
                stable += 1;
                if stable >= 2 {
                    if self.let_short_sleep_pass() {
                        stable = 0;
                        continue;
                    }
                    break;
                }
            } else {
                stable = 0;
            }
            last = Some(fingerprint);
            if busy {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if started.elapsed() > WAIT {
                return Err(violation(
                    Inv::NoPanicNoHang,
                    format!("the provider did not settle within {WAIT:?}"),
                ));
            }
        }
        self.check_settled()
    }

    /// Moves the clock past a short sleep of the provider (a store-write retry), if one is
    /// pending. Model time moves with it.
    fn let_short_sleep_pass(&mut self) -> bool {
        match self.clock.next_sleep() {
            Some(d) if d <= SHORT_SLEEP && self.auto_advances < 256 => {
                self.auto_advances += 1;
                self.clock.inner.advance(d);
                self.m.now += d;
                self.note(format!("clock +{d:?}: a sleep of the provider ends"));
                true
            }
            _ => false,
        }
    }

    async fn collect(&mut self) -> Result<(), Violation> {
        for (id, (sent_seq, rt, abandoned)) in self.gate.snapshot().into_iter().enumerate() {
            if id == self.gate_seen.len() {
                self.gate_seen.push((false, false));
            }
            if !self.gate_seen[id].0 {
                self.gate_seen[id].0 = true;
                self.buffer.push(Event::Sent {
                    seq: sent_seq,
                    id,
                    rt,
                });
            }
            if let Some(seq) = abandoned
                && !self.gate_seen[id].1
            {
                self.gate_seen[id].1 = true;
                self.buffer.push(Event::Abandoned { seq, id });
            }
        }
        let events = self.store.log_from(self.store_seen);
        self.store_seen += events.len();
        self.buffer.extend(events.into_iter().map(Event::Store));
        let mut i = 0;
        while i < self.reqs.len() {
            if self.reqs[i].handle.is_finished() {
                let req = self.reqs.remove(i);
                match req.handle.await {
                    Ok((outcome, seq)) => self.buffer.push(Event::Done {
                        seq,
                        req: req.id,
                        kind: req.kind,
                        ops: req.ops,
                        outcome,
                    }),
                    Err(e) => {
                        return Err(violation(
                            Inv::NoPanicNoHang,
                            format!("request #{} ({}): {e}", req.id, req.kind.label()),
                        ));
                    }
                }
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Replays the events that happened before `bound` (all when `None`) in order.
    async fn process(&mut self, bound: Option<u64>) -> Result<(), Violation> {
        self.collect().await?;
        if let Some(overlap) = self.gate.overlap() {
            return Err(violation(Inv::OneExchange, overlap));
        }
        self.buffer.sort_by_key(Event::seq);
        let split = bound.map_or(self.buffer.len(), |b| {
            self.buffer.partition_point(|e| e.seq() < b)
        });
        let ready: Vec<Event> = self.buffer.drain(..split).collect();
        self.resolve_grant_race()?;
        for event in ready {
            self.apply(event)?;
        }
        Ok(())
    }

    fn apply(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Sent { seq, id, rt } => self.on_sent(seq, id, rt),
            Event::Abandoned { id, .. } => {
                let info = self.m.exchanges.get(&id).cloned();
                match info {
                    Some(info) if !info.side && info.epoch == self.m.epoch && !self.m.ended => {
                        self.note(format!("exchange #{id} timed out (transient failure)"));
                        self.m.backoff = Some(TRANSIENT);
                    }
                    _ => self.note(format!("exchange #{id} abandoned")),
                }
                Ok(())
            }
            Event::Store(ev) => self.on_store(&ev),
            Event::Done {
                seq,
                req,
                kind,
                ops,
                outcome,
            } => self.on_done(seq, req, kind, ops, outcome, false),
        }
    }

    fn on_sent(&mut self, seq: u64, id: usize, rt: Option<String>) -> Result<(), Violation> {
        let side = self.m.side.contains(&id);
        self.note(format!(
            "exchange #{id} sends {rt:?}{}",
            if side { " (on the side runtime)" } else { "" }
        ));
        if let Some(r) = &rt
            && let Some(Tok {
                dead: Some((d, why, inv)),
                ..
            }) = self.m.tokens.get(r)
            && *d < seq
        {
            return Err(violation(
                *inv,
                format!("exchange #{id} sent refresh token {r} to the token endpoint after {why}"),
            ));
        }
        let new_session = rt.is_some()
            && matches!(&self.m.in_progress, Some(InProgress::NewSession { rt: new }) if *new == rt);
        let mut epoch = self.m.epoch;
        if new_session {
            // The new session's refresh, started before `set_tokens` returned.
            epoch += 1;
        } else if self.m.ended {
            return Err(violation(
                Inv::ErrorClasses,
                format!(
                    "exchange #{id} called the token endpoint although the session ended ({:?}); \
                     requests must fail fast without network",
                    self.m.session
                ),
            ));
        } else if rt.is_none() {
            return Err(violation(
                Inv::RotationKept,
                format!(
                    "exchange #{id} sent no refresh token (expected {:?})",
                    self.m.rt
                ),
            ));
        } else if rt != self.m.rt {
            if rt
                .as_ref()
                .is_some_and(|r| self.m.ext.iter().any(|(_, x)| x == r))
            {
                self.m.rt.clone_from(&rt);
                self.m.rt_why = "adopted from another process's write".into();
            } else {
                return Err(violation(
                    Inv::RotationKept,
                    format!(
                        "exchange #{id} sent {rt:?}, but the current refresh token is {:?} ({})",
                        self.m.rt, self.m.rt_why
                    ),
                ));
            }
        }
        self.m.exchanges.insert(
            id,
            ExInfo {
                epoch,
                side,
                sent_at: self.m.now,
                sent_rt: rt,
            },
        );
        Ok(())
    }

    fn on_store(&mut self, ev: &StoreEvent) -> Result<(), Violation> {
        if ev.external {
            return Ok(());
        }
        let names = |t: &StoredTokens| {
            (
                t.access_token
                    .as_ref()
                    .map(|a| a.expose_secret().to_owned()),
                t.refresh_token
                    .as_ref()
                    .map(|r| r.expose_secret().to_owned()),
            )
        };
        match (ev.call, ev.ok) {
            (Call::Load, true) => {
                let found = ev.tokens.as_ref().map(names);
                self.note(format!("store load -> {found:?}"));
                if !self.m.loaded {
                    self.m.loaded = true;
                    match found {
                        Some((at, Some(rt))) => {
                            self.m.rt = Some(rt);
                            self.m.rt_why = "found in the store".into();
                            self.m.session = SessionState::Authenticated(SessionReason::FoundToken);
                            if let Some(at) = at
                                && self.usable(&at)
                            {
                                self.m.access = Some(Access {
                                    name: at,
                                    uncertain: true,
                                });
                            }
                        }
                        _ => {
                            self.m.ended = true;
                            self.m.session = SessionState::NoSession(SessionReason::NoToken);
                        }
                    }
                }
            }
            (Call::Load, false) => {
                self.note("store load failed");
                if !self.m.loaded {
                    self.m.backoff = Some(TRANSIENT);
                }
            }
            (Call::Save, true) => {
                let (at, rt) = ev.tokens.as_ref().map(names).unwrap_or_default();
                self.note(format!("store save {at:?} / {rt:?}"));
                for t in [at, rt].into_iter().flatten() {
                    let found = match self.m.tokens.get(&t) {
                        Some(Tok {
                            dead: Some((d, why, inv)),
                            ..
                        }) if *d < ev.seq => Some(violation(
                            *inv,
                            format!("the store was written with {t} after {why}"),
                        )),
                        Some(tok) if tok.never_serve => Some(violation(
                            Inv::RotationKept,
                            format!(
                                "the store was written with {t}, the access token of an unusable \
                                 answer"
                            ),
                        )),
                        _ => None,
                    };
                    if let Some(v) = found {
                        self.soft(v);
                    }
                }
                self.m.store_relaxed = false;
                self.m.store_expect_relaxed = false;
            }
            (Call::Clear | Call::ClearIf, true) => {
                self.note(format!(
                    "store {:?} ({})",
                    ev.call,
                    if ev.cleared { "cleared" } else { "kept" }
                ));
                if ev.call == Call::Clear || ev.cleared {
                    self.m.store_relaxed = false;
                    self.m.store_expect_relaxed = false;
                }
            }
            (call, false) => {
                self.note(format!("store {call:?} failed"));
                self.m.store_relaxed = true;
                self.m.store_expect_relaxed = true;
            }
        }
        Ok(())
    }

    fn on_done(
        &mut self,
        seq: u64,
        req: usize,
        kind: ReqKind,
        ops: u32,
        outcome: Outcome,
        immediate: bool,
    ) -> Result<(), Violation> {
        let who = format!("request #{req} ({})", kind.label());
        self.note(format!(
            "{who} {}-> {}",
            if immediate { "at once " } else { "" },
            outcome.describe()
        ));
        let hint = if ops < self.m.session_ops {
            " — it was waiting when a session operation superseded its refresh; its waiters \
             must join the new state"
        } else {
            ""
        };
        match outcome {
            Outcome::Cred(c) => {
                self.check_served(&token_of(&c), seq, &who, hint, immediate)?;
                if matches!(kind, ReqKind::Authorize) {
                    self.creds.push(c);
                }
            }
            Outcome::Token(t) => {
                self.check_served(t.expose_secret(), seq, &who, hint, immediate)?;
            }
            Outcome::Verified => {
                if self.m.ended
                    && !matches!(self.m.in_progress, Some(InProgress::NewSession { .. }))
                {
                    return Err(violation(
                        Inv::ErrorClasses,
                        format!("{who} succeeded although the session ended{hint}"),
                    ));
                }
            }
            Outcome::Retry(c) => {
                let ReqKind::Unauthorized(check) = &kind else {
                    unreachable!()
                };
                let t = token_of(&c);
                self.check_served(&t, seq, &who, hint, immediate)?;
                if c.generation() == check.failed.generation() {
                    return Err(violation(
                        Inv::Unauthorized,
                        format!("{who} retried with the credential that just failed"),
                    ));
                }
                if immediate
                    && let Some(cur) = &check.retry_current
                    && t != *cur
                {
                    return Err(violation(
                        Inv::Unauthorized,
                        format!("{who} retried with {t}, not with the current token {cur}"),
                    ));
                }
                self.creds.push(c);
            }
            Outcome::GiveUp => {
                let ReqKind::Unauthorized(check) = &kind else {
                    unreachable!()
                };
                if !self.m.ended {
                    if let Some(cur) = &check.retry_current {
                        return Err(violation(
                            Inv::Unauthorized,
                            format!(
                                "{who}: the failed token is not the current one, so the request \
                                 must be retried with {cur}; the provider gave up"
                            ),
                        ));
                    }
                    if check.must_refresh && immediate {
                        return Err(violation(
                            Inv::Unauthorized,
                            format!(
                                "{who}: {} is the current token and {}; it must be refreshed, but \
                                 the provider gave up without a refresh",
                                check.failed_token,
                                if check.accepted {
                                    "the server accepted it before (refresh once per generation)"
                                } else {
                                    "no cooldown runs (none started, it ran out, or the current \
                                     token was accepted since)"
                                }
                            ),
                        ));
                    }
                    if check.must_refresh
                        && let Some(now) = self.valid_access()
                        && Some(&now) != check.access_at_call.as_ref()
                    {
                        return Err(violation(
                            Inv::Unauthorized,
                            format!(
                                "{who}: the refresh produced {now}, but the provider gave up \
                                 instead of retrying with it"
                            ),
                        ));
                    }
                }
            }
            Outcome::Failed(e) => self.check_error(&e, seq, &who, hint)?,
        }
        Ok(())
    }

    fn check_served(
        &mut self,
        token: &str,
        seq: u64,
        who: &str,
        hint: &str,
        immediate: bool,
    ) -> Result<(), Violation> {
        let Some(tok) = self.m.tokens.get(token) else {
            return Err(violation(
                Inv::SessionOpsWin,
                format!("{who} got {token:?}, a token nobody issued"),
            ));
        };
        if tok.never_serve {
            return Err(violation(
                Inv::RotationKept,
                format!("{who} got {token}, the access token of an unusable answer"),
            ));
        }
        if let Some((d, why, inv)) = &tok.dead
            && *d < seq
        {
            return Err(violation(
                *inv,
                format!("{who} got {token} after {why}{hint}"),
            ));
        }
        // A token of the session `set_tokens` is installing, handed out before it returned.
        let new_session = matches!(self.m.in_progress, Some(InProgress::NewSession { .. }))
            && tok.epoch == self.m.epoch + 1;
        if self.m.ended && !new_session {
            return Err(violation(
                Inv::ErrorClasses,
                format!(
                    "{who} got {token} although the session ended ({:?}){hint}",
                    self.m.session
                ),
            ));
        }
        if tok.epoch != self.m.epoch && !new_session {
            return Err(violation(
                Inv::SessionOpsWin,
                format!("{who} got {token}, a token of an earlier session{hint}"),
            ));
        }
        let waited_for_it = !immediate && self.answered_now.contains(token);
        if tok.stale_at.is_some_and(|s| self.m.now >= s) && !waited_for_it {
            return Err(violation(
                Inv::ErrorClasses,
                format!("{who} got {token}, which is past its hard window"),
            ));
        }
        if let Some(a) = self.m.access.as_mut()
            && a.name == token
        {
            a.uncertain = false;
        }
        Ok(())
    }

    fn check_error(&mut self, e: &Error, seq: u64, who: &str, hint: &str) -> Result<(), Violation> {
        if matches!(e, Error::RefreshAborted) {
            return Err(violation(
                Inv::RuntimeDrop,
                format!(
                    "{who} failed with RefreshAborted ({e}); no refresh it could have joined was \
                     aborted on this runtime{}",
                    if self.m.runtime_dropped {
                        " (a runtime holding a refresh was dropped earlier)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if matches!(e, Error::NoRuntime) {
            return Err(violation(
                Inv::NoPanicNoHang,
                format!("{who} failed with NoRuntime inside a runtime"),
            ));
        }
        if e.is_session_ended() {
            if self.m.ended || matches!(self.m.in_progress, Some(InProgress::Ending)) {
                return Ok(());
            }
            if self.m.rt.is_none() && self.m.loaded {
                // Nothing to refresh with: the provider ends the session.
                self.end_for_want_of_a_refresh_token(seq);
                return Ok(());
            }
            return Err(violation(
                Inv::ErrorClasses,
                format!(
                    "{who} got a session-ended error ({e}) while the session is alive (refresh \
                     token {:?}, {}){hint}",
                    self.m.rt, self.m.rt_why
                ),
            ));
        }
        if self.m.ended {
            return Err(violation(
                Inv::ErrorClasses,
                format!(
                    "{who} got \"{e}\" (transient: {}) although the session ended ({:?}); \
                     expected a session-ended error{hint}",
                    e.is_transient(),
                    self.m.session
                ),
            ));
        }
        if self.m.backoff == Some(class(e)) {
            return Ok(());
        }
        Err(violation(
            Inv::ErrorClasses,
            format!(
                "{who} got \"{e}\" (transient: {}), but no refresh of the current session failed \
                 that way (model: backoff {:?}){hint}",
                e.is_transient(),
                self.m.backoff
            ),
        ))
    }

    fn check_settled(&mut self) -> Result<(), Violation> {
        if self.store.stalled() > 0 {
            // The provider is in the middle of a store call: judge once it has answered.
            return Ok(());
        }
        let state = self.provider.session_state();
        let no_rt = SessionReason::Invalid("no_refresh_token".into());
        if self.m.rt.is_none()
            && self.m.loaded
            && !self.m.ended
            && state == SessionState::NoSession(no_rt.clone())
        {
            // A refresh nobody waited for (ahead of expiry, or on a runtime since dropped) found
            // nothing to refresh with and ended the session.
            let seq = self.seq.next();
            self.end_for_want_of_a_refresh_token(seq);
        }
        if state != self.m.session {
            self.soft(violation(
                Inv::SessionState,
                format!(
                    "session_state() is {state:?}, the model expects {:?}",
                    self.m.session
                ),
            ));
        }
        if let Some(v) = self.check_store() {
            self.soft(v);
        }
        if !self.reqs.is_empty() && self.gate.waiting().is_empty() {
            let waiting: Vec<String> = self
                .reqs
                .iter()
                .map(|r| format!("#{} ({})", r.id, r.kind.label()))
                .collect();
            let inv = if self.m.runtime_dropped {
                Inv::RuntimeDrop
            } else {
                Inv::NoPanicNoHang
            };
            return Err(violation(
                inv,
                format!(
                    "requests {waiting:?} still wait, but no exchange is in flight and no store \
                     call is pending: they hang{}",
                    self.clock
                        .next_sleep()
                        .map(|d| format!(" (the provider sleeps on the clock for {d:?})"))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// What the store holds, against the model.
    fn check_store(&self) -> Option<Violation> {
        let content = self.store.peek();
        let held: Vec<String> = content
            .iter()
            .flat_map(|c| {
                [
                    c.access_token
                        .as_ref()
                        .map(|a| a.expose_secret().to_owned()),
                    c.refresh_token
                        .as_ref()
                        .map(|r| r.expose_secret().to_owned()),
                ]
            })
            .flatten()
            .collect();
        for t in &held {
            if let Some(tok) = self.m.tokens.get(t) {
                if let Some((_, why, inv)) = &tok.dead
                    && !self.m.store_relaxed
                {
                    return Some(violation(*inv, format!("the store holds {t} after {why}")));
                }
                if tok.never_serve {
                    return Some(violation(
                        Inv::RotationKept,
                        format!("the store holds {t}, the access token of an unusable answer"),
                    ));
                }
            }
        }
        if self.m.store_expect_relaxed {
            return None;
        }
        let stored_rt = content
            .as_ref()
            .and_then(|c| c.refresh_token.as_ref())
            .map(|r| r.expose_secret().to_owned());
        match &self.m.store_expect {
            StoreExpect::Any => None,
            StoreExpect::Holds { rt, why } => (stored_rt.as_ref() != Some(rt)).then(|| {
                violation(
                    Inv::RotationKept,
                    format!("the store's refresh token is {stored_rt:?}, expected {rt} ({why})"),
                )
            }),
            StoreExpect::Empty { why } => (!held.is_empty()).then(|| {
                violation(
                    Inv::SessionOpsWin,
                    format!("the store holds {held:?} after {why}"),
                )
            }),
            StoreExpect::NotHolding { rt, why } => (stored_rt.as_ref() == Some(rt)).then(|| {
                violation(
                    Inv::ErrorClasses,
                    format!(
                        "the store still holds {rt} after {why}; a session-ending answer clears it"
                    ),
                )
            }),
        }
    }

    /// Records a violation that does not make the model lose track of the provider (a state or
    /// store mismatch), and goes on: the first one of each invariant is kept.
    fn soft(&mut self, v: Violation) {
        self.note(format!("VIOLATION (going on): {}", v.what));
        if !self.soft.iter().any(|s| s.inv == v.inv) {
            self.soft.push(v);
        }
    }

    /// Answers whatever still waits, then checks that a request on this healthy runtime gets a
    /// token (or, with no session, fails fast).
    fn finish(&mut self, rt: &Runtime) -> Result<(), Violation> {
        self.trace.push("> (drain)".into());
        for _ in 0..8 {
            if self.gate.oldest_pending().is_none() && self.store.stalled() == 0 {
                break;
            }
            self.step(rt, &Op::Release(Answer::Rotate))?;
        }
        self.step(rt, &Op::Advance(4000))?;
        self.step(rt, &Op::Authorize)?;
        for _ in 0..4 {
            if self.gate.oldest_pending().is_none() {
                break;
            }
            self.step(rt, &Op::Release(Answer::Rotate))?;
        }
        Ok(())
    }
}

fn run_case(init: Init, ops: &[Op]) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut h = Harness::new(init);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        for op in ops {
            h.step(&rt, op)?;
        }
        h.finish(&rt)
    }));
    let result = result.unwrap_or_else(|p| {
        Err(violation(
            Inv::NoPanicNoHang,
            format!("panic: {}", panic_message(&*p)),
        ))
    });
    let trace = std::mem::take(&mut h.trace);
    let mut violations = std::mem::take(&mut h.soft);
    // Let whatever still waits go so that nothing outlives the case.
    h.store.release_stalled();
    drop(h);
    drop(rt);
    let stopped = result.err().map(|v| {
        let inv = v.inv;
        violations.push(v);
        inv
    });
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            violations,
            stopped,
            trace,
        })
    }
}

fn tolerated(v: &Violation) -> bool {
    std::env::var("CLIENT_AUTH_MODEL_TOLERATE").is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .any(|frag| v.what.contains(frag))
    })
}

fn model_config() -> Config {
    let cases = std::env::var("CLIENT_AUTH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 10_000,
        ..Config::default()
    }
}

/// Runs the model and fails if a case breaks invariant `target`. A case that stops early
/// on another invariant (the model cannot follow the provider past it) is not judged further.
fn check_model(target: Inv) {
    let stopped_early = AtomicU64::new(0);
    let mut runner = TestRunner::new(model_config());
    let result = runner.run(&scenario(), |(init, ops)| {
        let Err(f) = run_case(init, &ops) else {
            return Ok(());
        };
        if let Some(v) = f.of(target) {
            return Err(TestCaseError::fail(f.report(v)));
        }
        if f.stopped.is_some() {
            stopped_early.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let cases = runner.config().cases;
    let stopped = stopped_early.load(Ordering::Relaxed);
    match result {
        Ok(()) => eprintln!(
            "invariant {}: {cases} cases held; {stopped} stopped early on another invariant",
            target.label()
        ),
        Err(TestError::Fail(why, (init, ops))) => {
            let (init, ops, why) = minimize(target, init, ops, why.to_string());
            let steps: Vec<String> = ops.iter().map(|op| format!("  {op:?}")).collect();
            panic!(
                "invariant {} violated.\nshortest failing sequence ({} ops): {init:?}, then\n{}\n{why}",
                target.label(),
                ops.len(),
                steps.join("\n")
            );
        }
        Err(TestError::Abort(why)) => panic!("model test aborted: {why}"),
    }
}

/// Proptest's shrinking can stop in a local minimum: remove single operations (and try simpler
/// starts) while the case still breaks `target`.
fn minimize(
    target: Inv,
    mut init: Init,
    mut ops: Vec<Op>,
    mut why: String,
) -> (Init, Vec<Op>, String) {
    let breaks = |init: Init, ops: &[Op]| {
        run_case(init, ops)
            .err()
            .and_then(|f| f.of(target).map(|v| f.report(v)))
    };
    let mut changed = true;
    while changed {
        changed = false;
        for simpler in [
            Init::RefreshToken,
            Init::AccessAndRefresh,
            Init::StoredRefreshToken,
        ] {
            if simpler == init {
                break;
            }
            if let Some(report) = breaks(simpler, &ops) {
                (init, why, changed) = (simpler, report, true);
                break;
            }
        }
        for i in 0..ops.len() {
            let mut fewer = ops.clone();
            fewer.remove(i);
            if let Some(report) = breaks(init, &fewer) {
                (ops, why, changed) = (fewer, report, true);
                break;
            }
        }
    }
    (init, ops, why)
}

#[test]
fn model_never_two_exchanges_in_flight() {
    check_model(Inv::OneExchange);
}

#[test]
fn model_session_operations_win_over_in_flight_refreshes() {
    check_model(Inv::SessionOpsWin);
}

#[test]
fn model_a_received_rotated_refresh_token_is_stored_and_sent_next() {
    check_model(Inv::RotationKept);
}

#[test]
fn model_session_state_matches() {
    check_model(Inv::SessionState);
}

#[test]
fn model_callers_see_the_token_or_error_class_the_model_expects() {
    check_model(Inv::ErrorClasses);
}

#[test]
fn model_no_panic_and_no_call_waits_past_its_timeout() {
    check_model(Inv::NoPanicNoHang);
}

#[test]
fn model_a_dropped_runtime_does_not_wedge_the_provider() {
    check_model(Inv::RuntimeDrop);
}

#[test]
fn model_401s_follow_the_generation_rules() {
    check_model(Inv::Unauthorized);
}

// ---------------------------------------------------------------------------------------------
// Regression tests for the defects reviewers reproduced
// ---------------------------------------------------------------------------------------------

/// A provider on the gate and the model store, built from `rt-0` (no access token).
struct Fixture {
    gate: Gate,
    store: Arc<ModelStore>,
    clock: ManualClock,
    provider: OAuthProvider,
}

impl Fixture {
    fn new() -> Self {
        let seq = Seq::default();
        let gate = Gate {
            state: Arc::default(),
            seq: seq.clone(),
        };
        let store = Arc::new(ModelStore::new(seq));
        let clock = ManualClock::new();
        let provider = builder(&gate, &store, Arc::new(clock.clone()))
            .refresh_token("rt-0")
            .build()
            .unwrap();
        Self {
            gate,
            store,
            clock,
            provider,
        }
    }

    fn request(&self) -> JoinHandle<Result<Credential, Error>> {
        let fut = authorize_with(&self.provider, false);
        tokio::spawn(fut)
    }

    /// Waits (real time) until an exchange sending `rt` waits for an answer.
    async fn exchange_sending(&self, rt: &str) -> usize {
        within(&format!("an exchange sending {rt}"), async {
            loop {
                if let Some(id) = self.gate.pending_sending(rt) {
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
    }

    fn answer(&self, id: usize, answer: Answer, at: &str, rt: &str) {
        assert!(
            self.gate.answer(id, reply_for(answer, at, rt), false),
            "exchange #{id} no longer waits for an answer"
        );
    }

    /// Answers an exchange a session operation superseded, unless the provider dropped it.
    fn answer_superseded(&self, id: usize, answer: Answer, at: &str, rt: &str) {
        let _ = self.gate.answer(id, reply_for(answer, at, rt), false);
    }

    /// Waits until no exchange runs and the store has seen no call for 50 ms.
    async fn quiet(&self) {
        within("the provider to go quiet", async {
            let mut last = (usize::MAX, usize::MAX);
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = (self.store.log_len(), self.gate.len());
                if now == last && self.gate.in_flight() == 0 {
                    return;
                }
                last = now;
            }
        })
        .await;
    }

    fn stored_rt(&self) -> Option<String> {
        self.store
            .peek()
            .and_then(|t| t.refresh_token)
            .map(|r| r.expose_secret().to_owned())
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_an_in_flight_refresh_never_leaves_the_refreshed_tokens_in_the_store() {
    let fx = Fixture::new();
    let waiter = fx.request();
    let ex = fx.exchange_sending("rt-0").await;
    within("logout", fx.provider.logout()).await.unwrap();
    fx.answer_superseded(ex, Answer::Rotate, "at-1", "rt-1");
    let got = within("the waiter", waiter).await.unwrap();
    assert!(
        got.as_ref().is_err_and(Error::is_session_ended),
        "the waiter of a refresh that logout superseded must see the session end, got {:?}",
        got.map(|c| token_of(&c))
    );
    fx.quiet().await;
    assert!(
        fx.store.peek().is_none(),
        "after logout the store must stay empty; it holds {:?} / {:?} from the superseded refresh",
        fx.store
            .peek()
            .and_then(|t| t.access_token)
            .map(|a| a.expose_secret().to_owned()),
        fx.stored_rt()
    );
    // A restart on the same store finds no session and calls nobody.
    let gate = Gate::default();
    let restarted = builder(&gate, &fx.store, Arc::new(fx.clock.clone()))
        .build()
        .unwrap();
    let err = within("the restarted provider", authorize_with(&restarted, false))
        .await
        .map(|c| token_of(&c))
        .unwrap_err();
    assert!(
        matches!(err, Error::NoSession { .. }),
        "a provider started on the logged-out store must get NoSession, got {err:?}"
    );
    assert_eq!(gate.len(), 0, "no token calls after logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_during_an_in_flight_refresh_leaves_the_new_users_refresh_token_in_the_store() {
    let fx = Fixture::new();
    let waiter = fx.request();
    let ex = fx.exchange_sending("rt-0").await;
    within(
        "set_tokens",
        fx.provider.set_tokens(Tokens {
            access_token: Some(AccessToken::new("at-user")),
            refresh_token: Some(RefreshToken::new("rt-user")),
            expires_in: Some(secs(LIFETIME)),
            lifetime: None,
            dpop_bound: false,
        }),
    )
    .await
    .unwrap();
    fx.answer_superseded(ex, Answer::Rotate, "at-old", "rt-old");
    let got = within("the waiter", waiter)
        .await
        .unwrap()
        .map(|c| token_of(&c));
    fx.quiet().await;
    assert_eq!(
        fx.stored_rt().as_deref(),
        Some("rt-user"),
        "the store must end with the new user's refresh token, not the superseded refresh's"
    );
    assert_eq!(
        got.as_deref().ok(),
        Some("at-user"),
        "the waiter joins the new session: {got:?}"
    );
    let now = authorize_with(&fx.provider, false)
        .take_ready()
        .expect("a valid token is served at once")
        .map(|c| token_of(&c));
    assert_eq!(now.as_deref().ok(), Some("at-user"));
}

/// Runs one unusable answer with a rotated refresh token; `Err` says what went wrong.
async fn rotated_refresh_token_survives(garble: Garble) -> Result<(), String> {
    let fx = Fixture::new();
    let waiter = fx.request();
    let ex = fx.exchange_sending("rt-0").await;
    fx.answer(ex, Answer::Garbled(garble), "at-bad", "rt-rotated");
    let got = within("the waiter", waiter)
        .await
        .unwrap()
        .map(|c| token_of(&c));
    let mut problems = Vec::new();
    match &got {
        Ok(t) => problems.push(format!(
            "the waiter was served {t:?} from the unusable answer"
        )),
        Err(e) if e.is_session_ended() || e.is_transient() => problems.push(format!(
            "an unusable answer is a configuration/protocol error, got {e}"
        )),
        Err(_) => {}
    }
    fx.quiet().await;
    if fx.stored_rt().as_deref() != Some("rt-rotated") {
        problems.push(format!(
            "the store holds {:?}, not the rotated refresh token",
            fx.stored_rt()
        ));
    }
    // After the backoff, the next exchange must send the rotated token.
    fx.clock.advance(secs(2));
    let next = fx.request();
    let sent = within("the next exchange", async {
        loop {
            if let Some(id) = fx.gate.oldest_pending() {
                return Some(id);
            }
            if next.is_finished() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    match sent {
        Some(id) => {
            let rt = fx.gate.sent_rt(id);
            if rt.as_deref() != Some("rt-rotated") {
                problems.push(format!("the next exchange sent {rt:?}, not rt-rotated"));
            }
            fx.answer(id, Answer::Rotate, "at-2", "rt-2");
            let _ = within("the next request", next).await;
        }
        None => problems.push(format!(
            "the next request made no exchange: {:?}",
            next.await.unwrap().map(|c| token_of(&c))
        )),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_in_an_otherwise_unusable_answer_is_stored_and_sent_next() {
    let mut failures = Vec::new();
    for garble in GARBLES {
        if let Err(why) = rotated_refresh_token_survives(garble).await {
            failures.push(format!("{garble:?}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the rotated refresh token was lost:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_with_only_a_refresh_token_during_a_refresh_gives_its_waiters_a_token_of_the_new_session()
 {
    let fx = Fixture::new();
    let waiter = fx.request();
    let old = fx.exchange_sending("rt-0").await;
    within(
        "set_tokens",
        fx.provider.set_tokens(Tokens {
            access_token: None,
            refresh_token: Some(RefreshToken::new("rt-user")),
            expires_in: None,
            lifetime: None,
            dpop_bound: false,
        }),
    )
    .await
    .unwrap();
    fx.answer_superseded(old, Answer::Rotate, "at-old", "rt-old");
    // The waiter needs a token of the new session: a refresh with the new refresh token.
    let new = within("an exchange with the new user's refresh token", async {
        loop {
            if let Some(id) = fx.gate.pending_sending("rt-user") {
                return Ok(id);
            }
            if waiter.is_finished() {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    match new {
        Ok(id) => fx.answer(id, Answer::Rotate, "at-new", "rt-new"),
        Err(()) => panic!(
            "the waiter finished without a refresh of the new session: {:?}",
            waiter.await.unwrap().map(|c| token_of(&c))
        ),
    }
    let got = within("the waiter", waiter)
        .await
        .unwrap()
        .map(|c| token_of(&c));
    assert_eq!(
        got.as_deref().ok(),
        Some("at-new"),
        "the waiter must get a token of the new session, got {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_task_dropped_before_its_first_poll_does_not_wedge_the_provider() {
    let fx = Fixture::new();
    let provider = fx.provider.clone();
    // On a thread of its own: a runtime may not be dropped inside another.
    std::thread::spawn(move || {
        let side = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The refresh is spawned on `side` and never polled: `block_on` returns at once.
        side.block_on(async { drop(authorize_with(&provider, true)) });
        drop(side);
    })
    .join()
    .unwrap();
    assert_eq!(fx.gate.len(), 0, "the dropped task never ran");
    let waiter = fx.request();
    let ex = within("a new exchange on the healthy runtime", async {
        loop {
            if let Some(id) = fx.gate.oldest_pending() {
                return Ok(id);
            }
            if waiter.is_finished() {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    match ex {
        Ok(id) => fx.answer(id, Answer::Rotate, "at-1", "rt-1"),
        Err(()) => panic!(
            "the provider is wedged: the request finished without a refresh: {:?}",
            waiter.await.unwrap().map(|c| token_of(&c))
        ),
    }
    let got = within("the waiter", waiter)
        .await
        .unwrap()
        .map(|c| token_of(&c));
    assert_eq!(got.as_deref().ok(), Some("at-1"), "{got:?}");
}

/// Runs `fut` on its own task while moving the clock, so that the provider's store-retry sleeps
/// (on the injected clock) pass.
async fn with_clock_moving<T: Send + 'static>(
    what: &str,
    clock: &ManualClock,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let task = tokio::spawn(fut);
    within(what, async {
        while !task.is_finished() {
            clock.advance(Duration::from_millis(100));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    task.await.unwrap()
}

/// Found by the model: a logout whose store clear fails leaves the old user's tokens in the
/// store; `set_tokens` for a new user cannot write either. When the server then rejects the new
/// user's refresh token, the provider takes the old user's tokens it finds in the store for
/// another process's newer ones and serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_a_failed_logout_left_in_the_store_never_come_back_after_invalid_grant() {
    let fx = Fixture::new();
    let first = fx.request();
    let ex = fx.exchange_sending("rt-0").await;
    fx.answer(ex, Answer::Rotate, "at-old-user", "rt-old-user");
    within("the first request", first).await.unwrap().unwrap();
    fx.quiet().await;
    // The store is down for the logout's clear and the three tries of set_tokens' write.
    fx.store.arm(Fault::Fail(4));
    let p = fx.provider.clone();
    let logout = with_clock_moving("logout", &fx.clock, async move { p.logout().await }).await;
    assert!(logout.is_err(), "the store failed: {logout:?}");
    let p = fx.provider.clone();
    let set = with_clock_moving("set_tokens", &fx.clock, async move {
        p.set_tokens(Tokens {
            access_token: None,
            refresh_token: Some(RefreshToken::new("rt-new-user")),
            expires_in: None,
            lifetime: None,
            dpop_bound: false,
        })
        .await
    })
    .await;
    assert!(set.is_err(), "the store failed: {set:?}");
    let waiter = fx.request();
    let ex = fx.exchange_sending("rt-new-user").await;
    fx.answer(ex, Answer::InvalidGrant, "", "");
    let got = within("the waiter", waiter)
        .await
        .unwrap()
        .map(|c| token_of(&c));
    assert!(
        got.as_ref().is_err_and(Error::is_session_ended),
        "the new user's grant was rejected: the session ends; got {got:?}"
    );
    let later = within("a later request", authorize_with(&fx.provider, false))
        .await
        .map(|c| token_of(&c));
    assert!(
        later.as_ref().is_err_and(Error::is_session_ended),
        "the logged-out user's token must never be served again; got {later:?}"
    );
}
