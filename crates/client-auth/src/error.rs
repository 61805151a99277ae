//! The error type of the core crate.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::redact;
use crate::session::SessionReason;

/// Everything that can go wrong while getting a credential.
///
/// Errors never contain a token, a secret or the raw body of a token-endpoint answer: text that
/// came from the server or from the transport (an `error_description`, a transport error's
/// message) has the secrets the request carried removed, and URLs in it lose their userinfo and
/// query values. They are `Clone` because one refresh outcome is handed to every caller waiting
/// for it.
///
/// Three classes matter to callers:
/// - [`is_transient`](Self::is_transient): try again later (network, timeout, 5xx, 429); the
///   session is kept.
/// - [`is_session_ended`](Self::is_session_ended): the grant is dead; the user must sign in
///   again (set new tokens).
/// - anything else: a configuration or protocol problem; the message says what to fix.
///
/// The error it stems from, when there is one, is its [`source`](std::error::Error::source):
/// the transport's error ([`TransportError`], then reqwest's or your service's), a store's
/// (an I/O error of the file store), a credential callback's own error type. Walk the chain
/// to reach it; [`auth_error`] walks it the other way, from an adapter's error to this one.
/// `Display` already includes the cause's text, so one line says everything. A cause whose
/// text held a secret is replaced by a redacted copy of its chain (text only), which no longer
/// downcasts to the original type.
///
/// ```
/// use client_auth::{Error, SharedError};
///
/// #[derive(Debug)]
/// struct IdentityDown;
/// impl std::fmt::Display for IdentityDown {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("the identity service is down")
///     }
/// }
/// impl std::error::Error for IdentityDown {}
///
/// let error = Error::Callback(SharedError::new(IdentityDown));
/// let source = std::error::Error::source(&error).expect("the callback's error");
/// assert!(source.downcast_ref::<IdentityDown>().is_some());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The provider has no credential for this request (a customer-token callback returned
    /// `None`). The request was not sent.
    #[error("no credentials available for this request; it was not sent")]
    NoCredentials,
    /// There is no session: set new tokens (sign in) before sending requests.
    #[error("no session ({reason:?}): set new tokens before sending requests")]
    NoSession {
        /// Why there is no session.
        reason: SessionReason,
    },
    /// The authorization server ended the session (`invalid_grant`, `unauthorized_client`, or no
    /// refresh token left). The store was cleared.
    #[error("the session ended: {0}")]
    SessionEnded(SessionEnd),
    /// The token endpoint rejected the request for a reason that a configuration change fixes
    /// (`invalid_client`, `invalid_scope`, `unsupported_grant_type`, an unknown 4xx code).
    #[error("the token endpoint rejected the request: {0}; check the client configuration")]
    Rejected(OAuthError),
    /// The token endpoint is temporarily unavailable (5xx or 429).
    #[error("the token endpoint is unavailable (HTTP {status}){}", RetryAfterSuffix(*retry_after))]
    Unavailable {
        /// The status it answered.
        status: StatusCode,
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The token endpoint could not be reached, or did not answer in time.
    #[error("could not reach the token endpoint: {0}")]
    Transport(#[source] TransportError),
    /// The token endpoint answered with a redirect. Redirects are never followed, so the
    /// refresh token and client secret are never re-sent elsewhere.
    #[error(
        "the token endpoint answered with a redirect (HTTP {status}); redirects are never followed: configure the final token URL"
    )]
    Redirect {
        /// The 3xx status.
        status: StatusCode,
    },
    /// The token endpoint's answer is not a valid token response.
    #[error("invalid token response: {0}")]
    InvalidResponse(InvalidResponse),
    /// The credential cannot be used as an HTTP header value.
    #[error("the credential contains characters that are not allowed in an HTTP header value")]
    InvalidHeaderValue,
    /// The credential is empty or only whitespace (after its scheme, such as `Bearer`, is
    /// removed).
    #[error("the credential is empty or only whitespace")]
    EmptyCredential,
    /// A refresh was needed, but no tokio runtime is running on this thread.
    #[error(
        "a tokio runtime is required to refresh credentials, and none is running on this thread"
    )]
    NoRuntime,
    /// The token store failed.
    #[error("token store error: {0}")]
    Store(#[source] StoreError),
    /// A credential callback failed; its own error is the [`source`](std::error::Error::source).
    #[error("the credential callback failed: {0}")]
    Callback(#[source] SharedError),
    /// Signing a customer token failed.
    #[error("could not sign the customer token: {0}")]
    Signing(Cow<'static, str>),
    /// The refresh task stopped before it finished (its runtime shut down).
    #[error("the token refresh stopped before it finished")]
    RefreshAborted,
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(Cow<'static, str>),
}

impl Error {
    /// Whether trying again later may succeed without any change (network, timeout, 5xx,
    /// 429, a refresh cut short).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Transport(_) | Error::RefreshAborted => true,
            Error::Store(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether the session is over and new tokens are needed.
    pub fn is_session_ended(&self) -> bool {
        matches!(self, Error::SessionEnded(_) | Error::NoSession { .. })
    }

    /// The OAuth 2.0 error the token endpoint answered with, if any.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            Error::Rejected(e) => Some(e),
            Error::SessionEnded(SessionEnd::Server(e)) => Some(e),
            _ => None,
        }
    }

    /// The `Retry-After` the token endpoint asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The [`Error`] in `error`'s chain: `error` itself or one of its
/// [`source`](std::error::Error::source)s.
///
/// The adapters re-export it for their own error types (`client_auth_tower::auth_error` over
/// the service's `BoxError`; `client_auth_reqwest::auth_error` also looks inside
/// reqwest-middleware's and reqwest-retry's wrappers).
///
/// ```
/// use client_auth::{Error, auth_error};
///
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::NoCredentials);
/// assert!(matches!(auth_error(&*boxed), Some(Error::NoCredentials)));
/// let other = std::io::Error::other("not ours");
/// assert!(auth_error(&other).is_none());
/// ```
pub fn auth_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<Error>())
}

/// An error from outside this crate (a callback's, a store's I/O error), shared by every
/// caller that gets the same outcome ([`Error`] is `Clone`).
///
/// It dereferences to the error itself. It is deliberately not an `Error` of its own: the
/// [`Error`] holding it returns the inner error from `source()`, so that
/// `source().downcast_ref::<YourError>()` works (an `Arc<dyn Error>` there would hide the
/// inner error's type).
#[derive(Clone)]
pub struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl SharedError {
    /// Wraps `error`.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(Arc::from(error.into()))
    }

    /// Replaces the error by a redacted copy of its chain when its text holds one of
    /// `secrets` or a URL with userinfo or a query.
    fn redact(&mut self, secrets: &[&str]) {
        if let Some(scrubbed) = redact::Scrubbed::of(&*self.0, secrets) {
            self.0 = Arc::new(scrubbed);
        }
    }
}

impl From<Arc<dyn std::error::Error + Send + Sync>> for SharedError {
    fn from(error: Arc<dyn std::error::Error + Send + Sync>) -> Self {
        Self(error)
    }
}

impl Deref for SharedError {
    type Target = dyn std::error::Error + Send + Sync;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

struct RetryAfterSuffix(Option<Duration>);

impl fmt::Display for RetryAfterSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, ", retry after {} s", d.as_secs()),
            None => Ok(()),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The authorization server answered with a session-ending OAuth error
    /// (`invalid_grant`, `unauthorized_client`).
    Server(OAuthError),
    /// There is no refresh token to refresh with.
    NoRefreshToken,
}

impl SessionEnd {
    /// The OAuth error code (`invalid_grant`, ...) or `no_refresh_token`.
    pub fn code(&self) -> &str {
        match self {
            SessionEnd::Server(e) => e.code(),
            SessionEnd::NoRefreshToken => "no_refresh_token",
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Server(e) => e.fmt(f),
            SessionEnd::NoRefreshToken => f.write_str("no refresh token is available"),
        }
    }
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2): the code and description the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    status: StatusCode,
    code: String,
    description: Option<String>,
}

/// Longest error code or description kept from a server answer.
const MAX_ERROR_TEXT: usize = 512;

impl OAuthError {
    /// An error as the server answered it. Over-long texts are cut and control characters
    /// dropped, so a hostile server cannot flood logs.
    pub fn new(status: StatusCode, code: &str, description: Option<&str>) -> Self {
        Self {
            status,
            code: clean_text(code),
            description: description.map(clean_text),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error` code, e.g. `invalid_grant`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `error_description`, if the server sent one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

impl OAuthError {
    /// Replaces every occurrence of a known secret (the refresh token sent, the client secret)
    /// in the server's text, and redacts the URLs in it: a server may echo what it was sent.
    pub(crate) fn redact(&mut self, secrets: &[&str]) {
        for text in std::iter::once(&mut self.code).chain(self.description.as_mut()) {
            redact_string(text, secrets);
        }
    }
}

impl Error {
    /// This error with known secrets removed from any text it carries that did not come from
    /// this crate: the server's `error` and `error_description`, a transport's or store's
    /// message, a callback's error. URLs in that text lose their userinfo and query values.
    pub(crate) fn redacted(mut self, secrets: &[&str]) -> Self {
        match &mut self {
            Error::Rejected(e) | Error::SessionEnded(SessionEnd::Server(e)) => e.redact(secrets),
            Error::Transport(e) => e.redact(secrets),
            Error::Store(e) => {
                redact_cow(&mut e.message, secrets);
                if let Some(source) = &mut e.source {
                    source.redact(secrets);
                }
            }
            Error::Config(text) | Error::Signing(text) => redact_cow(text, secrets),
            Error::Callback(e) => e.redact(secrets),
            Error::NoCredentials
            | Error::NoSession { .. }
            | Error::SessionEnded(SessionEnd::NoRefreshToken)
            | Error::Unavailable { .. }
            | Error::Redirect { .. }
            | Error::InvalidResponse(_)
            | Error::InvalidHeaderValue
            | Error::EmptyCredential
            | Error::NoRuntime
            | Error::RefreshAborted => {}
        }
        self
    }
}

fn redact_string(text: &mut String, secrets: &[&str]) {
    if let Cow::Owned(clean) = redact::text(text, secrets) {
        *text = clean;
    }
}

fn redact_cow(text: &mut Cow<'static, str>, secrets: &[&str]) {
    if let Cow::Owned(clean) = redact::text(text, secrets) {
        *text = Cow::Owned(clean);
    }
}

fn clean_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (HTTP {})", self.code, self.status.as_u16())?;
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// What was wrong with a token-endpoint answer. Carries no part of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidResponse {
    /// The body is not JSON, or not a JSON object.
    #[error("the body is not a JSON object")]
    NotJson,
    /// `access_token` is missing, empty or only whitespace.
    #[error("`access_token` is missing or empty")]
    MissingAccessToken,
    /// `token_type` is missing.
    #[error("`token_type` is missing")]
    MissingTokenType,
    /// `token_type` is not `Bearer`.
    #[error("`token_type` is not `Bearer`")]
    UnsupportedTokenType,
    /// `expires_in` is not a non-negative number of seconds in range.
    #[error("`expires_in` is not a usable number of seconds")]
    InvalidExpiresIn,
    /// The body is larger than the limit.
    #[error("the body is larger than the limit")]
    TooLarge,
    /// An error status without a usable OAuth error body.
    #[error("HTTP {0} without an OAuth error body")]
    UnexpectedStatus(StatusCode),
}

/// Classes of transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection could not be made.
    Connect,
    /// No answer in time.
    Timeout,
    /// Anything else on the way (reset connection, broken body, ...).
    Other,
}

/// A failure to exchange a request with the token endpoint.
#[derive(Debug, Clone)]
pub struct TransportError {
    kind: TransportErrorKind,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TransportError {
    /// A transport error of this kind caused by `source`.
    pub fn new(
        kind: TransportErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: Some(Arc::from(source.into())),
        }
    }

    /// A timeout.
    pub fn timeout() -> Self {
        Self {
            kind: TransportErrorKind::Timeout,
            source: None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// Replaces the source by a redacted copy of its chain when its text holds one of
    /// `secrets` or a URL with userinfo or a query.
    fn redact(&mut self, secrets: &[&str]) {
        if let Some(source) = &self.source
            && let Some(scrubbed) = redact::Scrubbed::of(&**source, secrets)
        {
            self.source = Some(Arc::new(scrubbed));
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TransportErrorKind::Connect => "connection failed",
            TransportErrorKind::Timeout => "timed out",
            TransportErrorKind::Other => "request failed",
        };
        match &self.source {
            Some(source) => write!(f, "{what}: {source}"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A [`TokenStore`](crate::TokenStore) failure, with the error it stems from, if any, as its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: Cow<'static, str>,
    transient: bool,
    source: Option<SharedError>,
}

impl StoreError {
    /// A failure that may go away by itself (a network store that is down).
    pub fn transient(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            transient: true,
            source: None,
        }
    }

    /// A failure that needs attention (corrupt data, permissions).
    pub fn permanent(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            transient: false,
            source: None,
        }
    }

    /// The same failure, caused by `source` (an I/O error, the store client's error): callers
    /// reach it through [`source`](std::error::Error::source).
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(SharedError::new(source));
        self
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_distinct() {
        let grant = Error::SessionEnded(SessionEnd::Server(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
        )));
        assert!(grant.is_session_ended() && !grant.is_transient());
        let unavailable = Error::Unavailable {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert!(unavailable.is_transient() && !unavailable.is_session_ended());
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(7)));
        assert!(unavailable.to_string().contains("retry after 7 s"));
        let client = Error::Rejected(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("bad secret"),
        ));
        assert!(!client.is_transient() && !client.is_session_ended());
        assert_eq!(
            client.oauth_error().map(OAuthError::code),
            Some("invalid_client")
        );
    }

    #[derive(Debug)]
    struct Mine;

    impl fmt::Display for Mine {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("mine")
        }
    }

    impl std::error::Error for Mine {}

    fn chain<'a>(
        error: &'a (dyn std::error::Error + 'static),
    ) -> Vec<&'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(error), |e| e.source()).collect()
    }

    #[test]
    fn the_source_chain_reaches_the_callback_transport_and_store_errors() {
        let callback = Error::Callback(SharedError::new(Mine));
        let sources = chain(&callback);
        assert_eq!(
            sources.len(),
            2,
            "the callback's error is the source itself"
        );
        assert!(sources[1].downcast_ref::<Mine>().is_some());

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let transport = Error::Transport(TransportError::new(TransportErrorKind::Other, io));
        let found = chain(&transport)
            .into_iter()
            .find_map(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            found.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset)
        );

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let store = Error::Store(StoreError::permanent("could not read").with_source(denied));
        let found = chain(&store)
            .into_iter()
            .find_map(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            found.map(std::io::Error::kind),
            Some(std::io::ErrorKind::PermissionDenied)
        );
        assert!(std::error::Error::source(&Error::NoCredentials).is_none());
    }

    #[test]
    fn auth_error_finds_the_error_anywhere_in_a_chain() {
        #[derive(Debug)]
        struct Wrapper(Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapper")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Wrapper(Error::EmptyCredential));
        assert!(matches!(auth_error(&*boxed), Some(Error::EmptyCredential)));
        assert!(auth_error(&Mine).is_none());
    }

    #[test]
    fn a_callback_error_holding_a_secret_is_replaced_by_a_redacted_chain() {
        let leaky = Error::Callback(SharedError::new(std::io::Error::other("token s3cret")));
        let redacted = leaky.redacted(&["s3cret"]);
        assert_eq!(
            redacted.to_string(),
            "the credential callback failed: token [redacted]"
        );
        let source = std::error::Error::source(&redacted).unwrap();
        assert!(source.downcast_ref::<std::io::Error>().is_none());
        let clean = Error::Callback(SharedError::new(Mine)).redacted(&["s3cret"]);
        assert!(std::error::Error::source(&clean).unwrap().is::<Mine>());
    }

    #[test]
    fn server_error_text_is_cleaned_and_capped() {
        let long = "x".repeat(10_000);
        let e = OAuthError::new(StatusCode::BAD_REQUEST, "bad\ncode", Some(&long));
        assert_eq!(e.code(), "badcode");
        assert_eq!(e.description().map(str::len), Some(MAX_ERROR_TEXT));
    }
}
