//! The middleware service: decides per request, then hands over to [`ResponseFuture`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use client_auth::{AuthorizationProvider, OriginPolicy, Plan, RequestView, plan_request};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_service::Service;

use crate::BoxError;
use crate::body::{CloneBody, CloneRequestBody};
use crate::future::{ResponseFuture, Retry, Snapshot, Stamp};
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
    provider: Arc<P>,
    origins: OriginPolicy,
    clone_body: C,
}

impl<S, P: AuthorizationProvider> Authorize<S, P> {
    /// Wraps `inner`, sending `provider`'s credentials to the `origins` allowed.
    pub fn new(inner: S, provider: P, origins: OriginPolicy) -> Self {
        Self::from_parts(inner, Arc::new(provider), origins, CloneBody)
    }

    /// A layer wrapping services in `Authorize`, as [`AuthorizeLayer::new`].
    pub fn layer(provider: P, origins: OriginPolicy) -> AuthorizeLayer<P> {
        AuthorizeLayer::new(provider, origins)
    }
}

impl<S, P, C> Authorize<S, P, C> {
    pub(crate) fn from_parts(
        inner: S,
        provider: Arc<P>,
        origins: OriginPolicy,
        clone_body: C,
    ) -> Self {
        Self {
            inner,
            provider,
            origins,
            clone_body,
        }
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
        &self.provider
    }

    /// The origins that receive credentials.
    pub fn origins(&self) -> &OriginPolicy {
        &self.origins
    }
}

impl<S: Clone, P, C: Clone> Clone for Authorize<S, P, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            provider: Arc::clone(&self.provider),
            origins: self.origins.clone(),
            clone_body: self.clone_body.clone(),
        }
    }
}

impl<S: fmt::Debug, P, C> fmt::Debug for Authorize<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorize")
            .field("inner", &self.inner)
            .field("provider", &std::any::type_name::<P>())
            .field("origins", &self.origins)
            .field("clone_body", &std::any::type_name::<C>())
            .finish()
    }
}

impl<S, P, C, ReqB, ResB> Service<Request<ReqB>> for Authorize<S, P, C>
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
            let caller_set = request.headers().contains_key(AUTHORIZATION);
            let provider = match plan_request(&self.provider, &self.origins, &view, caller_set) {
                Plan::PassThrough => return ResponseFuture::pass_through(self.inner.call(request)),
                Plan::Authorize(provider) => provider,
            };
            let credential = provider.authorize(&view);
            // The snapshot is taken before stamping (the retry is stamped with the new
            // credential), and only when the provider can answer a 401 with a retry.
            let retry = if provider.can_recover() {
                match self.clone_body.clone_body(request.body()) {
                    Some(body) => Retry::Armed(Box::new(Snapshot::of(&request, body))),
                    None => Retry::BodyNotCloned,
                }
            } else {
                Retry::Never
            };
            // Kept to tell the provider how the server answered (`on_accepted` on any answer
            // but a 401, `on_unauthorized` on a 401): a reference count, no allocation.
            (credential, provider.to_owned(), retry)
        };

        match credential.take_ready() {
            // The fresh path: stamp and send on the service `poll_ready` made ready.
            Some(Ok(credential)) => {
                credential.apply(request.headers_mut());
                // The credential itself moves into the future: no copy.
                let stamp = Stamp::sent(provider, credential);
                match retry {
                    retry @ (Retry::Never | Retry::BodyNotCloned | Retry::Spent) => {
                        // No retry to send later: no clone of the service either.
                        let future = self.inner.call(request);
                        ResponseFuture::sent(future, None, stamp, retry)
                    }
                    armed @ Retry::Armed(_) => {
                        // Keep the service that was made ready (it is called now and kept
                        // for the retry); `self` gets a clone, made ready by the next
                        // `poll_ready`.
                        let clone = self.inner.clone();
                        let mut ready = std::mem::replace(&mut self.inner, clone);
                        let future = ready.call(request);
                        ResponseFuture::sent(future, Some(ready), stamp, armed)
                    }
                }
            }
            // The provider failed: the request is not sent, and the readiness reserved by
            // `poll_ready` is given back.
            Some(Err(error)) => {
                self.release_readiness();
                ResponseFuture::failed(error)
            }
            // A refresh is under way. Waiting must not hold the inner service's readiness (a
            // `Buffer` or `ConcurrencyLimit` slot the token transport may need): the ready
            // service is dropped, and a clone is made ready once the credential is there.
            None => {
                self.release_readiness();
                let service = self.inner.clone();
                ResponseFuture::authorizing(
                    credential,
                    service,
                    request,
                    Stamp::pending(provider),
                    retry,
                )
            }
        }
    }
}

impl<S: Clone, P, C> Authorize<S, P, C> {
    /// Drops the service `poll_ready` made ready (and the capacity it reserved), leaving a
    /// fresh clone in its place that the next `poll_ready` makes ready.
    fn release_readiness(&mut self) {
        let clone = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, clone));
    }
}
