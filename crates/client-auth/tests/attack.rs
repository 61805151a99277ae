//! Attack review of the core's transport and storage rules: what a hostile or
//! careless token endpoint can make us print, where a loopback token URL really goes, header
//! values, and the file store's permission model.
//!
//! Tests marked `#[ignore = "reproduces: …"]` are findings: they assert the contract and fail
//! on the current code. The others pin behaviour that held under attack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use client_auth::{
    AccessToken, Error, OAuthProvider, OAuthProviderBuilder, RefreshToken, StaticToken,
    StoredTokens,
};
use client_auth_testkit::{Fault, TestServer};
use http::{HeaderValue, StatusCode};

const CLIENT_ID: &str = "marker-client";
const CLIENT_SECRET: &str = "MARKER-CLIENT-SECRET-5e2a";
const REFRESH_TOKEN: &str = "MARKER-REFRESH-TOKEN-c07b-9d41-77aa";

fn refresh_builder(token_url: impl Into<String>) -> OAuthProviderBuilder {
    OAuthProvider::refresh_token_grant(token_url)
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .refresh_token(REFRESH_TOKEN)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
}

/// What a tracing subscriber wrote, at TRACE level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's events (the tests run on a current-thread runtime, so the refresh
    /// tasks they spawn are captured too).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The server answers `answer` (a 400 OAuth error) once; returns the error's Display and Debug
/// and everything logged at TRACE.
async fn echoed(answer: serde_json::Value) -> (String, String) {
    let captured = Captured::default();
    let _guard = captured.install();
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::status(StatusCode::BAD_REQUEST).json(answer));
    let provider = refresh_builder(server.token_url()).build().unwrap();
    let err = provider.access_token().await.unwrap_err();
    assert!(err.oauth_error().is_some(), "{err:?}");
    let mut printed = format!("{err} / {err:?}");
    if let Some(oauth) = err.oauth_error() {
        printed.push_str(&format!(" / {:?}", oauth.description()));
    }
    (printed, captured.text())
}

// ---------------------------------------------------------------------------------------------
// Echoed secrets ("server-provided text has known secret values removed before it
// is kept or logged")
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn an_echo_cut_by_the_length_cap_leaves_no_part_of_the_refresh_token() {
    // `OAuthError::new` keeps the first 512 characters, and only then are known secrets
    // replaced: a secret that straddles the cut is no longer "a known secret value".
    let padding = "x".repeat(512 - (REFRESH_TOKEN.len() - 1));
    let description = format!("{padding}{REFRESH_TOKEN}");
    let (printed, logs) = echoed(serde_json::json!({
        "error": "invalid_grant",
        "error_description": description,
    }))
    .await;

    let almost = &REFRESH_TOKEN[..REFRESH_TOKEN.len() - 1];
    assert!(
        !printed.contains(almost),
        "the error keeps {almost:?} of the refresh token: …{}",
        &printed[printed.find(almost).unwrap_or(0).saturating_sub(8)..][..48]
    );
    assert!(!logs.contains(almost), "the WARN log keeps {almost:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_echo_of_the_basic_header_the_request_carried_is_removed() {
    // client_secret_basic (the default): the request carried `Basic base64(id:secret)`. A
    // server that echoes the header it rejected hands the secret out, one base64 decode away.
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes());
    let (printed, logs) = echoed(serde_json::json!({
        "error": "invalid_client",
        "error_description": format!("client authentication failed for header 'Basic {basic}'"),
    }))
    .await;

    let decoded = |text: &str| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
            .filter_map(|w| base64::engine::general_purpose::STANDARD.decode(w).ok())
            .any(|bytes| String::from_utf8_lossy(&bytes).contains(CLIENT_SECRET))
    };
    assert!(
        !printed.contains(&basic) && !decoded(&printed),
        "the error keeps the Basic credential {basic}: {printed}"
    );
    assert!(!logs.contains(&basic), "the log keeps the Basic credential");
}

#[tokio::test(flavor = "current_thread")]
async fn a_percent_encoded_echo_of_the_client_secret_is_removed() {
    // Only the raw value and its form-urlencoding (`+` for space, `%2F` for `/`) are
    // recognised. A server that re-encodes what it received (Python's `quote`, Go's
    // `url.PathEscape`, JavaScript's `encodeURI`) echoes neither.
    const SECRET: &str = "MARKER s3cr/et+x";
    let server = TestServer::start().await.unwrap();
    let echoes = [
        "MARKER%20s3cr/et%2Bx",   // Python urllib.parse.quote
        "MARKER%20s3cr%2Fet%2Bx", // RFC 3986, encodeURIComponent
        "MARKER+s3cr%2fet%2bx",   // form-urlencoded, lower-case hex
    ];
    let mut kept = Vec::new();
    for echo in echoes {
        server.push_fault(
            Fault::status(StatusCode::UNAUTHORIZED).json(serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("unknown client secret {echo}"),
            })),
        );
        let provider = OAuthProvider::client_credentials(server.token_url())
            .client_id(CLIENT_ID)
            .client_secret(SECRET)
            .build()
            .unwrap();
        let err = provider.access_token().await.unwrap_err();
        if err.to_string().contains(echo) {
            kept.push(echo);
        }
    }
    assert!(kept.is_empty(), "kept in the error: {kept:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn echoes_in_every_recognised_form_and_place_are_removed() {
    // Held: raw and form-urlencoded echoes, in `error` and `error_description`, split over
    // the two fields, in a URL's userinfo or query, inside JSON escapes.
    let form: String = form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect();
    for answer in [
        serde_json::json!({ "error": format!("bad_{REFRESH_TOKEN}"), "error_description": CLIENT_SECRET }),
        serde_json::json!({ "error": "invalid_grant", "error_description": format!("see https://u:{CLIENT_SECRET}@h/x?rt={REFRESH_TOKEN}") }),
        serde_json::json!({ "error": "invalid_grant", "error_description": format!("client_secret={form}&refresh_token={REFRESH_TOKEN}") }),
        serde_json::json!({ "error": "invalid_grant", "error_description": format!("\u{1}{REFRESH_TOKEN}\u{7f}") }),
    ] {
        let (printed, logs) = echoed(answer).await;
        for secret in [CLIENT_SECRET, REFRESH_TOKEN] {
            assert!(!printed.contains(secret), "{printed}");
            assert!(!logs.contains(secret), "{logs}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Where a loopback token URL really goes ("`http://` needs the same opt-in as adapter
// origins"; the builder exempts loopback hosts because they "never leave the machine")
// ---------------------------------------------------------------------------------------------

/// Set in the child process of the proxy test.
const PROXY_CHILD: &str = "CLIENT_AUTH_ATTACK_PROXY_CHILD";

#[test]
fn a_loopback_token_url_without_allow_http_never_leaves_the_machine_through_a_proxy() {
    // The "proxy": stands for a corporate or cluster egress proxy on another machine.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    std::thread::spawn({
        let seen = Arc::clone(&seen);
        move || {
            if let Ok((mut stream, _)) = proxy.accept() {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut buf = [0_u8; 8192];
                if let Ok(n) = stream.read(&mut buf) {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });

    // The same test binary, running only the child test below, with the proxy in its
    // environment as a deployment would have it (no NO_PROXY).
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "proxy_child_refreshes_once_against_a_loopback_token_url",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(PROXY_CHILD, "1")
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .status()
        .unwrap();
    assert!(status.success(), "the child test failed");

    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let request_line = seen.lines().next().unwrap_or_default().to_owned();
    assert!(
        seen.is_empty(),
        "the proxy received `{request_line}` carrying the refresh token: {}",
        seen.contains(REFRESH_TOKEN)
    );
}

/// The child half of the proxy test: does nothing unless started by it.
#[tokio::test(flavor = "current_thread")]
async fn proxy_child_refreshes_once_against_a_loopback_token_url() {
    if std::env::var_os(PROXY_CHILD).is_none() {
        return;
    }
    // Loopback: accepted without `allow_http`, because such a host "never leaves the machine".
    // Nothing listens on port 9.
    let provider = refresh_builder("http://127.0.0.1:9/oauth/token")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = provider.access_token().await.unwrap_err();
    println!("child: {err}");
}

#[test]
fn the_loopback_exemption_agrees_with_the_url_the_transport_connects_to() {
    // Held: every spelling the builder accepts as plain-http loopback is loopback for reqwest's
    // URL parser too (the transport re-parses the URI), and the look-alikes are refused.
    let build = |url: &str| {
        OAuthProvider::client_credentials(url)
            .client_id("c")
            .build()
            .is_ok()
    };
    let spellings = [
        "http://127.0.0.1@evil.example/t",
        "http://evil.example#@127.0.0.1/t",
        "http://127.0.0.1:80@evil.example/t",
        "http://[::1]@evil.example/t",
        "http://localhost@evil.example/t",
        "http://evil.example\\@127.0.0.1/t",
        "http://127.0.0.1\\@evil.example/t",
        "http://localhost%2eevil.example/t",
        "http://127.0.0.1%00.evil.example/t",
        "http://127.0.0.1.evil/t",
        "http://localhost.evil.example/t",
        "http://0x7f000001/t",
        "http://127.1/t",
        "http://0177.0.0.1/t",
        "http://2130706433/t",
        "http://[::ffff:7f00:1]/t",
        "http://[0:0:0:0:0:0:0:1]/t",
        "http://[::1%25lo]/t",
        "http://LOCALHOST./t",
        "http://localhost../t",
        "http://xn--localhost/t",
        "http://127.0.0.1:8080/t",
        "http://[::1]:8080/t",
        "HTTP://127.0.0.1/t",
        "http:/127.0.0.1/t",
        "http:127.0.0.1/t",
    ];
    for url in spellings {
        if !build(url) {
            continue;
        }
        let parsed = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let host = parsed.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match bare.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(std::net::IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        };
        assert!(
            loopback || parsed.scheme() == "https",
            "{url} was accepted as loopback but connects to {:?}",
            parsed.host_str()
        );
    }
}

#[test]
fn origins_are_printed_without_userinfo_or_query_values() {
    // "Redact userinfo and query values everywhere a URL is printed or
    // logged". An origin pasted with its credentials (`https://user:PASSWORD@…`, `?key=…`) is
    // refused, and the refusal, like the builder's `Debug`, repeats it.
    let mut printed = Vec::new();
    for origin in [
        "https://user:ORIGIN-PASSWORD@api.example.com",
        "https://api.example.com/?api_key=ORIGIN-QUERY-KEY",
    ] {
        let builder = client_auth::OriginPolicy::builder().allow_origin(origin);
        printed.push(format!("{builder:?}"));
        let err = builder.build().unwrap_err();
        printed.push(format!("{err} / {err:?}"));
    }
    let leaks: Vec<&String> = printed
        .iter()
        .filter(|p| p.contains("ORIGIN-PASSWORD") || p.contains("ORIGIN-QUERY-KEY"))
        .collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

// ---------------------------------------------------------------------------------------------
// Header values
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_header_values_are_typed_errors_never_panics_or_smuggled_fields() {
    let invalid = [
        "Bearer\u{0b}x",
        "abc\r\n def", // obs-fold
        "abc\n def",
        "abc\r\nX-Injected: 1",
        "a\0b",
        "a\u{7f}b",
        "\u{0c}",
    ];
    for value in invalid {
        for made in [
            StaticToken::bearer(value),
            StaticToken::api_key(value),
            StaticToken::with_scheme("DPoP", value),
        ] {
            assert!(
                matches!(
                    made,
                    Err(Error::InvalidHeaderValue | Error::EmptyCredential)
                ),
                "{value:?}"
            );
        }
    }
    for blank in ["", " ", "\t", "Bearer", "bearer \t ", "\u{a0}", "\u{2003}"] {
        assert!(
            matches!(StaticToken::bearer(blank), Err(Error::EmptyCredential)),
            "{blank:?}"
        );
    }
    // Large and non-ASCII values are values like any other (the server decides).
    let big = "k".repeat(8 * 1024);
    assert!(StaticToken::bearer(&big).is_ok());
    assert!(StaticToken::bearer("tökén").is_ok());
    let obs_text = HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    assert!(StaticToken::from_header_value(obs_text).is_ok());
    // `Debug` never shows the value.
    let key = StaticToken::api_key("MARKER-KEY").unwrap();
    assert!(!format!("{key:?}").contains("MARKER"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_endpoint_answering_hostile_access_tokens_gets_a_typed_error() {
    let server = TestServer::start().await.unwrap();
    for token in [
        "a\r\nX-Injected: 1",
        "a\u{0b}b",
        "a\u{0}b",
        " \t ",
        "\u{2003}",
    ] {
        server.push_fault(Fault::status(StatusCode::OK).json(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
        })));
        let provider = refresh_builder(server.token_url()).build().unwrap();
        let err = provider.access_token().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidResponse(_) | Error::InvalidHeaderValue | Error::EmptyCredential
            ),
            "{token:?}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// FileStore ("refuses symlinks and directories writable by others")
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
mod file_store {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Instant, SystemTime};

    use client_auth::{FileStore, TokenStore};

    use super::*;

    /// A new directory for one test, with `mode`.
    fn fresh_dir(tag: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "client-auth-attack-{tag}-{}-{:x}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    fn tokens(marker: &str) -> StoredTokens {
        StoredTokens {
            access_token: Some(AccessToken::new(format!("at-{marker}"))),
            refresh_token: Some(RefreshToken::new(format!("rt-{marker}"))),
            expires_at: SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_millis(1_900_000_000_000)),
            scope: None,
            issued_at: None,
            dpop_jkt: None,
        }
    }

    fn write(path: &Path, tokens: &StoredTokens, mode: u32) {
        std::fs::write(path, tokens.to_json().expose_secret()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_token_file_others_can_write_or_another_user_owns_is_refused() {
        // The directory passes (ours, 0700), the file in it does not: anyone can rewrite it
        // with their own session (fixation) until our next save replaces it. The directory
        // rule ("whoever can change it can replace the session") applies to the file as much.
        let dir = fresh_dir("file-mode", 0o700);
        let store = FileStore::new(&dir);
        write(&store.path_for("writable"), &tokens("PLANTED"), 0o666);
        let mut refused = Vec::new();
        if store.load("writable").await.is_err() {
            refused.push("0666");
        }
        if is_root() {
            // Owned by `nobody` (as after `sudo -u nobody` wrote it, or a service account).
            let path = store.path_for("foreign");
            write(&path, &tokens("PLANTED"), 0o600);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            if store.load("foreign").await.is_err() {
                refused.push("owned by uid 65534");
            }
            assert_eq!(refused.len(), 2, "only refused: {refused:?}");
        } else {
            assert_eq!(refused, ["0666"]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_save_over_a_readable_token_file_leaves_a_private_one() {
        // Held, and contrary to the docs' "a token file that already exists keeps its mode":
        // the save writes a new 0600 file and renames it over the old one, so a 0644 file
        // copied in by hand stops being readable by others at the first save.
        let dir = fresh_dir("file-0644", 0o755);
        let store = FileStore::new(&dir);
        let path = store.path_for("a");
        write(&path, &tokens("OLD"), 0o644);
        assert_eq!(store.load("a").await.unwrap(), Some(tokens("OLD")));
        store.save("a", &tokens("NEW")).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_hard_link_to_the_token_file_does_not_receive_new_tokens() {
        // Held: a hard link made to the token file (by whoever could) keeps the old inode; a
        // save replaces the name, it never writes through the link.
        let dir = fresh_dir("hardlink", 0o700);
        let outside = fresh_dir("hardlink-outside", 0o700);
        let store = FileStore::new(&dir);
        store.save("a", &tokens("OLD")).await.unwrap();
        let link = outside.join("copy.json");
        std::fs::hard_link(store.path_for("a"), &link).unwrap();
        store.save("a", &tokens("NEW")).await.unwrap();
        let linked = std::fs::read_to_string(&link).unwrap();
        assert!(
            linked.contains("OLD") && !linked.contains("NEW"),
            "{linked}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_are_only_read_from_the_directory_that_passed_the_check() {
        // The store path is a symbolic link in a world-writable directory (`/tmp/app-tokens`
        // made by whoever came first). The checks follow it ("the checks apply to the directory
        // it resolves to"), then the file is opened through the path again: flipping the link
        // between a private directory of ours and a world-writable one with planted tokens
        // makes the check see the first and the open read the second.
        let parent = fresh_dir("race-parent", 0o1777);
        let good = fresh_dir("race-good", 0o700);
        let evil = fresh_dir("race-evil", 0o777);
        let store_path = parent.join("tokens");
        let store = FileStore::new(&store_path);
        std::os::unix::fs::symlink(&good, &store_path).unwrap();
        store.save("a", &tokens("OURS")).await.unwrap();
        write(&evil.join("a.json"), &tokens("PLANTED"), 0o666);
        // Sanity: pointing at the world-writable directory is refused.
        std::fs::remove_file(&store_path).unwrap();
        std::os::unix::fs::symlink(&evil, &store_path).unwrap();
        assert!(store.load("a").await.is_err());

        let stop = Arc::new(AtomicBool::new(false));
        let flipper = std::thread::spawn({
            let (stop, parent, store_path) =
                (Arc::clone(&stop), parent.clone(), store_path.clone());
            let (good, evil) = (good.clone(), evil.clone());
            move || {
                let tmp = parent.join("tokens.next");
                let mut flips = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    for target in [&good, &evil] {
                        let _ = std::fs::remove_file(&tmp);
                        std::os::unix::fs::symlink(target, &tmp).unwrap();
                        std::fs::rename(&tmp, &store_path).unwrap();
                        flips += 1;
                    }
                }
                flips
            }
        });
        let started = Instant::now();
        let (mut planted, mut loads) = (0, 0);
        while started.elapsed() < Duration::from_secs(5) && loads < 20_000 && planted == 0 {
            loads += 1;
            if let Ok(Some(found)) = store.load("a").await
                && found == tokens("PLANTED")
            {
                planted += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        for dir in [&parent, &good, &evil] {
            std::fs::remove_dir_all(dir).unwrap();
        }
        assert_eq!(
            planted, 0,
            "after {loads} loads and {flips} flips, load returned the planted tokens from the refused directory"
        );
    }
}
