//! Token-endpoint answers (RFC 6749 §5.1 and §5.2), parsed and classified.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header::RETRY_AFTER};
use serde_json::Value;

use crate::error::{Error, InvalidResponse, OAuthError, SessionEnd};
use crate::secret::{AccessToken, RefreshToken};

/// The longest lifetime taken from `expires_in`; larger values are clamped to it.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A successful token answer.
#[derive(Debug)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: AccessToken,
    pub(crate) refresh_token: Option<RefreshToken>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    /// `token_type: DPoP`: the token is bound to the provider's DPoP key.
    pub(crate) dpop: bool,
}

/// Which grant was asked for: it decides whether `invalid_grant` ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantKind {
    RefreshToken,
    ClientCredentials,
    /// RFC 7523 §2.1.
    JwtBearer,
    /// RFC 8693.
    TokenExchange,
}

impl GrantKind {
    /// The grant's name, for spans and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::JwtBearer => "jwt_bearer",
            GrantKind::TokenExchange => "token_exchange",
        }
    }
}

/// Turns a token-endpoint answer into tokens or a classified error. No part of the body ever
/// reaches an error.
pub(crate) fn parse_token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    grant: GrantKind,
    unix_now: SystemTime,
    accept_dpop: bool,
) -> Result<TokenResponse, Error> {
    if status.is_success() {
        return parse_success(body, accept_dpop);
    }
    if status.is_redirection() {
        return Err(Error::Redirect { status });
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(Error::Unavailable {
            status,
            retry_after: retry_after(headers, unix_now),
        });
    }
    let Some(error) = parse_error(status, body) else {
        return Err(Error::InvalidResponse(InvalidResponse::UnexpectedStatus(
            status,
        )));
    };
    let session_ending = grant == GrantKind::RefreshToken
        && matches!(error.code(), "invalid_grant" | "unauthorized_client");
    if session_ending {
        Err(Error::SessionEnded(SessionEnd::Server(error)))
    } else {
        Err(Error::Rejected(error))
    }
}

/// The `refresh_token` of a successful answer, read on its own: an answer whose other fields are
/// unusable may still have rotated the refresh token, and losing it would end the session at the
/// next refresh on a server with reuse detection.
pub(crate) fn rotated_refresh_token(body: &Bytes) -> Option<RefreshToken> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    match map.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(RefreshToken::new(s)),
        _ => None,
    }
}

/// Whether an answer is the token endpoint's `400 use_dpop_nonce` (RFC 9449 §8): retry once
/// with the nonce from its `DPoP-Nonce` header.
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
pub(crate) fn is_use_dpop_nonce(status: StatusCode, body: &Bytes) -> bool {
    status == StatusCode::BAD_REQUEST
        && parse_error(status, body).is_some_and(|e| e.code() == "use_dpop_nonce")
}

fn parse_success(body: &Bytes, accept_dpop: bool) -> Result<TokenResponse, Error> {
    let invalid = Error::InvalidResponse;
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid(InvalidResponse::NotJson));
    };
    let access_token = match map.remove("access_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => AccessToken::new(s),
        _ => return Err(invalid(InvalidResponse::MissingAccessToken)),
    };
    // `DPoP` only from a provider that sent a proof: anything else would be a token this
    // client cannot present.
    let dpop = match map.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => false,
        Some(Value::String(t)) if accept_dpop && t.eq_ignore_ascii_case("dpop") => true,
        Some(_) => return Err(invalid(InvalidResponse::UnsupportedTokenType)),
        None => return Err(invalid(InvalidResponse::MissingTokenType)),
    };
    let expires_in = match map.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_expires_in(v).ok_or(invalid(InvalidResponse::InvalidExpiresIn))?),
    };
    let refresh_token = match map.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(RefreshToken::new(s)),
        _ => None,
    };
    let scope = match map.get("scope") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(TokenResponse {
        access_token,
        refresh_token,
        expires_in,
        scope,
        dpop,
    })
}

/// `expires_in` as a number or a numeric string; negative or non-finite is invalid, huge is
/// clamped to [`MAX_LIFETIME`].
pub(crate) fn parse_expires_in(value: &Value) -> Option<Duration> {
    let secs: f64 = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_LIFETIME.as_secs_f64()),
    ))
}

fn parse_error(status: StatusCode, body: &Bytes) -> Option<OAuthError> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let code = map.get("error")?.as_str()?;
    let description = map.get("error_description").and_then(Value::as_str);
    Some(OAuthError::new(status, code, description))
}

/// `Retry-After` as delta-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &HeaderMap, unix_now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(unix_now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, Error> {
        parse_token_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            &Bytes::from(body.to_owned()),
            GrantKind::RefreshToken,
            SystemTime::now(),
            false,
        )
    }

    #[test]
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    fn a_dpop_token_type_is_accepted_only_from_a_dpop_provider() {
        let body = Bytes::from_static(br#"{"access_token":"at","token_type":"DPoP"}"#);
        let answer = |accept_dpop| {
            parse_token_response(
                StatusCode::OK,
                &HeaderMap::new(),
                &body,
                GrantKind::ClientCredentials,
                SystemTime::now(),
                accept_dpop,
            )
        };
        assert!(answer(true).unwrap().dpop);
        assert!(matches!(
            answer(false),
            Err(Error::InvalidResponse(
                InvalidResponse::UnsupportedTokenType
            ))
        ));
        let nonce = Bytes::from_static(br#"{"error":"use_dpop_nonce"}"#);
        assert!(is_use_dpop_nonce(StatusCode::BAD_REQUEST, &nonce));
        assert!(!is_use_dpop_nonce(StatusCode::UNAUTHORIZED, &nonce));
    }

    #[test]
    fn parses_a_full_answer_with_numeric_string_expiry() {
        let r = parse(
            200,
            r#"{"access_token":"at","token_type":"bearer","expires_in":"3600","refresh_token":"rt","scope":"a b"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose_secret(), "at");
        assert_eq!(r.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(r.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(r.scope.as_deref(), Some("a b"));
    }

    #[test]
    fn rejects_bad_token_type_missing_token_and_bad_expiry_without_echoing_the_body() {
        let cases = [
            (
                r#"{"access_token":"SECRET-AT","token_type":"mac"}"#,
                InvalidResponse::UnsupportedTokenType,
            ),
            (
                r#"{"access_token":"SECRET-AT"}"#,
                InvalidResponse::MissingTokenType,
            ),
            (
                r#"{"token_type":"Bearer"}"#,
                InvalidResponse::MissingAccessToken,
            ),
            (
                r#"{"access_token":"SECRET-AT","token_type":"Bearer","expires_in":-5}"#,
                InvalidResponse::InvalidExpiresIn,
            ),
            (
                r#"{"access_token":"SECRET-AT","token_type":"Bearer","expires_in":"soon"}"#,
                InvalidResponse::InvalidExpiresIn,
            ),
            ("<html>SECRET-AT</html>", InvalidResponse::NotJson),
        ];
        for (body, want) in cases {
            let err = parse(200, body).unwrap_err();
            assert!(
                matches!(err, Error::InvalidResponse(r) if r == want),
                "{body}: {err:?}"
            );
            assert!(!format!("{err} {err:?}").contains("SECRET-AT"));
        }
    }

    #[test]
    fn huge_expiry_is_clamped() {
        let r = parse(
            200,
            r#"{"access_token":"a","token_type":"Bearer","expires_in":1e300}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(MAX_LIFETIME));
    }

    #[test]
    fn classifies_error_answers() {
        assert!(
            parse(400, r#"{"error":"invalid_grant"}"#)
                .unwrap_err()
                .is_session_ended()
        );
        let scope = parse(400, r#"{"error":"invalid_scope"}"#).unwrap_err();
        assert!(matches!(scope, Error::Rejected(_)) && !scope.is_transient());
        assert!(parse(503, "").unwrap_err().is_transient());
        assert!(parse(429, "").unwrap_err().is_transient());
        assert!(matches!(parse(307, ""), Err(Error::Redirect { .. })));
        assert!(matches!(
            parse(400, "nope"),
            Err(Error::InvalidResponse(InvalidResponse::UnexpectedStatus(_)))
        ));
        let cc = parse_token_response(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &Bytes::from_static(br#"{"error":"invalid_grant"}"#),
            GrantKind::ClientCredentials,
            SystemTime::now(),
            false,
        );
        assert!(matches!(cc, Err(Error::Rejected(_))));
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        h.insert(RETRY_AFTER, http::HeaderValue::from_str(&date).unwrap());
        let got = retry_after(&h, now).unwrap();
        assert!(
            got <= Duration::from_secs(120) && got >= Duration::from_secs(118),
            "{got:?}"
        );
        h.insert(RETRY_AFTER, http::HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
    }
}
