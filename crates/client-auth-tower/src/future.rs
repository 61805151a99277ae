//! The response future: a state machine that waits for a credential, sends, tells the provider
//! how the server answered, and retries a 401 at most once.
//!
//! Every state holds its own data, so a state without what it needs cannot be written. The
//! states of the fresh path (`Direct`, `Sent`) keep the future small; the
//! states without a pinned future live in a boxed `Step`: each transition moves the step out by
//! value (leaving `Step::Moved`) and moves it back in while it waits.

use std::fmt;
use std::future::Future;
use std::mem;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use client_auth::adapter::{
    RetrySkipped, report_retry, report_retry_skipped, report_unauthorized,
    report_unauthorized_unanswered,
};
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Unauthorized, UnauthorizedFuture,
};
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;
#[cfg(feature = "follow-redirect")]
use crate::redirect::answered_by;

/// Without tower-http's `FollowRedirect` in the stack, a response comes from where its request
/// was sent.
#[cfg(not(feature = "follow-redirect"))]
fn answered_by<R>(_response: &Response<R>, _sent: &http::Uri) -> bool {
    true
}

pin_project! {
    /// The response future of [`Authorize`](crate::Authorize).
    ///
    /// Depending on the request it waits for the provider's credential (a refresh), makes a
    /// clone of the inner service ready and sends, and after a 401 for a credential it
    /// stamped asks the provider whether to retry, then sends once more. Any other answer to
    /// a request it stamped (the first send or the retry) is reported to the provider as the
    /// credential being accepted
    /// ([`on_accepted`](client_auth::AuthorizationProvider::on_accepted)). It resolves to the
    /// inner service's response, or to a [`BoxError`] holding either the inner service's
    /// error or the provider's [`client_auth::Error`] (downcast it to tell which).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // The inner future, with nothing kept for its answer: a request not ours to stamp, or
        // one stamped for a provider that needs no answer. Once it has answered, `direct` says
        // so and the inner future stays in place (no state to drop and write).
        Direct { #[pin] future: S::Future, direct: Direct },
        // The stamped request is on its way; `retry` says what a 401 to it can lead to.
        Sent { #[pin] future: S::Future, stamp: Stamp, retry: Retry<Box<Pending<S, B>>> },
        // Between two sends: nothing pinned, boxed so that the fresh path's future stays small.
        Step { step: Box<Step<S, B>> },
        // The output was returned.
        Done,
    }
}

/// What `State::Direct` does with the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Not stamped: returned untouched.
    PassThrough,
    /// Stamped for a provider that needs no answer (`needs_answers` is false): a 401 is
    /// reported, and a 403 too with `forbidden` (`retry_forbidden`).
    Unanswered { forbidden: bool },
    /// The answer was returned.
    Done,
}

/// The states that hold no pinned future.
pub(crate) enum Step<S: Service<Request<B>>, B> {
    /// Waiting for the provider's credential; no readiness of the inner service is held.
    Authorizing(AuthorizeFuture, Pending<S, B>),
    /// Making the service ready, then stamping and sending.
    Readying(Credential, Pending<S, B>),
    /// The provider decides about a 401 to the credential kept last, and the 401 is kept until
    /// it has; then the retry is ready to go.
    Unauthorized(UnauthorizedFuture, S::Response, Pending<S, B>, Credential),
    /// The provider failed before anything was sent.
    Failed(client_auth::Error),
    /// The step is being moved.
    Moved,
}

/// A request to stamp and send once its credential is there and `service` is ready.
pub(crate) struct Pending<S, B> {
    pub(crate) service: S,
    pub(crate) request: Request<B>,
    pub(crate) provider: Arc<dyn AuthorizationProvider>,
    pub(crate) retry: Retry<Box<Pending<S, B>>>,
}

/// The provider a stamped request answers to, and the credential it was sent with: told about
/// a 401 (`on_unauthorized`) or any other answer (`on_accepted`).
pub(crate) struct Stamp {
    pub(crate) provider: Arc<dyn AuthorizationProvider>,
    pub(crate) credential: Credential,
}

/// Whether, and how, a 401 can be retried: `T` is the retry, taken before the first send and
/// boxed (the future stays small on the paths that take none).
pub(crate) enum Retry<T> {
    /// Never: a provider that never recovers, or the retry itself.
    Never,
    /// The provider could recover, but the body could not be copied before the send.
    BodyNotCloned,
    /// One retry is possible once the provider says so, if the copy's body still has the exact
    /// size it had when the copy was taken (a copy sharing the body was drained by the send).
    Armed(T, Option<u64>),
}

/// The retry of `request`: a copy of it with `body`, taken before it is stamped, in the box it
/// keeps until the answer. `service` is a stand-in until the send (see [`dispatch`]).
pub(crate) fn snapshot<S, B: Body>(
    request: &Request<B>,
    body: B,
    service: S,
    provider: Arc<dyn AuthorizationProvider>,
) -> Retry<Box<Pending<S, B>>> {
    let size = body.size_hint().exact();
    let mut retry = Box::new(Pending {
        service,
        request: Request::new(body),
        provider,
        retry: Retry::Never,
    });
    let copy = &mut retry.request;
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Retry::Armed(retry, size)
}

/// Stamps `request` and sends it on `service`, which `poll_ready` made ready.
#[inline]
pub(crate) fn send<S, B>(
    service: &mut S,
    mut request: Request<B>,
    stamp: Stamp,
    retry: Retry<Box<Pending<S, B>>>,
) -> State<S, B>
where
    S: Service<Request<B>>,
{
    stamp.credential.apply(request.headers_mut());
    dispatch(service, request, stamp, retry)
}

/// Sends the stamped `request` on `service`, which `poll_ready` made ready. With a retry armed,
/// the service called is kept for the retry and `service` becomes the retry's stand-in, a
/// clone made with the snapshot.
#[inline]
pub(crate) fn dispatch<S, B>(
    service: &mut S,
    request: Request<B>,
    stamp: Stamp,
    retry: Retry<Box<Pending<S, B>>>,
) -> State<S, B>
where
    S: Service<Request<B>>,
{
    let (future, retry) = match retry {
        // No retry to send later: no clone of the service either.
        Retry::Never => (service.call(request), Retry::Never),
        Retry::BodyNotCloned => (service.call(request), Retry::BodyNotCloned),
        Retry::Armed(mut retry, size) => {
            mem::swap(&mut retry.service, service);
            (retry.service.call(request), Retry::Armed(retry, size))
        }
    };
    State::Sent {
        future,
        stamp,
        retry,
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    pub(crate) fn new(state: State<S, B>) -> Self {
        Self { state }
    }

    pub(crate) fn direct(future: S::Future, direct: Direct) -> Self {
        Self::new(State::Direct { future, direct })
    }
}

impl<S, B: Body, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let step = match this.state.as_mut().project() {
                StateProj::Direct { future, direct } => {
                    if *direct == Direct::Done {
                        return Poll::Ready(Err(polled_after_completion()));
                    }
                    let output = ready!(future.poll(cx)).map_err(Into::into);
                    if let (Direct::Unanswered { forbidden }, Ok(response)) = (*direct, &output) {
                        let status = response.status();
                        if status == StatusCode::UNAUTHORIZED
                            || (forbidden && status == StatusCode::FORBIDDEN)
                        {
                            report_unauthorized_unanswered(status);
                        }
                    }
                    *direct = Direct::Done;
                    return Poll::Ready(output);
                }
                StateProj::Sent {
                    future,
                    stamp,
                    retry,
                } => {
                    let output = ready!(future.poll(cx)).map_err(Into::into);
                    let next = output.map(|response| answered(response, stamp, retry));
                    this.state.set(State::Done);
                    match next? {
                        ControlFlow::Break(response) => return Poll::Ready(Ok(response)),
                        ControlFlow::Continue(step) => Box::new(step),
                    }
                }
                StateProj::Step { step } => match mem::replace(&mut **step, Step::Moved) {
                    Step::Authorizing(mut credential, pending) => {
                        let Poll::Ready(credential) = Pin::new(&mut credential).poll(cx) else {
                            **step = Step::Authorizing(credential, pending);
                            return Poll::Pending;
                        };
                        // Never sent without its credential.
                        match credential {
                            Ok(credential) => **step = Step::Readying(credential, pending),
                            Err(error) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error.into()));
                            }
                        }
                        continue;
                    }
                    Step::Readying(credential, mut pending) => {
                        let Poll::Ready(ready) = pending.service.poll_ready(cx) else {
                            **step = Step::Readying(credential, pending);
                            return Poll::Pending;
                        };
                        if let Err(error) = ready {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                        let stamp = Stamp {
                            provider: pending.provider,
                            credential,
                        };
                        let sent =
                            send(&mut pending.service, pending.request, stamp, pending.retry);
                        this.state.set(sent);
                        continue;
                    }
                    Step::Unauthorized(mut answer, response, pending, failed) => {
                        let Poll::Ready(answer) = Pin::new(&mut answer).poll(cx) else {
                            **step = Step::Unauthorized(answer, response, pending, failed);
                            return Poll::Pending;
                        };
                        let provider = &*pending.provider;
                        let status = response.status();
                        // A session that ended: the 401 is dropped and the error returned.
                        let credential = match answer {
                            Ok(Unauthorized::Retry(credential)) => credential,
                            Ok(_) => {
                                report_retry_skipped(provider, RetrySkipped::Declined, status);
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(response));
                            }
                            Err(error) => {
                                report_retry_skipped(provider, RetrySkipped::SessionEnded, status);
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error.into()));
                            }
                        };
                        report_retry(provider, &failed, &credential);
                        // The 401's body is dropped unread; the retry's answer is returned
                        // whatever it is, and reported against the retry's credential.
                        **step = Step::Readying(credential, pending);
                        continue;
                    }
                    Step::Failed(error) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    Step::Moved => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    }
                },
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            };
            this.state.set(State::Step { step });
        }
    }
}

fn polled_after_completion() -> BoxError {
    let done = "client-auth-tower: ResponseFuture polled after completion";
    client_auth::Error::Config(done.into()).into()
}

/// What follows the answer to a stamped request: the response to return, or the step that
/// asks the provider about a 401.
fn answered<S, B: Body, ResB>(
    response: Response<ResB>,
    stamp: &Stamp,
    retry: &mut Retry<Box<Pending<S, B>>>,
) -> ControlFlow<Response<ResB>, Step<S, B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    let status = response.status();
    if !client_auth::adapter::rejected(&*stamp.provider, status) {
        // The server took the credential: the provider learns that this token works, without
        // a lock or a copy.
        if client_auth::adapter::credential_accepted(status) {
            stamp.provider.on_accepted(&stamp.credential);
        }
        return ControlFlow::Break(response);
    }
    let provider = &*stamp.provider;
    report_unauthorized(provider);
    let skipped = match mem::replace(retry, Retry::Never) {
        Retry::Armed(retry, _) if !answered_by(&response, retry.request.uri()) => {
            RetrySkipped::ForeignOrigin
        }
        // The copy's body is as it was when it was taken: not drained along with the request's.
        Retry::Armed(retry, size) if retry.request.body().size_hint().exact() == size => {
            let answer = provider.on_unauthorized(&stamp.credential, status, response.headers());
            let failed = stamp.credential.clone();
            return ControlFlow::Continue(Step::Unauthorized(answer, response, *retry, failed));
        }
        Retry::Armed(..) => RetrySkipped::BodyCopyChanged,
        Retry::BodyNotCloned => RetrySkipped::BodyNotCloneable,
        // No retry armed: the provider never recovers, or this was the retry.
        Retry::Never if provider.can_recover() => RetrySkipped::AlreadyRetried,
        Retry::Never => RetrySkipped::CannotRecover,
    };
    report_retry_skipped(provider, skipped, status);
    ControlFlow::Break(response)
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Direct { direct, .. } => match direct {
                Direct::PassThrough => "PassThrough",
                Direct::Unanswered { .. } => "Sent",
                Direct::Done => "Done",
            },
            State::Sent { .. } => "Sent",
            State::Step { step } => match **step {
                Step::Authorizing(..) => "Authorizing",
                Step::Readying(..) => "Readying",
                Step::Unauthorized(..) => "Unauthorized",
                Step::Failed(_) => "Failed",
                Step::Moved => "Done",
            },
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
