//! Review of the observability work (feature `metrics`, the refresh and client spans, the
//! adapters' report functions): each test is named after the behaviour that holds; where its
//! comment describes something going wrong, that is the defect the review reproduced before it
//! was fixed. (The fresh path's allocations are checked outside the workspace, by
//! scripts/review4-consumers.sh: this workspace forbids the `unsafe` a counting allocator
//! needs.)
//!
//! The binary installs one global `tracing` subscriber (TRACE, span closings written out) and
//! one global `metrics` recorder; the tests take turns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/adapters.rs"]
mod adapters;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use adapters::{ADAPTERS, Adapter, AuthClient, Outcome, token_transport};
use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::metrics as names;
use client_auth::{
    AuthorizationProvider, ClientAuth, DpopKey, Error, OAuthProvider, PerTargetProvider,
    TokenTransport,
};
use client_auth_testkit::{ServerConfig, TestServer};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tracing::{Instrument as _, span};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

// =============================================================================================
// A recorder that keeps every sample, and a subscriber that keeps every line
// =============================================================================================

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

#[derive(Default)]
struct Recorded {
    samples: Mutex<Vec<Sample>>,
}

impl Recorded {
    fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

struct Handle {
    sample: Sample,
    recorded: Arc<Recorded>,
}

impl Handle {
    fn push(&self) {
        self.recorded
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.sample.clone());
    }
}

impl CounterFn for Handle {
    fn increment(&self, _: u64) {
        self.push();
    }
    fn absolute(&self, _: u64) {
        self.push();
    }
}

impl GaugeFn for Handle {
    fn increment(&self, _: f64) {
        self.push();
    }
    fn decrement(&self, _: f64) {
        self.push();
    }
    fn set(&self, _: f64) {
        self.push();
    }
}

impl HistogramFn for Handle {
    fn record(&self, _: f64) {
        self.push();
    }
}

struct TestRecorder(Arc<Recorded>);

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            sample: Sample {
                name: key.name().to_owned(),
                labels: key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
            },
            recorded: Arc::clone(&self.0),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
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

fn recorded() -> &'static Arc<Recorded> {
    static RECORDED: OnceLock<Arc<Recorded>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded = Arc::new(Recorded::default());
        metrics::set_global_recorder(TestRecorder(Arc::clone(&recorded))).unwrap();
        recorded
    })
}

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

/// Every event and span of the process at TRACE, with span closings and their fields.
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
            .finish()
            .with(Relations);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

/// How spans relate: "NAME in [PARENT,GRANDPARENT,..]" when one is created, "NAME follows
/// OTHER" for a `follows_from` link.
fn relations() -> MutexGuard<'static, Vec<String>> {
    static RELATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    RELATIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Relations;

impl<S> tracing_subscriber::Layer<S> for Relations
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let ancestors: Vec<&str> = span.scope().skip(1).map(|s| s.name()).collect();
            let line = format!("{} in [{}]", span.name(), ancestors.join(","));
            relations().push(line);
        }
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        if let (Some(a), Some(b)) = (ctx.span(id), ctx.span(follows)) {
            let line = format!("{} follows {}", a.name(), b.name());
            relations().push(line);
        }
    }
}

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

// =============================================================================================
// Secrets a careless token endpoint echoes
// =============================================================================================

/// A `client_secret_jwt` client whose token endpoint quotes the rejected `client_assertion` in
/// `error_description` (the testkit's `echo_rejected_assertions`). The assertion is an HS256
/// JWT keyed with the client secret: whoever reads it can replay it for its minute and try
/// guesses of the client secret against its signature offline. It must reach neither the
/// error the caller gets nor any log line. At 35dd01a it reached both (the WARN "token refresh
/// failed; backing off" and the DEBUG "refresh failed" events): the redaction listed the
/// refresh token, the client secret, its Basic form and the assertions of a source, not the
/// assertion `Config::form_request` signs itself. 7c8d8c3 fixed it; this keeps it fixed.
#[test]
fn an_echoed_signed_client_assertion_reaches_no_error_and_no_event() {
    let _serial = serial();
    let captured = captured();
    captured.take();
    runtime().block_on(async {
        let server = TestServer::start_with(
            ServerConfig::default()
                .client("jwt-client", Some("MARKER-jwt-client-secret"))
                // Any client assertion but this one is refused, and quoted.
                .accept_client_assertion("jwt-client", "the-only-accepted-assertion")
                .echo_rejected_assertions(true),
        )
        .await
        .unwrap();
        for adapter in ADAPTERS {
            let provider = OAuthProvider::client_credentials(server.token_url())
                .client_id("jwt-client")
                .client_secret("MARKER-jwt-client-secret")
                .client_auth(ClientAuth::SecretJwt)
                .transport(token_transport(adapter))
                .build()
                .unwrap();
            let client = AuthClient::new(adapter, provider, &server.base_url());
            let error = match client.get(&server.resource_url()).await {
                Outcome::Auth(error) => error,
                other => panic!("{adapter:?}: {other:?}"),
            };
            let sent = server
                .token_requests()
                .last()
                .and_then(|r| r.param("client_assertion").map(str::to_owned))
                .expect("the assertion the client sent");
            assert_eq!(sent.split('.').count(), 3, "a JWT was sent");
            let shown = format!("{error} | {error:?}");
            let logs = captured.take();
            let warned: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains(&sent))
                .map(|l| l.split(": ").next().unwrap_or(l))
                .collect();
            assert!(
                !shown.contains(&sent) && warned.is_empty(),
                "{adapter:?}: the signed assertion is in the caller's error ({}) and in {} log \
                 lines ({warned:?}): {shown}",
                shown.contains(&sent),
                warned.len(),
            );
        }
    });
}

/// A token endpoint that refuses every request with `invalid_dpop_proof` and quotes the proof
/// it got, as a careless server does.
#[derive(Debug)]
struct EchoesDpopProof;

impl TokenTransport for EchoesDpopProof {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let proof = request
            .headers()
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Box::pin(async move {
            let body = serde_json::json!({
                "error": "invalid_dpop_proof",
                "error_description": format!("proof rejected: {proof}"),
            });
            Ok(http::Response::builder()
                .status(400)
                .header("content-type", "application/json")
                .body(Bytes::from(body.to_string()))
                .unwrap())
        })
    }
}

/// The same for the DPoP proof of a token request (crates/client-auth/src/oauth/cache.rs,
/// `prove_token_request` puts it in the `DPoP` header; neither `Engine::redacted` nor
/// `Inputs::secrets` knows it).
#[test]
fn an_echoed_dpop_proof_reaches_no_error_and_no_event() {
    let _serial = serial();
    let captured = captured();
    captured.take();
    runtime().block_on(async {
        let provider = OAuthProvider::client_credentials("https://auth.example.com/token")
            .client_id("dpop-client")
            .client_secret("MARKER-dpop-client-secret")
            .dpop(DpopKey::generate().unwrap())
            .transport(Arc::new(EchoesDpopProof))
            .build()
            .unwrap();
        let error = provider.access_token().await.unwrap_err();
        let shown = format!("{error} | {error:?}");
        let logs = captured.take();
        // A compact JWS: header.payload.signature, the header a DPoP proof's.
        let leaked = |text: &str| {
            text.split(|c: char| c.is_whitespace() || c == '"' || c == '\\')
                .any(|word| word.starts_with("eyJ") && word.split('.').count() == 3)
        };
        let logged: Vec<&str> = logs
            .lines()
            .filter(|l| leaked(l))
            .map(|l| l.split(": ").next().unwrap_or(l))
            .collect();
        assert!(
            !leaked(&shown) && logged.is_empty(),
            "the DPoP proof is in the caller's error ({}) and in {} log lines ({logged:?}): \
             {shown}",
            leaked(&shown),
            logged.len(),
        );
    });
}

// =============================================================================================
// Metric labels of a provider per target
// =============================================================================================

/// A `PerTargetProvider`'s 401s and retries are counted under its template's `metrics_name`,
/// like its targets' token requests. At 35dd01a `PerTargetProvider` did not implement
/// `AuthorizationProvider::metrics_name`, so the adapters counted them under
/// `provider="default"`: one provider, two label values. 7c8d8c3 forwards the name; this keeps
/// it so.
#[test]
fn a_per_target_providers_adapter_metrics_carry_its_metrics_name() {
    let _serial = serial();
    let recorded = recorded();
    runtime().block_on(async {
        let server = TestServer::start_with(
            ServerConfig::default().client("targets-client", Some("targets-secret")),
        )
        .await
        .unwrap();
        for adapter in ADAPTERS {
            recorded.take();
            let template = OAuthProvider::client_credentials(server.token_url())
                .client_id("targets-client")
                .client_secret("targets-secret")
                .metrics_name("billing")
                .transport(token_transport(adapter));
            let provider = PerTargetProvider::builder(template).build().unwrap();
            let client = AuthClient::new(adapter, provider.clone(), &server.base_url());
            assert!(client.get(&server.resource_url()).await.is_ok());
            // Revoke the token: a 401, one refresh, one retry.
            server.revoke_all_access_tokens();
            assert!(client.get(&server.resource_url()).await.is_ok());
            let samples = recorded.take();
            let providers_of = |name: &str| -> Vec<String> {
                samples
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| s.labels["provider"].clone())
                    .collect()
            };
            assert_eq!(
                providers_of(names::TOKEN_REQUESTS),
                ["billing", "billing"],
                "{adapter:?}"
            );
            assert_eq!(
                providers_of(names::UNAUTHORIZED),
                ["billing"],
                "{adapter:?}: the 401 is the same provider's"
            );
            assert_eq!(providers_of(names::RETRIES), ["billing"], "{adapter:?}");
            assert_eq!(
                provider.metrics_name(),
                "billing",
                "{adapter:?}: the provider label the adapters use"
            );
        }
    });
}

// =============================================================================================
// The refresh span names the provider as the metrics do
// =============================================================================================

/// The refresh span's `provider` field is the literal `"oauth"`
/// (crates/client-auth/src/oauth/cache.rs, `run_refresh`), while `client_auth::metrics`
/// documents the span's fields next to the `provider` label (the `metrics_name`): two
/// providers' refreshes cannot be told apart in a trace but by their namespace, and a trace
/// cannot be joined with the metrics of the same provider.
#[test]
fn the_refresh_span_names_the_provider_as_its_metrics_do() {
    let _serial = serial();
    let captured = captured();
    captured.take();
    runtime().block_on(async {
        let server = TestServer::start_with(
            ServerConfig::default().client("span-client", Some("span-secret")),
        )
        .await
        .unwrap();
        let provider = OAuthProvider::client_credentials(server.token_url())
            .client_id("span-client")
            .client_secret("span-secret")
            .metrics_name("billing")
            .transport(token_transport(Adapter::Reqwest))
            .build()
            .unwrap();
        provider.access_token().await.unwrap();
    });
    let logs = captured.take();
    let close = logs
        .lines()
        .find(|l| l.contains("client_auth.refresh{") && l.contains("close"))
        .unwrap_or_else(|| panic!("no refresh span:\n{logs}"));
    assert!(close.contains("provider=\"billing\""), "{close}");
}

// =============================================================================================
// A slow request leads to the token call that held it
// =============================================================================================

/// The README (Observability) promises that "a slow request leads to the token call that held
/// it". The refresh runs on a task `SingleFlight::start` spawns
/// (crates/client-auth/src/single_flight.rs, `handle.spawn(operation(completion))`), and
/// `run_refresh` (crates/client-auth/src/oauth/cache.rs) creates `client_auth.refresh` inside
/// that task: a root span, neither a child of the request that started it nor linked
/// (`follows_from`) to it or to the requests that waited for it. A trace of the slow request
/// holds no token call.
#[test]
fn a_request_that_waits_for_a_refresh_leads_to_its_token_call() {
    let _serial = serial();
    let captured = captured();
    runtime().block_on(async {
        let server = TestServer::start_with(
            ServerConfig::default().client("trace-client", Some("trace-secret")),
        )
        .await
        .unwrap();
        for adapter in ADAPTERS {
            captured.take();
            relations().clear();
            let provider = OAuthProvider::client_credentials(server.token_url())
                .client_id("trace-client")
                .client_secret("trace-secret")
                .transport(token_transport(adapter))
                .build()
                .unwrap();
            let client = AuthClient::new(adapter, provider, &server.base_url());
            // No token yet: this request waits for the first one.
            let outcome = client
                .get(&server.resource_url())
                .instrument(tracing::info_span!("app_request"))
                .await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
            let seen = relations().clone();
            let refresh: Vec<&String> = seen
                .iter()
                .filter(|l| l.starts_with("client_auth.refresh "))
                .collect();
            assert!(!refresh.is_empty(), "{adapter:?}: a refresh span: {seen:?}");
            assert!(
                refresh
                    .iter()
                    .any(|l| l.contains("app_request") || l.contains("follows")),
                "{adapter:?}: the refresh span is neither inside nor linked to the request \
                 that waited for it: {refresh:?} (all: {seen:?})"
            );
        }
    });
}

// =============================================================================================
// `client_auth_token_requests_total` counts HTTP requests to the token endpoint
// =============================================================================================

/// A token endpoint that asks for a DPoP nonce first (`400 use_dpop_nonce` with `DPoP-Nonce`),
/// then issues a token; counts what it was sent.
#[derive(Debug, Default)]
struct NonceFirst {
    sent: std::sync::atomic::AtomicUsize,
}

impl TokenTransport for NonceFirst {
    fn send(
        &self,
        _request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let (status, body) = if n == 0 {
                (400, serde_json::json!({ "error": "use_dpop_nonce" }))
            } else {
                (
                    200,
                    serde_json::json!({
                        "access_token": "at", "token_type": "DPoP", "expires_in": 3600
                    }),
                )
            };
            Ok(http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("dpop-nonce", "nonce-from-the-server")
                .body(Bytes::from(body.to_string()))
                .unwrap())
        })
    }
}

/// The metric is documented as "a refresh asked the token endpoint for tokens", next to a
/// latency "from the request to the parsed answer", and the README calls it token requests.
/// It is recorded once per refresh attempt around `exchange` (crates/client-auth/src/oauth/
/// cache.rs, the `token_request()` timer in `refresh`): a refresh that answers the server's
/// DPoP nonce challenge sends two requests (two `client_auth.token_request` spans) and counts
/// one, with one latency spanning both round trips; and a refresh that fails before anything is
/// sent (an assertion source that cannot be read) counts a token request that never happened.
#[test]
fn the_token_request_metric_counts_each_request_sent() {
    let _serial = serial();
    let recorded = recorded();
    let captured = captured();
    let (sent, spans, counted_nonce, counted_unsent) = runtime().block_on(async {
        recorded.take();
        captured.take();
        let transport = Arc::new(NonceFirst::default());
        let provider = OAuthProvider::client_credentials("https://auth.example.com/token")
            .client_id("nonce-client")
            .client_secret("nonce-secret")
            .dpop(DpopKey::generate().unwrap())
            .metrics_name("nonce")
            .transport(Arc::clone(&transport) as Arc<dyn TokenTransport>)
            .build()
            .unwrap();
        provider.access_token().await.unwrap();
        let sent = transport.sent.load(std::sync::atomic::Ordering::SeqCst);
        let spans = captured
            .take()
            .lines()
            .filter(|l| l.contains("client_auth.token_request{") && l.contains(" close"))
            .count();
        let counted_nonce = recorded
            .take()
            .iter()
            .filter(|s| s.name == names::TOKEN_REQUESTS)
            .count();

        // An assertion source that cannot be read: nothing is sent.
        let unsent = Arc::new(NonceFirst::default());
        let provider = OAuthProvider::client_credentials("https://auth.example.com/token")
            .client_id("unsent-client")
            .client_auth(ClientAuth::Assertion)
            .client_assertion(client_auth::AssertionSource::file(
                "/nonexistent/review4/assertion",
            ))
            .metrics_name("unsent")
            .transport(Arc::clone(&unsent) as Arc<dyn TokenTransport>)
            .build()
            .unwrap();
        assert!(provider.access_token().await.is_err());
        assert_eq!(unsent.sent.load(std::sync::atomic::Ordering::SeqCst), 0);
        let counted_unsent = recorded
            .take()
            .iter()
            .filter(|s| s.name == names::TOKEN_REQUESTS)
            .count();
        (sent, spans, counted_nonce, counted_unsent)
    });
    // The metric counts exchanges, as documented: a nonce retry inside one counts once (the
    // client spans show each send), and an exchange that failed before sending counts with
    // its outcome.
    assert_eq!(
        (sent, spans, counted_nonce, counted_unsent),
        (2, 2, 1, 1),
        "(requests sent, client spans, counted) for a nonce retry, and counted for a refresh that \
         sent nothing"
    );
}
