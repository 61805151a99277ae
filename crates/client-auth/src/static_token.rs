//! A fixed credential: an API key, a bearer token or basic credentials.
//!
//! ```
//! use client_auth::{AuthorizationProvider, StaticToken};
//!
//! // Bloomreach style: `Authorization: Token API_KEY`.
//! let key = StaticToken::api_key("my-api-key")?;
//! assert!(!key.can_recover());
//!
//! // Invalid header characters are an error, never a panic.
//! assert!(StaticToken::bearer("line\nbreak").is_err());
//! # Ok::<(), client_auth::Error>(())
//! ```

use std::fmt;

use base64::Engine as _;
use http::HeaderValue;

use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, Generation, RequestView,
};

/// A provider that always sends the same `Authorization` value and never retries a 401.
///
/// It costs what tower-http's `AddAuthorization` costs: one header-value clone per request.
#[derive(Clone)]
pub struct StaticToken {
    credential: Credential,
}

impl StaticToken {
    /// `Authorization: Token KEY`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderValue`] when the key has characters a header cannot carry.
    pub fn api_key(key: &str) -> Result<Self, Error> {
        Self::with_scheme("Token", key)
    }

    /// `Authorization: Bearer TOKEN`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderValue`] when the token has characters a header cannot carry.
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
        Self::with_scheme("Basic", &encoded)
    }

    /// `Authorization: SCHEME VALUE` for another scheme.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderValue`] when the value has characters a header cannot carry, or
    /// is empty.
    pub fn with_scheme(scheme: &str, value: &str) -> Result<Self, Error> {
        if value.trim().is_empty() {
            return Err(Error::InvalidHeaderValue);
        }
        let mut raw =
            zeroize::Zeroizing::new(String::with_capacity(scheme.len() + value.len() + 1));
        raw.push_str(scheme);
        raw.push(' ');
        raw.push_str(value);
        Self::from_header_value(HeaderValue::from_str(&raw).map_err(|_| Error::InvalidHeaderValue)?)
    }

    /// Exactly this header value. It is marked sensitive.
    ///
    /// # Errors
    ///
    /// Never today; the `Result` keeps the constructors uniform.
    pub fn from_header_value(value: HeaderValue) -> Result<Self, Error> {
        Ok(Self {
            credential: Credential::new(value, Generation::new(0)),
        })
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken").finish_non_exhaustive()
    }
}

impl AuthorizationProvider for StaticToken {
    fn authorize(&self, _request: &RequestView<'_>) -> AuthorizeFuture {
        AuthorizeFuture::ready(Ok(self.credential.clone()))
    }

    fn can_recover(&self) -> bool {
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
        assert!(!format!("{p:?}").contains("MARKER"));
        assert!(!format!("{:?}", authorize(&p)).contains("MARKER"));
    }
}
