//! The conformance suite shared by both adapters: every scenario is one `async fn` taking an
//! [`Adapter`], run twice, as `tower_<scenario>` (the `client-auth-tower` layer outside
//! tower-http's `FollowRedirect` with `RedirectPolicy`, around a hyper-util client: the
//! placement the tower crate supports) and as `reqwest_<scenario>` (the `client-auth-reqwest`
//! middleware on a `reqwest_middleware` client).
//!
//! Every request goes over real loopback sockets to a [`TestServer`], and the assertions read
//! the server's counters: how many token requests and refreshes it served, what the protected
//! API answered, and which `Authorization` each request carried. Token expiry moves with a
//! [`ManualClock`]; nothing sleeps to wait for expiry (a background refresh's round trip is
//! waited for by a short, bounded poll). Scenarios that need `https://` origins put a TLS
//! front (`support/tls.rs`, a test CA) before the testkit servers.
//!
//! The scenarios expect the same of both adapters, redirects included: the credential goes on
//! the first hop only, no hop carries it once the chain has left the stamped origin (even back
//! on it), and a 401 from another origin is returned without a retry. One scenario is tower
//! only (a `Buffer`ed inner service): reqwest-middleware has no readiness to hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{
    AuthorizationControl, AuthorizationProvider, CustomerToken, ManualClock, OAuthProvider,
    SessionReason, SessionState, StaticToken, TowerTransport,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{IssuedTokens, ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, BoxError, RedirectPolicy};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

#[path = "support/tls.rs"]
mod tls;

use tls::TlsFront;

/// How long any one request may take before the test fails (instead of hanging).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The adapter abstraction
// ---------------------------------------------------------------------------------------------

/// The adapter a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    /// `AuthorizeLayer` outside `FollowRedirectLayer` (with `RedirectPolicy`), around a
    /// hyper-util legacy client.
    Tower,
    /// `AuthorizationMiddleware` in a `reqwest_middleware` client (reqwest follows redirects).
    Reqwest,
}

/// The request body the tower client sends. Deliberately **not** `Clone`: whether the layer
/// may copy it for the retry is decided per request by the clone hook (a user closure, which
/// also counts how often the layer asked for a snapshot).
#[derive(Debug)]
struct TestBody {
    inner: Full<Bytes>,
    cloneable: bool,
}

impl TestBody {
    fn new(bytes: Bytes, cloneable: bool) -> Self {
        Self {
            inner: Full::new(bytes),
            cloneable,
        }
    }

    /// The copy the clone hook hands out: only for bodies marked cloneable.
    fn try_copy(&self) -> Option<Self> {
        self.cloneable.then(|| Self {
            inner: self.inner.clone(),
            cloneable: true,
        })
    }
}

/// Empty (what `FollowRedirect` rebuilds an empty body with); an empty body can always be copied.
impl Default for TestBody {
    fn default() -> Self {
        Self::new(Bytes::new(), true)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type TowerService = BoxCloneSyncService<Request<TestBody>, Response<Incoming>, BoxError>;

#[derive(Clone)]
enum Transport {
    Tower(TowerService),
    Reqwest(ClientWithMiddleware),
}

/// One adapter's client, built from a provider and the origins that get its credentials.
#[derive(Clone)]
struct Client {
    transport: Transport,
    /// How often the tower layer called the body clone hook (a snapshot for the retry).
    snapshots: Arc<AtomicUsize>,
}

/// A request, described independently of the client that sends it.
#[derive(Debug, Clone)]
struct TestRequest {
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    control: Option<AuthorizationControl>,
    cloneable_body: bool,
}

impl TestRequest {
    fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            control: None,
            cloneable_body: true,
        }
    }

    fn delete(url: impl Into<String>) -> Self {
        Self {
            method: Method::DELETE,
            ..Self::get(url)
        }
    }

    fn post(url: impl Into<String>, body: &'static str) -> Self {
        Self {
            method: Method::POST,
            body: Bytes::from_static(body.as_bytes()),
            ..Self::get(url)
        }
    }

    fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    fn control(mut self, control: AuthorizationControl) -> Self {
        self.control = Some(control);
        self
    }

    /// A body the client cannot copy: for tower the clone hook answers `None`; for reqwest it
    /// is a `reqwest::Body::wrap`ped `http_body` (which `Request::try_clone` cannot clone).
    fn not_cloneable(mut self) -> Self {
        self.cloneable_body = false;
        self
    }
}

/// The answer, read to the end.
#[derive(Debug)]
struct TestResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl TestResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A failed send: the `client_auth::Error` inside the adapter's error, if there is one.
#[derive(Debug)]
struct SendError {
    auth: Option<client_auth::Error>,
    message: String,
}

impl SendError {
    fn from_tower(error: &BoxError) -> Self {
        Self {
            auth: error.downcast_ref::<client_auth::Error>().cloned(),
            message: error.to_string(),
        }
    }

    fn from_reqwest(error: &reqwest_middleware::Error) -> Self {
        let auth = match error {
            reqwest_middleware::Error::Middleware(inner) => {
                inner.downcast_ref::<client_auth::Error>().cloned()
            }
            reqwest_middleware::Error::Reqwest(_) => None,
        };
        Self {
            auth,
            message: error.to_string(),
        }
    }

    /// The typed error; panics when the adapter's error holds none.
    fn auth(&self) -> &client_auth::Error {
        self.auth
            .as_ref()
            .unwrap_or_else(|| panic!("not a client_auth::Error: {}", self.message))
    }
}

fn hyper_client() -> HyperClient<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    HyperClient::builder(TokioExecutor::new()).build_http::<TestBody>()
}

/// How a client reaches the servers, and which origins get its credentials.
#[derive(Clone, Copy)]
enum Net<'a> {
    /// Plain http; these origins are named.
    Named {
        origins: &'a [String],
        allow_http: bool,
    },
    /// http and https (through [`TlsFront`]s, trusting the test CA); `any_https_origin()`.
    AnyHttps,
}

impl Client {
    /// Builds `adapter`'s client sending `provider`'s credentials to `origins`.
    fn build<P: AuthorizationProvider>(
        adapter: Adapter,
        provider: P,
        origins: &[String],
        allow_http: bool,
    ) -> Result<Self, client_auth::Error> {
        Self::assemble(
            adapter,
            provider,
            Net::Named {
                origins,
                allow_http,
            },
        )
    }

    /// Builds `adapter`'s client with `any_https_origin()`, able to reach [`TlsFront`]s.
    fn any_https<P: AuthorizationProvider>(
        adapter: Adapter,
        provider: P,
    ) -> Result<Self, client_auth::Error> {
        Self::assemble(adapter, provider, Net::AnyHttps)
    }

    fn assemble<P: AuthorizationProvider>(
        adapter: Adapter,
        provider: P,
        net: Net<'_>,
    ) -> Result<Self, client_auth::Error> {
        let snapshots = Arc::new(AtomicUsize::new(0));
        let transport = match adapter {
            Adapter::Tower => {
                let counter = Arc::clone(&snapshots);
                let builder = match net {
                    Net::Named {
                        origins,
                        allow_http,
                    } => origins
                        .iter()
                        .fold(AuthorizeLayer::builder(provider), |b, o| {
                            b.allow_origin(o.as_str())
                        })
                        .allow_http(allow_http),
                    Net::AnyHttps => AuthorizeLayer::builder(provider).any_https_origin(),
                };
                let layer = builder
                    .clone_body_with(move |body: &TestBody| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        body.try_copy()
                    })
                    .build()?;
                // The supported order (tower crate docs, "Redirects"): `AuthorizeLayer` outside
                // `FollowRedirect`, which follows with `RedirectPolicy`.
                let redirects = FollowRedirectLayer::with_policy(RedirectPolicy::default());
                let stack = ServiceBuilder::new().layer(layer).layer(redirects);
                Transport::Tower(match net {
                    Net::Named { .. } => BoxCloneSyncService::new(stack.service(hyper_client())),
                    Net::AnyHttps => BoxCloneSyncService::new(stack.service(tls::hyper_client())),
                })
            }
            Adapter::Reqwest => {
                let (builder, client) = match net {
                    Net::Named {
                        origins,
                        allow_http,
                    } => (
                        origins
                            .iter()
                            .fold(AuthorizationMiddleware::builder(provider), |b, o| {
                                b.allow_origin(o.as_str())
                            })
                            .allow_http(allow_http),
                        reqwest::Client::new(),
                    ),
                    Net::AnyHttps => (
                        AuthorizationMiddleware::builder(provider).any_https_origin(),
                        tls::reqwest_client(),
                    ),
                };
                Transport::Reqwest(ClientBuilder::new(client).with(builder.build()?).build())
            }
        };
        Ok(Self {
            transport,
            snapshots,
        })
    }

    /// How many snapshots the tower layer asked the clone hook for; `None` for reqwest, whose
    /// middleware calls `reqwest::Request::try_clone` internally, with no hook to observe.
    fn snapshots(&self) -> Option<usize> {
        match self.transport {
            Transport::Tower(_) => Some(self.snapshots.load(Ordering::SeqCst)),
            Transport::Reqwest(_) => None,
        }
    }

    async fn send(&self, request: TestRequest) -> Result<TestResponse, SendError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_now(request))
            .await
            .expect("no answer in time")
    }

    async fn send_now(&self, request: TestRequest) -> Result<TestResponse, SendError> {
        match &self.transport {
            Transport::Tower(service) => {
                let mut builder = Request::builder()
                    .method(request.method)
                    .uri(request.url.as_str());
                for (name, value) in request.headers {
                    builder = builder.header(name, value);
                }
                let mut http_request = builder
                    .body(TestBody::new(request.body, request.cloneable_body))
                    .unwrap();
                if let Some(control) = request.control {
                    http_request.extensions_mut().insert(control);
                }
                let mut service = service.clone();
                let response = async { service.ready().await?.call(http_request).await }
                    .await
                    .map_err(|e| SendError::from_tower(&e))?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| SendError {
                        auth: None,
                        message: e.to_string(),
                    })?
                    .to_bytes();
                Ok(TestResponse {
                    status,
                    headers,
                    body,
                })
            }
            Transport::Reqwest(client) => {
                let mut builder = client.request(request.method, request.url.as_str());
                for (name, value) in request.headers {
                    builder = builder.header(name, value);
                }
                if !request.cloneable_body {
                    builder = builder.body(reqwest::Body::wrap(Full::new(request.body)));
                } else if !request.body.is_empty() {
                    builder = builder.body(request.body);
                }
                if let Some(control) = request.control {
                    builder = builder.with_extension(control);
                }
                let response = builder
                    .send()
                    .await
                    .map_err(|e| SendError::from_reqwest(&e))?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await.map_err(|e| SendError {
                    auth: None,
                    message: e.to_string(),
                })?;
                Ok(TestResponse {
                    status,
                    headers,
                    body,
                })
            }
        }
    }
}

/// Generates the two tests of a scenario: `$tower` and `$reqwest` run `$scenario` against the
/// tower layer and the reqwest middleware.
macro_rules! both_adapters {
    ($scenario:ident: $tower:ident, $reqwest:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $tower() {
            $scenario(Adapter::Tower).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $reqwest() {
            $scenario(Adapter::Reqwest).await;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A provider for the server's first client holding a fresh grant: an access token valid for
/// `lifetime` on `clock`, and its refresh token.
fn logged_in(
    server: &TestServer,
    clock: &ManualClock,
    lifetime: Duration,
) -> (OAuthProvider, IssuedTokens) {
    let grant = server.issue_grant("alice", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(lifetime))
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .build()
        .unwrap();
    (provider, grant)
}

const HOUR: Duration = Duration::from_secs(3600);

/// `adapter`'s client for `server`'s (plain http, loopback) origin.
fn client_for<P: AuthorizationProvider>(
    adapter: Adapter,
    server: &TestServer,
    provider: P,
) -> Client {
    Client::build(adapter, provider, &[server.base_url()], true).unwrap()
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect()
}

fn paths(server: &TestServer) -> Vec<String> {
    server
        .seen_requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect()
}

/// What the protected API answered, by status code.
fn resource_calls(server: &TestServer) -> BTreeMap<u16, u64> {
    server.stats().resource_calls
}

fn counts(pairs: &[(u16, u64)]) -> BTreeMap<u16, u64> {
    pairs.iter().copied().collect()
}

/// `from`'s `/redirect?to=<to>`, the target URL-encoded.
fn redirect_to(from: &TestServer, to: &str) -> String {
    reqwest::Url::parse_with_params(&from.url("/redirect"), [("to", to)])
        .unwrap()
        .to_string()
}

/// Waits (bounded) for a background refresh to land: the provider's current access token is
/// no longer `old`. Reading it starts no refresh of its own while one is in flight.
async fn wait_for_new_token(provider: &OAuthProvider, old: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let token = provider.access_token().await.unwrap();
            if token.expose_secret() != old {
                return token.expose_secret().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the background refresh did not land within 10 s")
}

fn assert_config_error(built: Result<Client, client_auth::Error>, what: &str) {
    match built {
        Err(client_auth::Error::Config(_)) => {}
        Err(other) => panic!("{what}: a Config error expected, got {other:?}"),
        Ok(_) => panic!("{what}: the client was built"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

both_adapters!(
    stamps_a_fresh_access_token_without_a_token_request:
    tower_stamps_a_fresh_access_token_without_a_token_request,
    reqwest_stamps_a_fresh_access_token_without_a_token_request
);
async fn stamps_a_fresh_access_token_without_a_token_request(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);

    let response = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["subject"], "alice");
    assert_eq!(authorizations(&server), [bearer(&grant.access_token)]);
    assert_eq!(server.stats().token_calls, 0);
}

both_adapters!(
    serves_the_current_token_and_refreshes_once_in_the_background_ahead_of_expiry:
    tower_serves_the_current_token_and_refreshes_once_in_the_background_ahead_of_expiry,
    reqwest_serves_the_current_token_and_refreshes_once_in_the_background_ahead_of_expiry
);
async fn serves_the_current_token_and_refreshes_once_in_the_background_ahead_of_expiry(
    adapter: Adapter,
) {
    // The token endpoint takes a second to answer: requests served meanwhile prove that none
    // of them waited for the refresh.
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_secs(1)))
            .await
            .unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider.clone());
    // A 1 h token: soft window 360 s, hard window 10 s before expiry. 60 s before expiry is
    // inside the soft window only.
    clock.advance(HOUR - Duration::from_secs(60));

    for _ in 0..3 {
        let response = client
            .send(TestRequest::get(server.resource_url()))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    let stats = server.stats();
    assert_eq!(
        stats.token_successes, 0,
        "all three were answered while the refresh was still at the token endpoint: {stats:?}"
    );
    assert_eq!(
        authorizations(&server),
        vec![bearer(&grant.access_token); 3],
        "served with the current token"
    );

    let fresh = wait_for_new_token(&provider, &grant.access_token).await;
    let response = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(authorizations(&server).last(), Some(&bearer(&fresh)));
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "one background refresh: {stats:?}");
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.resource_calls, counts(&[(200, 4)]));
}

both_adapters!(
    refreshes_an_expired_token_once_for_200_concurrent_requests:
    tower_refreshes_an_expired_token_once_for_200_concurrent_requests,
    reqwest_refreshes_an_expired_token_once_for_200_concurrent_requests
);
async fn refreshes_an_expired_token_once_for_200_concurrent_requests(adapter: Adapter) {
    // A slow token endpoint, so that the requests really do wait on the one refresh together.
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(300)))
            .await
            .unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);
    clock.advance(HOUR + Duration::from_secs(1));

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = server.resource_url();
        requests.spawn(async move { client.send(TestRequest::get(url)).await });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap().unwrap().status, StatusCode::OK);
    }

    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.max_concurrent_token_requests, 1, "{stats:?}");
    assert_eq!(stats.resource_calls, counts(&[(200, 200)]));
    let seen = authorizations(&server);
    assert_eq!(seen.len(), 200);
    assert_ne!(seen[0], bearer(&grant.access_token), "the expired token");
    assert!(
        seen.iter().all(|a| *a == seen[0]),
        "all with the one new token"
    );
}

both_adapters!(
    retries_once_after_refresh_on_401:
    tower_retries_once_after_refresh_on_401,
    reqwest_retries_once_after_refresh_on_401
);
async fn retries_once_after_refresh_on_401(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);
    server.revoke_access_token(&grant.access_token);

    let response = client
        .send(TestRequest::post(
            server.url("/api/echo"),
            "the body, byte for byte",
        ))
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json()["body"],
        "the body, byte for byte",
        "the retry carried the body intact"
    );
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "exactly one refresh: {stats:?}");
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.resource_calls, counts(&[(200, 1), (401, 1)]));
    let seen = server.seen_requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.method == "POST" && r.path_and_query == "/api/echo")
    );
    assert_eq!(seen[0].authorization, bearer(&grant.access_token));
    let retried = seen[1].authorization.as_deref().unwrap();
    assert!(retried.starts_with("Bearer ") && Some(retried) != seen[0].authorization.as_deref());
    if let Some(snapshots) = client.snapshots() {
        assert_eq!(snapshots, 1, "one snapshot, taken before the first send");
    }
}

both_adapters!(
    returns_the_second_401_after_the_one_retry:
    tower_returns_the_second_401_after_the_one_retry,
    reqwest_returns_the_second_401_after_the_one_retry
);
async fn returns_the_second_401_after_the_one_retry(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);
    server.reject_all_tokens(true);

    let response = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(response.headers.contains_key(WWW_AUTHENTICATE));
    assert_eq!(
        resource_calls(&server),
        counts(&[(401, 2)]),
        "sent twice, never a third time"
    );
    assert_eq!(server.stats().refresh_grants, 1);
    let seen = authorizations(&server);
    assert_ne!(seen[0], seen[1], "the retry carried the refreshed token");
}

/// Wraps a provider and records every credential the adapter reports accepted (its
/// generation and `Authorization` value), passing the report on.
struct ReportsAcceptance<P> {
    inner: P,
    accepted: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
}

impl<P: AuthorizationProvider> AuthorizationProvider for ReportsAcceptance<P> {
    fn authorize(&self, request: &client_auth::RequestView<'_>) -> client_auth::AuthorizeFuture {
        self.inner.authorize(request)
    }

    fn on_unauthorized(
        &self,
        failed: &client_auth::Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> client_auth::UnauthorizedFuture {
        self.inner.on_unauthorized(failed, status, headers)
    }

    fn can_recover(&self) -> bool {
        self.inner.can_recover()
    }

    fn on_accepted(&self, credential: &client_auth::Credential) {
        self.accepted.lock().unwrap().push((
            credential.generation().get(),
            credential.header_value().to_str().unwrap().to_owned(),
        ));
        self.inner.on_accepted(credential);
    }
}

both_adapters!(
    reports_the_credential_of_every_answer_but_a_401_as_accepted:
    tower_reports_the_credential_of_every_answer_but_a_401_as_accepted,
    reqwest_reports_the_credential_of_every_answer_but_a_401_as_accepted
);
async fn reports_the_credential_of_every_answer_but_a_401_as_accepted(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = client_for(
        adapter,
        &server,
        ReportsAcceptance {
            inner: provider,
            accepted: Arc::clone(&accepted),
        },
    );
    let reported = || accepted.lock().unwrap().clone();

    // A 200, then a 403 (the server took the token, the answer is no): each once.
    let ok = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();
    let forbidden = client
        .send(TestRequest::get(server.url("/api/forbidden")))
        .await
        .unwrap();
    assert_eq!(
        (ok.status, forbidden.status),
        (StatusCode::OK, StatusCode::FORBIDDEN)
    );
    let first = reported();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0], first[1]);
    assert_eq!(Some(first[0].1.clone()), bearer(&grant.access_token));

    // Revoked: 401, refresh, retry, 200. Only the retry's credential is reported.
    server.revoke_access_token(&grant.access_token);
    let retried = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();
    assert_eq!(retried.status, StatusCode::OK);
    let after_retry = reported();
    assert_eq!(after_retry.len(), 3, "{after_retry:?}");
    let (generation, value) = &after_retry[2];
    assert_ne!(*generation, first[0].0, "the refreshed token's generation");
    assert_eq!(
        authorizations(&server).last().unwrap().as_deref(),
        Some(value.as_str()),
        "the credential the retry carried"
    );

    // A 401 returned to the caller (the server now rejects every token), and requests the
    // adapter did not stamp: none is reported.
    server.reject_all_tokens(true);
    let rejected = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();
    assert_eq!(rejected.status, StatusCode::UNAUTHORIZED);
    server.reject_all_tokens(false);
    let own = client
        .send(
            TestRequest::get(server.resource_url()).header(AUTHORIZATION, "Bearer the-callers-own"),
        )
        .await
        .unwrap();
    let skipped = client
        .send(TestRequest::get(server.url("/not-found")).control(AuthorizationControl::Skip))
        .await
        .unwrap();
    assert_eq!(own.status, StatusCode::UNAUTHORIZED);
    assert_eq!(skipped.status, StatusCode::NOT_FOUND);
    assert_eq!(reported(), after_retry, "nothing more was reported");
}

both_adapters!(
    returns_a_static_keys_401_without_retry_or_snapshot:
    tower_returns_a_static_keys_401_without_retry_or_snapshot,
    reqwest_returns_a_static_keys_401_without_retry_or_snapshot
);
async fn returns_a_static_keys_401_without_retry_or_snapshot(adapter: Adapter) {
    // The server knows no API key: the key gets a 401.
    let server = TestServer::start().await.unwrap();
    let client = client_for(adapter, &server, StaticToken::api_key("wrong-key").unwrap());

    let response = client
        .send(TestRequest::post(server.url("/api/echo"), "payload"))
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resource_calls(&server), counts(&[(401, 1)]), "no retry");
    assert_eq!(
        authorizations(&server),
        [Some("Token wrong-key".to_owned())]
    );
    assert_eq!(server.stats().token_calls, 0);
    match adapter {
        Adapter::Tower => assert_eq!(
            client.snapshots(),
            Some(0),
            "the clone hook was never asked: no snapshot for a provider that cannot recover"
        ),
        // The middleware snapshots with `reqwest::Request::try_clone`, inside `handle`, with no
        // hook a test could count; what is observable is the single request asserted above
        // (and the middleware's code skips `try_clone` when `can_recover()` is false).
        Adapter::Reqwest => assert_eq!(client.snapshots(), None),
    }
}

both_adapters!(
    ends_the_session_with_a_typed_error_on_invalid_grant_during_401_recovery:
    tower_ends_the_session_with_a_typed_error_on_invalid_grant_during_401_recovery,
    reqwest_ends_the_session_with_a_typed_error_on_invalid_grant_during_401_recovery
);
async fn ends_the_session_with_a_typed_error_on_invalid_grant_during_401_recovery(
    adapter: Adapter,
) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider.clone());
    // Its access token now gets a 401, its refresh token `invalid_grant`.
    server.revoke_grant(&grant.refresh_token);

    let error = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap_err();

    let auth = error.auth();
    assert!(auth.is_session_ended(), "{auth:?}");
    assert_eq!(auth.oauth_error().map(|e| e.code()), Some("invalid_grant"));
    assert_eq!(
        provider.session_state(),
        SessionState::NoSession(SessionReason::Invalid("invalid_grant".into()))
    );
    assert_eq!(
        resource_calls(&server),
        counts(&[(401, 1)]),
        "sent once, not retried"
    );
    let stats = server.stats();
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.token_errors.get("invalid_grant"), Some(&1));

    // Later requests fail fast: not sent, no token request.
    let later = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap_err();
    assert!(later.auth().is_session_ended(), "{later:?}");
    assert_eq!(resource_calls(&server), counts(&[(401, 1)]));
    assert_eq!(server.stats().token_calls, 1);
}

both_adapters!(
    sends_a_body_that_cannot_be_cloned_once_and_returns_its_401_unchanged:
    tower_sends_a_body_that_cannot_be_cloned_once_and_returns_its_401_unchanged,
    reqwest_sends_a_body_that_cannot_be_cloned_once_and_returns_its_401_unchanged
);
async fn sends_a_body_that_cannot_be_cloned_once_and_returns_its_401_unchanged(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);
    server.revoke_access_token(&grant.access_token);

    let response = client
        .send(TestRequest::post(server.url("/api/echo"), "streamed").not_cloneable())
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers[WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(response.json()["error"], "invalid_token");
    assert_eq!(resource_calls(&server), counts(&[(401, 1)]), "sent once");
    assert_eq!(authorizations(&server), [bearer(&grant.access_token)]);
    assert_eq!(
        server.stats().token_calls,
        0,
        "the provider was not asked about a 401 that cannot be retried"
    );
}

both_adapters!(
    leaves_403_and_insufficient_scope_untouched:
    tower_leaves_403_and_insufficient_scope_untouched,
    reqwest_leaves_403_and_insufficient_scope_untouched
);
async fn leaves_403_and_insufficient_scope_untouched(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);

    let forbidden = client
        .send(TestRequest::get(server.url("/api/forbidden")))
        .await
        .unwrap();
    let scope = client
        .send(TestRequest::get(server.url("/api/scope")))
        .await
        .unwrap();

    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json()["error"], "forbidden");
    assert_eq!(scope.status, StatusCode::FORBIDDEN);
    assert_eq!(
        scope.headers[WWW_AUTHENTICATE],
        "Bearer error=\"insufficient_scope\""
    );
    assert_eq!(resource_calls(&server), counts(&[(403, 2)]), "no retry");
    assert_eq!(
        authorizations(&server),
        vec![bearer(&grant.access_token); 2]
    );
    assert_eq!(server.stats().token_calls, 0, "no refresh");
}

both_adapters!(
    keeps_a_caller_set_authorization_and_returns_its_401_unchanged:
    tower_keeps_a_caller_set_authorization_and_returns_its_401_unchanged,
    reqwest_keeps_a_caller_set_authorization_and_returns_its_401_unchanged
);
async fn keeps_a_caller_set_authorization_and_returns_its_401_unchanged(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);

    let response = client
        .send(
            TestRequest::get(server.resource_url()).header(AUTHORIZATION, "Bearer the-callers-own"),
        )
        .await
        .unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        authorizations(&server),
        [Some("Bearer the-callers-own".to_owned())]
    );
    assert_eq!(resource_calls(&server), counts(&[(401, 1)]), "no retry");
    assert_eq!(server.stats().token_calls, 0, "no refresh");
    if let Some(snapshots) = client.snapshots() {
        assert_eq!(snapshots, 0, "passed through: nothing copied");
    }
}

both_adapters!(
    sends_nothing_to_an_origin_not_named:
    tower_sends_nothing_to_an_origin_not_named,
    reqwest_sends_nothing_to_an_origin_not_named
);
async fn sends_nothing_to_an_origin_not_named(adapter: Adapter) {
    let api = TestServer::start().await.unwrap();
    let elsewhere = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&api, &clock, HOUR);
    let client = client_for(adapter, &api, provider);

    let other = client
        .send(TestRequest::get(elsewhere.resource_url()))
        .await
        .unwrap();
    let ours = client
        .send(TestRequest::get(api.resource_url()))
        .await
        .unwrap();

    assert_eq!(other.status, StatusCode::UNAUTHORIZED);
    assert_eq!(authorizations(&elsewhere), [None]);
    assert_eq!(
        resource_calls(&elsewhere),
        counts(&[(401, 1)]),
        "its 401 is not ours to retry"
    );
    assert_eq!(ours.status, StatusCode::OK);
    assert_eq!(authorizations(&api), [bearer(&grant.access_token)]);
    assert_eq!(api.stats().token_calls, 0);
}

both_adapters!(
    refuses_a_plain_http_origin_unless_allowed:
    tower_refuses_a_plain_http_origin_unless_allowed,
    reqwest_refuses_a_plain_http_origin_unless_allowed
);
async fn refuses_a_plain_http_origin_unless_allowed(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let key = || StaticToken::api_key("k").unwrap();

    assert_config_error(
        Client::build(adapter, key(), &[server.base_url()], false),
        "http:// without allow_http",
    );
    assert!(Client::build(adapter, key(), &[server.base_url()], true).is_ok());
    assert!(
        Client::build(
            adapter,
            key(),
            &["https://api.example.com".to_owned()],
            false
        )
        .is_ok()
    );
}

both_adapters!(
    refuses_to_build_without_an_origin:
    tower_refuses_to_build_without_an_origin,
    reqwest_refuses_to_build_without_an_origin
);
async fn refuses_to_build_without_an_origin(adapter: Adapter) {
    let key = StaticToken::api_key("k").unwrap();
    assert_config_error(Client::build(adapter, key, &[], true), "no origin named");
}

both_adapters!(
    keeps_the_credential_on_a_same_origin_redirect:
    tower_keeps_the_credential_on_a_same_origin_redirect,
    reqwest_keeps_the_credential_on_a_same_origin_redirect
);
async fn keeps_the_credential_on_a_same_origin_redirect(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);

    let response = client
        .send(TestRequest::get(redirect_to(
            &server,
            &server.resource_url(),
        )))
        .await
        .unwrap();

    // The first hop is stamped; the redirect follower (reqwest's, or `FollowRedirect` below the
    // tower layer) copies its headers to a hop on the same origin.
    assert_eq!(response.status, StatusCode::OK);
    let paths = paths(&server);
    assert!(paths[0].starts_with("/redirect?"), "{paths:?}");
    assert_eq!(paths[1], "/api/resource");
    assert_eq!(
        authorizations(&server),
        vec![bearer(&grant.access_token); 2]
    );
    assert_eq!(server.stats().token_calls, 0);
}

both_adapters!(
    never_carries_the_credential_across_origins_nor_retries_the_foreign_401:
    tower_never_carries_the_credential_across_origins_nor_retries_the_foreign_401,
    reqwest_never_carries_the_credential_across_origins_nor_retries_the_foreign_401
);
async fn never_carries_the_credential_across_origins_nor_retries_the_foreign_401(adapter: Adapter) {
    let api = TestServer::start().await.unwrap();
    let other = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&api, &clock, HOUR);
    let client = client_for(adapter, &api, provider);

    let response = client
        .send(TestRequest::get(redirect_to(&api, &other.resource_url())))
        .await
        .unwrap();

    // The follower drops `Authorization` on the hop to `other`; the adapter sees a 401 whose
    // final URL (reqwest's `Response::url()`, tower-http's `RequestUri`) is on another origin
    // than the one it stamped, and returns it.
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(authorizations(&api), [bearer(&grant.access_token)]);
    assert_eq!(authorizations(&other), [None]);
    assert_eq!(
        resource_calls(&other),
        counts(&[(401, 1)]),
        "the foreign 401 is not retried"
    );
    assert_eq!(api.stats().token_calls, 0, "and causes no refresh");
}

both_adapters!(
    a_foreign_site_redirecting_to_the_api_gets_no_authorized_request:
    tower_a_foreign_site_redirecting_to_the_api_gets_no_authorized_request,
    reqwest_a_foreign_site_redirecting_to_the_api_gets_no_authorized_request
);
/// A site we do not name answers a `DELETE` with a 307 to the API. Stamping that hop would let
/// any site make our client send authorized requests of its choosing (request forgery).
async fn a_foreign_site_redirecting_to_the_api_gets_no_authorized_request(adapter: Adapter) {
    let api = TestServer::start().await.unwrap();
    let attacker = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&api, &clock, HOUR);
    let client = client_for(adapter, &api, provider);

    let hook = redirect_to(&attacker, &api.url("/api/items/7"));
    let response = client.send(TestRequest::delete(hook)).await.unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let seen = api.seen_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].path_and_query, "/api/items/7");
    assert_eq!(
        seen[0].authorization, None,
        "the API got no authorized DELETE"
    );
    assert_eq!(authorizations(&attacker), [None]);
    assert_eq!(api.stats().token_calls, 0, "and no refresh");
}

both_adapters!(
    with_any_https_origin_a_redirect_to_a_third_host_carries_no_credential:
    tower_with_any_https_origin_a_redirect_to_a_third_host_carries_no_credential,
    reqwest_with_any_https_origin_a_redirect_to_a_third_host_carries_no_credential
);
/// `any_https_origin()` stamps any https request the caller sends, but not a hop the API
/// redirects to: the API's 302 to its storage host must not hand the storage host our token.
async fn with_any_https_origin_a_redirect_to_a_third_host_carries_no_credential(adapter: Adapter) {
    let api = TestServer::start().await.unwrap();
    let storage = TestServer::start().await.unwrap();
    let api_tls = TlsFront::start(api.addr()).await;
    let storage_tls = TlsFront::start(storage.addr()).await;
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&api, &clock, HOUR);
    let client = Client::any_https(adapter, provider).unwrap();

    // Any https origin is stamped.
    let direct = api_tls.url("api.example.com", "/api/resource");
    let response = client.send(TestRequest::get(direct)).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);

    let export = storage_tls.url("bucket.storage.example", "/api/export.csv");
    let redirect = api_tls.url("api.example.com", "/redirect");
    let params = [("to", export.as_str()), ("status", "302")];
    let url = reqwest::Url::parse_with_params(&redirect, params).unwrap();
    let response = client.send(TestRequest::get(url)).await.unwrap();

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        authorizations(&api),
        vec![bearer(&grant.access_token); 2],
        "the direct request and the first hop"
    );
    assert_eq!(
        authorizations(&storage),
        [None],
        "the storage host got nothing"
    );
    assert_eq!(
        resource_calls(&storage),
        counts(&[(401, 1)]),
        "its 401 is not retried"
    );
    assert_eq!(api.stats().token_calls, 0);
}

both_adapters!(
    a_redirect_back_from_another_origin_arrives_without_credential_and_is_retried_once:
    tower_a_redirect_back_from_another_origin_arrives_without_credential_and_is_retried_once,
    reqwest_a_redirect_back_from_another_origin_arrives_without_credential_and_is_retried_once
);
/// `api` -> `other` -> `api`: once the chain has left the stamped origin, no hop carries the
/// credential, not even the one back.
async fn a_redirect_back_from_another_origin_arrives_without_credential_and_is_retried_once(
    adapter: Adapter,
) {
    let api = TestServer::start().await.unwrap();
    let other = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&api, &clock, HOUR);
    let client = client_for(adapter, &api, provider);
    let back = redirect_to(&other, &api.resource_url());

    let response = client
        .send(TestRequest::get(redirect_to(&api, &back)))
        .await
        .unwrap();

    // The final 401 comes from the stamped origin, so the adapter takes it for a rejected
    // credential (it cannot tell that the last hop carried none): the provider refreshes, and
    // the one retry meets the same chain, whose 401 is returned.
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let seen = authorizations(&api);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], bearer(&grant.access_token));
    assert_eq!(seen[1], None, "the hop back arrived without a credential");
    assert!(seen[2].as_deref().unwrap().starts_with("Bearer "));
    assert_ne!(seen[2], seen[0], "the retry's refreshed token");
    assert_eq!(seen[3], None);
    assert_eq!(authorizations(&other), [None, None]);
    assert_eq!(api.stats().refresh_grants, 1);
}

both_adapters!(
    honours_skip_and_a_per_request_provider_on_every_hop:
    tower_honours_skip_and_a_per_request_provider_on_every_hop,
    reqwest_honours_skip_and_a_per_request_provider_on_every_hop
);
/// Per-request control holds for the whole chain: a skipped request is stamped on no hop, and
/// a request for another provider never gets the adapter's own credential.
async fn honours_skip_and_a_per_request_provider_on_every_hop(adapter: Adapter) {
    let api = TestServer::start_with(ServerConfig::default().api_key("other-key"))
        .await
        .unwrap();
    let other = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&api, &clock, HOUR);
    let client = client_for(adapter, &api, provider);
    let same = redirect_to(&api, &api.resource_url());
    let admin: Arc<dyn AuthorizationProvider> =
        Arc::new(StaticToken::api_key("other-key").unwrap());
    let key = Some("Token other-key".to_owned());

    let skipped = TestRequest::get(&same).control(AuthorizationControl::Skip);
    let response = client.send(skipped).await.unwrap();
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(authorizations(&api), [None, None], "no hop is stamped");

    let overridden = TestRequest::get(&same).control(AuthorizationControl::Provider(admin.clone()));
    let response = client.send(overridden).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["kind"], "api_key");
    assert_eq!(
        authorizations(&api)[2..],
        [key.clone(), key.clone()],
        "the per-request provider's credential on both hops"
    );

    let away = redirect_to(&api, &other.resource_url());
    let overridden = TestRequest::get(away).control(AuthorizationControl::Provider(admin));
    client.send(overridden).await.unwrap();
    assert_eq!(authorizations(&api)[4..], [key]);
    assert_eq!(authorizations(&other), [None]);
    assert_eq!(
        api.stats().token_calls,
        0,
        "the adapter's provider was never asked"
    );
}

both_adapters!(
    skips_overrides_or_force_refreshes_per_request:
    tower_skips_overrides_or_force_refreshes_per_request,
    reqwest_skips_overrides_or_force_refreshes_per_request
);
async fn skips_overrides_or_force_refreshes_per_request(adapter: Adapter) {
    let server = TestServer::start_with(ServerConfig::default().api_key("other-key"))
        .await
        .unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock, HOUR);
    let client = client_for(adapter, &server, provider);
    let other: Arc<dyn AuthorizationProvider> =
        Arc::new(StaticToken::api_key("other-key").unwrap());

    let skipped = client
        .send(TestRequest::get(server.resource_url()).control(AuthorizationControl::Skip))
        .await
        .unwrap();
    let overridden = client
        .send(
            TestRequest::get(server.resource_url()).control(AuthorizationControl::Provider(other)),
        )
        .await
        .unwrap();
    let plain = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap();
    assert_eq!(server.stats().token_calls, 0);
    let forced = client
        .send(TestRequest::get(server.resource_url()).control(AuthorizationControl::ForceRefresh))
        .await
        .unwrap();

    assert_eq!(skipped.status, StatusCode::UNAUTHORIZED);
    assert_eq!(overridden.status, StatusCode::OK);
    assert_eq!(overridden.json()["kind"], "api_key");
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.json()["kind"], "bearer");
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(server.stats().refresh_grants, 1, "the forced refresh");
    let seen = authorizations(&server);
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], None, "skipped");
    assert_eq!(seen[1], Some("Token other-key".to_owned()), "overridden");
    assert_eq!(seen[2], bearer(&grant.access_token), "the layer's provider");
    assert!(seen[3].as_deref().unwrap().starts_with("Bearer "));
    assert_ne!(seen[3], seen[2], "refreshed before sending");
    assert_eq!(resource_calls(&server), counts(&[(200, 3), (401, 1)]));
}

both_adapters!(
    does_not_send_when_the_customer_token_callback_returns_none:
    tower_does_not_send_when_the_customer_token_callback_returns_none,
    reqwest_does_not_send_when_the_customer_token_callback_returns_none
);
async fn does_not_send_when_the_customer_token_callback_returns_none(adapter: Adapter) {
    let server = TestServer::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let provider = CustomerToken::from_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<Option<String>, Infallible>(None) }
    });
    let client = client_for(adapter, &server, provider);

    let error = client
        .send(TestRequest::get(server.resource_url()))
        .await
        .unwrap_err();

    assert!(
        matches!(error.auth(), client_auth::Error::NoCredentials),
        "{error:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the callback was asked");
    assert!(server.seen_requests().is_empty(), "not sent");
    assert!(resource_calls(&server).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Tower only
// ---------------------------------------------------------------------------------------------

/// Tower only: readiness reservations (`poll_ready` taking a `Buffer` slot) exist in tower;
/// reqwest-middleware has no readiness, and its token transport is a separate client.
///
/// One `Buffer` with a single slot is shared by the API requests and the token transport. An
/// expired token makes every request wait for a refresh that needs that slot; the layer must
/// give its reservation back while it waits. Bounded by a timeout: a deadlock fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_a_buffered_inner_service_whose_slot_is_taken_does_not_deadlock_during_a_refresh() {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(100)))
            .await
            .unwrap();
    let clock = ManualClock::new();
    let grant = server.issue_grant("alice", None);
    let http_client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let buffer = tower::buffer::Buffer::new(http_client, 1);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(HOUR))
        .clock(Arc::new(clock.clone()))
        .transport(Arc::new(TowerTransport::<_, Full<Bytes>>::new(
            buffer.clone(),
        )))
        .build()
        .unwrap();
    let layer = AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .build()
        .unwrap();
    let client = layer.layer(buffer);
    clock.advance(HOUR + Duration::from_secs(1));

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut client = client.clone();
        let request = Request::get(server.resource_url())
            .body(Full::<Bytes>::default())
            .unwrap();
        requests.spawn(async move {
            // Each request reserves the slot in `poll_ready`, then finds the token expired.
            client.ready().await?.call(request).await
        });
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(answer) = requests.join_next().await {
            assert_eq!(answer.unwrap().unwrap().status(), StatusCode::OK);
        }
    })
    .await
    .expect("deadlock: a request held the only Buffer slot the refresh needed");

    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert_eq!(stats.resource_calls, counts(&[(200, 20)]));
    assert!(
        authorizations(&server)
            .iter()
            .all(|a| *a != bearer(&grant.access_token))
    );
}
