//! A fixed credential: an API key, a bearer token or basic credentials.

use std::fmt;

use base64::Engine as _;
use http::HeaderValue;

use crate::auth_header;
use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, Generation, RequestView,
};

/// A provider that always sends the same `Authorization` value and never retries a 401.
///
/// Per request it allocates what tower-http's `AddAuthorization` allocates: nothing (its header
/// value is shared, one reference count per request). Adapters keep nothing of it once a
/// request is stamped ([`AuthorizationProvider::needs_answers`] is `false`).
///
/// ```
/// use client_auth::{AuthorizationProvider, StaticToken};
///
/// // The `Token` scheme many APIs use: `Authorization: Token API_KEY`.
/// let key = StaticToken::api_key("my-api-key")?;
/// assert!(!key.can_recover());
///
/// // Invalid header characters are an error, never a panic.
/// assert!(StaticToken::bearer("line\nbreak").is_err());
/// # Ok::<(), client_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct StaticToken {
    credential: Credential,
}

impl StaticToken {
    /// `Authorization: Token KEY`.
    ///
    /// A key that already starts with `Token` and whitespace (any case) is not prefixed again;
    /// surrounding whitespace is removed.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyCredential`] when the key is empty or only whitespace,
    /// [`Error::InvalidHeaderValue`] when it has characters a header cannot carry.
    pub fn api_key(key: &str) -> Result<Self, Error> {
        Self::with_scheme("Token", key)
    }

    /// `Authorization: Bearer TOKEN`.
    ///
    /// A token that already starts with `Bearer` and whitespace (any case, spaces or tabs) is
    /// not prefixed again; surrounding whitespace is removed.
    ///
    /// ```
    /// use client_auth::{Error, StaticToken};
    ///
    /// // All three send `Authorization: Bearer abc`.
    /// let _ = StaticToken::bearer("abc")?;
    /// let _ = StaticToken::bearer(" Bearer abc")?;
    /// let _ = StaticToken::bearer("bearer\tabc")?;
    ///
    /// // No token at all is a typed error, not a header without credentials.
    /// assert!(matches!(StaticToken::bearer("   "), Err(Error::EmptyCredential)));
    /// assert!(matches!(StaticToken::bearer("Bearer "), Err(Error::EmptyCredential)));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::EmptyCredential`] when there is no token (after the scheme),
    /// [`Error::InvalidHeaderValue`] when it has characters a header cannot carry.
    pub fn bearer(token: &str) -> Result<Self, Error> {
        Self::with_scheme("Bearer", token)
    }

    /// `Authorization: Basic base64(user:password)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderValue`] when the user name contains `:` (RFC 7617 forbids it).
    pub fn basic(user: &str, password: &str) -> Result<Self, Error> {
        if user.contains(':') {
            return Err(Error::InvalidHeaderValue);
        }
        let mut raw =
            zeroize::Zeroizing::new(String::with_capacity(user.len() + password.len() + 1));
        raw.push_str(user);
        raw.push(':');
        raw.push_str(password);
        let encoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
        );
        Ok(Self::from_sensitive(auth_header::header_value(
            "Basic", &encoded,
        )?))
    }

    /// `Authorization: SCHEME VALUE` for another scheme.
    ///
    /// A value that already starts with `SCHEME` and whitespace (any case) is not prefixed
    /// again; surrounding whitespace is removed.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyCredential`] when the value is empty or only whitespace (after the
    /// scheme), [`Error::InvalidHeaderValue`] when the scheme is not an RFC 9110 token or the
    /// value has characters a header cannot carry.
    pub fn with_scheme(scheme: &str, value: &str) -> Result<Self, Error> {
        if !auth_header::is_scheme(scheme) {
            return Err(Error::InvalidHeaderValue);
        }
        Ok(Self::from_sensitive(auth_header::normalised(
            scheme, value,
        )?))
    }

    /// This header value, marked sensitive. Surrounding whitespace is removed and the
    /// whitespace between the scheme and the credentials becomes one space; a value without
    /// whitespace (a bare key) is kept as it is.
    ///
    /// ```
    /// use client_auth::{Error, StaticToken};
    /// use http::HeaderValue;
    ///
    /// let _ = StaticToken::from_header_value(HeaderValue::from_static("DPoP\tabc"))?; // `DPoP abc`
    /// assert!(matches!(
    ///     StaticToken::from_header_value(HeaderValue::from_static("")),
    ///     Err(Error::EmptyCredential)
    /// ));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::EmptyCredential`] when the value is empty or only whitespace, or is one of the
    /// schemes `Bearer`, `Basic` or `Token` with nothing after it.
    pub fn from_header_value(value: HeaderValue) -> Result<Self, Error> {
        const SCHEMES: [&[u8]; 3] = [b"Bearer", b"Basic", b"Token"];
        let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
        let bytes = value.as_bytes();
        let Some(first) = bytes.iter().position(|b| !is_ws(b)) else {
            return Err(Error::EmptyCredential);
        };
        let last = bytes.iter().rposition(|b| !is_ws(b)).unwrap_or(first);
        let trimmed = &bytes[first..=last];
        let Some(gap) = trimmed.iter().position(is_ws) else {
            if SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(trimmed)) {
                return Err(Error::EmptyCredential);
            }
            return Ok(Self::from_sensitive(if trimmed.len() == bytes.len() {
                value
            } else {
                HeaderValue::from_bytes(trimmed).map_err(|_| Error::InvalidHeaderValue)?
            }));
        };
        let (scheme, rest) = trimmed.split_at(gap);
        let credentials = &rest[rest.iter().position(|b| !is_ws(b)).unwrap_or(0)..];
        if trimmed.len() == bytes.len() && rest.len() == credentials.len() + 1 && rest[0] == b' ' {
            return Ok(Self::from_sensitive(value));
        }
        let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(trimmed.len()));
        raw.extend_from_slice(scheme);
        raw.push(b' ');
        raw.extend_from_slice(credentials);
        Ok(Self::from_sensitive(
            HeaderValue::from_bytes(&raw).map_err(|_| Error::InvalidHeaderValue)?,
        ))
    }

    fn from_sensitive(value: HeaderValue) -> Self {
        Self {
            credential: Credential::new(value, Generation::new(0)),
        }
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken").finish_non_exhaustive()
    }
}

impl AuthorizationProvider for StaticToken {
    #[inline]
    fn authorize(&self, _request: &RequestView<'_>) -> AuthorizeFuture {
        AuthorizeFuture::ready(Ok(self.credential.clone()))
    }

    #[inline]
    fn can_recover(&self) -> bool {
        false
    }

    /// Nothing to learn from an answer: adapters keep neither the provider nor the credential.
    #[inline]
    fn needs_answers(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, Method};

    fn authorize(p: &StaticToken) -> Credential {
        let ext = Extensions::new();
        let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
        let mut fut = p.authorize(&view);
        fut.take_ready().expect("ready").expect("ok")
    }

    #[test]
    fn api_key_uses_token_scheme_and_is_sensitive() {
        let cred = authorize(&StaticToken::api_key("KEY").unwrap());
        assert_eq!(cred.header_value(), "Token KEY");
        assert!(cred.header_value().is_sensitive());
    }

    #[test]
    fn basic_encodes_user_and_password() {
        let cred = authorize(&StaticToken::basic("Aladdin", "open sesame").unwrap());
        assert_eq!(cred.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn invalid_input_is_an_error_not_a_panic() {
        assert!(matches!(
            StaticToken::bearer("a\r\nb"),
            Err(Error::InvalidHeaderValue)
        ));
        assert!(matches!(
            StaticToken::api_key(""),
            Err(Error::EmptyCredential)
        ));
        assert!(matches!(
            StaticToken::with_scheme("Bea rer", "abc"),
            Err(Error::InvalidHeaderValue)
        ));
        assert!(matches!(
            StaticToken::basic("a:b", "c"),
            Err(Error::InvalidHeaderValue)
        ));
        assert!(matches!(
            StaticToken::api_key("\u{7f}"),
            Err(Error::InvalidHeaderValue)
        ));
    }

    #[test]
    fn static_token_never_recovers_and_debug_hides_the_key() {
        let p = StaticToken::api_key("MARKER-KEY-123").unwrap();
        assert!(!p.can_recover());
        assert!(!p.needs_answers());
        assert!(!format!("{p:?}").contains("MARKER"));
        assert!(!format!("{:?}", authorize(&p)).contains("MARKER"));
    }
}
