//! octocrab with `AuthorizeLayer`, against the testkit's OAuth server and protected API over
//! loopback sockets. octocrab sends relative URIs (`/user`) and makes them absolute in its own
//! `BaseUriLayer`; its body, `OctoBody`, is `Clone` but shares its bytes between clones.
//! Token expiry moves with a `ManualClock`; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client_auth::{ManualClock, OAuthProvider};
use client_auth_testkit::{IssuedTokens, TestServer};
use client_auth_tower::{AuthorizeLayer, CloneEmptyBody, CloneRequestBody};
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::{AuthState, OctoBody, Octocrab, OctocrabBuilder};
use serde_json::{Value, json};

type Hyper = Client<HttpConnector, OctoBody>;

fn hyper_client() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A provider holding a valid access token (an hour left on `clock`) and its refresh token.
fn logged_in(server: &TestServer, clock: &ManualClock) -> (OAuthProvider, IssuedTokens) {
    let grant = server.issue_grant("octocat", None);
    let provider = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(3600)))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    (provider, grant)
}

/// octocrab's base URI: the testkit's protected API lives under `/api`.
fn base_uri(server: &TestServer) -> BaseUriLayer {
    BaseUriLayer::new(Uri::try_from(server.url("/api")).unwrap())
}

/// The body hook for octocrab: `OctoBody::try_clone` copies a buffered body (every JSON body
/// octocrab builds) deeply; a request without a body gets a new empty one.
fn copy_octo_body(body: &OctoBody) -> Option<OctoBody> {
    body.try_clone().or_else(|| CloneEmptyBody.clone_body(body))
}

fn seen_authorizations(server: &TestServer) -> Vec<Option<String>> {
    server
        .seen_requests()
        .into_iter()
        .map(|s| s.authorization)
        .collect()
}

/// octocrab with `AuthorizeLayer` inside its base-URI layer (added first: octocrab's
/// `with_layer` wraps the stack built so far), so the layer sees absolute URIs.
fn octocrab_inside_base_uri(server: &TestServer, provider: OAuthProvider) -> Octocrab {
    let authorize = AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .clone_body_with(copy_octo_body)
        .build()
        .unwrap();
    OctocrabBuilder::new_empty()
        .with_service(hyper_client())
        .with_layer(&authorize)
        .with_layer(&base_uri(server))
        .with_auth(AuthState::None)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_and_the_octocrab_request_retried_once() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let octocrab = octocrab_inside_base_uri(&server, provider);
    server.revoke_access_token(&grant.access_token);

    let user: Value = octocrab.get("/user", None::<&()>).await.unwrap();

    assert_eq!(user["ok"], true);
    assert_eq!(user["path"], "/api/user");
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.resource_calls.get(&401), Some(&1));
    assert_eq!(stats.resource_calls.get(&200), Some(&1));
    let seen = seen_authorizations(&server);
    assert_eq!(seen[0], Some(format!("Bearer {}", grant.access_token)));
    assert_ne!(seen[1], seen[0], "the retry carries the refreshed token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_octocrab_post_body_is_sent_whole_again_on_the_retry() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let octocrab = octocrab_inside_base_uri(&server, provider);
    server.revoke_access_token(&grant.access_token);

    let issue = json!({ "title": "hello" });
    let echoed: Value = octocrab.post("/echo", Some(&issue)).await.unwrap();

    assert_eq!(echoed["body"], issue.to_string(), "the retry's body");
    assert_eq!(server.seen_requests().len(), 2);
    assert_eq!(server.stats().refresh_grants, 1);
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

// Current-thread runtime: the subscriber set for this thread sees the whole request.
#[tokio::test]
async fn with_the_default_hook_octocrabs_shared_body_is_not_resent_drained() {
    let capture = Capture::default();
    let _guard = capture.install();
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    // `OctoBody: Clone`, so the default `CloneBody` compiles; its clone shares the bytes.
    let authorize = AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .build()
        .unwrap();
    let octocrab = OctocrabBuilder::new_empty()
        .with_service(hyper_client())
        .with_layer(&authorize)
        .with_layer(&base_uri(&server))
        .with_auth(AuthState::None)
        .build()
        .unwrap();
    server.revoke_access_token(&grant.access_token);

    let result: octocrab::Result<Value> = octocrab
        .post("/echo", Some(&json!({ "title": "hello" })))
        .await;

    assert!(result.is_err(), "the 401 comes back: {result:?}");
    assert_eq!(
        server.seen_requests().len(),
        1,
        "no retry with an empty body"
    );
    assert_eq!(server.stats().token_calls, 0);
    let logs = capture.text();
    assert!(logs.contains("401 not retried"), "{logs}");
}

#[tokio::test]
async fn outside_octocrabs_base_uri_layer_a_relative_uri_gets_no_credential_and_a_warning() {
    let capture = Capture::default();
    let _guard = capture.install();
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, _grant) = logged_in(&server, &clock);
    let authorize = AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .clone_body_with(copy_octo_body)
        .build()
        .unwrap();
    // The wrong order: AuthorizeLayer added last is the outermost, and sees `/user`.
    let octocrab = OctocrabBuilder::new_empty()
        .with_service(hyper_client())
        .with_layer(&base_uri(&server))
        .with_layer(&authorize)
        .with_auth(AuthState::None)
        .build()
        .unwrap();

    let result: octocrab::Result<Value> = octocrab.get("/user", None::<&()>).await;

    assert!(result.is_err(), "a 401: {result:?}");
    assert_eq!(seen_authorizations(&server), [None]);
    assert!(
        capture.text().contains("relative URI"),
        "{}",
        capture.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_octocrabs_base_uri_layer_relative_uris_resolve_against_the_named_origin() {
    let server = TestServer::start().await.unwrap();
    let clock = ManualClock::new();
    let (provider, grant) = logged_in(&server, &clock);
    let authorize = AuthorizeLayer::builder(provider)
        .allow_origin(server.base_url())
        .allow_http(true)
        .resolve_relative_to(server.base_url())
        .clone_body_with(copy_octo_body)
        .build()
        .unwrap();
    let octocrab = OctocrabBuilder::new_empty()
        .with_service(hyper_client())
        .with_layer(&base_uri(&server))
        .with_layer(&authorize)
        .with_auth(AuthState::None)
        .build()
        .unwrap();
    server.revoke_access_token(&grant.access_token);

    let user: Value = octocrab.get("/user", None::<&()>).await.unwrap();

    // octocrab's base-URI layer still adds its path to the resolved URI.
    assert_eq!(user["path"], "/api/user");
    assert_eq!(server.stats().refresh_grants, 1, "refreshed and retried");
}
