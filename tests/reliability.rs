//! Reliability and security against the testkit server: the token-endpoint fault matrix,
//! rejected fresh tokens, cancellation, secrets in logs and `Debug`, transport rules, and a
//! soak through both adapters.
//!
//! Expiry and backoff move with a `ManualClock`; sockets, provider timeouts and the soak run in
//! real time. The secret-leak test installs a global TRACE subscriber writing to a buffer and
//! runs every scenario itself, so nothing depends on the order tests run in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client_auth::{
    AccessToken, ApiKey, BoxError as CoreBoxError, ClientSecret, Credential, CustomerJwt,
    CustomerToken, Error, Generation, InvalidResponse, ManualClock, MemoryStore, OAuthProvider,
    OAuthProviderBuilder, RefreshToken, SecretString, SessionReason, SessionState, StaticToken,
    StoredTokens, SuppliedTransport, Tokens,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_reqwest::reqwest_middleware;
use client_auth_testkit::{Fault, ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, RedirectPolicy};
use http::{HeaderValue, StatusCode};
use serde_json::json;
use tower::{Layer, ServiceBuilder};
use tower_http::follow_redirect::FollowRedirectLayer;

#[path = "support/adapters.rs"]
mod adapters;

use adapters::{ADAPTERS, Adapter, AuthClient, Outcome, http_client};

// ---- providers -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenTransport {
    Reqwest,
    Tower,
}

const TRANSPORTS: [TokenTransport; 2] = [TokenTransport::Reqwest, TokenTransport::Tower];

/// The credentials a scenario uses: plain ones, or markers for the leak test.
#[derive(Debug, Clone)]
struct Secrets {
    client_secret: &'static str,
    refresh_token: &'static str,
    access_token: &'static str,
    rotated_refresh_token: &'static str,
}

const PLAIN: Secrets = Secrets {
    client_secret: "test-secret",
    refresh_token: "rt-initial",
    access_token: "at-canned",
    rotated_refresh_token: "rt-rotated",
};

fn oauth_builder(
    token_url: &str,
    client_secret: &str,
    clock: &ManualClock,
    transport: TokenTransport,
) -> OAuthProviderBuilder<SuppliedTransport> {
    OAuthProvider::refresh_token_grant(token_url)
        .client_id("test-client")
        .client_secret(client_secret)
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .transport(token_transport(transport))
}

/// The transport under test: reqwest's or tower's.
fn token_transport(transport: TokenTransport) -> Arc<dyn client_auth::TokenTransport> {
    adapters::token_transport(match transport {
        TokenTransport::Reqwest => Adapter::Reqwest,
        TokenTransport::Tower => Adapter::Tower,
    })
}

/// A provider for a grant the server issued, holding a fresh access token (1 h).
fn logged_in(server: &TestServer, clock: &ManualClock, store: Arc<MemoryStore>) -> OAuthProvider {
    let grant = server.issue_grant("alice", None);
    oauth_builder(
        &server.token_url(),
        &server.client_secret().unwrap(),
        clock,
        TokenTransport::Reqwest,
    )
    .refresh_token(grant.refresh_token.as_str())
    .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
    .store(store, "alice")
    .build()
    .unwrap()
}

/// A 200 token answer with these tokens.
fn token_answer(access_token: &str, refresh_token: &str, expires_in: serde_json::Value) -> Fault {
    Fault::status(StatusCode::OK).json(json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
}

/// `http://127.0.0.1:PORT/token` on a port nobody listens on.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/token")
}

// ---- the fault matrix ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Transient,
    SessionEnded,
    Neither,
    /// Not an error: the answer is usable as documented.
    Accepted,
}

fn class_of(e: &Error) -> Class {
    match (e.is_transient(), e.is_session_ended()) {
        (true, false) => Class::Transient,
        (false, true) => Class::SessionEnded,
        (false, false) => Class::Neither,
        (true, true) => panic!("an error in two classes: {e:?}"),
    }
}

enum Setup {
    Fault(Fault),
    Refused,
    /// A 307 to a second server's token endpoint.
    Redirect,
}

struct Case {
    name: &'static str,
    setup: Setup,
    class: Class,
    /// What the error must look like.
    expect: fn(&Error) -> bool,
    /// The provider's token-request timeout.
    timeout: Duration,
    /// The `Retry-After` the answer carries, in seconds.
    retry_after: Option<u64>,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const SHORT_TIMEOUT: Duration = Duration::from_millis(400);

fn cases(s: &Secrets) -> Vec<Case> {
    let ok_body =
        json!({"access_token": s.access_token, "token_type": "Bearer", "expires_in": 3600})
            .to_string();
    let with = |name, fault: Fault, class, expect: fn(&Error) -> bool| Case {
        name,
        setup: Setup::Fault(fault),
        class,
        expect,
        timeout: TIMEOUT,
        retry_after: None,
    };
    vec![
        with(
            "500",
            Fault::status(StatusCode::INTERNAL_SERVER_ERROR),
            Class::Transient,
            |e| matches!(e, Error::Unavailable { status, retry_after: None } if *status == 500),
        ),
        Case {
            retry_after: Some(40),
            ..with(
                "503 with Retry-After",
                Fault::status(StatusCode::SERVICE_UNAVAILABLE).header("retry-after", "40"),
                Class::Transient,
                |e| matches!(e, Error::Unavailable { status, retry_after: Some(d) } if *status == 503 && d.as_secs() == 40),
            )
        },
        Case {
            retry_after: Some(40),
            ..with(
                "429 with Retry-After",
                Fault::oauth_error(StatusCode::TOO_MANY_REQUESTS, "slow_down")
                    .header("retry-after", "40"),
                Class::Transient,
                |e| matches!(e, Error::Unavailable { status, retry_after: Some(d) } if *status == 429 && d.as_secs() == 40),
            )
        },
        Case {
            name: "connection refused",
            setup: Setup::Refused,
            class: Class::Transient,
            expect: |e| matches!(e, Error::Transport(_)),
            timeout: TIMEOUT,
            retry_after: None,
        },
        Case {
            timeout: SHORT_TIMEOUT,
            ..with("never answers", Fault::hang(), Class::Transient, |e| {
                matches!(e, Error::Transport(t) if t.kind() == client_auth::TransportErrorKind::Timeout)
            })
        },
        Case {
            name: "307 redirect",
            setup: Setup::Redirect,
            class: Class::Neither,
            expect: |e| matches!(e, Error::Redirect { status } if *status == 307),
            timeout: TIMEOUT,
            retry_after: None,
        },
        with(
            "malformed JSON",
            Fault::status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(r#"{"access_token": "#),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::NotJson)),
        ),
        with(
            "an HTML page",
            Fault::status(StatusCode::OK)
                .header("content-type", "text/html")
                .body("<!doctype html><html><body><h1>Sign in</h1></body></html>"),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::NotJson)),
        ),
        with(
            "a 10 MB body",
            Fault::status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Bytes::from(vec![b' '; 10 * 1024 * 1024])),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::TooLarge)),
        ),
        with(
            "no access_token",
            Fault::status(StatusCode::OK).json(json!({"token_type": "Bearer", "expires_in": 3600})),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::MissingAccessToken)),
        ),
        with(
            "token_type mac",
            Fault::status(StatusCode::OK)
                .json(json!({"access_token": s.access_token, "token_type": "mac"})),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::UnsupportedTokenType)),
        ),
        with(
            "negative expires_in",
            Fault::status(StatusCode::OK).json(
                json!({"access_token": s.access_token, "token_type": "Bearer", "expires_in": -5}),
            ),
            Class::Neither,
            |e| matches!(e, Error::InvalidResponse(InvalidResponse::InvalidExpiresIn)),
        ),
        with(
            "absurdly large expires_in (clamped to a year)",
            Fault::status(StatusCode::OK).json(
                json!({"access_token": s.access_token, "token_type": "Bearer", "expires_in": 1e300}),
            ),
            Class::Accepted,
            |_| false,
        ),
        with(
            "400 invalid_grant",
            Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            Class::SessionEnded,
            |e| matches!(e, Error::SessionEnded(end) if end.code() == "invalid_grant"),
        ),
        with(
            "400 invalid_scope",
            Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_scope"),
            Class::Neither,
            |e| matches!(e, Error::Rejected(o) if o.code() == "invalid_scope"),
        ),
        with(
            "400 unknown error code",
            Fault::oauth_error(StatusCode::BAD_REQUEST, "totally_new_error"),
            Class::Neither,
            |e| matches!(e, Error::Rejected(o) if o.code() == "totally_new_error"),
        ),
        with(
            "401 invalid_client",
            Fault::oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")
                .header("www-authenticate", "Basic realm=\"token\""),
            Class::Neither,
            |e| matches!(e, Error::Rejected(o) if o.code() == "invalid_client" && o.status() == 401),
        ),
        Case {
            timeout: SHORT_TIMEOUT,
            ..with(
                "a body trickled past the timeout",
                Fault::status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(ok_body)
                    .trickle(Duration::from_millis(50)),
                Class::Transient,
                |e| matches!(e, Error::Transport(t) if t.kind() == client_auth::TransportErrorKind::Timeout),
            )
        },
    ]
}

/// What one case did, for the report.
#[derive(Debug)]
struct CaseReport {
    error: String,
    class: Class,
    calls_during_backoff: u64,
    took: Duration,
}

const CALLERS_DURING_BACKOFF: usize = 100;

/// Runs one case: the error and its class, nothing hammered during the backoff, `Retry-After`
/// honoured, the session kept (a canned success afterwards works) or ended.
async fn run_case(case: &Case, transport: TokenTransport, s: &Secrets) -> CaseReport {
    let server = TestServer::start_with(
        ServerConfig::default().client("test-client", Some(s.client_secret)),
    )
    .await
    .unwrap();
    let target = TestServer::start_with(
        ServerConfig::default().client("test-client", Some(s.client_secret)),
    )
    .await
    .unwrap();
    let token_url = match &case.setup {
        Setup::Fault(fault) => {
            server.set_fault(Some(fault.clone()));
            server.token_url()
        }
        Setup::Redirect => {
            server.set_fault(Some(
                Fault::status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", target.token_url()),
            ));
            server.token_url()
        }
        Setup::Refused => refused_url(),
    };
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = oauth_builder(&token_url, s.client_secret, &clock, transport)
        .refresh_token(s.refresh_token)
        .store(store.clone(), "ns")
        .timeout(case.timeout)
        .build()
        .unwrap();
    let what = format!("{} ({transport:?} transport)", case.name);

    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(15), provider.access_token())
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within 15 s"));
    let took = started.elapsed();
    let calls = server.stats().token_calls;

    if case.class == Class::Accepted {
        let token = first.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(token.expose_secret(), s.access_token);
        // Clamped to a year: still fresh 300 days later, no new call.
        clock.advance(Duration::from_secs(300 * 24 * 3600));
        provider.access_token().await.unwrap();
        assert_eq!(server.stats().token_calls, 1, "{what}");
        return CaseReport {
            error: "none (token accepted, lifetime clamped)".into(),
            class: Class::Accepted,
            calls_during_backoff: 0,
            took,
        };
    }

    let error = first.expect_err(&what);
    assert!((case.expect)(&error), "{what}: unexpected error {error:?}");
    assert_eq!(class_of(&error), case.class, "{what}: {error:?}");
    if !matches!(case.setup, Setup::Refused) {
        assert_eq!(calls, 1, "{what}: one token request");
    }
    if let Setup::Redirect = case.setup {
        assert_eq!(
            target.stats().token_calls,
            0,
            "{what}: the redirect was followed"
        );
        assert!(target.seen_requests().is_empty(), "{what}");
    }

    // Many callers keep asking: nobody reaches the endpoint until the backoff is over (or ever,
    // once the session ended).
    let asks: Vec<_> = (0..CALLERS_DURING_BACKOFF)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.access_token().await })
        })
        .collect();
    for ask in asks {
        let e = ask.await.unwrap().expect_err(&what);
        assert_eq!(class_of(&e), case.class, "{what}: {e:?}");
    }
    let calls_during_backoff = server.stats().token_calls - calls;
    if !matches!(case.setup, Setup::Refused) {
        assert_eq!(calls_during_backoff, 0, "{what}: the endpoint was hammered");
    }

    if case.class == Class::SessionEnded {
        assert_eq!(
            provider.session_state(),
            SessionState::NoSession(SessionReason::Invalid("invalid_grant".into())),
            "{what}"
        );
        assert!(store.get("ns").is_none(), "{what}: the store was cleared");
        clock.advance(Duration::from_secs(3600));
        server.set_fault(Some(token_answer(
            s.access_token,
            s.rotated_refresh_token,
            json!(3600),
        )));
        let later = provider.access_token().await.expect_err(&what);
        assert!(
            matches!(later, Error::NoSession { .. }),
            "{what}: {later:?}"
        );
        assert_eq!(
            server.stats().token_calls,
            calls,
            "{what}: no network after the end"
        );
        return CaseReport {
            error: format!("{error}"),
            class: case.class,
            calls_during_backoff,
            took,
        };
    }

    // The session is kept.
    assert!(
        !matches!(provider.session_state(), SessionState::NoSession(_)),
        "{what}: {:?}",
        provider.session_state()
    );
    if let Some(secs) = case.retry_after {
        // Retry-After wins over the (shorter) exponential backoff.
        clock.advance(Duration::from_secs(secs - 1));
        let e = provider.access_token().await.expect_err(&what);
        assert_eq!(class_of(&e), Class::Transient);
        assert_eq!(
            server.stats().token_calls,
            calls,
            "{what}: Retry-After not honoured"
        );
    }
    if matches!(case.setup, Setup::Refused) {
        return CaseReport {
            error: format!("{error}"),
            class: case.class,
            calls_during_backoff,
            took,
        };
    }
    // After the backoff, a good answer is used: the refresh token was kept.
    server.set_fault(Some(token_answer(
        s.access_token,
        s.rotated_refresh_token,
        json!(3600),
    )));
    clock.advance(Duration::from_secs(61));
    let token = provider
        .access_token()
        .await
        .unwrap_or_else(|e| panic!("{what}: no recovery: {e:?}"));
    assert_eq!(token.expose_secret(), s.access_token);
    assert_eq!(server.stats().token_calls, calls + 1, "{what}");
    assert_eq!(
        store
            .get("ns")
            .and_then(|t| t.refresh_token)
            .map(|t| t.expose_secret().to_owned())
            .as_deref(),
        Some(s.rotated_refresh_token),
        "{what}"
    );
    CaseReport {
        error: format!("{error}"),
        class: case.class,
        calls_during_backoff,
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_fault_matrix() {
    let mut table = BTreeMap::new();
    for transport in TRANSPORTS {
        for case in cases(&PLAIN) {
            let report = run_case(&case, transport, &PLAIN).await;
            table.insert(format!("{:?} {}", transport, case.name), report);
        }
    }
    for (name, r) in &table {
        println!(
            "fault matrix | {name} | {:?} | {} | calls during backoff by {CALLERS_DURING_BACKOFF} callers: {} | {} ms",
            r.class,
            r.error,
            r.calls_during_backoff,
            r.took.as_millis()
        );
    }
}

// ---- rejected fresh tokens ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_fresh_tokens_refresh_at_most_once_per_cooldown() {
    for adapter in ADAPTERS {
        let server = TestServer::start().await.unwrap();
        let clock = ManualClock::new();
        let provider = logged_in(&server, &clock, Arc::new(MemoryStore::new()));
        let client = AuthClient::new(adapter, provider, &server.base_url());
        server.reject_all_tokens(true);

        let mut statuses = Vec::new();
        for round in 0..2 {
            for _ in 0..10 {
                statuses.push(client.get(&server.resource_url()).await.status());
            }
            let burst: Vec<_> = (0..20)
                .map(|_| {
                    let (client, url) = (client.clone(), server.resource_url());
                    tokio::spawn(async move { client.get(&url).await.status() })
                })
                .collect();
            for b in burst {
                statuses.push(b.await.unwrap());
            }
            assert_eq!(
                server.stats().refresh_grants,
                round + 1,
                "{adapter:?}: one refresh per cooldown"
            );
            // Past the 30 s cooldown: one more refresh is allowed.
            clock.advance(Duration::from_secs(31));
        }
        assert!(
            statuses
                .iter()
                .all(|s| *s == Some(StatusCode::UNAUTHORIZED)),
            "{adapter:?}: every request gets the 401: {statuses:?}"
        );
        println!(
            "rejected fresh tokens {adapter:?}: {} requests, all 401; {} refreshes over 2 cooldowns",
            statuses.len(),
            server.stats().refresh_grants
        );
    }
}

// ---- cancellation -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_does_not_cancel_its_refresh() {
    for adapter in ADAPTERS {
        // Rotation is on (the default); each token answer takes 300 ms.
        let server =
            TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(300)))
                .await
                .unwrap();
        let clock = ManualClock::new();
        let store = Arc::new(MemoryStore::new());
        let grant = server.issue_grant("alice", None);
        let provider = oauth_builder(
            &server.token_url(),
            &server.client_secret().unwrap(),
            &clock,
            TokenTransport::Reqwest,
        )
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(60)))
        .store(store.clone(), "alice")
        .build()
        .unwrap();
        let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
        clock.advance(Duration::from_secs(61));

        // The first request starts the refresh...
        let starter = {
            let (client, url) = (client.clone(), server.resource_url());
            tokio::spawn(async move { client.get(&url).await })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().token_calls == 0 {
            assert!(Instant::now() < deadline, "{adapter:?}: no refresh started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...others join it...
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (client, url) = (client.clone(), server.resource_url());
                tokio::spawn(async move { client.get(&url).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...and the first is dropped.
        starter.abort();
        assert!(starter.await.unwrap_err().is_cancelled());

        for w in waiters {
            let outcome = w.await.unwrap();
            assert_eq!(
                outcome.status(),
                Some(StatusCode::OK),
                "{adapter:?}: {outcome:?}"
            );
        }
        let stats = server.stats();
        assert_eq!(stats.refresh_grants, 1, "{adapter:?}: {stats:?}");
        let stored = store.get("alice").unwrap().refresh_token.unwrap();
        assert_ne!(
            stored.expose_secret(),
            grant.refresh_token,
            "{adapter:?}: the rotated refresh token was stored"
        );
        // The stored token is the live one: reusing the old one would revoke the grant.
        provider.verify_session().await.unwrap();
        let stats = server.stats();
        assert_eq!(stats.refresh_grants, 2);
        assert!(stats.token_errors.is_empty(), "{adapter:?}: {stats:?}");
    }
}

// ---- transport rules --------------------------------------------------------------------------

fn authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|s| s.authorization)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_where_they_should() {
    let key = "transport-rule-key";
    let a = TestServer::start_with(ServerConfig::default().api_key(key))
        .await
        .unwrap();
    let b = TestServer::start_with(ServerConfig::default().api_key(key))
        .await
        .unwrap();
    let provider = StaticToken::api_key(key).unwrap();

    // No credential to http:// by default: naming an http origin without opting in fails...
    assert!(matches!(
        AuthorizeLayer::builder(provider.clone())
            .allow_origin(a.base_url())
            .build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        AuthorizationMiddleware::builder(provider.clone())
            .allow_origin(a.base_url())
            .build(),
        Err(Error::Config(_))
    ));
    // ...and any_https_origin() does not cover http.
    let tower_any = AuthClient::tower(
        AuthorizeLayer::builder(provider.clone())
            .any_https_origin()
            .build()
            .unwrap()
            .layer(http_client()),
    );
    let reqwest_any = AuthClient::Reqwest(
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(
                AuthorizationMiddleware::builder(provider.clone())
                    .any_https_origin()
                    .build()
                    .unwrap(),
            )
            .build(),
    );
    for client in [&tower_any, &reqwest_any] {
        assert_eq!(
            client.get(&a.resource_url()).await.status(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
    assert_eq!(authorizations(&a), [None, None], "nothing sent over http");

    // None to an unnamed origin; none re-added on a cross-origin redirect.
    for adapter in ADAPTERS {
        let client = AuthClient::new(adapter, provider.clone(), &a.base_url());
        assert_eq!(
            client.get(&b.resource_url()).await.status(),
            Some(StatusCode::UNAUTHORIZED),
            "{adapter:?}"
        );
        let hop = a.url(&format!("/redirect?to={}&status=307", b.resource_url()));
        // reqwest follows the redirect (and strips the credential); a bare hyper client under
        // `Authorize` does not follow redirects at all.
        let expected = match adapter {
            Adapter::Reqwest => StatusCode::UNAUTHORIZED,
            Adapter::Tower => StatusCode::TEMPORARY_REDIRECT,
        };
        assert_eq!(
            client.get(&hop).await.status(),
            Some(expected),
            "{adapter:?}: the redirect target got no credential"
        );
    }
    // The supported placement: Authorize outside tower-http's FollowRedirect with
    // RedirectPolicy (the credential stays on same-origin hops only).
    let follow = AuthClient::tower(
        ServiceBuilder::new()
            .layer(
                AuthorizeLayer::builder(provider.clone())
                    .allow_origin(a.base_url())
                    .allow_http(true)
                    .build()
                    .unwrap(),
            )
            .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
            .service(http_client()),
    );
    let hop = a.url(&format!("/redirect?to={}&status=307", b.resource_url()));
    assert_eq!(
        follow.get(&hop).await.status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // A same-origin hop through FollowRedirect keeps the credential.
    let same = a.url(&format!("/redirect?to={}&status=302", a.resource_url()));
    assert_eq!(follow.get(&same).await.status(), Some(StatusCode::OK));

    let stamped = Some(format!("Token {key}"));
    assert_eq!(
        authorizations(&b),
        [None, None, None, None],
        "B never saw the key (unnamed origin through both adapters, reqwest's redirect, FollowRedirect)"
    );
    let on_a = authorizations(&a);
    assert_eq!(
        on_a[2..],
        [
            stamped.clone(),
            stamped.clone(),
            stamped.clone(),
            stamped.clone(),
            stamped.clone()
        ],
        "A got the key on every first hop: {on_a:?}"
    );
}

// ---- secrets never leak -----------------------------------------------------------------------

const MARK: &str = "LEAKCHECK";

const MARKED: Secrets = Secrets {
    client_secret: "sec-LEAKCHECK-client-secret",
    refresh_token: "rt-LEAKCHECK-refresh-token",
    access_token: "at-LEAKCHECK-access-token",
    rotated_refresh_token: "rt-LEAKCHECK-rotated",
};
const MARKED_KEY: &str = "key-LEAKCHECK-api-key";
const MARKED_JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJMRUFLQ0hFQ0sifQ.LEAKCHECK-customer-jwt";

static CAPTURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Only while the leak test runs: the other tests (the soak) must not fill memory.
        if CAPTURING.load(Ordering::Relaxed) {
            self.0.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> &'static Buffer {
    static CAPTURE: OnceLock<Buffer> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

/// Everything that might contain a marker: as written, and as the Basic header carries it.
fn leaks(text: &str) -> bool {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("test-client:{}", MARKED.client_secret));
    text.contains(MARK) || text.contains(&basic) || text.contains("TEVBS0NIRUNL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_debug() {
    let buffer = capture();
    let mut shown: Vec<String> = Vec::new();
    let mut show = |what: &str, text: String| shown.push(format!("{what}: {text}"));

    // Every fault of the matrix, with marked credentials, through both transports.
    for transport in TRANSPORTS {
        for case in cases(&MARKED) {
            let report = run_case(&case, transport, &MARKED).await;
            show(case.name, format!("{report:?}"));
        }
    }

    // A marked access token through both adapters: served, rejected (401), refreshed through
    // a canned answer, rejected again, then the session ends on invalid_grant.
    for adapter in ADAPTERS {
        let server = TestServer::start_with(
            ServerConfig::default().client("test-client", Some(MARKED.client_secret)),
        )
        .await
        .unwrap();
        let clock = ManualClock::new();
        let store = Arc::new(MemoryStore::new());
        let provider = oauth_builder(
            &server.token_url(),
            MARKED.client_secret,
            &clock,
            TokenTransport::Tower,
        )
        .refresh_token(MARKED.refresh_token)
        .access_token(MARKED.access_token, Some(Duration::from_secs(3600)))
        .store(store.clone(), "ns")
        .build()
        .unwrap();
        show("provider", format!("{provider:?} {provider:#?}"));
        show("session", format!("{:?}", provider.session_state()));
        show("stored", format!("{:?}", store.get("ns")));
        server.push_fault(token_answer(
            "at-LEAKCHECK-second",
            MARKED.rotated_refresh_token,
            json!(3600),
        ));
        let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
        let outcome = client.get(&server.resource_url()).await;
        show("outcome 1", format!("{outcome:?}"));
        // The cooldown is over; the next 401 refreshes with the rotated marker token, which the
        // server does not know: invalid_grant.
        clock.advance(Duration::from_secs(31));
        let outcome = client.get(&server.resource_url()).await;
        show("outcome 2", format!("{outcome:?}"));
        if let Outcome::Auth(e) = &outcome {
            show("error", format!("{e} {e:?} {e:#?}"));
        }
        assert!(
            matches!(outcome, Outcome::Auth(ref e) if e.is_session_ended()),
            "{outcome:?}"
        );
        show("stored after", format!("{:?}", store.get("ns")));
        show("provider after", format!("{provider:?}"));

        // The API key and the customer JWT.
        let key_server = TestServer::start_with(ServerConfig::default().api_key(MARKED_KEY))
            .await
            .unwrap();
        let key = StaticToken::api_key(MARKED_KEY).unwrap();
        show("static", format!("{key:?} {key:#?}"));
        let client = AuthClient::new(adapter, key, &key_server.base_url());
        assert_eq!(
            client.get(&key_server.resource_url()).await.status(),
            Some(StatusCode::OK)
        );
        let wrong = AuthClient::new(
            adapter,
            StaticToken::api_key("key-LEAKCHECK-wrong").unwrap(),
            &key_server.base_url(),
        );
        assert_eq!(
            wrong.get(&key_server.resource_url()).await.status(),
            Some(StatusCode::UNAUTHORIZED)
        );
        let customer =
            CustomerToken::from_fn(|| async { Ok::<_, CoreBoxError>(Some(MARKED_JWT.to_owned())) });
        show("customer", format!("{customer:?} {customer:#?}"));
        let client = AuthClient::new(adapter, customer.clone(), &key_server.base_url());
        let outcome = client.get(&key_server.resource_url()).await;
        assert_eq!(outcome.status(), Some(StatusCode::UNAUTHORIZED));
        show("customer after", format!("{customer:?}"));
    }

    // Debug of every public type that can hold a secret.
    let credential = Credential::new(
        HeaderValue::from_str(&format!("Bearer {}", MARKED.access_token)).unwrap(),
        Generation::new(1),
    );
    let stored = StoredTokens {
        access_token: Some(AccessToken::new(MARKED.access_token)),
        refresh_token: Some(RefreshToken::new(MARKED.refresh_token)),
        expires_at: None,
        scope: None,
        issued_at: None,
        dpop_jkt: None,
    };
    let memory = MemoryStore::with("ns", stored.clone());
    let tokens = Tokens {
        access_token: Some(AccessToken::new(MARKED.access_token)),
        refresh_token: Some(RefreshToken::new(MARKED.refresh_token)),
        expires_in: None,
        lifetime: None,
        dpop_bound: false,
    };
    let builder = OAuthProvider::refresh_token_grant("http://127.0.0.1:9/token")
        .client_id("test-client")
        .client_secret(MARKED.client_secret)
        .refresh_token(MARKED.refresh_token)
        .access_token(MARKED.access_token, None);
    show("builder", format!("{builder:?}"));
    let provider = builder.build().unwrap();
    let layer = AuthorizeLayer::builder(provider.clone())
        .allow_origin("https://api.example.com")
        .build()
        .unwrap();
    let service = layer.layer(http_client());
    let middleware = AuthorizationMiddleware::builder(provider.clone())
        .allow_origin("https://api.example.com")
        .build()
        .unwrap();
    for (what, text) in [
        ("credential", format!("{credential:?} {credential:#?}")),
        ("header value", format!("{:?}", credential.header_value())),
        ("stored", format!("{stored:?}")),
        ("memory store", format!("{memory:?}")),
        ("tokens", format!("{tokens:?}")),
        (
            "access token",
            format!("{:?}", AccessToken::new(MARKED.access_token)),
        ),
        (
            "refresh token",
            format!("{:?}", RefreshToken::new(MARKED.refresh_token)),
        ),
        (
            "client secret",
            format!("{:?}", ClientSecret::new(MARKED.client_secret)),
        ),
        ("api key", format!("{:?}", ApiKey::new(MARKED_KEY))),
        (
            "customer jwt",
            format!("{:?}", CustomerJwt::new(MARKED_JWT)),
        ),
        (
            "secret string",
            format!("{:?}", SecretString::new(MARKED_KEY)),
        ),
        ("provider", format!("{provider:#?}")),
        ("layer", format!("{layer:?}")),
        ("service", format!("{service:?}")),
        ("middleware", format!("{middleware:?}")),
    ] {
        show(what, text);
    }

    let mut found = Vec::new();
    for line in &shown {
        if leaks(line) {
            found.push(line.clone());
        }
    }
    CAPTURING.store(false, Ordering::Relaxed);
    let captured = std::mem::take(&mut *buffer.0.lock().unwrap());
    let logs = String::from_utf8_lossy(&captured).into_owned();
    let log_lines = logs.lines().count();
    for line in logs.lines() {
        if leaks(line) {
            found.push(format!("log: {line}"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    assert!(
        log_lines > 50,
        "the TRACE capture saw too little: {log_lines} lines"
    );
    println!(
        "secrets: {} Debug/Display strings and {log_lines} TRACE log lines checked, no marker",
        shown.len()
    );
}

// ---- soak -------------------------------------------------------------------------------------

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const SOAK_CALLERS: usize = 32;
const SOAK_LIFETIME: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct SoakResult {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

async fn soak_one(adapter: Adapter, server: Arc<TestServer>, until: Instant) -> Arc<SoakResult> {
    let grant = server.issue_grant("alice", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .jitter(0.0)
        .transport(adapters::token_transport(adapter))
        .build()
        .unwrap();
    let client = AuthClient::new(adapter, provider, &server.base_url());
    let result = Arc::new(SoakResult::default());
    let tasks: Vec<_> = (0..SOAK_CALLERS)
        .map(|i| {
            let (client, url, result) =
                (client.clone(), server.resource_url(), Arc::clone(&result));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 3)).await;
                while Instant::now() < until {
                    match client.get(&url).await {
                        Outcome::Status(StatusCode::OK) => {
                            result.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            result.failed.fetch_add(1, Ordering::Relaxed);
                            let kind: String = format!("{other:?}").chars().take(100).collect();
                            *result.failures.lock().unwrap().entry(kind).or_default() += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    result
}

/// Both adapters at once, each against its own testkit server issuing 2 s access tokens, for
/// 30 lifetimes (60 s; 10 minutes with `CLIENT_AUTH_SOAK=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_through_both_adapters() {
    let long = std::env::var("CLIENT_AUTH_SOAK").is_ok_and(|v| v == "1");
    let duration = if long {
        Duration::from_secs(600)
    } else {
        SOAK_LIFETIME * 30
    };
    // The default soft window of a 2 s token is 1 s: a refresh is due every second.
    let every = SOAK_LIFETIME - Duration::from_secs(1);
    let servers: Vec<_> = futures_join(ADAPTERS.map(|_| async {
        Arc::new(
            TestServer::start_with(ServerConfig::default().access_token_lifetime(SOAK_LIFETIME))
                .await
                .unwrap(),
        )
    }))
    .await;
    let started = Instant::now();
    let until = started + duration;
    let runs: Vec<_> = ADAPTERS
        .iter()
        .zip(&servers)
        .map(|(adapter, server)| tokio::spawn(soak_one(*adapter, Arc::clone(server), until)))
        .collect();
    // The testkit remembers every request it saw; drain its counters every second into totals
    // so that its own bookkeeping does not count as our memory.
    let mut totals = [SoakTotals::default(), SoakTotals::default()];
    let mut rss_start = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (server, total) in servers.iter().zip(&mut totals) {
            total.add(server);
        }
        // RSS once the connections, tasks and first tokens exist, and at the end.
        if rss_start.is_none() && started.elapsed() >= Duration::from_secs(5) {
            rss_start = Some(rss_kib());
        }
    }
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.unwrap());
    }
    for (server, total) in servers.iter().zip(&mut totals) {
        total.add(server);
    }
    let rss_end = rss_kib();
    let rss_start = rss_start.unwrap_or(rss_end);
    let elapsed = started.elapsed();
    let predicted = duration.as_secs_f64() / every.as_secs_f64();
    println!(
        "soak: {:.0} s, {SOAK_CALLERS} callers per adapter, RSS {rss_start} KiB after warm-up -> {rss_end} KiB at the end ({:+} KiB)",
        elapsed.as_secs_f64(),
        rss_end as i64 - rss_start as i64
    );
    for ((adapter, stats), result) in ADAPTERS.iter().zip(&totals).zip(&results) {
        println!(
            "soak {adapter:?}: {} ok, {} failed {:?}, {} refreshes (predicted {predicted:.1}), max refreshes in flight {}, token errors {:?}, resource {:?}",
            result.ok.load(Ordering::Relaxed),
            result.failed.load(Ordering::Relaxed),
            result.failures.lock().unwrap(),
            stats.refresh_grants,
            stats.max_concurrent_token_requests,
            stats.token_errors,
            stats.resource_calls,
        );
    }
    for ((adapter, stats), result) in ADAPTERS.iter().zip(&totals).zip(&results) {
        assert_eq!(result.failed.load(Ordering::Relaxed), 0, "{adapter:?}");
        assert!(result.ok.load(Ordering::Relaxed) > 1000, "{adapter:?}");
        assert!(stats.token_errors.is_empty(), "{adapter:?}: {stats:?}");
        assert_eq!(stats.max_concurrent_token_requests, 1, "{adapter:?}");
        assert!(
            (stats.refresh_grants as f64 - predicted).abs() <= 1.0,
            "{adapter:?}: {} refreshes, predicted {predicted:.1}",
            stats.refresh_grants
        );
    }
    // Generous: flat memory means no growth with the number of requests or refreshes.
    assert!(
        rss_end < rss_start + 32 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

/// Testkit counters summed over resets.
#[derive(Debug, Default)]
struct SoakTotals {
    refresh_grants: u64,
    max_concurrent_token_requests: u64,
    token_errors: BTreeMap<String, u64>,
    resource_calls: BTreeMap<u16, u64>,
}

impl SoakTotals {
    fn add(&mut self, server: &TestServer) {
        let stats = server.stats();
        server.reset_stats();
        self.refresh_grants += stats.refresh_grants;
        self.max_concurrent_token_requests = self
            .max_concurrent_token_requests
            .max(stats.max_concurrent_token_requests);
        for (k, v) in stats.token_errors {
            *self.token_errors.entry(k).or_default() += v;
        }
        for (k, v) in stats.resource_calls {
            *self.resource_calls.entry(k).or_default() += v;
        }
    }
}

async fn futures_join<F: std::future::Future>(futures: [F; 2]) -> Vec<F::Output> {
    let [a, b] = futures;
    let (a, b) = tokio::join!(a, b);
    vec![a, b]
}

// ---- transports agree ------------------------------------------------------------------------

/// Both token-endpoint transports classify a refused connection as `Connect` (the tower one
/// used to say `Other` for every failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_transport_reports_a_refused_connection_as_connect() {
    for transport in TRANSPORTS {
        let provider = oauth_builder(
            &refused_url(),
            "test-secret",
            &ManualClock::new(),
            transport,
        )
        .refresh_token("rt")
        .build()
        .unwrap();
        match provider.access_token().await {
            Err(Error::Transport(t)) => assert_eq!(
                t.kind(),
                client_auth::TransportErrorKind::Connect,
                "{transport:?}"
            ),
            other => panic!("{transport:?}: {other:?}"),
        }
    }
}
