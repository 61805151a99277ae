//! Regression tests for the OAuth provider's session integrity: what happens between two
//! operations (a refresh and a store, another process, a missing runtime, a rejected token).
//! The token endpoint is a scripted in-process transport, so every answer is chosen by the test
//! and every call is counted. Expiry and backoff move with a `ManualClock`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, AuthorizationProvider, Credential, Error, ManualClock, MemoryStore, OAuthProvider,
    OAuthProviderBuilder, RefreshLease, RefreshToken, RequestView, StoreError, StoredTokens,
    SuppliedTransport, TokenStore, TokenTransport, Tokens, Unauthorized,
};
use http::{Extensions, HeaderMap, Method, StatusCode};

const NS: &str = "user-1";

/// One scripted answer of the token endpoint.
#[derive(Clone)]
enum Answer {
    Json(u16, String),
    /// Answers after a real-time delay (for lease renewal, which runs on real time).
    Slow(Duration, String),
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

fn invalid_grant() -> Answer {
    Answer::Json(400, r#"{"error":"invalid_grant"}"#.to_owned())
}

type Hook = Box<dyn Fn(usize) + Send + Sync>;

/// A token endpoint that answers from a script and records the refresh tokens it was sent.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    calls: AtomicUsize,
    sent: Mutex<Vec<String>>,
    /// Runs at each call (with its 1-based number) before the answer: "another process did X".
    hook: Option<Hook>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl Script {
    fn new(answers: impl IntoIterator<Item = Answer>) -> Arc<Self> {
        Arc::new(Self::with(answers, None))
    }

    fn with(answers: impl IntoIterator<Item = Answer>, hook: Option<Hook>) -> Self {
        Self {
            answers: Mutex::new(answers.into_iter().collect()),
            hook,
            ..Self::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

impl TokenTransport for Script {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let form: Vec<(String, String)> = form_urlencoded::parse(request.body())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((_, rt)) = form.iter().find(|(k, _)| k == "refresh_token") {
            self.sent.lock().unwrap().push(rt.clone());
        }
        if let Some(hook) = &self.hook {
            hook(n);
        }
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script ran out of answers");
        Box::pin(async move {
            let (status, body) = match answer {
                Answer::Json(status, body) => (status, body),
                Answer::Slow(delay, body) => {
                    tokio::time::sleep(delay).await;
                    (200, body)
                }
            };
            Ok(http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Bytes::from(body))
                .unwrap())
        })
    }
}

/// A memory store with a (no-op) refresh lease, as shared stores have, counting renewals.
#[derive(Debug, Default)]
struct LeasedStore {
    inner: MemoryStore,
    renewals: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct CountingLease(Arc<AtomicUsize>);

impl RefreshLease for CountingLease {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn renew(&self, _ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

impl TokenStore for LeasedStore {
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
        self.inner.save(namespace, tokens)
    }
    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.clear(namespace)
    }
    fn lock_refresh<'a>(
        &'a self,
        _namespace: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        let lease: Box<dyn RefreshLease> = Box::new(CountingLease(Arc::clone(&self.renewals)));
        Box::pin(async move { Ok(Some(lease)) })
    }
}

/// A store whose calls misbehave on demand.
#[derive(Debug, Default)]
struct FaultyStore {
    inner: MemoryStore,
    /// `load` answers this permanent error.
    corrupt: bool,
    /// `load` never completes.
    hang: bool,
    /// The first this-many `save` calls fail.
    failing_saves: AtomicUsize,
    saves: AtomicUsize,
}

impl TokenStore for FaultyStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        if self.hang {
            return Box::pin(std::future::pending());
        }
        if self.corrupt {
            return Box::pin(async { Err(StoreError::permanent("stored tokens are not valid")) });
        }
        self.inner.load(namespace)
    }
    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failing_saves
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Box::pin(async { Err(StoreError::transient("store down")) });
        }
        self.inner.save(namespace, tokens)
    }
    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.clear(namespace)
    }
}

fn builder(script: &Arc<Script>, clock: &ManualClock) -> OAuthProviderBuilder<SuppliedTransport> {
    OAuthProvider::refresh_token_grant("https://auth.example.com/token")
        .client_id("client")
        .client_secret("secret")
        .transport(Arc::clone(script) as Arc<dyn TokenTransport>)
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
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

fn retried(outcome: Result<Unauthorized, Error>) -> Credential {
    match outcome {
        Ok(Unauthorized::Retry(c)) => c,
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// Polls a future to completion on this thread, with no tokio runtime anywhere.
fn block_on_without_runtime<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    assert!(tokio::runtime::Handle::try_current().is_err());
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

// ---- a shared store and invalid_grant ----

#[tokio::test]
async fn invalid_grant_adopts_a_newer_refresh_token_another_process_stored() {
    let store = Arc::new(LeasedStore::default());
    store
        .inner
        .save(
            NS,
            &StoredTokens {
                refresh_token: Some(RefreshToken::new("rt-old")),
                ..StoredTokens::default()
            },
        )
        .await
        .unwrap();
    let other = Arc::clone(&store);
    // While our exchange runs, another process rotates the grant and stores the newer token.
    let hook: Hook = Box::new(move |n| {
        if n == 1 {
            let newer = StoredTokens {
                refresh_token: Some(RefreshToken::new("rt-newer")),
                ..StoredTokens::default()
            };
            // The memory store writes when called; its future only reports the result.
            drop(other.inner.save(NS, &newer));
        }
    });
    let script = Arc::new(Script::with(
        [invalid_grant(), ok("at-2", Some("rt-3"), 3600)],
        Some(hook),
    ));
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();

    let token = provider.access_token().await.unwrap();
    assert_eq!(token.expose_secret(), "at-2");
    assert_eq!(script.sent(), ["rt-old", "rt-newer"]);
    let stored = store.inner.get(NS).unwrap();
    assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-3");
    assert!(provider.session_state().is_authenticated());
}

#[tokio::test]
async fn invalid_grant_clears_the_store_only_while_it_holds_the_rejected_token() {
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            refresh_token: Some(RefreshToken::new("rt-dead")),
            ..StoredTokens::default()
        },
    ));
    let script = Script::new([invalid_grant()]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let err = provider.access_token().await.unwrap_err();
    assert!(err.is_session_ended(), "{err:?}");
    assert!(store.get(NS).is_none(), "the dead refresh token is gone");
}

// ---- no runtime: typed errors, never a panic ----

#[test]
fn logout_with_a_revocation_url_and_no_runtime_is_a_typed_error_not_a_panic() {
    let script = Script::new([]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .revocation_url("https://auth.example.com/revoke")
        .refresh_token("rt-1")
        .build()
        .unwrap();
    let result = block_on_without_runtime(provider.logout());
    assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    assert!(!provider.session_state().is_authenticated());
    assert_eq!(script.calls(), 0);
}

#[test]
fn set_tokens_on_a_file_store_without_a_runtime_is_a_typed_error_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("client-auth-nort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let store = client_auth::FileStore::new(&dir);
    let script = Script::new([]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .store(Arc::new(store), NS)
        .build()
        .unwrap();
    let result = block_on_without_runtime(provider.set_tokens(Tokens {
        refresh_token: Some(RefreshToken::new("rt-1")),
        ..Tokens::default()
    }));
    assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_401_without_a_runtime_keeps_serving_the_current_token() {
    let script = Script::new([]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = block_on_without_runtime(authorize(&provider)).unwrap();
    let outcome = block_on_without_runtime(provider.on_unauthorized(
        &first,
        StatusCode::UNAUTHORIZED,
        &HeaderMap::new(),
    ));
    assert!(matches!(outcome, Ok(Unauthorized::GiveUp)), "{outcome:?}");
    let again = block_on_without_runtime(authorize(&provider)).unwrap();
    assert_eq!(again.generation(), first.generation());
}

// ---- 401s: revoked tokens refresh at once, never-accepted ones cool down ----

#[tokio::test]
async fn an_accepted_token_revoked_twice_3s_apart_is_refreshed_each_time() {
    let script = Script::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    provider.on_accepted(&first);
    let second = retried(on_401(&provider, &first).await);
    assert_eq!(access(&second), "at-2");
    provider.on_accepted(&second);
    clock.advance(Duration::from_secs(3));
    let third = retried(on_401(&provider, &second).await);
    assert_eq!(access(&third), "at-3");
    assert_eq!(script.calls(), 2);
}

#[tokio::test]
async fn a_token_never_accepted_refreshes_under_a_cooldown_that_grows_from_one_second() {
    let script = Script::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
        ok("at-4", Some("rt-4"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    let second = retried(on_401(&provider, &first).await); // never accepted: cooldown 1 s starts
    assert!(matches!(
        on_401(&provider, &second).await,
        Ok(Unauthorized::GiveUp)
    ));
    clock.advance(Duration::from_millis(1_001));
    let third = retried(on_401(&provider, &second).await); // cooldown now 2 s
    clock.advance(Duration::from_millis(1_500));
    assert!(matches!(
        on_401(&provider, &third).await,
        Ok(Unauthorized::GiveUp)
    ));
    clock.advance(Duration::from_millis(600));
    let fourth = retried(on_401(&provider, &third).await);
    assert_eq!(access(&fourth), "at-4");
    assert_eq!(script.calls(), 3);
}

#[tokio::test]
async fn acceptance_resets_the_cooldown() {
    let script = Script::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
    ]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .access_token("at-1", Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    let second = retried(on_401(&provider, &first).await); // cooldown running
    provider.on_accepted(&second);
    let third = retried(on_401(&provider, &second).await);
    assert_eq!(access(&third), "at-3");
}

// ---- a fleet on a shared store ----

#[tokio::test]
async fn a_fleet_adopts_a_fresh_stored_token_when_the_refresh_token_did_not_rotate() {
    let store = Arc::new(LeasedStore::default());
    let clock = ManualClock::new();
    // A server that never rotates: the same refresh token throughout.
    let script = Script::new([ok("at-1", None, 600), ok("at-2", None, 600)]);
    let make = || {
        builder(&script, &clock)
            .refresh_token("rt-fixed")
            .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
            .build()
            .unwrap()
    };
    let (one, two) = (make(), make());
    assert_eq!(one.access_token().await.unwrap().expose_secret(), "at-1");
    assert_eq!(two.access_token().await.unwrap().expose_secret(), "at-1");
    assert_eq!(script.calls(), 1);
    clock.advance(Duration::from_secs(595));
    assert_eq!(one.access_token().await.unwrap().expose_secret(), "at-2");
    assert_eq!(two.access_token().await.unwrap().expose_secret(), "at-2");
    assert_eq!(
        script.calls(),
        2,
        "the second process adopts the first one's token"
    );
}

#[tokio::test]
async fn an_adopted_token_gets_its_windows_from_its_whole_lifetime() {
    let clock = ManualClock::new();
    let now = clock_unix(&clock);
    // Issued an hour ago with a 3600+12 s lifetime: 12 s left, hard window 10 s.
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            access_token: Some(AccessToken::new("at-stored")),
            refresh_token: Some(RefreshToken::new("rt-1")),
            expires_at: Some(now + Duration::from_secs(12)),
            issued_at: Some(now - Duration::from_secs(3600)),
            scope: None,
            dpop_jkt: None,
        },
    ));
    let script = Script::new([ok("at-new", Some("rt-2"), 3600)]);
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-stored"
    );
    assert_eq!(script.calls(), 0);
    clock.advance(Duration::from_secs(3));
    // 9 s left: inside the 10 s hard window of a one-hour token.
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-new"
    );
    assert_eq!(script.calls(), 1);
}

#[tokio::test]
async fn tokens_handed_in_with_their_whole_lifetime_are_refreshed_in_its_hard_window() {
    let clock = ManualClock::new();
    let script = Script::new([ok("at-new", Some("rt-2"), 3600)]);
    let provider = builder(&script, &clock).build().unwrap();
    provider
        .set_tokens(Tokens {
            access_token: Some(AccessToken::new("at-handed")),
            refresh_token: Some(RefreshToken::new("rt-1")),
            expires_in: Some(Duration::from_secs(12)),
            lifetime: Some(Duration::from_secs(3600)),
            dpop_bound: false,
        })
        .await
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-handed"
    );
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-new"
    );
}

fn clock_unix(clock: &ManualClock) -> SystemTime {
    use client_auth::Clock as _;
    clock.unix_now()
}

// ---- lifetimes and backoff ----

#[tokio::test]
async fn a_zero_lifetime_answer_is_held_instead_of_one_token_request_per_request() {
    let script = Script::new([ok("at-1", None, 0), ok("at-2", None, 0)]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .build()
        .unwrap();
    for _ in 0..50 {
        authorize(&provider).await.unwrap();
    }
    clock.advance(Duration::from_millis(500));
    for _ in 0..50 {
        authorize(&provider).await.unwrap();
    }
    assert_eq!(script.calls(), 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(access(&authorize(&provider).await.unwrap()), "at-2");
    assert_eq!(script.calls(), 2);
}

#[tokio::test]
async fn a_huge_backoff_setting_does_not_panic_the_refresh() {
    let script = Script::new([Answer::Json(503, String::new())]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .backoff(Duration::MAX, Duration::MAX)
        .unauthorized_cooldown(Duration::MAX, Duration::MAX)
        .build()
        .unwrap();
    let first = provider.access_token().await.unwrap_err();
    assert!(first.is_transient(), "{first:?}");
    let again = provider.access_token().await.unwrap_err();
    assert!(again.is_transient(), "{again:?}");
    assert_eq!(script.calls(), 1, "backing off: no second call");
}

#[tokio::test]
async fn store_write_retries_wait_on_the_injected_clock() {
    let store = Arc::new(FaultyStore {
        failing_saves: AtomicUsize::new(1),
        ..FaultyStore::default()
    });
    let script = Script::new([ok("at-1", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    let p = provider.clone();
    let mut task = tokio::spawn(async move { p.access_token().await });
    while store.saves.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut task)
            .await
            .is_err(),
        "the retry waits for the injected clock"
    );
    assert_eq!(store.saves.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(50));
    let token = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(token.expose_secret(), "at-1");
    assert_eq!(store.saves.load(Ordering::SeqCst), 2);
    assert_eq!(
        store
            .inner
            .get(NS)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose_secret(),
        "rt-2"
    );
}

// ---- stored entries that are corrupt, unusable or never answered ----

#[tokio::test]
async fn a_corrupt_store_entry_does_not_stop_a_provider_with_a_refresh_token() {
    let store = Arc::new(FaultyStore {
        corrupt: true,
        ..FaultyStore::default()
    });
    let script = Script::new([ok("at-1", Some("rt-2"), 3600)]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-1"
    );
    assert_eq!(script.sent(), ["rt-1"]);
}

#[tokio::test]
async fn a_stored_access_token_with_crlf_is_not_served_and_its_refresh_token_is_used() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            access_token: Some(AccessToken::new("at\r\nX-Injected: 1")),
            refresh_token: Some(RefreshToken::new("rt-stored")),
            expires_at: Some(clock_unix(&clock) + Duration::from_secs(3600)),
            ..StoredTokens::default()
        },
    ));
    let script = Script::new([ok("at-1", Some("rt-2"), 3600)]);
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-1"
    );
    assert_eq!(script.sent(), ["rt-stored"]);
}

#[tokio::test]
async fn a_stored_expiry_far_in_the_future_is_capped_like_a_network_answer() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            access_token: Some(AccessToken::new("at-forever")),
            refresh_token: Some(RefreshToken::new("rt-1")),
            expires_at: UNIX_EPOCH.checked_add(Duration::from_millis(u64::MAX)),
            ..StoredTokens::default()
        },
    ));
    let script = Script::new([ok("at-1", Some("rt-2"), 3600)]);
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-forever"
    );
    clock.advance(Duration::from_secs(366 * 24 * 3600));
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-1"
    );
}

#[tokio::test]
async fn a_store_call_that_never_completes_is_a_typed_error_after_the_store_timeout() {
    let store = Arc::new(FaultyStore {
        hang: true,
        ..FaultyStore::default()
    });
    let script = Script::new([]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), provider.access_token())
        .await
        .expect("the store timeout bounds the wait")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.is_transient()),
        "{err:?}"
    );
    assert_eq!(script.calls(), 0);
}

// ---- the refresh lease ----

#[tokio::test]
async fn the_lease_is_renewed_while_the_token_request_runs() {
    let store = Arc::new(LeasedStore::default());
    let renewals = Arc::clone(&store.renewals);
    let Answer::Json(_, body) = ok("at-1", Some("rt-2"), 3600) else {
        unreachable!()
    };
    let script = Script::new([Answer::Slow(Duration::from_millis(300), body)]);
    let clock = ManualClock::new();
    let provider = builder(&script, &clock)
        .refresh_token("rt-1")
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .refresh_lease_ttl(Duration::from_millis(90))
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-1"
    );
    let renewed = renewals.load(Ordering::SeqCst);
    assert!(
        renewed >= 2,
        "renewed {renewed} times during a 300 ms exchange"
    );
}

#[tokio::test]
async fn a_stored_whitespace_only_access_token_is_not_served_and_its_refresh_token_is_used() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            access_token: Some(AccessToken::new("   ")),
            refresh_token: Some(RefreshToken::new("rt-stored")),
            expires_at: Some(clock_unix(&clock) + Duration::from_secs(3600)),
            ..StoredTokens::default()
        },
    ));
    let script = Script::new([ok("at-1", Some("rt-2"), 3600)]);
    let provider = builder(&script, &clock)
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, NS)
        .build()
        .unwrap();
    assert_eq!(
        provider.access_token().await.unwrap().expose_secret(),
        "at-1"
    );
    assert_eq!(script.sent(), ["rt-stored"]);
}
