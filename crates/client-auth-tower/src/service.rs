//! The middleware service: decides per request, then hands over to [`ResponseFuture`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use client_auth::adapter::{Destination, ProviderRef, keeps_caller_authorization, route};
use client_auth::{AuthorizationProvider, AuthorizeFuture, Credential, OriginPolicy, RequestView};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::body::{CloneBody, CloneRequestBody};
use crate::future::{Direct, Pending, ResponseFuture, Retry, Stamp, State, Step, send, snapshot};
use crate::layer::AuthorizeLayer;

/// Middleware that stamps the provider's `Authorization` header on requests to the allowed
/// origins and retries a 401 once when the provider recovers (a refreshed token).
///
/// Built by [`AuthorizeLayer`], or directly with [`Authorize::new`]. See the
/// [crate docs](crate) for the behaviour and an example.
///
/// - `S`: the inner service, `Clone` (a clone is kept for a deferred send and for the retry).
/// - `P`: the [`AuthorizationProvider`].
/// - `C`: the body clone hook ([`CloneRequestBody`]), [`CloneBody`] by default.
pub struct Authorize<S, P, C = CloneBody> {
    inner: S,
    layer: AuthorizeLayer<P, C>,
}

impl<S, P: AuthorizationProvider> Authorize<S, P> {
    /// Wraps `inner`, sending `provider`'s credentials to the `origins` allowed.
    pub fn new(inner: S, provider: P, origins: OriginPolicy) -> Self {
        AuthorizeLayer::new(provider, origins).layer(inner)
    }

    /// A layer wrapping services in `Authorize`, as [`AuthorizeLayer::new`].
    pub fn layer(provider: P, origins: OriginPolicy) -> AuthorizeLayer<P> {
        AuthorizeLayer::new(provider, origins)
    }
}

impl<S, P, C> Authorize<S, P, C> {
    pub(crate) fn from_layer(inner: S, layer: AuthorizeLayer<P, C>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<P> {
        self.layer.provider()
    }

    /// The origins that receive credentials.
    pub fn origins(&self) -> &OriginPolicy {
        self.layer.origins()
    }
}

impl<S: Clone, P, C: Clone> Clone for Authorize<S, P, C> {
    fn clone(&self) -> Self {
        Self::from_layer(self.inner.clone(), self.layer.clone())
    }
}

impl<S: fmt::Debug, P, C> fmt::Debug for Authorize<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorize")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, P, C, ReqB: http_body::Body, ResB> Service<Request<ReqB>> for Authorize<S, P, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    P: AuthorizationProvider,
    C: CloneRequestBody<ReqB>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let layer = &self.layer;
        let destination = if request.uri().scheme().is_none()
            && !layer.origins.resolve_relative(request.uri_mut())
        {
            Destination::Relative
        } else if layer.origins.allows_uri(request.uri()) {
            Destination::Allowed
        } else {
            Destination::Other
        };
        // Everything the provider needs is borrowed from the request: nothing is allocated
        // before the plan says this request gets a credential. A per-request override provider
        // is held by its own reference count, so that the request stays free to change.
        let provider = match route(
            &layer.provider,
            &layer.origins,
            request.extensions(),
            destination,
        ) {
            None => {
                return ResponseFuture::direct(self.inner.call(request), Direct::PassThrough);
            }
            Some(ProviderRef::Default(_)) => Chosen::Default(&layer.provider),
            Some(ProviderRef::Override(provider)) => Chosen::Override(Arc::clone(provider)),
        };

        // The caller's own `Authorization` is kept (unless it carries no credentials).
        let caller_set = request.headers().get(AUTHORIZATION);
        if keeps_caller_authorization(caller_set, || authority(request.uri())) {
            return ResponseFuture::direct(self.inner.call(request), Direct::PassThrough);
        }
        let can_recover = provider.can_recover();
        let mut credential = {
            let uri = request.uri();
            provider.authorize(&RequestView::new(
                request.method(),
                uri.scheme_str().unwrap_or_default(),
                authority(uri),
                uri.path(),
                uri.query(),
                request.extensions(),
            ))
        };
        let ready = credential.take_ready();
        if can_recover {
            let provider = provider.into_owned();
            return call_recoverable(&mut self.inner, layer, request, provider, ready, credential);
        }

        // The fresh path of a provider that never recovers: no snapshot, no clone of the
        // service.
        if let Some(Ok(credential)) = ready {
            let unanswered = !provider.needs_answers();
            let forbidden = provider.retry_forbidden();
            if unanswered && credential.extra_headers().is_none() {
                // Nothing is kept: the value moves into the request.
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, credential.into_header_value());
                let future = self.inner.call(request);
                return ResponseFuture::direct(future, Direct::Unanswered { forbidden });
            }
            credential.apply(request.headers_mut());
            if unanswered {
                let future = self.inner.call(request);
                return ResponseFuture::direct(future, Direct::Unanswered { forbidden });
            }
            let stamp = Stamp {
                provider: provider.into_owned(),
                credential,
            };
            return ResponseFuture::new(State::Sent {
                future: self.inner.call(request),
                stamp,
                retry: Retry::Never,
            });
        }
        let provider = provider.into_owned();
        send_or_wait(
            &mut self.inner,
            request,
            provider,
            ready,
            credential,
            Retry::Never,
        )
    }
}

/// The rest of `call` for a provider that can recover from a 401: the request is copied before
/// it is stamped, for the one retry.
fn call_recoverable<S, P, C, ReqB>(
    inner: &mut S,
    layer: &AuthorizeLayer<P, C>,
    request: Request<ReqB>,
    provider: Arc<dyn AuthorizationProvider>,
    ready: Option<Result<Credential, client_auth::Error>>,
    credential: AuthorizeFuture,
) -> ResponseFuture<S, ReqB>
where
    ReqB: http_body::Body,
    S: Service<Request<ReqB>> + Clone,
    C: CloneRequestBody<ReqB>,
{
    // Taken before stamping (the retry is stamped with the new credential). The provider
    // handle is kept to tell it how the server answered (`on_accepted` on any answer but a 401,
    // `on_unauthorized` on a 401): a reference count, no allocation.
    let retry = match layer.clone_body.clone_body(request.body()) {
        Some(body) => snapshot(&request, body, inner.clone(), Arc::clone(&provider)),
        None => Retry::BodyNotCloned,
    };
    send_or_wait(inner, request, provider, ready, credential, retry)
}

/// Sends `request` with the credential at hand (`ready`), or fails without sending it, or
/// waits for `credential` without holding the inner service's readiness.
#[inline]
fn send_or_wait<S, ReqB>(
    inner: &mut S,
    request: Request<ReqB>,
    provider: Arc<dyn AuthorizationProvider>,
    ready: Option<Result<Credential, client_auth::Error>>,
    credential: AuthorizeFuture,
    retry: Retry<Box<Pending<S, ReqB>>>,
) -> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>> + Clone,
{
    let step = match ready {
        // The fresh path: stamp and send on the service `poll_ready` made ready. The
        // credential itself moves into the future: no copy.
        Some(Ok(credential)) => {
            let stamp = Stamp {
                provider,
                credential,
            };
            return ResponseFuture::new(send(inner, request, stamp, retry));
        }
        // The provider failed: the request is not sent.
        Some(Err(error)) => Step::Failed(error),
        // A refresh is under way: a clone of the service is made ready once the credential
        // is there.
        None => {
            let service = inner.clone();
            let pending = Pending {
                service,
                request,
                provider,
                retry,
            };
            Step::Authorizing(credential, pending)
        }
    };
    // Nothing is sent now, so the readiness reserved by `poll_ready` is given back: waiting
    // must not hold a `Buffer` or `ConcurrencyLimit` slot the token transport may need. The
    // ready service is dropped, and `self` keeps a clone for the next `poll_ready`.
    *inner = inner.clone();
    ResponseFuture::new(State::Step {
        step: Box::new(step),
    })
}

/// The provider that authorizes a request: the layer's, or a per-request override.
enum Chosen<'a, P> {
    Default(&'a Arc<P>),
    Override(Arc<dyn AuthorizationProvider>),
}

impl<P: AuthorizationProvider> Chosen<'_, P> {
    // The layer's own provider is called without dynamic dispatch.
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        match self {
            Chosen::Default(provider) => provider.authorize(request),
            Chosen::Override(provider) => provider.authorize(request),
        }
    }

    fn can_recover(&self) -> bool {
        match self {
            Chosen::Default(provider) => provider.can_recover(),
            Chosen::Override(provider) => provider.can_recover(),
        }
    }

    fn needs_answers(&self) -> bool {
        match self {
            Chosen::Default(provider) => provider.needs_answers(),
            Chosen::Override(provider) => provider.needs_answers(),
        }
    }

    fn retry_forbidden(&self) -> bool {
        match self {
            Chosen::Default(provider) => provider.retry_forbidden(),
            Chosen::Override(provider) => provider.retry_forbidden(),
        }
    }

    /// An owned handle, kept by a request whose answer the provider hears about.
    fn into_owned(self) -> Arc<dyn AuthorizationProvider> {
        match self {
            Chosen::Default(provider) => Arc::clone(provider) as Arc<dyn AuthorizationProvider>,
            Chosen::Override(provider) => provider,
        }
    }
}

fn authority(uri: &http::Uri) -> &str {
    uri.authority().map_or("", |a| a.as_str())
}
