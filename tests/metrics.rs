//! Observability through both adapters (feature `metrics`), with a recorder that keeps every
//! metric operation: each metric of `client_auth::metrics` is emitted in the scenario that
//! should emit it, both adapters count a 401 the same way (every 401 is either retried or
//! skipped for a reason), no label holds a secret, and a request whose token is at hand records
//! nothing at all. The traces: a client span for each token request inside the refresh span,
//! `http.request.resend_count` on both adapters' retry, one level for a skipped retry.
//!
//! The tests share the process-wide recorder and run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/adapters.rs"]
mod adapters;
#[path = "../crates/client-auth-redis/tests/support/mod.rs"]
mod redis_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use adapters::{ADAPTERS, Adapter, AuthClient, http_client, token_transport};
use bytes::Bytes;
use client_auth::metrics as names;
use client_auth::{
    AuthorizationProvider, FileStore, ManualClock, OAuthProvider, RequestView, StaticToken,
    StoredTokens, TokenStore,
};
use client_auth_redis::RedisStore;
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_reqwest::reqwest_middleware;
use client_auth_testkit::{Fault, ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, NeverClone};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::Layer as _;

const CLIENT_SECRET: &str = "MARKER-CLIENT-SECRET-metrics";
const API_KEY: &str = "MARKER-API-KEY-metrics";

// =============================================================================================
// A recorder that keeps everything
// =============================================================================================

/// One recorded operation: a counter increment or a histogram sample.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Default)]
struct Recorded {
    /// Every call into the recorder or a handle it gave out: registrations included.
    operations: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    /// Every label key and value ever registered, whether or not a value followed.
    label_values: Mutex<BTreeSet<String>>,
}

impl Recorded {
    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn clear(&self) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

struct Handle {
    name: String,
    labels: BTreeMap<String, String>,
    recorded: Arc<Recorded>,
}

impl Handle {
    fn push(&self, value: f64) {
        self.recorded.operations.fetch_add(1, Ordering::SeqCst);
        self.recorded
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sample {
                name: self.name.clone(),
                labels: self.labels.clone(),
                value,
            });
    }
}

impl CounterFn for Handle {
    #[allow(clippy::cast_precision_loss)]
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, _value: u64) {
        panic!("client-auth sets no absolute counter value");
    }
}

impl GaugeFn for Handle {
    fn increment(&self, _: f64) {
        panic!("client-auth records no gauge");
    }
    fn decrement(&self, _: f64) {
        panic!("client-auth records no gauge");
    }
    fn set(&self, _: f64) {
        panic!("client-auth records no gauge");
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

struct TestRecorder(Arc<Recorded>);

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        self.0.operations.fetch_add(1, Ordering::SeqCst);
        let labels: BTreeMap<String, String> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let mut seen = self
            .0
            .label_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (k, v) in &labels {
            seen.insert(k.clone());
            seen.insert(v.clone());
        }
        Arc::new(Handle {
            name: key.name().to_owned(),
            labels,
            recorded: Arc::clone(&self.0),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.operations.fetch_add(1, Ordering::SeqCst);
    }
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.operations.fetch_add(1, Ordering::SeqCst);
    }
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.operations.fetch_add(1, Ordering::SeqCst);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

/// The process-wide recorder, installed once.
fn recorded() -> &'static Arc<Recorded> {
    static RECORDED: OnceLock<Arc<Recorded>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded = Arc::new(Recorded::default());
        metrics::set_global_recorder(TestRecorder(Arc::clone(&recorded)))
            .expect("no other recorder in this binary");
        recorded
    })
}

/// Everything the tests log, at TRACE, with span closings (their fields) written out.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        String::from_utf8(bytes).unwrap()
    }
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

/// One test at a time: they share the recorder, and the fresh-path test counts every
/// operation.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn private_dir(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!(
            "client-auth-metrics-{tag}-{}-{:08x}",
            std::process::id(),
            fastrand_u32()
        ))
        .join("tokens")
}

/// No extra dependency: the address of a fresh allocation and the time are random enough.
fn fastrand_u32() -> u32 {
    let here = Box::new(0u8);
    let addr = std::ptr::from_ref::<u8>(&here) as usize;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (addr as u32) ^ nanos
}

async fn server() -> TestServer {
    TestServer::start_with(
        ServerConfig::default()
            .client("metrics-client", Some(CLIENT_SECRET))
            .api_key(API_KEY)
            .access_token_lifetime(Duration::from_secs(3600)),
    )
    .await
    .unwrap()
}

/// A provider signed in at `server`, with its token held for 100 s on `clock`.
fn provider(
    server: &TestServer,
    adapter: Adapter,
    clock: &ManualClock,
    name: &str,
    store: Option<Arc<dyn TokenStore>>,
) -> OAuthProvider {
    let grant = server.issue_grant("alice", None);
    let mut builder = OAuthProvider::refresh_token_grant(server.token_url())
        .client_id("metrics-client")
        .client_secret(CLIENT_SECRET)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(Duration::from_secs(100)))
        .clock(Arc::new(clock.clone()))
        .jitter(0.0)
        .metrics_name(name);
    if let Some(store) = store {
        builder = builder.store(store, "ns");
    }
    builder.transport(token_transport(adapter)).build().unwrap()
}

/// A GET through `adapter` whose body the adapter cannot copy before sending.
async fn get_uncopyable(adapter: Adapter, provider: &OAuthProvider, server: &TestServer) -> u16 {
    match adapter {
        Adapter::Tower => {
            let layer = AuthorizeLayer::builder(provider.clone())
                .allow_origin(server.base_url())
                .allow_http(true)
                .clone_body_with(NeverClone)
                .build()
                .unwrap();
            let client = AuthClient::tower(layer.layer(http_client()));
            client
                .get(&server.resource_url())
                .await
                .status()
                .unwrap()
                .as_u16()
        }
        Adapter::Reqwest => {
            let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(
                    AuthorizationMiddleware::builder(provider.clone())
                        .allow_origin(server.base_url())
                        .allow_http(true)
                        .build()
                        .unwrap(),
                )
                .build();
            let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"stream")));
            let response = client
                .post(server.url("/api/echo"))
                .body(body)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    }
}

fn adapter_name(adapter: Adapter) -> &'static str {
    match adapter {
        Adapter::Tower => "scenario-tower",
        Adapter::Reqwest => "scenario-reqwest",
    }
}

/// The label values that `name`'s samples carry under `label`, for samples of `provider`.
fn values(samples: &[Sample], name: &str, provider: &str, label: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| {
            s.name == name && s.labels.get("provider").map(String::as_str) == Some(provider)
        })
        .filter_map(|s| s.labels.get(label).cloned())
        .collect()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn total(samples: &[Sample], name: &str, provider: &str) -> u64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name && s.labels.get("provider").map(String::as_str) == Some(provider)
        })
        .map(|s| s.value as u64)
        .sum()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// =============================================================================================
// Every documented metric, through both adapters
// =============================================================================================

#[test]
fn every_documented_metric_is_emitted_in_its_scenario_and_no_label_holds_a_secret() {
    let _serial = serial();
    let recorded = recorded();
    recorded.clear();
    let mut secrets = vec![CLIENT_SECRET.to_owned(), API_KEY.to_owned()];
    let redis_on = redis_support::redis_enabled();
    runtime().block_on(async {
        for adapter in ADAPTERS {
            let name = adapter_name(adapter);
            secrets.extend(scenario(adapter, name).await);
            secrets.extend(cooldown_scenario(adapter, &format!("{name}-cooldown")).await);
            // A static key the server does not know: its 401 cannot be recovered from.
            let server = server().await;
            let key = StaticToken::api_key("MARKER-WRONG-KEY").unwrap();
            secrets.push("MARKER-WRONG-KEY".to_owned());
            let client = AuthClient::new(adapter, key, &server.base_url());
            let outcome = client.get(&server.resource_url()).await;
            assert_eq!(
                outcome.status(),
                Some(StatusCode::UNAUTHORIZED),
                "{adapter:?}"
            );
        }
        if redis_on {
            redis_leases().await;
        }
    });
    let samples = recorded.samples();

    // Every metric of the table was emitted.
    for metric in names::ALL {
        if metric == names::LEASES_LOST && !redis_on {
            continue; // only a RedisStore loses a lease; see redis_leases
        }
        assert!(
            samples.iter().any(|s| s.name == metric),
            "{metric} was never emitted"
        );
    }

    for adapter in ADAPTERS {
        let name = adapter_name(adapter);
        let cooldown = format!("{name}-cooldown");
        let cooldown = cooldown.as_str();
        // Token requests: each outcome class, with its latency.
        assert_eq!(
            values(&samples, names::TOKEN_REQUESTS, name, "outcome"),
            set(&["success", "transient", "configuration", "session_ended"]),
            "{adapter:?}"
        );
        assert_eq!(
            values(&samples, names::TOKEN_REQUEST_DURATION, name, "outcome"),
            set(&["success", "transient", "configuration", "session_ended"]),
        );
        assert_eq!(
            values(&samples, names::TOKEN_REQUESTS, name, "grant"),
            set(&["refresh_token"])
        );
        // Waits: the requests behind the expired token, and the 401's wait for its refresh.
        assert!(
            total(&samples, names::REFRESH_WAITS, name) >= 2,
            "{adapter:?}"
        );
        assert!(
            samples
                .iter()
                .any(|s| s.name == names::REFRESH_WAIT_DURATION
                    && s.labels["provider"] == name
                    && s.value >= 0.0)
        );
        // Sessions ended.
        assert_eq!(
            values(&samples, names::SESSIONS_ENDED, name, "reason"),
            set(&["invalid_grant", "cleared"])
        );
        // 401s: the same reasons through both adapters.
        assert_eq!(total(&samples, names::RETRIES, name), 1, "{adapter:?}");
        assert_eq!(
            values(&samples, names::RETRIES_SKIPPED, name, "reason"),
            set(&["body_not_cloneable", "declined", "session_ended"]),
            "{adapter:?}"
        );
        assert_eq!(
            values(&samples, names::RETRIES_SKIPPED, cooldown, "reason"),
            set(&["already_retried", "declined"]),
            "{adapter:?}"
        );
        assert_eq!(
            values(&samples, names::RETRIES_DECLINED, name, "reason"),
            set(&["backoff", "not_refreshable"])
        );
        assert_eq!(
            values(&samples, names::RETRIES_DECLINED, cooldown, "reason"),
            set(&["cooldown"])
        );
        for provider in [name, cooldown] {
            assert_eq!(
                total(&samples, names::UNAUTHORIZED, provider),
                total(&samples, names::RETRIES, provider)
                    + total(&samples, names::RETRIES_SKIPPED, provider),
                "{provider}: every 401 is retried or skipped, once"
            );
        }
    }
    // The static keys (named "default"): 401s that nothing could recover from.
    assert_eq!(
        values(&samples, names::RETRIES_SKIPPED, "default", "reason"),
        set(&["cannot_recover"])
    );
    assert_eq!(total(&samples, names::UNAUTHORIZED, "default"), 2);
    // FileStore's lease, asked for by every refresh of the scenario.
    assert!(samples.iter().any(|s| s.name == names::LEASE_WAIT_DURATION
        && s.labels["store"] == "file"
        && s.labels["outcome"] == "acquired"));
    if redis_on {
        let lost: BTreeSet<_> = samples
            .iter()
            .filter(|s| s.name == names::LEASES_LOST && s.labels["store"] == "redis")
            .map(|s| s.labels["at"].clone())
            .collect();
        assert_eq!(lost, set(&["renew", "write"]));
        assert!(samples.iter().any(|s| s.name == names::LEASE_WAIT_DURATION
            && s.labels["store"] == "redis"
            && s.labels["outcome"] == "acquired"));
    }

    // Labels: only the documented keys, only fixed values and the names given, no secret.
    let documented = set(&["provider", "grant", "outcome", "reason", "store", "at"]);
    for sample in &samples {
        for key in sample.labels.keys() {
            assert!(documented.contains(key), "{key} in {sample:?}");
        }
    }
    let seen = recorded
        .label_values
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for value in &seen {
        assert!(!value.contains("MARKER"), "a label holds a marker: {value}");
        for secret in &secrets {
            assert!(
                !value.contains(secret.as_str()),
                "a label holds a secret: {value}"
            );
        }
        assert!(!value.contains("://"), "a label holds a URL: {value}");
    }
    assert!(secrets.len() > 8, "the scenario's tokens were collected");
}

/// Refreshes, waits, a 401 recovered, a body that cannot be copied, each failure class of a
/// token request, a 401 declined during backoff, one whose refresh ends the session, and a
/// `clear`. Returns the tokens it saw.
async fn scenario(adapter: Adapter, name: &str) -> Vec<String> {
    let server = server().await;
    let clock = ManualClock::new();
    let store: Arc<dyn TokenStore> = Arc::new(FileStore::new(private_dir(name)));
    let provider = provider(&server, adapter, &clock, name, Some(store));
    let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
    let url = server.resource_url();
    let mut tokens = Vec::new();

    assert!(client.get(&url).await.is_ok());
    // Past the hard window: the requests wait for one refresh (under the file lease).
    clock.advance(Duration::from_secs(95));
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { client.get(&url).await.is_ok() })
        })
        .collect();
    for request in waiting {
        assert!(request.await.unwrap());
    }
    // A revoked token: 401, refresh, retry.
    let token = provider.access_token().await.unwrap();
    tokens.push(token.expose_secret().to_owned());
    server.revoke_access_token(token.expose_secret());
    assert!(client.get(&url).await.is_ok(), "{adapter:?}: recovered");
    // The same with a body the adapter cannot copy: the 401 is returned.
    let token = provider.access_token().await.unwrap();
    tokens.push(token.expose_secret().to_owned());
    server.revoke_access_token(token.expose_secret());
    assert_eq!(get_uncopyable(adapter, &provider, &server).await, 401);
    provider.verify_session().await.unwrap();
    // A transient failure, then a 401 while refreshes back off.
    server.push_fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    assert!(provider.verify_session().await.unwrap_err().is_transient());
    let token = provider.access_token().await.unwrap();
    tokens.push(token.expose_secret().to_owned());
    server.revoke_access_token(token.expose_secret());
    assert_eq!(
        client.get(&url).await.status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // A configuration error.
    clock.advance(Duration::from_secs(60));
    server.push_fault(Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_scope"));
    let error = provider.verify_session().await.unwrap_err();
    assert!(
        !error.is_transient() && !error.is_session_ended(),
        "{error}"
    );
    // A 401 whose challenge says a new token will not help.
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "http", "api.example", "/", None, &ext);
    let credential = provider.authorize(&view).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
    );
    let answer = provider
        .on_unauthorized(&credential, StatusCode::UNAUTHORIZED, &headers)
        .await
        .unwrap();
    assert!(matches!(answer, client_auth::Unauthorized::GiveUp));
    // The grant is revoked: the 401's refresh ends the session, and the error is returned.
    clock.advance(Duration::from_secs(60));
    server.revoke_all_grants();
    let outcome = client.get(&url).await;
    assert!(
        matches!(&outcome, adapters::Outcome::Auth(e) if e.is_session_ended()),
        "{adapter:?}: {outcome:?}"
    );
    provider.clear().await.unwrap();
    for seen in server.seen_requests() {
        if let Some(value) = seen.authorization {
            tokens.push(value.trim_start_matches("Bearer ").to_owned());
        }
    }
    tokens
}

/// Tokens the server never accepts: the 401's retry gets a 401 too, and the next 401 is
/// declined under the cooldown.
async fn cooldown_scenario(adapter: Adapter, name: &str) -> Vec<String> {
    let server = server().await;
    let clock = ManualClock::new();
    let provider = provider(&server, adapter, &clock, name, None);
    let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
    server.reject_all_tokens(true);
    for _ in 0..2 {
        let outcome = client.get(&server.resource_url()).await;
        assert_eq!(
            outcome.status(),
            Some(StatusCode::UNAUTHORIZED),
            "{adapter:?}"
        );
    }
    let token = provider.access_token().await.unwrap();
    vec![token.expose_secret().to_owned()]
}

/// A Redis lease that expires while its holder stalls: the next holder takes it, and the old
/// holder's write and renewal find it lost.
async fn redis_leases() {
    let redis = redis_support::RedisServer::start();
    let a = RedisStore::builder(redis.url()).build().unwrap();
    let b = RedisStore::builder(redis.url()).build().unwrap();
    let stale = a
        .lock_refresh("ns", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fresh = b
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(a.save("ns", &StoredTokens::default()).await.is_err());
    assert!(stale.renew(Duration::from_secs(10)).await.is_err());
    stale.release().await.unwrap();
    fresh.release().await.unwrap();
}

// =============================================================================================
// The fresh path records nothing
// =============================================================================================

/// With a recorder installed and feature `metrics` on, requests whose token is at hand make no
/// call at all into the recorder or a handle (so no allocation and no lock for metrics):
/// through both adapters (an OAuth provider and a static key) and the provider alone.
#[test]
fn a_request_whose_token_is_at_hand_records_nothing() {
    let _serial = serial();
    let recorded = recorded();
    runtime().block_on(async {
        let server = server().await;
        let clock = ManualClock::new();
        let mut clients = Vec::new();
        let mut providers = Vec::new();
        for adapter in ADAPTERS {
            let provider = provider(&server, adapter, &clock, "fresh", None);
            clients.push(AuthClient::new(
                adapter,
                provider.clone(),
                &server.base_url(),
            ));
            let key = StaticToken::api_key(API_KEY).unwrap();
            clients.push(AuthClient::new(adapter, key, &server.base_url()));
            providers.push(provider);
        }
        // Warm: every client has sent once (connections open, tokens accepted).
        for client in &clients {
            assert!(client.get(&server.resource_url()).await.is_ok());
        }
        let before = recorded.operations.load(Ordering::SeqCst);
        for _ in 0..50 {
            for client in &clients {
                assert!(client.get(&server.resource_url()).await.is_ok());
            }
        }
        let ext = Extensions::new();
        let view = RequestView::new(&Method::GET, "http", "api.example", "/", None, &ext);
        for provider in &providers {
            for _ in 0..1000 {
                let mut answer = provider.authorize(&view);
                assert!(answer.take_ready().unwrap().is_ok(), "at hand");
            }
        }
        let after = recorded.operations.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{} requests whose token was at hand touched the recorder",
            50 * clients.len() + 1000 * providers.len()
        );
        assert_eq!(server.stats().token_calls, 0, "no refresh happened");
    });
}

// =============================================================================================
// Traces
// =============================================================================================

/// The token request is a client span inside the refresh span, with the OpenTelemetry HTTP
/// fields; the refresh's outcome is a class; both adapters mark their retry with
/// `http.request.resend_count` and log a skipped retry at the same level.
#[test]
fn the_token_request_is_a_client_span_in_the_refresh_and_both_adapters_log_alike() {
    let _serial = serial();
    let captured = captured();
    let mut per_adapter = Vec::new();
    runtime().block_on(async {
        for adapter in ADAPTERS {
            captured.take();
            let server = server().await;
            let clock = ManualClock::new();
            let name = format!("traces-{adapter:?}");
            let provider = provider(&server, adapter, &clock, &name, None);
            let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
            let token = provider.access_token().await.unwrap();
            server.revoke_access_token(token.expose_secret());
            assert!(client.get(&server.resource_url()).await.is_ok());
            let token = provider.access_token().await.unwrap();
            server.revoke_access_token(token.expose_secret());
            assert_eq!(get_uncopyable(adapter, &provider, &server).await, 401);
            server.push_fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
            assert!(provider.verify_session().await.is_err());
            per_adapter.push((adapter, captured.take(), server.addr(), server.token_url()));
        }
    });
    for (adapter, logs, addr, token_url) in &per_adapter {
        // The client span closes inside the refresh span, with its fields.
        let close = logs
            .lines()
            .find(|l| l.contains("client_auth.token_request{") && l.contains("close"))
            .unwrap_or_else(|| panic!("{adapter:?}: no client span:\n{logs}"));
        let (refresh, request) = close.split_once("client_auth.token_request{").unwrap();
        assert!(refresh.contains("client_auth.refresh{"), "nested: {close}");
        for field in [
            "otel.kind=\"client\"".to_owned(),
            "http.request.method=\"POST\"".to_owned(),
            "server.address=\"127.0.0.1\"".to_owned(),
            format!("server.port={}", addr.port()),
            format!("url.full={token_url} "),
            "http.response.status_code=200".to_owned(),
        ] {
            assert!(request.contains(&field), "{adapter:?}: {field} in {close}");
        }
        assert!(
            logs.lines()
                .any(|l| l.contains("client_auth.token_request{")
                    && l.contains("http.response.status_code=503")
                    && l.contains("error.type=\"503\"")),
            "{adapter:?}: the failed request has error.type:\n{logs}"
        );
        // The refresh span's outcome is a class.
        assert!(
            logs.lines()
                .any(|l| l.contains("client_auth.refresh{") && l.contains("outcome=\"success\"")),
            "{logs}"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains("client_auth.refresh{") && l.contains("outcome=\"transient\"")),
            "{logs}"
        );
        assert!(!logs.contains("outcome=\"ok\""), "{logs}");
        // The retry, and the skipped one, the same way in both adapters.
        assert!(
            logs.lines().any(|l| l.contains("DEBUG")
                && l.contains("http.request.resend_count=1")
                && l.contains("retrying once")),
            "{adapter:?}:\n{logs}"
        );
        assert!(
            logs.lines().any(|l| l.contains(" WARN ")
                && l.contains("401 not retried")
                && l.contains("reason=\"body_not_cloneable\"")),
            "{adapter:?}:\n{logs}"
        );
        assert!(!logs.contains(CLIENT_SECRET), "{logs}");
    }
}
