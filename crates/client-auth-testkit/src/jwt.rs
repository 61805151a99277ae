//! Verification of HS256 customer JWTs, with `hmac` + `sha2` directly.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

fn decode_part(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

/// Why a JWT was rejected (only used to log).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JwtError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
}

/// Verifies `token` against `keys` (kid → secret); `now_unix` is the server clock's UNIX time
/// in seconds. Returns the `sub` claim (JSON `null` when absent).
pub(crate) fn verify(
    token: &str,
    keys: &HashMap<String, Vec<u8>>,
    now_unix: f64,
) -> Result<Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = decode_part(header_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Malformed);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(JwtError::UnknownKey)?;
    let key = keys.get(kid).ok_or(JwtError::UnknownKey)?;
    let signature = decode_part(sig_b64).ok_or(JwtError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| JwtError::UnknownKey)?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::BadSignature)?;
    let claims: Value = decode_part(payload_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if !claims.is_object() {
        return Err(JwtError::Malformed);
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().ok_or(JwtError::Malformed)?;
        if now_unix >= exp {
            return Err(JwtError::Expired);
        }
    }
    Ok(claims.get("sub").cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(kid: &str, secret: &[u8], claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD
            .encode(serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{sig}")
    }

    fn keys() -> HashMap<String, Vec<u8>> {
        HashMap::from([("k1".to_owned(), b"secret".to_vec())])
    }

    #[test]
    fn valid_token_yields_its_subject() {
        let token = sign("k1", b"secret", &serde_json::json!({"sub": {"id": 7}}));
        assert_eq!(
            verify(&token, &keys(), 0.0),
            Ok(serde_json::json!({"id": 7}))
        );
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = sign("k1", b"other", &serde_json::json!({"sub": "x"}));
        assert_eq!(verify(&token, &keys(), 0.0), Err(JwtError::BadSignature));
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let token = sign("k2", b"secret", &serde_json::json!({"sub": "x"}));
        assert_eq!(verify(&token, &keys(), 0.0), Err(JwtError::UnknownKey));
    }

    #[test]
    fn exp_is_checked_only_when_present() {
        let token = sign(
            "k1",
            b"secret",
            &serde_json::json!({"sub": "x", "exp": 100}),
        );
        assert!(verify(&token, &keys(), 99.0).is_ok());
        assert_eq!(verify(&token, &keys(), 100.0), Err(JwtError::Expired));
        let token = sign("k1", b"secret", &serde_json::json!({"sub": "x"}));
        assert!(verify(&token, &keys(), 1e12).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(verify("a.b", &keys(), 0.0), Err(JwtError::Malformed));
        assert_eq!(verify("a.b.c.d", &keys(), 0.0), Err(JwtError::Malformed));
    }
}
