//! Second review, secrets: a TRACE capture of the session-integrity paths end to end (the
//! testkit's server over loopback, Redis when `CLIENT_AUTH_REDIS=1`, the tower adapter). A test
//! binary of its own, with one test and a process-wide subscriber: scoped subscribers miss
//! events when other tests of the binary run in parallel (callsite interest is cached
//! process-wide).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, Error, ManualClock, MemoryStore, OAuthProvider, RefreshToken, ReqwestTransport,
    SessionReason, StoredTokens, TokenStore, TokenTransport, Tokens,
};
use client_auth_redis::RedisStore;
use client_auth_testkit::{Fault, TestServer};
use client_auth_tower::{AuthorizeLayer, BoxError};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

#[path = "../crates/client-auth-redis/tests/support/mod.rs"]
mod support;
use support::{RedisServer, redis_enabled};

const NS: &str = "review2-session";

async fn send<S, ResB>(
    service: &mut S,
    request: Request<Full<Bytes>>,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = BoxError>,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        service.ready().await?.call(request).await
    })
    .await
    .expect("no answer within 10 s")
}

fn get(url: impl AsRef<str>) -> Request<Full<Bytes>> {
    Request::get(url.as_ref()).body(Full::default()).unwrap()
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..5_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting until {what}");
}

fn stored_refresh(rt: &str) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(RefreshToken::new(rt)),
        ..StoredTokens::default()
    }
}

// =============================================================================================
// Secrets: a TRACE capture of the new paths, end to end
// =============================================================================================

/// A token transport that records every token the token endpoint hands out.
#[derive(Debug)]
struct Recording {
    inner: ReqwestTransport,
    seen: Arc<Mutex<BTreeSet<String>>>,
}

impl TokenTransport for Recording {
    fn send(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let answer = self.inner.send(request, max_body);
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let answer = answer.await?;
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(answer.body()) {
                for field in ["access_token", "refresh_token"] {
                    if let Some(token) = json.get(field).and_then(|v| v.as_str()) {
                        seen.lock().unwrap().insert(token.to_owned());
                    }
                }
            }
            Ok(answer)
        })
    }
}

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

/// Holds: everything at TRACE (spans with their fields, every crate's events: client-auth,
/// the adapters, Redis, hyper, reqwest) on the new paths: the first refresh from the store
/// under the Redis lease, a 401 of an accepted token, an exchange abandoned by `set_tokens`
/// (its lease released in the background), a logout during an exchange whose answer rotated
/// the refresh token (revoked by the superseded refresh), a garbled answer that rotates, and
/// `invalid_grant`. No token the server issued or the test handed in, and not the client
/// secret, appears anywhere. Uses Redis when `CLIENT_AUTH_REDIS=1`, the memory store otherwise.
#[test]
fn a_trace_capture_of_the_new_paths_holds_no_secret() {
    let capture = Capture::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .finish(),
    );
    tracing::dispatcher::set_global_default(dispatch).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = redis_enabled().then(RedisServer::start);
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    runtime.block_on(async {
        let server = TestServer::start().await.unwrap();
        let store: Arc<dyn TokenStore> = match &redis {
            Some(redis) => Arc::new(
                RedisStore::builder(redis.url())
                    .prefix("review2:")
                    .build()
                    .unwrap(),
            ),
            None => Arc::new(MemoryStore::new()),
        };
        let grant = server.issue_grant("alice", None);
        let bob = server.issue_grant("bob", None);
        for t in [&grant, &bob] {
            secrets.insert(t.access_token.clone());
            secrets.insert(t.refresh_token.clone());
        }
        secrets.insert(server.client_secret().unwrap());
        store
            .save(NS, &stored_refresh(&grant.refresh_token))
            .await
            .unwrap();
        let clock = ManualClock::new();
        let provider = OAuthProvider::refresh_token_grant(server.token_url())
            .client_id(server.client_id())
            .client_secret(server.client_secret().unwrap())
            .clock(Arc::new(clock.clone()))
            .transport(Arc::new(Recording {
                inner: ReqwestTransport::new().unwrap(),
                seen: Arc::clone(&seen),
            }))
            .store(Arc::clone(&store), NS)
            .revocation_url(server.revocation_url())
            .refresh_lease_ttl(Duration::from_millis(600))
            .build()
            .unwrap();
        let mut client = AuthorizeLayer::builder(provider.clone())
            .allow_origin(server.base_url())
            .allow_http(true)
            .build()
            .unwrap()
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

        // First request: the store's refresh token, under the lease.
        let r: Response<Incoming> = send(&mut client, get(server.resource_url())).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // An accepted token revoked: refreshed at once.
        server.revoke_all_access_tokens();
        let r = send(&mut client, get(server.resource_url())).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // An exchange abandoned by set_tokens (the answer never comes).
        server.push_fault(Fault::hang());
        let calls = server.stats().token_calls;
        let abandoned = tokio::spawn({
            let p = provider.clone();
            async move { p.verify_session().await }
        });
        until("the hanging exchange is at the server", || {
            server.stats().token_calls > calls
        })
        .await;
        provider
            .set_tokens(Tokens {
                access_token: Some(AccessToken::new(bob.access_token.as_str())),
                refresh_token: Some(RefreshToken::new(bob.refresh_token.as_str())),
                expires_in: Some(Duration::from_secs(3600)),
                lifetime: None,
                dpop_bound: false,
            })
            .await
            .unwrap();
        let _ = abandoned.await.unwrap();
        // A garbled answer that rotates the refresh token: kept, not logged.
        let garbled_rt = "rt_GARBLED_MARKER_0123456789";
        secrets.insert(garbled_rt.to_owned());
        secrets.insert("at_GARBLED_MARKER_0123456789".to_owned());
        server.push_fault(Fault::status(StatusCode::OK).json(serde_json::json!({
            "access_token": "at_GARBLED_MARKER_0123456789",
            "token_type": "MAC",
            "expires_in": 3600,
            "refresh_token": garbled_rt,
        })));
        assert!(provider.verify_session().await.is_err());
        // Past the backoff that failure started (the token itself stays fresh).
        clock.advance(Duration::from_secs(60));
        // A logout during an exchange whose answer rotates: the rotated token is revoked.
        let rotated_rt = "rt_ROTATED_MARKER_0123456789";
        secrets.insert(rotated_rt.to_owned());
        secrets.insert("at_ROTATED_MARKER_0123456789".to_owned());
        server.push_fault(
            Fault::status(StatusCode::OK)
                .json(serde_json::json!({
                    "access_token": "at_ROTATED_MARKER_0123456789",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": rotated_rt,
                }))
                .delay(Duration::from_millis(300)),
        );
        let calls = server.stats().token_calls;
        let superseded = tokio::spawn({
            let p = provider.clone();
            async move { p.verify_session().await }
        });
        until("the exchange is at the server", || {
            server.stats().token_calls > calls
        })
        .await;
        provider.logout().await.unwrap();
        let outcome = superseded.await.unwrap();
        assert!(
            matches!(
                outcome,
                Err(Error::NoSession {
                    reason: SessionReason::Logout
                })
            ),
            "{outcome:?}"
        );
        // invalid_grant with an error_description that echoes the refresh token.
        provider
            .set_tokens(Tokens {
                access_token: None,
                refresh_token: Some(RefreshToken::new("rt_ECHOED_MARKER_0123456789")),
                expires_in: None,
                lifetime: None,
                dpop_bound: false,
            })
            .await
            .unwrap();
        secrets.insert("rt_ECHOED_MARKER_0123456789".to_owned());
        server.push_fault(
            Fault::status(StatusCode::BAD_REQUEST).json(serde_json::json!({
                "error": "invalid_grant",
                "error_description": "refresh token rt_ECHOED_MARKER_0123456789 is not valid",
            })),
        );
        let ended = provider.access_token().await;
        assert!(ended.is_err());
        assert_eq!(
            server.stats().revocations,
            2,
            "logout revoked the refresh token it knew, the superseded refresh the one it got"
        );
        // Let the background lease releases and revocations finish.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Drop the server and clients inside the runtime.
        drop(client);
        drop(server);
    });
    drop(runtime);
    secrets.extend(seen.lock().unwrap().iter().cloned());
    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    if std::env::var_os("REVIEW2_DUMP").is_some() {
        let _ = writeln!(std::io::stderr(), "{log}");
    }
    assert!(
        log.contains("client_auth.refresh"),
        "the capture saw the refresh spans ({} bytes of log)",
        log.len()
    );
    let leaked: Vec<_> = secrets
        .iter()
        .filter(|s| s.len() >= 8 && log.contains(s.as_str()))
        .collect();
    if !leaked.is_empty() {
        let _ = writeln!(std::io::stderr(), "{log}");
    }
    assert!(
        leaked.is_empty(),
        "secrets in the TRACE capture: {leaked:?} ({} secrets checked, {} bytes of log)",
        secrets.len(),
        log.len()
    );
}
