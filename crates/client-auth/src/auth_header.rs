//! `Authorization` values: the scheme prefix normalised, empty credentials refused, every value
//! marked sensitive.

use http::HeaderValue;
use zeroize::Zeroizing;

use crate::error::Error;

/// RFC 9110 whitespace inside a field value: SP and HTAB.
fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `value` without surrounding whitespace and, once, without a leading `scheme` (any case) and
/// the whitespace after it. The scheme alone leaves nothing.
pub(crate) fn strip_scheme<'a>(value: &'a str, scheme: &str) -> &'a str {
    let value = value.trim_matches(is_ws);
    match value.get(..scheme.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(scheme) => {
            let rest = &value[scheme.len()..];
            if rest.is_empty() {
                rest
            } else if rest.starts_with(is_ws) {
                rest.trim_start_matches(is_ws)
            } else {
                value
            }
        }
        _ => value,
    }
}

/// `SCHEME CREDENTIALS`, marked sensitive.
///
/// # Errors
///
/// [`Error::EmptyCredential`] when `credentials` is empty or only whitespace,
/// [`Error::InvalidHeaderValue`] when the value has characters a header cannot carry.
pub(crate) fn header_value(scheme: &str, credentials: &str) -> Result<HeaderValue, Error> {
    if credentials.trim().is_empty() {
        return Err(Error::EmptyCredential);
    }
    let mut raw = Zeroizing::new(String::with_capacity(scheme.len() + credentials.len() + 1));
    raw.push_str(scheme);
    raw.push(' ');
    raw.push_str(credentials);
    let mut value = HeaderValue::from_str(&raw).map_err(|_| Error::InvalidHeaderValue)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `SCHEME CREDENTIALS` for credentials a user handed in, which may already carry the scheme
/// (`Bearer abc`, ` bearer\tabc`): it is not repeated.
///
/// # Errors
///
/// As [`header_value`], after the scheme prefix is removed.
pub(crate) fn normalised(scheme: &str, credentials: &str) -> Result<HeaderValue, Error> {
    header_value(scheme, strip_scheme(credentials, scheme))
}

/// Whether `scheme` is an RFC 9110 token (the only thing an auth scheme may be).
pub(crate) fn is_scheme(scheme: &str) -> bool {
    !scheme.is_empty() && scheme.bytes().all(crate::www_authenticate::is_tchar)
}

/// Schemes that, alone, mean "no credentials" (`Authorization: Bearer`).
const SCHEMES: [&str; 6] = ["Basic", "Bearer", "Digest", "DPoP", "Negotiate", "Token"];

/// Whether an `Authorization` value carries no credentials: empty, only whitespace, or a
/// well-known auth scheme alone (`Bearer`, `Bearer `), which is what a client configured with
/// an empty key sends. Any other single word (`abc123`, `sk-live-123 `) may be a key sent
/// without a scheme: it counts, and the caller's value is kept.
pub(crate) fn carries_no_credentials(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let word = text.trim_matches(is_ws);
    // A known scheme alone: an unknown word may be a caller's own scheme-less key.
    word.is_empty() || SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_prefix_is_removed_once_in_any_case_after_any_whitespace() {
        for (given, want) in [
            ("abc", "abc"),
            ("Bearer abc", "abc"),
            (" Bearer abc", "abc"),
            ("Bearer\tabc", "abc"),
            ("bEaReR \t abc \t", "abc"),
            ("Bearer Bearer abc", "Bearer abc"),
            ("Bearerabc", "Bearerabc"),
            ("Bearer", ""),
            ("Bearer \t", ""),
            (" \t", ""),
            ("Beareré x", "Beareré x"),
            ("Bea", "Bea"),
        ] {
            assert_eq!(strip_scheme(given, "Bearer"), want, "{given:?}");
        }
    }

    #[test]
    fn empty_credentials_are_refused_and_values_are_sensitive() {
        for blank in ["", " ", "\t \t", "Bearer", " bearer\t", "\u{a0}"] {
            assert!(
                matches!(normalised("Bearer", blank), Err(Error::EmptyCredential)),
                "{blank:?}"
            );
        }
        let value = normalised("Bearer", "\tBEARER\tabc ").unwrap();
        assert_eq!(value, "Bearer abc");
        assert!(value.is_sensitive());
        assert!(matches!(
            header_value("Bearer", "a\nb"),
            Err(Error::InvalidHeaderValue)
        ));
    }

    #[test]
    fn empty_and_scheme_only_values_carry_no_credentials() {
        for blank in [
            "", " ", "\t", "Bearer", "Bearer ", "bearer\t", " BASIC", "Token",
        ] {
            let value = HeaderValue::from_str(blank).unwrap();
            assert!(carries_no_credentials(&value), "{blank:?}");
        }
        // An unknown word may be a caller's own scheme-less key, trailing space or not.
        for set in [
            "Bearer abc",
            "abc123",
            " abc123",
            "Token k",
            "Bearer  x ",
            "Key ",
            "sk-live-123 ",
        ] {
            let value = HeaderValue::from_str(set).unwrap();
            assert!(!carries_no_credentials(&value), "{set:?}");
        }
        let opaque = HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert!(!carries_no_credentials(&opaque));
    }

    #[test]
    fn schemes_are_tokens() {
        assert!(is_scheme("Bearer") && is_scheme("DPoP") && is_scheme("X-Key~1"));
        assert!(!is_scheme("") && !is_scheme("Bea rer") && !is_scheme("Bearer\t"));
        assert!(!is_scheme("Bear:er") && !is_scheme("Beäer"));
    }
}
