//! Property tests of the two parsers that read what servers send: token-endpoint answers
//! (reached through `OAuthProvider` with a fake `TokenTransport`) and `WWW-Authenticate`
//! challenges (`parse_challenges`). Arbitrary input never panics; valid input round-trips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use client_auth::adapter::{BoxFuture, parse_challenges};
use client_auth::{Clock, Error, ManualClock, MemoryStore, OAuthProvider, TokenTransport};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// A token endpoint that answers every request with one canned status and body.
#[derive(Debug)]
struct Canned {
    status: u16,
    body: Bytes,
}

impl TokenTransport for Canned {
    fn send(
        &self,
        _request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let response = http::Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .body(self.body.clone())
            .unwrap();
        Box::pin(async move { Ok(response) })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Asks a fresh provider for a token while the endpoint answers `status` / `body`.
fn exchange(
    rt: &tokio::runtime::Runtime,
    status: u16,
    body: Bytes,
) -> (
    Result<String, Error>,
    Option<client_auth::StoredTokens>,
    ManualClock,
) {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
        .client_id("client")
        .client_secret("secret")
        .refresh_token("rt-original")
        .transport(Arc::new(Canned { status, body }))
        .clock(Arc::new(clock.clone()))
        .store(store.clone(), "ns")
        .build()
        .unwrap();
    let result = rt.block_on(async {
        provider
            .access_token()
            .await
            .map(|t| t.expose_secret().to_owned())
    });
    (result, store.get("ns"), clock)
}

/// The errors a token-endpoint answer may produce: anything else (a transport error, an
/// aborted refresh from a panicking task) is a bug.
fn is_answer_error(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidResponse(_)
            | Error::Unavailable { .. }
            | Error::Rejected(_)
            | Error::SessionEnded(_)
            | Error::Redirect { .. }
            | Error::InvalidHeaderValue
    ) && !(e.is_transient() && e.is_session_ended())
}

/// JSON scalars of every kind.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "[0-9 .eE+-]{0,12}".prop_map(Value::String),
        Just(Value::String("Bearer".into())),
        Just(Value::Array(vec![])),
    ]
}

/// JSON objects with the fields a token or error answer has, holding values of any kind.
fn token_like_object() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("access_token".to_owned()),
        Just("token_type".to_owned()),
        Just("expires_in".to_owned()),
        Just("refresh_token".to_owned()),
        Just("scope".to_owned()),
        Just("error".to_owned()),
        Just("error_description".to_owned()),
        "[a-z_]{1,12}",
    ];
    proptest::collection::vec((key, scalar()), 0..8)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        100u16..=599,
        Just(200u16),
        Just(400u16),
        Just(401u16),
        Just(429u16),
        Just(503u16),
    ]
}

/// A token that is a valid header value (RFC 6750 b64token characters).
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(status in status(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        let (result, _, _) = exchange(&rt, status, Bytes::from(body));
        match result {
            Ok(_) => prop_assert!((200..300).contains(&status)),
            Err(e) => prop_assert!(is_answer_error(&e), "{e:?}"),
        }
    }

    #[test]
    fn arbitrary_token_like_json_never_panics(status in status(), object in token_like_object()) {
        let rt = runtime();
        let (result, _, _) = exchange(&rt, status, Bytes::from(object.to_string()));
        match result {
            Ok(token) => {
                prop_assert!((200..300).contains(&status));
                prop_assert_eq!(Some(token.as_str()), object["access_token"].as_str());
            }
            Err(e) => {
                prop_assert!(is_answer_error(&e), "{e:?}");
                // The OAuth error code is kept when the server sent one (control characters
                // dropped, at most 512 characters: a hostile server cannot flood logs).
                if let Some(o) = e.oauth_error() {
                    let sent = object["error"].as_str().map(|code| {
                        code.chars().filter(|c| !c.is_control()).take(512).collect::<String>()
                    });
                    prop_assert_eq!(Some(o.code().to_owned()), sent);
                }
            }
        }
    }

    #[test]
    fn valid_token_answers_round_trip(
        access_token in token(),
        refresh_token in proptest::option::of(token()),
        expires_in in 1u64..=10_000_000,
        expires_as_string in any::<bool>(),
        scope in proptest::option::of("[a-z:]{1,10}( [a-z:]{1,10}){0,3}"),
        token_type in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER"), Just("bEaReR")],
    ) {
        let mut answer = serde_json::json!({
            "access_token": access_token,
            "token_type": token_type,
            "expires_in": if expires_as_string {
                Value::String(expires_in.to_string())
            } else {
                Value::from(expires_in)
            },
        });
        if let Some(rt) = &refresh_token {
            answer["refresh_token"] = Value::String(rt.clone());
        }
        if let Some(scope) = &scope {
            answer["scope"] = Value::String(scope.clone());
        }
        let rt = runtime();
        let (result, stored, clock) = exchange(&rt, 200, Bytes::from(answer.to_string()));
        prop_assert_eq!(result.unwrap(), access_token.clone());
        let stored = stored.unwrap();
        prop_assert_eq!(
            stored.access_token.as_ref().map(|t| t.expose_secret().to_owned()),
            Some(access_token)
        );
        // A returned refresh token replaces the old one; none keeps it.
        prop_assert_eq!(
            stored.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
            Some(refresh_token.unwrap_or_else(|| "rt-original".to_owned()))
        );
        prop_assert_eq!(stored.scope, scope);
        let expires_at = stored.expires_at.unwrap();
        let want = clock.unix_now() + Duration::from_secs(expires_in);
        let diff = expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .abs_diff(want.duration_since(UNIX_EPOCH).unwrap());
        prop_assert!(diff < Duration::from_secs(1), "{diff:?}");
    }

    #[test]
    fn arbitrary_strings_never_panic_the_challenge_parser(value in ".{0,200}") {
        for challenge in parse_challenges(&value) {
            prop_assert!(!challenge.scheme.is_empty());
            let _ = challenge.param("realm");
        }
    }

    #[test]
    fn arbitrary_challenge_like_text_never_panics(
        value in r#"([A-Za-z]{1,8}|[ ,=\\"]|[a-z]{1,5}="[^"]{0,10}"?|é|[\u{80}-\u{10FFFF}]){0,30}"#,
    ) {
        let _ = parse_challenges(&value);
    }

    #[test]
    fn valid_challenges_round_trip(challenges in proptest::collection::vec(challenge(), 1..4)) {
        let header = challenges
            .iter()
            .map(|(scheme, params)| {
                let params = params
                    .iter()
                    .map(|(name, value)| match value {
                        ParamValue::Token(t) => format!("{name}={t}"),
                        ParamValue::Quoted(q) => format!("{name}=\"{q}\""),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {params}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let parsed = parse_challenges(&header);
        prop_assert_eq!(parsed.len(), challenges.len(), "{}", header);
        for (got, (scheme, params)) in parsed.iter().zip(&challenges) {
            prop_assert_eq!(got.scheme, scheme.as_str());
            let want: Vec<(&str, &str)> = params
                .iter()
                .map(|(n, v)| (n.as_str(), v.raw()))
                .collect();
            prop_assert_eq!(got.params(), want.as_slice(), "{}", header);
        }
    }
}

#[derive(Debug, Clone)]
enum ParamValue {
    Token(String),
    /// The content between the quotes, escapes included.
    Quoted(String),
}

impl ParamValue {
    fn raw(&self) -> &str {
        match self {
            ParamValue::Token(t) | ParamValue::Quoted(t) => t,
        }
    }
}

/// A scheme (an RFC 9110 token) and `name=value` parameters (token or quoted-string values).
fn challenge() -> impl Strategy<Value = (String, Vec<(String, ParamValue)>)> {
    let tchar = "[A-Za-z0-9!#$%&'*+.^_`|~-]";
    let value = prop_oneof![
        regex(&format!("{tchar}{{1,12}}")).prop_map(ParamValue::Token),
        // qdtext and quoted pairs: anything printable but `"` and `\`, or `\` + a character.
        r#"([ !#-\[\]-~]|\\["\\a-z]){0,16}"#.prop_map(ParamValue::Quoted),
    ];
    (
        regex(&format!("[A-Za-z]{tchar}{{0,10}}")),
        proptest::collection::vec(("[a-z][a-z0-9_]{0,8}", value), 0..4),
    )
}

fn regex(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(pattern).unwrap()
}
