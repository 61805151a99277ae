//! Per-request cost of authorization against the best baselines, in the same process and run.
//!
//! - `tower_hot_path/*`: a realistic request (URI with a query, three headers, a small body)
//!   through one layer into a no-op `service_fn`, polled on this thread with a no-op waker:
//!   `A_none` (no layer), `B_tower_http` (tower-http `AddAuthorization`, bearer, sensitive),
//!   `C_static` (ours, static key), `D_oauth_no_retry` (ours, a fresh cached OAuth token, 401
//!   retry off), `E_oauth_retry` (the same with the retry armed: the request snapshot is
//!   taken), `F_oauth_dpop` (`E` with a DPoP-bound token: a new proof signed per request), and
//!   `A_plus_clone` (`A` plus one clone of the request, for the cost of a clone).
//! - `reqwest_hot_path/*`: reqwest-middleware with a last middleware that answers a canned
//!   `http::Response` converted with `reqwest::Response::from` (no socket): `none`,
//!   `fixed_header` (a middleware setting a fixed `Authorization`), `ours_static`,
//!   `ours_oauth_no_retry`, `ours_oauth` (fresh cached OAuth token, retry armed), `ours_dpop`
//!   (`ours_oauth` with a DPoP-bound token), and `none_plus_clone` (`none` plus one
//!   `reqwest::Request::try_clone`, the snapshot the armed retry takes).
//! - `tower_scaling/<variant>/<tasks>` and `reqwest_scaling/<variant>/<tasks>`: the same on a
//!   2-worker tokio runtime with 1, 2 and 16 tasks sending at once; the time is wall time per
//!   request (total wall time / requests), so compare ratios, not absolute times.
//!
//! "401 retry off" for `D` is a wrapper whose `can_recover()` is `false`. That is the trait's
//! own switch (a static key says the same): `Authorize` then takes no snapshot, keeps no
//! provider handle and no service clone, and the reqwest middleware skips `try_clone`, so the
//! difference `E - D` is exactly what arming the retry costs. (`NeverClone` would also skip
//! the snapshot, but it models a body that *cannot* be copied, not a retry turned off, and the
//! reqwest adapter has no such hook.)
//!
//! Allocations per request (item 2) are counted out of process: the workspace forbids
//! `unsafe_code`, and a counting `#[global_allocator]` needs `unsafe impl GlobalAlloc`. With
//! `CLIENT_AUTH_BENCH_ALLOCS=<variant>:<n>` this binary sends `n` requests of one variant on
//! this thread (no runtime, no criterion) and exits; `benches/report.sh` runs it under
//! valgrind for two values of `n` and divides the difference of the heap-allocation counts
//! (memcheck) and of the instruction counts (callgrind), which do not depend on the load of
//! the machine the way times do.
//!
//! `cargo test` runs each benchmark once (criterion's test mode) and checks that every variant
//! stamps what it should; it asserts nothing about time.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, DpopKey, Error, OAuthProvider, RequestView,
    StaticToken, TokenTransport,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_tower::AuthorizeLayer;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName};
use http::{Extensions, HeaderValue, Request, Response};
use http_body_util::Full;
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

const URL: &str = "https://api.example.com/v1/orders/42/items?page=2&limit=50&sort=-created";
const ORIGIN: &str = "https://api.example.com";
const BODY: &[u8] = br#"{"sku":"WIDGET-7","quantity":3,"note":"leave at the door"}"#;
const REQUEST_ID: &str = "7f3c9a2e-5b1d-4c8e-9f60-2d4b8a1e3c57";
/// An access token of a realistic size for an opaque token.
const TOKEN: &str = "ya29.a0AfB_byC7kQm3xZ9vT2pLr8sN4wH6jE1uYgD5fK0oI3bV7cM2nX8qR4tS6wA9zL1pE";
const API_KEY: &str = "bk_live_51H8xkQ2eZvKYlo2C0a1b2c3d4e5f6g7h8i9j0";

const TASK_COUNTS: [usize; 3] = [1, 2, 16];

type Body = Full<Bytes>;
type Req = Request<Body>;

// ---------------------------------------------------------------------------------------------
// The request and the providers

/// The realistic request: a URI with a query, three headers, a small body.
fn request() -> Req {
    Request::post(URL)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header(HeaderName::from_static("x-request-id"), REQUEST_ID)
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap()
}

/// A token transport that is never called: the benchmarks run on the fresh path.
#[derive(Debug)]
struct NoTokenEndpoint;

impl TokenTransport for NoTokenEndpoint {
    fn send(
        &self,
        _request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        Box::pin(async { Err(Error::Config("the benchmark never refreshes".into())) })
    }
}

/// An OAuth provider holding a fresh access token (valid for a day, so never in the soft
/// window during a run).
fn oauth() -> OAuthProvider {
    OAuthProvider::refresh_token_grant("https://auth.example.com/oauth/token")
        .client_id("bench-client")
        .client_secret("bench-secret")
        .refresh_token("bench-refresh-token")
        .access_token(TOKEN, Some(Duration::from_secs(24 * 3600)))
        .transport(std::sync::Arc::new(NoTokenEndpoint))
        .build()
        .unwrap()
}

/// The token endpoint of the DPoP variants, answered without a socket: a DPoP-bound token for
/// a day.
#[derive(Debug)]
struct DpopTokenEndpoint;

impl TokenTransport for DpopTokenEndpoint {
    fn send(
        &self,
        _request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let body =
            format!(r#"{{"access_token":"{TOKEN}","token_type":"DPoP","expires_in":86400}}"#);
        Box::pin(async move {
            let mut response = http::Response::new(Bytes::from(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        })
    }
}

/// An OAuth provider with a DPoP key holding a fresh DPoP-bound access token (one refresh
/// through `DpopTokenEndpoint` at start): every request it authorizes gets a new proof.
fn dpop_oauth() -> OAuthProvider {
    let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/oauth/token")
        .client_id("bench-client")
        .client_secret("bench-secret")
        .refresh_token("bench-refresh-token")
        .dpop(DpopKey::generate().unwrap())
        .transport(std::sync::Arc::new(DpopTokenEndpoint))
        .build()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(provider.access_token())
        .unwrap();
    provider
}

/// Variant D: the OAuth provider with the 401 retry off, through the trait's own switch. It
/// still hears every answer (`on_accepted`), as the OAuth provider does, so that `E - D` is
/// the retry's cost alone.
struct NoRetry<P>(P);

impl<P: AuthorizationProvider> AuthorizationProvider for NoRetry<P> {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        self.0.authorize(request)
    }
    fn can_recover(&self) -> bool {
        false
    }
    fn on_accepted(&self, credential: &client_auth::Credential) {
        self.0.on_accepted(credential);
    }
    fn retry_forbidden(&self) -> bool {
        self.0.retry_forbidden()
    }
    fn metrics_name(&self) -> &str {
        self.0.metrics_name()
    }
}

// ---------------------------------------------------------------------------------------------
// tower

/// The no-op client: drops the request, answers 200 at once. With `echo`, the answer carries
/// the request's `Authorization` (only for the checks, never measured).
fn noop(
    echo: bool,
) -> impl Service<Req, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |request: Req| {
        let mut response = Response::new(());
        if echo {
            for name in [AUTHORIZATION, HeaderName::from_static("dpop")] {
                if let Some(value) = request.headers().get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
        }
        std::future::ready(Ok(response))
    })
}

fn layer<P: AuthorizationProvider>(provider: P) -> AuthorizeLayer<P> {
    AuthorizeLayer::builder(provider)
        .allow_origin(ORIGIN)
        .build()
        .unwrap()
}

/// Polls `poll_ready`, `call` and the response future once each with a no-op waker: every
/// variant here completes synchronously on the fresh path.
fn drive<S, B>(service: &mut S, request: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("failed: {error:?}"),
        Poll::Pending => panic!("pending on the fresh path"),
    }
}

/// Polls a future once with a no-op waker; it must be ready.
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("pending on the fresh path"),
    }
}

/// Calls `$f(id, service, extra_clone, args..)` for the five tower variants and the clone
/// baseline, each around `noop($echo)`.
macro_rules! with_tower_variants {
    ($echo:expr, $f:ident $(, $arg:expr)*) => {{
        $f("A_none", noop($echo), false $(, $arg)*);
        $f(
            "B_tower_http",
            AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true).layer(noop($echo)),
            false $(, $arg)*
        );
        $f("C_static", layer(StaticToken::api_key(API_KEY).unwrap()).layer(noop($echo)), false $(, $arg)*);
        $f("D_oauth_no_retry", layer(NoRetry(oauth())).layer(noop($echo)), false $(, $arg)*);
        $f("E_oauth_retry", layer(oauth()).layer(noop($echo)), false $(, $arg)*);
        $f("F_oauth_dpop", layer(dpop_oauth()).layer(noop($echo)), false $(, $arg)*);
        $f("A_plus_clone", noop($echo), true $(, $arg)*);
    }};
}

fn tower_direct<S>(
    id: &str,
    mut service: S,
    extra_clone: bool,
    group: &mut BenchmarkGroup<'_, WallTime>,
) where
    S: Service<Req, Response = Response<()>>,
    S::Error: Debug,
{
    let template = request();
    group.bench_function(id, |b| {
        b.iter_batched(
            || template.clone(),
            |request| {
                if extra_clone {
                    black_box(request.clone());
                }
                drive(&mut service, request)
            },
            BatchSize::SmallInput,
        )
    });
}

fn tower_scaled<S>(
    id: &str,
    service: S,
    extra_clone: bool,
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
) where
    S: Service<Req, Response = Response<()>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    for tasks in TASK_COUNTS {
        group.bench_with_input(BenchmarkId::new(id, tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                scaled(runtime, tasks, || {
                    let mut service = service.clone();
                    async move {
                        // Each task has its own template, as each caller builds its own requests.
                        let template = request();
                        for _ in 0..iters {
                            let request = template.clone();
                            if extra_clone {
                                black_box(request.clone());
                            }
                            let response = service.ready().await.unwrap().call(request).await;
                            black_box(response.unwrap());
                        }
                    }
                })
            })
        });
    }
}

/// Runs `tasks` tasks at once and returns the wall time divided by `tasks`: for `iters`
/// requests per task, criterion then reports wall time per request.
fn scaled<F, Fut>(runtime: &tokio::runtime::Runtime, tasks: usize, task: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    runtime.block_on(async {
        let futures: Vec<Fut> = (0..tasks).map(|_| task()).collect();
        let start = Instant::now();
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed() / u32::try_from(tasks).unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// reqwest

/// The last middleware: a canned 200, converted with `reqwest::Response::from`, no socket.
/// With `echo`, the answer carries the request's `Authorization` (only for the checks).
struct Canned {
    echo: bool,
}

impl Middleware for Canned {
    fn handle<'a, 'b, 'c, 'fut>(
        &'a self,
        request: reqwest::Request,
        _extensions: &'b mut Extensions,
        _next: Next<'c>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + 'fut>>
    where
        'a: 'fut,
        'b: 'fut,
        'c: 'fut,
        Self: 'fut,
    {
        let mut response = http::Response::new(reqwest::Body::from(Bytes::from_static(b"{}")));
        if self.echo {
            for name in [AUTHORIZATION, HeaderName::from_static("dpop")] {
                if let Some(value) = request.headers().get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
        }
        drop(request);
        Box::pin(async { Ok(reqwest::Response::from(response)) })
    }
}

/// The fixed-header baseline, written as `#[async_trait]` writes any middleware (one boxed
/// future per call, like ours).
struct FixedHeader(HeaderValue);

impl Middleware for FixedHeader {
    fn handle<'a, 'b, 'c, 'fut>(
        &'a self,
        mut request: reqwest::Request,
        extensions: &'b mut Extensions,
        next: Next<'c>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + 'fut>>
    where
        'a: 'fut,
        'b: 'fut,
        'c: 'fut,
        Self: 'fut,
    {
        Box::pin(async move {
            request.headers_mut().insert(AUTHORIZATION, self.0.clone());
            next.run(request, extensions).await
        })
    }
}

fn reqwest_client(
    first: Option<std::sync::Arc<dyn Middleware>>,
    echo: bool,
) -> ClientWithMiddleware {
    let mut builder = reqwest_middleware::ClientBuilder::new(reqwest::Client::new());
    if let Some(middleware) = first {
        builder = builder.with_arc(middleware);
    }
    builder.with(Canned { echo }).build()
}

/// A reqwest variant: its id, its client, and whether each request is also copied once with
/// `try_clone` (the `none_plus_clone` baseline).
struct ReqwestVariant {
    id: &'static str,
    client: ClientWithMiddleware,
    extra_clone: bool,
}

fn ours<P: AuthorizationProvider>(provider: P) -> Option<std::sync::Arc<dyn Middleware>> {
    let middleware = AuthorizationMiddleware::builder(provider)
        .allow_origin(ORIGIN)
        .build()
        .unwrap();
    Some(std::sync::Arc::new(middleware))
}

/// The reqwest variants, in the order of the tables.
const REQWEST_IDS: [&str; 7] = [
    "none",
    "fixed_header",
    "ours_static",
    "ours_oauth_no_retry",
    "ours_oauth",
    "ours_dpop",
    "none_plus_clone",
];

/// One reqwest variant, built alone: a DPoP key's generation (aws-lc's jitter entropy, whose
/// instruction count varies from run to run) happens only for the DPoP variant.
fn reqwest_variant(id: &'static str, echo: bool) -> ReqwestVariant {
    let (first, extra_clone): (Option<std::sync::Arc<dyn Middleware>>, bool) = match id {
        "none" => (None, false),
        "fixed_header" => {
            let mut fixed = HeaderValue::try_from(format!("Bearer {TOKEN}")).unwrap();
            fixed.set_sensitive(true);
            (Some(std::sync::Arc::new(FixedHeader(fixed))), false)
        }
        "ours_static" => (ours(StaticToken::api_key(API_KEY).unwrap()), false),
        "ours_oauth_no_retry" => (ours(NoRetry(oauth())), false),
        "ours_oauth" => (ours(oauth()), false),
        "ours_dpop" => (ours(dpop_oauth()), false),
        "none_plus_clone" => (None, true),
        other => panic!("unknown variant {other}"),
    };
    ReqwestVariant {
        id,
        client: reqwest_client(first, echo),
        extra_clone,
    }
}

fn reqwest_variants(echo: bool) -> impl Iterator<Item = ReqwestVariant> {
    REQWEST_IDS
        .into_iter()
        .map(move |id| reqwest_variant(id, echo))
}

/// One request of a reqwest variant, on this thread.
fn reqwest_send(variant: &ReqwestVariant, request: reqwest::Request) -> reqwest::Response {
    if variant.extra_clone {
        black_box(request.try_clone().unwrap());
    }
    now_or_never(variant.client.execute(request)).unwrap()
}

fn reqwest_request(client: &ClientWithMiddleware) -> reqwest::Request {
    client
        .post(URL)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header("x-request-id", REQUEST_ID)
        .body(Bytes::from_static(BODY))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The benchmarks

fn tower_hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("tower_hot_path");
    with_tower_variants!(false, tower_direct, &mut group);
    group.finish();
}

fn reqwest_hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("reqwest_hot_path");
    for variant in reqwest_variants(false) {
        let template = reqwest_request(&variant.client);
        group.bench_function(variant.id, |b| {
            b.iter_batched(
                || template.try_clone().unwrap(),
                |request| reqwest_send(&variant, request),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tower_scaling(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("tower_scaling");
    with_tower_variants!(false, tower_scaled, &mut group, &runtime);
    group.finish();
}

fn reqwest_scaling(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("reqwest_scaling");
    for variant in reqwest_variants(false) {
        let (id, client, extra_clone) = (variant.id, variant.client, variant.extra_clone);
        for tasks in TASK_COUNTS {
            group.bench_with_input(BenchmarkId::new(id, tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| {
                    scaled(&runtime, tasks, || {
                        let client = client.clone();
                        async move {
                            let template = reqwest_request(&client);
                            for _ in 0..iters {
                                let request = template.try_clone().unwrap();
                                if extra_clone {
                                    black_box(request.try_clone().unwrap());
                                }
                                black_box(client.execute(request).await.unwrap());
                            }
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Checks (every mode) and allocation counting (under valgrind, see report.sh)

/// Every variant stamps what it should (a sensitive `Authorization`, or none for the
/// baselines without a layer): the benchmarks measure the real thing.
fn check_variants() {
    fn expected(id: &str) -> Option<String> {
        match id {
            "A_none" | "A_plus_clone" | "none" | "none_plus_clone" => None,
            "C_static" | "ours_static" => Some(format!("Token {API_KEY}")),
            "F_oauth_dpop" | "ours_dpop" => Some(format!("DPoP {TOKEN}")),
            _ => Some(format!("Bearer {TOKEN}")),
        }
    }
    fn check(id: &str, value: Option<&HeaderValue>) {
        assert_eq!(
            value.map(|v| v.to_str().unwrap().to_owned()),
            expected(id),
            "{id}"
        );
        assert!(
            value.is_none_or(HeaderValue::is_sensitive),
            "{id}: not sensitive"
        );
    }
    fn check_tower<S>(id: &str, mut service: S, _extra_clone: bool)
    where
        S: Service<Req, Response = Response<()>>,
        S::Error: Debug,
    {
        let response = drive(&mut service, request());
        check(id, response.headers().get(AUTHORIZATION));
        assert_eq!(
            response.headers().contains_key("dpop"),
            id == "F_oauth_dpop",
            "{id}: a DPoP proof exactly with the DPoP-bound token"
        );
    }
    with_tower_variants!(true, check_tower);
    for variant in reqwest_variants(true) {
        let response = reqwest_send(&variant, reqwest_request(&variant.client));
        check(variant.id, response.headers().get(AUTHORIZATION));
        assert_eq!(
            response.headers().contains_key("dpop"),
            variant.id == "ours_dpop",
            "{}: a DPoP proof exactly with the DPoP-bound token",
            variant.id
        );
    }
}

/// `CLIENT_AUTH_BENCH_ALLOCS=<variant>:<n>`: 16 warm-up requests, then `n` requests of one
/// variant on this thread, then exit.
fn count_allocations(spec: &str) {
    let (variant, n) = spec.split_once(':').expect("<variant>:<n>");
    let n: u64 = n.parse().expect("a request count");
    let run_tower = |mut send: Box<dyn FnMut(Req)>, extra_clone: bool| {
        let template = request();
        for _ in 0..16 + n {
            let request = template.clone();
            if extra_clone {
                black_box(request.clone());
            }
            send(request);
        }
    };
    macro_rules! tower_variant {
        ($service:expr, $extra_clone:expr) => {{
            let mut service = $service;
            run_tower(
                Box::new(move |request| {
                    black_box(drive(&mut service, request));
                }),
                $extra_clone,
            );
        }};
    }
    match variant {
        "A_none" => tower_variant!(noop(false), false),
        "B_tower_http" => tower_variant!(
            AddAuthorizationLayer::bearer(TOKEN)
                .as_sensitive(true)
                .layer(noop(false)),
            false
        ),
        "C_static" => tower_variant!(
            layer(StaticToken::api_key(API_KEY).unwrap()).layer(noop(false)),
            false
        ),
        "D_oauth_no_retry" => tower_variant!(layer(NoRetry(oauth())).layer(noop(false)), false),
        "E_oauth_retry" => tower_variant!(layer(oauth()).layer(noop(false)), false),
        "F_oauth_dpop" => tower_variant!(layer(dpop_oauth()).layer(noop(false)), false),
        "A_plus_clone" => tower_variant!(noop(false), true),
        other => {
            let id = REQWEST_IDS
                .into_iter()
                .find(|id| *id == other)
                .unwrap_or_else(|| panic!("unknown variant {other}"));
            let variant = reqwest_variant(id, false);
            let template = reqwest_request(&variant.client);
            for _ in 0..16 + n {
                let request = template.try_clone().unwrap();
                black_box(reqwest_send(&variant, request));
            }
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CLIENT_AUTH_BENCH_ALLOCS") {
        count_allocations(&spec);
        return;
    }
    check_variants();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
        .configure_from_args();
    tower_hot_path(&mut criterion);
    reqwest_hot_path(&mut criterion);
    tower_scaling(&mut criterion);
    reqwest_scaling(&mut criterion);
    criterion.final_summary();
}
