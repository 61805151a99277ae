//! What may be printed: URLs without userinfo or query values, and server or transport text
//! without the secrets a request carried.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// What replaces a removed value.
pub(crate) const REDACTED: &str = "[redacted]";

/// A URL as it may be printed or logged: userinfo, query values and the fragment are replaced
/// by `[redacted]`; scheme, host, port, path and query names are kept. Works on any string, so
/// a URL that does not parse is redacted too.
#[derive(Clone, Copy)]
pub(crate) struct Url<'a>(pub(crate) &'a str);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_url(f, self.0)
    }
}

impl fmt::Debug for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_url(f, self.0)?;
        f.write_char('"')
    }
}

fn write_url(out: &mut impl fmt::Write, url: &str) -> fmt::Result {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    out.write_str(scheme)?;
    match authority.rfind('@') {
        Some(at) => {
            out.write_str(REDACTED)?;
            out.write_str(&authority[at..])?;
        }
        None => out.write_str(authority)?,
    }
    let (tail, fragment) = match tail.split_once('#') {
        Some((tail, fragment)) => (tail, Some(fragment)),
        None => (tail, None),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    out.write_str(path)?;
    if let Some(query) = query {
        out.write_char('?')?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.write_char('&')?;
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.write_str(name)?;
                    out.write_char('=')?;
                    out.write_str(REDACTED)?;
                }
                None if pair.is_empty() => {}
                None => out.write_str(REDACTED)?,
            }
        }
    }
    if fragment.is_some() {
        out.write_char('#')?;
        out.write_str(REDACTED)?;
    }
    Ok(())
}

/// Where a URL found in free text ends: at whitespace, a quote or an angle bracket.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// `text` with every non-empty secret replaced, in any of the forms a server may echo it (as
/// sent, form-urlencoded, percent-encoded with `%20` or `+` for spaces and `/` encoded or not,
/// in any case of the hex digits), a secret cut off at the end of the text (a server's text is
/// capped) removed too, and every URL in it redacted as [`Url`] does. Borrowed when nothing had
/// to change.
pub(crate) fn text<'a>(text: &'a str, secrets: &[&str]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for form in forms(secret) {
            if let Some(replaced) = replace_ignoring_ascii_case(&out, &form) {
                out = Cow::Owned(replaced);
            }
            if let Some(cut) = cut_tail(&out, &form) {
                out = Cow::Owned(cut);
            }
        }
    }
    match urls(&out) {
        Some(scrubbed) => Cow::Owned(scrubbed),
        None => out,
    }
}

/// The spellings of `secret` a server may echo.
fn forms(secret: &str) -> Vec<String> {
    let encode = |space: &str, keep_slash: bool| {
        let mut out = String::with_capacity(secret.len() * 3);
        for b in secret.bytes() {
            match b {
                b' ' => out.push_str(space),
                b'/' if keep_slash => out.push('/'),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(b));
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    let mut forms = vec![
        secret.to_owned(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        encode("%20", false),
        encode("%20", true),
        encode("+", false),
        encode("+", true),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// `text` with every occurrence of `needle` (ASCII case ignored) replaced, or `None`.
fn replace_ignoring_ascii_case(text: &str, needle: &str) -> Option<String> {
    let hay = text.to_ascii_lowercase();
    let needle_lower = needle.to_ascii_lowercase();
    if !hay.contains(&needle_lower) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    // ASCII lowercasing keeps every byte offset, so offsets in `hay` are offsets in `text`.
    for (at, _) in hay.match_indices(&needle_lower) {
        if at < copied {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push_str(REDACTED);
        copied = at + needle_lower.len();
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// The shortest start of a secret worth removing when a text ends with it.
const MIN_TAIL: usize = 4;

/// `text` without a trailing start of `secret` (what is left when a capped text cut the secret
/// off), or `None`.
fn cut_tail(text: &str, secret: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let secret = secret.to_ascii_lowercase();
    (MIN_TAIL..secret.len())
        .rev()
        .filter(|&k| secret.is_char_boundary(k))
        .find(|&k| lower.ends_with(&secret[..k]))
        .map(|k| format!("{}{REDACTED}", &text[..text.len() - k]))
}

/// `text` with its URLs redacted, or `None` when that changes nothing. A URL starts at its
/// scheme and ends where [`ends_url`] says or where the next URL starts.
fn urls(text: &str) -> Option<String> {
    let scheme_start = |at: usize| {
        text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1)
    };
    let marks: Vec<usize> = text.match_indices("://").map(|(at, _)| at).collect();
    if marks.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (i, &at) in marks.iter().enumerate() {
        if at < copied {
            continue;
        }
        let start = scheme_start(at).max(copied);
        let after = at + 3;
        let next = marks
            .get(i + 1)
            .map_or(text.len(), |&n| scheme_start(n).max(after));
        let end = text[after..next].find(ends_url).map_or(next, |j| after + j);
        out.push_str(&text[copied..start]);
        // Writing to a `String` cannot fail.
        let _ = write_url(&mut out, &text[start..end]);
        copied = end;
    }
    out.push_str(&text[copied..]);
    (out != text).then_some(out)
}

/// An error's text with secrets and URLs redacted, standing in for the original error (whose
/// `Display` or `Debug` held one). The chain of sources is kept, each level redacted.
#[derive(Debug)]
pub(crate) struct Scrubbed {
    message: String,
    source: Option<Box<Scrubbed>>,
}

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Scrubbed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// How many levels of an error chain are looked at.
const MAX_CHAIN: usize = 16;

impl Scrubbed {
    /// A redacted stand-in for `error`, or `None` when neither the `Display` nor the `Debug`
    /// of any level of its chain holds a secret or a URL that needs redacting.
    pub(crate) fn of(error: &(dyn std::error::Error + 'static), secrets: &[&str]) -> Option<Self> {
        let mut levels = Vec::new();
        let mut dirty = false;
        let mut next = Some(error);
        while let Some(e) = next.take() {
            if levels.len() == MAX_CHAIN {
                break;
            }
            let display = e.to_string();
            let message = text(&display, secrets).into_owned();
            dirty |= message != display;
            if !dirty {
                let debug = format!("{e:?}");
                dirty |= text(&debug, secrets) != debug.as_str();
            }
            levels.push(message);
            next = e.source();
        }
        if !dirty {
            return None;
        }
        levels.into_iter().rev().fold(None, |source, message| {
            Some(Self {
                message,
                source: source.map(Box::new),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_query_values_and_fragment() {
        let cases = [
            (
                "https://user:PASSWORD@auth.example.com:8443/oauth/token?client_secret=S&x",
                "https://[redacted]@auth.example.com:8443/oauth/token?client_secret=[redacted]&[redacted]",
            ),
            (
                "https://auth.example.com/token",
                "https://auth.example.com/token",
            ),
            (
                "http://u@127.0.0.1:1/t#frag",
                "http://[redacted]@127.0.0.1:1/t#[redacted]",
            ),
            (
                "user:pw@host/token?a=b",
                "[redacted]@host/token?a=[redacted]",
            ),
            ("https://a@b@host?", "https://[redacted]@host?"),
        ];
        for (url, want) in cases {
            assert_eq!(Url(url).to_string(), want, "{url}");
            assert_eq!(format!("{:?}", Url(url)), format!("\"{want}\""));
        }
    }

    #[test]
    fn text_loses_secrets_their_encoded_form_and_url_secrets() {
        let secrets = ["s e/cret", "rt-1", ""];
        let got = text(
            "bad secret s e/cret (s+e%2Fcret) for url (https://u:pw@h/t?k=v) and rt-1",
            &secrets,
        );
        assert_eq!(
            got,
            "bad secret [redacted] ([redacted]) for url (https://[redacted]@h/t?k=[redacted] and [redacted]"
        );
        assert!(matches!(text("nothing here", &secrets), Cow::Borrowed(_)));
        assert!(matches!(
            text("see https://example.com/docs", &secrets),
            Cow::Borrowed(_)
        ));
        assert_eq!(text("a://b://c@d", &[]), "a://b://[redacted]@d");
        assert_eq!(
            text("https://h/p?u=https://u:p@x/y?q=1", &[]),
            "https://h/p?u=[redacted]https://[redacted]@x/y?q=[redacted]"
        );
    }

    #[test]
    fn scrubbed_errors_keep_the_chain_without_secrets() {
        let inner = std::io::Error::other("connect to https://u:pw@h/t failed");
        let outer = Scrubbed::of(&inner, &[]).unwrap();
        assert_eq!(
            outer.to_string(),
            "connect to https://[redacted]@h/t failed"
        );
        assert!(!format!("{outer:?}").contains("pw"));
        assert!(Scrubbed::of(&std::io::Error::other("refused"), &["pw"]).is_none());
    }
}
