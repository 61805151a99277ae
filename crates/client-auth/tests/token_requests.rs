//! Token requests beyond the two classic grants, against a scripted endpoint: answers in a
//! non-standard shape mapped by a hook, extra request headers, claims challenges, the JWT
//! bearer grant, token exchange and client assertions read from a source that rotates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use client_auth::{
    AssertionSource, AuthorizationProvider, BoxError, Credential, Error, InvalidResponse,
    MemoryStore, OAuthProvider, PerTargetProvider, RequestView, TokenTarget, TokenTransport,
    Unauthorized,
};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

#[path = "support/script.rs"]
mod script;

use script::Script;

const TOKEN_URL: &str = "https://auth.example.com/token";

async fn authorize(provider: &OAuthProvider) -> Credential {
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
    provider.authorize(&view).await.unwrap()
}

fn nested(answer: Value) -> Value {
    let data = &answer["data"];
    json!({
        "access_token": data["token"],
        "token_type": "Bearer",
        "expires_in": data["ttl"],
        "refresh_token": data["refresh"],
    })
}

#[tokio::test]
async fn a_mapped_answer_is_read_strictly_and_keeps_the_rotation_rule() {
    let script = Script::new();
    script.answer(
        200,
        &[],
        r#"{"data":{"token":"at-1","ttl":3600,"refresh":"rt-2"}}"#,
    );
    let provider = OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("svc")
        .refresh_token("rt-1")
        .map_token_response(nested)
        .token_request_header("x-gateway-key", "gw-SECRET")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    assert_eq!(authorize(&provider).await.header_value(), "Bearer at-1");
    let request = &script.seen()[0];
    assert_eq!(request.headers["x-gateway-key"], "gw-SECRET");
    assert!(request.headers["x-gateway-key"].is_sensitive());

    // The rotated refresh token from the mapped answer is the one sent next.
    script.answer(200, &[], r#"{"data":{"token":"at-2","ttl":3600}}"#);
    provider.verify_session().await.unwrap();
    assert_eq!(script.seen()[1].param("refresh_token"), Some("rt-2"));

    // A map that yields no token is the strict parser's error, without any answer text.
    script.answer(200, &[], r#"{"data":{"oops":"SECRET-VALUE"}}"#);
    let err = provider.verify_session().await.unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidResponse(InvalidResponse::MissingAccessToken)
    ));
    assert!(!format!("{err:?}{err}").contains("SECRET-VALUE"));
}

#[test]
fn an_invalid_token_request_header_is_a_config_error() {
    let result = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .token_request_header("bad header", "v")
        .transport(Script::new())
        .build();
    assert!(matches!(result, Err(Error::Config(_))));
}

fn claims_challenge(claims: &str) -> HeaderMap {
    let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
    let mut headers = HeaderMap::new();
    headers.insert(
        "www-authenticate",
        HeaderValue::from_str(&format!(
            r#"Bearer realm="", error="insufficient_claims", claims="{encoded}""#
        ))
        .unwrap(),
    );
    headers
}

#[tokio::test]
async fn a_claims_challenge_sends_its_claims_with_one_token_request_then_retries() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let first = authorize(&provider).await;
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;

    // Never accepted, yet the claims challenge is not held back by the 401 cooldown.
    script.token("Bearer", "at-2");
    let answer = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &claims_challenge(claims))
        .await
        .unwrap();

    let Unauthorized::Retry(retry) = answer else {
        panic!("a claims challenge is retried: {answer:?}")
    };
    assert_eq!(retry.header_value(), "Bearer at-2");
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].param("claims"), None);
    assert_eq!(seen[1].param("claims"), Some(claims));
    // Only that one token request carries them.
    script.token("Bearer", "at-3");
    provider.verify_session().await.unwrap();
    assert_eq!(script.seen()[2].param("claims"), None);
}

#[tokio::test]
async fn insufficient_scope_is_never_retried() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    let first = authorize(&provider).await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "www-authenticate",
        HeaderValue::from_static(r#"Bearer error="insufficient_scope", scope="admin""#),
    );
    let answer = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &headers)
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::GiveUp));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn the_jwt_bearer_grant_reads_its_assertion_afresh_for_every_token_request() {
    let script = Script::new();
    let reads = Arc::new(AtomicUsize::new(0));
    let source = {
        let reads = Arc::clone(&reads);
        AssertionSource::from_fn(move || {
            let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, BoxError>(format!("assertion-SECRET-{n}")) }
        })
    };
    let provider = OAuthProvider::jwt_bearer_grant(TOKEN_URL, source)
        .client_id("workload")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    script.token("Bearer", "at-1");
    authorize(&provider).await;
    script.token("Bearer", "at-2");
    provider.verify_session().await.unwrap();

    let seen = script.seen();
    assert_eq!(
        seen[0].param("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(seen[0].param("assertion"), Some("assertion-SECRET-1"));
    assert_eq!(seen[1].param("assertion"), Some("assertion-SECRET-2"));

    // An answer that echoes the assertion does not carry it into the error.
    script.answer(
        400,
        &[],
        r#"{"error":"invalid_grant","error_description":"bad assertion assertion-SECRET-3"}"#,
    );
    let err = provider.verify_session().await.unwrap_err();
    assert!(
        matches!(&err, Error::Rejected(e) if e.code() == "invalid_grant"),
        "{err:?}"
    );
    assert!(!format!("{err:?} {err}").contains("assertion-SECRET-3"));
}

#[tokio::test]
async fn token_exchange_trades_the_subject_token_from_a_rotating_file() {
    let dir = std::env::temp_dir().join(format!("client-auth-exchange-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "subject-1\n").unwrap();
    let script = Script::new();
    let provider = OAuthProvider::token_exchange(TOKEN_URL, AssertionSource::file(&path))
        .client_id("svc")
        .extra_param("audience", "https://api.example.com")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    script.token("Bearer", "at-1");
    authorize(&provider).await;
    std::fs::write(&path, "subject-2").unwrap();
    script.token("Bearer", "at-2");
    provider.verify_session().await.unwrap();

    let seen = script.seen();
    assert_eq!(
        seen[0].param("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(seen[0].param("subject_token"), Some("subject-1"));
    assert_eq!(
        seen[0].param("subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    assert_eq!(seen[0].param("audience"), Some("https://api.example.com"));
    assert_eq!(seen[1].param("subject_token"), Some("subject-2"), "re-read");

    // A missing file fails the token request; the provider keeps working once it is back.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        provider.verify_session().await,
        Err(Error::Callback(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_client_assertion_from_a_source_replaces_the_secret() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .client_assertion(AssertionSource::from_fn(|| async {
            Ok::<_, BoxError>("federated-token".to_owned())
        }))
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    authorize(&provider).await;

    let request = &script.seen()[0];
    assert_eq!(request.param("client_assertion"), Some("federated-token"));
    assert_eq!(
        request.param("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(request.param("grant_type"), Some("client_credentials"));
}

// ---- tokens per target --------------------------------------------------------------------

fn per_target(script: &Arc<Script>, max: usize) -> PerTargetProvider {
    let template = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .scope("read")
        .store(Arc::new(MemoryStore::new()), "svc")
        .transport(Arc::clone(script) as Arc<dyn TokenTransport>);
    PerTargetProvider::builder(template)
        .select(|request| TokenTarget::new().resource(format!("https://{}", request.authority())))
        .max_targets(max)
        .build()
        .unwrap()
}

async fn authorize_at(
    provider: &PerTargetProvider,
    authority: &str,
    ext: &Extensions,
) -> Credential {
    let view = RequestView::new(&Method::GET, "https", authority, "/", None, ext);
    provider.authorize(&view).await.unwrap()
}

/// Scripts `n` token answers, `at-0` to `at-{n-1}`.
fn answer_per_resource(script: &Script, n: usize) {
    for i in 0..n {
        script.token("Bearer", &format!("at-{i}"));
    }
}

#[tokio::test]
async fn each_target_gets_its_own_token_and_never_another_targets() {
    let script = Script::new();
    answer_per_resource(&script, 2);
    let provider = per_target(&script, 8);
    let none = Extensions::new();

    let a = authorize_at(&provider, "a.example.com", &none).await;
    let b = authorize_at(&provider, "b.example.com", &none).await;
    let a_again = authorize_at(&provider, "a.example.com", &none).await;

    assert_ne!(a.header_value(), b.header_value());
    assert_eq!(a.header_value(), a_again.header_value());
    let seen = script.seen();
    assert_eq!(seen.len(), 2, "one token request per target");
    assert_eq!(seen[0].param("resource"), Some("https://a.example.com"));
    assert_eq!(seen[1].param("resource"), Some("https://b.example.com"));
    assert_eq!(seen[0].param("scope"), Some("read"), "the template's scope");
}

#[tokio::test]
async fn many_callers_of_one_target_share_one_token_request() {
    let script = Script::new();
    answer_per_resource(&script, 1);
    let provider = per_target(&script, 8);
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move {
                authorize_at(&provider, "a.example.com", &Extensions::new())
                    .await
                    .header_value()
                    .clone()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "Bearer at-0");
    }
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn a_401_refreshes_only_the_target_it_came_from() {
    let script = Script::new();
    answer_per_resource(&script, 2);
    let provider = per_target(&script, 8);
    let none = Extensions::new();
    let a = authorize_at(&provider, "a.example.com", &none).await;
    let b = authorize_at(&provider, "b.example.com", &none).await;
    provider.on_accepted(&a);

    script.token("Bearer", "at-a2");
    let answer = provider
        .on_unauthorized(&a, StatusCode::UNAUTHORIZED, &HeaderMap::new())
        .await
        .unwrap();

    let Unauthorized::Retry(retry) = answer else {
        panic!("retried: {answer:?}")
    };
    assert_eq!(retry.header_value(), "Bearer at-a2");
    assert_eq!(
        script.seen()[2].param("resource"),
        Some("https://a.example.com")
    );
    assert_eq!(
        authorize_at(&provider, "b.example.com", &none)
            .await
            .header_value(),
        b.header_value()
    );
    assert_eq!(
        authorize_at(&provider, "a.example.com", &none)
            .await
            .header_value(),
        "Bearer at-a2"
    );
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn a_target_in_the_extensions_wins_and_the_least_recently_used_target_is_dropped() {
    let script = Script::new();
    answer_per_resource(&script, 4);
    let provider = per_target(&script, 1);
    let mut ext = Extensions::new();
    ext.insert(TokenTarget::new().audience("billing"));

    let chosen = authorize_at(&provider, "a.example.com", &ext).await;
    assert_eq!(script.seen()[0].param("audience"), Some("billing"));
    assert_eq!(script.seen()[0].param("resource"), None);

    // Holding one target: the next one drops it, and its old credential's 401 stays a 401.
    authorize_at(&provider, "b.example.com", &Extensions::new()).await;
    let answer = provider
        .on_unauthorized(&chosen, StatusCode::UNAUTHORIZED, &HeaderMap::new())
        .await
        .unwrap();
    assert!(matches!(answer, Unauthorized::GiveUp), "{answer:?}");
    // Asked again, the dropped target starts over; its store entry still holds its token.
    let again = authorize_at(&provider, "a.example.com", &ext).await;
    assert_eq!(again.header_value(), chosen.header_value());
    assert_eq!(script.seen().len(), 2);
}

#[test]
fn tokens_per_target_refuse_a_refresh_token_grant() {
    let template = OAuthProvider::refresh_token_grant(TOKEN_URL)
        .client_id("svc")
        .transport(Script::new());
    assert!(matches!(
        PerTargetProvider::builder(template).build(),
        Err(Error::Config(_))
    ));
}
