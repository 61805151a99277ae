//! Tokens per target, mapped token answers, claims challenges and assertion grants against the
//! testkit server, through both adapters: the server checks what each token was issued for,
//! so a token sent to the wrong API, a missing claim or a stale assertion shows up in its
//! counters and answers, not only in what the client believes it sent.
//!
//! Expiry moves with a `ManualClock` on the client and `TestServer::advance` on the server;
//! sockets run in real time and nothing sleeps to wait for an expiry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use client_auth::{
    AssertionSource, BoxError, Clock, Error, InvalidResponse, ManualClock, OAuthProvider,
    OAuthProviderBuilder, PerTargetProvider, SuppliedTransport, TokenTarget,
};
use client_auth_testkit::{AnswerShape, ResourceBinding, ServerConfig, TestServer};
use http::StatusCode;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;

#[path = "support/adapters.rs"]
mod adapters;

use adapters::{ADAPTERS, Adapter, AuthClient, Outcome, token_transport};

const LIFETIME: Duration = Duration::from_secs(300);

/// Moves the client's and the server's clocks together.
fn advance(clock: &ManualClock, server: &TestServer, by: Duration) {
    clock.advance(by);
    server.advance(by);
}

/// The testkit's first client, `client_credentials`, on `clock`, through `adapter`'s
/// transport.
fn service_client(
    server: &TestServer,
    clock: &ManualClock,
    adapter: Adapter,
) -> OAuthProviderBuilder<SuppliedTransport> {
    OAuthProvider::client_credentials(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .transport(token_transport(adapter))
}

fn per_resource_server() -> ServerConfig {
    ServerConfig::default()
        .resource_routes(ResourceBinding::Resource)
        .access_token_lifetime(LIFETIME)
}

/// A token per API: requests to `/api/r/{name}` ask for the resource `{origin}/r/{name}`, as
/// the testkit's resource routes require.
fn per_resource_provider(
    server: &TestServer,
    clock: &ManualClock,
    adapter: Adapter,
) -> PerTargetProvider {
    PerTargetProvider::builder(service_client(server, clock, adapter))
        .select(|request| {
            match request
                .path()
                .strip_prefix("/api/r/")
                .and_then(|rest| rest.split('/').next())
            {
                Some(name) => TokenTarget::new().resource(format!(
                    "{}://{}/r/{name}",
                    request.scheme(),
                    request.authority()
                )),
                None => TokenTarget::new(),
            }
        })
        .max_targets(8)
        .build()
        .unwrap()
}

/// The distinct `Authorization` headers the API saw on the routes of `name`, in order of first
/// use.
fn tokens_seen_at(server: &TestServer, name: &str) -> Vec<String> {
    let prefix = format!("/api/r/{name}");
    let mut tokens: Vec<String> = Vec::new();
    for seen in server.seen_requests() {
        if seen.path_and_query.starts_with(&prefix)
            && let Some(auth) = seen.authorization
            && !tokens.contains(&auth)
        {
            tokens.push(auth);
        }
    }
    tokens
}

fn counts<const N: usize>(entries: [(String, u64); N]) -> BTreeMap<String, u64> {
    BTreeMap::from(entries)
}

fn statuses<const N: usize>(entries: [(u16, u64); N]) -> BTreeMap<u16, u64> {
    BTreeMap::from(entries)
}

// ---- tokens per target ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_get_tokens_for_their_own_resource_with_one_token_request_each() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(per_resource_server()).await.unwrap();
        let clock = ManualClock::new();
        let provider = per_resource_provider(&server, &clock, adapter);
        let client = AuthClient::new(adapter, provider, &server.base_url());

        // Sixteen callers at once, half for each API, none holding a token yet.
        let callers: Vec<_> = (0..16)
            .map(|i| {
                let url = server.resource_route_url(if i % 2 == 0 { "a" } else { "b" });
                let client = client.clone();
                tokio::spawn(async move { client.get(&url).await })
            })
            .collect();
        for caller in callers {
            let outcome = caller.await.unwrap();
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        }
        for name in ["a", "b", "a/items", "b/items"] {
            let outcome = client.get(&server.resource_route_url(name)).await;
            assert!(outcome.is_ok(), "{adapter:?} {name}: {outcome:?}");
        }

        let stats = server.stats();
        assert_eq!(
            stats.token_calls_by_resource,
            counts([
                (server.resource_indicator("a"), 1),
                (server.resource_indicator("b"), 1)
            ]),
            "{adapter:?}: one token request per target"
        );
        assert_eq!(stats.token_calls, 2, "{adapter:?}");
        assert_eq!(
            stats.resource_mismatches, 0,
            "{adapter:?}: no token went to the other API"
        );
        assert_eq!(stats.resource_calls, statuses([(200, 20)]), "{adapter:?}");
        let (a, b) = (tokens_seen_at(&server, "a"), tokens_seen_at(&server, "b"));
        assert_eq!((a.len(), b.len()), (1, 1), "{adapter:?}: {a:?} {b:?}");
        assert_ne!(a, b, "{adapter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_at_one_api_refreshes_only_that_apis_token() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(per_resource_server()).await.unwrap();
        let clock = ManualClock::new();
        let provider = per_resource_provider(&server, &clock, adapter);
        let client = AuthClient::new(adapter, provider, &server.base_url());
        for name in ["a", "b"] {
            assert!(client.get(&server.resource_route_url(name)).await.is_ok());
        }

        // The server revokes API A's token: A's next request gets a 401.
        let a_token = tokens_seen_at(&server, "a").remove(0);
        server.revoke_access_token(a_token.trim_start_matches("Bearer "));
        let outcome = client.get(&server.resource_route_url("a")).await;
        assert!(
            outcome.is_ok(),
            "{adapter:?}: refreshed and retried: {outcome:?}"
        );
        assert!(client.get(&server.resource_route_url("b")).await.is_ok());
        assert!(client.get(&server.resource_route_url("a")).await.is_ok());

        let stats = server.stats();
        assert_eq!(
            stats.token_calls_by_resource,
            counts([
                (server.resource_indicator("a"), 2),
                (server.resource_indicator("b"), 1)
            ]),
            "{adapter:?}: only A's token was asked again"
        );
        assert_eq!(
            stats.resource_calls,
            statuses([(200, 5), (401, 1)]),
            "{adapter:?}: the revoked token's 401 only"
        );
        assert_eq!(stats.resource_mismatches, 0, "{adapter:?}");
        assert_eq!(tokens_seen_at(&server, "a").len(), 2, "{adapter:?}");
        assert_eq!(
            tokens_seen_at(&server, "b").len(),
            1,
            "{adapter:?}: B kept its token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_apis_token_expires_and_is_renewed_on_its_own() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(per_resource_server()).await.unwrap();
        let clock = ManualClock::new();
        let provider = per_resource_provider(&server, &clock, adapter);
        let client = AuthClient::new(adapter, provider, &server.base_url());

        assert!(client.get(&server.resource_route_url("a")).await.is_ok());
        advance(&clock, &server, Duration::from_secs(200));
        assert!(client.get(&server.resource_route_url("b")).await.is_ok());
        // A's token (300 s) is past its expiry, B's has 150 s left: only A's is renewed.
        advance(&clock, &server, Duration::from_secs(150));
        for name in ["a", "b"] {
            let outcome = client.get(&server.resource_route_url(name)).await;
            assert!(outcome.is_ok(), "{adapter:?} {name}: {outcome:?}");
        }

        let stats = server.stats();
        assert_eq!(
            stats.token_calls_by_resource,
            counts([
                (server.resource_indicator("a"), 2),
                (server.resource_indicator("b"), 1)
            ]),
            "{adapter:?}"
        );
        assert_eq!(
            stats.resource_calls,
            statuses([(200, 4)]),
            "{adapter:?}: renewed before the server could refuse the expired token"
        );
    }
}

/// A GET of `url` carrying `target` in the request extensions.
async fn get_with_target(
    client: &AuthClient,
    url: &str,
    target: TokenTarget,
) -> Option<StatusCode> {
    match client {
        AuthClient::Tower(service) => {
            let mut request = http::Request::get(url)
                .body(Full::<Bytes>::default())
                .unwrap();
            request.extensions_mut().insert(target);
            service
                .clone()
                .oneshot(request)
                .await
                .ok()
                .map(|r| r.status())
        }
        AuthClient::Reqwest(client) => client
            .get(url)
            .with_extension(target)
            .send()
            .await
            .ok()
            .map(|r| r.status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_in_the_request_extensions_wins_over_the_selected_one() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(per_resource_server()).await.unwrap();
        let clock = ManualClock::new();
        let provider = per_resource_provider(&server, &clock, adapter);
        let client = AuthClient::new(adapter, provider, &server.base_url());

        // `/api/resource` selects no resource; the extension asks for B's.
        let b = TokenTarget::new().resource(server.resource_indicator("b"));
        assert_eq!(
            get_with_target(&client, &server.resource_url(), b.clone()).await,
            Some(StatusCode::OK),
            "{adapter:?}"
        );
        // The extension sends B's token to A's route: the server refuses it; the provider,
        // whose token was accepted before, asks for B's token again and retries once, and the
        // 401 stands. A's token is never asked for.
        assert_eq!(
            get_with_target(&client, &server.resource_route_url("a"), b).await,
            Some(StatusCode::UNAUTHORIZED),
            "{adapter:?}"
        );
        // Selected from the path, B's route shares the extension's target and its new token.
        assert!(client.get(&server.resource_route_url("b")).await.is_ok());

        let stats = server.stats();
        assert_eq!(
            stats.token_calls_by_resource,
            counts([(server.resource_indicator("b"), 2)]),
            "{adapter:?}"
        );
        assert_eq!(stats.token_calls, 2, "{adapter:?}");
        assert_eq!(
            stats.resource_mismatches, 2,
            "{adapter:?}: the request and its retry"
        );
    }
}

// ---- a non-standard token answer ------------------------------------------------------------

/// `{"data": {"access_token", "expires_at"}}` → the standard shape, on the client's clock.
fn from_nested(clock: ManualClock) -> impl Fn(Value) -> Value + Send + Sync + 'static {
    move |answer| {
        let data = &answer["data"];
        let now = clock
            .unix_now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({
            "access_token": data["access_token"],
            "token_type": "Bearer",
            "expires_in": data["expires_at"].as_u64().map(|at| at.saturating_sub(now)),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_answer_with_expires_at_works_through_map_token_response() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(
            ServerConfig::default()
                .answer_shape(AnswerShape::Nested)
                .access_token_lifetime(Duration::from_secs(600)),
        )
        .await
        .unwrap();
        let clock = ManualClock::new();
        let provider = service_client(&server, &clock, adapter)
            .map_token_response(from_nested(clock.clone()))
            .build()
            .unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        assert!(client.get(&server.resource_url()).await.is_ok());
        advance(&clock, &server, Duration::from_secs(300));
        assert!(client.get(&server.resource_url()).await.is_ok());
        assert_eq!(
            server.stats().token_calls,
            1,
            "{adapter:?}: fresh at half its life"
        );
        // Past `expires_at`: renewed before use, so the server never refuses a token.
        advance(&clock, &server, Duration::from_secs(301));
        assert!(client.get(&server.resource_url()).await.is_ok());
        let stats = server.stats();
        assert_eq!(stats.token_calls, 2, "{adapter:?}");
        assert_eq!(
            stats.resource_calls,
            statuses([(200, 3)]),
            "{adapter:?}: the lifetime came from expires_at"
        );

        // The same answer unmapped has no token where the standard says.
        let unmapped = service_client(&server, &clock, adapter).build().unwrap();
        let unmapped = AuthClient::new(adapter, unmapped, &server.base_url());
        match unmapped.get(&server.resource_url()).await {
            Outcome::Auth(Error::InvalidResponse(InvalidResponse::MissingAccessToken)) => {}
            other => panic!("{adapter:?}: {other:?}"),
        }
    }
}

// ---- claims challenges ----------------------------------------------------------------------

const CLAIMS: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_is_answered_with_one_token_request_carrying_the_claims() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(ServerConfig::default().claims_challenge(CLAIMS))
            .await
            .unwrap();
        let clock = ManualClock::new();
        let provider = service_client(&server, &clock, adapter).build().unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        // A token the server accepted, then a route that wants more claims.
        assert!(client.get(&server.resource_url()).await.is_ok());
        let outcome = client.get(&server.claims_url()).await;
        assert!(
            outcome.is_ok(),
            "{adapter:?}: retried with the claims: {outcome:?}"
        );

        let stats = server.stats();
        assert_eq!(stats.claims_challenges, 1, "{adapter:?}");
        assert_eq!(stats.token_calls, 2, "{adapter:?}: one more token request");
        assert_eq!(stats.claims_token_requests, 1, "{adapter:?}");
        assert_eq!(
            stats.resource_calls,
            statuses([(200, 2), (401, 1)]),
            "{adapter:?}"
        );
        let claims: Vec<_> = server
            .token_requests()
            .iter()
            .map(|r| r.param("claims").map(str::to_owned))
            .collect();
        assert_eq!(claims, [None, Some(CLAIMS.to_owned())], "{adapter:?}");

        // The new token carries the claims: both routes take it, no token request more.
        assert!(client.get(&server.claims_url()).await.is_ok());
        assert!(client.get(&server.resource_url()).await.is_ok());
        assert_eq!(server.stats().token_calls, 2, "{adapter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_to_a_token_never_accepted_is_answered_at_once() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(ServerConfig::default().claims_challenge(CLAIMS))
            .await
            .unwrap();
        let clock = ManualClock::new();
        let provider = service_client(&server, &clock, adapter).build().unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        // The first token goes straight to the claims route: no 401 cooldown holds it back.
        let outcome = client.get(&server.claims_url()).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let stats = server.stats();
        assert_eq!(
            (stats.token_calls, stats.claims_token_requests),
            (2, 1),
            "{adapter:?}"
        );
        assert_eq!(stats.claims_challenges, 1, "{adapter:?}");
    }
}

// ---- assertion grants -----------------------------------------------------------------------

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A fresh directory for one test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "client-auth-{name}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn fixed(text: &'static str) -> AssertionSource {
    AssertionSource::from_fn(move || async move { Ok::<_, BoxError>(text.to_owned()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_grant_sends_the_assertion_file_as_rewritten_between_token_requests() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(
            ServerConfig::default()
                .client("workload", None)
                .accept_assertion("assertion-one")
                .accept_assertion("assertion-two")
                .access_token_lifetime(LIFETIME),
        )
        .await
        .unwrap();
        let dir = TempDir::new("jwt-bearer");
        let path = dir.0.join("token");
        std::fs::write(&path, "assertion-one\n").unwrap();
        let clock = ManualClock::new();
        let provider =
            OAuthProvider::jwt_bearer_grant(server.token_url(), AssertionSource::file(&path))
                .client_id("workload")
                .clock(Arc::new(clock.clone()))
                .jitter(0.0)
                .transport(token_transport(adapter))
                .build()
                .unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        assert!(client.get(&server.resource_url()).await.is_ok());
        // The platform rotates the file; the next token request reads the new one.
        std::fs::write(&path, "assertion-two").unwrap();
        advance(&clock, &server, LIFETIME + Duration::from_secs(1));
        let outcome = client.get(&server.resource_url()).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");

        let seen = server.token_requests();
        let sent: Vec<_> = seen
            .iter()
            .map(|r| (r.param("grant_type"), r.param("assertion")))
            .collect();
        assert_eq!(
            sent,
            [
                (Some(JWT_BEARER), Some("assertion-one")),
                (Some(JWT_BEARER), Some("assertion-two"))
            ],
            "{adapter:?}"
        );
        let stats = server.stats();
        assert_eq!(
            (stats.jwt_bearer_grants, stats.token_successes),
            (2, 2),
            "{adapter:?}"
        );
        assert_eq!(stats.resource_calls, statuses([(200, 2)]), "{adapter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_gets_a_token_for_the_audience_the_api_requires() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(
            ServerConfig::default()
                .accept_subject_token("subject-token-1")
                .resource_routes(ResourceBinding::Audience),
        )
        .await
        .unwrap();
        let provider = OAuthProvider::token_exchange(server.token_url(), fixed("subject-token-1"))
            .client_id(server.client_id())
            .client_secret(server.client_secret().unwrap())
            .extra_param("audience", "orders")
            .transport(token_transport(adapter))
            .build()
            .unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        let outcome = client.get(&server.resource_route_url("orders")).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");

        let stats = server.stats();
        assert_eq!(stats.token_exchange_grants, 1, "{adapter:?}");
        assert_eq!(
            stats.token_calls_by_audience,
            counts([("orders".to_owned(), 1)]),
            "{adapter:?}"
        );
        assert_eq!(stats.resource_mismatches, 0, "{adapter:?}");
        let request = &server.token_requests()[0];
        assert_eq!(request.param("grant_type"), Some(TOKEN_EXCHANGE));
        assert_eq!(request.param("subject_token"), Some("subject-token-1"));
        assert_eq!(
            request.param("subject_token_type"),
            Some("urn:ietf:params:oauth:token-type:jwt")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_assertion_authentication_gets_a_token_without_a_secret() {
    for adapter in ADAPTERS {
        let server = TestServer::start_with(
            ServerConfig::default().accept_client_assertion("federated", "workload-identity"),
        )
        .await
        .unwrap();
        let provider = OAuthProvider::client_credentials(server.token_url())
            .client_id("federated")
            .client_assertion(fixed("workload-identity"))
            .transport(token_transport(adapter))
            .build()
            .unwrap();
        let client = AuthClient::new(adapter, provider, &server.base_url());

        let outcome = client.get(&server.resource_url()).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");

        let request = &server.token_requests()[0];
        assert_eq!(request.param("client_assertion"), Some("workload-identity"));
        assert_eq!(
            request.param("client_assertion_type"),
            Some(JWT_CLIENT_ASSERTION)
        );
        assert_eq!(request.param("client_secret"), None);
        assert_eq!(request.header("authorization"), None);
        assert_eq!(server.stats().token_successes, 1, "{adapter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_assertion_is_a_typed_error_that_never_shows_the_assertion() {
    for adapter in ADAPTERS {
        // The server quotes what it rejects in `error_description`, as careless ones do.
        let server = TestServer::start_with(
            ServerConfig::default()
                .client("workload", None)
                .accept_assertion("right-assertion")
                .accept_subject_token("right-subject-token")
                .accept_client_assertion("federated", "right-client-assertion")
                .echo_rejected_assertions(true),
        )
        .await
        .unwrap();
        let url = server.token_url();
        let cases = [
            (
                "jwt bearer",
                OAuthProvider::jwt_bearer_grant(&url, fixed("WRONG-assertion-7f3a"))
                    .client_id("workload"),
                "WRONG-assertion-7f3a",
                "invalid_grant",
            ),
            (
                "token exchange",
                OAuthProvider::token_exchange(&url, fixed("WRONG-subject-token-9c1d"))
                    .client_id("workload"),
                "WRONG-subject-token-9c1d",
                "invalid_grant",
            ),
            (
                "client assertion",
                OAuthProvider::client_credentials(&url)
                    .client_id("federated")
                    .client_assertion(fixed("WRONG-client-assertion-4e2b")),
                "WRONG-client-assertion-4e2b",
                "invalid_client",
            ),
        ];
        for (what, builder, wrong, code) in cases {
            let provider = builder.transport(token_transport(adapter)).build().unwrap();
            let client = AuthClient::new(adapter, provider, &server.base_url());
            let error = match client.get(&server.resource_url()).await {
                Outcome::Auth(error) => error,
                other => panic!("{adapter:?} {what}: {other:?}"),
            };
            assert!(
                matches!(&error, Error::Rejected(e) if e.code() == code),
                "{adapter:?} {what}: {error:?}"
            );
            let shown = format!("{error} {error:?}");
            assert!(
                !shown.contains(wrong),
                "{adapter:?} {what}: the assertion leaked: {shown}"
            );
        }

        let stats = server.stats();
        assert_eq!(
            stats.token_errors,
            BTreeMap::from([
                ("invalid_client".to_owned(), 1),
                ("invalid_grant".to_owned(), 2)
            ]),
            "{adapter:?}"
        );
        assert!(
            stats.resource_calls.is_empty(),
            "{adapter:?}: nothing reached the API"
        );
        // The server did see (and quote) each wrong value.
        let sent: BTreeSet<_> = server
            .token_requests()
            .iter()
            .filter_map(|r| {
                r.param("assertion")
                    .or(r.param("subject_token"))
                    .or(r.param("client_assertion"))
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(sent.len(), 3, "{adapter:?}: {sent:?}");
    }
}
