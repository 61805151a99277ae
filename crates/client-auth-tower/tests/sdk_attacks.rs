//! Attacks on what SDKs need: body snapshot checks, caller-set headers, relative URIs, the error
//! chain. A test marked `#[ignore = "known limit…"]` asserts what the crate cannot check, and
//! its docs say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, CustomerToken, Generation, RequestView,
    Unauthorized, UnauthorizedFuture,
};
use client_auth_tower::{AuthorizeLayer, BoxError};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

const API: &str = "https://api.example.com";

#[derive(Default)]
struct Rotating {
    authorize_calls: AtomicUsize,
}

impl AuthorizationProvider for Rotating {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        self.authorize_calls.fetch_add(1, Ordering::SeqCst);
        AuthorizeFuture::ready(Ok(credential("Bearer t1", 1)))
    }
    fn on_unauthorized(&self, _: &Credential, _: StatusCode, _: &HeaderMap) -> UnauthorizedFuture {
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

#[derive(Debug, Clone)]
struct Seen {
    uri: Uri,
    authorization: Option<HeaderValue>,
    body: Bytes,
}

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

const ISSUE: &[u8] = br#"{"title":"hello"}"#;

// ---- (1) the snapshot's size_hint check ----------------------------------------------------

/// A streaming body whose `Clone` shares the chunks (a shared channel / stream handle): its
/// size is unknown, as for any stream.
#[derive(Clone)]
struct SharedStream(Arc<Mutex<VecDeque<Bytes>>>);

impl SharedStream {
    fn new(chunks: &[&'static [u8]]) -> Self {
        Self(Arc::new(Mutex::new(
            chunks.iter().map(|c| Bytes::from_static(c)).collect(),
        )))
    }
}

impl Body for SharedStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(
            self.0
                .lock()
                .unwrap()
                .pop_front()
                .map(|b| Ok(Frame::data(b))),
        )
    }
    fn is_end_stream(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
    // size_hint: the default, unknown.
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "known limit, documented on the clone hooks: a body of unknown size cannot be checked, so Clone must be a deep copy"]
async fn a_drained_shallow_stream_of_unknown_size_is_never_resent_empty() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let layer = AuthorizeLayer::builder(Rotating::default())
        .allow_origin(API)
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<SharedStream>());
    let request = Request::post(format!("{API}/upload"))
        .body(SharedStream::new(&[b"{\"title\":", b"\"hello\"}"]))
        .unwrap();
    let _ = send(&mut service, request).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].body, Bytes::from_static(ISSUE));
    // Either no retry (the 401 returned), or a retry with the whole body.
    for retry in &seen[1..] {
        assert_eq!(
            retry.body,
            Bytes::from_static(ISSUE),
            "retry #{} carried {:?} (the copy was drained by the first send)",
            seen.len() - 1,
            retry.body
        );
    }
}

/// A body that knows its length from construction (a `Content-Length` read up front, a file's
/// length) and shares its bytes on `Clone`: its hint stays exact and unchanged once drained.
#[derive(Clone)]
struct FixedLenShared {
    len: u64,
    data: Arc<Mutex<Option<Bytes>>>,
}

impl FixedLenShared {
    fn new(bytes: &'static [u8]) -> Self {
        Self {
            len: bytes.len() as u64,
            data: Arc::new(Mutex::new(Some(Bytes::from_static(bytes)))),
        }
    }
}

impl Body for FixedLenShared {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.data.lock().unwrap().take().map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "known limit, documented on the clone hooks: a size_hint that does not follow the bytes cannot reveal a drained copy, so Clone must be a deep copy"]
async fn a_drained_shallow_body_with_a_stored_exact_length_is_never_resent_empty() {
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let layer = AuthorizeLayer::builder(Rotating::default())
        .allow_origin(API)
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<FixedLenShared>());
    let request = Request::post(format!("{API}/repos/o/r/issues"))
        .body(FixedLenShared::new(ISSUE))
        .unwrap();
    let _ = send(&mut service, request).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].body, Bytes::from_static(ISSUE));
    for retry in &seen[1..] {
        assert_eq!(
            retry.body,
            Bytes::from_static(ISSUE),
            "the retry carried {:?}",
            retry.body
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_deep_copy_of_unknown_size_is_still_retried() {
    // Holds: a body of unknown size with a deep copy hook is retried whole.
    let server = Server::answering(&[StatusCode::UNAUTHORIZED]);
    let layer = AuthorizeLayer::builder(Rotating::default())
        .allow_origin(API)
        .clone_body_with(|b: &SharedStream| {
            Some(SharedStream(Arc::new(Mutex::new(
                b.0.lock().unwrap().clone(),
            ))))
        })
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<SharedStream>());
    let request = Request::post(format!("{API}/upload"))
        .body(SharedStream::new(&[b"{\"title\":", b"\"hello\"}"]))
        .unwrap();
    let response = send(&mut service, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, Bytes::from_static(ISSUE));
    assert_eq!(seen[1].authorization.as_ref().unwrap(), "Bearer t2");
}

// ---- (2) caller-set Authorization -----------------------------------------------------------

async fn stamped_with(uri: &str, caller: &str) -> Option<HeaderValue> {
    let server = Server::answering(&[]);
    let layer = AuthorizeLayer::builder(Rotating::default())
        .allow_origin(API)
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<Full<Bytes>>());
    let request = Request::get(uri)
        .header(AUTHORIZATION, HeaderValue::from_str(caller).unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&mut service, request).await.unwrap();
    server.seen()[0].authorization.clone()
}

#[tokio::test(flavor = "current_thread")]
async fn scheme_only_caller_values_are_replaced_and_real_ones_kept() {
    for blank in ["Bearer\t", "Basic ", "bearer", "\t", "Token \t "] {
        let sent = stamped_with(&format!("{API}/x"), blank).await;
        assert_eq!(sent.unwrap(), "Bearer t1", "{blank:?}");
    }
    for real in [
        "bearer x",
        "Bearer\tx",
        "Basic dXNlcjpwdw==",
        "abc123",
        "Bearer x ",
    ] {
        let sent = stamped_with(&format!("{API}/x"), real).await;
        assert_eq!(sent.unwrap(), real, "{real:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_scheme_only_header_to_another_origin_passes_through_untouched() {
    for blank in ["Bearer ", "Bearer", "", "Basic "] {
        for uri in [
            "https://evil.example.com/x",
            "http://api.example.com/x",
            "https://api.example.com:8443/x",
            "https://user@api.example.com/x",
        ] {
            let sent = stamped_with(uri, blank).await;
            assert_eq!(sent.unwrap(), blank, "{uri} {blank:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_schemeless_caller_key_with_trailing_whitespace_is_kept() {
    let sent = stamped_with(&format!("{API}/x"), "sk-live-123 ").await;
    assert_eq!(sent.unwrap(), "sk-live-123 ");
}

// ---- (3) relative URI resolution ------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn resolution_never_stamps_a_credential_for_another_host() {
    check_resolution(&[
        "//evil.example/path",
        "//evil.example:443/path",
        "///evil.example/path",
        "/x?u=https://evil.example/",
        "/a/../..//evil.example/",
        "evil.example:443",
        "evil.example",
        "/path?q=1",
    ])
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_asterisk_form_uri_is_not_resolved_into_a_malformed_stamped_uri() {
    check_resolution(&["*"]).await;
}

async fn check_resolution(raws: &[&str]) {
    for &raw in raws {
        let Ok(uri) = raw.parse::<Uri>() else {
            continue;
        };
        let server = Server::answering(&[]);
        let layer = AuthorizeLayer::builder(Rotating::default())
            .allow_origin(API)
            .resolve_relative_to(API)
            .build()
            .unwrap();
        let mut service = layer.layer(server.service::<Full<Bytes>>());
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        send(&mut service, request).await.unwrap();
        let seen = &server.seen()[0];
        if seen.authorization.is_some() {
            // Whatever was stamped goes to the named origin, also when re-parsed from text.
            assert_eq!(seen.uri.host(), Some("api.example.com"), "{raw}");
            let reparsed: Uri = seen.uri.to_string().parse().expect(raw);
            assert_eq!(
                reparsed.host(),
                Some("api.example.com"),
                "{raw} -> {}",
                seen.uri
            );
            assert_eq!(reparsed.scheme_str(), Some("https"), "{raw}");
            // hyper / reqwest send to the host of the URI; a URL parser must agree.
            let url = url::Url::parse(&seen.uri.to_string());
            if let Ok(url) = url {
                assert_eq!(
                    url.host_str(),
                    Some("api.example.com"),
                    "{raw} -> {}",
                    seen.uri
                );
            }
        }
    }
}

// ---- (4) the error chain ------------------------------------------------------------------

fn walk(error: &(dyn std::error::Error + 'static)) -> Vec<(String, String)> {
    std::iter::successors(Some(error), |e| e.source())
        .map(|e| (e.to_string(), format!("{e:?}")))
        .collect()
}

#[derive(Debug)]
struct IdpFailure {
    url: String,
}
impl fmt::Display for IdpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity provider call to {} failed", self.url)
    }
}
impl std::error::Error for IdpFailure {}

#[tokio::test(flavor = "current_thread")]
async fn no_level_of_a_callback_error_chain_prints_url_userinfo_or_query_values() {
    let provider = CustomerToken::from_fn(|| async {
        Err::<Option<String>, _>(IdpFailure {
            url: "https://svc:hunter2@idp.internal/token?client_secret=MARKER".into(),
        })
    });
    let server = Server::answering(&[]);
    let layer = AuthorizeLayer::builder(provider)
        .allow_origin(API)
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<Full<Bytes>>());
    let error = send(
        &mut service,
        Request::get(format!("{API}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(client_auth_tower::auth_error(&*error).is_some());
    let levels = walk(&*error);
    assert!(levels.len() >= 2, "{levels:?}");
    for (i, (display, debug)) in levels.iter().enumerate() {
        for text in [display, debug] {
            assert!(
                !text.contains("hunter2") && !text.contains("MARKER"),
                "level {i}: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_callback_error_stays_downcastable_through_the_layer() {
    // Holds: the callback's own type is reached by walking source().
    let provider = CustomerToken::from_fn(|| async {
        Err::<Option<String>, _>(IdpFailure {
            url: "idp down".into(),
        })
    });
    let server = Server::answering(&[]);
    let layer = AuthorizeLayer::builder(provider)
        .allow_origin(API)
        .build()
        .unwrap();
    let mut service = layer.layer(server.service::<Full<Bytes>>());
    let error = send(
        &mut service,
        Request::get(format!("{API}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap_err();
    let found = std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| e.downcast_ref::<IdpFailure>().is_some());
    assert!(found, "{:?}", walk(&*error));
}
