//! Metrics: what `client-auth` counts and times, through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`, off by default).
//!
//! Install any `metrics` recorder (a Prometheus exporter, an OpenTelemetry bridge, statsd) in
//! your application; with feature `metrics` on, the providers, both adapters (their feature
//! `metrics`) and the stores (`RedisStore`'s feature `metrics`, and `FileStore`) record into it.
//! Optionally call [`describe`] once after installing it, so that the exporter has each
//! metric's unit and help text. `cargo run -p client-auth-example-metrics --example metrics` prints a Prometheus scrape of the
//! quickstart's scenario.
//!
//! | metric | type | labels | recorded when |
//! |---|---|---|---|
//! | `client_auth_token_requests_total` | counter | `provider`, `grant`, `outcome` | a refresh asked the token endpoint for tokens: one per exchange, a DPoP nonce retry inside it included, and one whose assertion could not be read before sending (outcome `configuration`); a refresh that adopted another process's tokens from a shared store asks nothing |
//! | `client_auth_token_request_duration_seconds` | histogram | `provider`, `grant`, `outcome` | the same, its latency: from the request to the parsed answer |
//! | `client_auth_refresh_waits_total` | counter | `provider`, `grant` | a request (or `access_token()`) had no usable token and waited for the refresh in flight |
//! | `client_auth_refresh_wait_seconds` | histogram | `provider`, `grant` | the same, how long it waited |
//! | `client_auth_sessions_ended_total` | counter | `provider`, `grant`, `reason` | the session state became `NoSession`, or its reason changed |
//! | `client_auth_unauthorized_total` | counter | `provider` | an adapter got a 401 to a request it stamped (the first send or the retry) |
//! | `client_auth_retries_total` | counter | `provider` | an adapter sent a request again after a 401, with a new credential |
//! | `client_auth_retries_skipped_total` | counter | `provider`, `reason` | an adapter returned a 401 (or the provider's error) without sending the request again |
//! | `client_auth_retries_declined_total` | counter | `provider`, `grant`, `reason` | the OAuth provider answered a 401 with "give up" (`reason="declined"` above), and why |
//! | `client_auth_store_lease_wait_seconds` | histogram | `store`, `outcome` | a refresh asked a shared store (`FileStore`, `RedisStore`) for its refresh lease, and how long it waited |
//! | `client_auth_store_lease_lost_total` | counter | `store`, `at` | a `RedisStore` found its refresh lease gone (expired, or another process's) |
//!
//! Every label value comes from a fixed set, except `provider`, which you choose:
//!
//! | label | values |
//! |---|---|
//! | `provider` | the name given to `OAuthProviderBuilder::metrics_name` (default `default`); what [`AuthorizationProvider::metrics_name`](crate::AuthorizationProvider::metrics_name) returns for other providers |
//! | `grant` | `refresh_token`, `client_credentials`, and the other grants' names |
//! | `outcome` (token requests) | `success`; or the failure's class: `transient` ([`Error::is_transient`]: network, timeout, 5xx, 429), `session_ended` ([`Error::is_session_ended`]: `invalid_grant`, `unauthorized_client`), `configuration` (anything else: `invalid_client`, `invalid_scope`, a redirect, a malformed answer) |
//! | `reason` (sessions ended) | `invalid_grant`, `unauthorized_client`, `no_refresh_token` (the server ended it), `no_token` (nothing stored), `logout`, `cleared`, `other` |
//! | `reason` (retries skipped) | `cannot_recover` (the provider never retries: a static key), `already_retried` (the 401 answered the retry), `body_not_cloneable` (the request body could not be copied before the send), `body_copy_changed` (tower: the copy changed with the send, a `Clone` that shares the body), `foreign_origin` (the 401 came from another origin after a redirect), `declined` (the provider gave up), `session_ended` (the provider's session ended: its error is returned) |
//! | `reason` (retries declined) | `not_refreshable` (the challenge says a new token will not help: `insufficient_scope`, another scheme), `backoff` (token requests are failing and backing off), `cooldown` (a token the server never accepted, under its cooldown), `no_new_token` (the refresh gave no other token), `refresh_failed` |
//! | `outcome` (lease waits) | `acquired`, `timeout`, `error` |
//! | `store` | `file`, `redis` (a store of your own passes its own name to [`lease_wait`]) |
//! | `at` (leases lost) | `renew` (a renewal found it gone), `write` (the fenced write was refused), `clear` (the fenced clear was refused) |
//!
//! For every adapter, `client_auth_unauthorized_total` = `client_auth_retries_total` +
//! `client_auth_retries_skipped_total`.
//!
//! No label or value ever holds a token, a secret, a URL or a namespace.
//!
//! # Cost
//!
//! Nothing is recorded on the path of a request whose token is at hand and whose answer is not
//! a 401: metrics are recorded only around refreshes, waits for them, 401s and store leases.
//! Each of these looks its metric up in the recorder when it happens, so a recorder installed
//! after the providers were built still gets everything.
//!
//! # Traces
//!
//! Independently of this feature, `tracing` spans follow the OpenTelemetry conventions: a
//! refresh is an INFO span `client_auth.refresh` (fields `provider`, `grant`, `namespace`,
//! `outcome` with the classes above, `duration_ms`, `generation`; a failure's details are in
//! a WARN event inside it), and each request to the token or revocation endpoint is an INFO
//! client span `client_auth.token_request` inside it (`otel.name`, `otel.kind = "client"`,
//! `http.request.method`, `server.address`, `server.port`, `url.full` without userinfo or query
//! values, `http.response.status_code`, `error.type`). An adapter's retry after a 401 is a
//! DEBUG event with `http.request.resend_count = 1`.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

use crate::error::Error;

/// Token requests, by outcome class.
pub const TOKEN_REQUESTS: &str = "client_auth_token_requests_total";
/// Token-request latency in seconds, by outcome class.
pub const TOKEN_REQUEST_DURATION: &str = "client_auth_token_request_duration_seconds";
/// Requests that waited for a refresh in flight.
pub const REFRESH_WAITS: &str = "client_auth_refresh_waits_total";
/// How long requests waited for a refresh, in seconds.
pub const REFRESH_WAIT_DURATION: &str = "client_auth_refresh_wait_seconds";
/// Changes of the session state to `NoSession`, by reason.
pub const SESSIONS_ENDED: &str = "client_auth_sessions_ended_total";
/// 401s to requests an adapter stamped.
pub const UNAUTHORIZED: &str = "client_auth_unauthorized_total";
/// Requests an adapter sent again after a 401.
pub const RETRIES: &str = "client_auth_retries_total";
/// 401s an adapter returned without sending the request again, by reason.
pub const RETRIES_SKIPPED: &str = "client_auth_retries_skipped_total";
/// 401s the OAuth provider declined to recover from, by reason.
pub const RETRIES_DECLINED: &str = "client_auth_retries_declined_total";
/// How long a refresh waited for a shared store's refresh lease, in seconds, by outcome.
pub const LEASE_WAIT_DURATION: &str = "client_auth_store_lease_wait_seconds";
/// Refresh leases a shared store found lost.
pub const LEASES_LOST: &str = "client_auth_store_lease_lost_total";

/// Every metric name, in the order of the table above.
pub const ALL: [&str; 11] = [
    TOKEN_REQUESTS,
    TOKEN_REQUEST_DURATION,
    REFRESH_WAITS,
    REFRESH_WAIT_DURATION,
    SESSIONS_ENDED,
    UNAUTHORIZED,
    RETRIES,
    RETRIES_SKIPPED,
    RETRIES_DECLINED,
    LEASE_WAIT_DURATION,
    LEASES_LOST,
];

/// Gives the installed recorder each metric's unit and description (the `# HELP` lines of a
/// Prometheus scrape). Optional; call it once after installing the recorder. Does nothing
/// without feature `metrics`.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use ::metrics::{Unit, describe_counter, describe_histogram};
        describe_counter!(
            TOKEN_REQUESTS,
            Unit::Count,
            "Token requests to the token endpoint, by outcome class"
        );
        describe_histogram!(
            TOKEN_REQUEST_DURATION,
            Unit::Seconds,
            "Latency of token requests, by outcome class"
        );
        describe_counter!(
            REFRESH_WAITS,
            Unit::Count,
            "Requests that had no usable token and waited for the refresh in flight"
        );
        describe_histogram!(
            REFRESH_WAIT_DURATION,
            Unit::Seconds,
            "How long requests waited for a refresh"
        );
        describe_counter!(
            SESSIONS_ENDED,
            Unit::Count,
            "Session state changes to NoSession, by reason"
        );
        describe_counter!(
            UNAUTHORIZED,
            Unit::Count,
            "401 answers to requests an adapter stamped"
        );
        describe_counter!(
            RETRIES,
            Unit::Count,
            "Requests sent again after a 401, with a new credential"
        );
        describe_counter!(
            RETRIES_SKIPPED,
            Unit::Count,
            "401 answers returned without a retry, by reason"
        );
        describe_counter!(
            RETRIES_DECLINED,
            Unit::Count,
            "401 answers the OAuth provider declined to recover from, by reason"
        );
        describe_histogram!(
            LEASE_WAIT_DURATION,
            Unit::Seconds,
            "How long refreshes waited for a shared store's refresh lease, by outcome"
        );
        describe_counter!(
            LEASES_LOST,
            Unit::Count,
            "Refresh leases a shared store found lost"
        );
    }
}

/// How asking a shared store for its refresh lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseWait {
    /// The lease was taken.
    Acquired,
    /// Another process held it for longer than the wait allowed.
    Timeout,
    /// The store failed.
    Error,
}

impl LeaseWait {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseWait::Acquired => "acquired",
            LeaseWait::Timeout => "timeout",
            LeaseWait::Error => "error",
        }
    }
}

/// For [`TokenStore`](crate::TokenStore) authors: records that a refresh asked `store` (a
/// fixed name such as `"redis"`) for its refresh lease and waited `waited`. Does nothing
/// without feature `metrics`.
pub fn lease_wait(store: &'static str, outcome: LeaseWait, waited: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(LEASE_WAIT_DURATION, "store" => store, "outcome" => outcome.as_str())
        .record(waited);
    #[cfg(not(feature = "metrics"))]
    let _ = (store, outcome, waited);
}

/// For [`TokenStore`](crate::TokenStore) authors: records that `store` found its refresh lease
/// lost `at` a `"renew"`, `"write"` or `"clear"`. Does nothing without feature `metrics`.
pub fn lease_lost(store: &'static str, at: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(LEASES_LOST, "store" => store, "at" => at).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (store, at);
}

/// The outcome class of a token request or a refresh: `success`, `transient`,
/// `session_ended` or `configuration`.
pub(crate) fn outcome_class(result: Result<(), &Error>) -> &'static str {
    match result {
        Ok(()) => "success",
        Err(e) if e.is_transient() => "transient",
        Err(e) if e.is_session_ended() => "session_ended",
        Err(_) => "configuration",
    }
}

/// The `reason` label of a session that ended: a fixed set, whatever a server sent.
#[cfg(any(test, feature = "metrics"))]
pub(crate) fn session_reason(reason: &crate::SessionReason) -> &'static str {
    use crate::SessionReason as R;
    match reason {
        R::NoToken => "no_token",
        R::Logout => "logout",
        R::Cleared => "cleared",
        R::Invalid(code) => match code.as_str() {
            "invalid_grant" => "invalid_grant",
            "unauthorized_client" => "unauthorized_client",
            "no_refresh_token" => "no_refresh_token",
            _ => "other",
        },
        _ => "other",
    }
}

/// The metrics of one OAuth provider: its labels, fixed at build time. Every method records
/// on a slow path (a refresh, a wait, a 401, a session end); none is called on the fast path.
#[derive(Debug, Clone)]
pub(crate) struct OAuthMetrics {
    #[cfg(feature = "metrics")]
    provider: ::metrics::SharedString,
    #[cfg(feature = "metrics")]
    grant: &'static str,
    /// The `provider` label, as [`AuthorizationProvider::metrics_name`] returns it.
    name: std::sync::Arc<str>,
}

/// A token request or a wait under way: recorded when finished. Without feature `metrics`,
/// nothing at all.
#[derive(Debug)]
#[must_use]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: Instant,
}

impl Timer {
    fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: Instant::now(),
        }
    }
}

impl OAuthMetrics {
    pub(crate) fn new(name: &str, grant: &'static str) -> Self {
        let name: std::sync::Arc<str> = name.into();
        #[cfg(not(feature = "metrics"))]
        let _ = grant;
        Self {
            #[cfg(feature = "metrics")]
            provider: ::metrics::SharedString::from_shared(std::sync::Arc::clone(&name)),
            #[cfg(feature = "metrics")]
            grant,
            name,
        }
    }

    /// The `provider` label.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A token request starts.
    pub(crate) fn token_request(&self) -> Timer {
        Timer::start()
    }

    /// A token request ended with `result`.
    pub(crate) fn token_request_done(&self, timer: Timer, result: Result<(), &Error>) {
        #[cfg(feature = "metrics")]
        {
            let labels = vec![
                ::metrics::Label::new("provider", self.provider.clone()),
                ::metrics::Label::new("grant", self.grant),
                ::metrics::Label::new("outcome", outcome_class(result)),
            ];
            ::metrics::counter!(TOKEN_REQUESTS, labels.clone()).increment(1);
            ::metrics::histogram!(TOKEN_REQUEST_DURATION, labels).record(timer.started.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (timer, result);
    }

    /// A caller starts waiting for the refresh in flight.
    pub(crate) fn refresh_wait(&self) -> Timer {
        Timer::start()
    }

    /// The caller's wait ended.
    pub(crate) fn refresh_wait_done(&self, timer: Timer) {
        #[cfg(feature = "metrics")]
        {
            let labels = vec![
                ::metrics::Label::new("provider", self.provider.clone()),
                ::metrics::Label::new("grant", self.grant),
            ];
            ::metrics::counter!(REFRESH_WAITS, labels.clone()).increment(1);
            ::metrics::histogram!(REFRESH_WAIT_DURATION, labels).record(timer.started.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = timer;
    }

    /// The session state became `NoSession(reason)`.
    pub(crate) fn session_ended(&self, reason: &crate::SessionReason) {
        #[cfg(feature = "metrics")]
        ::metrics::counter!(
            SESSIONS_ENDED,
            "provider" => self.provider.clone(),
            "grant" => self.grant,
            "reason" => session_reason(reason),
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    /// A 401 is answered with "give up", for `reason`.
    pub(crate) fn declined(&self, reason: &'static str) {
        #[cfg(feature = "metrics")]
        ::metrics::counter!(
            RETRIES_DECLINED,
            "provider" => self.provider.clone(),
            "grant" => self.grant,
            "reason" => reason,
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }
}

/// Adapter side: a 401, a retry, a skipped retry (see [`crate::adapter::report_unauthorized`]).
pub(crate) fn adapter_counter(name: &'static str, provider: &str, reason: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    {
        let mut labels = vec![::metrics::Label::new("provider", provider.to_owned())];
        if let Some(reason) = reason {
            labels.push(::metrics::Label::new("reason", reason));
        }
        ::metrics::counter!(name, labels).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, provider, reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{SessionEnd, TransportError};
    use crate::{OAuthError, SessionReason};

    #[test]
    fn outcome_classes_follow_the_error_classification() {
        assert_eq!(outcome_class(Ok(())), "success");
        let transient = Error::Transport(TransportError::timeout());
        assert_eq!(outcome_class(Err(&transient)), "transient");
        let ended = Error::SessionEnded(SessionEnd::NoRefreshToken);
        assert_eq!(outcome_class(Err(&ended)), "session_ended");
        let rejected = Error::Rejected(OAuthError::new(
            http::StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
        ));
        assert_eq!(outcome_class(Err(&rejected)), "configuration");
    }

    #[test]
    fn a_server_code_never_becomes_a_label_value_of_its_own() {
        let sent = SessionReason::Invalid("x-MARKER-anything-the-server-sent".to_owned());
        assert_eq!(session_reason(&sent), "other");
        let known = SessionReason::Invalid("invalid_grant".to_owned());
        assert_eq!(session_reason(&known), "invalid_grant");
        assert_eq!(session_reason(&SessionReason::Logout), "logout");
    }
}
