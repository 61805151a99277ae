//! The middleware, its builder and the per-request flow.

use std::fmt;
use std::sync::Arc;

use client_auth::adapter::{
    Plan, ProviderRef, RetrySkipped, credential_accepted, plan_request, rejected, report_retry,
    report_retry_skipped, report_unauthorized,
};
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Error, OriginPolicy, OriginPolicyBuilder, RequestView,
    Unauthorized,
};
use http::Extensions;
use http::header::AUTHORIZATION;
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

#[async_trait::async_trait]
impl<P: AuthorizationProvider> Middleware for AuthorizationMiddleware<P> {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // The plan borrows the request and the extensions; it ends before the request is sent.
        // A per-request override provider is taken out of the extensions (a reference count):
        // they are lent to the rest of the chain while the request is on its way.
        let planned: Option<(AuthorizeFuture, Option<Arc<dyn AuthorizationProvider>>)> = {
            let url = req.url();
            let view = RequestView::new(
                req.method(),
                url.scheme(),
                url.authority(),
                url.path(),
                url.query(),
                extensions,
            );
            let caller_set_authorization = req.headers().get(AUTHORIZATION);
            match plan_request(
                &self.provider,
                &self.origins,
                &view,
                caller_set_authorization,
            ) {
                Plan::PassThrough => None,
                Plan::Authorize(provider) => Some((
                    provider.authorize(&view),
                    match provider {
                        ProviderRef::Default(_) => None,
                        ProviderRef::Override(other) => Some(Arc::clone(other)),
                    },
                )),
            }
        };
        let Some((authorize, overridden)) = planned else {
            return next.run(req, extensions).await;
        };
        let provider: &dyn AuthorizationProvider = match &overridden {
            Some(other) => &**other,
            None => &*self.provider,
        };

        // No credential: the request is not sent.
        let credential = authorize.await.map_err(middleware_error)?;

        // Only a provider that may answer `Retry` needs the snapshot, taken before the first
        // send, without the credential. A streaming body cannot be cloned: the request is sent
        // once and a 401 is returned as is.
        let can_recover = provider.can_recover();
        let snapshot = if can_recover { req.try_clone() } else { None };
        let Some(mut snapshot) = snapshot else {
            credential.apply(req.headers_mut());
            let response = next.run(req, extensions).await?;
            let status = response.status();
            if rejected(provider, status) {
                report_unauthorized(provider);
                let skipped = if can_recover {
                    RetrySkipped::BodyNotCloneable
                } else {
                    RetrySkipped::CannotRecover
                };
                report_retry_skipped(provider, skipped, status);
            } else if credential_accepted(status) {
                provider.on_accepted(&credential);
            }
            return Ok(response);
        };
        credential.apply(req.headers_mut());

        let retry_next = next.clone();
        let response = next.run(req, extensions).await?;
        let status = response.status();
        if !rejected(provider, status) {
            if credential_accepted(status) {
                provider.on_accepted(&credential);
            }
            return Ok(response);
        }
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
                // The retry's answer is returned whatever it is; anything but a 401 means the
                // new credential was accepted.
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
}
