//! `Authorize` around a hyper-util client, against the testkit's OAuth server and protected
//! API over real loopback sockets. Token expiry moves with a `ManualClock`; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{
    AuthorizationControl, AuthorizationProvider, Error, ManualClock, OAuthProvider,
    OAuthProviderBuilder, SessionReason, SessionState, StaticToken, TowerTransport,
};
use client_auth_testkit::{ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, BoxError, NeverClone, RedirectPolicy};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

/// An OAuth provider for the server's first client, on `clock`.
fn oauth(server: &TestServer, clock: &ManualClock) -> OAuthProviderBuilder {
    OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
}

/// A provider holding a valid access token (the fresh path) and its refresh token.
fn logged_in(
    server: &TestServer,
    clock: &ManualClock,
) -> (OAuthProvider, client_auth_testkit::IssuedTokens) {
    let grant = server.issue_grant("alice", None);
    let provider = oauth(server, clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    (provider, grant)
}

fn layer_for<P: AuthorizationProvider>(server: &TestServer, provider: P) -> AuthorizeLayer<P> {
    AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .build()
        .unwrap()
}

fn get(url: impl AsRef<str>) -> Request<Full<Bytes>> {
    Request::get(url.as_ref()).body(Full::default()).unwrap()
}

async fn send<S>(
    service: &mut S,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        service.ready().await?.call(request).await
    })
    .await
    .expect("no answer within 10 s")
}

async fn text(response: Response<Incoming>) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|s| s.authorization)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_access_token_is_stamped() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let mut client = layer_for(&server, provider).layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        authorizations(&server),
        [Some(format!("Bearer {}", grant.access_token))]
    );
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_before_the_request_is_sent() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let grant = server.issue_grant("alice", None);
    let provider = oauth(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(61));
    let mut client = layer_for(&server, provider).layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
    let seen = authorizations(&server);
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0], Some(format!("Bearer {}", grant.access_token)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_key_takes_no_snapshot_and_its_401_is_returned_without_retry() {
    let server = TestServer::start_with(ServerConfig::default().api_key("good-key"))
        .await
        .unwrap();
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hook_calls);
    let layer = layer_for(&server, StaticToken::api_key("good-key").unwrap()).clone_body_with(
        move |body: &Full<Bytes>| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(body.clone())
        },
    );
    let mut client = layer.layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let layer = layer_for(&server, StaticToken::api_key("wrong-key").unwrap());
    let mut client = layer.layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        authorizations(&server),
        [
            Some("Token good-key".to_owned()),
            Some("Token wrong-key".to_owned())
        ],
        "one send each, no retry"
    );
    assert_eq!(
        hook_calls.load(Ordering::SeqCst),
        0,
        "no snapshot for a static key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_once_after_refresh_on_401() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    server.revoke_access_token(&grant.access_token);
    let mut client = layer_for(&server, provider).layer(http_client());
    let request = Request::post(server.url("/api/echo"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        text(response).await.contains("hello"),
        "the retry carries the body"
    );
    assert_eq!(server.stats().refresh_grants, 1, "exactly one refresh");
    let seen = authorizations(&server);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], Some(format!("Bearer {}", grant.access_token)));
    assert!(seen[1].as_ref().unwrap().starts_with("Bearer "));
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_is_returned_after_the_one_retry() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock);
    server.reject_all_tokens(true);
    let mut client = layer_for(&server, provider).layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.seen_requests().len(), 2);
    assert_eq!(server.stats().refresh_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_returned_untouched() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock);
    let mut client = layer_for(&server, provider).layer(http_client());
    for path in ["/api/forbidden", "/api/scope"] {
        let response = send(&mut client, get(server.url(path))).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(server.seen_requests().len(), 2);
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_set_header_is_kept_and_its_401_returned_unchanged() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock);
    let mut client = layer_for(&server, provider).layer(http_client());
    let mut request = get(server.resource_url());
    request.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer caller-token"),
    );
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        authorizations(&server),
        [Some("Bearer caller-token".to_owned())]
    );
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_named_gets_no_credential() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock);
    let other_port = AuthorizeLayer::builder(provider)
        .allow_origin(format!(
            "http://127.0.0.1:{}",
            server.addr().port().wrapping_add(1)
        ))
        .allow_http(true)
        .build()
        .unwrap();
    let mut client = other_port.layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(authorizations(&server), [None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_servers_plain_http_origin_needs_allow_http() {
    let server = TestServer::start().await.unwrap();
    let refused = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .allow_origin(server.base_url())
        .build();
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    let none = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap()).build();
    assert!(matches!(none, Err(Error::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_cloned_is_sent_once_and_its_401_returned_unchanged() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    server.revoke_access_token(&grant.access_token);
    let mut client = layer_for(&server, provider)
        .clone_body_with(NeverClone)
        .layer(http_client());
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .contains_key(http::header::WWW_AUTHENTICATE)
    );
    assert_eq!(server.seen_requests().len(), 1);
    assert_eq!(
        server.stats().token_calls,
        0,
        "no refresh for a request that cannot be retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_and_provider_overrides_apply_per_request() {
    let server = TestServer::start_with(ServerConfig::default().api_key("other-key"))
        .await
        .unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let mut client = layer_for(&server, provider).layer(http_client());

    let mut skipped = get(server.resource_url());
    skipped.extensions_mut().insert(AuthorizationControl::Skip);
    assert_eq!(
        send(&mut client, skipped).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let mut other = get(server.resource_url());
    let key: Arc<dyn AuthorizationProvider> = Arc::new(StaticToken::api_key("other-key").unwrap());
    other
        .extensions_mut()
        .insert(AuthorizationControl::Provider(key));
    assert_eq!(
        send(&mut client, other).await.unwrap().status(),
        StatusCode::OK
    );

    let plain = get(server.resource_url());
    assert_eq!(
        send(&mut client, plain).await.unwrap().status(),
        StatusCode::OK
    );

    assert_eq!(
        authorizations(&server),
        [
            None,
            Some("Token other-key".to_owned()),
            Some(format!("Bearer {}", grant.access_token)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_means_the_request_is_not_sent() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    // No tokens at all: no session.
    let provider = oauth(&server, &clock).build().unwrap();
    let mut client = layer_for(&server, provider).layer(http_client());
    let error = send(&mut client, get(server.resource_url()))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<Error>().expect("a client_auth::Error");
    assert!(error.is_session_ended(), "{error:?}");
    assert!(server.seen_requests().is_empty(), "not sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_during_401_recovery_is_a_typed_error_and_ends_the_session() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let session = provider.clone();
    server.revoke_grant(&grant.refresh_token);
    let mut client = layer_for(&server, provider).layer(http_client());
    let error = send(&mut client, get(server.resource_url()))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<Error>().expect("a client_auth::Error");
    assert!(error.is_session_ended(), "{error:?}");
    assert_eq!(error.oauth_error().map(|e| e.code()), Some("invalid_grant"));
    assert_eq!(
        session.session_state(),
        SessionState::NoSession(SessionReason::Invalid("invalid_grant".into()))
    );
    assert_eq!(server.seen_requests().len(), 1, "sent once, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_slot_needed_by_the_token_transport_is_not_held_during_a_refresh() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let grant = server.issue_grant("alice", None);
    // One buffer with a single slot, shared by the API requests and the token transport.
    let buffer = tower::buffer::Buffer::new(http_client(), 1);
    let provider = oauth(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .transport(Arc::new(TowerTransport::<_, Full<Bytes>>::new(
            buffer.clone(),
        )))
        .build()
        .unwrap();
    let mut client = layer_for(&server, provider).layer(buffer);
    // The first request has no access token: it reserves the slot in poll_ready, then waits
    // for a refresh that needs the slot.
    let response = send(&mut client, get(server.resource_url())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_follow_redirect_the_credential_goes_on_the_first_hop_and_stays_on_its_origin() {
    let server = TestServer::start().await.unwrap();
    let elsewhere = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let mut client = ServiceBuilder::new()
        .layer(layer_for(&server, provider))
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(http_client());
    let bearer = Some(format!("Bearer {}", grant.access_token));

    // Same origin: the second hop carries the first hop's credential.
    let to = server.resource_url();
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(server.url(&format!("/redirect?to={to}"))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(authorizations(&server), [bearer.clone(), bearer.clone()]);

    // Another origin: the hop goes out without a credential, and its 401 is not retried.
    let to = elsewhere.resource_url();
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(server.url(&format!("/redirect?to={to}"))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(authorizations(&elsewhere), [None]);
    assert_eq!(server.stats().token_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_refresh_in_the_extensions_refreshes_before_sending() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let mut client = layer_for(&server, provider).layer(http_client());
    let mut request = get(server.resource_url());
    request
        .extensions_mut()
        .insert(AuthorizationControl::ForceRefresh);
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1);
    let seen = authorizations(&server);
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0], Some(format!("Bearer {}", grant.access_token)));
}
