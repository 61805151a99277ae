#!/usr/bin/env bash
# Review 4: the published crates as a user outside this workspace depends on them (by path),
# one scratch crate per way of using them, each run:
#
#   readme-user      only client-auth-reqwest, its README's example as written (the re-exported
#                    reqwest): does an https token endpoint and API work?
#   default-user     client-auth (no default features) + client-auth-reqwest + reqwest's defaults
#   native-tls-user  reqwest with default-features = false and native-tls
#   rustls-pass      client-auth-reqwest's `rustls` pass-through, the README's re-exported reqwest
#   tower-user       client-auth (`tower`) + client-auth-tower + hyper-util with hyper-rustls
#   no-tls-user      reqwest with no TLS backend: is an https token endpoint a clear, permanent
#                    error, or a transient "connection failed" retried for ever?
#   no-transport     client-auth without `reqwest`, `.build()` without `.transport(..)`: the
#                    friendly compile error (and no-transport-targets: the same through
#                    PerTargetProvider)
#   fresh-path       client-auth with and without `metrics` and a recorder installed: does
#                    `authorize` on a token at hand allocate or record anything?
#   quickstart       which features of client-auth `cargo run --example quickstart` compiles
#
# Nothing listens on 127.0.0.1:1, so a client with a TLS backend gets "connection refused" and
# one without gets "invalid URL, scheme is not http".
#
# Usage: scripts/review4-consumers.sh [scratch dir, default /tmp/review4-consumers]
# Needs: cargo; the registry crates (fetched or cached), openssl headers for native-tls.
# Exits 1 when any check does not hold (see the FAIL lines).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
scratch=${1:-/tmp/review4-consumers}
mkdir -p "$scratch"
export CARGO_TARGET_DIR="$scratch/target"
failures=()

pass() { echo "PASS  $1"; }
fail() {
    echo "FAIL  $1"
    failures+=("$1")
}

# crate NAME, with Cargo.toml on stdin-less args: $2 = [dependencies] body, $3 = main.rs.
crate() {
    local dir="$scratch/$1"
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "$1"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

$2
EOF
    printf '%s\n' "$3" >"$dir/src/main.rs"
}

run() {
    (cd "$scratch/$1" && cargo run --quiet 2>"$scratch/$1.stderr")
}

probe=$(cat <<'RUST'
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(" <- ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
fn verdict(what: &str, text: &str) {
    let v = if text.contains("refused") {
        "TLS"
    } else if text.contains("scheme is not http") {
        "NO-TLS"
    } else {
        "UNKNOWN"
    };
    println!("{what}={v}: {text}");
}
RUST
)

reqwest_main='
use client_auth::OAuthProvider;
'"$probe"'
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = OAuthProvider::client_credentials("https://127.0.0.1:1/oauth/token")
        .client_id("my-service")
        .client_secret("s3cret")
        .build()?;
    let err = provider.access_token().await.unwrap_err();
    verdict("token", &chain(&err));
    println!("transient={}", err.is_transient());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            client_auth_reqwest::AuthorizationMiddleware::builder(provider)
                .allow_origin("https://127.0.0.1:1")
                .build()?,
        )
        .build();
    let err = client.get("https://127.0.0.1:1/v1").send().await.unwrap_err();
    verdict("api", &chain(&err));
    Ok(())
}'

readme_main='
// The client-auth-reqwest README example, as written, pointed at https://127.0.0.1:1.
use client_auth_reqwest::client_auth::OAuthProvider;
use client_auth_reqwest::reqwest_middleware::{ClientBuilder, reqwest};
use client_auth_reqwest::{AuthorizationMiddleware, redirect_policy};
'"$probe"'
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = OAuthProvider::client_credentials("https://127.0.0.1:1/oauth/token")
        .client_id("my-service")
        .client_secret("s3cret")
        .build()?;
    let err = provider.access_token().await.unwrap_err();
    verdict("token", &chain(&err));
    println!("transient={}", err.is_transient());
    let http = reqwest::Client::builder().redirect(redirect_policy(10)).build()?;
    let client = ClientBuilder::new(http)
        .with(AuthorizationMiddleware::builder(provider).allow_origin("https://127.0.0.1:1").build()?)
        .build();
    let err = client.get("https://127.0.0.1:1/v1/orders").send().await.unwrap_err();
    verdict("api", &chain(&err));
    Ok(())
}'

path_core='client-auth = { path = "'"$repo"'/crates/client-auth", default-features = false }'
path_reqwest='client-auth-reqwest = { path = "'"$repo"'/crates/client-auth-reqwest" }'
tokio='tokio = { version = "1", features = ["rt-multi-thread", "macros"] }'

# ---------------------------------------------------------------------------------------------
echo "=== readme-user"
crate readme-user "[dependencies]
$path_reqwest
$tokio" "$readme_main"
out=$(run readme-user) || true
echo "$out"
if grep -q "token=TLS" <<<"$out" && grep -q "api=TLS" <<<"$out"; then
    pass "readme-user: https works with client-auth-reqwest alone, as its README shows"
else
    fail "readme-user: client-auth-reqwest alone (its README's example) has no TLS backend"
fi

echo "=== default-user"
crate default-user "[dependencies]
$path_core
$path_reqwest
reqwest = \"0.13\"
reqwest-middleware = \"0.5\"
$tokio" "$reqwest_main"
out=$(run default-user) || true
echo "$out"
grep -q "token=TLS" <<<"$out" && grep -q "api=TLS" <<<"$out" &&
    pass "default-user: reqwest's defaults give the token endpoint and the API TLS" ||
    fail "default-user: no TLS with reqwest's defaults"

echo "=== native-tls-user"
crate native-tls-user "[dependencies]
$path_core
$path_reqwest
reqwest = { version = \"0.13\", default-features = false, features = [\"native-tls\"] }
reqwest-middleware = \"0.5\"
$tokio" "$reqwest_main"
out=$(run native-tls-user) || true
echo "$out"
grep -q "token=TLS" <<<"$out" && grep -q "api=TLS" <<<"$out" &&
    pass "native-tls-user: native-tls reaches the token endpoint" ||
    fail "native-tls-user: no TLS"
(cd "$scratch/native-tls-user" && cargo tree -e normal 2>/dev/null | grep -qE "aws-lc|rustls v") &&
    fail "native-tls-user: rustls or aws-lc is compiled though the application chose native-tls" ||
    pass "native-tls-user: no rustls, no aws-lc in the graph"

echo "=== rustls-pass"
crate rustls-pass "[dependencies]
client-auth-reqwest = { path = \"$repo/crates/client-auth-reqwest\", features = [\"rustls\"] }
$tokio" "$readme_main"
out=$(run rustls-pass) || true
echo "$out"
grep -q "token=TLS" <<<"$out" && grep -q "api=TLS" <<<"$out" &&
    pass "rustls-pass: the adapter's rustls reaches the token endpoint and the API" ||
    fail "rustls-pass: no TLS"

echo "=== no-tls-user"
crate no-tls-user "[dependencies]
$path_core
$path_reqwest
reqwest = { version = \"0.13\", default-features = false }
reqwest-middleware = \"0.5\"
$tokio" "$reqwest_main"
out=$(run no-tls-user) || true
echo "$out"
if grep -q "transient=true" <<<"$out"; then
    fail "no-tls-user: an https token endpoint without a TLS backend is a transient 'connection failed' (TransportErrorKind::Connect), backed off and retried for ever, not a configuration error"
else
    pass "no-tls-user: an https token endpoint without TLS is a permanent error"
fi

echo "=== tower-user"
crate tower-user "[dependencies]
bytes = \"1\"
client-auth = { path = \"$repo/crates/client-auth\", default-features = false, features = [\"tower\"] }
client-auth-tower = { path = \"$repo/crates/client-auth-tower\" }
http = \"1\"
http-body-util = \"0.1\"
hyper-rustls = { version = \"0.27\", default-features = false, features = [\"http1\", \"tls12\", \"aws-lc-rs\", \"native-tokio\"] }
hyper-util = { version = \"0.1\", features = [\"client-legacy\", \"http1\", \"tokio\"] }
$tokio
tower = { version = \"0.5\", features = [\"util\"] }" '
use std::sync::Arc;
use bytes::Bytes;
use client_auth::{OAuthProvider, TowerTransport};
use client_auth_tower::AuthorizeLayer;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer as _, ServiceExt as _};
'"$probe"'
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let provider = OAuthProvider::client_credentials("https://127.0.0.1:1/oauth/token")
        .client_id("my-service")
        .client_secret("s3cret")
        .transport(Arc::new(TowerTransport::new(client.clone())))
        .build()?;
    let err = provider.access_token().await.unwrap_err();
    verdict("token", &chain(&err));
    let layer = AuthorizeLayer::builder(provider).allow_origin("https://127.0.0.1:1").build()?;
    let request = http::Request::get("https://127.0.0.1:1/v1").body(Full::new(Bytes::new()))?;
    let err = layer.layer(client).oneshot(request).await.unwrap_err();
    verdict("api", &chain(&*err));
    Ok(())
}'
out=$(run tower-user) || true
echo "$out"
grep -q "token=TLS" <<<"$out" && grep -q "api=TLS" <<<"$out" &&
    pass "tower-user: hyper-rustls serves the token endpoint and the API" ||
    fail "tower-user: no TLS"
(cd "$scratch/tower-user" && cargo tree -i reqwest >/dev/null 2>&1) &&
    fail "tower-user: reqwest is compiled for a tower-only user" ||
    pass "tower-user: no reqwest in the graph"

echo "=== no-transport"
crate no-transport "[dependencies]
$path_core" '
fn main() {
    let provider = client_auth::OAuthProvider::client_credentials("https://auth.example.com/token")
        .client_id("my-service")
        .build();
    let _ = provider;
}'
out=$(cd "$scratch/no-transport" && cargo build 2>&1) && fail "no-transport: a provider without a transport compiled"
if grep -q "this \`OAuthProviderBuilder\` has no token transport" <<<"$out" &&
    grep -q "call \`.transport(...)\` before \`.build()\`" <<<"$out"; then
    pass "no-transport: the friendly compile error"
else
    echo "$out" | head -20
    fail "no-transport: not the friendly compile error"
fi

echo "=== no-transport-targets (the same through PerTargetProvider)"
crate no-transport-targets "[dependencies]
$path_core" '
use client_auth::{OAuthProvider, PerTargetProvider};
fn main() {
    let template = OAuthProvider::client_credentials("https://auth.example.com/token").client_id("svc");
    let provider = PerTargetProvider::builder(template).max_targets(8).build();
    let _ = provider;
}'
out=$(cd "$scratch/no-transport-targets" && cargo build 2>&1) && fail "no-transport-targets: compiled"
if grep -q "has no token transport" <<<"$out"; then
    pass "no-transport-targets: the friendly compile error"
else
    echo "$out" | grep -E "^error|bounds were not satisfied|TransportChoice" | head -5
    fail "no-transport-targets: a PerTargetProvider without a transport fails with E0599 on the first builder method, without the friendly message (the TransportChoice bound is on the impl block, not on build)"
fi

echo "=== fresh-path"
crate fresh-path "[dependencies]
client-auth = { path = \"$repo/crates/client-auth\", default-features = false, features = [\"reqwest\"] }
http = \"1\"
metrics = \"0.24\"
$tokio

[features]
metrics = [\"client-auth/metrics\"]" "$(cat <<'RUST'
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use client_auth::{AuthorizationProvider, OAuthProvider, RequestView};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static RECORDER_CALLS: AtomicU64 = AtomicU64::new(0);
struct Counting;
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 { ALLOCATIONS.fetch_add(1, Ordering::SeqCst); unsafe { System.alloc(l) } }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) { unsafe { System.dealloc(p, l) } }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 { ALLOCATIONS.fetch_add(1, Ordering::SeqCst); unsafe { System.realloc(p, l, n) } }
}
#[global_allocator]
static A: Counting = Counting;

struct Calls;
impl metrics::Recorder for Calls {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); }
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); }
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); metrics::Counter::noop() }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); metrics::Gauge::noop() }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram { RECORDER_CALLS.fetch_add(1, Ordering::SeqCst); metrics::Histogram::noop() }
}

fn main() {
    metrics::set_global_recorder(Calls).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
            .client_id("c")
            .refresh_token("rt")
            .access_token("at-at-hand", Some(Duration::from_secs(3600)))
            .metrics_name("fresh")
            .build()
            .unwrap();
        let ext = http::Extensions::new();
        let method = http::Method::GET;
        let view = RequestView::new(&method, "https", "api.example.com", "/", None, &ext);
        drop(provider.authorize(&view).take_ready());
        let (a0, r0) = (ALLOCATIONS.load(Ordering::SeqCst), RECORDER_CALLS.load(Ordering::SeqCst));
        for _ in 0..10_000 {
            let mut answer = provider.authorize(&view);
            assert!(answer.take_ready().unwrap().is_ok());
        }
        let (a1, r1) = (ALLOCATIONS.load(Ordering::SeqCst), RECORDER_CALLS.load(Ordering::SeqCst));
        println!("metrics={} allocations={} recorder_calls={}", cfg!(feature = "metrics"), a1 - a0, r1 - r0);
    });
}
RUST
)"

for features in "" "--features metrics"; do
    out=$(cd "$scratch/fresh-path" && cargo run --quiet $features 2>"$scratch/fresh-path.stderr")
    echo "$out"
    grep -q "allocations=0 recorder_calls=0" <<<"$out" &&
        pass "fresh-path ($out): 10000 authorizations of a token at hand allocate and record nothing" ||
        fail "fresh-path: $out"
done

echo "=== quickstart (the features of client-auth in \`cargo run --example quickstart\`)"
features=$(cd "$repo" && RUSTC_BOOTSTRAP=1 cargo build --example quickstart --unit-graph -Z unstable-options 2>/dev/null |
    python3 -c '
import json, sys
for u in json.load(sys.stdin)["units"]:
    if u["pkg_id"].split("#")[0].endswith("/crates/client-auth") and u["target"]["name"] == "client_auth":
        print(" ".join(sorted(u["features"])))')
echo "client-auth features: $features"
extra=$(tr ' ' '\n' <<<"$features" | grep -vxE "default|reqwest|tower" | tr '\n' ' ')
[ -z "$extra" ] &&
    pass "quickstart: client-auth with the examples' features only (reqwest, tower)" ||
    fail "quickstart: compiles client-auth with features no example asks for: $extra(other default-members' dev-dependencies and examples/metrics)"

echo
if [ "${#failures[@]}" -gt 0 ]; then
    printf 'review4 consumers: %d check(s) do not hold:\n' "${#failures[@]}"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi
echo "review4 consumers: every check holds"
