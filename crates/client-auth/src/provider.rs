//! The provider trait and the types it speaks in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use http::{Extensions, Method, StatusCode};

use crate::BoxFuture;
use crate::error::Error;

/// A cheap, borrowed view of an outgoing request: what a provider may look at to choose a
/// credential. Both adapters build it without allocating.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    method: &'a Method,
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    extensions: &'a Extensions,
}

impl<'a> RequestView<'a> {
    /// A view of a request's parts.
    pub fn new(
        method: &'a Method,
        scheme: &'a str,
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        extensions: &'a Extensions,
    ) -> Self {
        Self {
            method,
            scheme,
            authority,
            path,
            query,
            extensions,
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }
    /// The URL scheme (`https`).
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }
    /// The authority (`api.example.com`, `127.0.0.1:8080`).
    pub fn authority(&self) -> &'a str {
        self.authority
    }
    /// The path (`/v1/items`).
    pub fn path(&self) -> &'a str {
        self.path
    }
    /// The query, without `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }
    /// The request's extensions (per-request control, see [`AuthorizationControl`]).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
    /// Whether the caller asked for a forced refresh of this request's credential.
    pub fn force_refresh(&self) -> bool {
        matches!(
            self.extensions.get::<AuthorizationControl>(),
            Some(AuthorizationControl::ForceRefresh)
        )
    }
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The query may carry secrets of the caller's own; it is not printed.
        f.debug_struct("RequestView")
            .field("method", self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Per-request control, set in the request's extensions (`http::Request::extensions_mut` in
/// tower, `RequestBuilder::with_extension` in reqwest-middleware).
#[derive(Clone)]
#[non_exhaustive]
pub enum AuthorizationControl {
    /// Send this request without a credential.
    Skip,
    /// Refresh the credential before sending this request.
    ForceRefresh,
    /// Use this provider instead of the adapter's.
    Provider(Arc<dyn AuthorizationProvider>),
}

impl fmt::Debug for AuthorizationControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizationControl::Skip => f.write_str("Skip"),
            AuthorizationControl::ForceRefresh => f.write_str("ForceRefresh"),
            AuthorizationControl::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// Identifies which token a [`Credential`] was built from, so that a 401 can be matched to
/// the token that caused it. Opaque; only equality and order mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(u64);

impl Generation {
    /// A generation from a counter value (providers count their tokens).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }
    /// The counter value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// What a provider hands to an adapter: the `Authorization` value (always marked sensitive),
/// its generation, and optional extra headers.
#[derive(Clone)]
pub struct Credential {
    value: HeaderValue,
    generation: Generation,
    extra: Option<Arc<Extra>>,
}

/// What only some credentials carry: headers besides `Authorization`, and what a DPoP-bound
/// token's proofs are made of.
struct Extra {
    headers: HeaderMap,
    binding: Option<Binding>,
    /// Which child of a provider of providers issued it (tokens per target).
    owner: Option<u64>,
}

/// A DPoP-bound credential: the `ath` of its token and, once bound to a request, that
/// request's method and `htu`, so that a 401 can be answered with a new proof for it.
#[derive(Clone)]
#[cfg_attr(
    not(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")),
    allow(dead_code, reason = "DPoP needs a JOSE backend")
)]
pub(crate) struct Binding {
    pub(crate) ath: Arc<str>,
    pub(crate) request: Option<(Method, Arc<str>)>,
}

impl Credential {
    /// A credential with this `Authorization` value. The value is marked sensitive.
    pub fn new(mut value: HeaderValue, generation: Generation) -> Self {
        value.set_sensitive(true);
        Self {
            value,
            generation,
            extra: None,
        }
    }

    /// Adds headers sent along with `Authorization` (a DPoP proof, a tenant header).
    /// Every value is marked sensitive.
    pub fn with_extra_headers(mut self, mut headers: HeaderMap) -> Self {
        for value in headers.values_mut() {
            value.set_sensitive(true);
        }
        let binding = self.binding().cloned();
        let owner = self.owner();
        self.extra = Some(Arc::new(Extra {
            headers,
            binding,
            owner,
        }));
        self
    }

    /// This credential with `binding` (and no extra headers): a DPoP-bound token's template.
    #[cfg_attr(
        not(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")),
        allow(dead_code, reason = "DPoP needs a JOSE backend")
    )]
    pub(crate) fn bound(mut self, binding: Binding) -> Self {
        let owner = self.owner();
        self.extra = Some(Arc::new(Extra {
            headers: HeaderMap::new(),
            binding: Some(binding),
            owner,
        }));
        self
    }

    /// This credential marked as issued by child `owner` of a provider of providers, which
    /// hands a 401 to that child only.
    pub(crate) fn owned_by(mut self, owner: u64) -> Self {
        let (headers, binding) = match self.extra.take() {
            Some(extra) => (extra.headers.clone(), extra.binding.clone()),
            None => (HeaderMap::new(), None),
        };
        self.extra = Some(Arc::new(Extra {
            headers,
            binding,
            owner: Some(owner),
        }));
        self
    }

    /// The child that issued this credential ([`owned_by`](Self::owned_by)), if any.
    pub(crate) fn owner(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.owner)
    }

    /// The DPoP binding, if this is a DPoP-bound credential.
    pub(crate) fn binding(&self) -> Option<&Binding> {
        self.extra.as_ref().and_then(|e| e.binding.as_ref())
    }

    /// The `Authorization` value.
    #[inline]
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Which token this credential came from.
    #[inline]
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Extra headers, if any.
    #[inline]
    pub fn extra_headers(&self) -> Option<&HeaderMap> {
        self.extra
            .as_deref()
            .map(|e| &e.headers)
            .filter(|h| !h.is_empty())
    }

    /// Writes `Authorization` and the extra headers into `headers`, replacing earlier values.
    #[inline]
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.value.clone());
        self.apply_extra(headers);
    }

    /// Writes only the extra headers into `headers`, replacing earlier values: for an adapter
    /// that writes `Authorization` itself (with [`into_header_value`](Self::into_header_value),
    /// or through a [`HeaderMap::entry`] it already looked up).
    #[inline]
    pub fn apply_extra(&self, headers: &mut HeaderMap) {
        if let Some(extra) = &self.extra {
            for (name, value) in extra.headers.iter() {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    /// The `Authorization` value, without a copy (marked sensitive, as always). The extra
    /// headers are dropped with the rest: take this only from a credential without any
    /// ([`extra_headers`](Self::extra_headers) is `None`), or write them first with
    /// [`apply_extra`](Self::apply_extra).
    #[inline]
    pub fn into_header_value(self) -> HeaderValue {
        self.value
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("value", &"[REDACTED]")
            .field("generation", &self.generation)
            .field(
                "extra_headers",
                &self.extra_headers().map(|h| h.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// A provider's answer to a 401.
///
/// Adapters treat any variant added later as [`GiveUp`](Self::GiveUp): returning the 401
/// unchanged is always safe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Unauthorized {
    /// Send the request once more with this credential.
    Retry(Credential),
    /// Return the 401 to the caller unchanged.
    GiveUp,
}

/// The future returned by provider methods: either an answer at hand (no allocation) or a
/// boxed future for the slow path.
///
/// Like any future it completes once; polled again after that, it answers
/// [`Error::Config`] instead of panicking.
#[non_exhaustive]
pub enum ProviderFuture<T> {
    /// The answer is known. `None` once it has been taken by polling.
    Ready(Option<Result<T, Error>>),
    /// The answer needs work (a refresh, a callback).
    Pending(BoxFuture<'static, Result<T, Error>>),
}

/// What [`AuthorizationProvider::authorize`] returns.
pub type AuthorizeFuture = ProviderFuture<Credential>;
/// What [`AuthorizationProvider::on_unauthorized`] returns.
pub type UnauthorizedFuture = ProviderFuture<Unauthorized>;

impl<T> ProviderFuture<T> {
    /// An answer at hand.
    #[inline]
    pub fn ready(result: Result<T, Error>) -> Self {
        ProviderFuture::Ready(Some(result))
    }

    /// An answer that `future` will give.
    pub fn pending(future: impl Future<Output = Result<T, Error>> + Send + 'static) -> Self {
        ProviderFuture::Pending(Box::pin(future))
    }

    /// Takes the answer if it is at hand, without polling.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Result<T, Error>> {
        match self {
            ProviderFuture::Ready(result) => result.take(),
            ProviderFuture::Pending(_) => None,
        }
    }
}

// Neither variant is ever pinned in place: `T` only sits in an `Option` that is moved out.
impl<T> Unpin for ProviderFuture<T> {}

impl<T> Future for ProviderFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ProviderFuture::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(
                Error::Config("a provider future was polled after it completed".into()),
            ))),
            ProviderFuture::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for ProviderFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderFuture::Ready(_) => f.write_str("ProviderFuture::Ready"),
            ProviderFuture::Pending(_) => f.write_str("ProviderFuture::Pending"),
        }
    }
}

/// Supplies the `Authorization` credential for outgoing requests and decides what a 401
/// means.
///
/// Adapters call [`authorize`](Self::authorize) before each request to an allowed origin, and
/// [`on_unauthorized`](Self::on_unauthorized) when the answer is a 401 for a credential they
/// stamped. The trait is dyn-compatible: `Arc<dyn AuthorizationProvider>` works, and is what a
/// per-request override ([`AuthorizationControl::Provider`]) holds.
///
/// ```
/// use client_auth::{
///     AuthorizationProvider, AuthorizeFuture, Credential, Generation, RequestView,
/// };
/// use http::HeaderValue;
///
/// /// Sends a header value computed from the request path.
/// struct PerPath;
///
/// impl AuthorizationProvider for PerPath {
///     fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
///         let value = if request.path().starts_with("/admin") { "Token admin" } else { "Token user" };
///         AuthorizeFuture::ready(Ok(Credential::new(
///             HeaderValue::from_static(value),
///             Generation::new(0),
///         )))
///     }
///
///     fn can_recover(&self) -> bool {
///         false
///     }
/// }
///
/// let provider: std::sync::Arc<dyn AuthorizationProvider> = std::sync::Arc::new(PerPath);
/// # let _ = provider;
/// ```
pub trait AuthorizationProvider: Send + Sync + 'static {
    /// The credential for this request.
    ///
    /// # Errors
    ///
    /// When no credential can be had; the adapter then does not send the request.
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture;

    /// The server answered `status` (a 401) to a request sent with `failed`; `headers` are the
    /// response headers (`WWW-Authenticate`). The default gives up.
    ///
    /// # Errors
    ///
    /// When the session has ended; the adapter returns the error instead of the 401.
    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        let _ = (failed, status, headers);
        UnauthorizedFuture::ready(Ok(Unauthorized::GiveUp))
    }

    /// Whether [`on_unauthorized`](Self::on_unauthorized) can ever answer `Retry`. When
    /// `false`, adapters skip the request snapshot that a retry needs. Defaults to `true`;
    /// providers that never retry should say `false`.
    fn can_recover(&self) -> bool {
        true
    }

    /// The server answered a request sent with `credential` in a way that shows it accepted the
    /// credential ([`credential_accepted`](crate::adapter::credential_accepted): anything but 401, 407,
    /// 429 and 5xx). Adapters call this for every such response, so it must be
    /// cheap (no lock, no allocation). The OAuth provider uses it to tell a token the server
    /// later revoked (refresh at once) from one it never accepted (refresh with a growing
    /// cooldown). The default does nothing.
    fn on_accepted(&self, credential: &Credential) {
        let _ = credential;
    }

    /// Whether a 403 is handled like a 401 (asked about with
    /// [`on_unauthorized`](Self::on_unauthorized), retried once with a new credential) instead
    /// of returned. Off by default: many servers answer 403 for a missing permission, which no
    /// new token fixes, and each such refresh would spend a single-use refresh token.
    fn retry_forbidden(&self) -> bool {
        false
    }

    /// Whether adapters keep this provider and the credential once a request is stamped: to
    /// tell the provider how the server answered ([`on_accepted`](Self::on_accepted)), to ask it
    /// about a 401 ([`on_unauthorized`](Self::on_unauthorized)) and to label the 401 in the
    /// metrics ([`metrics_name`](Self::metrics_name)). Defaults to `true`.
    ///
    /// A provider may answer `false` only when it needs none of that: it never recovers
    /// ([`can_recover`](Self::can_recover) is `false`), its `on_accepted` does nothing, and its
    /// metrics name is the default. Adapters then keep nothing of it after stamping (no
    /// reference count of a provider shared by every request is touched, and the credential's
    /// value moves into the request instead of being copied) and report a 401 to such a
    /// request under the provider label `"default"`. A provider that answers `false` but can
    /// recover is treated as answering `true`. [`StaticToken`](crate::StaticToken) answers
    /// `false`.
    fn needs_answers(&self) -> bool {
        true
    }

    /// The `provider` label of the metrics recorded for this provider (feature `metrics`, see
    /// [`crate::metrics`]): a short name you choose, never a secret or a URL. The OAuth
    /// provider returns the name given to
    /// [`OAuthProviderBuilder::metrics_name`](crate::OAuthProviderBuilder::metrics_name); the
    /// default is `"default"`.
    fn metrics_name(&self) -> &str {
        "default"
    }
}

/// Smart pointers to a provider are providers (`&P` is not: it conflicts with `'static`).
macro_rules! forward_provider {
    ($($ptr:ident),*) => {$(
        impl<P: AuthorizationProvider + ?Sized> AuthorizationProvider for $ptr<P> {
            fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
                (**self).authorize(request)
            }
            fn on_unauthorized(
                &self,
                failed: &Credential,
                status: StatusCode,
                headers: &HeaderMap,
            ) -> UnauthorizedFuture {
                (**self).on_unauthorized(failed, status, headers)
            }
            fn can_recover(&self) -> bool {
                (**self).can_recover()
            }
            fn on_accepted(&self, credential: &Credential) {
                (**self).on_accepted(credential)
            }
            fn retry_forbidden(&self) -> bool {
                (**self).retry_forbidden()
            }
            fn needs_answers(&self) -> bool {
                (**self).needs_answers()
            }
            fn metrics_name(&self) -> &str {
                (**self).metrics_name()
            }
        }
    )*};
}

forward_provider!(Arc, Box);

// The trait must stay dyn-compatible: this fails to compile otherwise.
const _: fn(&dyn AuthorizationProvider) = |_| {};
const _: fn(Arc<dyn AuthorizationProvider>) -> Box<dyn AuthorizationProvider> = |p| Box::new(p);
