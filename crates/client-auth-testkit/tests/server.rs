//! Behaviour tests against a real loopback socket, with a small hyper client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of an integration test

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use client_auth_testkit::{Fault, ServerConfig, TestServer};
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let uri: Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(uri.path_and_query().unwrap().as_str())
        .header("host", authority.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// A token request with `client_secret_basic` for the server's first client.
async fn token(server: &TestServer, pairs: &[(&str, &str)]) -> Reply {
    let auth = basic(&server.client_id(), &server.client_secret().unwrap());
    send(
        Method::POST,
        &server.token_url(),
        &[FORM, ("authorization", &auth)],
        form(pairs),
    )
    .await
}

async fn refresh(server: &TestServer, refresh_token: &str) -> Reply {
    token(
        server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn get_api(server: &TestServer, path: &str, authorization: Option<&str>) -> Reply {
    let auth;
    let headers: &[(&str, &str)] = match authorization {
        Some(a) => {
            auth = [("authorization", a)];
            &auth
        }
        None => &[],
    };
    send(Method::GET, &server.url(path), headers, Bytes::new()).await
}

async fn bearer(server: &TestServer, token: &str) -> Reply {
    get_api(server, "/api/resource", Some(&format!("Bearer {token}"))).await
}

fn customer_jwt(kid: &str, secret: &[u8], claims: &Value) -> String {
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ----- token endpoint -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_issues_a_token_the_resource_accepts() {
    let server = TestServer::start().await.unwrap();
    let reply = token(
        &server,
        &[("grant_type", "client_credentials"), ("scope", "read")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read");
    assert!(body.get("refresh_token").is_none());
    let access = body["access_token"].as_str().unwrap();
    assert!(access.starts_with("at_"));

    let api = bearer(&server, access).await;
    assert_eq!(api.status, StatusCode::OK);
    let api = api.json();
    assert_eq!(api["ok"], true);
    assert_eq!(api["kind"], "bearer");
    assert_eq!(api["subject"], "test-client");
    assert_eq!(api["path"], "/api/resource");
    assert_eq!(api["method"], "GET");

    let stats = server.stats();
    assert_eq!(stats.token_calls, 1);
    assert_eq!(stats.client_credentials_grants, 1);
    assert_eq!(stats.token_successes, 1);
    assert_eq!(stats.resource_calls.get(&200), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_of_the_old_token_revokes_the_grant() {
    let server = TestServer::start().await.unwrap();
    let issued = server.issue_grant("alice", Some("read write"));

    let first = refresh(&server, &issued.refresh_token).await;
    assert_eq!(first.status, StatusCode::OK);
    let first = first.json();
    let newest_refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let newest_access = first["access_token"].as_str().unwrap().to_owned();
    assert!(newest_refresh.starts_with("rt_"));
    assert_ne!(newest_refresh, issued.refresh_token);
    assert_eq!(first["scope"], "read write");
    assert_eq!(
        bearer(&server, &newest_access).await.json()["subject"],
        "alice"
    );

    // Reuse of the rotated token: invalid_grant, and the whole grant is gone.
    let reuse = refresh(&server, &issued.refresh_token).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.json()["error"], "invalid_grant");

    let with_newest = refresh(&server, &newest_refresh).await;
    assert_eq!(with_newest.status, StatusCode::BAD_REQUEST);
    assert_eq!(with_newest.json()["error"], "invalid_grant");
    assert_eq!(
        bearer(&server, &newest_access).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bearer(&server, &issued.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );

    let stats = server.stats();
    assert_eq!(stats.refresh_grants, 3);
    assert_eq!(stats.token_errors.get("invalid_grant"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rotation_the_refresh_token_is_omitted_and_stays_valid() {
    let server = TestServer::start_with(ServerConfig::default().rotate_refresh_tokens(false))
        .await
        .unwrap();
    let issued = server.issue_grant("bob", None);
    for _ in 0..2 {
        let reply = refresh(&server, &issued.refresh_token).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.json().get("refresh_token").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_a_wider_scope_is_invalid_scope() {
    let server = TestServer::start().await.unwrap();
    let issued = server.issue_grant("alice", Some("read"));
    let reply = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &issued.refresh_token),
            ("scope", "read admin"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_basic_with_characters_that_need_urlencoding_works() {
    let server =
        TestServer::start_with(ServerConfig::default().client("my client:1", Some("s p:a+c/e")))
            .await
            .unwrap();
    let reply = send(
        Method::POST,
        &server.token_url(),
        &[FORM, ("authorization", &basic("my client:1", "s p:a+c/e"))],
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let access = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        bearer(&server, &access).await.json()["subject"],
        "my client:1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_and_public_clients_authenticate_with_form_fields() {
    let server = TestServer::start_with(
        ServerConfig::default()
            .client("confidential", Some("sec"))
            .client("public-app", None),
    )
    .await
    .unwrap();
    let post = send(
        Method::POST,
        &server.token_url(),
        &[FORM],
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "confidential"),
            ("client_secret", "sec"),
        ]),
    )
    .await;
    assert_eq!(post.status, StatusCode::OK);

    // A public client cannot use client_credentials but can refresh its own grant... which
    // issue_grant makes for the first client only, so check the grant-type rule here.
    let public = send(
        Method::POST,
        &server.token_url(),
        &[FORM],
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "public-app"),
        ]),
    )
    .await;
    assert_eq!(public.status, StatusCode::BAD_REQUEST);
    assert_eq!(public.json()["error"], "unauthorized_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_refreshes_with_client_id_only() {
    let server = TestServer::start_with(ServerConfig::default().client("spa", None))
        .await
        .unwrap();
    assert_eq!(server.client_secret(), None);
    let issued = server.issue_grant("carol", None);
    let reply = send(
        Method::POST,
        &server.token_url(),
        &[FORM],
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &issued.refresh_token),
            ("client_id", "spa"),
        ]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_401_invalid_client_with_basic_challenge() {
    let server = TestServer::start().await.unwrap();
    let reply = send(
        Method::POST,
        &server.token_url(),
        &[FORM, ("authorization", &basic("test-client", "wrong"))],
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"token\"")
    );
    assert_eq!(reply.json()["error"], "invalid_client");

    let unknown = send(
        Method::POST,
        &server.token_url(),
        &[FORM],
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
        ]),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.stats().token_errors.get("invalid_client"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_grant_type_and_missing_parameters_are_400() {
    let server = TestServer::start().await.unwrap();
    let unsupported = token(&server, &[("grant_type", "password")]).await;
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert_eq!(unsupported.json()["error"], "unsupported_grant_type");

    let missing = token(&server, &[("grant_type", "refresh_token")]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "invalid_request");

    let no_grant_type = token(&server, &[]).await;
    assert_eq!(no_grant_type.json()["error"], "invalid_request");

    let unknown_refresh = refresh(&server, "rt_nope").await;
    assert_eq!(unknown_refresh.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_second_lifetime_rounds_expires_in_up_and_expires_exactly() {
    let server = TestServer::start_with(
        ServerConfig::default().access_token_lifetime(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    let issued = server.issue_grant("alice", None);
    assert_eq!(issued.expires_in, 2);
    server.advance(Duration::from_millis(1000));
    assert_eq!(
        bearer(&server, &issued.access_token).await.status,
        StatusCode::OK
    );
    server.advance(Duration::from_millis(500));
    assert_eq!(
        bearer(&server, &issued.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );

    server.set_access_token_lifetime(Duration::from_millis(10));
    assert_eq!(server.issue_grant("alice", None).expires_in, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_can_be_left_out() {
    let server = TestServer::start_with(ServerConfig::default().include_expires_in(false))
        .await
        .unwrap();
    let reply = token(&server, &[("grant_type", "client_credentials")]).await;
    assert!(reply.json().get("expires_in").is_none());
}

// ----- faults -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_fault_is_served_once_then_normal_handling_resumes() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(
        Fault::oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            .header("retry-after", "3"),
    );
    let faulted = token(&server, &[("grant_type", "client_credentials")]).await;
    assert_eq!(faulted.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(faulted.header("retry-after"), Some("3"));
    assert_eq!(faulted.header("content-type"), Some("application/json"));
    assert_eq!(faulted.json(), json!({"error": "temporarily_unavailable"}));

    let normal = token(&server, &[("grant_type", "client_credentials")]).await;
    assert_eq!(normal.status, StatusCode::OK);

    let stats = server.stats();
    assert_eq!(stats.token_calls, 2);
    assert_eq!(stats.faults_served, 1);
    assert_eq!(stats.token_successes, 1);
    assert!(stats.token_errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_fault_lasts_until_cleared_and_queued_faults_come_first() {
    let server = TestServer::start().await.unwrap();
    server.set_fault(Some(Fault::status(StatusCode::BAD_GATEWAY)));
    server.push_fault(Fault::status(StatusCode::TOO_MANY_REQUESTS));
    let cc = [("grant_type", "client_credentials")];
    assert_eq!(
        token(&server, &cc).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(token(&server, &cc).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(token(&server, &cc).await.status, StatusCode::BAD_GATEWAY);
    server.set_fault(None);
    assert_eq!(token(&server, &cc).await.status, StatusCode::OK);
    assert_eq!(server.stats().faults_served, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_fault_sends_the_body_one_byte_per_interval() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(
        Fault::status(StatusCode::OK)
            .body("abcd")
            .trickle(Duration::from_millis(30)),
    );
    let started = Instant::now();
    let reply = token(&server, &[("grant_type", "client_credentials")]).await;
    assert_eq!(reply.body, Bytes::from_static(b"abcd"));
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_fault_never_answers_and_dropping_the_server_closes_the_connection() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::hang());
    let url = server.token_url();
    let pending = tokio::spawn(async move {
        let uri: Uri = url.parse().unwrap();
        let stream = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str())
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::post("/token")
            .header("host", "localhost")
            .header(FORM.0, FORM.1)
            .body(Full::new(Bytes::from("grant_type=client_credentials")))
            .unwrap();
        sender.send_request(request).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "a hanging fault must not answer");
    assert_eq!(server.stats().faults_served, 1);
    drop(server);
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("connection closed when the server is dropped")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_token_requests_overlap_and_the_gauge_sees_it() {
    let server =
        TestServer::start_with(ServerConfig::default().token_delay(Duration::from_millis(200)))
            .await
            .unwrap();
    let cc = [("grant_type", "client_credentials")];
    let (a, b) = tokio::join!(token(&server, &cc), token(&server, &cc));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(server.stats().max_concurrent_token_requests, 2);

    server.reset_stats();
    token(&server, &cc).await;
    token(&server, &cc).await;
    let stats = server.stats();
    assert_eq!(stats.max_concurrent_token_requests, 1);
    assert_eq!(stats.token_calls, 2);
}

// ----- protected resource -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_after_advance_is_401_with_invalid_token_challenge() {
    let server = TestServer::start().await.unwrap();
    let issued = server.issue_grant("alice", None);
    assert_eq!(
        bearer(&server, &issued.access_token).await.status,
        StatusCode::OK
    );
    server.advance(Duration::from_secs(3600));
    let reply = bearer(&server, &issued.access_token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // The grant itself is still alive.
    assert_eq!(
        refresh(&server, &issued.refresh_token).await.status,
        StatusCode::OK
    );
    assert_eq!(server.stats().resource_calls.get(&401), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_authorization_gets_a_bare_bearer_challenge() {
    let server = TestServer::start().await.unwrap();
    let reply = get_api(&server, "/api/resource", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_grants_and_reject_all_are_401() {
    let server = TestServer::start().await.unwrap();
    let one = server.issue_grant("a", None);
    let two = server.issue_grant("b", None);
    let three = server.issue_grant("c", None);

    server.revoke_access_token(&one.access_token);
    assert_eq!(
        bearer(&server, &one.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&server, &one.refresh_token).await.status,
        StatusCode::OK
    );

    server.revoke_grant(&two.refresh_token);
    assert_eq!(
        bearer(&server, &two.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&server, &two.refresh_token).await.json()["error"],
        "invalid_grant"
    );

    server.reject_all_tokens(true);
    assert_eq!(
        bearer(&server, &three.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    server.reject_all_tokens(false);
    assert_eq!(
        bearer(&server, &three.access_token).await.status,
        StatusCode::OK
    );

    server.revoke_all_access_tokens();
    assert_eq!(
        bearer(&server, &three.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    server.revoke_all_grants();
    assert_eq!(
        refresh(&server, &three.refresh_token).await.json()["error"],
        "invalid_grant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_endpoint_revokes_a_grant_and_always_answers_200() {
    let server = TestServer::start().await.unwrap();
    let issued = server.issue_grant("alice", None);
    let auth = basic("test-client", "test-secret");
    let revoke = |token: String| {
        let url = server.revocation_url();
        let auth = auth.clone();
        async move {
            send(
                Method::POST,
                &url,
                &[FORM, ("authorization", &auth)],
                form(&[("token", &token), ("token_type_hint", "refresh_token")]),
            )
            .await
        }
    };
    assert_eq!(
        revoke(issued.refresh_token.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(revoke("rt_unknown".to_owned()).await.status, StatusCode::OK);
    assert_eq!(
        bearer(&server, &issued.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&server, &issued.refresh_token).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(server.stats().revocations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_accepted_as_token_scheme() {
    let server = TestServer::start_with(ServerConfig::default().api_key("KEY-1"))
        .await
        .unwrap();
    let ok = get_api(&server, "/api/things", Some("Token KEY-1")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["kind"], "api_key");
    let wrong = get_api(&server, "/api/things", Some("Token KEY-2")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_jwt_is_verified_by_kid_signature_and_exp() {
    let server =
        TestServer::start_with(ServerConfig::default().customer_key("kid-1", b"hmac-secret"))
            .await
            .unwrap();
    let sub = json!({"customer_id": "c-42"});

    let good = customer_jwt(
        "kid-1",
        b"hmac-secret",
        &json!({"sub": sub, "exp": unix_now() + 60}),
    );
    let reply = bearer(&server, &good).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["kind"], "customer_jwt");
    assert_eq!(reply.json()["subject"], sub);

    let no_exp = customer_jwt("kid-1", b"hmac-secret", &json!({"sub": "x"}));
    assert_eq!(bearer(&server, &no_exp).await.status, StatusCode::OK);

    let wrong_kid = customer_jwt("kid-2", b"hmac-secret", &json!({"sub": "x"}));
    assert_eq!(
        bearer(&server, &wrong_kid).await.status,
        StatusCode::UNAUTHORIZED
    );

    let wrong_key = customer_jwt("kid-1", b"other", &json!({"sub": "x"}));
    assert_eq!(
        bearer(&server, &wrong_key).await.status,
        StatusCode::UNAUTHORIZED
    );

    let expired = customer_jwt(
        "kid-1",
        b"hmac-secret",
        &json!({"sub": "x", "exp": unix_now() - 1}),
    );
    let reply = bearer(&server, &expired).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );

    // exp is checked against the server clock.
    server.advance(Duration::from_secs(120));
    assert_eq!(
        bearer(&server, &good).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_paths_forbidden_scope_and_echo() {
    let server = TestServer::start().await.unwrap();
    let auth = format!("Bearer {}", server.issue_grant("alice", None).access_token);

    assert_eq!(
        get_api(&server, "/api/forbidden", Some(&auth)).await.status,
        StatusCode::FORBIDDEN
    );
    let scope = get_api(&server, "/api/scope", Some(&auth)).await;
    assert_eq!(scope.status, StatusCode::FORBIDDEN);
    assert_eq!(
        scope.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\"")
    );

    let echo = send(
        Method::PUT,
        &server.url("/api/echo?x=1"),
        &[("authorization", &auth)],
        "payload that must survive",
    )
    .await;
    assert_eq!(echo.status, StatusCode::OK);
    let echo = echo.json();
    assert_eq!(echo["body"], "payload that must survive");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/api/echo");

    let seen = server.seen_requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].method, "PUT");
    assert_eq!(seen[2].path_and_query, "/api/echo?x=1");
    assert_eq!(seen[2].authorization.as_deref(), Some(auth.as_str()));
    assert_eq!(seen[2].host, Some(server.addr().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_endpoint_answers_location_and_is_recorded() {
    let server = TestServer::start().await.unwrap();
    let target = server.resource_url();
    let query = form(&[("to", &target)]);
    let reply = get_api(&server, &format!("/redirect?{query}"), None).await;
    assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(reply.header("location"), Some(target.as_str()));

    let query = form(&[("to", "http://other.invalid/x"), ("status", "302")]);
    let reply = get_api(&server, &format!("/redirect?{query}"), Some("Bearer abc")).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.header("location"), Some("http://other.invalid/x"));

    let seen = server.seen_requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].path_and_query.starts_with("/redirect?"));
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer abc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_serves_many_requests() {
    let server = TestServer::start().await.unwrap();
    let access = server.issue_grant("alice", None).access_token;
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let request = Request::get("/api/resource")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {access}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(server.stats().resource_calls.get(&200), Some(&20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_are_served() {
    let server = std::sync::Arc::new(TestServer::start().await.unwrap());
    let access = server.issue_grant("alice", None).access_token;
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let server = server.clone();
            let access = access.clone();
            tokio::spawn(async move { bearer(&server, &access).await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(server.stats().resource_calls.get(&200), Some(&500));
}

// ----- tokens per resource, answer shapes, claims challenges, assertion grants -----

/// A token request by a client with no credentials of the first client (public, assertion).
async fn token_as(server: &TestServer, pairs: &[(&str, &str)]) -> Reply {
    send(Method::POST, &server.token_url(), &[FORM], form(pairs)).await
}

fn access_token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_routes_accept_only_tokens_issued_for_their_resource() {
    let server = TestServer::start_with(
        ServerConfig::default().resource_routes(client_auth_testkit::ResourceBinding::Resource),
    )
    .await
    .unwrap();
    let a = server.resource_indicator("a");
    assert_eq!(a, format!("{}/r/a", server.base_url()));
    let for_a = access_token_of(
        &token(
            &server,
            &[("grant_type", "client_credentials"), ("resource", &a)],
        )
        .await,
    );
    let for_nothing =
        access_token_of(&token(&server, &[("grant_type", "client_credentials")]).await);
    let bearer_a = format!("Bearer {for_a}");

    let ok = get_api(&server, "/api/r/a/items?x=1", Some(&bearer_a)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["resource"], a.as_str());
    for (path, auth) in [
        ("/api/r/b", bearer_a.clone()),
        ("/api/r/", bearer_a.clone()),
        ("/api/r/a", format!("Bearer {for_nothing}")),
    ] {
        let refused = get_api(&server, path, Some(&auth)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            refused
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{path}"
        );
    }
    // Other routes take a token for any resource, as before.
    assert_eq!(bearer(&server, &for_a).await.status, StatusCode::OK);

    let stats = server.stats();
    assert_eq!(stats.resource_mismatches, 3);
    assert_eq!(stats.token_calls_by_resource.get(&a), Some(&1));
    assert_eq!(stats.token_calls_by_resource.len(), 1);

    // An unusable resource indicator is invalid_target.
    for bad in [
        "not a uri",
        "/r/a",
        "ftp://x/r/a",
        "http:///r/a",
        "http://h/r/a#frag",
    ] {
        let reply = token(
            &server,
            &[("grant_type", "client_credentials"), ("resource", bad)],
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json()["error"], "invalid_target", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_routes_and_the_resource_parameter_without_routes() {
    let server = TestServer::start_with(
        ServerConfig::default().resource_routes(client_auth_testkit::ResourceBinding::Audience),
    )
    .await
    .unwrap();
    let orders = access_token_of(
        &token(
            &server,
            &[("grant_type", "client_credentials"), ("audience", "orders")],
        )
        .await,
    );
    let auth = format!("Bearer {orders}");
    assert_eq!(
        get_api(&server, "/api/r/orders", Some(&auth)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_api(&server, "/api/r/billing", Some(&auth)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.stats().token_calls_by_audience.get("orders"),
        Some(&1)
    );

    // Without resource routes: `/api/r/*` is a plain route and any resource text is kept.
    let plain = TestServer::start().await.unwrap();
    let token = access_token_of(
        &token(
            &plain,
            &[
                ("grant_type", "client_credentials"),
                ("resource", "anything"),
            ],
        )
        .await,
    );
    let reply = get_api(&plain, "/api/r/b", Some(&format!("Bearer {token}"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["resource"], "anything");
    assert_eq!(plain.stats().resource_mismatches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nested_answer_shape_wraps_the_tokens_with_expires_at_and_no_token_type() {
    let server = TestServer::start_with(
        ServerConfig::default()
            .answer_shape(client_auth_testkit::AnswerShape::Nested)
            .access_token_lifetime(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    server.advance(Duration::from_secs(1000));
    let before = unix_now() + 1000;
    let reply = token(&server, &[("grant_type", "client_credentials")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let data = &body["data"];
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert!(data.get("token_type").is_none());
    assert!(data.get("expires_in").is_none());
    let expires_at = data["expires_at"].as_u64().unwrap();
    assert!(
        (before + 600..=before + 602).contains(&expires_at),
        "{expires_at} on the server's clock"
    );
    let access = data["access_token"].as_str().unwrap();
    assert_eq!(bearer(&server, access).await.status, StatusCode::OK);

    // Refresh tokens are nested too; errors keep the standard shape.
    let issued = server.issue_grant("alice", None);
    let refreshed = refresh(&server, &issued.refresh_token).await.json();
    assert!(refreshed["data"]["refresh_token"].is_string());
    let error = refresh(&server, "rt_unknown").await;
    assert_eq!(error.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_route_challenges_tokens_asked_without_its_claims() {
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    let server = TestServer::start_with(ServerConfig::default().claims_challenge(claims))
        .await
        .unwrap();
    let plain = access_token_of(&token(&server, &[("grant_type", "client_credentials")]).await);
    let challenged = get_api(&server, "/api/claims", Some(&format!("Bearer {plain}"))).await;
    assert_eq!(challenged.status, StatusCode::UNAUTHORIZED);
    let challenge = challenged.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"error="insufficient_claims""#),
        "{challenge}"
    );
    let encoded = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    assert_eq!(STANDARD.decode(encoded).unwrap(), claims.as_bytes());
    // Other routes do not care.
    assert_eq!(bearer(&server, &plain).await.status, StatusCode::OK);

    // The same claims, spaced differently, are the same JSON.
    let spaced = r#"{ "access_token": { "nbf": { "value": "1726077595", "essential": true } } }"#;
    let with_claims = access_token_of(
        &token(
            &server,
            &[("grant_type", "client_credentials"), ("claims", spaced)],
        )
        .await,
    );
    let ok = get_api(
        &server,
        "/api/claims",
        Some(&format!("Bearer {with_claims}")),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let other = access_token_of(
        &token(
            &server,
            &[("grant_type", "client_credentials"), ("claims", "{}")],
        )
        .await,
    );
    let refused = get_api(&server, "/api/claims", Some(&format!("Bearer {other}"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let stats = server.stats();
    assert_eq!(stats.claims_challenges, 2);
    assert_eq!(stats.claims_token_requests, 2);
    assert_eq!(server.token_requests()[1].param("claims"), Some(spaced));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_grant_takes_only_accepted_assertions() {
    let jwt_bearer = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    // Without an accepted assertion the grant is not supported, as before.
    let plain = TestServer::start().await.unwrap();
    let reply = token(&plain, &[("grant_type", jwt_bearer), ("assertion", "x")]).await;
    assert_eq!(reply.json()["error"], "unsupported_grant_type");

    let server = TestServer::start_with(
        ServerConfig::default()
            .client("workload", None)
            .accept_assertion("assertion-one")
            .accept_assertion("assertion-two")
            .echo_rejected_assertions(true),
    )
    .await
    .unwrap();
    let grant = |assertion: &'static str| {
        [
            ("grant_type", jwt_bearer),
            ("assertion", assertion),
            ("client_id", "workload"),
        ]
    };
    for assertion in ["assertion-one", "assertion-two"] {
        let reply = token_as(&server, &grant(assertion)).await;
        let access = access_token_of(&reply);
        assert!(reply.json().get("refresh_token").is_none());
        assert_eq!(bearer(&server, &access).await.json()["subject"], "workload");
    }
    let wrong = token_as(&server, &grant("WRONG-assertion")).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    assert!(
        wrong.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("WRONG-assertion"),
        "echoed when asked to"
    );
    let missing = token_as(
        &server,
        &[("grant_type", jwt_bearer), ("client_id", "workload")],
    )
    .await;
    assert_eq!(missing.json()["error"], "invalid_request");

    let stats = server.stats();
    assert_eq!(stats.jwt_bearer_grants, 4);
    assert_eq!(stats.token_successes, 2);
    let seen = server.token_requests();
    assert_eq!(seen[1].param("assertion"), Some("assertion-two"));
    assert!(
        !format!("{seen:?}").contains("assertion-two"),
        "Debug hides it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_trades_an_accepted_subject_token() {
    let exchange = "urn:ietf:params:oauth:grant-type:token-exchange";
    let jwt_type = "urn:ietf:params:oauth:token-type:jwt";
    let server = TestServer::start_with(ServerConfig::default().accept_subject_token("subject-1"))
        .await
        .unwrap();
    let reply = token(
        &server,
        &[
            ("grant_type", exchange),
            ("subject_token", "subject-1"),
            ("subject_token_type", jwt_type),
            ("audience", "orders"),
        ],
    )
    .await;
    let access = access_token_of(&reply);
    assert_eq!(
        reply.json()["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(bearer(&server, &access).await.json()["audience"], "orders");

    let wrong = token(
        &server,
        &[
            ("grant_type", exchange),
            ("subject_token", "subject-2"),
            ("subject_token_type", jwt_type),
        ],
    )
    .await;
    assert_eq!(wrong.json()["error"], "invalid_grant");
    assert!(
        !wrong.body.windows(9).any(|w| w == b"subject-2"),
        "not echoed by default"
    );
    let no_type = token(
        &server,
        &[("grant_type", exchange), ("subject_token", "subject-1")],
    )
    .await;
    assert_eq!(no_type.json()["error"], "invalid_request");
    assert_eq!(server.stats().token_exchange_grants, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_authenticates_its_client_and_nothing_else_does() {
    let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let server = TestServer::start_with(
        ServerConfig::default().accept_client_assertion("federated", "workload-identity"),
    )
    .await
    .unwrap();
    let with = |assertion: &'static str, kind: &'static str, id: &'static str| {
        [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", kind),
            ("client_assertion", assertion),
            ("client_id", id),
        ]
    };
    let ok = token_as(
        &server,
        &with("workload-identity", assertion_type, "federated"),
    )
    .await;
    let access = access_token_of(&ok);
    assert_eq!(
        bearer(&server, &access).await.json()["subject"],
        "federated"
    );

    for (pairs, why) in [
        (
            with("other", assertion_type, "federated"),
            "wrong assertion",
        ),
        (
            with("workload-identity", assertion_type, "test-client"),
            "another client's id",
        ),
        (
            with("workload-identity", "urn:other", "federated"),
            "another type",
        ),
    ] {
        let reply = token_as(&server, &pairs).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(reply.json()["error"], "invalid_client", "{why}");
    }
    // With a secret besides: two methods at once.
    let auth = basic("test-client", "test-secret");
    let both = send(
        Method::POST,
        &server.token_url(),
        &[FORM, ("authorization", &auth)],
        form(&with("workload-identity", assertion_type, "federated")),
    )
    .await;
    assert_eq!(both.json()["error"], "invalid_request");
    // Secrets still work for the registered client.
    let by_secret = token(&server, &[("grant_type", "client_credentials")]).await;
    assert_eq!(by_secret.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_recorded_with_faults_and_forgotten_on_reset() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    token(
        &server,
        &[("grant_type", "client_credentials"), ("scope", "a")],
    )
    .await;
    send(Method::POST, &server.token_url(), &[], "not a form").await;
    let seen = server.token_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].param("scope"), Some("a"));
    assert!(
        seen[0]
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    assert!(seen[1].params.is_empty());
    let shown = format!("{:?}", seen[0]);
    assert!(!shown.contains("Basic"), "{shown}");
    server.reset_stats();
    assert!(server.token_requests().is_empty());
}
