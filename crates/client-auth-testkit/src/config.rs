//! Server configuration.

use std::fmt;
use std::time::Duration;

/// How the token endpoint shapes a successful answer; see
/// [`ServerConfig::answer_shape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AnswerShape {
    /// The standard shape (RFC 6749 §5.1): `access_token`, `token_type: "Bearer"`,
    /// `expires_in`, and `refresh_token` / `scope` when there are some.
    #[default]
    Standard,
    /// A shape that bends the spec: the fields nested in `{"data": {...}}`, `expires_at` (UNIX
    /// seconds on the server's clock, rounded up) instead of `expires_in`, and no `token_type`.
    ///
    /// ```json
    /// {"data": {"access_token": "at_…", "expires_at": 1767225600, "refresh_token": "rt_…"}}
    /// ```
    ///
    /// Error answers keep the standard shape.
    Nested,
}

/// What the protected API's per-resource routes `/api/r/{name}` require of a bearer token; see
/// [`ServerConfig::resource_routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResourceBinding {
    /// The token was issued for the RFC 8707 `resource`
    /// `http://127.0.0.1:PORT/r/{name}`, as
    /// [`TestServer::resource_indicator`](crate::TestServer::resource_indicator) spells it.
    Resource,
    /// The token was issued for the `audience` `{name}`.
    Audience,
}

/// A client registered at the test authorization server.
#[derive(Clone)]
pub(crate) struct ClientRegistration {
    pub(crate) id: String,
    pub(crate) secret: Option<String>,
}

/// Configuration of a [`TestServer`](crate::TestServer), builder style.
///
/// The default configuration issues access tokens valid for one hour, rotates refresh
/// tokens, includes `expires_in` in token responses, and registers one confidential client
/// `test-client` / `test-secret`.
///
/// ```
/// use std::time::Duration;
/// use client_auth_testkit::ServerConfig;
///
/// let config = ServerConfig::default()
///     .access_token_lifetime(Duration::from_secs(60))
///     .rotate_refresh_tokens(false)
///     .client("mobile-app", None)
///     .api_key("KEY-123");
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) access_token_lifetime: Duration,
    pub(crate) rotate_refresh_tokens: bool,
    pub(crate) include_expires_in: bool,
    pub(crate) clients: Vec<ClientRegistration>,
    /// `true` while `clients` still holds only the default client.
    pub(crate) default_clients: bool,
    pub(crate) api_keys: Vec<String>,
    pub(crate) customer_keys: Vec<(String, Vec<u8>)>,
    pub(crate) token_delay: Duration,
    pub(crate) answer_shape: AnswerShape,
    pub(crate) resource_routes: Option<ResourceBinding>,
    pub(crate) claims_challenge: Option<String>,
    pub(crate) assertions: Vec<String>,
    pub(crate) subject_tokens: Vec<String>,
    /// `(client_id, assertion)`.
    pub(crate) client_assertions: Vec<(String, String)>,
    pub(crate) echo_rejected_assertions: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            access_token_lifetime: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            include_expires_in: true,
            clients: vec![ClientRegistration {
                id: "test-client".to_owned(),
                secret: Some("test-secret".to_owned()),
            }],
            default_clients: true,
            api_keys: Vec::new(),
            customer_keys: Vec::new(),
            token_delay: Duration::ZERO,
            answer_shape: AnswerShape::Standard,
            resource_routes: None,
            claims_challenge: None,
            assertions: Vec::new(),
            subject_tokens: Vec::new(),
            client_assertions: Vec::new(),
            echo_rejected_assertions: false,
        }
    }
}

impl ServerConfig {
    /// Lifetime of the access tokens the server issues (default 3600 s).
    ///
    /// Token responses carry `expires_in` in whole seconds, rounded up, at least 1; the
    /// server itself rejects a token once the exact duration has passed on its clock
    /// (see [`TestServer::advance`](crate::TestServer::advance)).
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.access_token_lifetime = lifetime;
        self
    }

    /// Whether every `refresh_token` grant returns a new refresh token (default `true`).
    ///
    /// With rotation on, the presented refresh token becomes *used*; presenting a used
    /// refresh token again revokes the whole grant (RFC 9700 §4.14.2) and answers
    /// `400 invalid_grant`. With rotation off, the response carries no `refresh_token`
    /// and the old one stays valid.
    pub fn rotate_refresh_tokens(mut self, on: bool) -> Self {
        self.rotate_refresh_tokens = on;
        self
    }

    /// Whether token responses include `expires_in` (default `true`).
    pub fn include_expires_in(mut self, on: bool) -> Self {
        self.include_expires_in = on;
        self
    }

    /// Registers a client; `secret: None` makes it a public client.
    ///
    /// The first call replaces the default client (`test-client` / `test-secret`);
    /// registering an id again replaces its secret. The first registered client is the one
    /// [`TestServer::client_id`](crate::TestServer::client_id) reports.
    pub fn client(mut self, id: &str, secret: Option<&str>) -> Self {
        if self.default_clients {
            self.clients.clear();
            self.default_clients = false;
        }
        let registration = ClientRegistration {
            id: id.to_owned(),
            secret: secret.map(str::to_owned),
        };
        match self.clients.iter_mut().find(|c| c.id == id) {
            Some(existing) => *existing = registration,
            None => self.clients.push(registration),
        }
        self
    }

    /// Registers an API key, accepted by the protected API as `Authorization: Token <key>`.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_keys.push(key.to_owned());
        self
    }

    /// Registers an HS256 key for customer JWTs: a JWT whose header `kid` is `kid` and
    /// whose signature verifies with `secret` is accepted as a bearer token.
    pub fn customer_key(mut self, kid: &str, secret: &[u8]) -> Self {
        self.customer_keys.retain(|(k, _)| k != kid);
        self.customer_keys.push((kid.to_owned(), secret.to_vec()));
        self
    }

    /// Makes every token-endpoint answer wait this long, in real time (default zero).
    ///
    /// Used by stampede tests to keep a refresh in flight while other requests arrive.
    pub fn token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// The shape of successful token answers (default [`AnswerShape::Standard`]).
    ///
    /// With [`AnswerShape::Nested`], a client reads the answer only through a mapping of its
    /// own (`expires_at` is on the server's clock, which [`TestServer::advance`] moves).
    ///
    /// [`TestServer::advance`]: crate::TestServer::advance
    pub fn answer_shape(mut self, shape: AnswerShape) -> Self {
        self.answer_shape = shape;
        self
    }

    /// Turns on tokens per resource (default off).
    ///
    /// The token endpoint always remembers the `resource` (RFC 8707) and `audience` parameters
    /// of a token request with the access token it issues (one of each per request: a
    /// repeated parameter is `400 invalid_request`), and [`Stats`](crate::Stats) counts token
    /// requests per `resource` and per `audience`. With this on, besides:
    ///
    /// - a `resource` that is not an absolute `http(s)` URI, or that has a fragment, is
    ///   `400 invalid_target`;
    /// - the protected API's routes `/api/r/{name}` (and paths below them) accept only bearer
    ///   tokens issued for `name` as `binding` says, and answer any other credential
    ///   `401` with `WWW-Authenticate: Bearer error="invalid_token"`, counted in
    ///   [`Stats::resource_mismatches`](crate::Stats::resource_mismatches).
    ///
    /// Every other `/api/*` route accepts tokens issued for any resource, as before.
    ///
    /// ```
    /// use client_auth_testkit::{ResourceBinding, ServerConfig};
    ///
    /// // `/api/r/orders` takes only tokens asked with
    /// // `resource=http://127.0.0.1:PORT/r/orders`.
    /// let config = ServerConfig::default().resource_routes(ResourceBinding::Resource);
    /// # let _ = config;
    /// ```
    pub fn resource_routes(mut self, binding: ResourceBinding) -> Self {
        self.resource_routes = Some(binding);
        self
    }

    /// Turns on the claims challenge route `/api/claims` (default off: it is a plain protected
    /// route).
    ///
    /// `/api/claims` answers `401` with
    /// `WWW-Authenticate: Bearer error="insufficient_claims", claims="<base64 of claims>"`
    /// (standard alphabet, padded) to every credential but a bearer token whose token request
    /// carried a `claims` parameter equal to `claims` (compared as JSON values when both
    /// parse as JSON, as text otherwise), and `200` to those.
    /// [`Stats::claims_challenges`](crate::Stats::claims_challenges) counts the challenges and
    /// [`Stats::claims_token_requests`](crate::Stats::claims_token_requests) the token requests
    /// that carried `claims`.
    pub fn claims_challenge(mut self, claims: &str) -> Self {
        self.claims_challenge = Some(claims.to_owned());
        self
    }

    /// Accepts `assertion` in the JWT bearer grant (RFC 7523 §2.1,
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`); may be called several times.
    ///
    /// The grant is supported once at least one assertion is accepted (before that it is
    /// `400 unsupported_grant_type`). The `assertion` parameter is compared as opaque text, no
    /// JWT is verified; any other is `400 invalid_grant`. The client authenticates as for any
    /// grant (a public client sends its `client_id` only). The access token's subject is the
    /// client id; no refresh token is issued.
    pub fn accept_assertion(mut self, assertion: &str) -> Self {
        self.assertions.push(assertion.to_owned());
        self
    }

    /// Accepts `subject_token` in token exchange (RFC 8693,
    /// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`); may be called several
    /// times.
    ///
    /// The grant is supported once at least one subject token is accepted (before that it is
    /// `400 unsupported_grant_type`). A request needs `subject_token` and
    /// `subject_token_type` (any type; `400 invalid_request` without them); a subject token not
    /// accepted is `400 invalid_grant`. The answer carries `issued_token_type:
    /// urn:ietf:params:oauth:token-type:access_token`; the access token's subject is the client
    /// id; no refresh token is issued.
    pub fn accept_subject_token(mut self, subject_token: &str) -> Self {
        self.subject_tokens.push(subject_token.to_owned());
        self
    }

    /// Accepts client authentication by `client_assertion` (RFC 7523 §2.2, with
    /// `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`) equal to
    /// `assertion`, as the confidential client `client_id`; may be called several times.
    ///
    /// The assertion is compared as opaque text (no JWT is verified), and a `client_id` sent
    /// with it must be `client_id`. A request that carries `client_assertion` or
    /// `client_assertion_type` authenticates this way only: another type, an assertion not
    /// accepted, or none accepted at all is `401 invalid_client`, and an `Authorization` header
    /// or `client_secret` besides it is `400 invalid_request`. The client needs no
    /// [`client`](Self::client) registration.
    pub fn accept_client_assertion(mut self, client_id: &str, assertion: &str) -> Self {
        self.client_assertions
            .push((client_id.to_owned(), assertion.to_owned()));
        self
    }

    /// Whether the `error_description` of a rejected assertion, subject token or client
    /// assertion quotes it (default `false`), as careless servers do: to test that a client
    /// keeps such text out of its errors and logs.
    pub fn echo_rejected_assertions(mut self, on: bool) -> Self {
        self.echo_rejected_assertions = on;
        self
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Clients<'a>(&'a [ClientRegistration]);
        impl fmt::Debug for Clients<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|c| {
                        (
                            c.id.as_str(),
                            if c.secret.is_some() {
                                "confidential"
                            } else {
                                "public"
                            },
                        )
                    }))
                    .finish()
            }
        }
        f.debug_struct("ServerConfig")
            .field("access_token_lifetime", &self.access_token_lifetime)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("include_expires_in", &self.include_expires_in)
            .field("clients", &Clients(&self.clients))
            .field("api_keys", &self.api_keys.len())
            .field(
                "customer_keys",
                &self
                    .customer_keys
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .field("token_delay", &self.token_delay)
            .field("answer_shape", &self.answer_shape)
            .field("resource_routes", &self.resource_routes)
            .field("claims_challenge", &self.claims_challenge.is_some())
            .field("assertions", &self.assertions.len())
            .field("subject_tokens", &self.subject_tokens.len())
            .field(
                "client_assertions",
                &self
                    .client_assertions
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
            )
            .field("echo_rejected_assertions", &self.echo_rejected_assertions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_client_call_replaces_the_default_client() {
        let config = ServerConfig::default()
            .client("a", None)
            .client("b", Some("s"));
        let ids: Vec<_> = config.clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn debug_does_not_show_secrets() {
        let config = ServerConfig::default()
            .api_key("SECRET-KEY")
            .customer_key("kid1", b"SECRET-HMAC")
            .accept_assertion("SECRET-ASSERTION")
            .accept_subject_token("SECRET-SUBJECT")
            .accept_client_assertion("federated", "SECRET-CLIENT-ASSERTION");
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("test-secret"), "{shown}");
    }
}
