//! Tokens per target: one OAuth client holding a token for each scope set, resource or
//! audience its requests go to.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, StatusCode};

use super::{GrantKind, OAuthProvider, OAuthProviderBuilder, TransportChoice};
use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, ProviderFuture, RequestView, Unauthorized,
    UnauthorizedFuture,
};

/// What a token is for: its scopes, resource (RFC 8707), audience and any other token-request
/// parameters. Two requests with equal targets share one token; different targets never do.
///
/// Set it per request in the extensions (`http::Request::extensions_mut().insert(target)`, or
/// reqwest-middleware's `with_extension`), or let [`PerTargetProviderBuilder::select`] derive it
/// from the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TokenTarget {
    scope: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
    params: Vec<(String, String)>,
}

impl TokenTarget {
    /// The template's own target: its scope, no resource, no audience.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `scope` asked for (space-separated), instead of the template's.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `resource` parameter (RFC 8707): the API the token is for, as an absolute URI.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// The `audience` parameter many servers use instead of `resource`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Another token-request parameter that tells tokens apart.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// A stable name for the target, the same in every process: the store namespace suffix.
    /// SHA-256 over every field, each tagged, marked present or absent and length-prefixed, so
    /// that different targets never share a store entry.
    fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut hash = Sha256::new();
        let mut feed = |tag: u8, text: Option<&str>| {
            hash.update([tag, u8::from(text.is_some())]);
            let text = text.unwrap_or("");
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        };
        feed(1, self.scope.as_deref());
        feed(2, self.resource.as_deref());
        feed(3, self.audience.as_deref());
        for (name, value) in &self.params {
            feed(4, Some(name));
            feed(5, Some(value));
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

type Select = dyn Fn(&RequestView<'_>) -> TokenTarget + Send + Sync;
type Make = dyn Fn(&TokenTarget) -> Result<OAuthProvider, Error> + Send + Sync;

/// One OAuth client, a token per [`TokenTarget`]: each target has its own token, single
/// flight, refresh windows, backoff, 401 handling and store entry (the template's namespace,
/// `#`, a digest of the target), so a token asked for one API is never sent to another. At most
/// [`max_targets`](PerTargetProviderBuilder::max_targets) targets are held; the least recently
/// used one is dropped first. Each credential carries the target that issued it, so a 401 is
/// answered only by that target's provider, and one for a dropped target is returned as is.
///
/// The template must use a grant that needs no refresh token (`client_credentials`, the JWT
/// bearer grant, token exchange): a refresh token shared by several targets would be rotated
/// by one under the others.
///
/// ```
/// # #[cfg(feature = "reqwest")] {
/// use client_auth::{OAuthProvider, PerTargetProvider, TokenTarget};
///
/// let template = OAuthProvider::client_credentials("https://auth.example.com/token")
///     .client_id("my-service")
///     .client_secret("s3cret");
/// // A token for each API host, named by its origin as an RFC 8707 resource.
/// let provider = PerTargetProvider::builder(template)
///     .select(|request| {
///         TokenTarget::new().resource(format!("{}://{}", request.scheme(), request.authority()))
///     })
///     .max_targets(16)
///     .build()?;
/// # let _ = provider;
/// # }
/// # Ok::<(), client_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct PerTargetProvider {
    inner: Arc<Inner>,
}

struct Inner {
    make: Box<Make>,
    select: Option<Box<Select>>,
    max: usize,
    /// The template's `retry_forbidden`.
    retry_forbidden: bool,
    /// The template's metrics name.
    metrics_name: String,
    /// Most recently used last: (slot, target, provider).
    held: Mutex<Vec<(u64, TokenTarget, OAuthProvider)>>,
    next_slot: Mutex<u64>,
}

impl fmt::Debug for PerTargetProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("PerTargetProvider")
            .field("targets", &held.len())
            .field("max_targets", &self.inner.max)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PerTargetProvider`].
pub struct PerTargetProviderBuilder<T> {
    template: OAuthProviderBuilder<T>,
    select: Option<Box<Select>>,
    max: usize,
}

impl<T> fmt::Debug for PerTargetProviderBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerTargetProviderBuilder")
            .field("template", &self.template)
            .field("max_targets", &self.max)
            .finish_non_exhaustive()
    }
}

impl PerTargetProvider {
    /// A builder from `template`: every target's provider is the template with the target's
    /// scope and parameters.
    pub fn builder<T>(template: OAuthProviderBuilder<T>) -> PerTargetProviderBuilder<T> {
        PerTargetProviderBuilder {
            template,
            select: None,
            max: 64,
        }
    }

    /// The provider of `target` (created when it is not held), to read its token or session by
    /// hand.
    ///
    /// # Errors
    ///
    /// The template's build error for this target.
    pub fn provider(&self, target: &TokenTarget) -> Result<OAuthProvider, Error> {
        self.slot(target).map(|(_, provider)| provider)
    }

    fn target_of(&self, request: &RequestView<'_>) -> TokenTarget {
        match (
            request.extensions().get::<TokenTarget>(),
            &self.inner.select,
        ) {
            (Some(target), _) => target.clone(),
            (None, Some(select)) => select(request),
            (None, None) => TokenTarget::default(),
        }
    }

    fn slot(&self, target: &TokenTarget) -> Result<(u64, OAuthProvider), Error> {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = held.iter().position(|(_, t, _)| t == target) {
            let entry = held.remove(i);
            let found = (entry.0, entry.2.clone());
            held.push(entry);
            return Ok(found);
        }
        let provider = (self.inner.make)(target)?;
        // A 64-bit counter: a slot is never handed out twice, so a credential names the one
        // provider that issued it for as long as the process lives.
        let slot = {
            let mut next = self
                .inner
                .next_slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *next = next.wrapping_add(1);
            *next
        };
        if held.len() >= self.inner.max {
            held.remove(0);
        }
        held.push((slot, target.clone(), provider.clone()));
        Ok((slot, provider))
    }

    /// The provider that issued `credential`, if its target is still held.
    fn issuer_of(&self, credential: &Credential) -> Option<OAuthProvider> {
        let slot = credential.owner()?;
        let held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.iter()
            .find(|(s, _, _)| *s == slot)
            .map(|(_, _, provider)| provider.clone())
    }
}

/// `credential` marked as issued by the target in `slot`.
fn outer(slot: u64, credential: Credential) -> Credential {
    credential.owned_by(slot)
}

fn renumbered<T: Send + 'static>(
    slot: u64,
    future: ProviderFuture<T>,
    map: fn(u64, T) -> T,
) -> ProviderFuture<T> {
    match future {
        ProviderFuture::Ready(answer) => {
            ProviderFuture::Ready(answer.map(|result| result.map(|value| map(slot, value))))
        }
        ProviderFuture::Pending(future) => {
            ProviderFuture::pending(async move { future.await.map(|value| map(slot, value)) })
        }
    }
}

impl AuthorizationProvider for PerTargetProvider {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        let target = self.target_of(request);
        match self.slot(&target) {
            Ok((slot, provider)) => renumbered(slot, provider.authorize(request), outer),
            Err(e) => AuthorizeFuture::ready(Err(e)),
        }
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        // A target dropped since: its token is gone too, so the 401 stays as it is.
        let (Some(slot), Some(provider)) = (failed.owner(), self.issuer_of(failed)) else {
            return UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp));
        };
        renumbered(
            slot,
            provider.on_unauthorized(failed, status, headers),
            |slot, answer| match answer {
                Unauthorized::Retry(credential) => Unauthorized::Retry(outer(slot, credential)),
                other => other,
            },
        )
    }

    fn can_recover(&self) -> bool {
        true
    }

    fn on_accepted(&self, credential: &Credential) {
        if let Some(provider) = self.issuer_of(credential) {
            provider.on_accepted(credential);
        }
    }

    fn metrics_name(&self) -> &str {
        &self.inner.metrics_name
    }

    fn retry_forbidden(&self) -> bool {
        self.inner.retry_forbidden
    }
}

impl<T> PerTargetProviderBuilder<T> {
    /// Derives the target of a request that carries none in its extensions (default: the
    /// template's own target for every request).
    pub fn select(
        mut self,
        select: impl Fn(&RequestView<'_>) -> TokenTarget + Send + Sync + 'static,
    ) -> Self {
        self.select = Some(Box::new(select));
        self
    }

    /// The most targets held at once (default 64, at least 1); the least recently used one is
    /// dropped first.
    pub fn max_targets(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Builds the provider; the template is built once here to check it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a template with the `refresh_token` grant, or the template's own
    /// build error.
    pub fn build(self) -> Result<PerTargetProvider, Error>
    where
        T: TransportChoice + Clone + Send + Sync + 'static,
    {
        if self.template.grant == GrantKind::RefreshToken {
            return Err(Error::Config(
                "tokens per target need a grant without a refresh token (client_credentials, \
                 the JWT bearer grant, token exchange): one refresh token rotated by a target \
                 would be lost to the others"
                    .into(),
            ));
        }
        drop(self.template.clone().build()?);
        let retry_forbidden = self.template.retry_forbidden;
        let metrics_name = self.template.metrics_name.clone();
        let template = self.template;
        let make = move |target: &TokenTarget| {
            let mut builder = template.clone();
            if let Some(scope) = &target.scope {
                builder.scope = Some(scope.clone());
            }
            if let Some(resource) = &target.resource {
                builder = builder.extra_param("resource", resource.clone());
            }
            if let Some(audience) = &target.audience {
                builder = builder.extra_param("audience", audience.clone());
            }
            for (name, value) in &target.params {
                builder = builder.extra_param(name.clone(), value.clone());
            }
            if *target != TokenTarget::default() {
                builder.namespace = format!("{}#{}", builder.namespace, target.digest());
            }
            builder.build()
        };
        Ok(PerTargetProvider {
            inner: Arc::new(Inner {
                make: Box::new(make),
                select: self.select,
                max: self.max,
                retry_forbidden,
                metrics_name,
                held: Mutex::new(Vec::new()),
                next_slot: Mutex::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_digest_apart_and_stably() {
        let a = TokenTarget::new().resource("https://a.example");
        let b = TokenTarget::new().resource("https://b.example");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
        // Field text cannot stand in for another field.
        assert_ne!(
            TokenTarget::new().scope("x").digest(),
            TokenTarget::new().audience("x").digest()
        );
    }
}
