//! Behaviour of the OAuth provider's token cache against the testkit server, over real
//! sockets. Expiry and backoff move with a `ManualClock`; nothing sleeps to wait for them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, AuthorizationProvider, Credential, Error, ManualClock, MemoryStore, OAuthProvider,
    OAuthProviderBuilder, RefreshToken, RequestView, SessionReason, SessionState, StoreError,
    StoredTokens, TokenStore, Tokens, Unauthorized,
};
use client_auth_testkit::{Fault, ServerConfig, TestServer};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::Notify;

const NS: &str = "user-1";

fn builder(server: &TestServer, clock: &ManualClock) -> OAuthProviderBuilder {
    OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
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

fn unauthorized() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer error="invalid_token""#),
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_callers_on_an_expired_token_cause_exactly_one_token_request() {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(100)))
            .await
            .unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(61));

    let mut tasks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let p = provider.clone();
        tasks.push(tokio::spawn(async move { authorize(&p).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let cred = t.await.unwrap().unwrap();
        tokens.insert(access(&cred));
    }
    let stats = server.stats();
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(tokens.len(), 1, "every caller gets the same fresh token");
    assert!(!tokens.contains(&grant.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_401s_for_the_current_token_cause_one_refresh() {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(50)))
            .await
            .unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    assert_eq!(server.stats().refresh_grants, 1);

    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let p = provider.clone();
        let failed = first.clone();
        tasks.push(tokio::spawn(async move {
            p.on_unauthorized(&failed, StatusCode::UNAUTHORIZED, &unauthorized())
                .await
        }));
    }
    let mut retried = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Unauthorized::Retry(c) => {
                assert_ne!(c.generation(), first.generation());
                retried.insert(access(&c));
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
    assert_eq!(
        server.stats().refresh_grants,
        2,
        "one refresh for a thousand 401s"
    );
    assert_eq!(retried.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_the_soft_window_callers_get_the_current_token_without_waiting_while_one_refresh_runs()
 {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(300)))
            .await
            .unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let mut session = provider.session();
    session.borrow_and_update();
    // Soft window of a 1 h token: 360 s before expiry. 3300 s in is inside it.
    clock.advance(Duration::from_secs(3300));
    for _ in 0..200 {
        let cred = authorize(&provider)
            .take_ready()
            .expect("served without waiting")
            .unwrap();
        assert_eq!(access(&cred), grant.access_token);
    }
    tokio::time::timeout(Duration::from_secs(10), session.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *session.borrow(),
        SessionState::Authenticated(SessionReason::Refreshed)
    );
    assert_eq!(server.stats().refresh_grants, 1);
    let fresh = authorize(&provider).take_ready().unwrap().unwrap();
    assert_ne!(access(&fresh), grant.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_request_that_started_a_refresh_does_not_stop_it() {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(200)))
            .await
            .unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .store(store.clone(), NS)
        .build()
        .unwrap();

    let starter = tokio::spawn({
        let p = provider.clone();
        async move { authorize(&p).await }
    });
    tokio::task::yield_now().await;
    let waiter = tokio::spawn({
        let p = provider.clone();
        async move { authorize(&p).await }
    });
    starter.abort();
    let cred = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stored = store.get(NS).expect("tokens stored");
    let rotated = stored.refresh_token.unwrap();
    assert_ne!(
        rotated.expose_secret(),
        grant.refresh_token,
        "rotated token stored"
    );
    assert_eq!(stored.access_token.unwrap().expose_secret(), access(&cred));
    assert_eq!(server.stats().refresh_grants, 1);
}

#[test]
fn without_a_tokio_runtime_a_refresh_is_a_typed_error_not_a_panic() {
    let clock = ManualClock::new();
    let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
        .client_id("c")
        .refresh_token("rt")
        .clock(Arc::new(clock))
        .build()
        .unwrap();
    let result = authorize(&provider).take_ready().expect("answered at once");
    assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
}

/// A store whose writes wait until the test lets them through.
#[derive(Debug, Default)]
struct GatedStore {
    inner: MemoryStore,
    save_started: Notify,
    release: Notify,
}

impl TokenStore for GatedStore {
    fn load<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        self.inner.load(ns)
    }
    fn save<'a>(
        &'a self,
        ns: &'a str,
        t: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.save_started.notify_one();
            self.release.notified().await;
            self.inner.save(ns, t).await
        })
    }
    fn clear<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.clear(ns)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_in_the_store_before_any_caller_sees_the_new_access_token() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(GatedStore::default());
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .store(store.clone(), NS)
        .build()
        .unwrap();
    let waiter = tokio::spawn({
        let p = provider.clone();
        async move { authorize(&p).await }
    });
    tokio::time::timeout(Duration::from_secs(10), store.save_started.notified())
        .await
        .unwrap();
    // The token endpoint has answered; the store write is held back.
    assert_eq!(server.stats().token_successes, 1);
    assert!(store.inner.get(NS).is_none());
    assert!(
        authorize(&provider).take_ready().is_none(),
        "nobody is served the new token yet"
    );
    assert!(!waiter.is_finished());
    store.release.notify_one();
    let cred = waiter.await.unwrap().unwrap();
    let stored = store.inner.get(NS).unwrap();
    assert_eq!(stored.access_token.unwrap().expose_secret(), access(&cred));
    assert_ne!(
        stored.refresh_token.unwrap().expose_secret(),
        grant.refresh_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_clears_the_store_ends_the_session_and_later_calls_fail_without_network() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            refresh_token: Some(RefreshToken::new(grant.refresh_token.as_str())),
            ..StoredTokens::default()
        },
    ));
    let provider = builder(&server, &clock)
        .store(store.clone(), NS)
        .build()
        .unwrap();
    server.revoke_grant(&grant.refresh_token);

    let err = authorize(&provider).await.unwrap_err();
    assert!(err.is_session_ended() && !err.is_transient(), "{err:?}");
    assert_eq!(err.oauth_error().map(|e| e.code()), Some("invalid_grant"));
    assert!(store.get(NS).is_none(), "store cleared");
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Invalid("invalid_grant".into()))
    );
    let calls = server.stats().token_calls;
    let next = authorize(&provider).take_ready().expect("fails fast");
    assert!(matches!(next, Err(Error::NoSession { .. })), "{next:?}");
    assert!(
        provider
            .access_token()
            .await
            .unwrap_err()
            .is_session_ended()
    );
    assert_eq!(
        server.stats().token_calls,
        calls,
        "no network after the session ended"
    );

    // New tokens after a sign-in bring the session back.
    let again = server.issue_grant("alice", None);
    provider
        .set_tokens(Tokens {
            access_token: Some(AccessToken::new(again.access_token.as_str())),
            refresh_token: Some(RefreshToken::new(again.refresh_token.as_str())),
            expires_in: Some(Duration::from_secs(3600)),
            lifetime: None,
            dpop_bound: false,
        })
        .await
        .unwrap();
    assert_eq!(
        access(&authorize(&provider).await.unwrap()),
        again.access_token
    );
    assert_eq!(
        store
            .get(NS)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose_secret(),
        again.refresh_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_keeps_the_session_and_the_valid_token_and_backs_off_without_hammering() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        // Long enough to still be backing off once the token is past its hard window.
        .backoff(Duration::from_secs(600), Duration::from_secs(600))
        .build()
        .unwrap();
    server.set_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    clock.advance(Duration::from_secs(3300)); // soft window

    // Served at once; a background refresh is attempted and fails.
    let cred = authorize(&provider).take_ready().unwrap().unwrap();
    assert_eq!(access(&cred), grant.access_token);
    wait_until(|| server.stats().token_calls == 1).await;
    // During the backoff, callers keep the still-valid token and nobody calls the endpoint.
    for _ in 0..100 {
        let cred = authorize(&provider).take_ready().unwrap().unwrap();
        assert_eq!(access(&cred), grant.access_token);
    }
    tokio::task::yield_now().await;
    assert_eq!(server.stats().token_calls, 1);
    assert!(provider.session_state().is_authenticated());

    // Past the hard window, inside the backoff: the same retryable error, no new call.
    clock.advance(Duration::from_secs(295)); // 3595 s: 5 s before expiry
    let err = authorize(&provider)
        .take_ready()
        .expect("fails fast")
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("503"));
    assert_eq!(server.stats().token_calls, 1);

    // After the backoff (at most 600 s), one new attempt.
    clock.advance(Duration::from_secs(601));
    server.set_fault(None);
    let cred = authorize(&provider).await.unwrap();
    assert_ne!(access(&cred), grant.access_token);
    assert_eq!(server.stats().token_calls, 2);
    assert!(provider.session_state().is_authenticated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .build()
        .unwrap();
    server.push_fault(Fault::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "120"));
    let err = authorize(&provider).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    clock.advance(Duration::from_secs(100));
    assert!(authorize(&provider).take_ready().unwrap().is_err());
    assert_eq!(server.stats().token_calls, 1);
    clock.advance(Duration::from_secs(21));
    authorize(&provider).await.unwrap();
    assert_eq!(server.stats().token_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_never_answers_times_out_as_a_transient_error() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    server.push_fault(Fault::hang());
    let err = authorize(&provider).await.unwrap_err();
    assert!(err.is_transient() && !err.is_session_ended(), "{err:?}");
    assert!(provider.session_state() != SessionState::NoSession(SessionReason::Cleared));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_keeps_the_session_and_is_not_transient() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret("wrong-secret")
        .clock(Arc::new(clock.clone()))
        .refresh_token(grant.refresh_token.as_str())
        .store(store.clone(), NS)
        .build()
        .unwrap();
    let err = authorize(&provider).await.unwrap_err();
    assert!(!err.is_transient() && !err.is_session_ended(), "{err:?}");
    assert_eq!(err.oauth_error().map(|e| e.code()), Some("invalid_client"));
    assert!(err.to_string().contains("check the client configuration"));
    assert!(!matches!(
        provider.session_state(),
        SessionState::NoSession(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_rejects_every_fresh_token_causes_at_most_one_refresh_per_cooldown() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    let Unauthorized::Retry(second) = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &unauthorized())
        .await
        .unwrap()
    else {
        panic!("first 401 refreshes and retries")
    };
    for _ in 0..50 {
        let answer = provider
            .on_unauthorized(&second, StatusCode::UNAUTHORIZED, &unauthorized())
            .await
            .unwrap();
        assert!(matches!(answer, Unauthorized::GiveUp));
    }
    assert_eq!(
        server.stats().refresh_grants,
        2,
        "initial fetch + one 401 refresh"
    );
    clock.advance(Duration::from_secs(31));
    let answer = provider
        .on_unauthorized(&second, StatusCode::UNAUTHORIZED, &unauthorized())
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::Retry(_)));
    assert_eq!(server.stats().refresh_grants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_insufficient_scope_never_refresh() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .build()
        .unwrap();
    let cred = authorize(&provider).await.unwrap();
    let forbidden = provider
        .on_unauthorized(&cred, StatusCode::FORBIDDEN, &HeaderMap::new())
        .await
        .unwrap();
    assert!(matches!(forbidden, Unauthorized::GiveUp));
    let mut scope = HeaderMap::new();
    scope.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
    );
    let answer = provider
        .on_unauthorized(&cred, StatusCode::UNAUTHORIZED, &scope)
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::GiveUp));
    assert_eq!(server.stats().refresh_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_an_older_token_retries_with_the_current_one_without_refreshing() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .build()
        .unwrap();
    let old = authorize(&provider).await.unwrap();
    let new = match provider
        .on_unauthorized(&old, StatusCode::UNAUTHORIZED, &unauthorized())
        .await
        .unwrap()
    {
        Unauthorized::Retry(c) => c,
        other => panic!("{other:?}"),
    };
    let late = provider
        .on_unauthorized(&old, StatusCode::UNAUTHORIZED, &unauthorized())
        .await
        .unwrap();
    match late {
        Unauthorized::Retry(c) => assert_eq!(c.generation(), new.generation()),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.stats().refresh_grants, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_fetches_caches_and_refetches_on_expiry() {
    let server = TestServer::start_with(
        ServerConfig::default().access_token_lifetime(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let clock = ManualClock::new();
    let provider = OAuthProvider::client_credentials(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .scope("read")
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .build()
        .unwrap();
    let first = authorize(&provider).await.unwrap();
    for _ in 0..10 {
        let again = authorize(&provider).take_ready().unwrap().unwrap();
        assert_eq!(again.generation(), first.generation());
    }
    assert_eq!(server.stats().client_credentials_grants, 1);
    clock.advance(Duration::from_secs(3600));
    let renewed = authorize(&provider).await.unwrap();
    assert_ne!(renewed.generation(), first.generation());
    assert_eq!(server.stats().client_credentials_grants, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_found_in_the_store_is_used_by_the_first_request() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            refresh_token: Some(RefreshToken::new(grant.refresh_token.as_str())),
            ..StoredTokens::default()
        },
    ));
    let provider = builder(&server, &clock).store(store, NS).build().unwrap();
    assert_eq!(provider.session_state(), SessionState::Unknown);
    authorize(&provider).await.unwrap();
    assert_eq!(server.stats().refresh_grants, 1);
    assert!(provider.session_state().is_authenticated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_access_token_found_in_the_store_is_served_without_a_refresh() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::with(
        NS,
        StoredTokens {
            access_token: Some(AccessToken::new(grant.access_token.as_str())),
            refresh_token: Some(RefreshToken::new(grant.refresh_token.as_str())),
            expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(1800)),
            scope: None,
            issued_at: None,
            dpop_jkt: None,
        },
    ));
    let provider = builder(&server, &clock).store(store, NS).build().unwrap();
    let cred = authorize(&provider).await.unwrap();
    assert_eq!(access(&cred), grant.access_token);
    assert_eq!(server.stats().token_calls, 0);
    assert_eq!(
        provider.session_state(),
        SessionState::Authenticated(SessionReason::FoundToken)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_means_no_session_without_a_network_call() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let provider = builder(&server, &clock).build().unwrap();
    let err = authorize(&provider).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoSession {
                reason: SessionReason::NoToken
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.stats().token_calls, 0);
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::NoToken)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_session_forces_one_refresh_and_logout_revokes_and_clears() {
    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .revocation_url(server.revocation_url())
        .store(store.clone(), NS)
        .build()
        .unwrap();
    provider.verify_session().await.unwrap();
    assert_eq!(server.stats().refresh_grants, 1);
    assert!(store.get(NS).is_some());
    let token = provider.access_token().await.unwrap();
    assert_ne!(token.expose_secret(), grant.access_token);

    provider.logout().await.unwrap();
    assert_eq!(server.stats().revocations, 1);
    assert!(store.get(NS).is_none());
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Logout)
    );
    assert!(
        authorize(&provider)
            .take_ready()
            .unwrap()
            .unwrap_err()
            .is_session_ended()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_refresh_token_in_the_answer_keeps_the_old_one() {
    let server = TestServer::start_with(ServerConfig::default().rotate_refresh_tokens(false))
        .await
        .unwrap();
    let grant = server.issue_grant("alice", None);
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = builder(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .store(store.clone(), NS)
        .build()
        .unwrap();
    authorize(&provider).await.unwrap();
    assert_eq!(
        store
            .get(NS)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose_secret(),
        grant.refresh_token
    );
    provider.verify_session().await.unwrap();
    assert_eq!(server.stats().token_successes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_of_providers_and_errors_holds_no_secret() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let marker_rt = "MARKER-REFRESH-TOKEN";
    let marker_secret = "MARKER-CLIENT-SECRET";
    let marker_at = "MARKER-ACCESS-TOKEN";
    let b = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(marker_secret)
        .refresh_token(marker_rt)
        .access_token(marker_at, Some(Duration::from_secs(3600)))
        .clock(Arc::new(clock));
    let builder_debug = format!("{b:?}");
    let provider = b.build().unwrap();
    let cred = authorize(&provider).await.unwrap();
    let err = provider.verify_session().await.unwrap_err();
    let printed = [
        builder_debug,
        format!("{provider:?}"),
        format!("{cred:?}"),
        format!("{err:?} {err}"),
        format!("{:?}", provider.access_token().await),
    ];
    for p in printed {
        for m in [marker_rt, marker_secret, marker_at] {
            assert!(!p.contains(m), "{m} leaked in {p}");
        }
    }
}

/// Polls `cond` (on real time: it waits for a network round trip, not for an expiry).
async fn wait_until(cond: impl Fn() -> bool) {
    let calls = AtomicUsize::new(0);
    while !cond() {
        assert!(
            calls.fetch_add(1, Ordering::Relaxed) < 1000,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
