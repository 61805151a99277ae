//! Third review, secrets: a TRACE capture of today's features end to end through both adapters
//! (DPoP with both nonce challenges, `client_secret_post` with a gateway header,
//! `private_key_jwt`, `client_secret_jwt`, a claims challenge, the JWT bearer grant, token
//! exchange with a client assertion from a source, and a refused client) against a loopback
//! host. A test binary of its own with one test and a process-wide subscriber (callsite
//! interest is cached process-wide, so a scoped subscriber misses events of parallel tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod tls;

#[path = "support/recording_host.rs"]
mod recording_host;

use std::collections::{BTreeSet, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use client_auth::{
    AssertionSource, BoxError, ClientAssertionKey, ClientAuth, DpopKey, OAuthProvider,
    OAuthProviderBuilder, OriginPolicy, ReqwestTransport,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_tower::AuthorizeLayer;
use http::Request;
use http_body_util::{BodyExt, Full};
use recording_host::{Host, Reply, Seen, json};
use tower::{Layer, ServiceExt};

const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
-----END PRIVATE KEY-----";
const CLAIMS: &str = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The server side: a token endpoint that asks DPoP clients for a nonce, a DPoP resource that
/// asks for its own, a resource that sends a claims challenge until the token was asked with
/// the claims, and a plain resource.
#[derive(Default)]
struct Server {
    issued: usize,
    with_claims: HashSet<String>,
    tokens: BTreeSet<String>,
}

fn handle(server: &Mutex<Server>, seen: &Seen) -> Reply {
    let mut server = server.lock().unwrap();
    let nonce = seen
        .dpop_claims()
        .and_then(|c| c["nonce"].as_str().map(str::to_owned));
    let token = seen
        .header("authorization")
        .and_then(|a| a.split_once(' '))
        .map(|(_, t)| t.to_owned());
    match seen.path() {
        "/token" => {
            if seen.param("client_id").as_deref() == Some("refused") {
                return json(400, &serde_json::json!({ "error": "invalid_client" }));
            }
            let dpop = seen.header("dpop").is_some();
            if dpop && nonce.as_deref() != Some("AS-NONCE-1") {
                let mut reply = json(400, &serde_json::json!({ "error": "use_dpop_nonce" }));
                reply
                    .1
                    .push(("DPoP-Nonce".to_owned(), "AS-NONCE-1".to_owned()));
                return reply;
            }
            server.issued += 1;
            let kind = if dpop { "DPOP" } else { "BEARER" };
            let salt = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                server.issued,
            );
            let token = format!("at_{kind}_MARKER_{:04}_{salt:016x}", server.issued);
            if seen.param("claims").as_deref() == Some(CLAIMS) {
                server.with_claims.insert(token.clone());
            }
            server.tokens.insert(token.clone());
            json(
                200,
                &serde_json::json!({
                    "access_token": token,
                    "token_type": if dpop { "DPoP" } else { "Bearer" },
                    "expires_in": 3600,
                }),
            )
        }
        "/dpop-api" if nonce.as_deref() != Some("RS-NONCE-1") => (
            401,
            vec![
                (
                    "WWW-Authenticate".to_owned(),
                    r#"DPoP error="use_dpop_nonce""#.to_owned(),
                ),
                ("DPoP-Nonce".to_owned(), "RS-NONCE-1".to_owned()),
            ],
            String::new(),
        ),
        "/claims-api" if !token.is_some_and(|t| server.with_claims.contains(&t)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(CLAIMS);
            (
                401,
                vec![(
                    "WWW-Authenticate".to_owned(),
                    format!(r#"Bearer realm="", error="insufficient_claims", claims="{encoded}""#),
                )],
                String::new(),
            )
        }
        _ => (200, vec![], "ok".to_owned()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Adapter {
    Tower,
    Reqwest,
}

async fn get(adapter: Adapter, provider: OAuthProvider, origin: &str, url: &str) -> u16 {
    let origins = OriginPolicy::builder()
        .allow_origin(origin)
        .allow_http(true)
        .build()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), async {
        match adapter {
            Adapter::Tower => {
                let service = AuthorizeLayer::new(provider, origins)
                    .layer(tls::hyper_client::<Full<Bytes>>());
                let request = Request::get(url).body(Full::default()).unwrap();
                let response = service.oneshot(request).await;
                match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.into_body().collect().await;
                        status
                    }
                    Err(_) => 0,
                }
            }
            Adapter::Reqwest => {
                let client = reqwest_middleware::ClientBuilder::new(
                    reqwest::Client::builder().no_proxy().build().unwrap(),
                )
                .with(AuthorizationMiddleware::new(provider, origins))
                .build();
                match client.get(url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                }
            }
        }
    })
    .await
    .unwrap()
}

/// Holds: everything at TRACE (spans with their fields; client-auth, both adapters, hyper,
/// reqwest) on today's paths holds none of: the client secrets, the gateway key, the JWT bearer
/// assertion, the subject token, the client assertion from a source, the signed client
/// assertions the server received, the `Authorization` values it received, the tokens it
/// issued, the DPoP and client-assertion private key.
#[test]
fn a_trace_capture_of_todays_features_holds_no_secret() {
    let capture = Capture::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .finish(),
    );
    tracing::dispatcher::set_global_default(dispatch).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    let markers = [
        "cs_POST_MARKER_0123456789",
        "cs_BASIC_MARKER_0123456789",
        "cs_JWT_MARKER_0123456789",
        "cs_REFUSED_MARKER_0123456789",
        "gw_KEY_MARKER_0123456789",
        "assertion_MARKER_0123456789",
        "subject_MARKER_0123456789",
        "client_assertion_MARKER_0123456789",
    ];
    secrets.extend(markers.iter().map(|m| (*m).to_owned()));
    for line in EC_PEM.lines().filter(|l| !l.starts_with("-----")) {
        secrets.insert(line.to_owned());
    }
    let mut statuses = Vec::new();
    let mut server_side = Vec::new();
    let issued = runtime.block_on(async {
        let server = Arc::new(Mutex::new(Server::default()));
        let host = Host::start({
            let server = Arc::clone(&server);
            move |seen| handle(&server, seen)
        })
        .await;
        let origin = host.origin("127.0.0.1");
        let token_url = host.url("127.0.0.1", "/token");
        let transport = || {
            Arc::new(
                ReqwestTransport::from_client_builder(reqwest::Client::builder().no_proxy())
                    .unwrap(),
            )
        };
        let key = ClientAssertionKey::es256_pem(EC_PEM.as_bytes()).unwrap();
        let source = |text: &'static str| {
            AssertionSource::from_fn(move || async move { Ok::<_, BoxError>(text.to_owned()) })
        };
        for adapter in [Adapter::Tower, Adapter::Reqwest] {
            let cc = || OAuthProvider::client_credentials(token_url.clone());
            let scenarios: Vec<(&str, OAuthProviderBuilder, &str)> = vec![
                (
                    "dpop + client_secret_post + gateway header",
                    cc().client_id("svc-post")
                        .client_secret(markers[0])
                        .client_auth(ClientAuth::SecretPost)
                        .token_request_header("x-gateway-key", markers[4])
                        .dpop(DpopKey::from_pkcs8_pem(EC_PEM).unwrap()),
                    "/dpop-api",
                ),
                (
                    "dpop + private_key_jwt",
                    cc().client_id("svc-pkjwt")
                        .private_key_jwt(key.clone())
                        .dpop(DpopKey::generate().unwrap()),
                    "/dpop-api",
                ),
                (
                    "client_secret_jwt",
                    cc().client_id("svc-csjwt")
                        .client_secret(markers[2])
                        .client_auth(ClientAuth::SecretJwt),
                    "/api",
                ),
                (
                    "claims challenge, client_secret_basic",
                    cc().client_id("svc-basic").client_secret(markers[1]),
                    "/claims-api",
                ),
                (
                    "jwt bearer grant",
                    OAuthProvider::jwt_bearer_grant(token_url.clone(), source(markers[5]))
                        .client_id("workload"),
                    "/api",
                ),
                (
                    "token exchange + client assertion from a source",
                    OAuthProvider::token_exchange(token_url.clone(), source(markers[6]))
                        .client_id("exchanger")
                        .client_assertion(source(markers[7])),
                    "/api",
                ),
                (
                    "refused client",
                    cc().client_id("refused")
                        .client_secret(markers[3])
                        .client_auth(ClientAuth::SecretPost),
                    "/api",
                ),
            ];
            for (what, builder, path) in scenarios {
                let provider = builder.transport(transport()).build().unwrap();
                let status = get(adapter, provider, &origin, &host.url("127.0.0.1", path)).await;
                statuses.push(format!("{adapter:?} {what}: {status}"));
            }
        }
        server_side = host.seen();
        // Let background work finish inside the runtime.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(host);
        server.lock().unwrap().tokens.clone()
    });
    drop(runtime);
    secrets.extend(issued);
    for request in &server_side {
        for name in [
            "client_secret",
            "client_assertion",
            "assertion",
            "subject_token",
        ] {
            if let Some(value) = request.param(name) {
                secrets.insert(value);
            }
        }
        if let Some(auth) = request.header("authorization") {
            secrets.insert(auth.to_owned());
            if let Some((_, credential)) = auth.split_once(' ') {
                secrets.insert(credential.to_owned());
            }
        }
    }
    let expected = [200, 200, 200, 200, 200, 200, 0];
    for (i, status) in statuses.iter().enumerate() {
        let want = expected[i % expected.len()];
        assert!(
            status.ends_with(&format!(": {want}")) || (want == 0 && !status.ends_with(": 200")),
            "{statuses:#?}"
        );
    }
    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    if std::env::var_os("REVIEW3_DUMP").is_some() {
        let _ = writeln!(std::io::stderr(), "{log}");
    }
    assert!(
        log.contains("client_auth.refresh") && log.contains("TRACE"),
        "the capture saw the refresh spans and TRACE events ({} bytes of log)",
        log.len()
    );
    let leaked: Vec<_> = secrets
        .iter()
        .filter(|s| s.len() >= 8 && log.contains(s.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "secrets in the TRACE capture: {leaked:?} ({} secrets checked, {} bytes of log)",
        secrets.len(),
        log.len()
    );
}
