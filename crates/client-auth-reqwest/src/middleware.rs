//! The middleware, its builder and the per-request flow.

use std::fmt;
use std::sync::Arc;

use client_auth::adapter::{
    BoxFuture, Destination, ProviderRef, RetrySkipped, credential_accepted,
    keeps_caller_authorization, rejected, report_retry, report_retry_skipped, report_unauthorized,
    report_unauthorized_unanswered, route,
};
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Error, OriginPolicy, OriginPolicyBuilder,
    RequestView, Unauthorized,
};
use http::header::AUTHORIZATION;
use http::{Extensions, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::error::middleware_error;

/// A [`reqwest_middleware::Middleware`] that stamps `Authorization` on requests to the origins
/// you allowed, with a credential from an [`AuthorizationProvider`], and retries once after a
/// 401 when the provider can recover.
///
/// Cheap to clone: the provider sits behind an `Arc`, and clones share it (and so its token
/// cache and its single refresh in flight).
///
/// See the [crate documentation](crate) for the per-request flow, redirects and per-request
/// control.
pub struct AuthorizationMiddleware<P> {
    provider: Arc<P>,
    origins: OriginPolicy,
}

impl<P> AuthorizationMiddleware<P> {
    /// A middleware that sends `provider`'s credentials to the origins `origins` allows.
    ///
    /// To share a provider with other code, pass an `Arc<P>` (every `Arc` of a provider is a
    /// provider) or a clone of a provider that is itself cheap to clone.
    pub fn new(provider: P, origins: OriginPolicy) -> Self {
        Self {
            provider: Arc::new(provider),
            origins,
        }
    }

    /// A builder that names the allowed origins one by one.
    ///
    /// ```
    /// use client_auth_reqwest::AuthorizationMiddleware;
    /// use client_auth_reqwest::client_auth::StaticToken;
    ///
    /// let middleware = AuthorizationMiddleware::builder(StaticToken::api_key("k")?)
    ///     .allow_origin("https://api.example.com")
    ///     .allow_origin("https://uploads.example.com:8443")
    ///     .build()?;
    /// # let _ = middleware;
    /// # Ok::<(), client_auth_reqwest::client_auth::Error>(())
    /// ```
    pub fn builder(provider: P) -> AuthorizationMiddlewareBuilder<P> {
        AuthorizationMiddlewareBuilder {
            provider,
            origins: OriginPolicy::builder(),
        }
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The origins that receive credentials.
    pub fn origins(&self) -> &OriginPolicy {
        &self.origins
    }
}

impl<P> Clone for AuthorizationMiddleware<P> {
    fn clone(&self) -> Self {
        Self {
            provider: Arc::clone(&self.provider),
            origins: self.origins.clone(),
        }
    }
}

impl<P> fmt::Debug for AuthorizationMiddleware<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationMiddleware")
            .field("provider", &std::any::type_name::<P>())
            .field("origins", &self.origins)
            .finish()
    }
}

/// Builds an [`AuthorizationMiddleware`]: the provider, and the origins that receive its
/// credentials. Made by [`AuthorizationMiddleware::builder`].
#[must_use]
pub struct AuthorizationMiddlewareBuilder<P> {
    provider: P,
    origins: OriginPolicyBuilder,
}

impl<P> AuthorizationMiddlewareBuilder<P> {
    /// Allows `origin` (`https://host[:port]`, no path) to receive credentials. Call it once per
    /// origin.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins = self.origins.allow_origin(origin);
        self
    }

    /// Sends credentials to every `https` origin: an explicit opt-out of the origin check, for
    /// clients that only ever talk to one API.
    pub fn any_https_origin(mut self) -> Self {
        self.origins = self.origins.any_https_origin();
        self
    }

    /// Allows `http://` origins among the named ones (default: refused, since credentials would
    /// cross the network in clear text). Meant for loopback test servers.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.origins = self.origins.allow_http(allow);
        self
    }

    /// Builds the middleware.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no origin is named (and
    /// [`any_https_origin`](Self::any_https_origin) was not called), when an origin does not
    /// parse or has a path, or when it is `http://` without [`allow_http`](Self::allow_http).
    pub fn build(self) -> Result<AuthorizationMiddleware<P>, Error> {
        Ok(AuthorizationMiddleware::new(
            self.provider,
            self.origins.build()?,
        ))
    }
}

impl<P> fmt::Debug for AuthorizationMiddlewareBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationMiddlewareBuilder")
            .field("provider", &std::any::type_name::<P>())
            .field("origins", &self.origins)
            .finish()
    }
}

impl<P: AuthorizationProvider> Middleware for AuthorizationMiddleware<P> {
    // Written out instead of with `#[async_trait]`: each path boxes only the state it needs,
    // and a request passed through is handed on without a box of its own.
    fn handle<'a, 'b, 'c, 'fut>(
        &'a self,
        mut req: Request,
        extensions: &'b mut Extensions,
        next: Next<'c>,
    ) -> BoxFuture<'fut, reqwest_middleware::Result<Response>>
    where
        'a: 'fut,
        'b: 'fut,
        'c: 'fut,
        Self: 'fut,
    {
        let destination = if self.origins.allows_url(req.url().as_str()) {
            Destination::Allowed
        } else {
            Destination::Other
        };
        // A per-request override provider is taken out of the extensions (a reference count):
        // they are lent to the rest of the chain while the request is on its way.
        let provider = match route(&self.provider, &self.origins, extensions, destination) {
            None => return next.run(req, extensions),
            Some(ProviderRef::Default(_)) => Chosen::Default(&*self.provider),
            Some(ProviderRef::Override(other)) => Chosen::Override(Arc::clone(other)),
        };

        if provider.can_recover() {
            return handle_recoverable(provider, req, extensions, next);
        }

        // The caller's own `Authorization` is kept (unless it carries no credentials).
        if keeps_caller_authorization(req.headers().get(AUTHORIZATION), || req.url().authority()) {
            return next.run(req, extensions);
        }
        let mut authorize = {
            let url = req.url();
            provider.authorize(&RequestView::new(
                req.method(),
                url.scheme(),
                url.authority(),
                url.path(),
                url.query(),
                extensions,
            ))
        };

        // The fresh path of a provider that never recovers: stamped, sent at once, and only its
        // answer awaited (no snapshot).
        let ready = authorize.take_ready();
        if let Some(Ok(credential)) = ready {
            let forbidden = provider.retry_forbidden();
            if !provider.needs_answers() {
                // Nothing is kept: the value moves into the request when it comes alone.
                if credential.extra_headers().is_none() {
                    let value = credential.into_header_value();
                    req.headers_mut().insert(AUTHORIZATION, value);
                } else {
                    credential.apply(req.headers_mut());
                }
                let sent = next.run(req, extensions);
                return Box::pin(async move {
                    let response = sent.await?;
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED
                        || (forbidden && status == StatusCode::FORBIDDEN)
                    {
                        report_unauthorized_unanswered(status);
                    }
                    Ok(response)
                });
            }
            credential.apply(req.headers_mut());
            let sent = next.run(req, extensions);
            return Box::pin(async move {
                let response = sent.await?;
                answered_once(
                    provider.get(),
                    &credential,
                    RetrySkipped::CannotRecover,
                    &response,
                );
                Ok(response)
            });
        }
        let authorize = match ready {
            Some(result) => AuthorizeFuture::ready(result),
            None => authorize,
        };
        Box::pin(authorize_and_send(
            provider, authorize, false, req, extensions, next,
        ))
    }
}

/// `handle` for a provider that can recover from a 401: the request is copied before it is
/// stamped, for the one retry.
fn handle_recoverable<'fut, P: AuthorizationProvider>(
    provider: Chosen<'fut, P>,
    mut req: Request,
    extensions: &'fut mut Extensions,
    next: Next<'fut>,
) -> BoxFuture<'fut, reqwest_middleware::Result<Response>> {
    if keeps_caller_authorization(req.headers().get(AUTHORIZATION), || req.url().authority()) {
        return next.run(req, extensions);
    }
    let mut authorize = {
        let url = req.url();
        provider.authorize(&RequestView::new(
            req.method(),
            url.scheme(),
            url.authority(),
            url.path(),
            url.query(),
            extensions,
        ))
    };
    // The fresh path: the snapshot is taken and the request stamped here, so the future holds
    // only what the send and the retry need.
    let ready = authorize.take_ready();
    if let Some(Ok(credential)) = ready {
        let Some(snapshot) = req.try_clone() else {
            // A streaming body cannot be cloned: the request is sent once and a 401 is
            // returned as is.
            credential.apply(req.headers_mut());
            let sent = next.run(req, extensions);
            return Box::pin(async move {
                let response = sent.await?;
                let skipped = RetrySkipped::BodyNotCloneable;
                answered_once(provider.get(), &credential, skipped, &response);
                Ok(response)
            });
        };
        credential.apply(req.headers_mut());
        return Box::pin(async move {
            let retry_next = next.clone();
            let response = next.run(req, extensions).await?;
            let provider = provider.get();
            let status = response.status();
            if !rejected(provider, status) {
                if credential_accepted(status) {
                    provider.on_accepted(&credential);
                }
                return Ok(response);
            }
            let retry: BoxFuture<'_, _> = Box::pin(after_401(
                provider, credential, snapshot, response, retry_next, extensions,
            ));
            retry.await
        });
    }
    let authorize = match ready {
        Some(result) => AuthorizeFuture::ready(result),
        None => authorize,
    };
    Box::pin(authorize_and_send(
        provider, authorize, true, req, extensions, next,
    ))
}

/// The provider that authorizes a request: the middleware's (called without dynamic dispatch),
/// or a per-request override.
enum Chosen<'a, P> {
    Default(&'a P),
    Override(Arc<dyn AuthorizationProvider>),
}

impl<P: AuthorizationProvider> Chosen<'_, P> {
    fn get(&self) -> &dyn AuthorizationProvider {
        match self {
            Chosen::Default(provider) => *provider,
            Chosen::Override(provider) => &**provider,
        }
    }

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
}

/// Tells the provider how the server answered a request sent once with `credential`: a 401 (or
/// an opted-in 403) is reported as not retried for `skipped`, any answer showing acceptance is
/// `on_accepted`.
fn answered_once(
    provider: &dyn AuthorizationProvider,
    credential: &Credential,
    skipped: RetrySkipped,
    response: &Response,
) {
    let status = response.status();
    if rejected(provider, status) {
        report_unauthorized(provider);
        report_retry_skipped(provider, skipped, status);
    } else if credential_accepted(status) {
        provider.on_accepted(credential);
    }
}

/// Every other path: waits for the credential when a refresh is under way, takes the snapshot
/// when the provider can recover, sends, and retries a 401 once.
async fn authorize_and_send<P: AuthorizationProvider>(
    provider: Chosen<'_, P>,
    authorize: AuthorizeFuture,
    can_recover: bool,
    mut req: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    let provider = provider.get();
    // No credential: the request is not sent.
    let credential = authorize.await.map_err(middleware_error)?;

    // Only a provider that may answer `Retry` needs the snapshot, taken before the first send,
    // without the credential. A streaming body cannot be cloned: the request is sent once and a
    // 401 is returned as is.
    let snapshot = if can_recover { req.try_clone() } else { None };
    let Some(snapshot) = snapshot else {
        credential.apply(req.headers_mut());
        let response = next.run(req, extensions).await?;
        let skipped = if can_recover {
            RetrySkipped::BodyNotCloneable
        } else {
            RetrySkipped::CannotRecover
        };
        answered_once(provider, &credential, skipped, &response);
        return Ok(response);
    };
    credential.apply(req.headers_mut());

    let retry_next = next.clone();
    let response = next.run(req, extensions).await?;
    answered_armed(
        provider, credential, snapshot, response, retry_next, extensions,
    )
    .await
}

/// The answer to a request sent with `credential` whose `snapshot` was taken: reported as
/// accepted, or a 401 retried once with the provider's new credential (in a future of its own,
/// boxed only then, so that the future of every request stays small).
async fn answered_armed(
    provider: &dyn AuthorizationProvider,
    credential: Credential,
    snapshot: Request,
    response: Response,
    retry_next: Next<'_>,
    extensions: &mut Extensions,
) -> reqwest_middleware::Result<Response> {
    let status = response.status();
    if !rejected(provider, status) {
        if credential_accepted(status) {
            provider.on_accepted(&credential);
        }
        return Ok(response);
    }
    let retry: BoxFuture<'_, _> = Box::pin(after_401(
        provider, credential, snapshot, response, retry_next, extensions,
    ));
    retry.await
}

/// A 401 to a request sent with `credential`: the provider decides, and the `snapshot` is sent
/// once more with its new credential.
async fn after_401(
    provider: &dyn AuthorizationProvider,
    credential: Credential,
    mut snapshot: Request,
    response: Response,
    retry_next: Next<'_>,
    extensions: &mut Extensions,
) -> reqwest_middleware::Result<Response> {
    let status = response.status();
    report_unauthorized(provider);

    // reqwest follows redirects inside the client: a 401 that came from another origin
    // answered a request that carried no credential of ours, so it is not ours to retry.
    let (sent, answered) = (snapshot.url(), response.url());
    if !OriginPolicy::same_origin(
        (sent.scheme(), sent.authority()),
        (answered.scheme(), answered.authority()),
    ) {
        report_retry_skipped(provider, RetrySkipped::ForeignOrigin, status);
        return Ok(response);
    }

    match provider
        .on_unauthorized(&credential, status, response.headers())
        .await
    {
        Ok(Unauthorized::Retry(fresh)) => {
            report_retry(provider, &credential, &fresh);
            drop(response);
            fresh.apply(snapshot.headers_mut());
            // The retry's answer is returned whatever it is; anything but a 401 means the new
            // credential was accepted.
            let response = retry_next.run(snapshot, extensions).await?;
            let status = response.status();
            if rejected(provider, status) {
                report_unauthorized(provider);
                report_retry_skipped(provider, RetrySkipped::AlreadyRetried, status);
            } else if credential_accepted(status) {
                provider.on_accepted(&fresh);
            }
            Ok(response)
        }
        Ok(_) => {
            report_retry_skipped(provider, RetrySkipped::Declined, status);
            Ok(response)
        }
        Err(error) => {
            report_retry_skipped(provider, RetrySkipped::SessionEnded, status);
            Err(middleware_error(error))
        }
    }
}
