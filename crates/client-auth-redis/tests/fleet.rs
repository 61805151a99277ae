//! A fleet of OS processes sharing one session through a shared store refreshes once per
//! expiry: the Redis store (gated, a real `redis-server`) and the file store.
//!
//! The test binary re-executes itself: the `fleet_child` test does nothing unless
//! `CLIENT_AUTH_FLEET_CHILD` is set; then it becomes a child process with an `OAuthProvider` on
//! the shared store, driven line by line over stdin by the parent test, which runs the testkit
//! server (refresh-token rotation with reuse detection). Expiry moves with a `ManualClock` in
//! every child and the server's clock, advanced together by the parent, so the number of
//! refreshes is exact. Lease expiry (a killed holder) runs in real time.
//!
//! The Redis tests need `redis-server` on the PATH and `CLIENT_AUTH_REDIS=1`; without the
//! variable they print how to enable them and pass; with it, a missing `redis-server` fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use client_auth::adapter::BoxFuture;
use client_auth::{
    AccessToken, Error, FileStore, ManualClock, OAuthProvider, RefreshToken, ReqwestTransport,
    StoredTokens, TokenStore, TokenTransport,
};
use client_auth_redis::RedisStore;
use client_auth_testkit::{ServerConfig, TestServer};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

mod support;
use support::{RedisServer, redis_enabled};

const CHILD_ENV: &str = "CLIENT_AUTH_FLEET_CHILD";
const LIFETIME: Duration = Duration::from_secs(100);
/// Past the hard window (10 s before expiry): every process must refresh.
const TO_STALE: Duration = Duration::from_secs(95);
/// Inside the soft window and past every jittered refresh point (30–50 s before expiry).
const TO_SOFT: Duration = Duration::from_secs(75);
/// The providers' token-endpoint timeout; the lease ttl is three times this.
const ENDPOINT_TIMEOUT_MS: u64 = 1000;
/// The refresh lease's ttl: renewed while the token request runs, so it can be short and a
/// killed holder stalls the others for about this long.
const LEASE_TTL_MS: u64 = 2000;
const NS: &str = "fleet-session";

/// One fleet test at a time: each runs many processes on few cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ----- the child process -----

#[test]
fn fleet_child() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child::main();
    }
}

mod child {
    use super::*;

    fn var(name: &str) -> String {
        std::env::var(name).unwrap_or_default()
    }

    /// The token transport, with an optional crash at a chosen point.
    #[derive(Debug)]
    struct Crashing {
        inner: ReqwestTransport,
        crash: String,
    }

    impl TokenTransport for Crashing {
        fn send(
            &self,
            request: http::Request<bytes::Bytes>,
            max_body: usize,
        ) -> BoxFuture<'static, Result<http::Response<bytes::Bytes>, Error>> {
            if self.crash == "before_send" {
                // The lease is held and the token endpoint not called yet.
                std::process::abort();
            }
            let answer = self.inner.send(request, max_body);
            let crash_after = self.crash == "after_answer";
            Box::pin(async move {
                let answer = answer.await;
                if crash_after {
                    // The server rotated the refresh token; the new one is never written.
                    std::process::abort();
                }
                answer
            })
        }
    }

    pub(super) fn main() {
        let _ = tracing::subscriber::set_global_default({
            use tracing_subscriber::layer::SubscriberExt as _;
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .finish()
                .with(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("client_auth", tracing::Level::TRACE)
                        .with_target("client_auth_redis", tracing::Level::TRACE),
                )
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let clock = ManualClock::new();
        let (provider, http) = rt.block_on(async {
            let spec = var("FLEET_STORE");
            let store: Arc<dyn TokenStore> = if let Some(url) = spec.strip_prefix("redis:") {
                Arc::new(RedisStore::builder(url).prefix("fleet:").build().unwrap())
            } else if let Some(dir) = spec.strip_prefix("file:") {
                Arc::new(FileStore::new(dir))
            } else {
                panic!("FLEET_STORE must be redis:<url> or file:<dir>");
            };
            let transport = Crashing {
                inner: ReqwestTransport::new().unwrap(),
                crash: var("FLEET_CRASH"),
            };
            let provider = OAuthProvider::refresh_token_grant(var("FLEET_TOKEN_URL"))
                .client_id("test-client")
                .client_secret("test-secret")
                .store(store, NS)
                .clock(Arc::new(clock.clone()))
                .transport(Arc::new(transport))
                .timeout(Duration::from_millis(ENDPOINT_TIMEOUT_MS))
                .refresh_lease_ttl(Duration::from_millis(LEASE_TTL_MS))
                .backoff(Duration::from_millis(200), Duration::from_secs(2))
                .build()
                .unwrap();
            (provider, reqwest::Client::new())
        });
        let resource = var("FLEET_RESOURCE_URL");
        let concurrency: usize = var("FLEET_CONCURRENCY").parse().unwrap_or(200);
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        for line in stdin.lock().lines() {
            let line = line.unwrap();
            let mut words = line.split_whitespace();
            let reply = match words.next() {
                Some("advance") => {
                    let ms: u64 = words.next().unwrap().parse().unwrap();
                    clock.advance(Duration::from_millis(ms));
                    "ok".to_owned()
                }
                Some(cmd @ ("round" | "soft")) => rt.block_on(round(
                    &provider,
                    &http,
                    &resource,
                    concurrency,
                    cmd == "soft",
                )),
                Some("state") => format!("{:?}", provider.session_state()),
                _ => break,
            };
            writeln!(out, "FLEET {reply}").unwrap();
            out.flush().unwrap();
        }
        std::process::exit(0);
    }

    /// `concurrency` requests at once: a token, then the protected API with it.
    async fn round(
        provider: &OAuthProvider,
        http: &reqwest::Client,
        resource: &str,
        concurrency: usize,
        wait_for_new_token: bool,
    ) -> String {
        let before = provider.access_token().await.ok();
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let provider = provider.clone();
            let http = http.clone();
            let resource = resource.to_owned();
            tasks.push(tokio::spawn(async move {
                let token = provider.access_token().await?;
                let status = http
                    .get(&resource)
                    .bearer_auth(token.expose_secret())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                Ok::<u16, Error>(status)
            }));
        }
        let (mut ok, mut failed, mut ended, mut transient) = (0, 0, 0, 0);
        let mut first_error = String::from("-");
        for task in tasks {
            match task.await.unwrap() {
                Ok(200) => ok += 1,
                Ok(status) => {
                    failed += 1;
                    if first_error == "-" {
                        first_error = format!("HTTP {status}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    ended += usize::from(e.is_session_ended());
                    transient += usize::from(e.is_transient());
                    if first_error == "-" {
                        first_error = e.to_string().replace(char::is_whitespace, "_");
                    }
                }
            }
        }
        let mut changed = false;
        if wait_for_new_token {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let now = provider.access_token().await.ok();
                if now.is_some() && now != before {
                    changed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        format!(
            "ok={ok} failed={failed} ended={ended} transient={transient} changed={} error={first_error}",
            u8::from(changed)
        )
    }
}

// ----- the parent side -----

#[derive(Debug, Clone)]
enum StoreSpec {
    Redis(String),
    File(PathBuf),
}

impl StoreSpec {
    fn env(&self) -> String {
        match self {
            StoreSpec::Redis(url) => format!("redis:{url}"),
            StoreSpec::File(dir) => format!("file:{}", dir.display()),
        }
    }

    fn store(&self) -> Arc<dyn TokenStore> {
        match self {
            StoreSpec::Redis(url) => {
                Arc::new(RedisStore::builder(url).prefix("fleet:").build().unwrap())
            }
            StoreSpec::File(dir) => Arc::new(FileStore::new(dir)),
        }
    }
}

/// A child process and everything it printed.
struct Proc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    transcript: Arc<Mutex<String>>,
    stderr: tokio::task::JoinHandle<()>,
}

impl Proc {
    async fn spawn(
        name: &str,
        spec: &StoreSpec,
        server: &TestServer,
        crash: &str,
        concurrency: usize,
    ) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fleet_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env("FLEET_STORE", spec.env())
            .env("FLEET_TOKEN_URL", server.token_url())
            .env("FLEET_RESOURCE_URL", server.resource_url())
            .env("FLEET_CRASH", crash)
            .env("FLEET_CONCURRENCY", concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let transcript = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = tokio::spawn({
            let transcript = Arc::clone(&transcript);
            async move {
                while let Ok(Some(line)) = err.next_line().await {
                    let mut t = transcript.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            }
        });
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            transcript,
            stderr,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn reply(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
                .await
                .unwrap_or_else(|_| {
                    let t = self.transcript.lock().unwrap();
                    let tail = &t[t.len().saturating_sub(3000)..];
                    panic!(
                        "{} did not answer within 60 s; it printed:\n{tail}",
                        self.name
                    )
                })
                .unwrap()
                .unwrap_or_else(|| panic!("{} exited without answering", self.name));
            {
                let mut t = self.transcript.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
            // libtest may have printed `test fleet_child ... ` without a newline first.
            if let Some(at) = line.find("FLEET ") {
                return line[at + "FLEET ".len()..].to_owned();
            }
        }
    }

    /// Waits for the process to end; `true` when it exited normally.
    async fn wait(&mut self) -> bool {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .unwrap();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            let mut t = self.transcript.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
        status.success()
    }

    /// Ends the process and returns everything it printed (stdout and TRACE logs).
    async fn finish(mut self) -> String {
        self.send("exit").await;
        assert!(self.wait().await, "{} failed", self.name);
        self.stderr.await.unwrap();
        self.transcript.lock().unwrap().clone()
    }
}

#[derive(Debug, Default)]
struct Round {
    ok: usize,
    failed: usize,
    ended: usize,
    transient: usize,
    changed: bool,
    error: String,
}

fn parse_round(reply: &str) -> Round {
    let mut r = Round::default();
    for pair in reply.split_whitespace() {
        let (k, v) = pair.split_once('=').unwrap();
        match k {
            "ok" => r.ok = v.parse().unwrap(),
            "failed" => r.failed = v.parse().unwrap(),
            "ended" => r.ended = v.parse().unwrap(),
            "transient" => r.transient = v.parse().unwrap(),
            "changed" => r.changed = v == "1",
            "error" => r.error = v.to_owned(),
            _ => {}
        }
    }
    r
}

async fn spawn_many(
    n: usize,
    spec: &StoreSpec,
    server: &TestServer,
    concurrency: usize,
) -> Vec<Proc> {
    let mut procs = Vec::new();
    for i in 0..n {
        procs.push(Proc::spawn(&format!("child-{i}"), spec, server, "", concurrency).await);
    }
    procs
}

/// Sends `line` to every process at once, then collects the answers.
async fn all(procs: &mut [Proc], line: &str) -> Vec<String> {
    for p in procs.iter_mut() {
        p.send(line).await;
    }
    let mut replies = Vec::new();
    for p in procs.iter_mut() {
        replies.push(p.reply().await);
    }
    replies
}

async fn round(procs: &mut [Proc], cmd: &str) -> Vec<Round> {
    all(procs, cmd)
        .await
        .iter()
        .map(|r| parse_round(r))
        .collect()
}

fn assert_all_ok(rounds: &[Round], per_process: usize) {
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!((r.ok, r.failed), (per_process, 0), "child-{i}: {r:?}");
    }
}

async fn advance(procs: &mut [Proc], server: &TestServer, by: Duration) {
    server.advance(by);
    advance_clocks(procs, by).await;
}

/// Moves the processes' clocks only (the server's moved already).
async fn advance_clocks(procs: &mut [Proc], by: Duration) {
    for reply in all(procs, &format!("advance {}", by.as_millis())).await {
        assert_eq!(reply, "ok");
    }
}

/// Every token value seen, to check that none reaches a log line or an error.
#[derive(Debug, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    async fn collect(&mut self, store: &dyn TokenStore) {
        if let Ok(Some(stored)) = store.load(NS).await {
            if let Some(rt) = stored.refresh_token {
                self.0.push(rt.expose_secret().to_owned());
            }
            if let Some(at) = stored.access_token {
                self.0.push(at.expose_secret().to_owned());
            }
        }
    }

    fn assert_absent(&self, transcript: &str, who: &str) {
        assert!(!transcript.is_empty());
        for secret in &self.0 {
            assert!(
                !transcript.contains(secret.as_str()),
                "{who} printed a token value"
            );
        }
    }
}

async fn start_server() -> TestServer {
    TestServer::start_with(
        ServerConfig::default()
            .access_token_lifetime(LIFETIME)
            .rotate_refresh_tokens(true),
    )
    .await
    .unwrap()
}

/// A signed-in user: the grant's tokens in the shared store, as after a login.
async fn seed(server: &TestServer, store: &dyn TokenStore, secrets: &mut Secrets) {
    let issued = server.issue_grant("fleet-user", None);
    secrets.0.push(issued.refresh_token.clone());
    secrets.0.push(issued.access_token.clone());
    let tokens = StoredTokens {
        access_token: Some(AccessToken::new(issued.access_token)),
        refresh_token: Some(RefreshToken::new(issued.refresh_token)),
        expires_at: Some(SystemTime::now() + Duration::from_secs(issued.expires_in)),
        scope: None,
        issued_at: None,
        dpop_jkt: None,
    };
    store.clear(NS).await.unwrap();
    store.save(NS, &tokens).await.unwrap();
}

async fn finish(procs: Vec<Proc>, secrets: &Secrets) {
    for p in procs {
        let name = p.name.clone();
        let transcript = p.finish().await;
        secrets.assert_absent(&transcript, &name);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "client-auth-fleet-{tag}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ----- the scenarios -----

/// 8 processes × 200 concurrent requests, 5 expiries (one of them reached in the soft
/// window, refreshed in the background): 5 refreshes, no `invalid_grant`, no failed request.
async fn refreshes_once_per_expiry(spec: StoreSpec) {
    const PROCESSES: usize = 8;
    const REQUESTS: usize = 200;
    let server = start_server().await;
    let store = spec.store();
    let mut secrets = Secrets::default();
    seed(&server, &*store, &mut secrets).await;
    let started = Instant::now();
    let mut procs = spawn_many(PROCESSES, &spec, &server, REQUESTS).await;

    assert_all_ok(&round(&mut procs, "round").await, REQUESTS);
    assert_eq!(server.stats().refresh_grants, 0);

    for expiry in 1..=5u64 {
        let soft = expiry == 3;
        advance(&mut procs, &server, if soft { TO_SOFT } else { TO_STALE }).await;
        let t = Instant::now();
        let rounds = round(&mut procs, if soft { "soft" } else { "round" }).await;
        assert_all_ok(&rounds, REQUESTS);
        if soft {
            assert!(rounds.iter().all(|r| r.changed), "{rounds:?}");
        }
        let stats = server.stats();
        assert_eq!(stats.refresh_grants, expiry, "{stats:?}");
        assert!(stats.token_errors.is_empty(), "{stats:?}");
        secrets.collect(&*store).await;
        println!(
            "{spec:?}: expiry {expiry} ({}): {} requests in {} ms, refreshes so far {}",
            if soft {
                "soft window"
            } else {
                "past the hard window"
            },
            PROCESSES * REQUESTS,
            t.elapsed().as_millis(),
            stats.refresh_grants
        );
    }
    assert_all_ok(&round(&mut procs, "round").await, REQUESTS);
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 5);
    assert!(stats.token_errors.is_empty(), "{stats:?}");
    assert_eq!(
        stats.resource_calls.get(&200).copied().unwrap_or(0),
        (PROCESSES * REQUESTS * 7) as u64
    );
    finish(procs, &secrets).await;
    println!(
        "{spec:?}: {PROCESSES} processes x {REQUESTS} requests x 7 rounds, {} refreshes, {} invalid_grant, total {} ms",
        stats.refresh_grants,
        stats
            .token_errors
            .get("invalid_grant")
            .copied()
            .unwrap_or(0),
        started.elapsed().as_millis()
    );
}

/// The lease holder dies after taking the lease, before the token endpoint: the lease ends
/// (ttl for Redis, at once for a file lock), another process refreshes, nothing is lost.
async fn holder_killed_before_the_endpoint(spec: StoreSpec) {
    let server = start_server().await;
    let store = spec.store();
    let mut secrets = Secrets::default();
    seed(&server, &*store, &mut secrets).await;
    let mut victim = Proc::spawn("victim", &spec, &server, "before_send", 20).await;
    let mut procs = spawn_many(3, &spec, &server, 50).await;
    assert_all_ok(&round(std::slice::from_mut(&mut victim), "round").await, 20);
    assert_all_ok(&round(&mut procs, "round").await, 50);

    advance(std::slice::from_mut(&mut victim), &server, TO_STALE).await;
    advance_clocks(&mut procs, TO_STALE).await;
    victim.send("round").await;
    assert!(!victim.wait().await, "the victim should have crashed");
    let died = Instant::now();
    assert_eq!(server.stats().token_calls, 0);

    assert_all_ok(&round(&mut procs, "round").await, 50);
    let waited = died.elapsed();
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");
    assert!(
        waited < Duration::from_millis(LEASE_TTL_MS + 3000),
        "{waited:?}"
    );
    secrets.collect(&*store).await;
    println!(
        "{spec:?}: holder killed before the endpoint: the others refreshed once after {} ms",
        waited.as_millis()
    );
    finish(procs, &secrets).await;
}

/// The lease holder dies after the token endpoint rotated the refresh token and before it
/// wrote the new one: the next process presents the old refresh token, reuse detection
/// revokes the grant, and every process ends its session (`NoSession`) without hanging or
/// retrying in a loop.
async fn holder_killed_after_the_endpoint(spec: StoreSpec) {
    let server = start_server().await;
    let store = spec.store();
    let mut secrets = Secrets::default();
    seed(&server, &*store, &mut secrets).await;
    let mut victim = Proc::spawn("victim", &spec, &server, "after_answer", 20).await;
    let mut procs = spawn_many(3, &spec, &server, 50).await;
    assert_all_ok(&round(std::slice::from_mut(&mut victim), "round").await, 20);
    assert_all_ok(&round(&mut procs, "round").await, 50);

    advance(std::slice::from_mut(&mut victim), &server, TO_STALE).await;
    advance_clocks(&mut procs, TO_STALE).await;
    victim.send("round").await;
    assert!(!victim.wait().await, "the victim should have crashed");
    assert_eq!(server.stats().token_successes, 1);

    let t = Instant::now();
    let rounds = round(&mut procs, "round").await;
    for r in &rounds {
        assert_eq!((r.ok, r.failed, r.ended), (0, 50, 50), "{r:?}");
    }
    for state in all(&mut procs, "state").await {
        assert!(
            state.starts_with("NoSession(Invalid(\"invalid_grant\")"),
            "{state}"
        );
    }
    let stats = server.stats();
    let invalid = stats
        .token_errors
        .get("invalid_grant")
        .copied()
        .unwrap_or(0);
    assert!((1..=3).contains(&invalid), "{stats:?}");
    // Later requests fail at once, without the network.
    let calls = stats.token_calls;
    for r in round(&mut procs, "round").await {
        assert_eq!((r.ok, r.ended), (0, 50), "{r:?}");
    }
    assert_eq!(server.stats().token_calls, calls);
    assert!(
        store.load(NS).await.unwrap().is_none(),
        "the store is cleared"
    );
    println!(
        "{spec:?}: holder killed after the endpoint: grant revoked, {invalid} invalid_grant answers, every process NoSession after {} ms",
        t.elapsed().as_millis()
    );
    finish(procs, &secrets).await;
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_fleet_refreshes_once_per_expiry() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("fleet");
    refreshes_once_per_expiry(StoreSpec::File(dir.clone())).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_holder_killed_before_the_endpoint_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("before");
    holder_killed_before_the_endpoint(StoreSpec::File(dir.clone())).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_holder_killed_after_the_endpoint_ends_every_session() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("after");
    holder_killed_after_the_endpoint(StoreSpec::File(dir.clone())).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fleet_refreshes_once_per_expiry() {
    if !redis_enabled() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    refreshes_once_per_expiry(StoreSpec::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_killed_before_the_endpoint_loses_nothing() {
    if !redis_enabled() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    holder_killed_before_the_endpoint(StoreSpec::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_killed_after_the_endpoint_ends_every_session() {
    if !redis_enabled() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    holder_killed_after_the_endpoint(StoreSpec::Redis(redis.url())).await;
}

/// Redis stopped mid-run: requests keep succeeding on the cached token (background refreshes
/// fail transiently and back off); after a restart (empty, no persistence) the next expiry
/// refreshes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_serves_cached_tokens_and_recovers() {
    if !redis_enabled() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let spec = StoreSpec::Redis(redis.url());
    let server = start_server().await;
    let store = spec.store();
    let mut secrets = Secrets::default();
    seed(&server, &*store, &mut secrets).await;
    let mut procs = spawn_many(4, &spec, &server, 50).await;
    assert_all_ok(&round(&mut procs, "round").await, 50);

    redis.stop();
    advance(&mut procs, &server, Duration::from_secs(10)).await;
    assert_all_ok(&round(&mut procs, "round").await, 50);
    // Into the soft window: served from memory; the background refreshes cannot take the
    // lease and back off.
    advance(&mut procs, &server, TO_SOFT - Duration::from_secs(10)).await;
    assert_all_ok(&round(&mut procs, "round").await, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_all_ok(&round(&mut procs, "round").await, 50);
    let stats = server.stats();
    assert_eq!(stats.token_calls, 0, "{stats:?}");

    redis.restart();
    advance(&mut procs, &server, TO_STALE - TO_SOFT).await;
    let t = Instant::now();
    assert_all_ok(&round(&mut procs, "round").await, 50);
    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");
    println!(
        "redis restarted: the next expiry refreshed once ({} ms)",
        t.elapsed().as_millis()
    );
    secrets.collect(&*store).await;

    advance(&mut procs, &server, TO_STALE).await;
    assert_all_ok(&round(&mut procs, "round").await, 50);
    assert_eq!(server.stats().refresh_grants, 2);
    secrets.collect(&*store).await;
    finish(procs, &secrets).await;
}
