//! Third review: attacks on DPoP, claims challenges, tokens per target, assertion grants,
//! mapped token answers and extra token-request headers, at the provider level against
//! scripted token endpoints. Each test is named after the behaviour that holds. Where a test's
//! comment describes something going wrong, that is the defect the review found and the test
//! reproduced before it was fixed; the comments starting "Held" are attacks that held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AuthorizationProvider, ClientAssertionKey, ClientAuth, Credential, DpopKey, Error, FileStore,
    MemoryStore, OAuthProvider, PerTargetProvider, RequestView, TokenStore, TokenTarget,
    TokenTransport, Tokens, Unauthorized,
};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};

#[path = "support/script.rs"]
mod script;

use script::{Script, Seen, claims};

const TOKEN_URL: &str = "https://auth.example.com/token";
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
-----END PRIVATE KEY-----";
const CLAIMS: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;

async fn authorize_at(provider: &impl AuthorizationProvider, path: &str) -> Credential {
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "https", "api.example.com", path, None, &ext);
    provider.authorize(&view).await.unwrap()
}

/// A header value as text (a sensitive one's `Debug` says only `Sensitive`).
fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn challenge(value: &str, nonce: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("www-authenticate", HeaderValue::from_str(value).unwrap());
    if let Some(nonce) = nonce {
        headers.insert("dpop-nonce", HeaderValue::from_str(nonce).unwrap());
    }
    headers
}

fn claims_challenge(scheme: &str) -> HeaderMap {
    let encoded = base64::engine::general_purpose::STANDARD.encode(CLAIMS);
    challenge(
        &format!(r#"{scheme} realm="", error="insufficient_claims", claims="{encoded}""#),
        None,
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "client-auth-review3-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// =============================================================================================
// A transport whose answers wait until the test lets them through
// =============================================================================================

/// Records and answers like [`Script`], but each answer waits for a permit of `gate`.
#[derive(Debug)]
struct Gated {
    script: Arc<Script>,
    gate: Arc<tokio::sync::Semaphore>,
    arrived: Arc<AtomicUsize>,
}

impl Gated {
    fn new(script: &Arc<Script>) -> Arc<Self> {
        Arc::new(Self {
            script: Arc::clone(script),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            arrived: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn open(&self, answers: usize) {
        self.gate.add_permits(answers);
    }

    async fn arrived(&self, n: usize) {
        for _ in 0..2_000 {
            if self.arrived.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("token request {n} never arrived");
    }
}

impl TokenTransport for Gated {
    fn send(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let answer = self.script.send(request, max_body);
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            answer.await
        })
    }
}

// =============================================================================================
// Claims challenges
// =============================================================================================

/// A claims challenge that arrives while a normal refresh is in flight joins that refresh: the
/// retry gets a token asked for without the claims (the request fails again), and no token
/// request ever carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_during_a_refresh_still_gets_a_token_asked_with_its_claims() {
    let script = Script::new();
    for i in 1..=3 {
        script.token("Bearer", &format!("at-{i}"));
    }
    let gated = Gated::new(&script);
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .transport(Arc::clone(&gated) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    gated.open(1);
    let first = authorize_at(&provider, "/").await;
    provider.on_accepted(&first);

    // A refresh under way (a forced one, or one ahead of expiry)...
    let forcing = {
        let provider = provider.clone();
        tokio::spawn(async move { provider.verify_session().await })
    };
    gated.arrived(2).await;
    // ... when the resource answers the current token with a claims challenge.
    let answer = tokio::spawn(provider.on_unauthorized(
        &first,
        StatusCode::UNAUTHORIZED,
        &claims_challenge("Bearer"),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    gated.open(10);
    forcing.await.unwrap().unwrap();
    let answer = answer.await.unwrap().unwrap();

    let Unauthorized::Retry(retry) = answer else {
        panic!("a claims challenge is retried: {answer:?}")
    };
    let seen = script.seen();
    let with_claims = seen.iter().position(|s| s.param("claims") == Some(CLAIMS));
    assert!(
        with_claims.is_some(),
        "no token request carried the claims; the retry was sent with {:?}, a token asked \
         for without them ({} token requests)",
        text(retry.header_value()),
        seen.len()
    );
    assert_eq!(
        retry.header_value(),
        &format!("Bearer at-{}", with_claims.unwrap() + 1),
        "the retry carries the token asked for with the claims"
    );
}

/// On a shared store, a claims challenge whose refresh adopts another process's newer token
/// never sends the claims then, but leaves them pending: the next, unrelated token request
/// (an hour later) carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_go_with_the_token_request_they_asked_for_and_no_later_one() {
    let dir = temp_dir("claims");
    let store: Arc<dyn TokenStore> = Arc::new(FileStore::new(&dir));
    let build = |script: &Arc<Script>| {
        OAuthProvider::client_credentials(TOKEN_URL)
            .client_id("svc")
            .store(Arc::clone(&store), "svc")
            .transport(Arc::clone(script) as Arc<dyn TokenTransport>)
            .build()
            .unwrap()
    };
    let (one, two) = (Script::new(), Script::new());
    one.token("Bearer", "at-1");
    one.token("Bearer", "at-2");
    two.token("Bearer", "at-own-1");
    two.token("Bearer", "at-own-2");
    let (p1, p2) = (build(&one), build(&two));

    authorize_at(&p1, "/").await;
    let adopted = authorize_at(&p2, "/").await; // adopts at-1 from the store
    assert_eq!(adopted.header_value(), "Bearer at-1");
    p1.verify_session().await.unwrap(); // the other process renews: at-2 in the store

    let answer = p2
        .on_unauthorized(
            &adopted,
            StatusCode::UNAUTHORIZED,
            &claims_challenge("Bearer"),
        )
        .await
        .unwrap();
    let mut problems = Vec::new();
    let seen_then = two.seen().len();
    if !two.seen().iter().any(|s| s.param("claims") == Some(CLAIMS)) {
        problems.push(format!(
            "the challenge was answered with {:?} without asking for the claims",
            match &answer {
                Unauthorized::Retry(c) => c.header_value().to_str().unwrap().to_owned(),
                _ => "no retry".to_owned(),
            }
        ));
    }
    // Much later, an ordinary renewal.
    p2.verify_session().await.unwrap();
    let later: Vec<Seen> = two.seen().into_iter().skip(seen_then).collect();
    if later.iter().any(|s| s.param("claims").is_some()) {
        problems.push("a later, unrelated token request carried the old claims".to_owned());
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A resource that binds tokens with DPoP challenges with the `DPoP` scheme (RFC 9449 §7.1
/// uses RFC 6750's error codes): its claims challenge is ignored, so the refresh asks without
/// the claims and the retry fails the same way.
#[tokio::test]
async fn a_claims_challenge_to_a_dpop_bound_token_sends_its_claims() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    script.token("DPoP", "at-2");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let first = authorize_at(&provider, "/").await;

    let answer = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &claims_challenge("DPoP"))
        .await
        .unwrap();

    assert!(matches!(answer, Unauthorized::Retry(_)), "{answer:?}");
    assert_eq!(
        script.seen()[1].param("claims"),
        Some(CLAIMS),
        "the refresh for a DPoP claims challenge carries the claims"
    );
}

/// Held: claims that are not base64 of a JSON object, or JSON that is not an object, are not
/// sent; the 401 is handled as an ordinary one.
#[tokio::test]
async fn claims_that_are_not_a_json_object_are_never_sent() {
    for bad in [
        "%%%not-base64%%%",
        &base64::engine::general_purpose::STANDARD.encode("[1,2]"),
        &base64::engine::general_purpose::STANDARD.encode("\"text\""),
        &base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x7b]),
    ] {
        let script = Script::new();
        script.token("Bearer", "at-1");
        script.token("Bearer", "at-2");
        let provider = OAuthProvider::client_credentials(TOKEN_URL)
            .client_id("svc")
            .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
            .build()
            .unwrap();
        let first = authorize_at(&provider, "/").await;
        let headers = challenge(
            &format!(r#"Bearer error="insufficient_claims", claims="{bad}""#),
            None,
        );
        let answer = provider
            .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &headers)
            .await
            .unwrap();
        assert!(
            matches!(answer, Unauthorized::Retry(_)),
            "{bad}: {answer:?}"
        );
        assert!(
            script.seen().iter().all(|s| s.param("claims").is_none()),
            "{bad}"
        );
    }
}

// =============================================================================================
// DPoP
// =============================================================================================

fn dpop_session(script: &Arc<Script>, key: &DpopKey) -> OAuthProvider {
    OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("app")
        .refresh_token("rt-1")
        .dpop(key.clone())
        .transport(Arc::clone(script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap()
}

/// After `logout()`, a request's nonce challenge is answered with the logged-out token: the
/// Bearer path answers the same 401 with `NoSession`.
#[tokio::test]
async fn after_logout_a_dpop_nonce_challenge_is_never_retried_with_the_old_token() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let provider = dpop_session(&script, &DpopKey::generate().unwrap());
    let sent = authorize_at(&provider, "/v1/me").await;

    provider.logout().await.unwrap();
    let answer = provider
        .on_unauthorized(
            &sent,
            StatusCode::UNAUTHORIZED,
            &challenge(r#"DPoP error="use_dpop_nonce""#, Some("n-1")),
        )
        .await;

    assert!(
        !matches!(&answer, Ok(Unauthorized::Retry(_))),
        "retried after logout with {:?}",
        answer.map(|a| match a {
            Unauthorized::Retry(c) => c.header_value().to_str().unwrap().to_owned(),
            _ => "-".to_owned(),
        })
    );
}

/// After `set_tokens` (another sign-in), a nonce challenge to a request of the old session is
/// retried with the old session's token; an ordinary 401 gets the new session's token.
#[tokio::test]
async fn after_set_tokens_a_dpop_nonce_retry_uses_the_new_sessions_token() {
    let script = Script::new();
    script.token("DPoP", "at-old");
    let provider = dpop_session(&script, &DpopKey::generate().unwrap());
    let sent = authorize_at(&provider, "/v1/me").await;

    provider
        .set_tokens(Tokens {
            access_token: Some("at-new".into()),
            refresh_token: Some("rt-new".into()),
            expires_in: Some(Duration::from_secs(3600)),
            dpop_bound: true,
            ..Tokens::default()
        })
        .await
        .unwrap();
    let answer = provider
        .on_unauthorized(
            &sent,
            StatusCode::UNAUTHORIZED,
            &challenge(r#"DPoP error="use_dpop_nonce""#, Some("n-1")),
        )
        .await
        .unwrap();

    if let Unauthorized::Retry(retry) = answer {
        assert_ne!(
            text(retry.header_value()),
            "DPoP at-old",
            "the retry carries the replaced session's token"
        );
    }
}

/// Held: a `DPoP-Nonce` that is not an RFC 9449 nonce (too long, a space, a quote, not ASCII)
/// is never remembered, never put in a proof, and its 401 is returned unchanged.
#[tokio::test]
async fn a_malformed_or_huge_dpop_nonce_is_never_used() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let sent = authorize_at(&provider, "/").await;
    let long = "n".repeat(1025);
    for nonce in [long.as_str(), "a b", "a\"b", "a\\b"] {
        let mut headers = challenge(r#"DPoP error="use_dpop_nonce""#, None);
        headers.insert("dpop-nonce", HeaderValue::from_str(nonce).unwrap());
        let answer = provider
            .on_unauthorized(&sent, StatusCode::UNAUTHORIZED, &headers)
            .await
            .unwrap();
        assert!(
            matches!(answer, Unauthorized::GiveUp),
            "{nonce}: {answer:?}"
        );
    }
    // Not ASCII: not even a string the header map hands out.
    let mut headers = challenge(r#"DPoP error="use_dpop_nonce""#, None);
    headers.insert("dpop-nonce", HeaderValue::from_bytes(b"n\xffn").unwrap());
    let answer = provider
        .on_unauthorized(&sent, StatusCode::UNAUTHORIZED, &headers)
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::GiveUp), "{answer:?}");
    let next = authorize_at(&provider, "/").await;
    let proof = claims(next.extra_headers().unwrap()["dpop"].to_str().unwrap());
    assert!(proof.get("nonce").is_none(), "{proof}");
    assert_eq!(script.seen().len(), 1);
}

/// Held: a nonce one origin gave is never put in a proof for another origin, and the token
/// endpoint's nonce stays with the token endpoint's origin.
#[tokio::test]
async fn a_nonce_from_one_origin_is_never_sent_to_another() {
    let script = Script::new();
    script.answer(
        400,
        &[("dpop-nonce", "AS-NONCE")],
        r#"{"error":"use_dpop_nonce"}"#,
    );
    script.token("DPoP", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let at = |authority: &'static str| {
        let provider = provider.clone();
        async move {
            let ext = Extensions::new();
            let view = RequestView::new(&Method::GET, "https", authority, "/", None, &ext);
            provider.authorize(&view).await.unwrap()
        }
    };
    let a = at("a.example.com").await;
    let answer = provider
        .on_unauthorized(
            &a,
            StatusCode::UNAUTHORIZED,
            &challenge(r#"DPoP error="use_dpop_nonce""#, Some("A-NONCE")),
        )
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::Retry(_)));

    for (authority, want) in [
        ("a.example.com", Some("A-NONCE")),
        ("A.EXAMPLE.COM", Some("A-NONCE")),
        ("b.example.com", None),
        ("a.example.com:8443", None),
        ("auth.example.com:443", None),
    ] {
        let credential = at(authority).await;
        let proof = claims(
            credential.extra_headers().unwrap()["dpop"]
                .to_str()
                .unwrap(),
        );
        assert_eq!(proof["nonce"].as_str(), want, "{authority}");
    }
}

// =============================================================================================
// Mapped answers and user closures
// =============================================================================================

/// A `map_token_response` closure that panics kills the refresh task: waiters get
/// `RefreshAborted`, but nothing backs off, so every later request sends another token request
/// (and panics again) instead of waiting out a backoff like any other failed refresh.
#[tokio::test]
async fn a_panicking_token_answer_map_backs_off_like_any_failed_refresh() {
    let script = Script::new();
    for i in 0..10 {
        script.token("Bearer", &format!("at-{i}"));
    }
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .map_token_response(|_| panic!("a bug in the application's map"))
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(provider.access_token().await.unwrap_err());
    }

    // The panic is a failed refresh with a typed error (not a transient one: the same map
    // panics again).
    assert!(
        matches!(errors[0], Error::Callback(_)),
        "waiters of the panicked refresh: {:?}",
        errors[0]
    );
    assert_eq!(
        script.seen().len(),
        1,
        "5 calls within a second made {} token requests: {errors:?}",
        script.seen().len()
    );
}

/// Held: a map that panics does not poison the provider: once it stops panicking, tokens flow.
#[tokio::test]
async fn a_map_that_panicked_once_leaves_the_provider_usable() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    script.token("Bearer", "at-2");
    let panic_now = Arc::new(AtomicBool::new(true));
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .map_token_response({
            let panic_now = Arc::clone(&panic_now);
            move |answer| {
                assert!(!panic_now.load(Ordering::SeqCst), "a bug in the map");
                answer
            }
        })
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    assert!(provider.access_token().await.is_err());
    panic_now.store(false, Ordering::SeqCst);
    // After any backoff the provider recovers.
    let mut token = provider.access_token().await;
    for _ in 0..40 {
        if token.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        token = provider.access_token().await;
    }
    assert_eq!(token.unwrap().expose_secret(), "at-2");
}

/// Held: a map handed an answer that is not JSON sees `Null`; whatever it makes of it is read
/// strictly, and no text of the answer reaches the error.
#[tokio::test]
async fn a_non_json_answer_through_the_map_is_a_typed_error_without_its_text() {
    let script = Script::new();
    script.answer(200, &[], "<html>SECRET-PAGE</html>");
    let seen = Arc::new(Mutex::new(None));
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .map_token_response({
            let seen = Arc::clone(&seen);
            move |answer| {
                *seen.lock().unwrap() = Some(answer.clone());
                serde_json::json!({ "access_token": answer["data"], "token_type": "Bearer" })
            }
        })
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let err = provider.access_token().await.unwrap_err();
    assert_eq!(*seen.lock().unwrap(), Some(serde_json::Value::Null));
    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("SECRET-PAGE"));
}

// =============================================================================================
// Secrets in errors
// =============================================================================================

/// A token endpoint that refuses every request and echoes the request's form and headers in
/// its `error_description`, as some servers do in their error pages.
#[derive(Debug)]
struct Echo;

impl TokenTransport for Echo {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let form = String::from_utf8_lossy(request.body()).into_owned();
        let decoded: Vec<String> = form_urlencoded::parse(form.as_bytes())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let headers: Vec<String> = request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let description = format!("rejected {} with {}", decoded.join(" "), headers.join(" "));
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": description,
        });
        let response = http::Response::builder()
            .status(401)
            .body(Bytes::from(body.to_string()))
            .unwrap();
        Box::pin(async move { Ok(response) })
    }
}

/// The signed client assertion (`private_key_jwt`, `client_secret_jwt`) is a credential for a
/// minute; a gateway key sent with `token_request_header` is one for good. Echoed by the server,
/// both reach the error's text, while the client secret, refresh token and grant assertions
/// are removed.
#[tokio::test]
async fn an_echoed_signed_client_assertion_or_gateway_key_never_reaches_an_error() {
    let mut problems = Vec::new();
    let key = ClientAssertionKey::es256_pem(EC_PEM.as_bytes()).unwrap();
    let cases = [
        (
            "private_key_jwt",
            OAuthProvider::client_credentials(TOKEN_URL)
                .client_id("svc")
                .private_key_jwt(key),
        ),
        (
            "client_secret_jwt",
            OAuthProvider::client_credentials(TOKEN_URL)
                .client_id("svc")
                .client_secret("cs-SECRET")
                .client_auth(ClientAuth::SecretJwt),
        ),
        (
            "gateway header",
            OAuthProvider::client_credentials(TOKEN_URL)
                .client_id("svc")
                .client_secret("cs-SECRET"),
        ),
    ];
    for (what, builder) in cases {
        let provider = builder
            .token_request_header("x-gateway-key", "GATEWAY-KEY-SECRET")
            .transport(Arc::new(Echo))
            .build()
            .unwrap();
        let err = provider.access_token().await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("cs-SECRET"), "held: the client secret");
        if text.contains("GATEWAY-KEY-SECRET") {
            problems.push(format!("{what}: the gateway key is in the error"));
        }
        // A JWT: three base64url segments, the first a JOSE header.
        if text.contains("client_assertion=eyJ") {
            problems.push(format!(
                "{what}: the signed client assertion is in the error"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// =============================================================================================
// Token request headers
// =============================================================================================

/// `token_request_header` appends: a name the token request already has is sent twice, with
/// no build error (a second `Content-Type` of another media type, a second `Authorization`
/// beside `client_secret_basic`), and a `Host` header replaces the token endpoint's virtual
/// host with any name.
#[tokio::test]
async fn token_request_headers_never_duplicate_or_redirect_what_the_token_request_sets() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .client_secret("cs")
        .token_request_header("content-type", "application/json")
        .token_request_header("authorization", "Gateway gw-key")
        .token_request_header("host", "other-tenant.example.net")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build();
    let Ok(provider) = provider else {
        return; // refused at build: what should hold
    };
    provider.access_token().await.unwrap();
    let sent = &script.seen()[0].headers;
    let mut problems = Vec::new();
    for name in ["content-type", "authorization"] {
        let values: Vec<_> = sent.get_all(name).iter().map(text).collect();
        if values.len() > 1 {
            problems.push(format!("{name} sent {} times: {values:?}", values.len()));
        }
    }
    if let Some(host) = sent.get("host") {
        problems.push(format!("Host set to {:?}", text(host)));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// =============================================================================================
// Tokens per target
// =============================================================================================

/// A token endpoint that names each token after the target it was asked for:
/// `at-{resource or scope}-{n}`.
#[derive(Debug, Default)]
struct PerResource {
    issued: AtomicUsize,
    requests: Mutex<Vec<HashMap<String, String>>>,
}

impl TokenTransport for PerResource {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let form: HashMap<String, String> = form_urlencoded::parse(request.body())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let name = form
            .get("resource")
            .or_else(|| form.get("scope"))
            .cloned()
            .unwrap_or_default();
        self.requests.lock().unwrap().push(form);
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let body = serde_json::json!({
            "access_token": format!("at-{name}-{n}").replace(['\r', '\n'], " "),
            "token_type": "Bearer",
            "expires_in": 3600,
        })
        .to_string();
        let response = http::Response::builder()
            .status(200)
            .body(Bytes::from(body))
            .unwrap();
        Box::pin(async move { Ok(response) })
    }
}

fn per_target(
    endpoint: &Arc<PerResource>,
    store: Option<Arc<dyn TokenStore>>,
    max: usize,
) -> PerTargetProvider {
    let mut template = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .scope("read")
        .metrics_name("billing-api");
    if let Some(store) = store {
        template = template.store(store, "svc");
    }
    PerTargetProvider::builder(template.transport(Arc::clone(endpoint) as Arc<dyn TokenTransport>))
        .max_targets(max)
        .build()
        .unwrap()
}

async fn authorize_target(provider: &PerTargetProvider, target: &TokenTarget) -> Credential {
    let mut ext = Extensions::new();
    ext.insert(target.clone());
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
    provider.authorize(&view).await.unwrap()
}

/// Two resources whose store-namespace digests collide (FNV-1a, 64 bits, found with a
/// distinguished-point search in about two minutes on two cores), and a field set to `"\0"`,
/// which the digest cannot tell from an absent one. With the shared store the docs recommend,
/// the second target's provider adopts the first target's token from the store and sends it to
/// the other API.
#[tokio::test]
async fn targets_that_differ_never_share_a_store_entry() {
    let pairs = [
        (
            TokenTarget::new().resource("https://66543781f6028add.example"),
            TokenTarget::new().resource("https://610475fc927a08d4.example"),
        ),
        (
            TokenTarget::new().resource("https://api.example.com"),
            TokenTarget::new()
                .resource("https://api.example.com")
                .scope("\u{0}"),
        ),
    ];
    let mut problems = Vec::new();
    for (a, b) in pairs {
        let endpoint = Arc::new(PerResource::default());
        let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let provider = per_target(&endpoint, Some(store), 8);
        let for_a = authorize_target(&provider, &a).await;
        let for_b = authorize_target(&provider, &b).await;
        if for_a.header_value() == for_b.header_value() {
            problems.push(format!(
                "{b:?} was given {:?}, the token asked for {a:?}",
                text(for_b.header_value())
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Held: with targets evicted and recreated while requests and 401s for several targets
/// interleave on two threads, every retry carries a token of the target whose token failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_never_answered_with_another_targets_token_while_targets_are_evicted() {
    let endpoint = Arc::new(PerResource::default());
    let provider = per_target(&endpoint, None, 2);
    let targets: Arc<Vec<TokenTarget>> = Arc::new(
        (0..5)
            .map(|i| TokenTarget::new().resource(format!("https://r{i}.example")))
            .collect(),
    );
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (provider, targets) = (provider.clone(), Arc::clone(&targets));
            tokio::spawn(async move {
                let mut retries = 0;
                for n in 0..150 {
                    let i = (t * 7 + n * 3) % targets.len();
                    let sent = authorize_target(&provider, &targets[i]).await;
                    let name = format!("at-https://r{i}.example-");
                    let value = sent.header_value().to_str().unwrap().to_owned();
                    assert!(value.contains(&name), "{value} sent for target {i}");
                    if n % 3 == 0 {
                        provider.on_accepted(&sent);
                    }
                    tokio::task::yield_now().await;
                    let answer = provider
                        .on_unauthorized(&sent, StatusCode::UNAUTHORIZED, &HeaderMap::new())
                        .await
                        .unwrap();
                    if let Unauthorized::Retry(retry) = answer {
                        retries += 1;
                        let value = retry.header_value().to_str().unwrap();
                        assert!(value.contains(&name), "{value} is the retry for target {i}");
                    }
                }
                retries
            })
        })
        .collect();
    let mut retries = 0;
    for task in tasks {
        retries += task.await.unwrap();
    }
    assert!(retries > 0, "some 401s were retried");
}

/// The slot counter that names a target in its credentials' generations wraps after 2^24 - 1
/// targets were created. A target kept in use all along (the LRU keeps it) then shares its slot
/// with a new one, and a 401 for the new target's token goes to the old target's provider,
/// which answers it with ITS token: the retry sends one API's token to another.
///
/// Slow (about 16.8 million targets created and dropped): run it on its own.
#[tokio::test]
#[ignore = "slow (about 2 minutes): 2^24 targets; the slot no longer wraps"]
async fn a_401_is_never_answered_with_another_targets_token_after_the_slot_counter_wraps() {
    let endpoint = Arc::new(PerResource::default());
    let provider = per_target(&endpoint, None, 2);
    let hot = TokenTarget::new().resource("https://hot.example");
    provider.provider(&hot).unwrap(); // slot 1
    let churn: u64 = (1 << 24) - 2; // slots 2 ..= 2^24 - 1
    let started = std::time::Instant::now();
    for n in 0..churn {
        provider.provider(&hot).unwrap(); // kept most recently used
        provider
            .provider(&TokenTarget::new().param("n", n.to_string()))
            .unwrap();
        if n % 1_000_000 == 0 {
            eprintln!("{n} targets in {:?}", started.elapsed());
        }
    }
    let cold = TokenTarget::new().resource("https://cold.example");
    let hot_credential = authorize_target(&provider, &hot).await; // hot first: less recent
    let cold_credential = authorize_target(&provider, &cold).await; // the counter wrapped: slot 1
    assert!(
        hot_credential
            .header_value()
            .to_str()
            .unwrap()
            .contains("hot")
    );

    let answer = provider
        .on_unauthorized(
            &cold_credential,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
        )
        .await
        .unwrap();
    if let Unauthorized::Retry(retry) = answer {
        let value = retry.header_value().to_str().unwrap();
        assert!(
            value.contains("cold"),
            "the 401 of a request to https://cold.example is retried with {value}"
        );
    }
}

/// The adapters label their metrics with the provider's `metrics_name`: a per-target provider
/// built from a template named `billing-api` reports as `default`.
#[test]
fn a_per_target_provider_reports_under_its_templates_metrics_name() {
    let provider = per_target(&Arc::new(PerResource::default()), None, 2);
    assert_eq!(
        AuthorizationProvider::metrics_name(&provider),
        "billing-api"
    );
}

// =============================================================================================
// Bad keys
// =============================================================================================

/// Throwaway test keys, made for this file with `openssl genpkey`.
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDFGsI5kFfPvEBu
24RHq4PcBFJ/vskvxlRRqLQag1H7E4MHnrFohVs4OsY8LtbUpNoh3P8W87mxOSC2
uo3qEAXeeTdI3EoB0qa1+we+s4kA406wiTz7YD9w3CWGuUN1R57Iidsx9C80rB5a
vIAbZZ33/tfKT92lq3djb6V/HmfY5Oc/aQ56dH/l9rM4isIjvgMplaEeSARcpld6
Ifrf4jwMi64NZsAqyf5p7rpjmZMEp2nSCvj0gfMJw6tirNgFh0u8WPGnZ8/tThg6
OC4RbaF3FU52U+JTHuu5A6LeZxkOlHxIMzkF6MJXnHsP8yHwm3PjuTwTro0IUatG
AP/zVkiTAgMBAAECgf9WfRISMERX40MNYfBULUQERzaW13YbK0Ep6TJzxSveqwZ+
ps6HY/z4WidM6+tYuP2pM6VmF4xj4lgjK7kZ++3ssUPmX24aCVUd2rPgpOcj0e+1
hy2Qdatg2o5Hj65fcriPRpk9p5MPNHdyrpmIFrmPw0OX2B5qPn3PeYN6mYeipAgQ
3meNL+Qs9a5bG1mnvMLlZtTJ5ise6rlBf1SK3bL7R0XVwvthVSsh7mcTwBL7wtCs
DHMFnKN3J6tpZcISePjnZPiEmoa3fjO2unP5rajv8rg5R3XuimCXENEc8b1oBgtr
+hR9NOMb/2XwVzsfgQwtCXh+DTWH45dhmCQuW9ECgYEA/2waGJJ3e0LyCBpgJlK8
HmDgoBtLxpObO/3OfNFCsRBG3SN3yCl+ISBoSY+pdlkU9yok8T+iqvYTGFzza2Na
mIo8AT6kKV1JbtJgSLDyQbFDAC0hAhe1+/pciweOC5/s5SLE88FRu+viflT9HVNN
F65V9Isow2LQUX5I0XxNMksCgYEAxYzjidawC2gbBlDJSMw//rAG6ETt5+Z5nDtA
r1fchgPqmTOKWm98wB7B/ho8fcB1R+N2FfqeudjoevEPowRnF17bIr7QdrwIpSLf
3zcpZ3xFCMRDjDDFqxQ+GDEHudT8ZwiD6pFroKsKHMe10i4+BNGuh6f/QFfMRu7M
QrpDldkCgYEAvpHoUocNMGE9dcBAFrfJ9ZxwW+Shv9InkzYF1ujGqpcrWBj7aNNU
cODeDmxqkotaciL2lyzUcFvS2W2YjHn/gSo6JO+Yyef5Pv8lqXaj+VGJXNtO8mHA
fPVKEM0dNR0oQbmUWw3UrrILNhixFS0uqsl/BkrBqi3SocroB6yHaEsCgYEAg2E0
fhoSUDO3LVcS1mBH+xiUL2qQEdbcb8OUPEihd1spbSOy0nwsqhSKjXRjYHpbRSkI
Aov/fbe8vO6OqKqn6QoDkLL4Ls7UrQZpfqjP12v0+WSVS6mv/BvlQ+9vpO35wogO
OzTlMCAwBH3o9NQeGNReTweyINeDGnV70LDRe9kCgYEA4fH5buhwl/OYvV+eJjNm
4+SJtNIb6EV15i6p6mPBSqEkevD8sXpuLsx4MLykXSMPaxZiGp+m/tB0I/hUAck7
QIyk+Uvu7N5LwAUOJU5SJ6oxSOG5k2wlgTKlWtvcZczhMSVA7FrMGoRWJtHhkH9W
vNxO+lKFaQDtJGPGvcRnjNw=
-----END PRIVATE KEY-----";
const P384_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDB0Uf4+O/XL70WG/5hB
lNX/GV8VJxUtroNc55bJ3ZJHlrElA67nYEY8s3H3gK2R6YmhZANiAATYJT/pRvWS
5wbof7uMSeoW0ox2YwFrlkY/19eZrSnXXhn7BszcNVlcbE8EVhARigosnDCexS23
9JES2vYkFuu0v0igFZIV5wK+YsQGhn3qBOzLEMZczPkJwgEL1tcb3Is=
-----END PRIVATE KEY-----";

/// Held: keys of the wrong kind or malformed PEM are configuration errors that never show the
/// key, whatever the backend.
#[test]
fn keys_of_the_wrong_kind_or_malformed_are_config_errors_without_key_text() {
    let ec_body = EC_PEM.lines().nth(1).unwrap();
    let truncated = EC_PEM.replace("-----END PRIVATE KEY-----", "");
    let sec1 = EC_PEM.replace("PRIVATE KEY", "EC PRIVATE KEY");
    let no_pem = ec_body.to_owned();
    let cases: Vec<(&str, Result<(), Error>)> = vec![
        (
            "dpop from an RSA key",
            DpopKey::from_pkcs8_pem(RSA_PEM).map(drop),
        ),
        (
            "dpop from a P-384 key",
            DpopKey::from_pkcs8_pem(P384_PEM).map(drop),
        ),
        (
            "es256 from a P-384 key",
            ClientAssertionKey::es256_pem(P384_PEM.as_bytes()).map(drop),
        ),
        (
            "dpop truncated",
            DpopKey::from_pkcs8_pem(&truncated).map(drop),
        ),
        ("dpop SEC1 label", DpopKey::from_pkcs8_pem(&sec1).map(drop)),
        (
            "dpop bare base64",
            DpopKey::from_pkcs8_pem(&no_pem).map(drop),
        ),
        ("dpop empty", DpopKey::from_pkcs8_pem("").map(drop)),
        (
            "dpop der junk",
            DpopKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).map(drop),
        ),
        (
            "rs256 from an EC key",
            ClientAssertionKey::rs256_pem(EC_PEM.as_bytes()).map(drop),
        ),
        (
            "ps256 from an EC key",
            ClientAssertionKey::ps256_pem(EC_PEM.as_bytes()).map(drop),
        ),
        (
            "es256 from an RSA key",
            ClientAssertionKey::es256_pem(RSA_PEM.as_bytes()).map(drop),
        ),
        (
            "es256 truncated",
            ClientAssertionKey::es256_pem(truncated.as_bytes()).map(drop),
        ),
        ("es256 empty", ClientAssertionKey::es256_pem(b"").map(drop)),
    ];
    for (what, result) in cases {
        let err = result.expect_err(what);
        assert!(matches!(err, Error::Config(_)), "{what}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(ec_body), "{what}: {text}");
        assert!(!text.contains("MII"), "{what}: {text}");
    }
    // The right kinds are fine.
    ClientAssertionKey::rs256_pem(RSA_PEM.as_bytes()).unwrap();
    DpopKey::from_pkcs8_pem(EC_PEM).unwrap();
}

// =============================================================================================
// Discovery
// =============================================================================================

/// Held (RFC 8414 §2 and §3.3: only the issuer must match; the document comes over TLS from the
/// issuer, whose word the endpoints are): a token endpoint on another https host is taken, and
/// a plain-http one on a host that is not loopback is refused.
#[tokio::test]
async fn discovery_takes_https_endpoints_anywhere_and_refuses_plain_http_ones() {
    let issuer = "https://auth.example.com";
    let script = Script::new();
    script.answer(
        200,
        &[],
        &format!(r#"{{"issuer":"{issuer}","token_endpoint":"https://tokens.example.net/t"}}"#),
    );
    let found = client_auth::ServerMetadata::discover_with(issuer, script, false)
        .await
        .unwrap();
    assert_eq!(found.token_endpoint(), "https://tokens.example.net/t");

    let script = Script::new();
    script.answer(
        200,
        &[],
        &format!(r#"{{"issuer":"{issuer}","token_endpoint":"http://tokens.example.net/t"}}"#),
    );
    let refused = client_auth::ServerMetadata::discover_with(issuer, script, false).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
}

/// An https issuer's metadata may name a plain-http token endpoint on loopback: a provider
/// built from it sends the client secret in clear text to whatever listens on that port of
/// the client's own machine, a place the issuer, being remote, cannot vouch for.
#[tokio::test]
async fn an_https_issuers_metadata_never_names_a_plain_http_endpoint() {
    let issuer = "https://auth.example.com";
    let script = Script::new();
    script.answer(
        200,
        &[],
        &format!(
            r#"{{"issuer":"{issuer}","token_endpoint":"http://127.0.0.1:9/token","revocation_endpoint":"http://localhost:9/revoke"}}"#
        ),
    );
    let found = client_auth::ServerMetadata::discover_with(issuer, script, false).await;
    assert!(
        found.is_err(),
        "taken: token endpoint {:?}",
        found.as_ref().map(|m| m.token_endpoint().to_owned())
    );
}

// =============================================================================================
// More interleavings and secrets
// =============================================================================================

/// A resource that keeps answering with the same claims challenge (a policy the authorization
/// server cannot satisfy, or a buggy resource) gets a new token request for every API request:
/// the claims path skips the 401 cooldown even when the current token was asked for with
/// exactly those claims, so nothing ever slows it down.
#[tokio::test]
async fn a_claims_challenge_the_new_token_cannot_meet_is_not_a_token_request_per_request() {
    let script = Script::new();
    for i in 0..=20 {
        script.token("Bearer", &format!("at-{i}"));
    }
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    for i in 0..10 {
        // One API request: sent, challenged, retried once with the new token, challenged
        // again (the adapters ask no provider about the retry's 401).
        let sent = authorize_at(&provider, "/").await;
        let answer = provider
            .on_unauthorized(&sent, StatusCode::UNAUTHORIZED, &claims_challenge("Bearer"))
            .await
            .unwrap();
        // The first challenge is answered; once the claims were asked for, the same challenge
        // is an ordinary 401 and the cooldown may return it unchanged.
        if i == 0 {
            assert!(matches!(answer, Unauthorized::Retry(_)), "{answer:?}");
        }
    }

    let with_claims = script
        .seen()
        .iter()
        .filter(|s| s.param("claims").is_some())
        .count();
    assert!(
        script.seen().len() <= 4,
        "10 API requests under the same unmet claims challenge made {} token requests ({} with \
         the claims)",
        script.seen().len(),
        with_claims
    );
}

/// Held: a logout while the token endpoint's nonce challenge is being answered publishes
/// nothing: the retry's answer is discarded, the refresh token it rotated to is revoked, and
/// the session stays ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_a_token_endpoint_nonce_retry_publishes_nothing() {
    let script = Script::new();
    script.answer(
        400,
        &[("dpop-nonce", "n-1")],
        r#"{"error":"use_dpop_nonce"}"#,
    );
    script.answer(200, &[], ""); // logout's revocation of rt-1
    script.answer(
        200,
        &[],
        r#"{"access_token":"at-after-logout","token_type":"DPoP","expires_in":3600,"refresh_token":"rt-2"}"#,
    );
    script.answer(200, &[], ""); // the revocation of rt-2
    let gated = Gated::new(&script);
    let store = Arc::new(MemoryStore::new());
    let provider = OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("app")
        .refresh_token("rt-1")
        .revocation_url("https://auth.example.com/revoke")
        .dpop(DpopKey::generate().unwrap())
        .store(Arc::clone(&store) as Arc<dyn TokenStore>, "ns")
        .transport(Arc::clone(&gated) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    let refresh = {
        let provider = provider.clone();
        tokio::spawn(async move { provider.access_token().await })
    };
    gated.arrived(1).await;
    let logout = {
        let provider = provider.clone();
        tokio::spawn(async move { provider.logout().await })
    };
    gated.arrived(2).await;
    gated.open(10);
    logout.await.unwrap().unwrap();
    let outcome = refresh.await.unwrap();

    assert!(
        matches!(outcome, Err(Error::NoSession { .. })),
        "{outcome:?}"
    );
    assert!(matches!(
        provider.access_token().await,
        Err(Error::NoSession { .. })
    ));
    for _ in 0..200 {
        if script.seen().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = script.seen();
    assert_eq!(seen[2].dpop_claims()["nonce"], "n-1");
    assert_eq!(
        seen[3].param("token"),
        Some("rt-2"),
        "the rotated token is revoked"
    );
    assert!(store.load("ns").await.unwrap().is_none());
}

/// Held: `Debug` of the builders and providers of today's features shows no secret: client
/// secret, gateway key, assertion sources' text, the DPoP and client-assertion private keys,
/// a target's parameters' values aside (they are not secrets).
#[test]
fn debug_output_of_the_new_builders_and_providers_shows_no_secret() {
    let dpop = DpopKey::from_pkcs8_pem(EC_PEM).unwrap();
    let assertion_key = ClientAssertionKey::es256_pem(EC_PEM.as_bytes()).unwrap();
    let source = client_auth::AssertionSource::from_fn(|| async {
        Ok::<_, client_auth::BoxError>("SOURCE-SECRET".to_owned())
    });
    let template = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .client_secret("CLIENT-SECRET")
        .token_request_header("x-gateway-key", "GATEWAY-SECRET")
        .private_key_jwt(assertion_key.clone())
        .client_assertion(source.clone())
        .dpop(dpop.clone())
        .transport(Script::new());
    let provider = template.clone().build().unwrap();
    let per_target = PerTargetProvider::builder(template.clone());
    let exchange = OAuthProvider::token_exchange(TOKEN_URL, source.clone())
        .client_id("svc")
        .transport(Script::new());
    let texts = [
        format!("{template:?}"),
        format!("{provider:?}"),
        format!("{per_target:?}"),
        format!("{:?}", per_target.build().unwrap()),
        format!("{exchange:?}"),
        format!("{dpop:?}"),
        format!("{assertion_key:?}"),
        format!("{source:?}"),
    ];
    let key_lines: Vec<&str> = EC_PEM.lines().filter(|l| !l.starts_with("---")).collect();
    for text in texts {
        for secret in ["CLIENT-SECRET", "GATEWAY-SECRET", "SOURCE-SECRET"]
            .iter()
            .chain(&key_lines)
        {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

/// Held: a target whose fields hold path separators, dots and line breaks stays one file in the
/// store's directory (the namespace is the template's and a hex digest).
#[tokio::test]
async fn a_target_with_odd_characters_stays_inside_the_store_directory() {
    let dir = temp_dir("odd-target");
    let store: Arc<dyn TokenStore> = Arc::new(FileStore::new(dir.join("store")));
    let endpoint = Arc::new(PerResource::default());
    let provider = per_target(&endpoint, Some(store), 4);
    let target = TokenTarget::new()
        .resource("../../escape\n/etc/passwd")
        .audience("a/b\\c\r\n..")
        .param("x\0y", "../..");
    let mut ext = Extensions::new();
    ext.insert(target.clone());
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
    let credential = provider
        .authorize(&view)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(text(credential.header_value()).contains("escape"));
    let outside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        ["store"],
        "nothing written beside the store directory"
    );
    let files: Vec<String> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| !f.contains('/') && !f.contains("..") && !f.contains('\n')),
        "{files:?}"
    );
    assert!(!files.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// Held: nonce challenges from more origins than the nonce memory holds, answered on two
/// threads at once: every proof carries its own origin's nonce or none, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_nonce_challenges_from_many_origins_never_cross_origins() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    authorize_at(&provider, "/").await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let provider = provider.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    let host = format!("h{}.example", (t * 13 + n) % 40);
                    let ext = Extensions::new();
                    let view = RequestView::new(&Method::GET, "https", &host, "/", None, &ext);
                    let sent = provider.authorize(&view).await.unwrap();
                    let proof = claims(sent.extra_headers().unwrap()["dpop"].to_str().unwrap());
                    if let Some(nonce) = proof["nonce"].as_str() {
                        assert!(nonce.starts_with(&format!("{host}-")), "{nonce} for {host}");
                    }
                    let nonce = format!("{host}-{t}-{n}");
                    let answer = provider
                        .on_unauthorized(
                            &sent,
                            StatusCode::UNAUTHORIZED,
                            &challenge(r#"DPoP error="use_dpop_nonce""#, Some(&nonce)),
                        )
                        .await
                        .unwrap();
                    let Unauthorized::Retry(retry) = answer else {
                        panic!("{answer:?}")
                    };
                    let proof = claims(retry.extra_headers().unwrap()["dpop"].to_str().unwrap());
                    let got = proof["nonce"].as_str().unwrap();
                    assert!(got.starts_with(&format!("{host}-")), "{got} for {host}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(script.seen().len(), 1, "no token request for nonces");
}
