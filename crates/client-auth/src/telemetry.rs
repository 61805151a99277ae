//! Spans after the OpenTelemetry HTTP client conventions, for the requests the OAuth provider
//! sends itself (token and revocation endpoints). Listed with the metrics in [`crate::metrics`].

use bytes::Bytes;
use tracing::Span;
use tracing::field::{Empty, display};

use crate::error::{Error, TransportErrorKind};
use crate::redact;

/// An INFO client span for `request`, a child of the current span (a refresh's). The URL is
/// recorded without userinfo or query values, and only when the span is enabled.
pub(crate) fn client_span(request: &http::Request<Bytes>) -> Span {
    let uri = request.uri();
    let method = request.method().as_str();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let span = tracing::info_span!(
        "client_auth.token_request",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        server.address = uri.host().unwrap_or_default(),
        server.port = port,
        url.full = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record("url.full", display(redact::Url(&uri.to_string())));
    }
    span
}

/// Records how the request of `span` ended: the status code, and for a 4xx, a 5xx or a failure
/// to get an answer, `error.type` (the status code, or the transport failure's class).
pub(crate) fn record_response(span: &Span, result: &Result<http::Response<Bytes>, Error>) {
    match result {
        Ok(response) => {
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("error.type", status.as_str());
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(error) => {
            span.record("error.type", error_type(error));
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// A low-cardinality class of a failure to get an answer.
fn error_type(error: &Error) -> &'static str {
    match error {
        Error::Transport(e) => match e.kind() {
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Connect => "connect",
            _ => "transport",
        },
        Error::NoRuntime => "no_runtime",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::TransportError;

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

    fn spans(run: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_url_is_recorded_without_userinfo_or_query_values() {
        let logs = spans(|| {
            let request = http::Request::post(
                "https://client:MARKER-PASSWORD@auth.example.com/oauth/token?key=MARKER-KEY",
            )
            .body(Bytes::new())
            .unwrap();
            let span = client_span(&request);
            record_response(&span, &Err(Error::Transport(TransportError::timeout())));
        });
        for field in [
            "url.full=https://[redacted]@auth.example.com/oauth/token?key=[redacted]",
            "server.address=\"auth.example.com\"",
            "server.port=443",
            "http.request.method=\"POST\"",
            "error.type=\"timeout\"",
            "otel.status_code=\"ERROR\"",
        ] {
            assert!(logs.contains(field), "{field} in {logs}");
        }
        assert!(!logs.contains("MARKER"), "{logs}");
    }

    #[test]
    fn an_answer_records_its_status_and_an_error_status_its_type() {
        let logs = spans(|| {
            let request = http::Request::post("http://127.0.0.1:8080/token")
                .body(Bytes::new())
                .unwrap();
            let span = client_span(&request);
            let answer = http::Response::builder()
                .status(400)
                .body(Bytes::new())
                .unwrap();
            record_response(&span, &Ok(answer));
        });
        assert!(logs.contains("server.port=8080"), "{logs}");
        assert!(logs.contains("http.response.status_code=400"), "{logs}");
        assert!(logs.contains("error.type=\"400\""), "{logs}");
    }
}
