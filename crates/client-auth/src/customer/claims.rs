//! What the provider reads in a token without trusting it: the `Bearer` scheme and the JWT
//! `exp` claim. Nothing here verifies a signature or needs a crypto backend.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::HeaderValue;

use crate::error::Error;
use crate::secret::CustomerJwt;

/// `token` without surrounding whitespace and a leading `Bearer` and whitespace (any case).
pub(super) fn strip_bearer(token: &str) -> &str {
    crate::auth_header::strip_scheme(token, "Bearer")
}

/// The `Authorization` value for a token a callback returned: `Bearer TOKEN`, the scheme not
/// repeated when the token already starts with `Bearer` and whitespace (any case).
///
/// # Errors
///
/// [`Error::EmptyCredential`] when there is no token after the scheme,
/// [`Error::InvalidHeaderValue`] when it holds characters a header cannot carry. The error never
/// contains the token.
pub(super) fn authorization_value(token: &str) -> Result<HeaderValue, Error> {
    crate::auth_header::normalised("Bearer", token)
}

/// The token inside an `Authorization` value, without its `Bearer ` prefix.
pub(super) fn token_of(value: &HeaderValue) -> Option<CustomerJwt> {
    value
        .to_str()
        .ok()
        .map(|v| CustomerJwt::new(strip_bearer(v).trim_start()))
}

/// The `exp` claim of a compact JWS, decoded **without** verifying anything. `None` when the
/// token is not a JWT or has no numeric `exp`.
pub(crate) fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if exp <= 0.0 || !exp.is_finite() {
        return Some(SystemTime::UNIX_EPOCH);
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::tests::jwt_with_exp;

    #[test]
    fn decodes_exp_without_verification() {
        let token = jwt_with_exp(Some(1_700_000_000));
        assert_eq!(
            jwt_expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_expiry(&jwt_with_exp(None)), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("a.b.c.d.e"), None);
    }

    #[test]
    fn strips_the_bearer_scheme_in_any_case_and_only_once() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bEaReR abc"), "abc");
        assert_eq!(strip_bearer("Bearer Bearer abc"), "Bearer abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bearerabc"), "Bearerabc");
        // Not a char boundary at 7: no panic, nothing stripped.
        assert_eq!(strip_bearer("Beareré x"), "Beareré x");
    }

    #[test]
    fn the_token_inside_an_authorization_value_has_no_scheme() {
        let value = HeaderValue::from_static("Bearer abc.def.ghi");
        let token = token_of(&value).unwrap();
        assert_eq!(token.expose_secret(), "abc.def.ghi");
    }
}
