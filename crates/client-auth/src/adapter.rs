//! For authors of adapters, token stores and transports: the per-request decision both
//! adapters share, the `WWW-Authenticate` parser they answer 401s with, and the boxed future
//! the slow paths return. Applications need none of it: they use `client-auth-tower` or
//! `client-auth-reqwest`.
//!
//! An adapter asks [`plan_request`] what to do with each request, stamps the credential of the
//! provider it names, reports the answer with [`AuthorizationProvider::on_accepted`] (when
//! [`credential_accepted`] says so) or [`AuthorizationProvider::on_unauthorized`] (a 401), and
//! retries at most once when the provider hands back a new credential. It reports every 401
//! with [`report_unauthorized`], then either [`report_retry`] or [`report_retry_skipped`]:
//! they count it (feature `metrics`) and log it at the level both adapters share.
//!
//! ```
//! use std::sync::Arc;
//! use client_auth::adapter::{plan_request, Plan};
//! use client_auth::{OriginPolicy, RequestView, StaticToken};
//! use http::{Extensions, HeaderValue, Method};
//!
//! let provider = Arc::new(StaticToken::api_key("k")?);
//! let origins = OriginPolicy::builder().allow_origin("https://api.example.com").build()?;
//! let ext = Extensions::new();
//! let to_api = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
//! assert!(matches!(plan_request(&provider, &origins, &to_api, None), Plan::Authorize(_)));
//! let elsewhere = RequestView::new(&Method::GET, "https", "cdn.example.net", "/", None, &ext);
//! assert!(matches!(plan_request(&provider, &origins, &elsewhere, None), Plan::PassThrough));
//!
//! // The caller's own `Authorization` is kept, unless it carries no credentials.
//! let own = HeaderValue::from_static("Bearer callers-token");
//! assert!(matches!(plan_request(&provider, &origins, &to_api, Some(&own)), Plan::PassThrough));
//! let empty_key = HeaderValue::from_static("Bearer ");
//! assert!(matches!(plan_request(&provider, &origins, &to_api, Some(&empty_key)), Plan::Authorize(_)));
//! # Ok::<(), client_auth::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Extensions, HeaderValue};

use crate::auth_header::carries_no_credentials;
use crate::origin::OriginPolicy;
use crate::provider::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, RequestView,
};
pub use crate::www_authenticate::{
    Challenge, bearer_error, is_insufficient_scope, parse_challenges, refresh_may_help,
};

/// A boxed, `Send` future: what the slow paths return (a refresh, a store call, a token
/// request).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to do with one request.
pub enum Plan<'a, P> {
    /// Send it untouched: another origin, a caller-set `Authorization`, or a per-request skip.
    PassThrough,
    /// Ask this provider for a credential.
    Authorize(ProviderRef<'a, P>),
}

/// The adapter's provider, or the per-request override found in the extensions.
pub enum ProviderRef<'a, P> {
    /// The adapter's own provider.
    Default(&'a Arc<P>),
    /// A provider set for this request ([`AuthorizationControl::Provider`]).
    Override(&'a Arc<dyn AuthorizationProvider>),
}

impl<P> fmt::Debug for Plan<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::PassThrough => f.write_str("PassThrough"),
            Plan::Authorize(p) => f.debug_tuple("Authorize").field(p).finish(),
        }
    }
}

impl<P> fmt::Debug for ProviderRef<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderRef::Default(_) => f.write_str("Default"),
            ProviderRef::Override(_) => f.write_str("Override"),
        }
    }
}

impl<P: AuthorizationProvider> ProviderRef<'_, P> {
    /// The provider's credential for `request`.
    pub fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        match self {
            ProviderRef::Default(p) => p.authorize(request),
            ProviderRef::Override(p) => p.authorize(request),
        }
    }

    /// Whether the provider may answer a 401 with a retry (if not, no snapshot is taken).
    pub fn can_recover(&self) -> bool {
        match self {
            ProviderRef::Default(p) => p.can_recover(),
            ProviderRef::Override(p) => p.can_recover(),
        }
    }

    /// An owned handle, kept by a request that may need to ask about a 401 later.
    pub fn to_owned(&self) -> Arc<dyn AuthorizationProvider> {
        match self {
            ProviderRef::Default(p) => Arc::clone(*p) as Arc<dyn AuthorizationProvider>,
            ProviderRef::Override(p) => Arc::clone(p),
        }
    }
}

/// Whether an answer to a request that carried our credential shows the server accepted it,
/// to be reported with [`AuthorizationProvider::on_accepted`]: any status but 401 (rejected),
/// 407 (about a proxy's credentials), 429 and 5xx (often answered in front of the API, by a
/// gateway or a rate limiter that never looked at the credential).
///
/// ```
/// use client_auth::adapter::credential_accepted;
/// use http::StatusCode;
///
/// assert!(credential_accepted(StatusCode::OK));
/// assert!(credential_accepted(StatusCode::FORBIDDEN));
/// assert!(!credential_accepted(StatusCode::UNAUTHORIZED));
/// assert!(!credential_accepted(StatusCode::SERVICE_UNAVAILABLE));
/// ```
pub fn credential_accepted(status: http::StatusCode) -> bool {
    use http::StatusCode as S;
    !(matches!(
        status,
        S::UNAUTHORIZED | S::PROXY_AUTHENTICATION_REQUIRED | S::TOO_MANY_REQUESTS
    ) || status.is_server_error())
}

/// Why an adapter returned a 401 to a request it stamped without sending the request again:
/// the `reason` label of `client_auth_retries_skipped_total` (see [`crate::metrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetrySkipped {
    /// The provider never retries ([`AuthorizationProvider::can_recover`] is `false`: a static
    /// key).
    CannotRecover,
    /// The 401 answered the retry itself: a request is retried once.
    AlreadyRetried,
    /// The request body could not be copied before the send.
    BodyNotCloneable,
    /// The copy of the body changed with the send (a `Clone` that shares the body, drained by
    /// it): a retry would send a truncated body.
    BodyCopyChanged,
    /// The 401 came from another origin after a redirect: the request it answered carried no
    /// credential of ours.
    ForeignOrigin,
    /// The provider answered [`Unauthorized::GiveUp`](crate::Unauthorized::GiveUp).
    Declined,
    /// The provider's session ended: its error is returned instead of the 401.
    SessionEnded,
}

impl RetrySkipped {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RetrySkipped::CannotRecover => "cannot_recover",
            RetrySkipped::AlreadyRetried => "already_retried",
            RetrySkipped::BodyNotCloneable => "body_not_cloneable",
            RetrySkipped::BodyCopyChanged => "body_copy_changed",
            RetrySkipped::ForeignOrigin => "foreign_origin",
            RetrySkipped::Declined => "declined",
            RetrySkipped::SessionEnded => "session_ended",
        }
    }
}

/// Reports a 401 to a request the adapter stamped (the first send or the retry): counted in
/// `client_auth_unauthorized_total`. Every such 401 is then followed by exactly one
/// [`report_retry`] or [`report_retry_skipped`]. Nothing is logged here.
pub fn report_unauthorized(provider: &dyn AuthorizationProvider) {
    unauthorized(provider.metrics_name());
}

fn unauthorized(provider: &str) {
    crate::metrics::adapter_counter(crate::metrics::UNAUTHORIZED, provider, None);
}

/// Reports that the adapter sends the request again with `fresh` after a 401 to `failed`:
/// counted in `client_auth_retries_total`, and a DEBUG event carrying
/// `http.request.resend_count = 1` (the OpenTelemetry attribute of a resent HTTP request).
/// Call it right before the resend, inside the request's span.
pub fn report_retry(provider: &dyn AuthorizationProvider, failed: &Credential, fresh: &Credential) {
    crate::metrics::adapter_counter(crate::metrics::RETRIES, provider.metrics_name(), None);
    tracing::debug!(
        http.request.resend_count = 1,
        failed_generation = failed.generation().get(),
        generation = fresh.generation().get(),
        "401: retrying once with a new credential"
    );
}

/// Reports that the adapter returns a 401 (with `status`) without sending the request again,
/// for `reason`: counted in `client_auth_retries_skipped_total`, and logged at the level the
/// adapters share:
///
/// - WARN for [`BodyNotCloneable`](RetrySkipped::BodyNotCloneable) and
///   [`BodyCopyChanged`](RetrySkipped::BodyCopyChanged): a 401 the provider could have
///   recovered from reaches the caller because of how the request was built, which the
///   application can change;
/// - DEBUG for every other reason: the behaviour is by design (a static key, one retry, a
///   foreign origin, a provider under cooldown or backoff, a session that ended, whose error
///   the caller gets).
pub fn report_retry_skipped(
    provider: &dyn AuthorizationProvider,
    reason: RetrySkipped,
    status: http::StatusCode,
) {
    retry_skipped(provider.metrics_name(), reason, status);
}

fn retry_skipped(provider: &str, reason: RetrySkipped, status: http::StatusCode) {
    crate::metrics::adapter_counter(
        crate::metrics::RETRIES_SKIPPED,
        provider,
        Some(reason.as_str()),
    );
    let status = status.as_u16();
    let reason_label = reason.as_str();
    match reason {
        RetrySkipped::BodyNotCloneable => tracing::warn!(
            status,
            reason = reason_label,
            "401 not retried: the request body could not be cloned before it was sent; a body \
             that can be cloned as a deep copy (not one sharing its bytes) allows the retry"
        ),
        RetrySkipped::BodyCopyChanged => tracing::warn!(
            status,
            reason = reason_label,
            "401 not retried: the copy of the request body changed since it was taken (a \
             `Clone` that shares the body, drained by the send); a clone that makes a deep \
             copy allows the retry"
        ),
        RetrySkipped::ForeignOrigin => tracing::debug!(
            status,
            reason = reason_label,
            "401 from another origin after a redirect: returned without a retry"
        ),
        RetrySkipped::Declined => tracing::debug!(
            status,
            reason = reason_label,
            "401: the provider gave up; returned unchanged"
        ),
        RetrySkipped::SessionEnded => tracing::debug!(
            status,
            reason = reason_label,
            "401: the session ended; the provider's error is returned"
        ),
        RetrySkipped::CannotRecover | RetrySkipped::AlreadyRetried => {
            tracing::debug!(status, reason = reason_label, "401 returned unchanged")
        }
    }
}

/// Reports a 401 (or an opted-in 403, `status`) to a request stamped for a provider that needs
/// no answers ([`AuthorizationProvider::needs_answers`] is `false`, so the adapter kept nothing
/// of it): [`report_unauthorized`] and [`report_retry_skipped`] with
/// [`RetrySkipped::CannotRecover`], under the provider label `"default"`.
pub fn report_unauthorized_unanswered(status: http::StatusCode) {
    unauthorized(DEFAULT_NAME);
    retry_skipped(DEFAULT_NAME, RetrySkipped::CannotRecover, status);
}

/// The `provider` label of a provider that keeps the default name.
const DEFAULT_NAME: &str = "default";

/// Whether an answer with `status` rejects the credential, so the adapter asks the provider
/// ([`AuthorizationProvider::on_unauthorized`]) instead of reporting acceptance: a 401 always,
/// a 403 only from a provider that opted in ([`AuthorizationProvider::retry_forbidden`]).
///
/// ```
/// use client_auth::StaticToken;
/// use client_auth::adapter::rejected;
/// use http::StatusCode;
///
/// let key = StaticToken::api_key("k")?;
/// assert!(rejected(&key, StatusCode::UNAUTHORIZED));
/// assert!(!rejected(&key, StatusCode::FORBIDDEN));
/// # Ok::<(), client_auth::Error>(())
/// ```
pub fn rejected<P: AuthorizationProvider + ?Sized>(provider: &P, status: http::StatusCode) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        || (status == http::StatusCode::FORBIDDEN && provider.retry_forbidden())
}

/// Where a request goes, as an adapter found it: with [`OriginPolicy::allows_uri`] or
/// [`OriginPolicy::allows_url`], faster than the string comparison [`plan_request`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A relative URI (no scheme): it has no origin.
    Relative,
    /// An origin the policy allows.
    Allowed,
    /// Any other origin.
    Other,
}

/// Steps 1 to 3 and 5 of [`plan_request`], for an adapter that found the request's
/// [`Destination`] itself: a per-request [`AuthorizationControl::Skip`], a relative URI (the
/// first one logged at WARN) and an origin the policy does not allow pass through (`None`);
/// otherwise the provider to ask, the per-request override or the adapter's. Step 4 (the
/// caller's own `Authorization`) is [`keeps_caller_authorization`], asked before the provider.
///
/// ```
/// use std::sync::Arc;
/// use client_auth::adapter::{Destination, route};
/// use client_auth::{AuthorizationControl, OriginPolicy, StaticToken};
/// use http::{Extensions, Uri};
///
/// let provider = Arc::new(StaticToken::api_key("k")?);
/// let origins = OriginPolicy::builder().allow_origin("https://api.example.com").build()?;
/// let uri = Uri::from_static("https://api.example.com/v1");
/// let to = if origins.allows_uri(&uri) { Destination::Allowed } else { Destination::Other };
/// let mut ext = Extensions::new();
/// assert!(route(&provider, &origins, &ext, to).is_some());
/// assert!(route(&provider, &origins, &ext, Destination::Other).is_none());
/// ext.insert(AuthorizationControl::Skip);
/// assert!(route(&provider, &origins, &ext, to).is_none());
/// # Ok::<(), client_auth::Error>(())
/// ```
#[inline]
pub fn route<'a, P: AuthorizationProvider>(
    provider: &'a Arc<P>,
    origins: &OriginPolicy,
    extensions: &'a Extensions,
    destination: Destination,
) -> Option<ProviderRef<'a, P>> {
    let control = extensions.get::<AuthorizationControl>();
    if matches!(control, Some(AuthorizationControl::Skip)) {
        return None;
    }
    match destination {
        Destination::Allowed => {}
        Destination::Relative => {
            origins.warn_relative_once();
            return None;
        }
        Destination::Other => return None,
    }
    Some(match control {
        Some(AuthorizationControl::Provider(p)) => ProviderRef::Override(p),
        _ => ProviderRef::Default(provider),
    })
}

/// Step 4 of [`plan_request`]: whether the caller's own `Authorization` (`caller`, the first
/// value) is sent as is, and its 401 returned unchanged. A value that carries no credentials
/// counts as absent and is replaced: empty, only whitespace, or a scheme alone (`Bearer`,
/// `Bearer ` — what a client configured with an empty key sends). When it is kept, a DEBUG
/// event names the request's `authority` (only then asked for).
///
/// ```
/// use client_auth::adapter::keeps_caller_authorization;
/// use http::HeaderValue;
///
/// let authority = || "api.example.com";
/// assert!(!keeps_caller_authorization(None, authority));
/// assert!(keeps_caller_authorization(Some(&HeaderValue::from_static("Bearer mine")), authority));
/// assert!(!keeps_caller_authorization(Some(&HeaderValue::from_static("Bearer ")), authority));
/// ```
#[inline]
pub fn keeps_caller_authorization<'s>(
    caller: Option<&HeaderValue>,
    authority: impl FnOnce() -> &'s str,
) -> bool {
    let Some(value) = caller else {
        return false;
    };
    if carries_no_credentials(value) {
        return false;
    }
    tracing::debug!(
        authority = authority(),
        "the caller set Authorization on a request to an allowed origin: it is sent as is, \
         and a 401 to it is returned unchanged"
    );
    true
}

/// Decides what an adapter does with a request: pass it through untouched, or authorize it and
/// with which provider.
///
/// In order:
/// 1. a per-request [`AuthorizationControl::Skip`] passes through;
/// 2. a relative URI (no scheme) passes through: it has no origin. The first one a policy sees
///    is logged at WARN (see [`OriginPolicy::resolve_relative`] for the remedy);
/// 3. an origin the policy does not allow passes through;
/// 4. a request whose caller already set `Authorization` (`caller_authorization`) passes
///    through, and so does its 401, with a DEBUG event saying so. A value that carries no
///    credentials counts as absent and is replaced: empty, only whitespace, or a scheme alone
///    (`Bearer`, `Bearer ` — what a client configured with an empty key sends);
/// 5. otherwise the per-request override provider, or the adapter's.
pub fn plan_request<'a, P: AuthorizationProvider>(
    provider: &'a Arc<P>,
    origins: &OriginPolicy,
    request: &RequestView<'a>,
    caller_authorization: Option<&HeaderValue>,
) -> Plan<'a, P> {
    let destination = if request.scheme().is_empty() {
        Destination::Relative
    } else if origins.allows(request.scheme(), request.authority()) {
        Destination::Allowed
    } else {
        Destination::Other
    };
    match route(provider, origins, request.extensions(), destination) {
        Some(_) if keeps_caller_authorization(caller_authorization, || request.authority()) => {
            Plan::PassThrough
        }
        Some(provider) => Plan::Authorize(provider),
        None => Plan::PassThrough,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticToken;
    use http::{Extensions, Method};

    fn origins() -> OriginPolicy {
        OriginPolicy::builder()
            .allow_origin("https://api.example.com")
            .build()
            .unwrap()
    }

    #[test]
    fn skip_and_caller_header_pass_through() {
        let p = Arc::new(StaticToken::api_key("k").unwrap());
        let mut ext = Extensions::new();
        let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
        let callers = HeaderValue::from_static("Bearer caller");
        assert!(matches!(
            plan_request(&p, &origins(), &view, Some(&callers)),
            Plan::PassThrough
        ));
        ext.insert(AuthorizationControl::Skip);
        let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
        assert!(matches!(
            plan_request(&p, &origins(), &view, None),
            Plan::PassThrough
        ));
    }

    #[test]
    fn an_empty_or_scheme_only_caller_header_counts_as_absent() {
        let p = Arc::new(StaticToken::api_key("k").unwrap());
        let ext = Extensions::new();
        let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
        for blank in ["", "Bearer", "Bearer ", " token\t"] {
            let value = HeaderValue::from_str(blank).unwrap();
            assert!(
                matches!(
                    plan_request(&p, &origins(), &view, Some(&value)),
                    Plan::Authorize(_)
                ),
                "{blank:?}"
            );
        }
    }

    #[test]
    fn a_relative_uri_passes_through() {
        let p = Arc::new(StaticToken::api_key("k").unwrap());
        let ext = Extensions::new();
        let view = RequestView::new(&Method::GET, "", "", "/user", None, &ext);
        assert!(matches!(
            plan_request(&p, &origins(), &view, None),
            Plan::PassThrough
        ));
    }

    #[test]
    fn an_override_provider_replaces_the_default() {
        let p = Arc::new(StaticToken::api_key("default").unwrap());
        let other: Arc<dyn AuthorizationProvider> =
            Arc::new(StaticToken::api_key("other").unwrap());
        let mut ext = Extensions::new();
        ext.insert(AuthorizationControl::Provider(other));
        let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
        let Plan::Authorize(chosen) = plan_request(&p, &origins(), &view, None) else {
            panic!("authorize expected")
        };
        let cred = chosen.authorize(&view).take_ready().unwrap().unwrap();
        assert_eq!(cred.header_value(), "Token other");
    }
}
