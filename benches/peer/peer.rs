//! client-auth's reqwest middleware side by side with the crate a user would pick instead:
//! `aliri_reqwest` 0.5 (`AccessTokenMiddleware`, tokens kept fresh in the background by an
//! `aliri_tokens` 0.3 `TokenWatcher`), built on reqwest 0.12 and reqwest-middleware 0.4.
//!
//! **Per request** (`peer_hot_path/*`, and under valgrind with `CLIENT_AUTH_BENCH_ALLOCS`, as in
//! `../overhead.rs`): one realistic request through a client whose last middleware answers a
//! canned response (no socket), each library over the baselines of its own reqwest:
//!
//! - reqwest 0.12: `r12_none` (no middleware), `r12_fixed_header` (a middleware setting a fixed
//!   `Authorization`, written as `#[async_trait]` writes any middleware), `r12_aliri` (its
//!   default predicate, `HttpsOnly`) and `r12_aliri_host` (`HttpsOnly` and `ExactHostMatch`,
//!   the nearest it has to an origin policy), a token at hand in its watcher;
//! - reqwest 0.13: `r13_none`, `r13_fixed_header`, `r13_ours_static`, `r13_ours_oauth_no_retry`
//!   (a fresh cached OAuth token, the 401 retry off through `can_recover`), `r13_ours_oauth`
//!   (the retry armed: the request is copied before it is sent).
//!
//! **Under load**, against the testkit's token endpoint over loopback (answering after 20 ms),
//! both libraries on their own reqwest, with the refresh-token grant:
//!
//! - **stampede**: callers arrive together when the cached token has expired. Ours is seeded
//!   with a token its (injected) clock puts past expiry; aliri_tokens' watcher starts from a
//!   token whose lifetime is over (its first answer), so it starts its background refresh at
//!   the moment the callers arrive, as ours starts its one refresh. The resource (in process, no
//!   socket) answers 401 to the expired token. Counted: token calls, requests that failed
//!   (a 401 returned to the caller), latency from arrival to answer.
//! - **401 storm**: the server revoked the token both hold; requests sent together all get a
//!   401 from the resource (in process, answering after 5 ms). Counted: requests that failed,
//!   token calls.
//! - **refresh-ahead**: aliri_tokens cannot be driven by an injected clock (its token lifetimes
//!   are stamped from the system clock in whole seconds, and its watcher sleeps in real time), so
//!   both run in real time with real short-lived tokens, at the same time, each against its
//!   own server with the same script: 3 s tokens for 10 lifetimes (30 s), one request every
//!   30 ms to the server's protected API over loopback (which refuses an expired token).
//!   Compared with 60 s tokens for 10 minutes at one request per 100 ms, time is compressed
//!   20×, so the 20 ms token round trip weighs 20× more. aliri_tokens' lifetime configuration is
//!   its default (stale at 75 % of the lifetime) with its 30 s minimum scaled to the 3 s token
//!   (1 s: its clock counts whole seconds). Counted: requests that waited for a token (ours: the
//!   provider's answer was not at hand; aliri_reqwest never waits, it sends the token it
//!   holds), requests the server refused, token calls.
//!
//! `cargo bench` runs the full sizes (10 000 callers, 1 000 401s, 30 s) and writes JSON lines
//! to `$CLIENT_AUTH_BENCH_REPORT/peer.jsonl` when that variable is set (`../report.sh`).
//! `cargo test` runs reduced sizes (1 000 callers, 200 401s, 2 s tokens for 4 s) and asserts
//! our counts only, never a time and nothing about the peer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::io::Write as _;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use aliri_clock::DurationSecs;
use aliri_reqwest::{AccessTokenMiddleware, ExactHostMatch, HttpsOnly};
use aliri_tokens::backoff::ErrorBackoffConfig;
use aliri_tokens::jitter::NullJitter;
use aliri_tokens::sources::oauth2::dto::RefreshTokenCredentialsSource;
use aliri_tokens::sources::oauth2::{RefreshTokenSource, TokenRequestError};
use aliri_tokens::sources::{AsyncTokenSource, ConstTokenSource};
use aliri_tokens::{
    ClientId, ClientSecret, RefreshToken, TokenLifetimeConfig, TokenWatcher, TokenWithLifetime,
};
use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    AuthorizationProvider, AuthorizeFuture, Credential, Error, ManualClock, OAuthProvider,
    OAuthProviderBuilder, ProviderFuture, RequestView, StaticToken, TokenTransport,
    UnauthorizedFuture,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_testkit::{ServerConfig, TestServer};
use criterion::{BatchSize, Criterion};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Extensions, HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use tokio::sync::watch;

const URL: &str = "https://api.example.com/v1/orders/42/items?page=2&limit=50&sort=-created";
const API: &str = "https://api.example.com";
const BODY: &[u8] = br#"{"sku":"WIDGET-7","quantity":3,"note":"leave at the door"}"#;
const REQUEST_ID: &str = "7f3c9a2e-5b1d-4c8e-9f60-2d4b8a1e3c57";
/// An access token of a realistic size for an opaque token.
const TOKEN: &str = "ya29.a0AfB_byC7kQm3xZ9vT2pLr8sN4wH6jE1uYgD5fK0oI3bV7cM2nX8qR4tS6wA9zL1pE";
const API_KEY: &str = "bk_live_51H8xkQ2eZvKYlo2C0a1b2c3d4e5f6g7h8i9j0";

const TOKEN_DELAY: Duration = Duration::from_millis(20);
const RESOURCE_DELAY: Duration = Duration::from_millis(5);
const EXPIRED: &str = "expired-access-token";

// ---------------------------------------------------------------------------------------------
// Per request: the same request and the same canned last middleware on both reqwest versions

/// The request, the canned last middleware and the fixed-header baseline, written once for
/// each reqwest / reqwest-middleware pair.
macro_rules! reqwest_side {
    ($side:ident, $reqwest:ident, $middleware:ident) => {
        mod $side {
            use super::*;
            use $middleware::{ClientWithMiddleware, Middleware, Next};

            pub(crate) type Request = $reqwest::Request;
            pub(crate) type Response = $reqwest::Response;
            pub(crate) type Client = ClientWithMiddleware;

            type Handled<'fut> =
                Pin<Box<dyn Future<Output = $middleware::Result<Response>> + Send + 'fut>>;

            /// The last middleware: a canned 200 converted with `Response::from`, no socket.
            /// With `echo`, the answer carries the request's `Authorization` (only for the
            /// checks). With `reject`, it is the protected resource of the load scenarios:
            /// after `delay`, 401 to the token it names, 200 to any other.
            pub(crate) struct Canned {
                pub(crate) echo: bool,
                pub(crate) resource: Option<Arc<Resource>>,
            }

            impl Middleware for Canned {
                fn handle<'a, 'b, 'c, 'fut>(
                    &'a self,
                    request: Request,
                    _extensions: &'b mut Extensions,
                    _next: Next<'c>,
                ) -> Handled<'fut>
                where
                    'a: 'fut,
                    'b: 'fut,
                    'c: 'fut,
                    Self: 'fut,
                {
                    let authorization = request.headers().get(AUTHORIZATION).cloned();
                    // The answer comes from where the request went (the middlewares compare
                    // the two before retrying a 401).
                    let url = request.url().clone();
                    drop(request);
                    let echo = self.echo;
                    let resource = self.resource.clone();
                    Box::pin(async move {
                        use $reqwest::ResponseBuilderExt as _;
                        let mut response = http::Response::builder()
                            .url(url)
                            .body($reqwest::Body::from(Bytes::from_static(b"{}")))
                            .unwrap();
                        if let Some(resource) = resource {
                            *response.status_mut() = resource.answer(authorization.as_ref()).await;
                            if response.status() == StatusCode::UNAUTHORIZED {
                                response.headers_mut().insert(
                                    WWW_AUTHENTICATE,
                                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                                );
                            }
                        }
                        if echo && let Some(value) = authorization {
                            response.headers_mut().insert(AUTHORIZATION, value);
                        }
                        Ok(Response::from(response))
                    })
                }
            }

            /// The fixed-header baseline, as `#[async_trait]` writes any middleware.
            pub(crate) struct FixedHeader(pub(crate) HeaderValue);

            impl Middleware for FixedHeader {
                fn handle<'a, 'b, 'c, 'fut>(
                    &'a self,
                    mut request: Request,
                    extensions: &'b mut Extensions,
                    next: Next<'c>,
                ) -> Handled<'fut>
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

            /// A client with `first` (if any) before the canned last middleware.
            pub(crate) fn client(first: Option<Arc<dyn Middleware>>, last: Canned) -> Client {
                let mut builder = $middleware::ClientBuilder::new($reqwest::Client::new());
                if let Some(first) = first {
                    builder = builder.with_arc(first);
                }
                builder.with(last).build()
            }

            /// The realistic request: a URL with a query, three headers, a small body.
            pub(crate) fn request(client: &Client) -> Request {
                client
                    .post(URL)
                    .header(CONTENT_TYPE, "application/json")
                    .header(ACCEPT, "application/json")
                    .header("x-request-id", REQUEST_ID)
                    .body(Bytes::from_static(BODY))
                    .build()
                    .unwrap()
            }

            /// A GET of `url`, for the load scenarios.
            pub(crate) fn get(client: &Client, url: &str) -> Request {
                client.get(url).build().unwrap()
            }

            /// Sends on this thread; every variant completes without waiting.
            pub(crate) fn send_now(client: &Client, request: Request) -> Response {
                now_or_never(client.execute(request)).unwrap()
            }

            pub(crate) fn fixed(value: &str) -> Arc<dyn Middleware> {
                let mut value = HeaderValue::try_from(value).unwrap();
                value.set_sensitive(true);
                Arc::new(FixedHeader(value))
            }
        }
    };
}

reqwest_side!(r12, reqwest012, reqwest_middleware04);
reqwest_side!(r13, reqwest, reqwest_middleware);

/// The protected resource of the load scenarios, in process: after `delay`, 401 to the token
/// it rejects (`Bearer <token>`), 200 to any other. It counts its answers.
#[derive(Default)]
struct Resource {
    delay: Duration,
    rejected: Mutex<Option<String>>,
    unauthorized: AtomicUsize,
}

impl Resource {
    fn rejecting(token: &str, delay: Duration) -> Arc<Self> {
        let resource = Self {
            delay,
            ..Self::default()
        };
        resource.reject(token);
        Arc::new(resource)
    }

    fn reject(&self, token: &str) {
        *self.rejected.lock().unwrap() = Some(format!("Bearer {token}"));
    }

    async fn answer(&self, authorization: Option<&HeaderValue>) -> StatusCode {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let rejected = self.rejected.lock().unwrap().clone();
        let refused = match (authorization, rejected) {
            (None, _) => true,
            (Some(value), Some(rejected)) => value.as_bytes() == rejected.as_bytes(),
            (Some(_), None) => false,
        };
        if refused {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        }
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

/// A token transport that is never called: the per-request variants run on the fresh path.
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

/// An OAuth provider holding a fresh access token, valid for a day.
fn cached_oauth() -> OAuthProvider {
    OAuthProvider::refresh_token_grant("https://auth.example.com/oauth/token")
        .client_id("bench-client")
        .client_secret("bench-secret")
        .refresh_token("bench-refresh-token")
        .access_token(TOKEN, Some(Duration::from_secs(24 * 3600)))
        .transport(Arc::new(NoTokenEndpoint))
        .build()
        .unwrap()
}

/// The OAuth provider with the 401 retry off, through the trait's own switch; it still hears
/// every answer, as `../overhead.rs`'s `NoRetry` does.
struct NoRetry<P>(P);

impl<P: AuthorizationProvider> AuthorizationProvider for NoRetry<P> {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        self.0.authorize(request)
    }
    fn can_recover(&self) -> bool {
        false
    }
    fn on_accepted(&self, credential: &Credential) {
        self.0.on_accepted(credential);
    }
    fn retry_forbidden(&self) -> bool {
        self.0.retry_forbidden()
    }
    fn metrics_name(&self) -> &str {
        self.0.metrics_name()
    }
}

fn ours<P: AuthorizationProvider>(
    provider: P,
    origin: &str,
    http: bool,
) -> AuthorizationMiddleware<P> {
    AuthorizationMiddleware::builder(provider)
        .allow_origin(origin)
        .allow_http(http)
        .build()
        .unwrap()
}

/// A runtime of one thread, for the watcher's background task.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// aliri_tokens' watcher holding `TOKEN` for a day: its middleware's fresh path.
fn cached_watcher(runtime: &tokio::runtime::Runtime) -> TokenWatcher {
    let source = ConstTokenSource::new(TOKEN).with_token_valid_for(DurationSecs(24 * 3600));
    runtime
        .block_on(TokenWatcher::spawn_from_token_source(
            source,
            NullJitter,
            ErrorBackoffConfig::default(),
        ))
        .unwrap()
}

/// The per-request variants, in the order of the tables.
const VARIANTS: [&str; 10] = [
    "r12_none",
    "r12_fixed_header",
    "r12_aliri",
    "r12_aliri_host",
    "r13_none",
    "r13_fixed_header",
    "r13_ours_static",
    "r13_ours_oauth_no_retry",
    "r13_ours_oauth",
    "r13_none_plus_clone",
];

/// One per-request variant, built alone (with the runtime its watcher lives on, if any).
enum Variant {
    /// A reqwest 0.12 client, and the runtime its watcher's task lives on (kept alive).
    R12 {
        client: r12::Client,
        _runtime: Option<tokio::runtime::Runtime>,
    },
    /// A reqwest 0.13 client, and whether each request is also copied once (`try_clone`).
    R13(r13::Client, bool),
}

fn variant(id: &str, echo: bool) -> Variant {
    let canned = |echo| r12::Canned {
        echo,
        resource: None,
    };
    let canned13 = |echo| r13::Canned {
        echo,
        resource: None,
    };
    let bearer = format!("Bearer {TOKEN}");
    match id {
        "r12_none" => Variant::R12 {
            client: r12::client(None, canned(echo)),
            _runtime: None,
        },
        "r12_fixed_header" => Variant::R12 {
            client: r12::client(Some(r12::fixed(&bearer)), canned(echo)),
            _runtime: None,
        },
        "r12_aliri" | "r12_aliri_host" => {
            let runtime = current_thread();
            let middleware = AccessTokenMiddleware::new(cached_watcher(&runtime));
            let first: Arc<dyn reqwest_middleware04::Middleware> = if id == "r12_aliri" {
                Arc::new(middleware)
            } else {
                Arc::new(
                    middleware
                        .with_predicate(AndHost(HttpsOnly, ExactHostMatch::new("api.example.com"))),
                )
            };
            Variant::R12 {
                client: r12::client(Some(first), canned(echo)),
                _runtime: Some(runtime),
            }
        }
        "r13_none" => Variant::R13(r13::client(None, canned13(echo)), false),
        "r13_fixed_header" => Variant::R13(
            r13::client(Some(r13::fixed(&bearer)), canned13(echo)),
            false,
        ),
        "r13_ours_static" => {
            let first = Arc::new(ours(StaticToken::api_key(API_KEY).unwrap(), API, false));
            Variant::R13(r13::client(Some(first), canned13(echo)), false)
        }
        "r13_ours_oauth_no_retry" => {
            let first = Arc::new(ours(NoRetry(cached_oauth()), API, false));
            Variant::R13(r13::client(Some(first), canned13(echo)), false)
        }
        "r13_ours_oauth" => {
            let first = Arc::new(ours(cached_oauth(), API, false));
            Variant::R13(r13::client(Some(first), canned13(echo)), false)
        }
        "r13_none_plus_clone" => Variant::R13(r13::client(None, canned13(echo)), true),
        other => panic!("unknown variant {other}"),
    }
}

/// `HttpsOnly` and `ExactHostMatch` together, as `predicates`' `and` would combine them.
struct AndHost(HttpsOnly, ExactHostMatch);

impl predicates_core::Predicate<reqwest012::Request> for AndHost {
    fn eval(&self, request: &reqwest012::Request) -> bool {
        self.0.eval(request) && self.1.eval(request)
    }
}

impl predicates_core::reflection::PredicateReflection for AndHost {}

impl std::fmt::Display for AndHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} and {}", self.0, self.1)
    }
}

impl Variant {
    /// Sends `n` requests from one template, on this thread.
    fn send(&self, n: u64) {
        match self {
            Variant::R12 { client, .. } => {
                let template = r12::request(client);
                for _ in 0..n {
                    let request = template.try_clone().unwrap();
                    black_box(r12::send_now(client, request));
                }
            }
            Variant::R13(client, extra_clone) => {
                let template = r13::request(client);
                for _ in 0..n {
                    let request = template.try_clone().unwrap();
                    if *extra_clone {
                        black_box(request.try_clone().unwrap());
                    }
                    black_box(r13::send_now(client, request));
                }
            }
        }
    }

    /// The `Authorization` the variant stamped, echoed by the canned middleware.
    fn stamped(&self) -> Option<HeaderValue> {
        match self {
            Variant::R12 { client, .. } => r12::send_now(client, r12::request(client))
                .headers()
                .get(AUTHORIZATION)
                .cloned(),
            Variant::R13(client, _) => r13::send_now(client, r13::request(client))
                .headers()
                .get(AUTHORIZATION)
                .cloned(),
        }
    }
}

/// Every variant stamps what it should, marked sensitive: the benchmark measures the real thing.
fn check_variants() {
    for id in VARIANTS {
        let expected = match id {
            "r12_none" | "r13_none" | "r13_none_plus_clone" => None,
            "r13_ours_static" => Some(format!("Token {API_KEY}")),
            _ => Some(format!("Bearer {TOKEN}")),
        };
        let stamped = variant(id, true).stamped();
        assert_eq!(
            stamped.as_ref().map(|v| v.to_str().unwrap().to_owned()),
            expected,
            "{id}"
        );
        assert!(
            stamped.is_none_or(|v| v.is_sensitive()),
            "{id}: not sensitive"
        );
    }
}

fn peer_hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("peer_hot_path");
    for id in VARIANTS {
        let variant = variant(id, false);
        group.bench_function(id, |b| {
            b.iter_batched(|| (), |()| variant.send(1), BatchSize::SmallInput)
        });
    }
    group.finish();
}

/// `CLIENT_AUTH_BENCH_ALLOCS=<variant>:<n>`: 16 warm-up requests, then `n` requests of one
/// variant on this thread, then exit (`../report.sh` runs it under valgrind).
fn count(spec: &str) {
    let (id, n) = spec.split_once(':').expect("<variant>:<n>");
    let n: u64 = n.parse().expect("a request count");
    variant(id, false).send(16 + n);
}

// ---------------------------------------------------------------------------------------------
// Under load

struct Sizes {
    stampede_callers: usize,
    storm_callers: usize,
    lifetime: Duration,
    lifetimes: u32,
}

const FULL: Sizes = Sizes {
    stampede_callers: 10_000,
    storm_callers: 1_000,
    lifetime: Duration::from_secs(3),
    lifetimes: 10,
};

const REDUCED: Sizes = Sizes {
    stampede_callers: 1_000,
    storm_callers: 200,
    lifetime: Duration::from_secs(2),
    lifetimes: 2,
};

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

/// Latency figures of `outcomes` (latency, whether the request succeeded).
fn latencies(outcomes: &[(Duration, bool)]) -> serde_json::Value {
    let mut all: Vec<Duration> = outcomes.iter().map(|(d, _)| *d).collect();
    all.sort();
    let mut ok: Vec<Duration> = outcomes
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(d, _)| *d)
        .collect();
    ok.sort();
    json!({
        "p50_ms": millis(percentile(&all, 50.0)),
        "p99_ms": millis(percentile(&all, 99.0)),
        "max_ms": millis(all.last().copied().unwrap_or_default()),
        "ok_p99_ms": millis(percentile(&ok, 99.0)),
    })
}

/// Spawns `callers` tasks that wait for one signal, then each run `call`; returns their
/// outputs once all are done.
async fn all_at_once<F, Fut, T>(callers: usize, call: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
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

async fn server(config: ServerConfig) -> TestServer {
    TestServer::start_with(config.token_delay(TOKEN_DELAY))
        .await
        .unwrap()
}

fn our_provider(server: &TestServer, subject: &str) -> OAuthProviderBuilder {
    let grant = server.issue_grant(subject, None);
    OAuthProvider::refresh_token_grant(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .refresh_token(grant.refresh_token.as_str())
}

/// aliri_tokens' source of tokens from the same server: the refresh-token grant as a form, with
/// the client secret in the body, and `config`'s notion of staleness.
fn aliri_source(
    server: &TestServer,
    subject: &str,
    config: TokenLifetimeConfig,
) -> RefreshTokenSource<aliri_clock::System, aliri_tokens::sources::oauth2::FormBody> {
    let grant = server.issue_grant(subject, None);
    let credentials = RefreshTokenCredentialsSource {
        client_id: ClientId::from(server.client_id()),
        client_secret: server.client_secret().map(ClientSecret::from),
        refresh_token: RefreshToken::from(grant.refresh_token).into_boxed_ref(),
    };
    RefreshTokenSource::new(
        reqwest012::Client::new(),
        server.token_url().parse().unwrap(),
        credentials,
        config,
    )
    .using_form_data()
}

/// An aliri_tokens source whose first token is `first` (already issued, already past its
/// lifetime), then `then`'s tokens.
struct StartingFrom<S> {
    first: Option<TokenWithLifetime>,
    then: S,
}

impl<S: AsyncTokenSource<Error = TokenRequestError>> AsyncTokenSource for StartingFrom<S> {
    type Error = TokenRequestError;

    fn request_token<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = Result<TokenWithLifetime, Self::Error>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            match self.first.take() {
                Some(first) => Ok(first),
                None => self.then.request_token().await,
            }
        })
    }
}

/// A token aliri_tokens received 61 s ago with a 60 s lifetime: expired now.
fn expired_aliri_token() -> TokenWithLifetime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::from_value(json!({
        "access_token": EXPIRED,
        "id_token": null,
        "lifetime": 60,
        "issued": now - 61,
        "stale": now - 16,
        "expiry": now - 1,
    }))
    .unwrap()
}

// 1. Stampede

async fn stampede(callers: usize) -> Vec<serde_json::Value> {
    // Ours: seeded with a token its clock has moved past.
    let ours_server = server(ServerConfig::default()).await;
    let clock = ManualClock::new();
    let provider = our_provider(&ours_server, "stampede")
        .access_token(EXPIRED, Some(Duration::from_secs(60)))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(61));
    let resource = Resource::rejecting(EXPIRED, Duration::ZERO);
    let client = r13::client(
        Some(Arc::new(ours(provider, API, false))),
        r13::Canned {
            echo: false,
            resource: Some(Arc::clone(&resource)),
        },
    );
    ours_server.reset_stats();
    let outcomes = all_at_once(callers, || {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let response = client.execute(r13::get(&client, URL)).await.unwrap();
            (start.elapsed(), response.status() == StatusCode::OK)
        }
    })
    .await;
    let ours_row = stampede_row("ours", callers, &ours_server, &outcomes);

    // aliri_reqwest: its watcher starts from the expired token and refreshes in the background.
    let aliri_server = server(ServerConfig::default()).await;
    let source = StartingFrom {
        first: Some(expired_aliri_token()),
        then: aliri_source(&aliri_server, "stampede", TokenLifetimeConfig::default()),
    };
    let resource = Resource::rejecting(EXPIRED, Duration::ZERO);
    let client = r12::client(
        Some(Arc::new(
            AccessTokenMiddleware::new(
                TokenWatcher::spawn_from_token_source(
                    source,
                    NullJitter,
                    ErrorBackoffConfig::default(),
                )
                .await
                .unwrap(),
            )
            .with_predicate(AndHost(HttpsOnly, ExactHostMatch::new("api.example.com"))),
        )),
        r12::Canned {
            echo: false,
            resource: Some(Arc::clone(&resource)),
        },
    );
    let outcomes = all_at_once(callers, || {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let response = client.execute(r12::get(&client, URL)).await.unwrap();
            (start.elapsed(), response.status() == StatusCode::OK)
        }
    })
    .await;
    let aliri_row = stampede_row("aliri_reqwest", callers, &aliri_server, &outcomes);
    vec![ours_row, aliri_row]
}

fn stampede_row(
    library: &str,
    callers: usize,
    server: &TestServer,
    outcomes: &[(Duration, bool)],
) -> serde_json::Value {
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    json!({
        "item": "stampede",
        "library": library,
        "callers": callers,
        "token_calls": server.stats().token_calls,
        "failed": failed,
        "latency": latencies(outcomes),
    })
}

// 2. 401 storm

async fn storm(callers: usize) -> Vec<serde_json::Value> {
    // Ours: the token it holds, accepted by the resource so far, is revoked there.
    let ours_server = server(ServerConfig::default()).await;
    let provider = Arc::new(our_provider(&ours_server, "storm").build().unwrap());
    let resource = Arc::new(Resource {
        delay: RESOURCE_DELAY,
        ..Resource::default()
    });
    let client = r13::client(
        Some(Arc::new(ours(Arc::clone(&provider), API, false))),
        r13::Canned {
            echo: false,
            resource: Some(Arc::clone(&resource)),
        },
    );
    let first = client.execute(r13::get(&client, URL)).await.unwrap();
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "the token worked before its revocation"
    );
    resource.reject(provider.access_token().await.unwrap().expose_secret());
    ours_server.reset_stats();
    let outcomes = all_at_once(callers, || {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let response = client.execute(r13::get(&client, URL)).await.unwrap();
            (start.elapsed(), response.status() == StatusCode::OK)
        }
    })
    .await;
    let ours_row = storm_row("ours", callers, &ours_server, &resource, &outcomes);

    // aliri_reqwest: the token its watcher holds, accepted by the resource so far, is revoked
    // there.
    let aliri_server = server(ServerConfig::default()).await;
    let source = aliri_source(&aliri_server, "storm", TokenLifetimeConfig::default());
    let watcher =
        TokenWatcher::spawn_from_token_source(source, NullJitter, ErrorBackoffConfig::default())
            .await
            .unwrap();
    let held = watcher.token().access_token().as_str().to_owned();
    let resource = Arc::new(Resource {
        delay: RESOURCE_DELAY,
        ..Resource::default()
    });
    let client = r12::client(
        Some(Arc::new(
            AccessTokenMiddleware::new(watcher)
                .with_predicate(AndHost(HttpsOnly, ExactHostMatch::new("api.example.com"))),
        )),
        r12::Canned {
            echo: false,
            resource: Some(Arc::clone(&resource)),
        },
    );
    let first = client.execute(r12::get(&client, URL)).await.unwrap();
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "the token worked before its revocation"
    );
    resource.reject(&held);
    aliri_server.reset_stats();
    let outcomes = all_at_once(callers, || {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let response = client.execute(r12::get(&client, URL)).await.unwrap();
            (start.elapsed(), response.status() == StatusCode::OK)
        }
    })
    .await;
    let aliri_row = storm_row(
        "aliri_reqwest",
        callers,
        &aliri_server,
        &resource,
        &outcomes,
    );
    vec![ours_row, aliri_row]
}

fn storm_row(
    library: &str,
    callers: usize,
    server: &TestServer,
    resource: &Resource,
    outcomes: &[(Duration, bool)],
) -> serde_json::Value {
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    json!({
        "item": "storm",
        "library": library,
        "callers": callers,
        "got_401": resource.unauthorized.load(Ordering::Relaxed),
        "token_calls": server.stats().token_calls,
        "failed": failed,
        "latency": latencies(outcomes),
    })
}

// 3. Refresh-ahead, in real time

/// Our provider, counting the requests whose credential was not at hand (they waited).
struct CountingWaits<P> {
    inner: P,
    waited: AtomicUsize,
}

impl<P: AuthorizationProvider> AuthorizationProvider for CountingWaits<P> {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        let future = self.inner.authorize(request);
        if matches!(future, ProviderFuture::Pending(_)) {
            self.waited.fetch_add(1, Ordering::Relaxed);
        }
        future
    }
    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> UnauthorizedFuture {
        self.inner.on_unauthorized(failed, status, headers)
    }
    fn can_recover(&self) -> bool {
        self.inner.can_recover()
    }
    fn on_accepted(&self, credential: &Credential) {
        self.inner.on_accepted(credential);
    }
    fn retry_forbidden(&self) -> bool {
        self.inner.retry_forbidden()
    }
    fn needs_answers(&self) -> bool {
        self.inner.needs_answers()
    }
    fn metrics_name(&self) -> &str {
        self.inner.metrics_name()
    }
}

/// Sends one GET every `step` for `duration` with `send` (which answers the status), and
/// counts the refusals.
async fn steady<F, Fut>(duration: Duration, step: Duration, send: F) -> (u64, u64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = StatusCode>,
{
    let start = tokio::time::Instant::now();
    let steps = (duration.as_millis() / step.as_millis()) as u32;
    let (mut requests, mut refused) = (0, 0);
    for i in 0..steps {
        tokio::time::sleep_until(start + step * i).await;
        requests += 1;
        if send().await == StatusCode::UNAUTHORIZED {
            refused += 1;
        }
    }
    (requests, refused)
}

async fn refresh_ahead(lifetime: Duration, lifetimes: u32) -> Vec<serde_json::Value> {
    let config = || ServerConfig::default().access_token_lifetime(lifetime);
    let duration = lifetime * lifetimes;
    let step = lifetime / 100;

    let ours_server = server(config()).await;
    let provider = Arc::new(CountingWaits {
        inner: our_provider(&ours_server, "steady").build().unwrap(),
        waited: AtomicUsize::new(0),
    });
    provider.inner.access_token().await.unwrap();
    let ours_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(ours(Arc::clone(&provider), &ours_server.base_url(), true))
        .build();
    let ours_url = ours_server.resource_url();

    let aliri_server = server(config()).await;
    // Its default staleness (75 % of the lifetime) with its 30 s minimum scaled to the token.
    let lifetime_config = TokenLifetimeConfig::new(0.75, DurationSecs(1));
    let source = aliri_source(&aliri_server, "steady", lifetime_config);
    let watcher =
        TokenWatcher::spawn_from_token_source(source, NullJitter, ErrorBackoffConfig::default())
            .await
            .unwrap();
    let aliri_client = reqwest_middleware04::ClientBuilder::new(reqwest012::Client::new())
        .with(AccessTokenMiddleware::new(watcher).with_predicate(ExactHostMatch::new("127.0.0.1")))
        .build();
    let aliri_url = aliri_server.resource_url();

    ours_server.reset_stats();
    aliri_server.reset_stats();
    let (ours_counts, aliri_counts) = tokio::join!(
        steady(duration, step, || async {
            ours_client.get(&ours_url).send().await.unwrap().status()
        }),
        steady(duration, step, || async {
            aliri_client.get(&aliri_url).send().await.unwrap().status()
        }),
    );
    let row = |library: &str,
               (requests, refused): (u64, u64),
               waited: Option<usize>,
               server: &TestServer| {
        json!({
            "item": "refresh_ahead",
            "library": library,
            "lifetime_s": lifetime.as_secs(),
            "duration_s": duration.as_secs(),
            "requests": requests,
            "waited": waited,
            "refused": refused,
            "token_calls": server.stats().token_calls,
        })
    };
    vec![
        row(
            "ours",
            ours_counts,
            Some(provider.waited.load(Ordering::Relaxed)),
            &ours_server,
        ),
        // aliri_reqwest never waits: its middleware sends the token its watcher holds.
        row("aliri_reqwest", aliri_counts, None, &aliri_server),
    ]
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if let Ok(spec) = std::env::var("CLIENT_AUTH_BENCH_ALLOCS") {
        count(&spec);
        return;
    }
    // Like criterion: `--bench` without `--test` measures; anything else is a smoke test.
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let sizes = if bench { FULL } else { REDUCED };

    check_variants();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
        .configure_from_args();
    peer_hot_path(&mut criterion);
    criterion.final_summary();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deadline = Duration::from_secs(if bench { 180 } else { 60 });
    let results = runtime.block_on(async {
        tokio::time::timeout(deadline, async {
            let mut rows = stampede(sizes.stampede_callers).await;
            rows.extend(storm(sizes.storm_callers).await);
            rows.extend(refresh_ahead(sizes.lifetime, sizes.lifetimes).await);
            rows
        })
        .await
        .expect("the load scenarios finish in time")
    });
    for result in &results {
        println!("{result}");
    }
    if bench && let Ok(dir) = std::env::var("CLIENT_AUTH_BENCH_REPORT") {
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = std::fs::File::create(format!("{dir}/peer.jsonl")).unwrap();
        for result in &results {
            writeln!(file, "{result}").unwrap();
        }
    }

    // Our counts hold in every mode; times are reported, never asserted, and nothing about the
    // peer is.
    let ours = |item: &str| {
        results
            .iter()
            .find(|r| r["item"] == item && r["library"] == "ours")
            .unwrap()
    };
    assert_eq!(
        ours("stampede")["token_calls"],
        1,
        "stampede: one token call"
    );
    assert_eq!(ours("stampede")["failed"], 0, "stampede: nobody fails");
    assert_eq!(ours("storm")["token_calls"], 1, "401 storm: one refresh");
    assert_eq!(
        ours("storm")["failed"],
        0,
        "401 storm: every request recovers"
    );
    assert_eq!(
        ours("refresh_ahead")["waited"],
        0,
        "refresh-ahead: nobody waits"
    );
    assert_eq!(
        ours("refresh_ahead")["refused"],
        0,
        "refresh-ahead: no expired token sent"
    );
}
