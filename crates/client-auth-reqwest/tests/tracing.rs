//! What the middleware logs: the skipped retry of a body that cannot be cloned is an event, and
//! nothing at any level ever contains a token or the client secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{ManualClock, OAuthProvider};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_reqwest::reqwest_middleware::{ClientBuilder, reqwest};
use client_auth_testkit::TestServer;
use http::StatusCode;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Current-thread runtime: the subscriber set for this thread sees every task of the test,
// the spawned refresh included.
#[tokio::test]
async fn a_skipped_retry_is_logged_and_no_secret_is_ever_logged_at_trace() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await.unwrap();
    let grant = server.issue_grant("alice", None);
    let secret = server.client_secret().unwrap();
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(secret.as_str())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(60)))
        .clock(Arc::new(ManualClock::new()))
        .build()
        .unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(provider)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()
                .unwrap(),
        )
        .build();
    server.revoke_access_token(&grant.access_token);

    // A body that cannot be cloned: sent once, its 401 returned, and an event says why.
    let body = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from_static(b"x")));
    let streamed = client
        .post(server.url("/api/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::UNAUTHORIZED);
    assert!(
        captured.text().contains("could not be cloned"),
        "{}",
        captured.text()
    );

    // A cloneable one: refreshed and retried, and the retry is logged.
    let retried = client.get(server.resource_url()).send().await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let text = captured.text();
    assert!(text.contains("retrying once"), "{text}");

    let mut secrets = vec![
        grant.access_token.clone(),
        grant.refresh_token.clone(),
        secret,
    ];
    for seen in server.seen_requests() {
        let value = seen.authorization.unwrap();
        secrets.push(value.trim_start_matches("Bearer ").to_owned());
    }
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret was logged:\n{text}");
    }
}

#[tokio::test]
async fn a_caller_set_authorization_to_an_allowed_origin_is_kept_with_a_debug_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await.unwrap();
    let provider = client_auth::StaticToken::api_key("our-key").unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthorizationMiddleware::builder(provider)
                .allow_origin(server.base_url())
                .allow_http(true)
                .build()
                .unwrap(),
        )
        .build();

    let response = client
        .get(server.resource_url())
        .header(http::header::AUTHORIZATION, "Bearer the-callers-own")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let seen: Vec<_> = server
        .seen_requests()
        .into_iter()
        .map(|s| s.authorization)
        .collect();
    assert_eq!(seen, [Some("Bearer the-callers-own".to_owned())]);
    let text = captured.text();
    assert!(
        text.contains("DEBUG") && text.contains("the caller set Authorization"),
        "{text}"
    );
    assert!(
        !text.contains("the-callers-own"),
        "the value is not logged: {text}"
    );
}
