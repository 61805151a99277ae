//! A small, total parser for `WWW-Authenticate` challenges (RFC 9110 §11.6.1, RFC 6750 §3).
//!
//! It never panics and never allocates for the common questions ("is this an
//! `insufficient_scope` Bearer challenge?").

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// One challenge: its scheme and `name=value` parameters, as they appear (quoted values keep
/// their escapes; compare with [`Challenge::param`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// The auth scheme, e.g. `Bearer`.
    pub scheme: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

impl<'a> Challenge<'a> {
    /// The value of parameter `name` (case-insensitive), without surrounding quotes.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// All parameters in order.
    pub fn params(&self) -> &[(&'a str, &'a str)] {
        &self.params
    }
}

/// Parses one header value into its challenges. Malformed parts are skipped.
pub fn parse_challenges(value: &str) -> Vec<Challenge<'_>> {
    let b = value.as_bytes();
    let mut out: Vec<Challenge<'_>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        i = skip(b, i, |c| c == b',' || c.is_ascii_whitespace());
        let start = i;
        i = skip(b, i, is_tchar);
        if i == start {
            // Not a token: step over one character (and any UTF-8 continuation bytes).
            i += 1;
            i = skip(b, i, |c| !c.is_ascii());
            continue;
        }
        let word = &value[start..i];
        let after_ws = skip(b, i, |c| c.is_ascii_whitespace());
        let single_eq = b.get(after_ws) == Some(&b'=') && b.get(after_ws + 1) != Some(&b'=');
        if single_eq && !out.is_empty() {
            let (val, next) =
                param_value(value, skip(b, after_ws + 1, |c| c.is_ascii_whitespace()));
            if let Some(last) = out.last_mut() {
                last.params.push((word, val));
            }
            i = next;
            continue;
        }
        out.push(Challenge {
            scheme: word,
            params: Vec::new(),
        });
        i = skip_token68(b, after_ws);
    }
    out
}

/// Skips a token68 credential (`abc==`) that directly follows a scheme; leaves `name=value`.
fn skip_token68(b: &[u8], start: usize) -> usize {
    let end = skip(b, start, |c| is_tchar(c) || c == b'/');
    if end == start {
        return start;
    }
    let pad_end = skip(b, end, |c| c == b'=');
    let rest = skip(b, pad_end, |c| c.is_ascii_whitespace());
    let at_separator = rest >= b.len() || b[rest] == b',';
    let is_param = pad_end == end + 1 && !at_separator;
    if at_separator && !is_param {
        rest
    } else {
        start
    }
}

/// A parameter value at `j`: a quoted string (escapes kept) or a token. Returns it and the
/// index after it.
fn param_value(value: &str, j: usize) -> (&str, usize) {
    let b = value.as_bytes();
    if b.get(j) == Some(&b'"') {
        let mut k = j + 1;
        while k < b.len() && b[k] != b'"' {
            k += if b[k] == b'\\' { 2 } else { 1 };
        }
        let end = k.min(b.len());
        // Stop on a char boundary even when an escape hides a multi-byte character.
        let end = (j + 1..=end)
            .rev()
            .find(|&e| value.is_char_boundary(e))
            .unwrap_or(j + 1);
        (&value[j + 1..end], (k + 1).min(b.len()))
    } else {
        let k = skip(b, j, is_tchar);
        (&value[j..k], k)
    }
}

fn skip(b: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && pred(b[i]) {
        i += 1;
    }
    i
}

/// An RFC 9110 `tchar`: what tokens (auth schemes, parameter names) are made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The `error` parameter of the first `Bearer` challenge in `headers`, if any.
pub fn bearer_error(headers: &HeaderMap) -> Option<String> {
    scheme_error(headers, "bearer")
}

/// The `error` parameter of the first `scheme` challenge (any case) that has one.
pub(crate) fn scheme_error(headers: &HeaderMap, scheme: &str) -> Option<String> {
    first_challenge(headers, |c| {
        c.scheme
            .eq_ignore_ascii_case(scheme)
            .then(|| c.param("error"))
            .flatten()
    })
}

/// What `pick` finds in the first challenge, over every `WWW-Authenticate` value, where it
/// finds something.
fn first_challenge(
    headers: &HeaderMap,
    pick: impl for<'a> Fn(&Challenge<'a>) -> Option<&'a str>,
) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            parse_challenges(v)
                .iter()
                .find_map(&pick)
                .map(str::to_owned)
        })
}

/// The `claims` of a `Bearer error="insufficient_claims"` challenge (a claims challenge, as
/// continuous access evaluation sends): the JSON to send as the `claims` parameter of the next
/// token request. The parameter is base64 (with or without padding) of that JSON; a value that
/// is JSON already is taken as it is. `None` for any other answer.
pub(crate) fn claims_challenge(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let raw = first_challenge(headers, |c| {
        // RFC 9449 §7.1: a DPoP-bound token's challenges use the DPoP scheme, with the same
        // error codes.
        ((c.scheme.eq_ignore_ascii_case("bearer") || c.scheme.eq_ignore_ascii_case("dpop"))
            && c.param("error") == Some("insufficient_claims"))
        .then(|| c.param("claims"))
        .flatten()
    })?;
    let json =
        |text: &str| serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object());
    if json(&raw) {
        return Some(raw);
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(raw.as_bytes()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| json(text))
}

/// Whether a refreshed credential could turn this answer into a success: a 401 that is not an
/// `insufficient_scope` challenge. 403 and every other status: no.
pub fn refresh_may_help(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED && !is_insufficient_scope(headers)
}

/// Whether the response says the token lacks scope (RFC 6750 `insufficient_scope`): refreshing
/// would not help, so no retry.
pub fn is_insufficient_scope(headers: &HeaderMap) -> bool {
    bearer_error(headers)
        .or_else(|| scheme_error(headers, "dpop"))
        .is_some_and(|e| e == "insufficient_scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claims_challenge_gives_the_decoded_claims_json() {
        let mut headers = HeaderMap::new();
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
        headers.insert(
            WWW_AUTHENTICATE,
            format!(r#"Bearer realm="", error="insufficient_claims", claims="{encoded}""#)
                .parse()
                .unwrap(),
        );
        assert_eq!(claims_challenge(&headers).as_deref(), Some(claims));
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="insufficient_claims", claims="not-base64-json""#
                .parse()
                .unwrap(),
        );
        assert_eq!(claims_challenge(&headers), None);
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token""#.parse().unwrap(),
        );
        assert_eq!(claims_challenge(&headers), None);
    }

    #[test]
    fn parses_bearer_error_and_realm() {
        let c = parse_challenges(
            r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].param("realm"), Some("example"));
        assert_eq!(c[0].param("ERROR"), Some("invalid_token"));
        assert_eq!(
            c[0].param("error_description"),
            Some("The access token expired")
        );
    }

    #[test]
    fn parses_several_challenges_and_token68() {
        let c = parse_challenges(
            r#"Basic realm="x", Bearer error=insufficient_scope, Negotiate abc=="#,
        );
        let schemes: Vec<_> = c.iter().map(|c| c.scheme).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "Negotiate"]);
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn bare_scheme_and_garbage_do_not_panic() {
        assert_eq!(parse_challenges("Bearer")[0].scheme, "Bearer");
        for s in [
            "",
            "=",
            "\"",
            "Bearer error=\"",
            "é=é, ,,",
            "Bearer ==,=\"\\",
        ] {
            let _ = parse_challenges(s);
        }
    }

    #[test]
    fn insufficient_scope_is_recognised_only_on_bearer() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer error="insufficient_scope", scope="admin""#),
        );
        assert!(is_insufficient_scope(&h));
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        assert!(!is_insufficient_scope(&h));
    }
}
