//! Faults served by the token endpoint instead of normal handling.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

/// A canned answer the token endpoint gives instead of handling a request normally.
///
/// Queue one with [`TestServer::push_fault`](crate::TestServer::push_fault) (served to the
/// next token-endpoint request only) or set a persistent one with
/// [`TestServer::set_fault`](crate::TestServer::set_fault).
///
/// ```
/// use std::time::Duration;
/// use client_auth_testkit::Fault;
/// use http::StatusCode;
///
/// let throttled = Fault::oauth_error(StatusCode::TOO_MANY_REQUESTS, "slow_down")
///     .header("retry-after", "2");
/// let slow = Fault::status(StatusCode::OK)
///     .body("{}")
///     .trickle(Duration::from_millis(50));
/// let black_hole = Fault::hang();
/// # let _ = (throttled, slow, black_hole);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fault {
    /// Status code of the answer.
    pub status: StatusCode,
    /// Headers of the answer, in order.
    pub headers: Vec<(String, String)>,
    /// Body of the answer.
    pub body: Bytes,
    /// How long to wait before answering.
    pub delay: Duration,
    /// When set, the body is sent one byte per interval.
    pub trickle: Option<Duration>,
    /// When `true`, the request is accepted and never answered; the connection stays open
    /// until the client closes it or the server is dropped.
    pub hang: bool,
}

impl Fault {
    /// An answer with this status, no headers and an empty body.
    pub fn status(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            trickle: None,
            hang: false,
        }
    }

    /// A request that is accepted and never answered.
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::status(StatusCode::OK)
        }
    }

    /// An RFC 6749 §5.2 error: this status and the JSON body `{"error": code}`.
    pub fn oauth_error(status: StatusCode, code: &str) -> Self {
        Self::status(status).json(serde_json::json!({ "error": code }))
    }

    /// Adds a header to the answer (names or values that are not valid HTTP are skipped).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body of the answer.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json` (replacing any content type).
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        self.headers
            .push(("content-type".to_owned(), "application/json".to_owned()));
        self.body = Bytes::from(value.to_string());
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sends the body one byte per `every` interval.
    pub fn trickle(mut self, every: Duration) -> Self {
        self.trickle = Some(every);
        self
    }
}
