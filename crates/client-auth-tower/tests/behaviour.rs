//! Behaviour of `Authorize` against `tower::service_fn` fakes: no sockets, every answer
//! scripted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Error, Generation,
    OriginPolicy, RequestView, StaticToken, Unauthorized, UnauthorizedFuture,
};
use client_auth_tower::{
    Authorize, AuthorizeLayer, BoxError, CloneEmptyBody, NeverClone, ResponseFuture,
};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

const API: &str = "https://api.example.com";

// ---- fakes -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum On401 {
    Retry,
    GiveUp,
    Fail,
}

/// A provider whose every answer is scripted, counting calls.
struct Fake {
    /// `authorize` answers only after `release` is notified.
    gate: Option<Arc<Notify>>,
    fail: bool,
    recover: bool,
    on_401: On401,
    authorize_calls: AtomicUsize,
    unauthorized_calls: AtomicUsize,
    /// The generation of every credential reported accepted, in order.
    accepted: Mutex<Vec<u64>>,
}

impl Fake {
    fn new() -> Self {
        Self {
            gate: None,
            fail: false,
            recover: true,
            on_401: On401::Retry,
            authorize_calls: AtomicUsize::new(0),
            unauthorized_calls: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        }
    }

    fn accepted(&self) -> Vec<u64> {
        self.accepted.lock().unwrap().clone()
    }
}

fn credential(token: &'static str, generation: u64) -> Credential {
    Credential::new(HeaderValue::from_static(token), Generation::new(generation))
}

impl AuthorizationProvider for Fake {
    fn authorize(&self, _request: &RequestView<'_>) -> AuthorizeFuture {
        self.authorize_calls.fetch_add(1, Ordering::SeqCst);
        let result = if self.fail {
            Err(Error::NoCredentials)
        } else {
            Ok(credential("Bearer t1", 1))
        };
        match &self.gate {
            None => AuthorizeFuture::ready(result),
            Some(gate) => {
                let gate = Arc::clone(gate);
                AuthorizeFuture::pending(async move {
                    gate.notified().await;
                    result
                })
            }
        }
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        _: &HeaderMap,
    ) -> UnauthorizedFuture {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(failed.header_value(), "Bearer t1");
        self.unauthorized_calls.fetch_add(1, Ordering::SeqCst);
        let answer = match self.on_401 {
            On401::Retry => Ok(Unauthorized::Retry(credential("Bearer t2", 2))),
            On401::GiveUp => Ok(Unauthorized::GiveUp),
            On401::Fail => Err(Error::NoSession {
                reason: client_auth::SessionReason::Invalid("invalid_grant".into()),
            }),
        };
        // The slow path, as a refresh would be.
        UnauthorizedFuture::pending(async move { answer })
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

#[derive(Debug, Clone, PartialEq)]
struct Marker(u32);

#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<HeaderValue>,
    marker: Option<Marker>,
    body: Bytes,
}

/// An inner service answering with scripted statuses (200 once the script is over),
/// recording what it was sent.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    statuses: Arc<Mutex<VecDeque<StatusCode>>>,
}

impl Server {
    fn answering(statuses: &[StatusCode]) -> Self {
        let server = Self::default();
        server
            .statuses
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
        server
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn service<B>(
        &self,
    ) -> impl Service<Request<B>, Response = Response<String>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + use<B>
    where
        B: http_body::Body<Data = Bytes, Error: std::fmt::Debug> + Send + 'static,
    {
        let server = self.clone();
        tower::service_fn(move |request: Request<B>| {
            let server = server.clone();
            async move {
                let authorization = request.headers().get(AUTHORIZATION).cloned();
                if let Some(value) = &authorization {
                    assert!(value.is_sensitive() || value == "Bearer caller");
                }
                let marker = request.extensions().get::<Marker>().cloned();
                let body = request.into_body().collect().await.unwrap().to_bytes();
                server.seen.lock().unwrap().push(Seen {
                    authorization,
                    marker,
                    body,
                });
                let status = server
                    .statuses
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(StatusCode::OK);
                let mut response =
                    Response::new(format!("answer {}", server.seen.lock().unwrap().len()));
                *response.status_mut() = status;
                Ok::<_, BoxError>(response)
            }
        })
    }
}

fn origins() -> OriginPolicy {
    OriginPolicy::builder().allow_origin(API).build().unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{API}{path}"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

async fn send<S, B>(service: &mut S, request: Request<B>) -> Result<S::Response, BoxError>
where
    S: Service<Request<B>, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

fn auth(seen: &Seen) -> Option<&str> {
    seen.authorization.as_ref().map(|v| v.to_str().unwrap())
}

// ---- construction ------------------------------------------------------------------------

#[test]
fn layer_and_service_are_clone_and_debug_without_a_debug_provider() {
    struct NotDebug;
    impl AuthorizationProvider for NotDebug {
        fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
            AuthorizeFuture::ready(Err(Error::NoCredentials))
        }
    }
    let layer = AuthorizeLayer::new(NotDebug, origins());
    let copy = layer.clone();
    assert!(format!("{copy:?}").contains("AuthorizeLayer"));
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let _ = service.clone();
    let with_closure =
        AuthorizeLayer::new(NotDebug, origins()).clone_body_with(|b: &String| Some(b.clone()));
    assert!(format!("{with_closure:?}").contains("clone_body"));
}

#[test]
fn building_without_an_origin_is_an_error() {
    let error = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

#[test]
fn plain_http_origins_are_refused_without_allow_http() {
    let refused = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .allow_origin("http://127.0.0.1:8080")
        .build();
    assert!(matches!(refused, Err(Error::Config(_))));
    let allowed = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .allow_origin("http://127.0.0.1:8080")
        .allow_http(true)
        .build();
    assert!(allowed.is_ok());
}

// ---- the fresh path ----------------------------------------------------------------------

#[tokio::test]
async fn a_fresh_credential_is_stamped_and_sensitive() {
    let server = Server::default();
    let mut service = Authorize::new(server.service(), Fake::new(), origins());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(auth(&seen[0]), Some("Bearer t1"));
    assert!(seen[0].authorization.as_ref().unwrap().is_sensitive());
}

#[tokio::test]
async fn requests_to_other_origins_pass_through_untouched() {
    let server = Server::default();
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    for uri in [
        "https://cdn.example.net/x",
        "http://api.example.com/x",
        "https://api.example.com:8443/x",
        "/relative",
    ] {
        let request = Request::get(uri).body(Full::default()).unwrap();
        send(&mut service, request).await.unwrap();
    }
    assert!(server.seen().iter().all(|s| s.authorization.is_none()));
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_provider_error_means_the_request_is_not_sent() {
    // Both the path that can retry and the one of a provider that never recovers.
    for (gated, recover) in [(false, true), (true, true), (false, false), (true, false)] {
        let server = Server::default();
        let gate = Arc::new(Notify::new());
        let mut fake = Fake::new();
        fake.fail = true;
        fake.recover = recover;
        if gated {
            fake.gate = Some(Arc::clone(&gate));
            gate.notify_one();
        }
        let mut service = Authorize::new(server.service(), fake, origins());
        let error = send(&mut service, get("/v1")).await.unwrap_err();
        let error = error.downcast_ref::<Error>().expect("the provider's error");
        assert!(
            matches!(error, Error::NoCredentials),
            "{error:?}, gated = {gated}, recover = {recover}"
        );
        assert!(
            server.seen().is_empty(),
            "gated = {gated}, recover = {recover}"
        );
    }
}

#[tokio::test]
async fn a_credential_that_needs_a_refresh_is_awaited_then_stamped() {
    let server = Server::default();
    let gate = Arc::new(Notify::new());
    let mut fake = Fake::new();
    fake.gate = Some(Arc::clone(&gate));
    let mut service = Authorize::new(server.service(), fake, origins());
    let future = service.ready().await.unwrap().call(get("/v1"));
    assert!(format!("{future:?}").contains("Authorizing"));
    let task = tokio::spawn(future);
    tokio::task::yield_now().await;
    assert!(server.seen().is_empty());
    gate.notify_one();
    let response = task.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(auth(&server.seen()[0]), Some("Bearer t1"));
}

// ---- 401 handling ------------------------------------------------------------------------

#[tokio::test]
async fn a_401_is_retried_once_with_the_new_credential_keeping_body_and_extensions() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut service = Authorize::new(server.service(), Fake::new(), origins());
    let mut request = get("/v1");
    request.extensions_mut().insert(Marker(7));
    let response = send(&mut service, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "answer 2");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(auth(&seen[0]), Some("Bearer t1"));
    assert_eq!(auth(&seen[1]), Some("Bearer t2"));
    assert!(seen[1].authorization.as_ref().unwrap().is_sensitive());
    assert_eq!(
        seen[1].marker,
        Some(Marker(7)),
        "the retry keeps the extensions"
    );
    assert_eq!(seen[1].body, "payload");
}

#[tokio::test]
async fn a_second_401_is_returned_without_another_retry() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "answer 2", "the retry's answer");
    assert_eq!(server.seen().len(), 2);
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn when_the_provider_gives_up_the_original_401_is_returned() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut fake = Fake::new();
    fake.on_401 = On401::GiveUp;
    let mut service = Authorize::new(server.service(), fake, origins());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "answer 1");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn when_the_session_ended_during_a_401_the_error_is_returned() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut fake = Fake::new();
    fake.on_401 = On401::Fail;
    let mut service = Authorize::new(server.service(), fake, origins());
    let error = send(&mut service, get("/v1")).await.unwrap_err();
    assert!(error.downcast_ref::<Error>().unwrap().is_session_ended());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_403_is_returned_unchanged_and_never_retried() {
    let server = Server::answering(&[StatusCode::FORBIDDEN]);
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_caller_set_authorization_is_kept_and_its_401_returned_unchanged() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    let mut request = get("/v1");
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer caller"));
    let response = send(&mut service, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(auth(&seen[0]), Some("Bearer caller"));
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_provider_that_cannot_recover_takes_no_snapshot_and_its_401_is_returned() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hook_calls);
    let mut fake = Fake::new();
    fake.recover = false;
    let provider = Arc::new(fake);
    let mut service = AuthorizeLayer::from_arc(Arc::clone(&provider), origins())
        .clone_body_with(move |body: &Full<Bytes>| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(body.clone())
        })
        .layer(server.service());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(hook_calls.load(Ordering::SeqCst), 0, "no snapshot");
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
}

/// Captures `tracing` output of the current thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_that_cannot_be_cloned_is_sent_once_and_its_401_returned_with_a_warning() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Fake::new());
    let mut service = AuthorizeLayer::from_arc(Arc::clone(&provider), origins())
        .clone_body_with(NeverClone)
        .layer(server.service());
    let response = send(&mut service, get("/v1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "answer 1");
    assert_eq!(server.seen().len(), 1);
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("401 not retried"), "{logs}");
    assert!(!logs.contains("Bearer t1"), "no token in the logs: {logs}");
}

type Boxed = UnsyncBoxBody<Bytes, Infallible>;

fn boxed_get(body: Boxed) -> Request<Boxed> {
    Request::post(format!("{API}/v1")).body(body).unwrap()
}

#[tokio::test]
async fn boxed_bodies_work_and_an_empty_one_is_rebuilt_for_the_retry() {
    // CloneEmptyBody: an empty boxed body is rebuilt with Default, a full one is not copied.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut service = AuthorizeLayer::new(Fake::new(), origins())
        .clone_body_with(CloneEmptyBody)
        .layer(server.service::<Boxed>());
    let response = send(&mut service, boxed_get(Empty::new().boxed_unsync()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.seen().len(), 2);

    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut service = AuthorizeLayer::new(Fake::new(), origins())
        .clone_body_with(CloneEmptyBody)
        .layer(server.service::<Boxed>());
    let full = Full::new(Bytes::from_static(b"upload")).boxed_unsync();
    let response = send(&mut service, boxed_get(full)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.seen().len(), 1);

    // NeverClone compiles around any body.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut service: Authorize<_, Fake, NeverClone> = AuthorizeLayer::new(Fake::new(), origins())
        .clone_body_with(NeverClone)
        .layer(server.service::<Boxed>());
    let response = send(&mut service, boxed_get(Empty::new().boxed_unsync()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

// ---- acceptance --------------------------------------------------------------------------

/// How a stamped request can travel: fresh or after a wait for the credential, with a
/// snapshot for the retry, without one (a provider that cannot recover), or with a body that
/// could not be copied.
fn stamped_paths() -> Vec<(String, Fake, bool)> {
    let mut paths = Vec::new();
    for gated in [false, true] {
        for (path, recover, never_clone) in [
            ("snapshot", true, false),
            ("cannot recover", false, false),
            ("body not cloned", true, true),
        ] {
            let mut fake = Fake::new();
            fake.recover = recover;
            if gated {
                let gate = Arc::new(Notify::new());
                gate.notify_one();
                fake.gate = Some(gate);
            }
            let when = if gated { "waited" } else { "fresh" };
            paths.push((format!("{when}, {path}"), fake, never_clone));
        }
    }
    paths
}

/// `provider`'s layer around `server`, with the default clone hook or `NeverClone`.
fn layered(
    provider: &Arc<Fake>,
    server: &Server,
    never_clone: bool,
) -> tower::util::BoxService<Request<Full<Bytes>>, Response<String>, BoxError> {
    let layer = AuthorizeLayer::from_arc(Arc::clone(provider), origins());
    if never_clone {
        tower::util::BoxService::new(layer.clone_body_with(NeverClone).layer(server.service()))
    } else {
        tower::util::BoxService::new(layer.layer(server.service()))
    }
}

#[tokio::test]
async fn on_accepted_is_told_the_stamped_generation_once_for_any_answer_but_a_401() {
    for status in [StatusCode::OK, StatusCode::FORBIDDEN, StatusCode::NOT_FOUND] {
        for (path, fake, never_clone) in stamped_paths() {
            let server = Server::answering(&[status]);
            let provider = Arc::new(fake);
            let mut service = layered(&provider, &server, never_clone);
            let response = send(&mut service, get("/v1")).await.unwrap();
            assert_eq!(response.status(), status);
            assert_eq!(provider.accepted(), [1], "{status}, {path}");
            assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
        }
    }
}

#[tokio::test]
async fn on_accepted_is_told_the_retry_credential_after_401_retry_200() {
    for gated in [false, true] {
        let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
        let mut fake = Fake::new();
        if gated {
            let gate = Arc::new(Notify::new());
            gate.notify_one();
            fake.gate = Some(gate);
        }
        let provider = Arc::new(fake);
        let mut service = layered(&provider, &server, false);
        let response = send(&mut service, get("/v1")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(auth(&server.seen()[1]), Some("Bearer t2"));
        assert_eq!(
            provider.accepted(),
            [2],
            "only the retry's credential, once (gated = {gated})"
        );
    }
}

#[tokio::test]
async fn on_accepted_is_not_called_for_a_401_that_is_returned() {
    // The retry's 401.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Fake::new());
    let response = send(&mut layered(&provider, &server, false), get("/v1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.seen().len(), 2);
    assert_eq!(provider.accepted(), Vec::<u64>::new(), "after a retry");

    // A provider that gives up.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut fake = Fake::new();
    fake.on_401 = On401::GiveUp;
    let provider = Arc::new(fake);
    let response = send(&mut layered(&provider, &server, false), get("/v1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(provider.accepted(), Vec::<u64>::new(), "given up");

    // No retry possible: every path a stamped request takes.
    for (path, fake, never_clone) in stamped_paths() {
        let server = Server::answering(&[StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED]);
        let provider = Arc::new(fake);
        let response = send(&mut layered(&provider, &server, never_clone), get("/v1"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(provider.accepted(), Vec::<u64>::new(), "{path}");
    }
}

#[tokio::test]
async fn on_accepted_is_not_called_for_requests_the_layer_did_not_stamp() {
    let server = Server::default();
    let provider = Arc::new(Fake::new());
    let mut service = layered(&provider, &server, false);

    let mut caller_set = get("/v1");
    caller_set
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer caller"));
    let mut skipped = get("/v1");
    skipped.extensions_mut().insert(AuthorizationControl::Skip);
    let foreign = Request::get("https://cdn.example.net/x")
        .body(Full::default())
        .unwrap();
    for request in [caller_set, skipped, foreign] {
        let response = send(&mut service, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    assert_eq!(server.seen().len(), 3);
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
    assert_eq!(provider.accepted(), Vec::<u64>::new());
}

#[tokio::test]
async fn on_accepted_goes_to_the_per_request_provider_that_stamped() {
    let server = Server::default();
    let provider = Arc::new(Fake::new());
    let mut service = layered(&provider, &server, false);
    let other = Arc::new(Fake::new());
    let mut request = get("/v1");
    request
        .extensions_mut()
        .insert(AuthorizationControl::Provider(
            Arc::clone(&other) as Arc<dyn AuthorizationProvider>
        ));

    send(&mut service, request).await.unwrap();

    assert_eq!(other.accepted(), [1]);
    assert_eq!(provider.accepted(), Vec::<u64>::new());
}

// ---- per-request control -----------------------------------------------------------------

#[tokio::test]
async fn skip_in_the_extensions_sends_without_a_credential() {
    let server = Server::default();
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    let mut request = get("/v1");
    request.extensions_mut().insert(AuthorizationControl::Skip);
    send(&mut service, request).await.unwrap();
    assert_eq!(auth(&server.seen()[0]), None);
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_provider_in_the_extensions_replaces_the_layers() {
    let server = Server::default();
    let provider = Arc::new(Fake::new());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());
    let mut request = get("/v1");
    let other: Arc<dyn AuthorizationProvider> = Arc::new(StaticToken::api_key("other").unwrap());
    request
        .extensions_mut()
        .insert(AuthorizationControl::Provider(other));
    send(&mut service, request).await.unwrap();
    assert_eq!(auth(&server.seen()[0]), Some("Token other"));
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
}

// ---- readiness ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_refresh_does_not_hold_a_buffer_slot() {
    let server = Server::default();
    let gate = Arc::new(Notify::new());
    let mut fake = Fake::new();
    fake.gate = Some(Arc::clone(&gate));
    let buffer = tower::buffer::Buffer::new(server.service::<Full<Bytes>>(), 1);
    let mut service = Authorize::new(buffer.clone(), fake, origins());

    // The request reserves the buffer's only slot in poll_ready, then waits for its credential.
    let waiting = tokio::spawn(service.ready().await.unwrap().call(get("/v1")));

    // Someone else (the token transport, another request) gets the slot meanwhile.
    let mut other = buffer.clone();
    let reserved = tokio::time::timeout(Duration::from_secs(5), other.ready()).await;
    assert!(
        reserved.is_ok(),
        "the waiting request held the buffer's slot"
    );
    let answer = other.call(
        Request::get(format!("{API}/other"))
            .body(Full::default())
            .unwrap(),
    );
    assert_eq!(answer.await.unwrap().status(), StatusCode::OK);

    gate.notify_one();
    let response = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(auth(&server.seen()[1]), Some("Bearer t1"));
}

#[tokio::test]
async fn the_response_future_is_named_and_debug() {
    let server = Server::default();
    let mut service = Authorize::new(server.service(), Fake::new(), origins());
    let future: ResponseFuture<_, Full<Bytes>> = service.ready().await.unwrap().call(get("/v1"));
    assert!(format!("{future:?}").contains("ResponseFuture"));
    future.await.unwrap();
}
