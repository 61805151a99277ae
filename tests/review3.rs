//! Third review through both adapters, over loopback sockets: where a DPoP proof goes when the
//! resource redirects, and what a per-target provider sends through each adapter. Every host
//! name resolves to 127.0.0.1; each origin is its own recording host. A test marked
//! `#[ignore = "reproduces: ..."]` fails today and names the behaviour that should hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod tls;

#[path = "support/recording_host.rs"]
mod recording_host;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{DpopKey, Error, OAuthProvider, OriginPolicy, TokenTransport};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_tower::{AuthorizeLayer, RedirectPolicy};
use http::Request;
use http_body_util::{BodyExt, Full};
use recording_host::{Host, LoopbackDns, Seen};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

const LIMIT: Duration = Duration::from_secs(15);

/// A token endpoint in process that hands out DPoP-bound tokens.
#[derive(Debug, Default)]
struct DpopTokens {
    issued: AtomicUsize,
}

impl TokenTransport for DpopTokens {
    fn send(
        &self,
        _request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(
            r#"{{"access_token":"at-DPOP-SECRET-{n}","token_type":"DPoP","expires_in":3600}}"#
        );
        let response = http::Response::builder()
            .status(200)
            .body(Bytes::from(body))
            .unwrap();
        Box::pin(async move { Ok(response) })
    }
}

fn dpop_provider() -> OAuthProvider {
    OAuthProvider::client_credentials("https://auth.example.com/token")
        .client_id("svc")
        .dpop(DpopKey::generate().unwrap())
        .transport(Arc::new(DpopTokens::default()))
        .build()
        .unwrap()
}

fn origins(origin: &str) -> OriginPolicy {
    OriginPolicy::builder()
        .allow_origin(origin)
        .allow_http(true)
        .build()
        .unwrap()
}

/// The API redirects to another origin, which records what it gets.
async fn api_redirecting_elsewhere() -> (Host, Host) {
    let other = Host::start(|_| (200, vec![], "ok".to_owned())).await;
    let landing = other.url("other.example.net", "/landing");
    let api = Host::start(move |_| {
        (
            302,
            vec![("Location".to_owned(), landing.clone())],
            String::new(),
        )
    })
    .await;
    (api, other)
}

fn credential_headers(seen: &Seen) -> Vec<String> {
    ["authorization", "dpop"]
        .into_iter()
        .filter(|name| seen.header(name).is_some())
        .map(str::to_owned)
        .collect()
}

async fn reqwest_get(policy: reqwest::redirect::Policy, api: &Host) {
    let client = reqwest::Client::builder()
        .dns_resolver(Arc::new(LoopbackDns))
        .no_proxy()
        .redirect(policy)
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(client)
        .with(AuthorizationMiddleware::new(
            dpop_provider(),
            origins(&api.origin("api.example.com")),
        ))
        .build();
    let url = api.url("api.example.com", "/r");
    tokio::time::timeout(LIMIT, async {
        let response = client.get(url).send().await.unwrap();
        let _ = response.bytes().await;
    })
    .await
    .unwrap();
}

/// The README tells reqwest users to build their client with `redirect_policy(10)`; the DPoP
/// docs say nothing about redirects. With that policy the first cross-origin hop is followed,
/// and reqwest removes `Authorization` but not `DPoP`: the proof (bound to the API's URL,
/// carrying the API's nonce and the token's hash) reaches the other origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "documented limit: with client_auth_reqwest::redirect_policy, a DPoP proof follows the first cross-origin hop (reqwest strips Authorization only); the docs of dpop() and the README send DPoP users to same_origin_redirect_policy"]
async fn reqwest_with_the_recommended_redirect_policy_sends_no_dpop_proof_to_another_origin() {
    let (api, other) = api_redirecting_elsewhere().await;

    reqwest_get(client_auth_reqwest::redirect_policy(10), &api).await;

    assert_eq!(
        credential_headers(&api.seen()[0]),
        ["authorization", "dpop"]
    );
    for hop in other.seen() {
        assert!(
            credential_headers(&hop).is_empty(),
            "another origin got {:?}",
            credential_headers(&hop)
        );
    }
}

/// Held: with `same_origin_redirect_policy` reqwest does not follow the hop at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_with_the_same_origin_policy_sends_no_dpop_proof_to_another_origin() {
    let (api, other) = api_redirecting_elsewhere().await;

    reqwest_get(client_auth_reqwest::same_origin_redirect_policy(10), &api).await;

    assert_eq!(
        credential_headers(&api.seen()[0]),
        ["authorization", "dpop"]
    );
    assert!(other.seen().is_empty());
}

/// Held: tower's `RedirectPolicy` removes every sensitive value from the hops after the chain
/// left the origin, and the DPoP proof is marked sensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_sends_no_dpop_proof_to_another_origin() {
    let (api, other) = api_redirecting_elsewhere().await;
    let service = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(
            dpop_provider(),
            origins(&api.origin("api.example.com")),
        ))
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(tls::hyper_client::<Full<Bytes>>());
    let request = Request::get(api.url("api.example.com", "/r"))
        .body(Full::default())
        .unwrap();

    tokio::time::timeout(LIMIT, async {
        let response = service.oneshot(request).await.unwrap();
        let _ = response.into_body().collect().await;
    })
    .await
    .unwrap();

    assert_eq!(
        credential_headers(&api.seen()[0]),
        ["authorization", "dpop"]
    );
    let landed = other.seen();
    assert_eq!(landed.len(), 1, "the chain lands there");
    assert!(credential_headers(&landed[0]).is_empty());
}
