//! Interleavings of the OAuth token cache with session operations, stores, leases and runtimes,
//! each driven step by step through a scripted token endpoint, a store that can hold a write or
//! a lease, and (for the few races that only a log line separates) a tracing subscriber that
//! pauses the refresh task at a named event. Each test pins an interleaving that must keep
//! holding; several reproduce defects that were fixed.
//!
//! Expiry and backoff move with a `ManualClock`; real time is used only to bound a wait that
//! would otherwise hang, and for the lease (which lives in the store's real time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, AuthorizationProvider, Credential, Error, ManualClock, MemoryStore, OAuthProvider,
    OAuthProviderBuilder, RefreshLease, RefreshToken, RequestView, SessionReason, SessionState,
    StoreError, StoredTokens, SuppliedTransport, TokenStore, TokenTransport, Tokens, Unauthorized,
};
use http::{Extensions, HeaderMap, Method, StatusCode};
use tokio::sync::Notify;

const NS: &str = "user-1";
const TOKEN_URL: &str = "https://auth.example.com/token";
const REVOKE_URL: &str = "https://auth.example.com/revoke";

// ---------------------------------------------------------------------------------------------
// A scripted token endpoint (and revocation endpoint)
// ---------------------------------------------------------------------------------------------

/// One scripted answer of the token endpoint.
enum Answer {
    Json(u16, String),
    /// Answers only once the test notifies: the exchange is "on the wire" meanwhile.
    Held(Arc<Notify>, Box<Answer>),
    /// Answers after a real-time delay (lease renewal runs on real time).
    Slow(Duration, Box<Answer>),
}

fn ok(at: &str, rt: Option<&str>, expires_in: u64) -> Answer {
    let rt = rt
        .map(|r| format!(r#","refresh_token":"{r}""#))
        .unwrap_or_default();
    Answer::Json(
        200,
        format!(r#"{{"access_token":"{at}","token_type":"Bearer","expires_in":{expires_in}{rt}}}"#),
    )
}

fn held(gate: &Arc<Notify>, answer: Answer) -> Answer {
    Answer::Held(Arc::clone(gate), Box::new(answer))
}

fn invalid_grant() -> Answer {
    Answer::Json(400, r#"{"error":"invalid_grant"}"#.to_owned())
}

#[derive(Default)]
struct Endpoint {
    answers: Mutex<VecDeque<Answer>>,
    token_calls: AtomicUsize,
    /// The refresh tokens sent to the token endpoint, in order.
    sent: Mutex<Vec<String>>,
    /// The tokens sent to the revocation endpoint, in order.
    revoked: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoint")
    }
}

impl Endpoint {
    fn new(answers: impl IntoIterator<Item = Answer>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into_iter().collect()),
            ..Self::default()
        })
    }

    fn calls(&self) -> usize {
        self.token_calls.load(Ordering::SeqCst)
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }

    fn revoked(&self) -> Vec<String> {
        self.revoked.lock().unwrap().clone()
    }
}

fn respond(status: u16, body: String) -> Result<http::Response<Bytes>, Error> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap())
}

impl TokenTransport for Endpoint {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let form: Vec<(String, String)> = form_urlencoded::parse(request.body())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if request.uri().path() == "/revoke" {
            if let Some(token) = param("token") {
                self.revoked.lock().unwrap().push(token);
            }
            return Box::pin(async { respond(200, String::new()) });
        }
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        if let Some(rt) = param("refresh_token") {
            self.sent.lock().unwrap().push(rt);
        }
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script ran out of answers");
        Box::pin(async move {
            let mut answer = answer;
            loop {
                answer = match answer {
                    Answer::Json(status, body) => return respond(status, body),
                    Answer::Held(gate, next) => {
                        gate.notified().await;
                        *next
                    }
                    Answer::Slow(delay, next) => {
                        tokio::time::sleep(delay).await;
                        *next
                    }
                };
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A store that can hold a write, fail a compare-and-delete, and hand out misbehaving leases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LeaseMode {
    /// No lease (a one-process store).
    #[default]
    None,
    /// A lease whose release never answers.
    ReleaseHangs,
    /// A lease whose release and renewals fail.
    Failing,
    /// A lease that works (a store shared between processes).
    Working,
}

#[derive(Debug, Default)]
struct ProbeStore {
    inner: MemoryStore,
    /// The next `save` waits for this before it writes (a slow remote write).
    hold_next_save: Mutex<Option<Arc<Notify>>>,
    saves_started: AtomicUsize,
    lease: LeaseMode,
    fail_compare_and_delete: bool,
}

impl ProbeStore {
    fn holding(tokens: StoredTokens) -> Self {
        Self {
            inner: MemoryStore::with(NS, tokens),
            ..Self::default()
        }
    }

    fn hold_next_save(&self) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        *self.hold_next_save.lock().unwrap() = Some(Arc::clone(&gate));
        gate
    }

    fn saves_started(&self) -> usize {
        self.saves_started.load(Ordering::SeqCst)
    }

    fn access_token(&self) -> Option<String> {
        self.inner
            .get(NS)
            .and_then(|t| t.access_token)
            .map(|t| t.expose_secret().to_owned())
    }

    fn refresh_token(&self) -> Option<String> {
        self.inner
            .get(NS)
            .and_then(|t| t.refresh_token)
            .map(|t| t.expose_secret().to_owned())
    }
}

#[derive(Debug)]
struct ProbeLease(LeaseMode);

impl RefreshLease for ProbeLease {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        match self.0 {
            LeaseMode::ReleaseHangs => Box::pin(std::future::pending()),
            LeaseMode::Failing => {
                Box::pin(async { Err(StoreError::transient("lease store down")) })
            }
            LeaseMode::None | LeaseMode::Working => Box::pin(async { Ok(()) }),
        }
    }

    fn renew(&self, _ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.0 {
            LeaseMode::Failing => Box::pin(async { Err(StoreError::transient("lease lost")) }),
            _ => Box::pin(async { Ok(()) }),
        }
    }
}

impl TokenStore for ProbeStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        self.inner.load(namespace)
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.saves_started.fetch_add(1, Ordering::SeqCst);
        let hold = self.hold_next_save.lock().unwrap().take();
        Box::pin(async move {
            if let Some(gate) = hold {
                gate.notified().await;
            }
            // The memory store writes when called.
            self.inner.save(namespace, tokens).await
        })
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.clear(namespace)
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        if self.fail_compare_and_delete {
            return Box::pin(async { Err(StoreError::transient("store down")) });
        }
        self.inner.clear_if_refresh_token(namespace, refresh_token)
    }

    fn lock_refresh<'a>(
        &'a self,
        _namespace: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        let lease: Option<Box<dyn RefreshLease>> = match self.lease {
            LeaseMode::None => None,
            mode => Some(Box::new(ProbeLease(mode))),
        };
        Box::pin(async move { Ok(lease) })
    }
}

// ---------------------------------------------------------------------------------------------
// A tracing subscriber that captures everything and can pause the thread at one event
// ---------------------------------------------------------------------------------------------

/// Captures spans and events as text; optionally blocks the thread that emits the event whose
/// message is `pause_on`, once, until the test releases it.
#[derive(Default)]
struct Probe {
    log: Mutex<String>,
    next_id: AtomicU64,
    pause: Mutex<Option<Pause>>,
}

struct Pause {
    message: &'static str,
    reached: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// The test's side of a pause.
struct PauseHandle {
    reached: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Probe {
    fn pausing_on(message: &'static str) -> (Arc<Self>, PauseHandle) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let probe = Arc::new(Self::default());
        *probe.pause.lock().unwrap() = Some(Pause {
            message,
            reached: reached_tx,
            release: release_rx,
        });
        (
            probe,
            PauseHandle {
                reached: reached_rx,
                release: release_tx,
            },
        )
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

struct Fields<'a> {
    out: &'a mut String,
    message: String,
}

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.out, " {}={:?}", field.name(), value);
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[derive(Clone)]
struct ProbeSubscriber(Arc<Probe>);

impl tracing::Subscriber for ProbeSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut log = self.0.log.lock().unwrap();
        let _ = write!(log, "\nspan {}", span.metadata().name());
        span.record(&mut Fields {
            out: &mut log,
            message: String::new(),
        });
        tracing::span::Id::from_u64(self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut log = self.0.log.lock().unwrap();
        log.push_str("\nrecord");
        values.record(&mut Fields {
            out: &mut log,
            message: String::new(),
        });
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let message = {
            let mut log = self.0.log.lock().unwrap();
            let _ = write!(log, "\nevent {}", event.metadata().level());
            let mut fields = Fields {
                out: &mut log,
                message: String::new(),
            };
            event.record(&mut fields);
            fields.message
        };
        let pause = {
            let mut slot = self.0.pause.lock().unwrap();
            if slot.as_ref().is_some_and(|p| p.message == message) {
                slot.take()
            } else {
                None
            }
        };
        if let Some(pause) = pause {
            let _ = pause.reached.send(());
            let _ = pause.release.recv_timeout(Duration::from_secs(10));
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Reports this thread's events to `probe` while the guard lives.
fn probe_here(probe: &Arc<Probe>) -> tracing::dispatcher::DefaultGuard {
    tracing::dispatcher::set_default(&tracing::Dispatch::new(ProbeSubscriber(Arc::clone(probe))))
}

/// A multi-thread runtime whose worker threads (where refreshes run) report to `probe`.
fn probed_runtime(probe: &Arc<Probe>) -> tokio::runtime::Runtime {
    let dispatch = tracing::Dispatch::new(ProbeSubscriber(Arc::clone(probe)));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&dispatch)))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn builder(
    endpoint: &Arc<Endpoint>,
    clock: &ManualClock,
) -> OAuthProviderBuilder<SuppliedTransport> {
    OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("client")
        .client_secret("cs-SECRET-client")
        .transport(Arc::clone(endpoint) as Arc<dyn TokenTransport>)
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
}

fn stored_refresh(rt: &str) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(RefreshToken::new(rt)),
        ..StoredTokens::default()
    }
}

fn tokens(at: Option<&str>, rt: &str) -> Tokens {
    Tokens {
        access_token: at.map(AccessToken::new),
        refresh_token: Some(RefreshToken::new(rt)),
        expires_in: Some(Duration::from_secs(3600)),
        lifetime: None,
        dpop_bound: false,
    }
}

fn authorize(p: &impl AuthorizationProvider) -> client_auth::AuthorizeFuture {
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
    p.authorize(&view)
}

fn access(c: &Credential) -> String {
    c.header_value()
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

async fn on_401(p: &OAuthProvider, failed: &Credential) -> Result<Unauthorized, Error> {
    p.on_unauthorized(failed, StatusCode::UNAUTHORIZED, &HeaderMap::new())
        .await
}

#[track_caller]
fn retried(outcome: Result<Unauthorized, Error>) -> Credential {
    match outcome {
        Ok(Unauthorized::Retry(c)) => c,
        other => panic!("expected a retry, got {other:?}"),
    }
}

fn secret(token: Result<AccessToken, Error>) -> Result<String, Error> {
    token.map(|t| t.expose_secret().to_owned())
}

/// Waits (in real time, bounded) until `cond` holds: for a task to reach a step, never for
/// expiry.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..5_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Lets every task that is ready run until it waits (current-thread runtime).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// =============================================================================================
// Findings: these fail on the current code
// =============================================================================================

/// A CLI's `mycli logout` in a fresh process: the provider was built from the store and has
/// made no request yet, so its refresh token is still in the store only. `logout` clears the
/// store but revokes nothing: the grant stays alive at the server (and in every backup or copy
/// of the store file).
#[tokio::test]
async fn logout_revokes_the_refresh_token_of_a_session_still_only_in_the_store() {
    let store = Arc::new(ProbeStore::holding(stored_refresh("rt-stored")));
    let endpoint = Endpoint::new([]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .revocation_url(REVOKE_URL)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();

    provider.logout().await.unwrap();

    assert!(store.inner.get(NS).is_none(), "the store is cleared");
    assert_eq!(
        endpoint.revoked(),
        ["rt-stored"],
        "logout must revoke the session's refresh token at the server"
    );
}

/// Logout while the refresh's token request is on the wire: logout revokes the refresh token
/// it has in memory (rt-1), but the server has already rotated it to rt-2 for that exchange.
/// The superseded refresh then drops rt-2 without revoking it, so the grant the user logged out
/// of stays alive at the server (rt-1 is already spent; revoking it does nothing on servers that
/// rotate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_an_exchange_also_revokes_the_refresh_token_that_exchange_obtained() {
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([held(&on_the_wire, ok("at-2", Some("rt-2"), 3600))]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .revocation_url(REVOKE_URL)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the exchange is on the wire", || endpoint.calls() == 1).await;

    provider.logout().await.unwrap();
    on_the_wire.notify_one();

    let outcome = waiting.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(Error::NoSession {
                reason: SessionReason::Logout
            })
        ),
        "{outcome:?}"
    );
    assert!(
        store.inner.get(NS).is_none(),
        "nothing of the old session is stored"
    );
    // Give the refresh task time to finish whatever it does with rt-2.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !endpoint.revoked().iter().any(|t| t == "rt-2") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        endpoint.revoked().iter().any(|t| t == "rt-2"),
        "the refresh token issued to the logged-out session must be revoked; revoked: {:?}",
        endpoint.revoked()
    );
}

/// `publish` sets the session watch after it releases the state lock. When a refresh ends the
/// session outside the write gate (here: the first request on an empty store, `NoToken`) and
/// `set_tokens` (a sign-in) runs in that gap, the watch ends at `NoSession(NoToken)` while the
/// provider holds and serves the new tokens: a UI that follows the watch sends the user who
/// just signed in back to the sign-in screen. The same gap lets a successful refresh's
/// `Authenticated(Refreshed)` land after `logout` published `NoSession(Logout)` (that variant has
/// no log line to pause at, so it is not reproduced here).
#[test]
fn set_tokens_racing_a_session_end_leaves_the_session_watch_authenticated() {
    let (probe, pause) = Probe::pausing_on("the session ended");
    let rt = probed_runtime(&probe);
    let endpoint = Endpoint::new([]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .store(Arc::new(MemoryStore::new()), NS)
        .build()
        .unwrap();

    let first = rt.spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    pause
        .reached
        .recv_timeout(Duration::from_secs(5))
        .expect("the refresh reached its session-end log line");
    rt.block_on(provider.set_tokens(tokens(Some("at-new"), "rt-new")))
        .unwrap();
    pause.release.send(()).unwrap();
    let _ = rt.block_on(first).unwrap();

    assert_eq!(
        secret(rt.block_on(provider.access_token())).unwrap(),
        "at-new",
        "the provider serves the signed-in tokens"
    );
    assert_eq!(
        provider.session_state(),
        SessionState::Authenticated(SessionReason::Authenticated),
        "the session watch must agree with the provider"
    );
}

/// The outcome is published (the token is in memory, the slot is free) before the lease is
/// released, but the callers waiting for the refresh are told only after `release()` returns:
/// a slow lease store (a Redis round trip, a network stall) delays every waiting request by up to
/// the store timeout although their token is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_refresh_get_its_token_without_waiting_for_the_lease_release() {
    let store = Arc::new(ProbeStore {
        lease: LeaseMode::ReleaseHangs,
        ..ProbeStore::default()
    });
    let endpoint = Endpoint::new([ok("at-1", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .store_timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let waited = tokio::time::timeout(Duration::from_secs(2), provider.access_token()).await;

    let published = authorize(&provider)
        .take_ready()
        .map(|r| r.map(|c| access(&c)));
    assert_eq!(
        published.as_ref().map(|r| r.as_ref().ok()),
        Some(Some(&"at-1".to_owned())),
        "the token is published"
    );
    assert!(
        waited.is_ok(),
        "the caller that waited for the refresh is still waiting (for the lease release) 2 s after its token was published"
    );
}

/// The contract: the cooldown for never-accepted tokens "grows (1 s doubling to 30 s) and
/// resets when a token is accepted". It resets only when an accepted token is later rejected;
/// `on_accepted` does not touch it. So the growth survives acceptances: after two
/// wrong-audience hiccups and an accepted token, the next never-accepted token's rejection starts
/// a 4 s cooldown instead of 1 s, and over a long-lived process every such rejection ends up
/// costing 30 s of 401s.
#[tokio::test]
async fn accepting_a_token_resets_the_cooldown_for_later_never_accepted_tokens() {
    let endpoint = Endpoint::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
        ok("at-4", Some("rt-4"), 3600),
        ok("at-5", Some("rt-5"), 3600),
        ok("at-6", Some("rt-6"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    let second = retried(on_401(&provider, &first).await); // never accepted: 1 s cooldown
    clock.advance(Duration::from_millis(1_100));
    let third = retried(on_401(&provider, &second).await); // never accepted: 2 s cooldown
    assert_eq!(access(&third), "at-3");
    provider.on_accepted(&third); // accepted: the cooldown resets
    clock.advance(Duration::from_secs(10));

    provider.verify_session().await.unwrap(); // a new token, at-4, not accepted yet
    let fourth = authorize(&provider).await.unwrap();
    assert_eq!(access(&fourth), "at-4");
    let fifth = retried(on_401(&provider, &fourth).await); // first rejection since the reset: 1 s
    assert_eq!(access(&fifth), "at-5");
    clock.advance(Duration::from_millis(1_500));

    let sixth = retried(on_401(&provider, &fifth).await);
    assert_eq!(access(&sixth), "at-6");
}

/// Server-provided text (`error_description`) has known secret values removed before it is
/// kept or logged. A server that echoes the refresh token it rejects puts it into the
/// error every caller receives, its `Display`, the refresh span's `outcome` and the warn line.
#[test]
fn an_error_description_echoing_the_refresh_token_reaches_neither_errors_nor_logs() {
    let probe = Arc::new(Probe::default());
    let _here = probe_here(&probe);
    let rt = probed_runtime(&probe);
    let endpoint = Endpoint::new([Answer::Json(
        400,
        r#"{"error":"invalid_grant","error_description":"refresh token rt-SECRET-5b2 was revoked"}"#
            .to_owned(),
    )]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-SECRET-5b2")
        .build()
        .unwrap();

    let err = rt.block_on(provider.access_token()).unwrap_err();
    drop(rt);

    assert_eq!(
        err.oauth_error().map(|e| e.code()),
        Some("invalid_grant"),
        "{err:?}"
    );
    let printed = format!("{err} {err:?}");
    assert!(
        !printed.contains("rt-SECRET-5b2"),
        "the refresh token reached the error: {printed}"
    );
    assert!(
        !probe.logs().contains("rt-SECRET-5b2"),
        "the refresh token reached the logs"
    );
}

/// Two session operations queued behind a store write (a refresh's, here): `set_tokens` queues
/// on the write gate *before* it bumps the epoch, `logout` bumps the epoch (memory: logged out)
/// and then queues. The gate serves `set_tokens` first: memory ends with its tokens (watch:
/// Authenticated), the store ends cleared by `logout`. A restart loses the sign-in; the module
/// doc promises "the store always ends with what the last session operation ... wrote".
#[tokio::test]
async fn logout_and_set_tokens_queued_behind_a_store_write_leave_memory_and_store_agreeing() {
    let store = Arc::new(ProbeStore::default());
    let write = store.hold_next_save();
    let endpoint = Endpoint::new([ok("at-2", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let refresh = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the refresh is inside its store write", || {
        store.saves_started() == 1
    })
    .await;

    let login = tokio::spawn({
        let p = provider.clone();
        async move { p.set_tokens(tokens(Some("at-S"), "rt-S")).await }
    });
    settle().await; // set_tokens waits for the write gate
    let logout = tokio::spawn({
        let p = provider.clone();
        async move { p.logout().await }
    });
    settle().await; // logout has ended the session in memory and waits for the gate
    write.notify_one();
    login.await.unwrap().unwrap();
    logout.await.unwrap().unwrap();
    let _ = refresh.await.unwrap();

    let in_memory = secret(provider.access_token().await).ok();
    let in_store = store.access_token();
    assert_eq!(
        in_memory,
        in_store,
        "memory and store disagree once both operations returned (watch: {:?})",
        provider.session_state()
    );
}

/// A provider used from two runtimes: a soft-window request on a current-thread runtime that is
/// then no longer driven (a sync facade's `block_on`, a one-off runtime in a CLI's setup)
/// spawns the background refresh there. It never runs, `is_running` stays set, and once the
/// token is stale every caller on the healthy runtime waits for it forever (no bound on a
/// waiter, no takeover).
#[test]
fn a_refresh_stranded_on_an_idle_runtime_does_not_hang_callers_on_another() {
    let endpoint = Endpoint::new([ok("at-2", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    // A stranded refresh is given up once it has run longer than any refresh may take; short
    // timeouts make that about 1.7 s here.
    let provider = builder(&endpoint, &clock)
        .timeout(Duration::from_millis(200))
        .store_timeout(Duration::from_millis(100))
        .refresh_lease_ttl(Duration::from_millis(300))
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(100)))
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(60)); // soft window (50 s before expiry)
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let served = idle.block_on(async { authorize(&provider).await }).unwrap();
    assert_eq!(access(&served), "at-1");

    clock.advance(Duration::from_secs(35)); // 5 s left: inside the hard window
    let healthy = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got = healthy.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), provider.access_token()).await
    });
    let calls = endpoint.calls();
    drop(idle);
    assert!(
        got.is_ok(),
        "a caller on the healthy runtime still waits after 3 s ({calls} token requests made)"
    );
}

/// The same gap as above, with `logout`: an `invalid_grant` is published (inside the write
/// gate), and before its `NoSession(Invalid)` reaches the watch, `logout` publishes
/// `NoSession(Logout)` and waits for the gate. Once `logout` has returned the watch says
/// `Invalid("invalid_grant")` while every call fails with `NoSession(Logout)`.
#[test]
fn logout_while_an_invalid_grant_is_being_published_leaves_the_watch_at_logout() {
    let (probe, pause) = Probe::pausing_on("the session ended");
    let rt = probed_runtime(&probe);
    let endpoint = Endpoint::new([invalid_grant()]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .build()
        .unwrap();

    let first = rt.spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    pause
        .reached
        .recv_timeout(Duration::from_secs(5))
        .expect("the refresh reached its session-end log line");
    let logout = rt.spawn({
        let p = provider.clone();
        async move { p.logout().await }
    });
    for _ in 0..5_000 {
        if provider.session_state() == SessionState::NoSession(SessionReason::Logout) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    pause.release.send(()).unwrap();
    rt.block_on(logout).unwrap().unwrap();
    let _ = rt.block_on(first).unwrap();

    let later = rt.block_on(provider.access_token());
    assert!(
        matches!(
            later,
            Err(Error::NoSession {
                reason: SessionReason::Logout
            })
        ),
        "{later:?}"
    );
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Logout),
        "the watch must end with the operation that returned last"
    );
}

/// A superseded refresh keeps the single-flight slot until its own exchange (or lease wait)
/// ends. After `set_tokens` hands a new refresh token, a caller that needs a token joins the
/// *old session's* exchange and waits for it (up to the 10 s token timeout, or the 21 s lease
/// wait on a shared store) before the new session's refresh can even start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_set_tokens_callers_do_not_wait_behind_the_superseded_sessions_exchange() {
    let old_exchange = Arc::new(Notify::new());
    let endpoint = Endpoint::new([
        held(&old_exchange, ok("at-old", Some("rt-old-2"), 3600)),
        ok("at-new", Some("rt-S-2"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .build()
        .unwrap();
    let old_waiter = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the old session's exchange is on the wire", || {
        endpoint.calls() == 1
    })
    .await;

    provider.set_tokens(tokens(None, "rt-S")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), provider.access_token()).await;
    let old_waiter_done = old_waiter.is_finished();
    old_exchange.notify_one();

    assert!(
        got.is_ok(),
        "a caller of the new session still waits after 2 s (token requests: {:?}; the old session's waiter finished: {old_waiter_done})",
        endpoint.sent()
    );
    assert_eq!(secret(got.unwrap()).unwrap(), "at-new");
}

// =============================================================================================
// Interleavings that hold (pinned)
// =============================================================================================

/// Logout while the refresh holds the write gate inside its store write: nothing of the
/// refresh reaches memory, the store ends cleared, the waiter joins the logged-out state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_while_the_refresh_is_inside_its_store_write_ends_logged_out_everywhere() {
    let store = Arc::new(ProbeStore::default());
    let write = store.hold_next_save();
    let endpoint = Endpoint::new([ok("at-2", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the refresh is inside its store write", || {
        store.saves_started() == 1
    })
    .await;
    let logout = tokio::spawn({
        let p = provider.clone();
        async move { p.logout().await }
    });
    until("logout has ended the session in memory", || {
        !provider.session_state().is_authenticated()
    })
    .await;
    write.notify_one();
    logout.await.unwrap().unwrap();

    let outcome = waiting.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(Error::NoSession {
                reason: SessionReason::Logout
            })
        ),
        "{outcome:?}"
    );
    assert!(
        store.inner.get(NS).is_none(),
        "the clear lands after the write"
    );
    assert!(matches!(
        provider.access_token().await,
        Err(Error::NoSession { .. })
    ));
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Logout)
    );
    assert_eq!(endpoint.calls(), 1);
}

/// `set_tokens` and then `logout`, both during one refresh: the refresh writes nothing, the
/// waiter joins a later session state, no further token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tokens_then_logout_during_one_refresh_ends_logged_out() {
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([held(&on_the_wire, ok("at-2", Some("rt-2"), 3600))]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the exchange is on the wire", || endpoint.calls() == 1).await;

    provider
        .set_tokens(tokens(Some("at-S"), "rt-S"))
        .await
        .unwrap();
    assert_eq!(store.access_token().as_deref(), Some("at-S"));
    provider.logout().await.unwrap();
    on_the_wire.notify_one();

    // The waiter joins whichever session is current when its abandoned refresh follows: the
    // handed-in one (set_tokens abandons the old exchange at once) or the logged-out state.
    let outcome = waiting.await.unwrap();
    let joined_new_session = matches!(&outcome, Ok(t) if t.expose_secret() == "at-S");
    let joined_logout = matches!(
        outcome,
        Err(Error::NoSession {
            reason: SessionReason::Logout
        })
    );
    assert!(joined_new_session || joined_logout, "{outcome:?}");
    assert!(store.inner.get(NS).is_none());
    assert!(authorize(&provider).await.is_err());
    assert_eq!(endpoint.calls(), 1);
}

/// Many callers waiting on a refresh that `set_tokens` (refresh token only) supersedes: every
/// one of them gets the one token of the new session's refresh; the old session's answer is
/// neither served nor stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_on_a_superseded_refresh_all_get_the_new_sessions_one_token() {
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([
        held(&on_the_wire, ok("at-old", Some("rt-old-2"), 3600)),
        ok("at-new", Some("rt-S-2"), 3600),
    ]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiters: Vec<_> = (0..64)
        .map(|_| {
            let p = provider.clone();
            tokio::spawn(async move { authorize(&p).await.map(|c| access(&c)) })
        })
        .collect();
    until("the exchange is on the wire", || endpoint.calls() == 1).await;

    provider.set_tokens(tokens(None, "rt-S")).await.unwrap();
    on_the_wire.notify_one();

    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap(), "at-new");
    }
    assert_eq!(endpoint.sent(), ["rt-1", "rt-S"]);
    assert_eq!(store.refresh_token().as_deref(), Some("rt-S-2"));
    assert_eq!(store.access_token().as_deref(), Some("at-new"));
}

/// An answer with CR/LF in the access token (unusable as a header) that rotated the refresh
/// token: the rotated one is kept in the store and used by the next refresh.
#[tokio::test]
async fn an_access_token_with_crlf_and_a_rotated_refresh_token_keeps_the_rotated_one() {
    let endpoint = Endpoint::new([
        Answer::Json(
            200,
            r#"{"access_token":"at-bad\r\nX-Injected: 1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}"#
                .to_owned(),
        ),
        ok("at-3", Some("rt-3"), 3600),
    ]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();

    let err = provider.access_token().await.unwrap_err();
    assert!(matches!(err, Error::InvalidHeaderValue), "{err:?}");
    assert_eq!(store.refresh_token().as_deref(), Some("rt-2"));
    clock.advance(Duration::from_secs(2));
    assert_eq!(secret(provider.access_token().await).unwrap(), "at-3");
    assert_eq!(endpoint.sent(), ["rt-1", "rt-2"]);
}

/// A 401 for a token from before `set_tokens` retries with the handed token, no refresh.
#[tokio::test]
async fn a_401_for_a_token_from_before_set_tokens_retries_with_the_handed_token() {
    let endpoint = Endpoint::new([]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let old = authorize(&provider).await.unwrap();
    provider.on_accepted(&old);
    provider
        .set_tokens(tokens(Some("at-S"), "rt-S"))
        .await
        .unwrap();
    let retry = retried(on_401(&provider, &old).await);
    assert_eq!(access(&retry), "at-S");
    assert_eq!(endpoint.calls(), 0);
}

/// `verify_session` and a 401 for the current (accepted) token racing: one exchange, both get
/// its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_session_and_a_401_racing_share_one_exchange() {
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([held(&on_the_wire, ok("at-2", Some("rt-2"), 3600))]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    provider.on_accepted(&first);
    let verify = tokio::spawn({
        let p = provider.clone();
        async move { p.verify_session().await }
    });
    until("the exchange is on the wire", || endpoint.calls() == 1).await;
    let retry = tokio::spawn({
        let p = provider.clone();
        let first = first.clone();
        async move { on_401(&p, &first).await }
    });
    settle().await;
    on_the_wire.notify_one();
    verify.await.unwrap().unwrap();
    assert_eq!(access(&retried(retry.await.unwrap())), "at-2");
    assert_eq!(endpoint.calls(), 1);
}

/// `invalid_grant` while the store's compare-and-delete fails: the session still ends (typed
/// error, watch `Invalid`, later calls fail without network). The dead refresh token stays in
/// the store (the failure is logged, not retried): the next process start spends one token
/// request on it.
#[tokio::test]
async fn invalid_grant_with_a_failing_compare_and_delete_still_ends_the_session() {
    let store = Arc::new(ProbeStore {
        fail_compare_and_delete: true,
        ..ProbeStore::holding(stored_refresh("rt-dead"))
    });
    let endpoint = Endpoint::new([invalid_grant()]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let err = provider.access_token().await.unwrap_err();
    assert!(err.is_session_ended(), "{err:?}");
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Invalid("invalid_grant".into()))
    );
    assert!(provider.access_token().await.is_err());
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(store.refresh_token().as_deref(), Some("rt-dead"));
}

/// A lease whose renewals and release fail: the refresh still completes and stores its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewal_and_release_failures_do_not_change_the_refresh_outcome() {
    let store = Arc::new(ProbeStore {
        lease: LeaseMode::Failing,
        ..ProbeStore::default()
    });
    let endpoint = Endpoint::new([Answer::Slow(
        Duration::from_millis(150),
        Box::new(ok("at-1", Some("rt-2"), 3600)),
    )]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .refresh_lease_ttl(Duration::from_millis(60))
        .build()
        .unwrap();
    assert_eq!(secret(provider.access_token().await).unwrap(), "at-1");
    assert_eq!(store.refresh_token().as_deref(), Some("rt-2"));
}

/// `client_credentials` has no `ended` state: logout during a fetch drops that fetch's token
/// (neither served nor stored); its waiter gets a token fetched after the logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_logout_during_a_fetch_keeps_that_fetchs_token_out() {
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([
        held(&on_the_wire, ok("at-1", None, 3600)),
        ok("at-2", None, 3600),
    ]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("client")
        .client_secret("cs-SECRET-client")
        .transport(Arc::clone(&endpoint) as Arc<dyn TokenTransport>)
        .clock(Arc::new(clock.clone()))
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let p = provider.clone();
        async move { p.access_token().await }
    });
    until("the fetch is on the wire", || endpoint.calls() == 1).await;
    provider.logout().await.unwrap();
    on_the_wire.notify_one();

    assert_eq!(secret(waiting.await.unwrap()).unwrap(), "at-2");
    assert_eq!(store.access_token().as_deref(), Some("at-2"));
    assert_eq!(secret(provider.access_token().await).unwrap(), "at-2");
}

/// A 401 that starts a refresh answered `429 Retry-After: 120`: the 401 is returned, callers
/// get the retryable error without a new call until Retry-After has passed (longer than the
/// 1 s cooldown and the 30 s backoff maximum), then one refresh.
#[tokio::test]
async fn retry_after_from_a_401_refresh_outlasts_the_cooldown_and_the_backoff() {
    let endpoint = Endpoint::new([
        Answer::Json(429, String::new()),
        ok("at-2", Some("rt-2"), 3600),
    ]);
    // The scripted 429 has no header: give it one through a second transport layer.
    #[derive(Debug)]
    struct WithRetryAfter(Arc<Endpoint>);
    impl TokenTransport for WithRetryAfter {
        fn send(
            &self,
            request: http::Request<Bytes>,
            max_body: usize,
        ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
            let inner = self.0.send(request, max_body);
            Box::pin(async move {
                let mut response = inner.await?;
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("120"));
                }
                Ok(response)
            })
        }
    }
    let clock = ManualClock::new();
    let provider = OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("client")
        .transport(Arc::new(WithRetryAfter(Arc::clone(&endpoint))))
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    assert!(matches!(
        on_401(&provider, &first).await,
        Ok(Unauthorized::GiveUp)
    ));
    clock.advance(Duration::from_secs(60));
    let err = authorize(&provider).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(endpoint.calls(), 1);
    clock.advance(Duration::from_secs(61));
    assert_eq!(access(&authorize(&provider).await.unwrap()), "at-2");
    assert_eq!(endpoint.calls(), 2);
}

/// A token replaced by refresh-ahead: a 401 for the old (accepted) token retries with the new
/// one without a refresh; the new token's own first 401 (never accepted, no cooldown running)
/// refreshes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_a_token_replaced_by_refresh_ahead_retries_with_the_new_one() {
    let endpoint = Endpoint::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(100)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    provider.on_accepted(&first);
    clock.advance(Duration::from_secs(60)); // soft window
    assert_eq!(access(&authorize(&provider).await.unwrap()), "at-1");
    until("refresh-ahead published at-2", || {
        authorize(&provider)
            .take_ready()
            .is_some_and(|c| c.is_ok_and(|c| access(&c) == "at-2"))
    })
    .await;

    let second = retried(on_401(&provider, &first).await);
    assert_eq!(access(&second), "at-2");
    assert_eq!(endpoint.calls(), 1);
    let third = retried(on_401(&provider, &second).await);
    assert_eq!(access(&third), "at-3");
    assert_eq!(endpoint.calls(), 2);
}

/// A one-second token (the shortest not held as "short-lived"): served at once, refreshed in
/// the background in its last half, nobody waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_token_is_refreshed_ahead_in_its_last_half_without_waiting() {
    let endpoint = Endpoint::new([ok("at-1", None, 1), ok("at-2", None, 1)]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .build()
        .unwrap();
    assert_eq!(access(&authorize(&provider).await.unwrap()), "at-1");
    clock.advance(Duration::from_millis(600)); // soft window is the last 500 ms, hard 250 ms
    let mut served = authorize(&provider);
    let served = served
        .take_ready()
        .expect("served without waiting")
        .unwrap();
    assert_eq!(access(&served), "at-1");
    until("the background refresh ran", || endpoint.calls() == 2).await;
    until("at-2 is published", || {
        authorize(&provider)
            .take_ready()
            .is_some_and(|c| c.is_ok_and(|c| access(&c) == "at-2"))
    })
    .await;
}

/// A follow() chain: the refresh is superseded by `set_tokens`, the refresh its waiters then
/// join is superseded by another `set_tokens`: the waiters get the last session's token, each
/// session's refresh token was used once, nothing of the first two reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_follow_a_chain_of_superseded_refreshes_to_the_last_session() {
    let first_exchange = Arc::new(Notify::new());
    let second_exchange = Arc::new(Notify::new());
    let endpoint = Endpoint::new([
        held(&first_exchange, ok("at-old", Some("rt-old-2"), 3600)),
        held(&second_exchange, ok("at-S", Some("rt-S-2"), 3600)),
        ok("at-T", Some("rt-T-2"), 3600),
    ]);
    let store = Arc::new(ProbeStore::default());
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let p = provider.clone();
            tokio::spawn(async move { secret(p.access_token().await) })
        })
        .collect();
    until("the first exchange is on the wire", || {
        endpoint.calls() == 1
    })
    .await;
    provider.set_tokens(tokens(None, "rt-S")).await.unwrap();
    first_exchange.notify_one();
    until("the second exchange is on the wire", || {
        endpoint.calls() == 2
    })
    .await;
    provider.set_tokens(tokens(None, "rt-T")).await.unwrap();
    second_exchange.notify_one();

    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap(), "at-T");
    }
    assert_eq!(endpoint.sent(), ["rt-1", "rt-S", "rt-T"]);
    assert_eq!(store.refresh_token().as_deref(), Some("rt-T-2"));
}

/// A refresh spawned on a runtime that has shut down is dropped unpolled inside `join` (with the
/// state lock held): no deadlock, its waiter gets `RefreshAborted`, and the next caller on a
/// healthy runtime refreshes.
#[test]
fn a_refresh_spawned_on_a_shut_down_runtime_aborts_and_frees_the_provider() {
    let endpoint = Endpoint::new([ok("at-2", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-1")
        .build()
        .unwrap();
    let dead = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handle = dead.handle().clone();
    drop(dead);
    let pending = {
        let _enter = handle.enter();
        authorize(&provider)
    };
    let healthy = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let aborted = healthy.block_on(pending);
    assert!(matches!(aborted, Err(Error::RefreshAborted)), "{aborted:?}");
    let fresh = healthy
        .block_on(async { authorize(&provider).await })
        .unwrap();
    assert_eq!(access(&fresh), "at-2");
}

/// No secret reaches a log line (captured at TRACE on the refresh threads), an error or a
/// `Debug` output on the new paths: an unusable answer with a rotated refresh token,
/// invalid_grant with a newer stored refresh token, a lease that fails, logout with revocation
/// during a refresh.
#[test]
fn no_secret_reaches_logs_or_errors_on_the_new_paths() {
    let probe = Arc::new(Probe::default());
    let _here = probe_here(&probe);
    let rt = probed_runtime(&probe);
    let mut printed = Vec::new();

    // An unusable answer that rotated the refresh token.
    let endpoint = Endpoint::new([
        Answer::Json(
            200,
            r#"{"access_token":"at-SECRET-crlf\r\nX: 1","token_type":"Bearer","refresh_token":"rt-SECRET-rotated"}"#
                .to_owned(),
        ),
        Answer::Json(
            200,
            r#"{"access_token":"at-SECRET-mac","token_type":"mac","refresh_token":"rt-SECRET-rotated-2"}"#
                .to_owned(),
        ),
    ]);
    let clock = ManualClock::new();
    let store = Arc::new(ProbeStore {
        lease: LeaseMode::Failing,
        ..ProbeStore::default()
    });
    let provider = builder(&endpoint, &clock)
        .refresh_token("rt-SECRET-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    let err = rt.block_on(provider.access_token()).unwrap_err();
    printed.push(format!(
        "{err} {err:?} {provider:?} {:?}",
        store.inner.get(NS)
    ));
    clock.advance(Duration::from_secs(2));
    let err = rt.block_on(provider.access_token()).unwrap_err();
    printed.push(format!("{err} {err:?} {provider:?}"));

    // invalid_grant, then the newer refresh token another process stored.
    let shared = Arc::new(ProbeStore {
        lease: LeaseMode::Working,
        ..ProbeStore::holding(stored_refresh("rt-SECRET-old"))
    });
    let rejected = Arc::new(Notify::new());
    let endpoint = Endpoint::new([
        held(&rejected, invalid_grant()),
        ok("at-SECRET-2", Some("rt-SECRET-3"), 3600),
    ]);
    let provider = builder(&endpoint, &clock)
        .store(Arc::clone(&shared) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let sneak = Arc::clone(&shared);
    let token = rt.block_on(async {
        // Start the refresh; rotate in the store "from another process" before it answers.
        let p = provider.clone();
        let task = tokio::spawn(async move { p.access_token().await });
        until("the first exchange is made", || endpoint.calls() >= 1).await;
        drop(sneak.inner.save(NS, &stored_refresh("rt-SECRET-newer")));
        rejected.notify_one();
        task.await.unwrap()
    });
    assert_eq!(secret(token.clone()).unwrap(), "at-SECRET-2");
    printed.push(format!("{token:?} {provider:?}"));

    // Logout with revocation during a refresh.
    let failing = Arc::new(ProbeStore::default());
    let on_the_wire = Arc::new(Notify::new());
    let endpoint = Endpoint::new([held(
        &on_the_wire,
        ok("at-SECRET-9", Some("rt-SECRET-10"), 3600),
    )]);
    let provider = builder(&endpoint, &clock)
        .revocation_url(REVOKE_URL)
        .refresh_token("rt-SECRET-8")
        .store(Arc::clone(&failing) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    rt.block_on(async {
        let p = provider.clone();
        let task = tokio::spawn(async move { p.access_token().await });
        until("the exchange is on the wire", || endpoint.calls() == 1).await;
        provider.logout().await.unwrap();
        on_the_wire.notify_one();
        let outcome = task.await.unwrap();
        printed.push(format!("{outcome:?} {provider:?}"));
    });
    drop(rt);

    let logs = probe.logs();
    assert!(logs.contains("client_auth.refresh"), "spans were captured");
    assert!(
        logs.contains("rotated the refresh token"),
        "the rotation path ran"
    );
    for secret in [
        "at-SECRET-crlf",
        "rt-SECRET-rotated",
        "at-SECRET-mac",
        "rt-SECRET-1",
        "rt-SECRET-old",
        "rt-SECRET-newer",
        "at-SECRET-2",
        "rt-SECRET-3",
        "at-SECRET-9",
        "rt-SECRET-10",
        "rt-SECRET-8",
        "cs-SECRET-client",
    ] {
        assert!(!logs.contains(secret), "{secret} reached the logs");
        for p in &printed {
            assert!(!p.contains(secret), "{secret} reached {p}");
        }
    }
}
