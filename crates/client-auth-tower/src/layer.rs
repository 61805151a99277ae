//! The layer and its builder: configuration only.

use std::fmt;
use std::sync::Arc;

use client_auth::{AuthorizationProvider, OriginPolicy, OriginPolicyBuilder};
use tower_layer::Layer;

use crate::body::CloneBody;
use crate::service::Authorize;

/// A [`Layer`] that wraps services in [`Authorize`]: requests to the allowed origins get the
/// provider's `Authorization` header, and a 401 is retried once when the provider recovers.
///
/// Configuration only: cheap to clone (the provider sits in an `Arc`), and `Debug` without
/// requiring `P: Debug`. See the [crate docs](crate) for an example.
///
/// `C` is the body clone hook used to snapshot requests for the retry; see
/// [`CloneRequestBody`](crate::CloneRequestBody).
pub struct AuthorizeLayer<P, C = CloneBody> {
    pub(crate) provider: Arc<P>,
    pub(crate) origins: OriginPolicy,
    pub(crate) clone_body: C,
}

impl<P: AuthorizationProvider> AuthorizeLayer<P> {
    /// A layer sending `provider`'s credentials to the `origins` allowed.
    pub fn new(provider: P, origins: OriginPolicy) -> Self {
        Self::from_arc(Arc::new(provider), origins)
    }

    /// A layer sharing a provider the application also uses elsewhere (to call
    /// `OAuthProvider::logout`, watch its session, ...).
    pub fn from_arc(provider: Arc<P>, origins: OriginPolicy) -> Self {
        Self {
            provider,
            origins,
            clone_body: CloneBody,
        }
    }

    /// A builder for a layer using `provider`; name at least one origin.
    pub fn builder(provider: P) -> AuthorizeLayerBuilder<P> {
        AuthorizeLayerBuilder {
            provider: Arc::new(provider),
            origins: OriginPolicy::builder(),
            clone_body: CloneBody,
        }
    }
}

impl<P, C> AuthorizeLayer<P, C> {
    /// The same layer with another body clone hook (see
    /// [`CloneRequestBody`](crate::CloneRequestBody)).
    pub fn clone_body_with<C2>(self, hook: C2) -> AuthorizeLayer<P, C2> {
        AuthorizeLayer {
            provider: self.provider,
            origins: self.origins,
            clone_body: hook,
        }
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

impl<S, P, C: Clone> Layer<S> for AuthorizeLayer<P, C> {
    type Service = Authorize<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize::from_layer(inner, self.clone())
    }
}

impl<P, C: Clone> Clone for AuthorizeLayer<P, C> {
    fn clone(&self) -> Self {
        Self {
            provider: Arc::clone(&self.provider),
            origins: self.origins.clone(),
            clone_body: self.clone_body.clone(),
        }
    }
}

impl<P, C> fmt::Debug for AuthorizeLayer<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeLayer")
            .field("provider", &std::any::type_name::<P>())
            .field("origins", &self.origins)
            .field("clone_body", &std::any::type_name::<C>())
            .finish()
    }
}

/// Builds an [`AuthorizeLayer`]; from [`AuthorizeLayer::builder`].
///
/// ```
/// use client_auth::StaticToken;
/// use client_auth_tower::AuthorizeLayer;
///
/// let layer = AuthorizeLayer::builder(StaticToken::api_key("key")?)
///     .allow_origin("https://api.example.com")
///     .allow_origin("https://uploads.example.com:8443")
///     .build()?;
/// # let _ = layer;
///
/// // No origin named: an error, never a silently header-less client.
/// assert!(AuthorizeLayer::builder(StaticToken::api_key("key")?).build().is_err());
/// # Ok::<(), client_auth::Error>(())
/// ```
#[must_use]
pub struct AuthorizeLayerBuilder<P, C = CloneBody> {
    provider: Arc<P>,
    origins: OriginPolicyBuilder,
    clone_body: C,
}

impl<P, C> AuthorizeLayerBuilder<P, C> {
    /// Sends credentials to `origin` (`https://host[:port]`, no path). May be called several
    /// times.
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

    /// Allows `http://` origins among the named ones (default: refused, credentials would
    /// cross the network in clear text). Meant for loopback test servers.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.origins = self.origins.allow_http(allow);
        self
    }

    /// Resolves relative request URIs (`/user`, no scheme and host) against `origin`, one of
    /// the allowed origins, before anything else, so that they get a credential and reach the
    /// inner service absolute. For a layer placed **outside** (listed before) the layer that
    /// sets the base URI; placed inside it, where URIs are already absolute, the layer needs no
    /// resolution. Without it, a relative URI passes through without a credential and the
    /// first one is logged at WARN. See [`OriginPolicy::resolve_relative`].
    ///
    /// [`OriginPolicy::resolve_relative`]: client_auth::OriginPolicy::resolve_relative
    pub fn resolve_relative_to(mut self, origin: impl Into<String>) -> Self {
        self.origins = self.origins.resolve_relative_to(origin);
        self
    }

    /// Uses another body clone hook (see [`CloneRequestBody`](crate::CloneRequestBody)).
    pub fn clone_body_with<C2>(self, hook: C2) -> AuthorizeLayerBuilder<P, C2> {
        AuthorizeLayerBuilder {
            provider: self.provider,
            origins: self.origins,
            clone_body: hook,
        }
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// [`client_auth::Error::Config`] when no origin is named (and
    /// [`any_https_origin`](Self::any_https_origin) was not called), when an origin does not
    /// parse or has a path, when it is `http://` without [`allow_http`](Self::allow_http), or
    /// when the origin of [`resolve_relative_to`](Self::resolve_relative_to) is not allowed.
    pub fn build(self) -> Result<AuthorizeLayer<P, C>, client_auth::Error> {
        Ok(AuthorizeLayer {
            provider: self.provider,
            origins: self.origins.build()?,
            clone_body: self.clone_body,
        })
    }
}

impl<P, C> fmt::Debug for AuthorizeLayerBuilder<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeLayerBuilder")
            .field("provider", &std::any::type_name::<P>())
            .field("origins", &self.origins)
            .field("clone_body", &std::any::type_name::<C>())
            .finish()
    }
}
