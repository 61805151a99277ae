//! The middleware service: decides per request, then hands over to [`ResponseFuture`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use client_auth::adapter::{Plan, plan_request};
use client_auth::{AuthorizationProvider, OriginPolicy, RequestView};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::body::{CloneBody, CloneRequestBody};
use crate::future::{Pending, ResponseFuture, Retry, Stamp, State, Step, send, snapshot};
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
        self.layer.origins.resolve_relative(request.uri_mut());
        // Everything the provider needs is borrowed from the request: nothing is allocated
        // before the plan says this request gets a credential.
        let (mut credential, provider, retry) = {
            let uri = request.uri();
            let view = RequestView::new(
                request.method(),
                uri.scheme_str().unwrap_or_default(),
                uri.authority().map_or("", |a| a.as_str()),
                uri.path(),
                uri.query(),
                request.extensions(),
            );
            let caller_set = request.headers().get(AUTHORIZATION);
            let layer = &self.layer;
            let provider = match plan_request(&layer.provider, &layer.origins, &view, caller_set) {
                Plan::PassThrough => {
                    let future = self.inner.call(request);
                    return ResponseFuture::new(State::PassThrough { future });
                }
                Plan::Authorize(provider) => provider,
            };
            let credential = provider.authorize(&view);
            // The snapshot is taken before stamping (the retry is stamped with the new
            // credential), and only when the provider can answer a 401 with a retry.
            let retry = if provider.can_recover() {
                let copy = layer.clone_body.clone_body(request.body());
                copy.map_or(Retry::BodyNotCloned, |body| snapshot(&request, body))
            } else {
                Retry::Never
            };
            // Kept to tell the provider how the server answered (`on_accepted` on any answer
            // but a 401, `on_unauthorized` on a 401): a reference count, no allocation.
            (credential, provider.to_owned(), retry)
        };

        let step = match credential.take_ready() {
            // The fresh path: stamp and send on the service `poll_ready` made ready. The
            // credential itself moves into the future: no copy.
            Some(Ok(credential)) => {
                let stamp = Stamp {
                    provider,
                    credential,
                };
                return ResponseFuture::new(send(&mut self.inner, request, stamp, retry));
            }
            // The provider failed: the request is not sent.
            Some(Err(error)) => Step::Failed(error),
            // A refresh is under way: a clone of the service is made ready once the credential
            // is there.
            None => {
                let service = self.inner.clone();
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
        self.inner = self.inner.clone();
        ResponseFuture::new(State::Step { step })
    }
}
