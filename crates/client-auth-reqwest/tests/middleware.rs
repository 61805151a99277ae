//! Behaviour of `AuthorizationMiddleware` against the testkit server, over real loopback
//! sockets. Expiry moves with a `ManualClock`; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Generation, ManualClock, OAuthProvider,
    RequestView, SessionState, StaticToken, Unauthorized, UnauthorizedFuture,
};
use client_auth_reqwest::reqwest_middleware::{
    self, ClientBuilder, ClientWithMiddleware, Middleware, Next, reqwest,
};
use client_auth_reqwest::{AuthorizationControl, AuthorizationMiddleware};
use client_auth_testkit::{ServerConfig, TestServer};
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderValue, StatusCode};
use reqwest::Body;
use serde_json::Value;

const KEY: &str = "SECRET-KEY";

fn client<P: AuthorizationProvider>(
    middleware: AuthorizationMiddleware<P>,
) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

/// A middleware for `server`'s origin (plain http on loopback).
fn middleware_for<P>(server: &TestServer, provider: P) -> AuthorizationMiddleware<P> {
    AuthorizationMiddleware::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .build()
        .unwrap()
}

/// An OAuth provider holding a fresh grant of `server`: a valid access token (60 s) and its
/// refresh token.
fn oauth(
    server: &TestServer,
    clock: &ManualClock,
) -> (OAuthProvider, client_auth_testkit::IssuedTokens) {
    let grant = server.issue_grant("alice", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(60)))
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .build()
        .unwrap();
    (provider, grant)
}

/// A middleware placed after ours: records what reaches the transport on each attempt (the
/// body bytes and a marker extension), so a test can see both the first send and the retry.
#[derive(Clone, Default)]
struct Recorder {
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    body: Option<Vec<u8>>,
    marker: Option<Marker>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker(&'static str);

#[async_trait::async_trait]
impl Middleware for Recorder {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.attempts.lock().unwrap().push(Attempt {
            body: req.body().and_then(Body::as_bytes).map(<[u8]>::to_vec),
            marker: extensions.get::<Marker>().cloned(),
        });
        next.run(req, extensions).await
    }
}

fn calls(server: &TestServer) -> BTreeMap<u16, u64> {
    server.stats().resource_calls
}

fn statuses(pairs: &[(u16, u64)]) -> BTreeMap<u16, u64> {
    pairs.iter().copied().collect()
}

/// `server`'s `/redirect?to=target&status=307`.
fn redirect_to(server: &TestServer, target: &str) -> reqwest::Url {
    reqwest::Url::parse_with_params(
        &server.url("/redirect"),
        [("to", target), ("status", "307")],
    )
    .unwrap()
}

fn seen_authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect()
}

#[tokio::test]
async fn a_fresh_credential_is_stamped_on_requests_to_an_allowed_origin() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let client = client(middleware_for(&server, StaticToken::api_key(KEY).unwrap()));

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen_authorizations(&server), [Some(format!("Token {KEY}"))]);
}

#[tokio::test]
async fn a_cached_access_token_is_stamped_without_a_token_request() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen_authorizations(&server),
        [Some(format!("Bearer {}", grant.access_token))]
    );
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_before_the_request_is_sent() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));
    clock.advance(Duration::from_secs(61));

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
    assert_eq!(calls(&server), statuses(&[(200, 1)]), "no 401 on the way");
    let seen = seen_authorizations(&server);
    assert_ne!(seen[0], Some(format!("Bearer {}", grant.access_token)));
}

#[tokio::test]
async fn a_static_key_401_is_returned_without_a_retry() {
    // The server knows no API key: every request with one is a 401.
    let server = TestServer::start().await.unwrap();
    let client = client(middleware_for(
        &server,
        StaticToken::api_key("unknown").unwrap(),
    ));

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls(&server), statuses(&[(401, 1)]));
}

#[tokio::test]
async fn a_revoked_access_token_is_refreshed_once_and_the_post_is_retried_with_its_body() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let recorder = Recorder::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(middleware_for(&server, provider))
        .with(recorder.clone())
        .build();
    server.revoke_access_token(&grant.access_token);

    let response = client
        .post(server.url("/api/echo"))
        .body("the body, byte for byte")
        .with_extension(Marker("kept"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["body"], "the body, byte for byte");
    let stats = server.stats();
    assert_eq!(stats.token_calls, 1, "one refresh: {stats:?}");
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.resource_calls, statuses(&[(200, 1), (401, 1)]));
    let seen = server.seen_requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.method == "POST" && r.path_and_query == "/api/echo")
    );
    assert_eq!(
        seen[0].authorization,
        Some(format!("Bearer {}", grant.access_token))
    );
    let retried = seen[1].authorization.as_deref().unwrap();
    assert!(retried.starts_with("Bearer ") && retried != seen[0].authorization.as_deref().unwrap());
    // Both attempts went down the rest of the chain with the whole body and the extensions.
    let attempt = Attempt {
        body: Some(b"the body, byte for byte".to_vec()),
        marker: Some(Marker("kept")),
    };
    assert_eq!(
        *recorder.attempts.lock().unwrap(),
        [attempt.clone(), attempt]
    );
}

#[tokio::test]
async fn a_second_401_is_returned_after_the_one_retry() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));
    server.reject_all_tokens(true);

    let response = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        calls(&server),
        statuses(&[(401, 2)]),
        "sent twice, never a third time"
    );
    assert_eq!(server.stats().refresh_grants, 1);
}

#[tokio::test]
async fn forbidden_and_insufficient_scope_are_returned_untouched() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));

    let forbidden = client
        .get(server.url("/api/forbidden"))
        .send()
        .await
        .unwrap();
    let scope = client.get(server.url("/api/scope")).send().await.unwrap();

    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(scope.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        scope.headers()[http::header::WWW_AUTHENTICATE],
        "Bearer error=\"insufficient_scope\""
    );
    assert_eq!(calls(&server), statuses(&[(403, 2)]));
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test]
async fn a_caller_set_authorization_is_kept_and_its_401_returned_unchanged() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));

    let response = client
        .get(server.resource_url())
        .header(AUTHORIZATION, "Bearer the-callers-own")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        seen_authorizations(&server),
        [Some("Bearer the-callers-own".to_owned())]
    );
    assert_eq!(calls(&server), statuses(&[(401, 1)]));
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test]
async fn an_empty_or_scheme_only_caller_authorization_is_replaced_by_the_credential() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));

    // What an SDK configured with an empty key sends.
    for blank in ["Bearer ", "Bearer", ""] {
        let response = client
            .get(server.resource_url())
            .header(AUTHORIZATION, blank)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{blank:?}");
    }

    let ours = Some(format!("Bearer {}", grant.access_token));
    assert_eq!(
        seen_authorizations(&server),
        [ours.clone(), ours.clone(), ours]
    );
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test]
async fn an_origin_not_named_gets_no_authorization() {
    let api = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let elsewhere = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let client = client(middleware_for(&api, StaticToken::api_key(KEY).unwrap()));

    let response = client.get(elsewhere.resource_url()).send().await.unwrap();
    client.get(api.resource_url()).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen_authorizations(&elsewhere), [None]);
    assert_eq!(seen_authorizations(&api), [Some(format!("Token {KEY}"))]);
}

#[tokio::test]
async fn a_plain_http_origin_is_refused_at_build_without_allow_http() {
    let server = TestServer::start().await.unwrap();

    let refused = AuthorizationMiddleware::builder(StaticToken::api_key(KEY).unwrap())
        .allow_origin(server.base_url())
        .build();
    let allowed = AuthorizationMiddleware::builder(StaticToken::api_key(KEY).unwrap())
        .allow_origin(server.base_url())
        .allow_http(true)
        .build();

    assert!(
        matches!(refused, Err(client_auth::Error::Config(_))),
        "{refused:?}"
    );
    assert!(allowed.is_ok());
}

#[test]
fn building_without_an_origin_is_an_error() {
    let built = AuthorizationMiddleware::builder(StaticToken::api_key(KEY).unwrap()).build();
    assert!(
        matches!(built, Err(client_auth::Error::Config(_))),
        "{built:?}"
    );

    let any = AuthorizationMiddleware::builder(StaticToken::api_key(KEY).unwrap())
        .any_https_origin()
        .build()
        .unwrap();
    assert!(any.origins().allows("https", "api.example.com"));
    assert!(!any.origins().allows("http", "api.example.com"));
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_its_401_returned_unchanged() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));
    server.revoke_access_token(&grant.access_token);
    // A body reqwest cannot clone.
    let body = Body::wrap(http_body_util::Full::new(Bytes::from_static(b"streamed")));

    let response = client
        .post(server.url("/api/echo"))
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls(&server), statuses(&[(401, 1)]));
    assert_eq!(
        seen_authorizations(&server),
        [Some(format!("Bearer {}", grant.access_token))]
    );
    assert_eq!(
        server.stats().token_calls,
        0,
        "the provider was not asked about the 401"
    );
}

#[tokio::test]
async fn a_skip_extension_sends_the_request_without_a_credential() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let client = client(middleware_for(&server, StaticToken::api_key(KEY).unwrap()));

    let response = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::Skip)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen_authorizations(&server), [None]);
}

#[tokio::test]
async fn a_provider_extension_replaces_the_middlewares_provider_for_one_request() {
    let server = TestServer::start_with(ServerConfig::default().api_key("OTHER"))
        .await
        .unwrap();
    let client = client(middleware_for(
        &server,
        StaticToken::api_key("DEFAULT").unwrap(),
    ));
    let other: Arc<dyn AuthorizationProvider> = Arc::new(StaticToken::api_key("OTHER").unwrap());

    let overridden = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::Provider(other))
        .send()
        .await
        .unwrap();
    let default = client.get(server.resource_url()).send().await.unwrap();

    assert_eq!(overridden.status(), StatusCode::OK);
    assert_eq!(default.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        seen_authorizations(&server),
        [
            Some("Token OTHER".to_owned()),
            Some("Token DEFAULT".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_override_provider_recovers_from_a_401_and_the_retry_keeps_the_extensions() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, StaticToken::api_key(KEY).unwrap()));
    server.revoke_access_token(&grant.access_token);
    let provider: Arc<dyn AuthorizationProvider> = Arc::new(provider);

    let response = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::Provider(provider))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
    // Both attempts used the override: the retry carried the extensions.
    let seen = seen_authorizations(&server);
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|a| a.as_deref().unwrap().starts_with("Bearer ")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_force_refresh_extension_refreshes_before_the_request_is_sent() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let client = client(middleware_for(&server, provider));

    let response = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::ForceRefresh)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
    assert_ne!(
        seen_authorizations(&server)[0],
        Some(format!("Bearer {}", grant.access_token))
    );
}

#[tokio::test]
async fn invalid_grant_during_401_recovery_fails_with_a_session_ended_error() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&server, &clock);
    let middleware = middleware_for(&server, provider);
    let client = client(middleware.clone());
    // The grant is revoked: its access token gets a 401, its refresh token `invalid_grant`.
    server.revoke_grant(&grant.refresh_token);

    let error = client.get(server.resource_url()).send().await.unwrap_err();

    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("a middleware error expected, got {error:?}");
    };
    let auth = inner
        .downcast_ref::<client_auth::Error>()
        .expect("a client_auth::Error");
    assert!(auth.is_session_ended(), "{auth:?}");
    assert!(
        matches!(
            middleware.provider().session_state(),
            SessionState::NoSession(_)
        ),
        "{:?}",
        middleware.provider().session_state()
    );
    assert_eq!(
        calls(&server),
        statuses(&[(401, 1)]),
        "no retry without a credential"
    );

    // Later requests fail fast, without being sent and without a token request.
    let token_calls = server.stats().token_calls;
    let later = client.get(server.resource_url()).send().await.unwrap_err();
    assert!(later.is_middleware());
    assert_eq!(calls(&server), statuses(&[(401, 1)]));
    assert_eq!(server.stats().token_calls, token_calls);
}

#[tokio::test]
async fn a_same_origin_redirect_keeps_the_credential() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let client = client(middleware_for(&server, StaticToken::api_key(KEY).unwrap()));
    let target = server.resource_url();

    let response = client
        .get(redirect_to(&server, &target))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().as_str(), target);
    let seen = server.seen_requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].path_and_query.starts_with("/redirect"));
    assert_eq!(seen[1].path_and_query, "/api/resource");
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some("Token SECRET-KEY"))
    );
}

#[tokio::test]
async fn a_cross_origin_redirect_drops_the_credential_and_its_401_is_not_retried() {
    let api = TestServer::start().await.unwrap();
    let other = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = oauth(&api, &clock);
    let client = client(middleware_for(&api, provider));
    let target = other.resource_url();

    let response = client.get(redirect_to(&api, &target)).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.url().as_str(), target);
    assert_eq!(
        seen_authorizations(&api),
        [Some(format!("Bearer {}", grant.access_token))]
    );
    assert_eq!(
        seen_authorizations(&other),
        [None],
        "reqwest stripped the credential"
    );
    assert_eq!(calls(&other), statuses(&[(401, 1)]));
    assert_eq!(
        api.stats().token_calls,
        0,
        "the provider was not asked about the 401"
    );
}

#[test]
fn the_middleware_is_clone_and_debug_without_the_provider_being_so() {
    struct Opaque;
    impl AuthorizationProvider for Opaque {
        fn authorize(&self, _: &client_auth::RequestView<'_>) -> client_auth::AuthorizeFuture {
            client_auth::AuthorizeFuture::ready(Err(client_auth::Error::NoCredentials))
        }
    }
    let middleware = AuthorizationMiddleware::builder(Opaque)
        .allow_origin("https://api.example.com")
        .build()
        .unwrap();
    let copy = middleware.clone();
    let printed = format!("{copy:?}");
    assert!(printed.contains("AuthorizationMiddleware"), "{printed}");
}

#[tokio::test]
async fn a_provider_error_means_the_request_is_not_sent() {
    /// Fails at once; `recover` is what it says of itself (both adapter paths).
    struct Nothing {
        recover: bool,
    }
    impl AuthorizationProvider for Nothing {
        fn authorize(&self, _: &client_auth::RequestView<'_>) -> client_auth::AuthorizeFuture {
            client_auth::AuthorizeFuture::ready(Err(client_auth::Error::NoCredentials))
        }
        fn can_recover(&self) -> bool {
            self.recover
        }
    }
    for recover in [true, false] {
        let server = TestServer::start().await.unwrap();
        let client = client(middleware_for(&server, Nothing { recover }));

        let error = client.get(server.resource_url()).send().await.unwrap_err();

        let reqwest_middleware::Error::Middleware(inner) = &error else {
            panic!("a middleware error expected, got {error:?}");
        };
        assert!(
            matches!(
                inner.downcast_ref::<client_auth::Error>(),
                Some(client_auth::Error::NoCredentials)
            ),
            "recover = {recover}: {inner:?}"
        );
        assert!(server.seen_requests().is_empty());
    }
}

// ---- acceptance reports ----------------------------------------------------------------------

/// A provider with scripted credentials that records what the middleware tells it: requests
/// get `first` (generation 1); a 401 is answered with `retry` (generation 2) or given up.
struct Counting {
    first: &'static str,
    retry: Option<&'static str>,
    recover: bool,
    unauthorized_calls: AtomicUsize,
    /// The generation of every credential reported accepted, in order.
    accepted: Mutex<Vec<u64>>,
}

impl Counting {
    fn new(first: &'static str, retry: Option<&'static str>) -> Self {
        Self {
            first,
            retry,
            recover: true,
            unauthorized_calls: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        }
    }

    fn cannot_recover(mut self) -> Self {
        self.recover = false;
        self
    }

    fn accepted(&self) -> Vec<u64> {
        self.accepted.lock().unwrap().clone()
    }
}

impl AuthorizationProvider for Counting {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        AuthorizeFuture::ready(Ok(Credential::new(
            HeaderValue::from_static(self.first),
            Generation::new(1),
        )))
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        _: StatusCode,
        _: &HeaderMap,
    ) -> UnauthorizedFuture {
        assert_eq!(failed.generation(), Generation::new(1));
        self.unauthorized_calls.fetch_add(1, Ordering::SeqCst);
        let answer = match self.retry {
            Some(value) => Unauthorized::Retry(Credential::new(
                HeaderValue::from_static(value),
                Generation::new(2),
            )),
            None => Unauthorized::GiveUp,
        };
        // The slow path, as a refresh would be.
        UnauthorizedFuture::pending(async move { Ok(answer) })
    }

    fn can_recover(&self) -> bool {
        self.recover
    }

    fn on_accepted(&self, credential: &Credential) {
        self.accepted
            .lock()
            .unwrap()
            .push(credential.generation().get());
    }
}

const ACCEPTED: &str = "Token SECRET-KEY";
const REJECTED: &str = "Token wrong";

/// A request to `path` on `server`, with a body reqwest can clone, or one it cannot.
async fn send_to(
    server: &TestServer,
    provider: &Arc<Counting>,
    path: &str,
    streaming: bool,
) -> reqwest::Response {
    let client = client(middleware_for(server, Arc::clone(provider)));
    let request = client.post(server.url(path));
    let request = if streaming {
        request.body(Body::wrap(http_body_util::Full::new(Bytes::from_static(
            b"streamed",
        ))))
    } else {
        request.body("copied")
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn on_accepted_is_told_the_stamped_generation_once_for_any_answer_but_a_401() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    for (path, status) in [
        ("/api/echo", StatusCode::OK),
        ("/api/forbidden", StatusCode::FORBIDDEN),
    ] {
        for (how, provider, streaming) in [
            ("snapshot", Counting::new(ACCEPTED, None), false),
            (
                "cannot recover",
                Counting::new(ACCEPTED, None).cannot_recover(),
                false,
            ),
            ("body not cloneable", Counting::new(ACCEPTED, None), true),
        ] {
            let provider = Arc::new(provider);
            let response = send_to(&server, &provider, path, streaming).await;
            assert_eq!(response.status(), status, "{path}, {how}");
            assert_eq!(provider.accepted(), [1], "{path}, {how}");
            assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
        }
    }
}

#[tokio::test]
async fn on_accepted_is_told_the_retry_credential_after_401_retry_200() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let provider = Arc::new(Counting::new(REJECTED, Some(ACCEPTED)));

    let response = send_to(&server, &provider, "/api/echo", false).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls(&server), statuses(&[(401, 1), (200, 1)]));
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        provider.accepted(),
        [2],
        "only the retry's credential, once"
    );
}

#[tokio::test]
async fn on_accepted_is_not_called_for_a_401_that_is_returned() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    for (how, provider, streaming, sends) in [
        (
            "the retry's 401",
            Counting::new(REJECTED, Some(REJECTED)),
            false,
            2,
        ),
        ("given up", Counting::new(REJECTED, None), false, 1),
        (
            "cannot recover",
            Counting::new(REJECTED, None).cannot_recover(),
            false,
            1,
        ),
        (
            "body not cloneable",
            Counting::new(REJECTED, Some(ACCEPTED)),
            true,
            1,
        ),
    ] {
        let provider = Arc::new(provider);
        let before = calls(&server).get(&401).copied().unwrap_or(0);
        let response = send_to(&server, &provider, "/api/echo", streaming).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{how}");
        assert_eq!(calls(&server)[&401] - before, sends, "{how}");
        assert_eq!(provider.accepted(), Vec::<u64>::new(), "{how}");
    }
}

#[tokio::test]
async fn on_accepted_is_not_called_for_requests_the_middleware_did_not_stamp() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let elsewhere = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let provider = Arc::new(Counting::new(ACCEPTED, None));
    let client = client(middleware_for(&server, Arc::clone(&provider)));

    // Answers other than 401 all: the caller's own credential, a skipped request and a
    // request to another origin (both to a path that needs none).
    let caller_set = client
        .get(server.resource_url())
        .header(AUTHORIZATION, ACCEPTED)
        .send()
        .await
        .unwrap();
    let skipped = client
        .get(server.url("/needs-no-credential"))
        .with_extension(AuthorizationControl::Skip)
        .send()
        .await
        .unwrap();
    let foreign = client
        .get(elsewhere.url("/needs-no-credential"))
        .send()
        .await
        .unwrap();

    assert_eq!(caller_set.status(), StatusCode::OK);
    assert_eq!(skipped.status(), StatusCode::NOT_FOUND);
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    assert_eq!(provider.accepted(), Vec::<u64>::new());
}

#[tokio::test]
async fn on_accepted_goes_to_the_per_request_provider_that_stamped() {
    let server = TestServer::start_with(ServerConfig::default().api_key(KEY))
        .await
        .unwrap();
    let provider = Arc::new(Counting::new(ACCEPTED, None));
    let client = client(middleware_for(&server, Arc::clone(&provider)));
    let other = Arc::new(Counting::new(REJECTED, Some(ACCEPTED)));

    let response = client
        .get(server.resource_url())
        .with_extension(AuthorizationControl::Provider(
            Arc::clone(&other) as Arc<dyn AuthorizationProvider>
        ))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(other.accepted(), [2], "the override's retry credential");
    assert_eq!(provider.accepted(), Vec::<u64>::new());
}
