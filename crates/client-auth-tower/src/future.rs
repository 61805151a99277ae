//! The response future: a state machine that waits for a credential, sends, tells the provider
//! how the server answered, and retries a 401 at most once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Unauthorized, UnauthorizedFuture,
};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;

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
        state: State<S::Future>,
        // The service for a deferred send or the retry; `None` when neither can happen.
        service: Option<S>,
        // The request to send once `service` is ready (and, first, once it is stamped).
        request: Option<Request<B>>,
        // The provider and the credential of a request the layer stamps; `None` when the
        // request passes through untouched.
        stamp: Option<Stamp>,
        // What a 401 can lead to.
        retry: Retry<B>,
        // The 401 kept while the provider decides about it.
        unauthorized: Option<S::Response>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // No credential for this request: the inner future, untouched.
        PassThrough { #[pin] future: F },
        // Waiting for the provider's credential; no readiness of the inner service is held.
        Authorizing { credential: AuthorizeFuture },
        // Making `service` ready, then sending `request`.
        Ready,
        // The stamped request is on its way.
        Sent { #[pin] future: F },
        // The provider decides about a 401.
        Unauthorized { answer: UnauthorizedFuture },
        // The provider failed before anything was sent.
        Failed { error: Option<client_auth::Error> },
        // The output was returned.
        Done,
    }
}

/// What the request looked like before it was stamped, for the one retry.
pub(crate) struct Snapshot<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: B,
}

impl<B> Snapshot<B> {
    pub(crate) fn of(request: &Request<B>, body: B) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body,
        }
    }

    fn into_request(self, credential: &Credential) -> Request<B> {
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        credential.apply(request.headers_mut());
        request
    }
}

/// The provider a stamped request answers to, and the credential it was (or will be) sent
/// with: told about a 401 (`on_unauthorized`) or any other answer (`on_accepted`).
pub(crate) struct Stamp {
    provider: Arc<dyn AuthorizationProvider>,
    /// Set when the request is stamped (at once on the fresh path, after the wait otherwise),
    /// replaced by the retry's.
    credential: Option<Credential>,
}

impl Stamp {
    /// A request stamped with `credential` (the fresh path).
    pub(crate) fn sent(provider: Arc<dyn AuthorizationProvider>, credential: Credential) -> Self {
        Self {
            provider,
            credential: Some(credential),
        }
    }

    /// A request that waits for its credential.
    pub(crate) fn pending(provider: Arc<dyn AuthorizationProvider>) -> Self {
        Self {
            provider,
            credential: None,
        }
    }
}

/// Whether, and how, a 401 can be retried.
pub(crate) enum Retry<B> {
    /// Never: no credential stamped, or a provider that never recovers.
    Never,
    /// The provider could recover, but the body could not be copied before the send.
    BodyNotCloned,
    /// One retry is possible once the provider says so. Boxed: the snapshot allocates anyway
    /// (headers), and the future stays small on the paths that take none.
    Armed(Box<Snapshot<B>>),
    /// The retry was made.
    Spent,
}

/// A state the future can only reach through a bug; reported instead of panicking.
#[derive(Debug)]
struct InvalidState(&'static str);

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client-auth-tower: {}", self.0)
    }
}

impl std::error::Error for InvalidState {}

fn invalid(what: &'static str) -> BoxError {
    Box::new(InvalidState(what))
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn pass_through(future: S::Future) -> Self {
        Self::with(
            State::PassThrough { future },
            None,
            None,
            None,
            Retry::Never,
        )
    }

    /// A request stamped and sent at once; `stamp` holds its credential.
    pub(crate) fn sent(
        future: S::Future,
        service: Option<S>,
        stamp: Stamp,
        retry: Retry<B>,
    ) -> Self {
        Self::with(State::Sent { future }, service, None, Some(stamp), retry)
    }

    pub(crate) fn failed(error: client_auth::Error) -> Self {
        Self::with(
            State::Failed { error: Some(error) },
            None,
            None,
            None,
            Retry::Never,
        )
    }

    pub(crate) fn authorizing(
        credential: AuthorizeFuture,
        service: S,
        request: Request<B>,
        stamp: Stamp,
        retry: Retry<B>,
    ) -> Self {
        Self::with(
            State::Authorizing { credential },
            Some(service),
            Some(request),
            Some(stamp),
            retry,
        )
    }

    fn with(
        state: State<S::Future>,
        service: Option<S>,
        request: Option<Request<B>>,
        stamp: Option<Stamp>,
        retry: Retry<B>,
    ) -> Self {
        Self {
            state,
            service,
            request,
            stamp,
            retry,
            unauthorized: None,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::PassThrough { future } => {
                    let output = ready!(future.poll(cx)).map_err(Into::into);
                    this.state.set(State::Done);
                    return Poll::Ready(output);
                }
                StateProj::Authorizing { credential } => {
                    let credential = match ready!(Pin::new(credential).poll(cx)) {
                        Ok(credential) => credential,
                        Err(error) => {
                            // Never sent without its credential.
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Box::new(error)));
                        }
                    };
                    let (Some(request), Some(stamp)) = (this.request.as_mut(), this.stamp.as_mut())
                    else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(invalid("no request to stamp")));
                    };
                    credential.apply(request.headers_mut());
                    stamp.credential = Some(credential);
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let Some(service) = this.service.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(invalid("no service to send with")));
                    };
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = this.request.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(invalid("no request to send")));
                    };
                    let future = service.call(request);
                    this.state.set(State::Sent { future });
                }
                StateProj::Sent { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    let stamped = this.stamp.as_ref().and_then(|stamp| {
                        let credential = stamp.credential.as_ref()?;
                        Some((&stamp.provider, credential))
                    });
                    if response.status() != StatusCode::UNAUTHORIZED {
                        // The server took the credential (whatever it then answered): the
                        // provider learns that this token works, without a lock or a copy.
                        if let Some((provider, credential)) = stamped {
                            provider.on_accepted(credential);
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                    match (&*this.retry, stamped) {
                        (Retry::Armed(_), Some((provider, credential))) => {
                            let answer = provider.on_unauthorized(
                                credential,
                                response.status(),
                                response.headers(),
                            );
                            *this.unauthorized = Some(response);
                            this.state.set(State::Unauthorized { answer });
                        }
                        (Retry::BodyNotCloned, _) => {
                            tracing::warn!(
                                status = response.status().as_u16(),
                                "401 not retried: the request body could not be copied before \
                                 it was sent; configure a body clone hook to allow the retry"
                            );
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        (Retry::Never | Retry::Spent | Retry::Armed(_), _) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Unauthorized { answer } => {
                    let answer = ready!(Pin::new(answer).poll(cx));
                    let retry = std::mem::replace(this.retry, Retry::Spent);
                    match (answer, retry) {
                        (Ok(Unauthorized::Retry(credential)), Retry::Armed(snapshot)) => {
                            tracing::debug!(
                                generation = credential.generation().get(),
                                "401: retrying once with a new credential"
                            );
                            // The 401's body is dropped unread; the retry's answer is returned
                            // whatever it is, and reported against the retry's credential.
                            *this.unauthorized = None;
                            *this.request = Some((*snapshot).into_request(&credential));
                            if let Some(stamp) = this.stamp.as_mut() {
                                stamp.credential = Some(credential);
                            }
                            this.state.set(State::Ready);
                        }
                        (Ok(_), _) => {
                            tracing::debug!("401: the provider gave up; returned unchanged");
                            this.state.set(State::Done);
                            return Poll::Ready(
                                this.unauthorized
                                    .take()
                                    .ok_or_else(|| invalid("the 401 was lost")),
                            );
                        }
                        (Err(error), _) => {
                            this.state.set(State::Done);
                            *this.unauthorized = None;
                            return Poll::Ready(Err(Box::new(error)));
                        }
                    }
                }
                StateProj::Failed { error } => {
                    let error = error.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(match error {
                        Some(error) => Box::new(error),
                        None => invalid("polled after completion"),
                    }));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(invalid("polled after completion")));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::PassThrough { .. } => "PassThrough",
            State::Authorizing { .. } => "Authorizing",
            State::Ready => "Ready",
            State::Sent { .. } => "Sent",
            State::Unauthorized { .. } => "Unauthorized",
            State::Failed { .. } => "Failed",
            State::Done => "Done",
        };
        let retry = match &self.retry {
            Retry::Never => "Never",
            Retry::BodyNotCloned => "BodyNotCloned",
            Retry::Armed(_) => "Armed",
            Retry::Spent => "Spent",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("retry", &retry)
            .finish_non_exhaustive()
    }
}
