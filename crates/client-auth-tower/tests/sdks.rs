//! What SDKs built on tower run into, against `tower::service_fn` fakes: a body whose `Clone`
//! shares the bytes, relative URIs from a base-URI layer further in, their own empty
//! `Authorization`, and errors wrapped by outer layers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, CustomerToken, Error, Generation,
    RequestView, StaticToken, Unauthorized, UnauthorizedFuture,
};
use client_auth_tower::{AuthorizeLayer, BoxError, auth_error};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const API: &str = "https://api.example.com";

// ---- fakes -------------------------------------------------------------------------------

/// A provider that stamps `Bearer t1` and answers a 401 with `Bearer t2`.
#[derive(Default)]
struct Rotating {
    authorize_calls: AtomicUsize,
    unauthorized_calls: AtomicUsize,
}

impl AuthorizationProvider for Rotating {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        self.authorize_calls.fetch_add(1, Ordering::SeqCst);
        AuthorizeFuture::ready(Ok(credential("Bearer t1", 1)))
    }

    fn on_unauthorized(&self, _: &Credential, _: StatusCode, _: &HeaderMap) -> UnauthorizedFuture {
        self.unauthorized_calls.fetch_add(1, Ordering::SeqCst);
        UnauthorizedFuture::ready(Ok(Unauthorized::Retry(credential("Bearer t2", 2))))
    }

    fn can_recover(&self) -> bool {
        true
    }
}

fn credential(value: &'static str, generation: u64) -> Credential {
    let mut value = HeaderValue::from_static(value);
    value.set_sensitive(true);
    Credential::new(value, Generation::new(generation))
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uri: Uri,
    authorization: Option<HeaderValue>,
    body: Bytes,
}

/// An inner service answering with scripted statuses (200 once the script is over), recording
/// every request it gets, body included.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    statuses: Arc<Mutex<VecDeque<StatusCode>>>,
}

impl Server {
    fn answering(statuses: &[StatusCode]) -> Self {
        let server = Self::default();
        server.statuses.lock().unwrap().extend(statuses);
        server
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn service<B>(
        &self,
    ) -> impl Service<Request<B>, Response = Response<String>, Error = BoxError, Future: Send>
    + Clone
    + use<B>
    where
        B: Body<Data = Bytes, Error: fmt::Debug> + Send + 'static,
    {
        let server = self.clone();
        tower::service_fn(move |request: Request<B>| {
            let server = server.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                server.seen.lock().unwrap().push(Seen {
                    uri: parts.uri,
                    authorization: parts.headers.get(AUTHORIZATION).cloned(),
                    body,
                });
                let status = server.statuses.lock().unwrap().pop_front();
                let mut response = Response::new(String::new());
                *response.status_mut() = status.unwrap_or(StatusCode::OK);
                Ok::<_, BoxError>(response)
            }
        })
    }
}

async fn send<S, B>(service: &mut S, request: Request<B>) -> Result<S::Response, BoxError>
where
    S: Service<Request<B>, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

/// `tracing` output of the current thread, from `level` up.
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

impl Capture {
    fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

// ---- a body whose Clone shares the bytes -------------------------------------------------

/// A body like octocrab's `OctoBody`: `Clone` shares the bytes (the clone sees them drained
/// once either side was sent); `try_clone` makes a deep copy.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Option<Bytes>>>);

impl SharedBody {
    fn new(bytes: &'static [u8]) -> Self {
        Self(Arc::new(Mutex::new(Some(Bytes::from_static(bytes)))))
    }

    fn try_clone(&self) -> Option<Self> {
        let bytes = self.0.lock().unwrap().clone();
        Some(Self(Arc::new(Mutex::new(bytes))))
    }
}

impl Body for SharedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.lock().unwrap().take().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(
            self.0
                .lock()
                .unwrap()
                .as_ref()
                .map_or(0, |b| b.len() as u64),
        )
    }
}

fn post(body: SharedBody) -> Request<SharedBody> {
    Request::post(format!("{API}/repos/o/r/issues"))
        .body(body)
        .unwrap()
}

const ISSUE: &[u8] = br#"{"title":"hello"}"#;

#[tokio::test(flavor = "current_thread")]
async fn a_shallow_copy_drained_by_the_send_is_not_resent_and_a_warning_says_why() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::WARN);
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Rotating::default());
    // The default hook: `SharedBody: Clone`, so it compiles, and the copy shares the bytes.
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());

    let response = send(&mut service, post(SharedBody::new(ISSUE)))
        .await
        .unwrap();

    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the 401 itself"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "no retry with a drained body");
    assert_eq!(seen[0].body, ISSUE);
    assert_eq!(provider.unauthorized_calls.load(Ordering::SeqCst), 0);
    let logs = capture.text();
    assert!(
        logs.contains("WARN") && logs.contains("401 not retried") && logs.contains("deep copy"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_try_clone_method_is_a_hook_and_the_retry_carries_the_whole_body() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let provider = Arc::new(Rotating::default());
    let mut service = AuthorizeLayer::from_arc(Arc::clone(&provider), origins())
        .clone_body_with(SharedBody::try_clone)
        .layer(server.service());

    let response = send(&mut service, post(SharedBody::new(ISSUE)))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, ISSUE, "the retry sends the whole body");
    assert_eq!(seen[1].authorization.as_ref().unwrap(), "Bearer t2");
}

#[tokio::test]
async fn a_deep_copy_that_keeps_its_size_is_retried() {
    // `Full` copies deeply: the snapshot keeps its exact size and the retry goes out.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let mut service = AuthorizeLayer::new(Rotating::default(), origins()).layer(server.service());
    let request = Request::post(format!("{API}/v1"))
        .body(Full::new(Bytes::from_static(ISSUE)))
        .unwrap();

    let response = send(&mut service, request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let bodies: Vec<_> = server.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, [ISSUE, ISSUE]);
}

// ---- relative URIs -----------------------------------------------------------------------

fn origins() -> client_auth::OriginPolicy {
    client_auth::OriginPolicy::builder()
        .allow_origin(API)
        .build()
        .unwrap()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_relative_uri_passes_without_a_credential_and_is_logged_once_per_layer() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::WARN);
    let server = Server::default();
    let provider = Arc::new(Rotating::default());
    let layer = AuthorizeLayer::from_arc(Arc::clone(&provider), origins());
    // Two services from one layer share its warning.
    let mut first = layer.layer(server.service());
    let mut second = layer.layer(server.service());

    send(&mut first, get("/user")).await.unwrap();
    send(&mut second, get("/user/repos?page=2")).await.unwrap();

    let seen = server.seen();
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:?}");
    assert_eq!(seen[0].uri, "/user", "passed through as it came");
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
    let logs = capture.text();
    assert_eq!(logs.matches("relative URI").count(), 1, "{logs}");
    assert!(
        logs.contains("WARN") && logs.contains("resolve_relative_to"),
        "{logs}"
    );
    assert!(
        !logs.contains("page=2"),
        "no path or query in the log: {logs}"
    );
}

#[tokio::test]
async fn a_relative_uri_resolves_against_the_named_origin_and_gets_the_credential() {
    let server = Server::default();
    let mut service = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .allow_origin(API)
        .allow_origin("https://uploads.example.com")
        .resolve_relative_to(API)
        .build()
        .unwrap()
        .layer(server.service());

    send(&mut service, get("/user?page=2")).await.unwrap();
    send(&mut service, get("https://uploads.example.com/x"))
        .await
        .unwrap();

    let seen = server.seen();
    assert_eq!(seen[0].uri, "https://api.example.com/user?page=2");
    assert_eq!(seen[0].authorization.as_ref().unwrap(), "Token k");
    assert_eq!(
        seen[1].uri, "https://uploads.example.com/x",
        "absolute: unchanged"
    );
    assert_eq!(seen[1].authorization.as_ref().unwrap(), "Token k");
}

#[test]
fn resolving_against_an_origin_that_is_not_allowed_is_refused_at_build() {
    let built = AuthorizeLayer::builder(StaticToken::api_key("k").unwrap())
        .allow_origin(API)
        .resolve_relative_to("https://elsewhere.example.com")
        .build();
    assert!(matches!(built, Err(Error::Config(_))));
}

// ---- the caller's own Authorization ------------------------------------------------------

#[tokio::test]
async fn an_empty_or_scheme_only_caller_authorization_is_replaced_by_the_credential() {
    let server = Server::default();
    let mut service = AuthorizeLayer::new(Rotating::default(), origins()).layer(server.service());

    for blank in ["Bearer ", "Bearer", "", "token "] {
        let mut request = get(&format!("{API}/v1"));
        let value = HeaderValue::from_str(blank).unwrap();
        request.headers_mut().insert(AUTHORIZATION, value);
        send(&mut service, request).await.unwrap();
    }

    for seen in server.seen() {
        let value = seen.authorization.unwrap();
        assert_eq!(value, "Bearer t1");
        assert!(value.is_sensitive());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_caller_set_authorization_to_an_allowed_origin_is_kept_with_a_debug_event() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::DEBUG);
    let server = Server::default();
    let provider = Arc::new(Rotating::default());
    let mut service =
        AuthorizeLayer::from_arc(Arc::clone(&provider), origins()).layer(server.service());

    let mut request = get(&format!("{API}/v1"));
    let callers = HeaderValue::from_static("Bearer the-callers-own");
    request.headers_mut().insert(AUTHORIZATION, callers);
    send(&mut service, request).await.unwrap();
    // Another origin with a caller header: not ours, no event.
    let mut request = get("https://cdn.example.net/x");
    let callers = HeaderValue::from_static("Bearer cdn");
    request.headers_mut().insert(AUTHORIZATION, callers);
    send(&mut service, request).await.unwrap();

    let seen = server.seen();
    assert_eq!(
        seen[0].authorization.as_ref().unwrap(),
        "Bearer the-callers-own"
    );
    assert_eq!(provider.authorize_calls.load(Ordering::SeqCst), 0);
    let logs = capture.text();
    assert_eq!(
        logs.matches("the caller set Authorization").count(),
        1,
        "{logs}"
    );
    assert!(
        logs.contains("DEBUG") && logs.contains("api.example.com"),
        "{logs}"
    );
    assert!(
        !logs.contains("the-callers-own"),
        "the value is not logged: {logs}"
    );
}

// ---- errors ------------------------------------------------------------------------------

/// A callback's own error type.
#[derive(Debug)]
struct IdentityDown;

impl fmt::Display for IdentityDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the identity service is down")
    }
}

impl std::error::Error for IdentityDown {}

/// What an SDK returns: its own error, with the service's as source.
#[derive(Debug)]
struct SdkError(BoxError);

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the SDK call failed")
    }
}

impl std::error::Error for SdkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test]
async fn auth_error_finds_the_provider_error_under_outer_layers_and_its_source_is_the_callbacks() {
    let server = Server::default();
    let provider = CustomerToken::from_fn(|| async { Err::<Option<String>, _>(IdentityDown) });
    let mut client = ServiceBuilder::new()
        .map_err(|error: BoxError| -> BoxError { Box::new(SdkError(error)) })
        .layer(AuthorizeLayer::new(provider, origins()))
        .service(server.service::<Full<Bytes>>());

    let error = send(&mut client, get(&format!("{API}/v1")))
        .await
        .unwrap_err();

    assert!(server.seen().is_empty(), "not sent");
    assert!(
        error.downcast_ref::<Error>().is_none(),
        "wrapped by the SDK"
    );
    let auth = auth_error(&*error).expect("the provider's error");
    assert!(matches!(auth, Error::Callback(_)), "{auth:?}");
    let cause = std::error::Error::source(auth).expect("the callback's error");
    assert!(cause.is::<IdentityDown>());
}
