//! `ResponseFuture` stepped poll by poll: every provider answer and every inner future is a
//! gate the test opens, the inner service is ready only when the test says so, and the waker
//! does nothing. Each test pins one path through the state machine, reading the state from
//! the future's `Debug` after each poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use client_auth::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Error, Generation,
    OriginPolicy, RequestView, SessionReason, Unauthorized, UnauthorizedFuture,
};
use client_auth_tower::{Authorize, AuthorizeLayer, BoxError, NeverClone, ResponseFuture};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use tower::{Layer, Service};
use tower_http::follow_redirect::RequestUri;

const API: &str = "https://api.example.com";

// ---- gates -------------------------------------------------------------------------------

/// A value the test hands over later.
struct Slot<T>(Arc<Mutex<Option<T>>>);

impl<T> Slot<T> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    fn fill(&self, value: T) {
        *self.0.lock().unwrap() = Some(value);
    }

    /// A future that is pending until the slot is filled.
    fn gate(&self) -> Gate<T> {
        Gate(Arc::clone(&self.0))
    }
}

struct Gate<T>(Arc<Mutex<Option<T>>>);

impl<T> Future for Gate<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
        match self.0.lock().unwrap().take() {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    }
}

// ---- the provider ------------------------------------------------------------------------

fn credential(token: &'static str, generation: u64) -> Credential {
    Credential::new(HeaderValue::from_static(token), Generation::new(generation))
}

/// A provider whose slow answers wait for the test.
struct Scripted {
    /// `None`: the credential `Bearer t1` is at hand. `Some`: `authorize` waits for the slot.
    credential: Option<Slot<Result<Credential, Error>>>,
    /// What `on_unauthorized` answers, once the test fills it.
    on_401: Slot<Result<Unauthorized, Error>>,
    recover: bool,
    asked: AtomicUsize,
    accepted: Mutex<Vec<u64>>,
}

impl Scripted {
    fn fresh() -> Arc<Self> {
        Arc::new(Self::new(None))
    }

    fn refreshing() -> Arc<Self> {
        Arc::new(Self::new(Some(Slot::new())))
    }

    fn new(credential: Option<Slot<Result<Credential, Error>>>) -> Self {
        Self {
            credential,
            on_401: Slot::new(),
            recover: true,
            asked: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        }
    }

    fn accepted(&self) -> Vec<u64> {
        self.accepted.lock().unwrap().clone()
    }
}

impl AuthorizationProvider for Scripted {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        match &self.credential {
            None => AuthorizeFuture::ready(Ok(credential("Bearer t1", 1))),
            Some(slot) => AuthorizeFuture::pending(slot.gate()),
        }
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        _: StatusCode,
        _: &HeaderMap,
    ) -> UnauthorizedFuture {
        assert_eq!(failed.header_value(), "Bearer t1");
        self.asked.fetch_add(1, Ordering::SeqCst);
        UnauthorizedFuture::pending(self.on_401.gate())
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

// ---- the inner service -------------------------------------------------------------------

/// What the inner service was sent.
struct Sent {
    authorization: Option<HeaderValue>,
    marker: Option<u32>,
    body: String,
    answer: Slot<Result<Response<String>, BoxError>>,
}

#[derive(Default)]
struct Shared {
    /// Whether `poll_ready` answers `Ready`.
    ready: AtomicBool,
    /// Instances made ready and not yet called or dropped: a `Buffer` slot each.
    reserved: AtomicUsize,
    sent: Mutex<Vec<Sent>>,
}

/// An inner service that is ready when the test says so, counts its reservations, records
/// what it is sent, and answers when the test fills the answer's slot.
struct Inner {
    shared: Arc<Shared>,
    reserved: bool,
}

impl Inner {
    fn new() -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        shared.ready.store(true, Ordering::SeqCst);
        let inner = Self {
            shared: Arc::clone(&shared),
            reserved: false,
        };
        (inner, shared)
    }
}

impl Clone for Inner {
    /// A clone is not ready, like a `Buffer`'s.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            reserved: false,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.reserved {
            self.shared.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Service<Request<String>> for Inner {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Gate<Result<Response<String>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.reserved {
            if !self.shared.ready.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            self.reserved = true;
            self.shared.reserved.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        assert!(self.reserved, "called without poll_ready");
        self.reserved = false;
        self.shared.reserved.fetch_sub(1, Ordering::SeqCst);
        let answer = Slot::new();
        let gate = answer.gate();
        self.shared.sent.lock().unwrap().push(Sent {
            authorization: request.headers().get(AUTHORIZATION).cloned(),
            marker: request.extensions().get::<u32>().copied(),
            body: request.into_body(),
            answer,
        });
        gate
    }
}

impl Shared {
    fn sent(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    fn authorization(&self, index: usize) -> Option<HeaderValue> {
        self.sent.lock().unwrap()[index].authorization.clone()
    }

    /// Answers the `index`th request with `status` (and `last`, the `RequestUri` that a
    /// `FollowRedirect` below would have added).
    fn answer(&self, index: usize, status: StatusCode, last: Option<&'static str>) {
        let mut response = Response::new(format!("answer {index}"));
        *response.status_mut() = status;
        if let Some(uri) = last {
            response
                .extensions_mut()
                .insert(RequestUri(Uri::from_static(uri)));
        }
        self.sent.lock().unwrap()[index].answer.fill(Ok(response));
    }

    fn fail(&self, index: usize) {
        let error: BoxError = "connection reset".into();
        self.sent.lock().unwrap()[index].answer.fill(Err(error));
    }
}

// ---- driving -----------------------------------------------------------------------------

type Fut = ResponseFuture<Inner, String>;

fn origins() -> OriginPolicy {
    OriginPolicy::builder().allow_origin(API).build().unwrap()
}

fn service(provider: &Arc<Scripted>, inner: Inner) -> Authorize<Inner, Scripted> {
    AuthorizeLayer::from_arc(Arc::clone(provider), origins()).layer(inner)
}

fn post(url: &str) -> Request<String> {
    let mut request = Request::post(url).body("payload".to_owned()).unwrap();
    request.extensions_mut().insert(7_u32);
    request
}

/// Makes `service` ready (it must be) and calls it.
fn call<S: Service<Request<String>>>(service: &mut S, request: Request<String>) -> S::Future {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    service.call(request)
}

fn state(future: &Pin<&mut Fut>) -> String {
    let debug = format!("{future:?}");
    let start = debug.find("state: \"").expect("a state") + 8;
    debug[start..].split('"').next().unwrap().to_owned()
}

/// Polls once; the output when there is one.
fn poll(future: &mut Pin<&mut Fut>) -> Option<Result<Response<String>, BoxError>> {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn auth_error(error: &BoxError) -> &Error {
    error.downcast_ref::<Error>().expect("a client_auth::Error")
}

// ---- paths -------------------------------------------------------------------------------

#[test]
fn a_request_to_another_origin_passes_through_and_the_future_ends_done() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post("https://cdn.example.net/x")));
    assert_eq!(state(&future), "PassThrough");
    assert!(poll(&mut future).is_none());
    assert_eq!(shared.authorization(0), None);

    shared.answer(0, StatusCode::OK, None);
    assert_eq!(poll(&mut future).unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(state(&future), "Done");
    assert!(provider.accepted().is_empty(), "not stamped, not reported");
    let again = poll(&mut future).unwrap().unwrap_err();
    assert!(
        auth_error(&again)
            .to_string()
            .contains("polled after completion")
    );
}

#[test]
fn a_credential_at_hand_is_sent_at_once_and_its_answer_reported_accepted() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    assert_eq!(
        state(&future),
        "Sent",
        "no Authorizing step on the fresh path"
    );
    assert_eq!(shared.authorization(0).unwrap(), "Bearer t1");
    assert!(shared.authorization(0).unwrap().is_sensitive());
    assert!(poll(&mut future).is_none());

    shared.answer(0, StatusCode::FORBIDDEN, None);
    let response = poll(&mut future).unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(provider.accepted(), [1]);
    assert_eq!(state(&future), "Done");
}

#[test]
fn authorizing_reserves_nothing_then_readying_waits_for_poll_ready_then_sends() {
    let provider = Scripted::refreshing();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    assert_eq!(state(&future), "Authorizing");
    assert_eq!(
        shared.reserved.load(Ordering::SeqCst),
        0,
        "the readiness poll_ready reserved was given back"
    );
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Authorizing");

    // The credential arrives while the inner service is busy.
    shared.ready.store(false, Ordering::SeqCst);
    provider
        .credential
        .as_ref()
        .unwrap()
        .fill(Ok(credential("Bearer t1", 1)));
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Readying");
    assert_eq!(shared.sent(), 0, "nothing sent before poll_ready");

    shared.ready.store(true, Ordering::SeqCst);
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Sent");
    assert_eq!(shared.authorization(0).unwrap(), "Bearer t1");
    assert!(shared.authorization(0).unwrap().is_sensitive());

    shared.answer(0, StatusCode::OK, None);
    assert_eq!(poll(&mut future).unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(provider.accepted(), [1]);
}

#[test]
fn a_provider_error_while_authorizing_is_returned_and_nothing_is_sent() {
    let provider = Scripted::refreshing();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    provider
        .credential
        .as_ref()
        .unwrap()
        .fill(Err(Error::NoCredentials));
    let error = poll(&mut future).unwrap().unwrap_err();
    assert!(matches!(auth_error(&error), Error::NoCredentials));
    assert_eq!(state(&future), "Done");
    assert_eq!(shared.sent(), 0);
}

#[test]
fn a_provider_that_fails_at_once_gives_a_failed_future_and_releases_readiness() {
    struct Failing;
    impl AuthorizationProvider for Failing {
        fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
            AuthorizeFuture::ready(Err(Error::NoCredentials))
        }
    }
    let (inner, shared) = Inner::new();
    let mut service = Authorize::new(inner, Failing, origins());
    let future = call(&mut service, post(API));
    assert!(format!("{future:?}").contains("\"Failed\""));
    assert_eq!(shared.reserved.load(Ordering::SeqCst), 0);
    let mut future = pin!(future);
    let output = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    let Poll::Ready(Err(error)) = output else {
        panic!("the provider's error")
    };
    assert!(matches!(auth_error(&error), Error::NoCredentials));
    assert_eq!(shared.sent(), 0);
}

#[test]
fn an_inner_error_is_returned_from_sent() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.fail(0);
    let error = poll(&mut future).unwrap().unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert_eq!(state(&future), "Done");
    assert!(provider.accepted().is_empty());
}

#[test]
fn a_401_waits_in_unauthorized_then_the_retry_waits_for_poll_ready_then_is_sent_once() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.answer(0, StatusCode::UNAUTHORIZED, None);
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Unauthorized");
    assert_eq!(provider.asked.load(Ordering::SeqCst), 1);
    assert!(
        poll(&mut future).is_none(),
        "the provider has not answered yet"
    );

    shared.ready.store(false, Ordering::SeqCst);
    provider
        .on_401
        .fill(Ok(Unauthorized::Retry(credential("Bearer t2", 2))));
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Readying", "the retry waits for poll_ready");
    assert_eq!(shared.sent(), 1);

    shared.ready.store(true, Ordering::SeqCst);
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Sent");
    {
        let sent = shared.sent.lock().unwrap();
        assert_eq!(sent.len(), 2);
        let retry = &sent[1];
        assert_eq!(retry.authorization.as_ref().unwrap(), "Bearer t2");
        assert!(retry.authorization.as_ref().unwrap().is_sensitive());
        assert_eq!(retry.body, "payload", "the snapshot's body");
        assert_eq!(retry.marker, Some(7), "the snapshot's extensions");
    }

    // The retry's 401 is returned: there is no second retry.
    shared.answer(1, StatusCode::UNAUTHORIZED, None);
    let response = poll(&mut future).unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "answer 1");
    assert_eq!(provider.asked.load(Ordering::SeqCst), 1);
    assert!(provider.accepted().is_empty());
}

#[test]
fn the_retry_s_answer_is_reported_against_the_retry_s_credential() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.answer(0, StatusCode::UNAUTHORIZED, None);
    provider
        .on_401
        .fill(Ok(Unauthorized::Retry(credential("Bearer t2", 2))));
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Sent");
    shared.answer(1, StatusCode::OK, None);
    assert_eq!(poll(&mut future).unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(provider.accepted(), [2]);
}

#[test]
fn when_the_provider_gives_up_the_kept_401_is_returned() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.answer(0, StatusCode::UNAUTHORIZED, None);
    assert!(poll(&mut future).is_none());
    provider.on_401.fill(Ok(Unauthorized::GiveUp));
    let response = poll(&mut future).unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "answer 0");
    assert_eq!(shared.sent(), 1);
    assert_eq!(state(&future), "Done");
}

#[test]
fn when_the_session_ended_during_a_401_the_error_is_returned() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.answer(0, StatusCode::UNAUTHORIZED, None);
    assert!(poll(&mut future).is_none());
    provider.on_401.fill(Err(Error::NoSession {
        reason: SessionReason::Invalid("invalid_grant".into()),
    }));
    let error = poll(&mut future).unwrap().unwrap_err();
    assert!(auth_error(&error).is_session_ended());
    assert_eq!(shared.sent(), 1);
}

#[test]
fn a_401_to_a_body_that_was_not_copied_is_returned_without_asking() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = AuthorizeLayer::from_arc(Arc::clone(&provider), origins())
        .clone_body_with(NeverClone)
        .layer(inner);
    let future = call(&mut service, post(API));
    let mut future = pin!(future);
    shared.answer(0, StatusCode::UNAUTHORIZED, None);
    let output = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    let Poll::Ready(Ok(response)) = output else {
        panic!("the 401")
    };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(provider.asked.load(Ordering::SeqCst), 0);
}

#[test]
fn a_401_from_another_origin_after_a_redirect_is_returned_without_asking() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    shared.answer(
        0,
        StatusCode::UNAUTHORIZED,
        Some("https://bucket.storage.example/export.csv"),
    );
    let response = poll(&mut future).unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        provider.asked.load(Ordering::SeqCst),
        0,
        "not ours to retry"
    );
    assert!(provider.accepted().is_empty());
    assert_eq!(shared.sent(), 1);
}

#[test]
fn a_401_whose_final_uri_is_the_stamped_origin_is_asked_about() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut future = pin!(call(&mut service, post(API)));
    // A same-origin redirect (or A -> B -> A) ends on the stamped origin.
    shared.answer(
        0,
        StatusCode::UNAUTHORIZED,
        Some("https://API.example.com:443/v2/moved"),
    );
    assert!(poll(&mut future).is_none());
    assert_eq!(state(&future), "Unauthorized");
    assert_eq!(provider.asked.load(Ordering::SeqCst), 1);
}

#[test]
fn skip_and_a_per_request_provider_are_read_from_the_extensions() {
    let provider = Scripted::fresh();
    let (inner, shared) = Inner::new();
    let mut service = service(&provider, inner);
    let mut skipped = post(API);
    skipped.extensions_mut().insert(AuthorizationControl::Skip);
    let future = call(&mut service, skipped);
    assert!(format!("{future:?}").contains("\"PassThrough\""));
    assert_eq!(shared.authorization(0), None);

    let other = Scripted::fresh();
    let mut overridden = post(API);
    let dyn_other: Arc<dyn AuthorizationProvider> = other.clone();
    overridden
        .extensions_mut()
        .insert(AuthorizationControl::Provider(dyn_other));
    let mut future = pin!(call(&mut service, overridden));
    shared.answer(1, StatusCode::OK, None);
    assert!(poll(&mut future).unwrap().is_ok());
    assert_eq!(
        other.accepted(),
        [1],
        "reported to the provider that stamped"
    );
    assert!(provider.accepted().is_empty());
}
