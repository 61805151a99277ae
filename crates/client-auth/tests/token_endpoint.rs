//! Where token-endpoint requests may go and what is printed about them: redirects are never
//! followed whatever client is configured, `http://` needs an opt-in off loopback, URLs are
//! printed without userinfo or query values, and text from the server or the transport loses
//! the secrets the request carried before it reaches an error or a log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{
    Error, OAuthProvider, OAuthProviderBuilder, ReqwestTransport, TokenTransport, TransportError,
    TransportErrorKind,
};
use client_auth_testkit::{Fault, TestServer};
use http::StatusCode;

const CLIENT_SECRET: &str = "MARKER-CLIENT-SECRET-5e2a";
const REFRESH_TOKEN: &str = "MARKER-REFRESH-TOKEN-c07b";

fn refresh_builder(token_url: impl Into<String>) -> OAuthProviderBuilder {
    OAuthProvider::refresh_token_grant(token_url)
        .client_id("marker-client")
        .client_secret(CLIENT_SECRET)
        .refresh_token(REFRESH_TOKEN)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
}

/// Every way the API lets a user configure the reqwest transport.
fn reqwest_configurations() -> Vec<(&'static str, Option<ReqwestTransport>)> {
    use reqwest::redirect::Policy;
    let from = |builder: reqwest::ClientBuilder| {
        Some(ReqwestTransport::from_client_builder(builder).unwrap())
    };
    vec![
        ("the builder's default transport", None),
        (
            "ReqwestTransport::new",
            Some(ReqwestTransport::new().unwrap()),
        ),
        ("a default ClientBuilder", from(reqwest::Client::builder())),
        (
            "a ClientBuilder following 10 redirects",
            from(reqwest::Client::builder().redirect(Policy::limited(10))),
        ),
        (
            "a ClientBuilder with a custom policy that follows everything",
            from(reqwest::Client::builder().redirect(Policy::custom(|attempt| attempt.follow()))),
        ),
    ]
}

#[tokio::test]
async fn token_endpoint_redirects_never_reach_the_target_with_any_reqwest_configuration() {
    let endpoint = TestServer::start().await.unwrap();
    let target = TestServer::start().await.unwrap();
    for status in [301, 302, 303, 307, 308] {
        let status = StatusCode::from_u16(status).unwrap();
        for (what, transport) in reqwest_configurations() {
            endpoint.push_fault(Fault::status(status).header("location", target.token_url()));
            let builder = refresh_builder(endpoint.token_url());
            let provider = match transport {
                Some(transport) => builder.transport(Arc::new(transport)).build(),
                None => builder.build(),
            }
            .unwrap();

            let err = provider.access_token().await.unwrap_err();

            assert!(
                matches!(err, Error::Redirect { status: s } if s == status),
                "{status} with {what}: {err:?}"
            );
            assert_eq!(target.stats().token_calls, 0, "{status} with {what}");
            assert!(target.seen_requests().is_empty(), "{status} with {what}");
        }
    }
    assert_eq!(endpoint.stats().faults_served, 25);
}

#[tokio::test]
async fn revocation_redirects_never_reach_the_target() {
    // The testkit serves faults on its token path: used here as the revocation endpoint.
    let endpoint = TestServer::start().await.unwrap();
    let target = TestServer::start().await.unwrap();
    for status in [302, 307, 308] {
        let status = StatusCode::from_u16(status).unwrap();
        for (what, transport) in reqwest_configurations() {
            endpoint.push_fault(Fault::status(status).header("location", target.token_url()));
            let builder = refresh_builder(target.token_url()).revocation_url(endpoint.token_url());
            let provider = match transport {
                Some(transport) => builder.transport(Arc::new(transport)).build(),
                None => builder.build(),
            }
            .unwrap();

            let err = provider.logout().await.unwrap_err();

            assert!(
                matches!(err, Error::Redirect { .. }),
                "{status} with {what}: {err:?}"
            );
            assert_eq!(target.stats().token_calls, 0, "{status} with {what}");
            assert_eq!(target.stats().revocations, 0, "{status} with {what}");
        }
    }
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn tower_transport_turns_a_redirect_into_an_error_after_one_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use client_auth::TowerTransport;

    /// A service that answers every request with a 307 and counts the calls.
    #[derive(Clone, Default)]
    struct Redirecting(Arc<AtomicUsize>);

    impl tower_service::Service<http::Request<Bytes>> for Redirecting {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Bytes>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            let response = http::Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", "https://elsewhere.example.com/token")
                .body(String::new())
                .unwrap();
            std::future::ready(Ok(response))
        }
    }

    let service = Redirecting::default();
    let provider = refresh_builder("https://auth.example.com/token")
        .transport(Arc::new(TowerTransport::<_, Bytes>::new(service.clone())))
        .build()
        .unwrap();

    let err = provider.access_token().await.unwrap_err();

    assert!(
        matches!(err, Error::Redirect { status } if status == StatusCode::TEMPORARY_REDIRECT),
        "{err:?}"
    );
    assert_eq!(service.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plain_http_token_and_revocation_urls_need_allow_http_off_loopback() {
    let build = |b: OAuthProviderBuilder| b.client_id("c").build();
    for url in [
        "http://auth.example.com/token",
        "http://localhost.example.com/token",
        "http://127.0.0.1.nip.io/token",
        "http://0.0.0.0:8080/token",
        "http://[::2]/token",
        "http://10.0.0.1/token",
    ] {
        let err = build(OAuthProvider::client_credentials(url)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{url}: {err:?}");
        assert!(err.to_string().contains("allow_http"), "{url}: {err}");
        assert!(
            build(OAuthProvider::client_credentials(url).allow_http(true)).is_ok(),
            "{url}"
        );
        let err = build(
            OAuthProvider::client_credentials("https://auth.example.com/token").revocation_url(url),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "revocation {url}: {err:?}");
        assert!(
            build(
                OAuthProvider::client_credentials("https://auth.example.com/token")
                    .revocation_url(url)
                    .allow_http(true)
            )
            .is_ok(),
            "revocation {url}"
        );
    }
    for url in [
        "https://auth.example.com/token",
        "http://127.0.0.1:8080/token",
        "http://127.3.2.1/token",
        "http://[::1]:8080/token",
        "http://[::ffff:127.0.0.1]/token",
        "http://localhost:8080/token",
        "http://LocalHost./token",
    ] {
        assert!(
            build(OAuthProvider::client_credentials(url)).is_ok(),
            "{url}"
        );
        assert!(
            build(
                OAuthProvider::client_credentials("https://auth.example.com/token")
                    .revocation_url(url)
            )
            .is_ok(),
            "revocation {url}"
        );
    }
}

#[tokio::test]
async fn debug_output_shows_no_url_userinfo_or_query_values() {
    let token_url = "https://user:URL-PASSWORD@auth.example.com/oauth/token?tenant=QUERY-VALUE";
    let revocation_url = "https://rev:REV-PASSWORD@auth.example.com/oauth/revoke?key=REV-QUERY";
    let builder = refresh_builder(token_url).revocation_url(revocation_url);
    let printed_builder = format!("{builder:?}");
    let provider = builder.build().unwrap();
    let printed_provider = format!("{provider:?}");

    for printed in [&printed_builder, &printed_provider] {
        for secret in [
            "URL-PASSWORD",
            "QUERY-VALUE",
            "REV-PASSWORD",
            "REV-QUERY",
            "user:",
            "rev:",
            CLIENT_SECRET,
            REFRESH_TOKEN,
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("https://[redacted]@auth.example.com/oauth/token?tenant=[redacted]"),
            "{printed}"
        );
        assert!(
            printed.contains("auth.example.com/oauth/revoke?key=[redacted]"),
            "{printed}"
        );
    }

    // A URL that does not parse is redacted too.
    let unparsed = format!(
        "{:?}",
        refresh_builder("user:BAD-PASSWORD@auth example/token")
    );
    assert!(!unparsed.contains("BAD-PASSWORD"), "{unparsed}");
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
    /// Captures this thread's events; the tests run on a current-thread runtime, so the
    /// refresh tasks they spawn are captured too.
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

fn assert_clean(what: &str, printed: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !printed.contains(secret),
            "{what} holds {secret}: {printed}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_echoing_the_client_secret_and_refresh_token_reaches_no_error_debug_or_log() {
    let captured = Captured::default();
    let _guard = captured.install();
    let server = TestServer::start().await.unwrap();
    let echo = format!("client_secret={CLIENT_SECRET} refresh_token={REFRESH_TOKEN}");
    let answers = [
        // A configuration error (`Rejected`), the echo in both fields.
        serde_json::json!({ "error": format!("invalid_request {echo}"), "error_description": echo }),
        // A session-ending error (`SessionEnded`, logged at WARN), the echo in the description.
        serde_json::json!({ "error": "invalid_grant", "error_description": echo }),
    ];
    for answer in answers {
        server.push_fault(Fault::status(StatusCode::BAD_REQUEST).json(answer));
        let provider = refresh_builder(server.token_url()).build().unwrap();

        let err = provider.access_token().await.unwrap_err();

        assert!(err.oauth_error().is_some(), "{err:?}");
        assert!(err.to_string().contains("[redacted]"), "{err}");
        assert_clean("Display", &err.to_string(), &[CLIENT_SECRET, REFRESH_TOKEN]);
        assert_clean(
            "Debug",
            &format!("{err:?} {provider:?}"),
            &[CLIENT_SECRET, REFRESH_TOKEN],
        );
    }
    let logs = captured.text();
    assert!(
        logs.contains("client_auth.refresh"),
        "the refresh was captured: {logs}"
    );
    assert!(
        logs.contains("the session ended"),
        "the WARN was captured: {logs}"
    );
    assert_clean("the TRACE log", &logs, &[CLIENT_SECRET, REFRESH_TOKEN]);
}

/// A transport whose errors repeat everything the request carried: its URL (with userinfo and
/// a query) and its body (the refresh token or the token being revoked, and the secret).
#[derive(Debug)]
struct Echoing;

impl TokenTransport for Echoing {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        let body = String::from_utf8_lossy(request.body()).into_owned();
        let echo = format!(
            "POST {} failed; body {body}; decoded {}; secret {CLIENT_SECRET}",
            request.uri(),
            form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionReset, echo);
        Box::pin(async move {
            Err(Error::Transport(TransportError::new(
                TransportErrorKind::Other,
                Box::new(inner) as Box<dyn std::error::Error + Send + Sync>,
            )))
        })
    }
}

#[tokio::test(flavor = "current_thread")]
async fn transport_error_text_loses_the_request_secrets_and_url_userinfo_and_query() {
    let captured = Captured::default();
    let _guard = captured.install();
    let token_url = "https://user:URL-PASSWORD@auth.example.com/token?tenant=QUERY-VALUE";
    let provider = refresh_builder(token_url)
        .revocation_url("https://auth.example.com/revoke?key=REV-QUERY")
        .transport(Arc::new(Echoing))
        .build()
        .unwrap();
    let secrets = [
        CLIENT_SECRET,
        REFRESH_TOKEN,
        "URL-PASSWORD",
        "QUERY-VALUE",
        "REV-QUERY",
    ];

    let refresh = provider.access_token().await.unwrap_err();
    let logout = provider.logout().await.unwrap_err();

    for err in [&refresh, &logout] {
        let Error::Transport(transport) = err else {
            panic!("{err:?}");
        };
        assert_eq!(transport.kind(), TransportErrorKind::Other);
        assert!(err.is_transient());
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(transport);
        while let Some(e) = source {
            chain.push_str(&format!(" / {e} / {e:?}"));
            source = e.source();
        }
        assert!(chain.contains("[redacted]"), "{chain}");
        assert!(
            chain.contains("auth.example.com"),
            "the rest of the text is kept: {chain}"
        );
        assert_clean("the error chain", &chain, &secrets);
        assert_clean("Debug", &format!("{err:?}"), &secrets);
    }
    assert_clean("the TRACE log", &captured.text(), &secrets);
}
