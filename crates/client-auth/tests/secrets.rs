//! No token, refresh token or client secret reaches a log line, an error or a `Debug` output,
//! whatever happens at the token endpoint. Output is captured at TRACE level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client_auth::{
    AuthorizationProvider, ManualClock, MemoryStore, OAuthProvider, RequestView, StaticToken,
};
use client_auth_testkit::{Fault, ServerConfig, TestServer};
use http::{Extensions, HeaderMap, Method, StatusCode};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_trace_logs_errors_or_debug_output_in_any_scenario() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let client_secret = "MARKER-CLIENT-SECRET-d41d8";
    let api_key = "MARKER-API-KEY-9f86d";
    let server = TestServer::start_with(
        ServerConfig::default()
            .client("marker-client", Some(client_secret))
            .api_key(api_key),
    )
    .await
    .unwrap();
    let grant = server.issue_grant("alice", None);
    let mut secrets = vec![
        client_secret.to_owned(),
        api_key.to_owned(),
        grant.access_token.clone(),
        grant.refresh_token.clone(),
    ];
    let mut printed = Vec::new();

    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id("marker-client")
        .client_secret(client_secret)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .store(store.clone(), "ns")
        .clock(Arc::new(clock.clone()))
        .timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .unwrap();
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);

    // Success paths: serve, refresh, 401 recovery.
    let first = provider.authorize(&view).await.unwrap();
    printed.push(format!("{first:?} {provider:?}"));
    provider.verify_session().await.unwrap();
    let token = provider.access_token().await.unwrap();
    secrets.push(token.expose_secret().to_owned());
    printed.push(format!("{token:?} {:?}", store.get("ns")));
    let retry = provider
        .on_unauthorized(&first, StatusCode::UNAUTHORIZED, &HeaderMap::new())
        .await
        .unwrap();
    printed.push(format!("{retry:?}"));
    let newest = provider.access_token().await.unwrap();
    secrets.push(newest.expose_secret().to_owned());
    if let Some(stored) = store.get("ns") {
        secrets.push(stored.refresh_token.unwrap().expose_secret().to_owned());
    }

    // Every fault class.
    let faults = [
        Fault::status(StatusCode::INTERNAL_SERVER_ERROR).body(format!("error near {}", grant.refresh_token)),
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).header("retry-after", "1"),
        Fault::status(StatusCode::TOO_MANY_REQUESTS),
        Fault::status(StatusCode::OK).body(format!("<html>{}</html>", grant.access_token)),
        Fault::status(StatusCode::OK).json(serde_json::json!({"access_token": grant.access_token, "token_type": "mac"})),
        Fault::status(StatusCode::OK).json(serde_json::json!({"access_token": grant.access_token, "token_type": "Bearer", "expires_in": -1})),
        Fault::status(StatusCode::TEMPORARY_REDIRECT).header("location", "https://elsewhere.example/token"),
        Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_scope"),
        Fault::oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
        Fault::hang(),
        Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
    ];
    for fault in faults {
        server.push_fault(fault);
        clock.advance(Duration::from_secs(10));
        let err = provider.verify_session().await.unwrap_err();
        printed.push(format!("{err} {err:?} {provider:?}"));
    }
    let err = provider.authorize(&view).await.unwrap_err();
    printed.push(format!("{err} {err:?}"));

    // Static keys.
    let key = StaticToken::api_key(api_key).unwrap();
    let cred = key.authorize(&view).await.unwrap();
    printed.push(format!("{key:?} {cred:?}"));

    for expected in [
        "HTTP 500",
        "HTTP 503",
        "HTTP 429",
        "not a JSON object",
        "not `Bearer`",
        "expires_in",
        "redirect",
        "invalid_scope",
        "invalid_client",
        "timed out",
        "invalid_grant",
    ] {
        assert!(
            printed.iter().any(|p| p.contains(expected)),
            "no error mentioned {expected}"
        );
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("client_auth.refresh"),
        "refresh spans were captured"
    );
    assert!(logs.contains("invalid_grant"), "the session end was logged");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        for p in &printed {
            assert!(!p.contains(secret.as_str()), "a secret reached {p}");
        }
    }
}
