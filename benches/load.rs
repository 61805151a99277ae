//! What the token endpoint sees, and what callers wait, under load.
//!
//! Every scenario runs the OAuth provider against the testkit's token endpoint over real
//! loopback sockets, answering after 20 ms (`ServerConfig::token_delay`), with requests going
//! through `client_auth_tower::Authorize`:
//!
//! - **stampede**: 10 000 callers arrive together on an expired token (a `ManualClock` moved
//!   past its expiry); the inner service is a no-op. Counts token-endpoint calls (must be 1)
//!   and each caller's latency from its arrival to its response. Target: p99 ≤ one token
//!   round trip + 5 ms. A wake-up baseline runs the same callers without any auth: they wait
//!   on one `watch` channel filled after one token round trip, then call the same no-op
//!   service; its p99 is the floor for that many tasks on this machine.
//! - **401 storm**: 1 000 requests sent together with a token the resource rejects; the
//!   resource is an in-process service answering after 5 ms (so 1 000 sockets do not turn the
//!   measurement into one of the loopback stack), 401 for the rejected token and 200
//!   otherwise. Counts refreshes (must be 1) and, per request, the time from the moment the
//!   resource produced its 401 to the retried response. Target: p99 ≤ one token round trip +
//!   one resource round trip + 5 ms.
//! - **refresh-ahead**: 10 simulated minutes at a 60 s token lifetime, one request per 100
//!   simulated ms. Time is compressed (100 simulated ms per ~1 ms of real time, so a 20 ms
//!   token round trip lasts about 2 simulated seconds: pessimistic by 100×). Counts requests
//!   that had to wait for a refresh (their `authorize` future was not ready at once: must be
//!   0) and the refreshes.
//!
//! The token round trip is measured in the same run: the median of single refreshes by cold
//! providers (new client, new connection), as the stampede's one refresh is.
//!
//! `cargo bench` runs the full sizes and prints the figures (as JSON lines into
//! `$CLIENT_AUTH_BENCH_REPORT/load.jsonl` when that variable is set, for `report.sh`).
//! `cargo test` runs reduced sizes (1 000 callers, 200 401s, 2 simulated minutes) and asserts
//! the counts only, never a latency.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client_auth::{AuthorizationProvider, ManualClock, OAuthProvider, OAuthProviderBuilder};
use client_auth_testkit::{ServerConfig, TestServer};
use client_auth_tower::AuthorizeLayer;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Extensions, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};

const TOKEN_DELAY: Duration = Duration::from_millis(20);
const RESOURCE_DELAY: Duration = Duration::from_millis(5);
const API: &str = "https://api.example.com";
/// Nothing here should take long; a hang fails instead of blocking `cargo test`.
const DEADLINE: Duration = Duration::from_secs(60);

struct Sizes {
    stampede_callers: usize,
    storm_callers: usize,
    simulated: Duration,
}

const FULL: Sizes = Sizes {
    stampede_callers: 10_000,
    storm_callers: 1_000,
    simulated: Duration::from_secs(600),
};

const REDUCED: Sizes = Sizes {
    stampede_callers: 1_000,
    storm_callers: 200,
    simulated: Duration::from_secs(120),
};

fn oauth(server: &TestServer, clock: &ManualClock) -> OAuthProviderBuilder {
    OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .clock(Arc::new(clock.clone()))
}

fn layer<P: AuthorizationProvider>(provider: P) -> AuthorizeLayer<P> {
    AuthorizeLayer::builder(provider)
        .allow_origin(API)
        .build()
        .unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::get(format!("{API}/v1/items?page=1"))
        .body(Full::default())
        .unwrap()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 50.0)
}

/// One token round trip as the stampede's refresh sees it: a cold provider (new client, new
/// connection) refreshing once. The median of `samples` after one warm-up.
async fn token_rtt(server: &TestServer, samples: usize) -> Duration {
    let clock = ManualClock::new();
    let mut times = Vec::new();
    for i in 0..=samples {
        let grant = server.issue_grant(&format!("rtt-{i}"), None);
        let provider = oauth(server, &clock)
            .refresh_token(grant.refresh_token.as_str())
            .build()
            .unwrap();
        let start = Instant::now();
        provider.access_token().await.unwrap();
        if i > 0 {
            times.push(start.elapsed());
        }
    }
    median(times)
}

/// Spawns `callers` tasks that wait for one signal, then each run `call`; returns their
/// outputs once all are done.
async fn all_at_once<F, Fut, T>(callers: usize, call: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (go, _) = watch::channel(false);
    let waiting = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..callers)
        .map(|_| {
            let mut go = go.subscribe();
            let waiting = Arc::clone(&waiting);
            let call = call();
            tokio::spawn(async move {
                waiting.fetch_add(1, Ordering::Relaxed);
                go.wait_for(|go| *go).await.unwrap();
                call.await
            })
        })
        .collect();
    while waiting.load(Ordering::Relaxed) < callers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    go.send_replace(true);
    let mut outputs = Vec::with_capacity(callers);
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

// ---------------------------------------------------------------------------------------------
// 4. Stampede

async fn stampede(callers: usize) -> serde_json::Value {
    let server = TestServer::start_with(ServerConfig::default().token_delay(TOKEN_DELAY))
        .await
        .unwrap();
    let rtt = token_rtt(&server, 5).await;

    let clock = ManualClock::new();
    let grant = server.issue_grant("stampede", None);
    let provider = oauth(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token("expired-access-token", Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(61));
    // A no-op client that answers with the `Authorization` it was sent.
    let service = layer(provider).layer(tower::service_fn(|request: Request<Full<Bytes>>| {
        let mut response = Response::new(());
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            response.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        std::future::ready(Ok::<_, Infallible>(response))
    }));
    server.reset_stats();

    let outcomes = all_at_once(callers, || {
        let mut service = service.clone();
        async move {
            let start = Instant::now();
            let response = service.ready().await.unwrap().call(get()).await.unwrap();
            (
                start.elapsed(),
                response.headers().get(AUTHORIZATION).cloned(),
            )
        }
    })
    .await;
    let token_calls = server.stats().token_calls;
    let baseline = wake_up_baseline(callers, rtt).await;

    let mut latencies: Vec<Duration> = outcomes.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let first = outcomes[0].1.clone();
    assert!(
        outcomes.iter().all(|(_, v)| *v == first),
        "every caller gets the same credential"
    );
    assert_ne!(
        first,
        Some(HeaderValue::from_static("Bearer expired-access-token")),
        "the expired token is never sent"
    );
    json!({
        "item": "stampede",
        "callers": callers,
        "token_calls": token_calls,
        "token_rtt_ms": millis(rtt),
        "p50_ms": millis(percentile(&latencies, 50.0)),
        "p99_ms": millis(percentile(&latencies, 99.0)),
        "max_ms": millis(*latencies.last().unwrap()),
        "baseline_p50_ms": millis(percentile(&baseline, 50.0)),
        "baseline_p99_ms": millis(percentile(&baseline, 99.0)),
    })
}

/// The floor for the stampede on this machine: the same callers, each waiting on one `watch`
/// channel that a task fills after `rtt`, then calling a no-op service: no provider, no
/// layer. Its p99 is what waking and running that many tasks costs here.
async fn wake_up_baseline(callers: usize, rtt: Duration) -> Vec<Duration> {
    let (done, _) = watch::channel(None::<HeaderValue>);
    let done = Arc::new(done);
    let started = Arc::new(AtomicUsize::new(0));
    let outcomes = all_at_once(callers, || {
        let mut rx = done.subscribe();
        let done = Arc::clone(&done);
        let started = Arc::clone(&started);
        let mut service = tower::service_fn(|request: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(request.headers().len())))
        });
        async move {
            let start = Instant::now();
            if started.fetch_add(1, Ordering::Relaxed) == 0 {
                // The first caller starts the one "refresh".
                tokio::spawn(async move {
                    tokio::time::sleep(rtt).await;
                    done.send_replace(Some(HeaderValue::from_static("Bearer new")));
                });
            }
            let value = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
            let mut request = get();
            request.headers_mut().insert(AUTHORIZATION, value);
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            std::hint::black_box(response);
            start.elapsed()
        }
    })
    .await;
    let mut latencies = outcomes;
    latencies.sort();
    latencies
}

// ---------------------------------------------------------------------------------------------
// 5. 401 storm

/// Set by the resource when it answers 401: when the recovery started.
#[derive(Clone, Default)]
struct Got401(Arc<OnceLock<Instant>>);

const REJECTED: &str = "Bearer rejected-access-token";

/// The protected resource: answers after `RESOURCE_DELAY`, 401 to the rejected token.
async fn resource(request: Request<Full<Bytes>>) -> Result<Response<()>, Infallible> {
    tokio::time::sleep(RESOURCE_DELAY).await;
    let mut response = Response::new(());
    if request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        == Some(REJECTED.as_bytes())
    {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        if let Some(got) = request.extensions().get::<Got401>() {
            let _ = got.0.set(Instant::now());
        }
    }
    Ok(response)
}

async fn storm(callers: usize) -> serde_json::Value {
    let server = TestServer::start_with(ServerConfig::default().token_delay(TOKEN_DELAY))
        .await
        .unwrap();
    let rtt = token_rtt(&server, 5).await;
    let mut resource_times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut request = get();
        request
            .headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("Bearer fine"));
        resource(request).await.unwrap();
        resource_times.push(start.elapsed());
    }
    let resource_rtt = median(resource_times);

    let clock = ManualClock::new();
    let grant = server.issue_grant("storm", None);
    let provider = oauth(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(
            REJECTED.trim_start_matches("Bearer "),
            Some(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let service = layer(provider).layer(tower::service_fn(resource));
    server.reset_stats();

    let outcomes = all_at_once(callers, || {
        let mut service = service.clone();
        async move {
            let got = Got401::default();
            let mut request = get();
            request.extensions_mut().insert(got.clone());
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            let end = Instant::now();
            (response.status(), got.0.get().map(|at| end - *at))
        }
    })
    .await;
    let refreshes = server.stats().token_calls;

    assert!(
        outcomes.iter().all(|(s, _)| *s == StatusCode::OK),
        "every request ends in 200"
    );
    let mut latencies: Vec<Duration> = outcomes.iter().filter_map(|(_, d)| *d).collect();
    latencies.sort();
    json!({
        "item": "storm",
        "callers": callers,
        "got_401": latencies.len(),
        "refreshes": refreshes,
        "token_rtt_ms": millis(rtt),
        "resource_rtt_ms": millis(resource_rtt),
        "p50_ms": millis(percentile(&latencies, 50.0)),
        "p99_ms": millis(percentile(&latencies, 99.0)),
        "max_ms": millis(latencies.last().copied().unwrap_or_default()),
    })
}

// ---------------------------------------------------------------------------------------------
// 6. Refresh-ahead

async fn refresh_ahead(simulated: Duration) -> serde_json::Value {
    const LIFETIME: Duration = Duration::from_secs(60);
    const STEP: Duration = Duration::from_millis(100);
    let server = TestServer::start_with(
        ServerConfig::default()
            .access_token_lifetime(LIFETIME)
            .token_delay(TOKEN_DELAY),
    )
    .await
    .unwrap();
    let clock = ManualClock::new();
    let grant = server.issue_grant("steady", None);
    let provider = oauth(&server, &clock)
        .refresh_token(grant.refresh_token.as_str())
        .access_token(grant.access_token.as_str(), Some(LIFETIME))
        .build()
        .unwrap();
    let extensions = Extensions::new();
    let view = client_auth::RequestView::new(
        &Method::GET,
        "https",
        "api.example.com",
        "/v1/items",
        None,
        &extensions,
    );

    let steps = simulated.as_millis() / STEP.as_millis();
    let (mut requests, mut waited) = (0_u64, 0_u64);
    for _ in 0..steps {
        clock.advance(STEP);
        let mut credential = provider.authorize(&view);
        requests += 1;
        match credential.take_ready() {
            Some(result) => drop(result.unwrap()),
            None => {
                waited += 1;
                credential.await.unwrap();
            }
        }
        // Real time for a refresh in flight to progress: ~1 ms per 100 simulated ms.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    json!({
        "item": "refresh_ahead",
        "simulated_s": simulated.as_secs(),
        "lifetime_s": LIFETIME.as_secs(),
        "requests": requests,
        "waited": waited,
        "refreshes": server.stats().token_calls,
    })
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // Like criterion: `--bench` without `--test` measures; anything else is a smoke test.
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let sizes = if bench { FULL } else { REDUCED };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            vec![
                stampede(sizes.stampede_callers).await,
                storm(sizes.storm_callers).await,
                refresh_ahead(sizes.simulated).await,
            ]
        })
        .await
        .expect("the load scenarios finish within a minute")
    });

    for result in &results {
        println!("{result}");
    }
    if bench && let Ok(dir) = std::env::var("CLIENT_AUTH_BENCH_REPORT") {
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = std::fs::File::create(format!("{dir}/load.jsonl")).unwrap();
        for result in &results {
            writeln!(file, "{result}").unwrap();
        }
    }

    // The counts hold in every mode; latencies are reported, never asserted.
    let [stampede, storm, steady] = &results[..] else {
        unreachable!()
    };
    assert_eq!(
        stampede["token_calls"], 1,
        "stampede: one token-endpoint call"
    );
    assert_eq!(storm["refreshes"], 1, "401 storm: one refresh");
    assert_eq!(steady["waited"], 0, "refresh-ahead: nobody waits");
    assert!(
        steady["refreshes"].as_u64().unwrap() >= sizes.simulated.as_secs() / 60,
        "refresh-ahead: the token is renewed as it goes"
    );
}
