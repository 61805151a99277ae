//! Server configuration.

use std::fmt;
use std::time::Duration;

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
            .customer_key("kid1", b"SECRET-HMAC");
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("test-secret"), "{shown}");
    }
}
