//! Interoperability with a certified OpenID provider nobody here wrote: `oidc-provider` (npm),
//! started from `tests/interop/server.mjs`, through both adapters.
//!
//! Setup: `npm ci --prefix tests/interop` (node 20 or later). With `CLIENT_AUTH_INTEROP=1` a
//! missing node or `node_modules` fails the tests; without it they print how to enable them
//! and pass. Each test starts its own provider process (it exits when its stdin closes).
//!
//! These tests run in real time: the provider's clock cannot be moved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client_auth::{
    ClientAssertionKey, ClientAuth, DpopKey, Error, MemoryStore, OAuthProvider,
    OAuthProviderBuilder, ServerMetadata, SessionReason, SessionState, SuppliedTransport,
};
use serde_json::{Value, json};

#[path = "support/adapters.rs"]
mod adapters;

use adapters::{ADAPTERS, Adapter, AuthClient, Outcome, token_transport};

// ---- the provider process ------------------------------------------------------------------

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether the interop setup is there; panics when it is required (`CLIENT_AUTH_INTEROP=1`) and
/// missing, prints one line and returns `false` when it is optional and missing.
fn setup_present() -> bool {
    let required = std::env::var("CLIENT_AUTH_INTEROP").is_ok_and(|v| v == "1");
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let modules = interop_dir()
        .join("node_modules/oidc-provider/package.json")
        .is_file();
    let missing = match (node, modules) {
        (true, true) => return true,
        (false, _) => "node is not on PATH",
        (true, false) => "tests/interop/node_modules is missing",
    };
    assert!(
        !required,
        "CLIENT_AUTH_INTEROP=1 but {missing}: install node 20+ and run `npm ci --prefix tests/interop`"
    );
    // Once per test binary, past libtest's output capture so that it shows.
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "interop tests skipped ({missing}): run `npm ci --prefix tests/interop` and set CLIENT_AUTH_INTEROP=1 to enable them"
        );
    });
    false
}

#[derive(Debug, Clone)]
struct ClientReg {
    id: String,
    secret: String,
}

/// A `private_key_jwt` client key the server registered: its key id, algorithm and PKCS#8 PEM.
#[derive(Debug, Clone)]
struct ClientKey {
    kid: String,
    alg: String,
    pem: String,
}

/// The index of `adapter`'s client in the server's per-adapter client lists (tower first).
fn slot(adapter: Adapter) -> usize {
    match adapter {
        Adapter::Tower => 0,
        Adapter::Reqwest => 1,
    }
}

/// A running `server.mjs`. Dropping it closes its stdin (it exits) and reaps it.
struct Interop {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The JSON line the server printed when ready.
    ready_line: String,
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: String,
    control_url: String,
    resource_origin: String,
    resource_url: String,
    /// The resource that checks DPoP proofs itself (`/dpop-api/resource`).
    dpop_resource_url: String,
    tower_client: ClientReg,
    reqwest_client: ClientReg,
    /// DPoP-bound clients (`dpop_bound_access_tokens`), one per adapter; the token endpoint
    /// demands a nonce from them.
    dpop_clients: [ClientReg; 2],
    /// `client_secret_jwt` clients, one per adapter.
    secret_jwt_clients: [ClientReg; 2],
    /// `private_key_jwt` clients, one per adapter (no secret), registered with `client_keys`.
    jwt_clients: [String; 2],
    client_keys: Vec<ClientKey>,
    control: reqwest::Client,
}

impl Drop for Interop {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Interop {
    /// Starts the provider with this access-token lifetime, or `None` when the setup is absent
    /// and not required.
    fn start(access_token_ttl_secs: u64) -> Option<Interop> {
        Self::start_with(access_token_ttl_secs, 1)
    }

    /// As [`start`](Self::start), with the resource's clock tolerance (leeway) in seconds.
    fn start_with(access_token_ttl_secs: u64, clock_tolerance_secs: u64) -> Option<Interop> {
        if !setup_present() {
            return None;
        }
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("--access-token-ttl")
            .arg(access_token_ttl_secs.to_string())
            .arg("--clock-tolerance")
            .arg(clock_tolerance_secs.to_string())
            .current_dir(interop_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node tests/interop/server.mjs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The runtime and development-key warnings are expected.
                if !line.contains("oidc-provider WARNING") {
                    eprintln!("[server.mjs] {line}");
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("server.mjs did not print its ready line: {other:?}");
            }
        };
        let info: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let s = |k: &str| info[k].as_str().unwrap().to_owned();
        let reg = |list: &str, i: usize| ClientReg {
            id: info[list][i]["client_id"].as_str().unwrap().to_owned(),
            secret: info[list][i]["client_secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let client_keys = info["client_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| ClientKey {
                kid: k["kid"].as_str().unwrap().to_owned(),
                alg: k["alg"].as_str().unwrap().to_owned(),
                pem: k["pem"].as_str().unwrap().to_owned(),
            })
            .collect();
        Some(Interop {
            ready_line: line.clone(),
            issuer: s("issuer"),
            token_endpoint: s("token_endpoint"),
            revocation_endpoint: s("revocation_endpoint"),
            control_url: s("control_url"),
            resource_origin: s("resource_origin"),
            resource_url: s("resource_url"),
            dpop_resource_url: s("dpop_resource_url"),
            tower_client: reg("clients", 0),
            reqwest_client: reg("clients", 1),
            dpop_clients: [reg("dpop_clients", 0), reg("dpop_clients", 1)],
            secret_jwt_clients: [reg("secret_jwt_clients", 0), reg("secret_jwt_clients", 1)],
            jwt_clients: [reg("jwt_clients", 0).id, reg("jwt_clients", 1).id],
            client_keys,
            control: reqwest::Client::new(),
            child,
            stdin,
        })
    }

    fn client(&self, adapter: Adapter) -> &ClientReg {
        match adapter {
            Adapter::Tower => &self.tower_client,
            Adapter::Reqwest => &self.reqwest_client,
        }
    }

    fn dpop_client(&self, adapter: Adapter) -> &ClientReg {
        &self.dpop_clients[slot(adapter)]
    }

    fn jwt_client(&self, adapter: Adapter) -> &str {
        &self.jwt_clients[slot(adapter)]
    }

    /// The registered client key for `alg` (`ES256` or `RS256`).
    fn client_key(&self, alg: &str) -> &ClientKey {
        self.client_keys.iter().find(|k| k.alg == alg).unwrap()
    }

    async fn post(&self, route: &str, body: Value) -> Value {
        let response = self
            .control
            .post(format!("{}/{route}", self.control_url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{route}: {response:?}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// A grant for `sub` as if the user had signed in: `(access_token, refresh_token)`.
    async fn mint(&self, client: &ClientReg) -> (String, String) {
        let minted = self.post("mint", json!({ "client_id": client.id })).await;
        (
            minted["access_token"].as_str().unwrap().to_owned(),
            minted["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn revoke_access(&self, access_token: &str) {
        let answer = self
            .post("revoke-access", json!({ "access_token": access_token }))
            .await;
        assert_eq!(answer["revoked"], true);
    }

    async fn revoke_grant(&self, token: &str) {
        let answer = self.post("revoke-grant", json!({ "token": token })).await;
        assert_eq!(answer["revoked"], true);
    }

    /// A DPoP-bound grant (its refresh token takes only proofs of the key whose thumbprint is
    /// `jkt`): the refresh token.
    async fn mint_bound(&self, client: &ClientReg, jkt: &str) -> String {
        let minted = self
            .post("mint", json!({ "client_id": client.id, "jkt": jkt }))
            .await;
        assert_eq!(minted["token_type"], "DPoP");
        minted["refresh_token"].as_str().unwrap().to_owned()
    }

    /// Gives the DPoP resource a new nonce: proofs with the old one get `use_dpop_nonce`.
    async fn rotate_resource_nonce(&self) {
        let answer = self.post("rotate-resource-nonce", json!({})).await;
        assert_eq!(answer["rotated"], true);
    }

    /// The node process's counters for the client `id`, as it keeps them.
    async fn raw_counters(&self, id: &str) -> Value {
        let mut all: Value = serde_json::from_str(
            &self
                .control
                .get(format!("{}/counters", self.control_url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        all[id].take()
    }

    /// The DPoP figures of the client `id`.
    async fn dpop_counters(&self, id: &str) -> DpopCounters {
        let c = self.raw_counters(id).await;
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let r = &c["dpop_resource"];
        DpopCounters {
            token_requests: n(&c["token_requests"]),
            token_proofs: n(&c["dpop_proofs"]),
            token_nonce_errors: n(&c["errors"]["use_dpop_nonce"]),
            token_errors: c["errors"]
                .as_object()
                .map_or(0, |m| m.values().map(n).sum()),
            dpop_tokens: n(&c["token_types"]["DPoP"]),
            client_credentials_successes: n(&c["client_credentials_successes"]),
            refresh_successes: n(&c["refresh_successes"]),
            ok: n(&r["200"]),
            use_dpop_nonce: n(&r["use_dpop_nonce"]),
            invalid_dpop_proof: n(&r["invalid_dpop_proof"]),
            invalid_token: n(&r["invalid_token"]),
            always_invalid_requests: n(&c["dpop_paths"]["/dpop-api/always-invalid-proof"]),
            last_jkt: c["dpop_last"]["jkt"].as_str().map(str::to_owned),
        }
    }

    /// The Authorization and DPoP headers, and the URL, of the last request the DPoP resource
    /// accepted from the client `id`.
    async fn last_dpop_request(&self, id: &str) -> (String, String, String) {
        let c = self.raw_counters(id).await;
        let last = &c["dpop_last"];
        let s = |k: &str| last[k].as_str().unwrap().to_owned();
        (s("authorization"), s("dpop"), s("url"))
    }

    /// The node process's counters for `client`.
    async fn counters(&self, client: &ClientReg) -> Counters {
        self.counters_of(&client.id).await
    }

    /// The node process's counters for the client `id`.
    async fn counters_of(&self, id: &str) -> Counters {
        let c = &self.raw_counters(id).await;
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Counters {
            token_requests: n(&c["token_requests"]),
            max_in_flight: n(&c["max_in_flight"]),
            max_token_ms: n(&c["max_token_ms"]),
            refresh_successes: n(&c["refresh_successes"]),
            client_credentials_successes: n(&c["client_credentials_successes"]),
            invalid_grant: n(&c["errors"]["invalid_grant"]),
            errors: c["errors"]
                .as_object()
                .map_or(0, |m| m.values().map(n).sum()),
            resource_ok: n(&c["resource"]["200"]),
            resource_401: n(&c["resource"]["401"]),
        }
    }

    /// Presents `refresh_token` at the token endpoint by hand; returns the `error` code or
    /// `"ok"`.
    async fn refresh_by_hand(&self, client: &ClientReg, refresh_token: &str) -> String {
        let response = self
            .control
            .post(&self.token_endpoint)
            .basic_auth(&client.id, Some(&client.secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={refresh_token}"
            ))
            .send()
            .await
            .unwrap();
        let ok = response.status().is_success();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if ok {
            "ok".to_owned()
        } else {
            body["error"].as_str().unwrap_or("?").to_owned()
        }
    }
}

/// A DPoP client's figures: its token requests, and the DPoP resource's answers to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DpopCounters {
    token_requests: u64,
    /// Token requests that carried a DPoP proof.
    token_proofs: u64,
    /// `400 use_dpop_nonce` answers of the token endpoint.
    token_nonce_errors: u64,
    /// Token-endpoint errors of any kind (nonce challenges included).
    token_errors: u64,
    /// Tokens issued with `token_type: DPoP`.
    dpop_tokens: u64,
    client_credentials_successes: u64,
    refresh_successes: u64,
    /// The DPoP resource's answers, by reason.
    ok: u64,
    use_dpop_nonce: u64,
    invalid_dpop_proof: u64,
    invalid_token: u64,
    /// Requests that reached `/dpop-api/always-invalid-proof`.
    always_invalid_requests: u64,
    /// The thumbprint of the proof key of the last request the resource accepted.
    last_jkt: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    token_requests: u64,
    max_in_flight: u64,
    max_token_ms: u64,
    refresh_successes: u64,
    client_credentials_successes: u64,
    invalid_grant: u64,
    errors: u64,
    resource_ok: u64,
    resource_401: u64,
}

// ---- the two adapters behind one face --------------------------------------------------------

/// A provider builder for `client` at this provider, on the token transport that goes with
/// `adapter`.
fn oauth(
    builder: OAuthProviderBuilder,
    adapter: Adapter,
    client: &ClientReg,
) -> OAuthProviderBuilder<SuppliedTransport> {
    oauth_without_secret(builder, adapter, &client.id).client_secret(client.secret.as_str())
}

/// As [`oauth`], for a client that authenticates otherwise than with a secret.
fn oauth_without_secret(
    builder: OAuthProviderBuilder,
    adapter: Adapter,
    client_id: &str,
) -> OAuthProviderBuilder<SuppliedTransport> {
    builder
        .client_id(client_id)
        .jitter(0.0)
        .transport(token_transport(adapter))
}

// ---- scenarios -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_grant_with_rotation_through_both_adapters() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (_, minted_rt) = op.mint(client).await;
        let store = Arc::new(MemoryStore::new());
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(minted_rt.as_str())
        .store(store.clone(), "alice")
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);

        // No access token yet: the first request refreshes, and the refresh token rotates.
        let outcome = http.get(&op.resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let first_rt = store.get("alice").unwrap().refresh_token.unwrap();
        assert_ne!(first_rt.expose_secret(), minted_rt, "{adapter:?}: rotated");

        // A forced refresh rotates again, and the new token serves requests.
        provider.verify_session().await.unwrap();
        let second_rt = store.get("alice").unwrap().refresh_token.unwrap();
        assert_ne!(second_rt, first_rt, "{adapter:?}: rotated again");
        for _ in 0..5 {
            let outcome = http.get(&op.resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        }
        let c = op.counters(client).await;
        assert_eq!(
            (
                c.refresh_successes,
                c.invalid_grant,
                c.resource_ok,
                c.resource_401
            ),
            (2, 0, 6, 0),
            "{adapter:?}: {c:?}"
        );
        assert_eq!(
            provider.session_state(),
            SessionState::Authenticated(SessionReason::Refreshed)
        );

        // Reuse detection is on: the rotated-out token is refused by the provider.
        assert_eq!(
            op.refresh_by_hand(client, first_rt.expose_secret()).await,
            "invalid_grant",
            "{adapter:?}"
        );
        println!("{adapter:?}: refresh_token grant with rotation: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_through_both_adapters() {
    let Some(op) = Interop::start(2) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let provider = oauth(
            OAuthProvider::client_credentials(&op.token_endpoint),
            adapter,
            client,
        )
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider, &op.resource_origin);
        for _ in 0..3 {
            let outcome = http.get(&op.resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        }
        assert_eq!(op.counters(client).await.client_credentials_successes, 1);
        // Past the hard window (1.5 s of a 2 s token) a new token is fetched before sending.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let outcome = http.get(&op.resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.counters(client).await;
        assert_eq!(
            (
                c.client_credentials_successes,
                c.errors,
                c.resource_ok,
                c.resource_401
            ),
            (2, 0, 4, 0),
            "{adapter:?}: {c:?}"
        );
        println!("{adapter:?}: client_credentials: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_access_token_gets_401_then_refresh_then_retry() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (at, rt) = op.mint(client).await;
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(rt.as_str())
        .access_token(at.as_str(), Some(Duration::from_secs(60)))
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider, &op.resource_origin);
        assert!(http.get(&op.resource_url).await.is_ok());
        assert_eq!(op.counters(client).await.refresh_successes, 0);

        op.revoke_access(&at).await;
        let outcome = http.get(&op.resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.counters(client).await;
        assert_eq!(
            (c.resource_ok, c.resource_401, c.refresh_successes, c.errors),
            (2, 1, 1, 0),
            "{adapter:?}: one 401, one refresh, one successful retry: {c:?}"
        );
        println!("{adapter:?}: revoked access token: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_ends_the_session() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (at, rt) = op.mint(client).await;
        let store = Arc::new(MemoryStore::new());
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(rt.as_str())
        .access_token(at.as_str(), Some(Duration::from_secs(60)))
        .store(store.clone(), "alice")
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        assert!(http.get(&op.resource_url).await.is_ok());

        op.revoke_grant(&rt).await;
        match http.get(&op.resource_url).await {
            Outcome::Auth(e) => {
                assert!(e.is_session_ended(), "{adapter:?}: {e:?}");
                assert_eq!(
                    e.oauth_error().map(|o| o.code().to_owned()).as_deref(),
                    Some("invalid_grant")
                );
            }
            other => panic!("{adapter:?}: expected the session to end, got {other:?}"),
        }
        assert_eq!(
            provider.session_state(),
            SessionState::NoSession(SessionReason::Invalid("invalid_grant".into()))
        );
        assert!(store.get("alice").is_none(), "the store was cleared");

        // Later requests fail fast with NoSession, without asking the provider.
        let before = op.counters(client).await;
        match http.get(&op.resource_url).await {
            Outcome::Auth(Error::NoSession { .. }) => {}
            other => panic!("{adapter:?}: expected NoSession, got {other:?}"),
        }
        let after = op.counters(client).await;
        assert_eq!(
            before, after,
            "{adapter:?}: no network after the session ended"
        );
        println!("{adapter:?}: revoked grant: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_refresh_token_at_the_provider() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (_, rt) = op.mint(client).await;
        let store = Arc::new(MemoryStore::new());
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(rt.as_str())
        .revocation_url(&op.revocation_endpoint)
        .store(store.clone(), "alice")
        .build()
        .unwrap();
        provider.verify_session().await.unwrap();
        let current = store.get("alice").unwrap().refresh_token.unwrap();
        provider.logout().await.unwrap();
        assert_eq!(
            provider.session_state(),
            SessionState::NoSession(SessionReason::Logout)
        );
        assert_eq!(
            op.refresh_by_hand(client, current.expose_secret()).await,
            "invalid_grant",
            "{adapter:?}: RFC 7009 revocation reached the provider"
        );
    }
}

// ---- the rotation storm ----------------------------------------------------------------------

const STORM_CONCURRENCY: usize = 1000;
const STORM_TTL: u64 = 2;
const STORM_LIFETIMES: u32 = 20;
/// The resource's leeway: a request that got its token just before the hard window may sit in
/// the single-threaded node process's queue for a while (1 000 requests in flight through
/// each adapter at once on a small machine); 5 s keeps that queueing out of the figures.
const STORM_LEEWAY: u64 = 5;
/// Mean pause of each caller between its requests in the steady phase.
const STORM_THINK: Duration = Duration::from_millis(4000);

#[derive(Debug, Default)]
struct StormResult {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    max_latency_ms: AtomicU64,
    max_in_flight: AtomicU64,
}

impl StormResult {
    fn record(&self, outcome: &Outcome, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        self.max_latency_ms.fetch_max(ms, Ordering::Relaxed);
        if outcome.is_ok() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let kind: String = format!("{outcome:?}").chars().take(120).collect();
            *self.failures.lock().unwrap().entry(kind).or_default() += 1;
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} ok, {} failed {:?}, max in flight {}, max latency {} ms",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.failures.lock().unwrap(),
            self.max_in_flight.load(Ordering::Relaxed),
            self.max_latency_ms.load(Ordering::Relaxed),
        )
    }
}

/// `STORM_CONCURRENCY` requests at once through one adapter, all arriving while there is no
/// token: one refresh must serve them all.
async fn burst(http: AuthClient, url: String) -> Arc<StormResult> {
    let result = Arc::new(StormResult::default());
    let gate = Arc::new(tokio::sync::Barrier::new(STORM_CONCURRENCY));
    let mut tasks = Vec::with_capacity(STORM_CONCURRENCY);
    for _ in 0..STORM_CONCURRENCY {
        let (http, url, result, gate) = (
            http.clone(),
            url.clone(),
            Arc::clone(&result),
            Arc::clone(&gate),
        );
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let started = Instant::now();
            let outcome = http.get(&url).await;
            result.record(&outcome, started);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    result
        .max_in_flight
        .store(STORM_CONCURRENCY as u64, Ordering::Relaxed);
    result
}

/// `STORM_CONCURRENCY` callers share one adapter (one provider); each sends a request, pauses
/// for a random while (mean `STORM_THINK`), and again, until `until`. The pauses keep the
/// single-threaded node process and this debug-built client below saturation, so that the
/// token endpoint answers promptly and the refresh schedule can be checked.
async fn steady(http: AuthClient, url: String, until: Instant) -> Arc<StormResult> {
    let result = Arc::new(StormResult::default());
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(STORM_CONCURRENCY);
    for i in 0..STORM_CONCURRENCY {
        let (http, url, result, in_flight) = (
            http.clone(),
            url.clone(),
            Arc::clone(&result),
            Arc::clone(&in_flight),
        );
        // A cheap LCG per caller for the pauses; first requests spread over one mean pause.
        let mut seed = (i as u64).wrapping_mul(6_364_136_223_846_793_005) | 1;
        let mut pause = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            STORM_THINK.mul_f64(2.0 * ((seed >> 11) as f64 / (1u64 << 53) as f64))
        };
        let first = STORM_THINK.mul_f64(i as f64 / STORM_CONCURRENCY as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(first).await;
            while Instant::now() < until {
                let started = Instant::now();
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                result.max_in_flight.fetch_max(now, Ordering::Relaxed);
                let outcome = http.get(&url).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                result.record(&outcome, started);
                let left = until.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause().min(left)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    result
}

/// Both adapters at once, each with its own client, grant and provider, against oidc-provider
/// with rotation and reuse detection on: a burst of 1 000 concurrent requests with no token
/// (one refresh serves them all), then 1 000 callers for 20 access-token lifetimes of 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_storm_through_both_adapters() {
    let Some(op) = Interop::start_with(STORM_TTL, STORM_LEEWAY) else {
        return;
    };
    let lifetime = Duration::from_secs(STORM_TTL);
    // The default soft window for a 2 s token: min(max(60 s, 10 %), 50 %) = 1 s.
    let soft = Duration::from_secs(1);
    let duration = lifetime * STORM_LIFETIMES;

    let mut clients = Vec::new();
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (_, rt) = op.mint(client).await;
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(rt.as_str())
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        clients.push((adapter, provider, http));
    }

    // Phase 1: the stampede.
    let bursts: Vec<_> = clients
        .iter()
        .map(|(_, _, http)| tokio::spawn(burst(http.clone(), op.resource_url.clone())))
        .collect();
    let burst_started = Instant::now();
    let mut before = Vec::new();
    for ((adapter, _, _), run) in clients.iter().zip(bursts) {
        let result = run.await.unwrap();
        let took = burst_started.elapsed();
        let c = op.counters(op.client(*adapter)).await;
        println!(
            "rotation storm {adapter:?} burst: {STORM_CONCURRENCY} concurrent requests with no token, done in {:.1} s: {}; {} refreshes, max in flight {}, resource 401s recovered by a retry {}",
            took.as_secs_f64(),
            result.summary(),
            c.refresh_successes,
            c.max_in_flight,
            c.resource_401,
        );
        assert_eq!(result.failed.load(Ordering::Relaxed), 0, "{adapter:?}");
        // One refresh serves the whole stampede; while the burst drains (connection setup for
        // 2 000 sockets takes seconds here), the schedule refreshes ahead once per second.
        let allowed = 1 + (took.as_secs_f64() / (lifetime - soft).as_secs_f64()).ceil() as u64;
        assert!(
            c.refresh_successes >= 1 && c.refresh_successes <= allowed,
            "{adapter:?}: one refresh for the stampede, then the schedule: {c:?}"
        );
        assert_eq!(
            (c.max_in_flight, c.errors, c.token_requests),
            (1, 0, c.refresh_successes),
            "{adapter:?}: {c:?}"
        );
        before.push(c);
    }

    // Phase 2: steady load for 20 lifetimes.
    let started = Instant::now();
    let until = started + duration;
    let runs: Vec<_> = clients
        .iter()
        .map(|(_, _, http)| tokio::spawn(steady(http.clone(), op.resource_url.clone(), until)))
        .collect();
    let mut report = Vec::new();
    for (((adapter, provider, _), run), c0) in clients.iter().zip(runs).zip(before) {
        let result = run.await.unwrap();
        let elapsed = started.elapsed();
        let c = op.counters(op.client(*adapter)).await;
        let refreshes = c.refresh_successes - c0.refresh_successes;
        // Requests run from `started` to `until`; a refresh is due every (lifetime − soft).
        let predicted = duration.as_secs_f64() / (lifetime - soft).as_secs_f64();
        let line = format!(
            "{adapter:?} steady: {STORM_CONCURRENCY} callers for {:.1} s: {} ({:.0} req/s); {refreshes} refreshes (predicted {predicted:.1}), max refreshes in flight {}, slowest token request {} ms (node-side), invalid_grant {}, token errors {}, resource 401s {} (burst included)",
            elapsed.as_secs_f64(),
            result.summary(),
            result.ok.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
            c.max_in_flight,
            c.max_token_ms,
            c.invalid_grant,
            c.errors,
            c.resource_401,
        );
        println!("rotation storm {line}");
        report.push((
            *adapter,
            provider.clone(),
            result,
            c,
            refreshes,
            predicted,
            line,
        ));
    }
    for (adapter, provider, result, c, refreshes, predicted, line) in report {
        assert_eq!(result.failed.load(Ordering::Relaxed), 0, "{line}");
        assert!(result.ok.load(Ordering::Relaxed) > 0, "{line}");
        assert_eq!((c.invalid_grant, c.errors), (0, 0), "{line}");
        assert_eq!(c.max_in_flight, 1, "never two refreshes in flight: {line}");
        assert!(
            (refreshes as f64 - predicted).abs() <= 1.0,
            "refresh count within ±1 of elapsed ÷ (lifetime − soft window): {line}"
        );
        assert!(
            matches!(provider.session_state(), SessionState::Authenticated(_)),
            "{adapter:?}"
        );
    }
}

// ---- revocations under load --------------------------------------------------------------------

/// Callers in the revocation scenario, each sending one request after the other.
const REVOCATION_CALLERS: usize = 100;
/// How long the callers run.
const REVOCATION_RUN: Duration = Duration::from_secs(8);
/// When the access token in use is revoked at the provider, from the callers' start.
const REVOCATIONS_AT: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// Each caller's pause between two requests: enough to keep the single-threaded node process
/// and this debug-built client responsive on a small machine, short enough that the token
/// being revoked is in use by many requests at once.
const REVOCATION_PAUSE: Duration = Duration::from_millis(10);

/// A token the server has accepted and later revokes is refreshed at once, whenever it
/// happens: two revocations 3 s apart under load cost one refresh each, and no caller sees a
/// 401 or an error (each request is retried at most once, with the refreshed token). Guards
/// against a provider-wide cooldown after a 401-triggered refresh, which returned the second
/// revocation's 401s to callers until it ran out. The provider has default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_revocations_3s_apart_are_each_recovered_with_one_refresh_through_both_adapters() {
    // Access tokens live 60 s: no refresh is due on schedule during the run.
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.client(adapter);
        let (at, rt) = op.mint(client).await;
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .refresh_token(rt.as_str())
        .access_token(at.as_str(), Some(Duration::from_secs(60)))
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        let before = op.counters(client).await;

        let result = Arc::new(StormResult::default());
        let in_flight = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let until = started + REVOCATION_RUN;
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..REVOCATION_CALLERS {
            let (http, url, result, in_flight) = (
                http.clone(),
                op.resource_url.clone(),
                Arc::clone(&result),
                Arc::clone(&in_flight),
            );
            callers.spawn(async move {
                while Instant::now() < until {
                    let sent = Instant::now();
                    let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    result.max_in_flight.fetch_max(now, Ordering::Relaxed);
                    let outcome = http.get(&url).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    result.record(&outcome, sent);
                    tokio::time::sleep(REVOCATION_PAUSE).await;
                }
            });
        }

        // Revoke whatever access token the provider holds at that moment (the one the callers
        // are sending), as the provider's own revocation would.
        let mut revoked = Vec::new();
        for at in REVOCATIONS_AT {
            tokio::time::sleep_until((started + at).into()).await;
            let current = provider.access_token().await.unwrap();
            op.revoke_access(current.expose_secret()).await;
            revoked.push((
                started.elapsed(),
                current.expose_secret().to_owned(),
                result.ok.load(Ordering::Relaxed),
            ));
        }
        while let Some(caller) = callers.join_next().await {
            caller.unwrap();
        }
        let elapsed = started.elapsed();
        let after = op.counters(client).await;

        let ok = result.ok.load(Ordering::Relaxed);
        let failed = result.failed.load(Ordering::Relaxed);
        let token_requests = after.token_requests - before.token_requests;
        let refreshes = after.refresh_successes - before.refresh_successes;
        let (served, rejected) = (
            after.resource_ok - before.resource_ok,
            after.resource_401 - before.resource_401,
        );
        let line = format!(
            "{adapter:?}: {REVOCATION_CALLERS} callers for {:.1} s, revocations at {:.2} s and {:.2} s (after {} and {} answers): {}; token requests {token_requests}, refreshes {refreshes}, token errors {}; resource: {served} × 200, {rejected} × 401",
            elapsed.as_secs_f64(),
            revoked[0].0.as_secs_f64(),
            revoked[1].0.as_secs_f64(),
            revoked[0].2,
            revoked[1].2,
            result.summary(),
            after.errors - before.errors,
        );
        println!("two revocations {line}");

        assert_ne!(
            revoked[0].1, revoked[1].1,
            "the second revocation hit the refreshed token: {line}"
        );
        assert!(
            revoked[0].2 > 0 && revoked[1].2 > revoked[0].2,
            "requests were served before each revocation: {line}"
        );
        assert!(
            rejected > 0,
            "the revoked tokens were rejected while in use: {line}"
        );
        assert_eq!(failed, 0, "no caller saw a 401 or an error: {line}");
        assert_eq!(
            (token_requests, refreshes),
            (2, 2),
            "one refresh per revocation: {line}"
        );
        assert_eq!(
            served, ok,
            "each request got its 200 from one send or one retry: {line}"
        );
        assert!(
            matches!(provider.session_state(), SessionState::Authenticated(_)),
            "{line}"
        );
    }
}

// ---- DPoP (RFC 9449) -------------------------------------------------------------------------

/// A `client_credentials` provider for `adapter`'s DPoP client, proving with `key`.
fn dpop_provider(op: &Interop, adapter: Adapter, key: &DpopKey) -> OAuthProvider {
    oauth(
        OAuthProvider::client_credentials(&op.token_endpoint),
        adapter,
        op.dpop_client(adapter),
    )
    .dpop(key.clone())
    .build()
    .unwrap()
}

/// The token endpoint demands a nonce (`400 use_dpop_nonce`) and so does the resource (401
/// `use_dpop_nonce`); each challenge is answered once with the nonce, and neither costs a token:
/// one token request with a proof and one with the nonce, then the resource accepts the
/// DPoP-bound token with proofs of the same key (its `cnf.jkt`). A nonce the resource rotates
/// later costs one more challenge, not a refresh, though the token was accepted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_nonce_challenges_at_the_token_endpoint_and_resource_cost_no_extra_token_through_both_adapters()
 {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let id = &op.dpop_client(adapter).id;
        let key = DpopKey::generate().unwrap();
        let provider = dpop_provider(&op, adapter, &key);
        let http = AuthClient::new(adapter, provider, &op.resource_origin);

        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.dpop_counters(id).await;
        let expected = DpopCounters {
            // The first token request had no nonce: 400 use_dpop_nonce, then once more.
            token_requests: 2,
            token_proofs: 2,
            token_nonce_errors: 1,
            token_errors: 1,
            dpop_tokens: 1,
            client_credentials_successes: 1,
            // The first resource request had no nonce either: 401 use_dpop_nonce, then 200.
            ok: 1,
            use_dpop_nonce: 1,
            last_jkt: Some(key.thumbprint().to_owned()),
            ..DpopCounters::default()
        };
        assert_eq!(c, expected, "{adapter:?}");

        // Both nonces are remembered: no challenge, no token request. The proof's htu has no
        // query (the resource compares it with its origin and path).
        let with_query = format!("{}?page=2&q=a%20b", op.dpop_resource_url);
        for _ in 0..3 {
            let outcome = http.get(&with_query).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        }
        let c = op.dpop_counters(id).await;
        assert_eq!(
            c,
            DpopCounters {
                ok: 4,
                ..expected.clone()
            },
            "{adapter:?}"
        );

        // A new resource nonce: one more challenge, answered without a refresh.
        op.rotate_resource_nonce().await;
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.dpop_counters(id).await;
        assert_eq!(
            c,
            DpopCounters {
                ok: 5,
                use_dpop_nonce: 2,
                ..expected
            },
            "{adapter:?}: a nonce 401 does not refresh"
        );
        println!("{adapter:?}: DPoP nonces: {c:?}");
    }
}

/// Real expiry (2 s tokens): a DPoP-bound `client_credentials` token and a DPoP-bound grant's
/// access token are both renewed with proofs, and the nonces remembered from the first token
/// request and resource request are reused (no second challenge). The grant's refresh token is
/// bound to the key (oidc-provider checks the proof's key against it at each refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_are_renewed_after_expiry_with_proofs_through_both_adapters() {
    let Some(op) = Interop::start(2) else {
        return;
    };
    // The adapters use different clients: run them side by side to halve the waiting.
    let run = |adapter: Adapter| {
        let op = &op;
        async move {
            let client = op.dpop_client(adapter);
            let key = DpopKey::generate().unwrap();

            // client_credentials.
            let http = AuthClient::new(
                adapter,
                dpop_provider(op, adapter, &key),
                &op.resource_origin,
            );
            let outcome = http.get(&op.dpop_resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
            // Past the hard window (1.5 s of a 2 s token) a new token is fetched before sending.
            tokio::time::sleep(Duration::from_millis(1600)).await;
            let outcome = http.get(&op.dpop_resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
            let c = op.dpop_counters(&client.id).await;
            assert_eq!(
                (
                    c.client_credentials_successes,
                    c.dpop_tokens,
                    c.token_requests,
                    c.token_proofs,
                    c.token_nonce_errors,
                    c.token_errors,
                ),
                (2, 2, 3, 3, 1, 1),
                "{adapter:?}: one nonce challenge, then two tokens: {c:?}"
            );
            assert_eq!(
                (
                    c.ok,
                    c.use_dpop_nonce,
                    c.invalid_dpop_proof,
                    c.invalid_token
                ),
                (2, 1, 0, 0),
                "{adapter:?}: {c:?}"
            );
            let before = c;

            // refresh_token, on a grant bound to the key.
            let rt = op.mint_bound(client, key.thumbprint()).await;
            let store = Arc::new(MemoryStore::new());
            let provider = oauth(
                OAuthProvider::refresh_token_grant(&op.token_endpoint),
                adapter,
                client,
            )
            .dpop(key.clone())
            .refresh_token(rt.as_str())
            .store(store.clone(), "alice")
            .build()
            .unwrap();
            let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
            let outcome = http.get(&op.dpop_resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
            let first_rt = store.get("alice").unwrap().refresh_token.unwrap();
            tokio::time::sleep(Duration::from_millis(1600)).await;
            let outcome = http.get(&op.dpop_resource_url).await;
            assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
            let second_rt = store.get("alice").unwrap().refresh_token.unwrap();
            assert_ne!(first_rt, second_rt, "{adapter:?}: rotated at each refresh");
            let c = op.dpop_counters(&client.id).await;
            assert_eq!(
                (
                    c.refresh_successes - before.refresh_successes,
                    c.dpop_tokens - before.dpop_tokens,
                    c.token_requests - before.token_requests,
                    c.token_nonce_errors - before.token_nonce_errors,
                    c.token_errors - before.token_errors,
                ),
                // A new provider knows no nonce yet: one challenge, then two refreshes.
                (2, 2, 3, 1, 1),
                "{adapter:?}: {c:?}"
            );
            assert_eq!(
                (
                    c.ok - before.ok,
                    c.use_dpop_nonce - before.use_dpop_nonce,
                    c.invalid_dpop_proof,
                    c.invalid_token,
                ),
                (2, 1, 0, 0),
                "{adapter:?}: {c:?}"
            );
            assert_eq!(c.last_jkt.as_deref(), Some(key.thumbprint()));
            assert_eq!(
                provider.session_state(),
                SessionState::Authenticated(SessionReason::Refreshed)
            );
            println!("{adapter:?}: DPoP renewal after expiry: {c:?}");
        }
    };
    tokio::join!(run(Adapter::Tower), run(Adapter::Reqwest));
}

/// A DPoP-bound token revoked while in use gets 401 `invalid_token` (a `DPoP` challenge): one
/// new token, and the request is retried with a proof for the new token (its `ath`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_dpop_bound_token_gets_one_new_token_and_a_retry_with_a_new_proof_through_both_adapters()
 {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let id = &op.dpop_client(adapter).id;
        let key = DpopKey::generate().unwrap();
        let provider = dpop_provider(&op, adapter, &key);
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let before = op.dpop_counters(id).await;

        let current = provider.access_token().await.unwrap();
        op.revoke_access(current.expose_secret()).await;
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.dpop_counters(id).await;
        assert_eq!(
            (
                c.invalid_token,
                c.ok - before.ok,
                c.client_credentials_successes - before.client_credentials_successes,
                c.token_requests - before.token_requests,
                c.use_dpop_nonce - before.use_dpop_nonce,
                c.invalid_dpop_proof,
            ),
            (1, 1, 1, 1, 0, 0),
            "{adapter:?}: one 401, one token, one retry: {c:?}"
        );
        let fresh = provider.access_token().await.unwrap();
        assert_ne!(fresh, current, "{adapter:?}");
        println!("{adapter:?}: revoked DPoP-bound token: {c:?}");
    }
}

/// A resource nonce that changes while the token is revoked asks for two retries in one call: the
/// nonce, then a new token. The adapters retry once per call, so the caller gets the second
/// 401 (`invalid_token`) and the next call recovers; this test asks for the first call to
/// succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "documented limit: one retry per call; a nonce retry's 401 invalid_token reaches the caller, the next call recovers"]
async fn a_nonce_challenge_and_a_revoked_token_together_are_both_recovered_in_one_call_through_both_adapters()
 {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let key = DpopKey::generate().unwrap();
        let provider = dpop_provider(&op, adapter, &key);
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        assert!(http.get(&op.dpop_resource_url).await.is_ok(), "{adapter:?}");
        let current = provider.access_token().await.unwrap();
        op.revoke_access(current.expose_secret()).await;
        op.rotate_resource_nonce().await;
        let outcome = http.get(&op.dpop_resource_url).await;
        let c = op.dpop_counters(&op.dpop_client(adapter).id).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?} {c:?}");
    }
}

/// A grant bound to one DPoP key cannot be refreshed with proofs of another: oidc-provider
/// answers `invalid_grant`, which ends the session (the proof is what binds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_bound_to_another_dpop_key_ends_the_session_through_both_adapters() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = op.dpop_client(adapter);
        let other = DpopKey::generate().unwrap();
        let rt = op.mint_bound(client, other.thumbprint()).await;
        let provider = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .dpop(DpopKey::generate().unwrap())
        .refresh_token(rt.as_str())
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        match http.get(&op.dpop_resource_url).await {
            Outcome::Auth(e) => {
                assert!(e.is_session_ended(), "{adapter:?}: {e:?}");
                assert_eq!(
                    e.oauth_error().map(|o| o.code().to_owned()).as_deref(),
                    Some("invalid_grant"),
                    "{adapter:?}"
                );
            }
            other => panic!("{adapter:?}: expected the session to end, got {other:?}"),
        }
        let c = op.dpop_counters(&client.id).await;
        assert_eq!((c.refresh_successes, c.ok), (0, 0), "{adapter:?}: {c:?}");
    }
}

/// A proof is good for one request: the headers of a request the resource accepted, sent again
/// as they were, get 401 `invalid_dpop_proof` (jti replay). Through the adapters, a route that
/// always answers `invalid_dpop_proof` gets one request per call (no retry, no loop) and no
/// token request, and the session is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dpop_proof_is_rejected_and_an_invalid_proof_is_not_retried_through_both_adapters()
 {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let id = &op.dpop_client(adapter).id;
        let key = DpopKey::generate().unwrap();
        let provider = dpop_provider(&op, adapter, &key);
        let http = AuthClient::new(adapter, provider, &op.resource_origin);
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");

        // The replay: what went over the wire, once more.
        let (authorization, proof, url) = op.last_dpop_request(id).await;
        assert!(authorization.starts_with("DPoP "), "{authorization}");
        let replay = op
            .control
            .get(&url)
            .header("authorization", &authorization)
            .header("dpop", &proof)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 401, "{adapter:?}: the replay is refused");
        let challenge = replay.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains(r#"error="invalid_dpop_proof""#),
            "{adapter:?}: {challenge}"
        );
        let before = op.dpop_counters(id).await;
        assert_eq!(
            (before.ok, before.invalid_dpop_proof),
            (1, 1),
            "{adapter:?}: {before:?}"
        );

        // invalid_dpop_proof through the adapter: returned as is.
        let always_invalid = format!("{}/dpop-api/always-invalid-proof", op.resource_origin);
        for call in 1..=3 {
            let outcome = http.get(&always_invalid).await;
            assert_eq!(
                outcome.status(),
                Some(http::StatusCode::UNAUTHORIZED),
                "{adapter:?}: {outcome:?}"
            );
            let c = op.dpop_counters(id).await;
            assert!(
                c.always_invalid_requests <= 2 * call,
                "{adapter:?}: at most 2 requests per call: {c:?}"
            );
            assert_eq!(
                c.always_invalid_requests, call,
                "{adapter:?}: invalid_dpop_proof is not retried: {c:?}"
            );
        }
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.dpop_counters(id).await;
        assert_eq!(
            (
                c.token_requests,
                c.client_credentials_successes,
                c.ok,
                c.invalid_dpop_proof,
                c.use_dpop_nonce
            ),
            (before.token_requests, 1, 2, 1 + 3, before.use_dpop_nonce),
            "{adapter:?}: no token request for an invalid proof: {c:?}"
        );
        println!("{adapter:?}: DPoP replay and invalid proofs: {c:?}");
    }
}

/// The DPoP resource the tests above rely on refuses what RFC 9449 says it must, so that its 200s
/// mean something: `interop/check-dpop-resource.mjs` sends it one proof per defect (no nonce, a
/// wrong nonce, a replayed jti, no proof, the Bearer scheme, another htm or htu, an htu with the
/// query, an iat 2 minutes off, another or no ath, typ JWT, ES384, a key the token is not bound
/// to, a signature by another key than the header's jwk) and checks each answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpop_resource_refuses_each_defective_proof() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    let output = tokio::process::Command::new("node")
        .arg("check-dpop-resource.mjs")
        .current_dir(interop_dir())
        .env("INTEROP_INFO", &op.ready_line)
        .output()
        .await
        .expect("run node tests/interop/check-dpop-resource.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- discovery -------------------------------------------------------------------------------

/// `OAuthProvider::discover` on the real issuer returns its endpoints (DPoP algorithms and
/// client authentication methods included), and a provider started from the metadata gets a
/// DPoP-bound token and uses it, through each adapter's own transport. A trailing slash, or
/// another origin serving the real issuer's metadata (a mix-up), is an `Error::Config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_returns_the_servers_endpoints_and_refuses_another_issuer_through_both_adapters()
{
    let Some(op) = Interop::start(60) else {
        return;
    };
    let metadata = OAuthProvider::discover(&op.issuer).await.unwrap();
    assert_eq!(metadata.issuer(), op.issuer);
    assert_eq!(metadata.token_endpoint(), op.token_endpoint);
    assert_eq!(
        metadata.revocation_endpoint(),
        Some(op.revocation_endpoint.as_str())
    );
    assert!(
        metadata.dpop_signing_algs().iter().any(|a| a == "ES256"),
        "{metadata:?}"
    );
    for method in [
        "client_secret_basic",
        "private_key_jwt",
        "client_secret_jwt",
    ] {
        assert!(
            metadata
                .token_endpoint_auth_methods()
                .iter()
                .any(|m| m == method),
            "{method}: {metadata:?}"
        );
    }

    // The issuer with a trailing slash (the server names it without), and the resource's origin,
    // which serves the provider's metadata naming the provider's issuer.
    let wrong = [format!("{}/", op.issuer), op.resource_origin.clone()];
    for issuer in &wrong {
        match OAuthProvider::discover(issuer).await {
            Err(Error::Config(message)) => {
                assert!(message.contains("another issuer"), "{issuer}: {message}");
            }
            other => panic!("{issuer}: expected Error::Config, got {other:?}"),
        }
    }

    for adapter in ADAPTERS {
        let metadata = ServerMetadata::discover_with(&op.issuer, token_transport(adapter), false)
            .await
            .unwrap();
        assert_eq!(metadata.token_endpoint(), op.token_endpoint, "{adapter:?}");
        for issuer in &wrong {
            let err = ServerMetadata::discover_with(issuer, token_transport(adapter), false)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Config(_)),
                "{adapter:?} {issuer}: {err:?}"
            );
        }
        let key = DpopKey::generate().unwrap();
        let provider = oauth(
            metadata.client_credentials(),
            adapter,
            op.dpop_client(adapter),
        )
        .dpop(key.clone())
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider, &op.resource_origin);
        let outcome = http.get(&op.dpop_resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.dpop_counters(&op.dpop_client(adapter).id).await;
        assert_eq!(
            (c.dpop_tokens, c.ok, c.last_jkt.as_deref()),
            (1, 1, Some(key.thumbprint())),
            "{adapter:?}: {c:?}"
        );

        // The metadata's revocation endpoint: a logout revokes the DPoP-bound grant's refresh
        // token, which then no longer refreshes (with proofs of the right key).
        let client = op.dpop_client(adapter);
        let rt = op.mint_bound(client, key.thumbprint()).await;
        let store = Arc::new(MemoryStore::new());
        let provider = oauth(metadata.refresh_token_grant(), adapter, client)
            .dpop(key.clone())
            .refresh_token(rt.as_str())
            .store(store.clone(), "alice")
            .build()
            .unwrap();
        provider.verify_session().await.unwrap();
        let current = store.get("alice").unwrap().refresh_token.unwrap();
        provider.logout().await.unwrap();
        let again = oauth(
            OAuthProvider::refresh_token_grant(&op.token_endpoint),
            adapter,
            client,
        )
        .dpop(key.clone())
        .refresh_token(current.expose_secret())
        .build()
        .unwrap();
        let err = again.verify_session().await.unwrap_err();
        assert_eq!(
            err.oauth_error().map(|o| o.code().to_owned()).as_deref(),
            Some("invalid_grant"),
            "{adapter:?}: revoked at logout: {err:?}"
        );
    }
}

// ---- JWT client authentication ---------------------------------------------------------------

/// `private_key_jwt` clients get tokens with ES256 and RS256 assertions (key id in the header),
/// with the token endpoint URL as the audience (the default) and with the issuer (the default
/// from discovery), and use them at the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_clients_get_tokens_with_es256_and_rs256_keys_through_both_adapters() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    let metadata = OAuthProvider::discover(&op.issuer).await.unwrap();
    for adapter in ADAPTERS {
        let id = op.jwt_client(adapter);
        let mut expected = 0;
        for alg in ["ES256", "RS256"] {
            let k = op.client_key(alg);
            let key = match alg {
                "ES256" => ClientAssertionKey::es256_pem(k.pem.as_bytes()),
                _ => ClientAssertionKey::rs256_pem(k.pem.as_bytes()),
            }
            .unwrap()
            .key_id(k.kid.as_str());
            for builder in [
                OAuthProvider::client_credentials(&op.token_endpoint),
                metadata.client_credentials(),
            ] {
                let provider = oauth_without_secret(builder, adapter, id)
                    .private_key_jwt(key.clone())
                    .build()
                    .unwrap();
                let http = AuthClient::new(adapter, provider, &op.resource_origin);
                let outcome = http.get(&op.resource_url).await;
                assert!(outcome.is_ok(), "{adapter:?} {alg}: {outcome:?}");
                expected += 1;
            }
        }
        let c = op.counters_of(id).await;
        assert_eq!(
            (
                c.client_credentials_successes,
                c.token_requests,
                c.errors,
                c.resource_ok
            ),
            (expected, expected, 0, expected),
            "{adapter:?}: {c:?}"
        );
    }
}

/// A `private_key_jwt` assertion signed by a key the client did not register (once claiming a
/// registered key's id, once with none) is refused: `Error::Rejected` with `invalid_client`,
/// whose Display and Debug hold no key text and no assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_jwt_client_with_a_wrong_key_is_rejected_as_invalid_client_through_both_adapters()
 {
    let Some(op) = Interop::start(60) else {
        return;
    };
    // A P-256 key nobody registered (from the core's documentation).
    const UNREGISTERED: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
-----END PRIVATE KEY-----";
    let registered_kid = op.client_key("ES256").kid.clone();
    for adapter in ADAPTERS {
        let id = op.jwt_client(adapter);
        for kid in [Some(registered_kid.as_str()), None] {
            let mut key = ClientAssertionKey::es256_pem(UNREGISTERED.as_bytes()).unwrap();
            if let Some(kid) = kid {
                key = key.key_id(kid);
            }
            let provider = oauth_without_secret(
                OAuthProvider::client_credentials(&op.token_endpoint),
                adapter,
                id,
            )
            .private_key_jwt(key)
            .build()
            .unwrap();
            let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
            let err = match http.get(&op.resource_url).await {
                Outcome::Auth(e) => e,
                other => panic!("{adapter:?} {kid:?}: expected an auth error, got {other:?}"),
            };
            match &err {
                Error::Rejected(oauth) => {
                    assert_eq!(oauth.code(), "invalid_client", "{adapter:?}: {err:?}");
                    assert_eq!(oauth.status(), http::StatusCode::UNAUTHORIZED);
                }
                other => panic!("{adapter:?} {kid:?}: expected Rejected, got {other:?}"),
            }
            let shown = format!("{err} {err:?} {provider:?}");
            let pem_lines = UNREGISTERED
                .lines()
                .chain(op.client_keys.iter().flat_map(|k| k.pem.lines()))
                .filter(|l| !l.starts_with("-----"));
            for line in pem_lines {
                assert!(!shown.contains(line), "{adapter:?}: key text in {shown}");
            }
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            // No assertion (its header starts `{"alg":`, `eyJhbGci` in base64url).
            assert!(
                !shown.contains("eyJhbGci"),
                "{adapter:?}: an assertion in {shown}"
            );
        }
        let c = op.counters_of(id).await;
        assert!(c.errors >= 2, "{adapter:?}: {c:?}");
        assert_eq!(
            (c.client_credentials_successes, c.resource_ok),
            (0, 0),
            "{adapter:?}: {c:?}"
        );
    }
}

/// `client_secret_jwt` (HS256 with the client secret) is taken by oidc-provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_jwt_clients_get_tokens_through_both_adapters() {
    let Some(op) = Interop::start(60) else {
        return;
    };
    for adapter in ADAPTERS {
        let client = &op.secret_jwt_clients[slot(adapter)];
        let provider = oauth(
            OAuthProvider::client_credentials(&op.token_endpoint),
            adapter,
            client,
        )
        .client_auth(ClientAuth::SecretJwt)
        .build()
        .unwrap();
        let http = AuthClient::new(adapter, provider.clone(), &op.resource_origin);
        let outcome = http.get(&op.resource_url).await;
        assert!(outcome.is_ok(), "{adapter:?}: {outcome:?}");
        let c = op.counters(client).await;
        assert_eq!(
            (c.client_credentials_successes, c.errors, c.resource_ok),
            (1, 0, 1),
            "{adapter:?}: {c:?}"
        );
        assert!(!format!("{provider:?}").contains(&client.secret));
    }
}
