//! DPoP, discovery and JWT client authentication at the provider level, against a scripted
//! endpoint that records every request: what the token endpoint and the resource receive, and
//! what each kind of 401 costs (token calls, retries). Expiry moves with a `ManualClock`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use client_auth::{
    AuthorizationProvider, ClientAssertionKey, ClientAuth, Clock, Credential, DpopKey, Error,
    ManualClock, MemoryStore, OAuthProvider, RequestView, ServerMetadata, StoredTokens, TokenStore,
    TokenTransport, Unauthorized,
};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};

const TOKEN_URL: &str = "https://auth.example.com/token";
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
-----END PRIVATE KEY-----";

#[path = "support/script.rs"]
mod script;

use script::{Script, claims};

fn dpop_provider(script: &Arc<Script>, key: &DpopKey, clock: &ManualClock) -> OAuthProvider {
    OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .client_secret("cs-SECRET")
        .dpop(key.clone())
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .transport(Arc::clone(script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap()
}

async fn authorize(provider: &OAuthProvider, method: &Method, path: &str) -> Credential {
    let ext = Extensions::new();
    let view = RequestView::new(method, "https", "api.example.com", path, Some("q=1"), &ext);
    provider.authorize(&view).await.unwrap()
}

fn unauthorized(challenge: &str, nonce: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "www-authenticate",
        HeaderValue::from_str(challenge).unwrap(),
    );
    if let Some(nonce) = nonce {
        headers.insert("dpop-nonce", HeaderValue::from_str(nonce).unwrap());
    }
    headers
}

fn ath(token: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token))
}

#[tokio::test]
async fn a_dpop_provider_proves_its_token_requests_and_binds_each_resource_request() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let key = DpopKey::generate().unwrap();
    let provider = dpop_provider(&script, &key, &ManualClock::new());

    let credential = authorize(&provider, &Method::POST, "/v1/orders").await;

    assert_eq!(credential.header_value(), "DPoP at-1");
    let proof = credential.extra_headers().unwrap().get("dpop").unwrap();
    assert!(proof.is_sensitive());
    let resource = claims(proof.to_str().unwrap());
    assert_eq!(resource["htm"], "POST");
    assert_eq!(
        resource["htu"], "https://api.example.com/v1/orders",
        "no query"
    );
    assert_eq!(resource["ath"], ath("at-1"));
    let token_request = &script.seen()[0];
    let at_token_endpoint = token_request.dpop_claims();
    assert_eq!(at_token_endpoint["htm"], "POST");
    assert_eq!(at_token_endpoint["htu"], TOKEN_URL);
    assert!(at_token_endpoint.get("ath").is_none());
    // Every request gets its own proof.
    let again = authorize(&provider, &Method::POST, "/v1/orders").await;
    let again = claims(again.extra_headers().unwrap()["dpop"].to_str().unwrap());
    assert_ne!(again["jti"], resource["jti"]);
    assert_eq!(script.seen().len(), 1, "one token request for both");
}

#[tokio::test]
async fn the_token_endpoint_nonce_is_retried_once_and_remembered() {
    let script = Script::new();
    script.answer(
        400,
        &[("dpop-nonce", "n-1")],
        r#"{"error":"use_dpop_nonce"}"#,
    );
    script.token("DPoP", "at-1");
    let key = DpopKey::generate().unwrap();
    let clock = ManualClock::new();
    let provider = dpop_provider(&script, &key, &clock);

    provider.access_token().await.unwrap();

    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].dpop_claims().get("nonce").is_none());
    assert_eq!(seen[1].dpop_claims()["nonce"], "n-1");
    // The next token request carries the remembered nonce from the start.
    script.token("DPoP", "at-2");
    clock.advance(Duration::from_secs(3600));
    provider.access_token().await.unwrap();
    assert_eq!(script.seen()[2].dpop_claims()["nonce"], "n-1");
}

#[tokio::test]
async fn a_token_endpoint_asking_for_a_nonce_twice_is_not_asked_a_third_time() {
    let script = Script::new();
    script.answer(
        400,
        &[("dpop-nonce", "n-1")],
        r#"{"error":"use_dpop_nonce"}"#,
    );
    script.answer(
        400,
        &[("dpop-nonce", "n-2")],
        r#"{"error":"use_dpop_nonce"}"#,
    );
    let key = DpopKey::generate().unwrap();
    let provider = dpop_provider(&script, &key, &ManualClock::new());

    let err = provider.access_token().await.unwrap_err();

    assert!(
        matches!(&err, Error::Rejected(e) if e.code() == "use_dpop_nonce"),
        "{err:?}"
    );
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn a_resource_nonce_401_retries_with_the_nonce_without_a_token_call() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let key = DpopKey::generate().unwrap();
    let provider = dpop_provider(&script, &key, &ManualClock::new());
    let first = authorize(&provider, &Method::GET, "/v1/me").await;

    let challenge = unauthorized(r#"DPoP error="use_dpop_nonce""#, Some("rn-1"));
    let answer = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &challenge)
        .await
        .unwrap();

    let Unauthorized::Retry(retry) = answer else {
        panic!("a nonce 401 is retried: {answer:?}")
    };
    assert_eq!(retry.header_value(), "DPoP at-1", "the same token");
    assert_eq!(retry.generation(), first.generation());
    let proof = claims(retry.extra_headers().unwrap()["dpop"].to_str().unwrap());
    assert_eq!(proof["nonce"], "rn-1");
    assert_eq!(proof["htm"], "GET");
    assert_eq!(proof["htu"], "https://api.example.com/v1/me");
    assert_eq!(script.seen().len(), 1, "no token call for a nonce");
    // Later requests to that origin carry the nonce from the start.
    let next = authorize(&provider, &Method::GET, "/v1/other").await;
    assert_eq!(
        claims(next.extra_headers().unwrap()["dpop"].to_str().unwrap())["nonce"],
        "rn-1"
    );
    // Nonce 401s do not feed the 401 cooldown: a real 401 right after still refreshes at once.
    script.token("DPoP", "at-2");
    let revoked = provider
        .on_unauthorized(
            &next,
            StatusCode::UNAUTHORIZED,
            &unauthorized(r#"DPoP error="invalid_token""#, None),
        )
        .await
        .unwrap();
    let Unauthorized::Retry(fresh) = revoked else {
        panic!("an invalid_token 401 refreshes: {revoked:?}")
    };
    assert_eq!(fresh.header_value(), "DPoP at-2");
    let proof = claims(fresh.extra_headers().unwrap()["dpop"].to_str().unwrap());
    assert_eq!(
        proof["htu"], "https://api.example.com/v1/other",
        "bound to the same request"
    );
    assert_eq!(proof["ath"], ath("at-2"));
}

#[tokio::test]
async fn a_nonce_401_without_a_usable_nonce_and_a_rejected_proof_are_returned_unchanged() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let key = DpopKey::generate().unwrap();
    let provider = dpop_provider(&script, &key, &ManualClock::new());
    let credential = authorize(&provider, &Method::GET, "/").await;

    for headers in [
        unauthorized(r#"DPoP error="use_dpop_nonce""#, None),
        unauthorized(r#"DPoP error="invalid_dpop_proof""#, Some("n")),
    ] {
        let answer = provider
            .on_unauthorized(&credential, StatusCode::UNAUTHORIZED, &headers)
            .await
            .unwrap();
        assert!(matches!(answer, Unauthorized::GiveUp), "{answer:?}");
    }
    assert_eq!(script.seen().len(), 1, "no token call");
}

#[tokio::test]
async fn a_bearer_answer_to_a_dpop_provider_is_sent_as_bearer_without_proofs() {
    let script = Script::new();
    script.token("Bearer", "at-plain");
    let key = DpopKey::generate().unwrap();
    let provider = dpop_provider(&script, &key, &ManualClock::new());

    let credential = authorize(&provider, &Method::GET, "/").await;

    assert_eq!(credential.header_value(), "Bearer at-plain");
    assert!(credential.extra_headers().is_none());
}

#[tokio::test]
async fn a_dpop_token_type_without_a_key_is_refused() {
    let script = Script::new();
    script.token("DPoP", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    let err = provider.access_token().await.unwrap_err();

    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
}

#[tokio::test]
async fn a_stored_dpop_token_is_adopted_only_with_the_key_it_is_bound_to() {
    let store = Arc::new(MemoryStore::new());
    let key = DpopKey::generate().unwrap();
    let clock = ManualClock::new();
    let stored = |jkt: &str| StoredTokens {
        access_token: Some("at-stored".into()),
        expires_at: Clock::unix_now(&clock).checked_add(Duration::from_secs(3600)),
        dpop_jkt: Some(jkt.to_owned()),
        ..StoredTokens::default()
    };
    let provider = |script: &Arc<Script>| {
        OAuthProvider::client_credentials(TOKEN_URL)
            .client_id("svc")
            .dpop(key.clone())
            .clock(Arc::new(clock.clone()))
            .store(Arc::clone(&store) as Arc<dyn TokenStore>, "ns")
            .transport(Arc::clone(script) as Arc<dyn TokenTransport>)
            .build()
            .unwrap()
    };

    // Bound to this key: adopted, no token call.
    store.save("ns", &stored(key.thumbprint())).await.unwrap();
    let script = Script::new();
    let credential = authorize(&provider(&script), &Method::GET, "/").await;
    assert_eq!(credential.header_value(), "DPoP at-stored");
    assert!(script.seen().is_empty());

    // Bound to another key: this process asks for its own token.
    store.save("ns", &stored("another-key")).await.unwrap();
    let script = Script::new();
    script.token("DPoP", "at-own");
    let credential = authorize(&provider(&script), &Method::GET, "/").await;
    assert_eq!(credential.header_value(), "DPoP at-own");
    let saved = store.load("ns").await.unwrap().unwrap();
    assert_eq!(saved.dpop_jkt.as_deref(), Some(key.thumbprint()));
}

#[tokio::test]
async fn private_key_jwt_sends_a_signed_assertion_and_never_a_secret() {
    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = OAuthProvider::client_credentials(TOKEN_URL)
        .client_id("svc")
        .private_key_jwt(
            ClientAssertionKey::es256_pem(EC_PEM.as_bytes())
                .unwrap()
                .key_id("k1"),
        )
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();

    provider.access_token().await.unwrap();

    let request = &script.seen()[0];
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(
        request.param("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let assertion = claims(request.param("client_assertion").unwrap());
    assert_eq!(assertion["iss"], "svc");
    assert_eq!(assertion["sub"], "svc");
    assert_eq!(
        assertion["aud"], TOKEN_URL,
        "the token URL without discovery"
    );
    assert!(request.param("client_secret").is_none());
}

#[tokio::test]
async fn client_secret_jwt_needs_a_secret_and_keeps_it_off_the_wire() {
    let build = |secret: Option<&str>| {
        let mut builder = OAuthProvider::client_credentials(TOKEN_URL)
            .client_id("svc")
            .client_auth(ClientAuth::SecretJwt);
        if let Some(secret) = secret {
            builder = builder.client_secret(secret);
        }
        builder
    };
    assert!(matches!(
        build(None).transport(Script::new()).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        OAuthProvider::client_credentials(TOKEN_URL)
            .client_id("svc")
            .client_auth(ClientAuth::PrivateKeyJwt)
            .transport(Script::new())
            .build(),
        Err(Error::Config(_))
    ));

    let script = Script::new();
    script.token("Bearer", "at-1");
    let provider = build(Some("cs-SECRET-VALUE"))
        .assertion_audience("https://auth.example.com")
        .transport(Arc::clone(&script) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    provider.access_token().await.unwrap();
    let request = &script.seen()[0];
    let body: String = request
        .form
        .iter()
        .map(|(k, v)| format!("{k}={v}&"))
        .collect();
    assert!(!body.contains("cs-SECRET-VALUE"));
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(
        claims(request.param("client_assertion").unwrap())["aud"],
        "https://auth.example.com"
    );
}

fn metadata(issuer: &str) -> String {
    format!(
        r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/oauth/token","revocation_endpoint":"{issuer}/oauth/revoke","token_endpoint_auth_methods_supported":["client_secret_post","private_key_jwt"],"dpop_signing_alg_values_supported":["ES256"]}}"#
    )
}

#[tokio::test]
async fn discovery_falls_back_to_rfc_8414_and_takes_the_endpoints_and_methods() {
    let issuer = "https://auth.example.com/tenant-1";
    let script = Script::new();
    script.answer(404, &[], "");
    script.answer(200, &[], &metadata(issuer));

    let found = ServerMetadata::discover_with(issuer, script.clone(), false)
        .await
        .unwrap();

    let seen = script.seen();
    assert_eq!(seen[0].path, "/tenant-1/.well-known/openid-configuration");
    assert_eq!(
        seen[1].path,
        "/.well-known/oauth-authorization-server/tenant-1"
    );
    assert_eq!(found.issuer(), issuer);
    assert_eq!(found.token_endpoint(), format!("{issuer}/oauth/token"));
    assert_eq!(found.dpop_signing_algs(), ["ES256"]);

    // The builder from it: client_secret_post (the server takes no basic), the endpoint from
    // the metadata, and the issuer as the audience of assertions.
    let tokens = Script::new();
    tokens.token("Bearer", "at-1");
    let provider = found
        .client_credentials()
        .client_id("svc")
        .client_secret("cs")
        .transport(Arc::clone(&tokens) as Arc<dyn TokenTransport>)
        .build()
        .unwrap();
    provider.access_token().await.unwrap();
    let request = &tokens.seen()[0];
    assert_eq!(request.path, "/tenant-1/oauth/token");
    assert_eq!(request.param("client_secret"), Some("cs"));

    let assertions = Script::new();
    assertions.token("Bearer", "at-1");
    found
        .client_credentials()
        .client_id("svc")
        .private_key_jwt(ClientAssertionKey::es256_pem(EC_PEM.as_bytes()).unwrap())
        .transport(Arc::clone(&assertions) as Arc<dyn TokenTransport>)
        .build()
        .unwrap()
        .access_token()
        .await
        .unwrap();
    let assertion = claims(assertions.seen()[0].param("client_assertion").unwrap());
    assert_eq!(assertion["aud"], issuer);
}

#[tokio::test]
async fn discovery_refuses_a_mixed_up_issuer_a_redirect_and_plain_http() {
    let script = Script::new();
    script.answer(200, &[], &metadata("https://evil.example.com"));
    let err = ServerMetadata::discover_with("https://auth.example.com", script, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("another issuer")),
        "{err}"
    );

    let script = Script::new();
    script.answer(302, &[("location", "https://evil.example.com/")], "");
    let err = ServerMetadata::discover_with("https://auth.example.com", script, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Redirect { .. }), "{err:?}");

    let err = ServerMetadata::discover_with("http://auth.example.com", Script::new(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("plain http")),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_without_es256_dpop_refuses_the_provider_at_build() {
    let issuer = "https://auth.example.com";
    let script = Script::new();
    script.answer(
        200,
        &[],
        &format!(
            r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token","dpop_signing_alg_values_supported":["EdDSA"]}}"#
        ),
    );
    let found = ServerMetadata::discover_with(issuer, script, false)
        .await
        .unwrap();
    let result = found
        .client_credentials()
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Script::new())
        .build();
    assert!(matches!(result, Err(Error::Config(_))));
}
