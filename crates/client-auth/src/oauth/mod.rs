//! The OAuth 2.0 provider: `refresh_token` and `client_credentials` grants, with a

#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
mod assertion;
mod cache;
mod discovery;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
mod dpop;
mod response;
mod source;
mod targets;
mod transport;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, StatusCode, Uri};
use tokio::sync::watch;

pub use discovery::ServerMetadata;
pub use source::AssertionSource;
pub use targets::{PerTargetProvider, PerTargetProviderBuilder, TokenTarget};
#[cfg(feature = "reqwest")]
pub use transport::ReqwestTransport;
pub use transport::TokenTransport;
#[cfg(feature = "tower")]
pub use transport::TowerTransport;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
pub use {assertion::ClientAssertionKey, dpop::DpopKey};

pub(crate) use response::GrantKind;

use crate::auth_header;
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::provider::{
    AuthorizationProvider, AuthorizeFuture, Credential, RequestView, UnauthorizedFuture,
};
use crate::redact;
use crate::secret::{AccessToken, ClientSecret, RefreshToken, SecretString};
use crate::session::SessionState;
use crate::store::{MemoryStore, TokenStore};
use cache::Engine;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1). The default.
    #[default]
    SecretBasic,
    /// `client_id` and `client_secret` in the form body.
    SecretPost,
    /// `client_secret_jwt` (RFC 7523 §2.2): a client assertion signed with the client secret
    /// (HS256); the secret itself is never sent.
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    SecretJwt,
    /// `private_key_jwt` (RFC 7523 §2.2): a client assertion signed with the client's private
    /// key; set by [`OAuthProviderBuilder::private_key_jwt`].
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    PrivateKeyJwt,
    /// A client assertion issued by someone else (a workload identity token), read from an
    /// [`AssertionSource`] for every request; set by
    /// [`OAuthProviderBuilder::client_assertion`].
    Assertion,
}

/// Tokens obtained elsewhere (a sign-in), handed to [`OAuthProvider::set_tokens`].
///
/// ```
/// use std::time::Duration;
/// use client_auth::{RefreshToken, Tokens};
///
/// let tokens = Tokens {
///     refresh_token: Some(RefreshToken::new("refresh-token-from-sign-in")),
///     expires_in: Some(Duration::from_secs(3600)),
///     ..Tokens::default()
/// };
/// # let _ = tokens;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// The access token, if one is at hand.
    pub access_token: Option<AccessToken>,
    /// The refresh token.
    pub refresh_token: Option<RefreshToken>,
    /// The access token's remaining lifetime, if known.
    pub expires_in: Option<Duration>,
    /// The access token's whole lifetime as issued (the token answer's `expires_in`), when the
    /// token was obtained a while ago. The refresh windows are fractions of the whole lifetime,
    /// so a token with little time left is refreshed as early as it would have been by the
    /// process that obtained it. `None`: the remaining lifetime is taken as the whole.
    pub lifetime: Option<Duration>,
    /// The access token is DPoP-bound (`token_type: DPoP`) to the provider's
    /// [DPoP key](OAuthProviderBuilder::dpop): it is sent as `Authorization: DPoP` with a proof.
    pub dpop_bound: bool,
}

/// When to refresh, as fractions of a token's lifetime with floors and caps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Windows {
    pub(crate) soft_min: Duration,
    pub(crate) soft_ratio: f64,
    pub(crate) soft_max_ratio: f64,
    pub(crate) hard_max: Duration,
    pub(crate) hard_ratio: f64,
    pub(crate) jitter: f64,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            soft_min: Duration::from_secs(60),
            soft_ratio: 0.10,
            soft_max_ratio: 0.50,
            hard_max: Duration::from_secs(10),
            hard_ratio: 0.25,
            jitter: 0.5,
        }
    }
}

impl Windows {
    /// `(soft, hard)` for a token of lifetime `lifetime`.
    pub(crate) fn for_lifetime(&self, lifetime: Duration) -> (Duration, Duration) {
        let soft = lifetime
            .mul_f64(self.soft_ratio)
            .max(self.soft_min)
            .min(lifetime.mul_f64(self.soft_max_ratio));
        let hard = self.hard_max.min(lifetime.mul_f64(self.hard_ratio));
        (soft, hard.min(soft))
    }
}

/// A token-answer map ([`OAuthProviderBuilder::map_token_response`]).
#[derive(Clone)]
pub(crate) struct ResponseMap(Arc<dyn Fn(serde_json::Value) -> serde_json::Value + Send + Sync>);

impl fmt::Debug for ResponseMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseMap(..)")
    }
}

impl ResponseMap {
    /// The mapped body of a successful answer (`Null` for one that is not JSON).
    pub(crate) fn apply(&self, body: &Bytes) -> Bytes {
        let answer = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        Bytes::from(serde_json::to_vec(&(self.0)(answer)).unwrap_or_default())
    }
}

/// Everything the provider needs, fixed at build time.
pub(crate) struct Config {
    pub(crate) token_url: Uri,
    pub(crate) revocation_url: Option<Uri>,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<ClientSecret>,
    pub(crate) client_auth: ClientAuth,
    pub(crate) grant: GrantKind,
    pub(crate) scope: Option<String>,
    pub(crate) extra_params: Vec<(String, String)>,
    /// Headers sent with every token and revocation request.
    pub(crate) extra_headers: http::HeaderMap,
    /// Maps a successful token answer's JSON to the standard shape.
    pub(crate) response_map: Option<ResponseMap>,
    /// A 403 is handled like a 401 ([`OAuthProviderBuilder::retry_forbidden`]).
    pub(crate) retry_forbidden: bool,
    /// The grant's assertion (JWT bearer) or subject token (token exchange).
    pub(crate) grant_source: Option<AssertionSource>,
    /// The `subject_token_type` of a token exchange.
    pub(crate) subject_token_type: String,
    /// A client assertion issued by someone else ([`ClientAuth::Assertion`]).
    pub(crate) client_assertion: Option<AssertionSource>,
    pub(crate) namespace: String,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) windows: Windows,
    /// The longest cooldown for 401s of never-accepted tokens.
    pub(crate) cooldown: Duration,
    /// The first such cooldown; it doubles up to `cooldown`.
    pub(crate) cooldown_initial: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) assume_lifetime: Option<Duration>,
    pub(crate) store_attempts: u32,
    /// How long one store call may take.
    pub(crate) store_timeout: Duration,
    /// The shared store's refresh-lease ttl; renewed every third of it during a refresh.
    pub(crate) lease_ttl: Duration,
    /// Token lifetimes under this are held for a growing while instead.
    pub(crate) min_lifetime: Duration,
    /// The provider's metrics and their labels.
    pub(crate) metrics: crate::metrics::OAuthMetrics,
    /// DPoP: the key and the nonces servers gave.
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    pub(crate) dpop: Option<Arc<dpop::Dpop>>,
    /// JWT client authentication: what signs the assertion, and its audience.
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    pub(crate) assertion: Option<(assertion::AssertionSigner, String)>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revocation_url = self.revocation_url.as_ref().map(Uri::to_string);
        f.debug_struct("Config")
            .field("token_url", &redact::Url(&self.token_url.to_string()))
            .field(
                "revocation_url",
                &revocation_url.as_deref().map(redact::Url),
            )
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_auth", &self.client_auth)
            .field("grant", &self.grant)
            .field("scope", &self.scope)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A form POST to `url` with client authentication and `params`.
    pub(crate) fn form_request(
        &self,
        url: &Uri,
        params: &[(&str, &str)],
        inputs: &Inputs,
    ) -> Result<http::Request<Bytes>, Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        for (name, value) in &self.extra_headers {
            builder = builder.header(name, value.clone());
        }
        match (&self.client_secret, self.client_auth) {
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            (_, ClientAuth::SecretJwt | ClientAuth::PrivateKeyJwt | ClientAuth::Assertion) => {
                let assertion = inputs.client_assertion.as_ref().ok_or(Error::Config(
                    "client assertion authentication without an assertion".into(),
                ))?;
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_assertion_type", JWT_BEARER_CLIENT_ASSERTION);
                form.append_pair("client_assertion", assertion.expose_secret());
            }
            #[cfg(not(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))]
            (_, ClientAuth::Assertion) => {
                let assertion = inputs.client_assertion.as_ref().ok_or(Error::Config(
                    "client assertion authentication without an assertion".into(),
                ))?;
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_assertion_type", JWT_BEARER_CLIENT_ASSERTION);
                form.append_pair("client_assertion", assertion.expose_secret());
            }
            (Some(secret), ClientAuth::SecretBasic) => {
                let encoded = self.basic_credential(secret);
                let value = auth_header::header_value("Basic", &encoded)?;
                builder = builder.header(AUTHORIZATION, value);
            }
            (Some(secret), ClientAuth::SecretPost) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.expose_secret());
            }
            (None, _) => {
                form.append_pair("client_id", &self.client_id);
            }
        }
        let body = zeroize::Zeroizing::new(form.finish());
        builder
            .body(Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|_| Error::Config("could not build the token request".into()))
    }

    /// The `client_secret_basic` credential: base64 of the form-urlencoded `id:secret`.
    pub(crate) fn basic_credential(&self, secret: &ClientSecret) -> zeroize::Zeroizing<String> {
        let mut raw = zeroize::Zeroizing::new(String::new());
        raw.extend(form_urlencoded::byte_serialize(self.client_id.as_bytes()));
        raw.push(':');
        raw.extend(form_urlencoded::byte_serialize(
            secret.expose_secret().as_bytes(),
        ));
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()))
    }

    /// The token request for this provider's grant.
    pub(crate) fn token_request(
        &self,
        refresh_token: Option<&RefreshToken>,
        inputs: &Inputs,
    ) -> Result<http::Request<Bytes>, Error> {
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(5 + self.extra_params.len());
        let grant_assertion = || {
            inputs
                .grant_assertion
                .as_ref()
                .map(SecretString::expose_secret)
                .ok_or(Error::Config("the grant has no assertion source".into()))
        };
        match self.grant {
            GrantKind::RefreshToken => {
                params.push(("grant_type", "refresh_token"));
                if let Some(rt) = refresh_token {
                    params.push(("refresh_token", rt.expose_secret()));
                }
            }
            GrantKind::ClientCredentials => params.push(("grant_type", "client_credentials")),
            GrantKind::JwtBearer => {
                params.push(("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"));
                params.push(("assertion", grant_assertion()?));
            }
            GrantKind::TokenExchange => {
                params.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ));
                params.push(("subject_token", grant_assertion()?));
                params.push(("subject_token_type", &self.subject_token_type));
            }
        }
        if let Some(claims) = &inputs.claims {
            params.push(("claims", claims));
        }
        if let Some(scope) = &self.scope {
            params.push(("scope", scope));
        }
        for (k, v) in &self.extra_params {
            params.push((k, v));
        }
        self.form_request(&self.token_url, &params, inputs)
    }

    /// What a token or revocation request needs that is read afresh each time: the grant's
    /// assertion and a client assertion from their sources.
    pub(crate) async fn inputs(&self, with_grant: bool) -> Result<Inputs, Error> {
        let grant_assertion = match (&self.grant_source, with_grant) {
            (Some(source), true) => Some(source.get().await?),
            _ => None,
        };
        let client_assertion = match (&self.client_assertion, self.client_auth) {
            (Some(source), ClientAuth::Assertion) => Some(source.get().await?),
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            (_, ClientAuth::SecretJwt | ClientAuth::PrivateKeyJwt) => {
                let (signer, audience) = self.assertion.as_ref().ok_or(Error::Config(
                    "JWT client authentication without a key".into(),
                ))?;
                let jwt =
                    signer.assertion(&self.client_id, audience, std::time::SystemTime::now())?;
                Some(SecretString::new(jwt.to_string()))
            }
            _ => None,
        };
        Ok(Inputs {
            grant_assertion,
            client_assertion,
            claims: None,
            proof: None,
        })
    }
}

/// The default `subject_token_type` of a token exchange (RFC 8693 §3).
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
const JWT_BEARER_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token request's inputs read at send time.
#[derive(Default)]
pub(crate) struct Inputs {
    pub(crate) grant_assertion: Option<SecretString>,
    pub(crate) client_assertion: Option<SecretString>,
    /// A claims challenge's `claims` (the decoded JSON), for one token request.
    pub(crate) claims: Option<String>,
    /// The DPoP proof the last send carried: a server may echo it.
    pub(crate) proof: Option<String>,
}

impl Inputs {
    /// The secrets these inputs hold, to remove from any error text.
    pub(crate) fn secrets(&self) -> [&str; 3] {
        [
            self.grant_assertion
                .as_ref()
                .map_or("", SecretString::expose_secret),
            self.client_assertion
                .as_ref()
                .map_or("", SecretString::expose_secret),
            self.proof.as_deref().unwrap_or(""),
        ]
    }
}

/// The OAuth 2.0 provider. Cheap to clone; clones share one token cache, so there is one
/// refresh in flight whatever the number of clones or callers.
///
/// single-flight token cache.
///
/// ```no_run
/// # #[cfg(feature = "reqwest")]
/// # async fn demo() -> Result<(), client_auth::Error> {
/// use client_auth::{OAuthProvider, SessionState};
///
/// // A user's session: the refresh token came from a sign-in.
/// let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/oauth/token")
///     .client_id("my-client")
///     .client_secret("my-secret")
///     .refresh_token("refresh-token-from-sign-in")
///     .build()?;
///
/// // Headers set by hand: refresh if needed, then the token.
/// let token = provider.access_token().await?;
/// # let _ = token;
///
/// // Watch the session end (an `invalid_grant`, a logout).
/// let mut session = provider.session();
/// if let SessionState::NoSession(reason) = &*session.borrow_and_update() {
///     println!("sign in again: {reason:?}");
/// }
/// # Ok(()) }
/// ```
///
/// # Refresh semantics
///
/// For a token of lifetime `L` (counted from when the token request was sent):
/// - the **soft window** is `min(max(60 s, 10 % of L), 50 % of L)` before expiry; inside it the
///   current token is served and exactly one background refresh runs (its start is jittered
///   inside the window so a fleet does not refresh in lockstep);
/// - the **hard window** is `min(10 s, 25 % of L)` before expiry; a token that close to expiry
///   is treated as expired and callers wait for the one refresh in flight.
///
/// Every number is configurable on the builder. A refresh runs on a spawned tokio task, so
/// dropping the request that started it does not stop it; a tokio runtime is required (without
/// one, calls return [`Error::NoRuntime`], never panic).
///
/// # 401s
///
/// A 401 for the current token starts one refresh and the request is retried once with the new
/// token. A token the server accepted before (adapters report every answer that shows
/// acceptance through [`AuthorizationProvider::on_accepted`]) and now rejects is refreshed at
/// once: it was revoked.
/// A token the server never accepted refreshes under a cooldown growing from 1 s to 30 s
/// ([`OAuthProviderBuilder::unauthorized_cooldown`]), since a new one may be rejected the same
/// way.
///
/// # Session operations during a refresh
///
/// [`logout`](OAuthProvider::logout), [`clear`](OAuthProvider::clear) and
/// [`set_tokens`](OAuthProvider::set_tokens) win over a refresh in flight: once they return,
/// nothing that refresh obtained reaches memory or the store, and its waiters get the new
/// session's token or error. A token answer that rotated the refresh token but is unusable
/// otherwise still has its refresh token kept (in memory and in the store), so the next refresh
/// does not replay the old one.
#[derive(Clone)]
pub struct OAuthProvider {
    engine: Arc<Engine>,
}

impl fmt::Debug for OAuthProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthProvider")
            .field("config", &self.engine.config)
            .field("session", &self.engine.session_state())
            .finish_non_exhaustive()
    }
}

impl OAuthProvider {
    /// A builder for a user session refreshed with the `refresh_token` grant.
    pub fn refresh_token_grant(token_url: impl Into<String>) -> OAuthProviderBuilder {
        OAuthProviderBuilder::new(token_url.into(), GrantKind::RefreshToken)
    }

    /// A builder for a service identity using the `client_credentials` grant.
    pub fn client_credentials(token_url: impl Into<String>) -> OAuthProviderBuilder {
        OAuthProviderBuilder::new(token_url.into(), GrantKind::ClientCredentials)
    }

    /// A builder for the JWT bearer grant (RFC 7523 §2.1): every token request sends the
    /// current `assertion` from `source` (a workload identity token, or one this client signs
    /// with [`AssertionSource::signed`]).
    ///
    /// ```
    /// # #[cfg(feature = "reqwest")] {
    /// use client_auth::{AssertionSource, OAuthProvider};
    ///
    /// let provider = OAuthProvider::jwt_bearer_grant(
    ///     "https://auth.example.com/token",
    ///     AssertionSource::file("/var/run/secrets/tokens/api-token"),
    /// )
    /// .client_id("my-workload")
    /// .build()?;
    /// # let _ = provider;
    /// # }
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    pub fn jwt_bearer_grant(
        token_url: impl Into<String>,
        source: AssertionSource,
    ) -> OAuthProviderBuilder {
        let mut builder = OAuthProviderBuilder::new(token_url.into(), GrantKind::JwtBearer);
        builder.grant_source = Some(source);
        builder
    }

    /// A builder for token exchange (RFC 8693): every token request trades the current token
    /// from `subject` (`subject_token`, of type
    /// [`subject_token_type`](OAuthProviderBuilder::subject_token_type), a JWT by default) for
    /// an access token; name the API with
    /// [`extra_param`](OAuthProviderBuilder::extra_param)`("audience", ..)` or `("resource", ..)`.
    pub fn token_exchange(
        token_url: impl Into<String>,
        subject: AssertionSource,
    ) -> OAuthProviderBuilder {
        let mut builder = OAuthProviderBuilder::new(token_url.into(), GrantKind::TokenExchange);
        builder.grant_source = Some(subject);
        builder
    }

    /// Reads the metadata of the authorization server `issuer` (OpenID Connect discovery,
    /// then RFC 8414) over reqwest; start a provider from it with
    /// [`ServerMetadata::client_credentials`] or [`ServerMetadata::refresh_token_grant`]. See
    /// [`ServerMetadata::discover_with`] for the rules and another transport.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] saying what is wrong with the issuer or its metadata (an `issuer`
    /// that differs from the one asked for included), or the transport's error.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub async fn discover(issuer: &str) -> Result<ServerMetadata, Error> {
        let plain_loopback = check_endpoint(issuer, "issuer", false)?.scheme_str() == Some("http");
        ServerMetadata::discover_with(issuer, default_transport(plain_loopback)?, false).await
    }

    /// The current access token, refreshed first if it is missing or about to expire.
    ///
    /// # Errors
    ///
    /// The refresh's error, or [`Error::NoSession`] when there is no session.
    pub async fn access_token(&self) -> Result<AccessToken, Error> {
        self.engine.current_token(false).await
    }

    /// Forces one refresh to prove the grant is still alive (joins one already in flight).
    ///
    /// # Errors
    ///
    /// The refresh's error; a session-ending one also ends the session.
    pub async fn verify_session(&self) -> Result<(), Error> {
        self.engine.current_token(true).await.map(|_| ())
    }

    /// Ends the session: clears the tokens here and in the store, publishes
    /// `NoSession(Logout)`, and revokes the refresh token (RFC 7009) when a revocation URL is
    /// set.
    ///
    /// # Errors
    ///
    /// A store or revocation failure. The session is cleared in memory either way.
    pub async fn logout(&self) -> Result<(), Error> {
        self.engine.end_session(true).await
    }

    /// Clears the tokens here and in the store and publishes `NoSession(Cleared)`.
    ///
    /// # Errors
    ///
    /// A store failure. The session is cleared in memory either way.
    pub async fn clear(&self) -> Result<(), Error> {
        self.engine.end_session(false).await
    }

    /// Replaces the tokens after a sign-in: stores them, then serves them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderValue`] or [`Error::EmptyCredential`] for an unusable access
    /// token, or a store failure (the tokens are still used in memory).
    pub async fn set_tokens(&self, tokens: Tokens) -> Result<(), Error> {
        not_blank(tokens.access_token.as_ref())?;
        self.engine.set_tokens(tokens).await
    }

    /// A receiver of session-state changes.
    pub fn session(&self) -> watch::Receiver<SessionState> {
        self.engine.session.subscribe()
    }

    /// The current session state.
    pub fn session_state(&self) -> SessionState {
        self.engine.session_state()
    }
}

impl AuthorizationProvider for OAuthProvider {
    fn authorize(&self, request: &RequestView<'_>) -> AuthorizeFuture {
        #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
        if self.engine.config.dpop.is_some() {
            return self.engine.authorize_dpop(request);
        }
        self.engine.authorize(request.force_refresh())
    }

    fn on_unauthorized(
        &self,
        failed: &Credential,
        status: StatusCode,
        headers: &http::HeaderMap,
    ) -> UnauthorizedFuture {
        #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
        if let Some(binding) = failed.binding() {
            return self
                .engine
                .on_dpop_unauthorized(failed, binding, status, headers);
        }
        self.engine.on_unauthorized(failed, status, headers)
    }

    fn can_recover(&self) -> bool {
        true
    }

    fn on_accepted(&self, credential: &Credential) {
        self.engine.accepted(credential);
    }

    fn retry_forbidden(&self) -> bool {
        self.engine.config.retry_forbidden
    }

    fn metrics_name(&self) -> &str {
        self.engine.config.metrics.name()
    }
}

/// Builds an [`OAuthProvider`].
///
/// `T` records whether a token transport was chosen, so that a provider that could not reach
/// its token endpoint does not compile: [`build`](Self::build) is there after
/// [`transport`](Self::transport), or without it when feature `reqwest` supplies
/// [`ReqwestTransport`] (the default parameter, [`DefaultTransport`]).
#[derive(Clone)]
pub struct OAuthProviderBuilder<T = DefaultTransport> {
    token_url: String,
    revocation_url: Option<String>,
    allow_http: bool,
    grant: GrantKind,
    client_id: Option<String>,
    client_secret: Option<ClientSecret>,
    client_auth: ClientAuth,
    scope: Option<String>,
    extra_params: Vec<(String, String)>,
    extra_headers: http::HeaderMap,
    response_map: Option<ResponseMap>,
    /// A `token_request_header` that is not a valid header: refused by `build`.
    invalid_header: bool,
    grant_source: Option<AssertionSource>,
    subject_token_type: String,
    client_assertion: Option<AssertionSource>,
    retry_forbidden: bool,
    refresh_token: Option<RefreshToken>,
    access_token: Option<(AccessToken, Option<Duration>)>,
    store: Option<Arc<dyn TokenStore>>,
    namespace: String,
    clock: Option<Arc<dyn Clock>>,
    transport: Option<Arc<dyn TokenTransport>>,
    timeout: Duration,
    max_body: usize,
    windows: Windows,
    cooldown: Duration,
    cooldown_initial: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    assume_lifetime: Option<Duration>,
    store_timeout: Duration,
    lease_ttl: Duration,
    metrics_name: String,
    /// From discovery: the issuer (the default audience of client assertions) and the DPoP
    /// algorithms the server takes.
    issuer: Option<String>,
    dpop_algs: Vec<String>,
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    jose: Jose,
    chosen: PhantomData<T>,
}

/// The builder's JOSE settings: DPoP and JWT client authentication.
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
#[derive(Default, Clone)]
struct Jose {
    dpop: Option<DpopKey>,
    assertion_key: Option<ClientAssertionKey>,
    audience: Option<String>,
}

/// [`OAuthProviderBuilder`] without a transport of the caller's: `build` uses
/// [`ReqwestTransport`], so it exists only with feature `reqwest`.
#[derive(Debug, Clone, Copy)]
pub struct DefaultTransport;

/// [`OAuthProviderBuilder`] after [`transport`](OAuthProviderBuilder::transport).
#[derive(Debug, Clone, Copy)]
pub struct SuppliedTransport;

/// Whether an [`OAuthProviderBuilder`] can be built: it has a transport, or feature `reqwest`
/// gives it one. Sealed.
///
/// Without feature `reqwest`, a builder that was given no transport does not compile:
///
#[cfg_attr(not(feature = "reqwest"), doc = "```compile_fail,E0277")]
#[cfg_attr(feature = "reqwest", doc = "```")]
/// let provider = client_auth::OAuthProvider::client_credentials("https://auth.example.com/token")
///     .client_id("my-service")
///     .build();
/// ```
#[diagnostic::on_unimplemented(
    message = "this `OAuthProviderBuilder` has no token transport",
    label = "no transport to reach the token endpoint",
    note = "enable client-auth's `reqwest` feature (`rustls` or `native-tls` for its TLS), or call `.transport(...)` before `.build()`"
)]
pub trait TransportChoice: sealed::Sealed {}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl TransportChoice for DefaultTransport {}
impl TransportChoice for SuppliedTransport {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::DefaultTransport {}
    impl Sealed for super::SuppliedTransport {}
}

impl<T> fmt::Debug for OAuthProviderBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthProviderBuilder")
            .field("token_url", &redact::Url(&self.token_url))
            .field(
                "revocation_url",
                &self.revocation_url.as_deref().map(redact::Url),
            )
            .field("allow_http", &self.allow_http)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("refresh_token", &self.refresh_token)
            .finish_non_exhaustive()
    }
}

impl OAuthProviderBuilder {
    fn new(token_url: String, grant: GrantKind) -> Self {
        Self {
            token_url,
            revocation_url: None,
            allow_http: false,
            grant,
            client_id: None,
            client_secret: None,
            client_auth: ClientAuth::default(),
            scope: None,
            extra_params: Vec::new(),
            extra_headers: http::HeaderMap::new(),
            response_map: None,
            invalid_header: false,
            retry_forbidden: false,
            grant_source: None,
            subject_token_type: JWT_TOKEN_TYPE.to_owned(),
            client_assertion: None,
            refresh_token: None,
            access_token: None,
            store: None,
            namespace: "default".to_owned(),
            clock: None,
            transport: None,
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
            windows: Windows::default(),
            cooldown: Duration::from_secs(30),
            cooldown_initial: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            assume_lifetime: None,
            store_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(6),
            metrics_name: "default".to_owned(),
            issuer: None,
            dpop_algs: Vec::new(),
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            jose: Jose::default(),
            chosen: PhantomData,
        }
    }
}

impl<T> OAuthProviderBuilder<T> {
    /// The client id (required).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The client secret; without one the client is public and sends only `client_id`.
    pub fn client_secret(mut self, secret: impl Into<ClientSecret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// How the secret is sent (default: `client_secret_basic`).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// The `scope` parameter (space-separated scopes).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// An extra form parameter sent with every token request (`audience`, `resource`).
    pub fn extra_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_params.push((name.into(), value.into()));
        self
    }

    /// Handles a 403 like a 401: one refresh and one retry (default: off). For APIs that answer
    /// 403 to an expired or revoked token; most answer 403 for a missing permission, which no
    /// new token fixes, and each such refresh would spend a single-use refresh token. A 403
    /// with an `insufficient_scope` challenge is never retried.
    pub fn retry_forbidden(mut self, retry: bool) -> Self {
        self.retry_forbidden = retry;
        self
    }

    /// The `subject_token_type` of a [token exchange](OAuthProvider::token_exchange) (default
    /// `urn:ietf:params:oauth:token-type:jwt`).
    pub fn subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject_token_type = token_type.into();
        self
    }

    /// Authenticates the client with an assertion someone else issued, read from `source` for
    /// every request ([`ClientAuth::Assertion`]): a federated workload identity, where the
    /// platform's token stands in for a client secret.
    pub fn client_assertion(mut self, source: AssertionSource) -> Self {
        self.client_assertion = Some(source);
        self.client_auth = ClientAuth::Assertion;
        self
    }

    /// A header sent with every token and revocation request (an API key a gateway in front of
    /// the token endpoint asks for, say). The value is marked sensitive and removed from any
    /// error text. Headers the token request sets itself (`Host`, `Content-Type`,
    /// `Content-Length`, `Transfer-Encoding`, `Connection`, `Accept`, `DPoP`) cannot be set,
    /// nor `Authorization` with `client_secret_basic`.
    ///
    /// # Errors
    ///
    /// None here: a name or value that is not a valid header, or a header listed above, is
    /// refused by [`build`](Self::build) with [`Error::Config`].
    pub fn token_request_header(mut self, name: &str, value: &str) -> Self {
        // What the token request itself sets, or that would send it elsewhere, is not the
        // caller's to change.
        const RESERVED: [&str; 7] = [
            "host",
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
            "dpop",
            "accept",
        ];
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), _) if RESERVED.contains(&name.as_str()) => self.invalid_header = true,
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                self.extra_headers.append(name, value);
            }
            _ => self.invalid_header = true,
        }
        self
    }

    /// Maps every successful token answer to the standard shape (RFC 6749 §5.1) before it is
    /// read, for token endpoints that bend the spec: tokens nested in the JSON, `expires_at`
    /// instead of `expires_in`, no `token_type`. The answer is read as strictly as without the
    /// map afterwards: the 1 MiB cap, the rule that a returned refresh token replaces the old
    /// one, and no token text in any error hold. Error answers are not mapped. An answer that
    /// is not JSON reaches the map as `Value::Null`.
    ///
    /// ```
    /// # #[cfg(feature = "reqwest")] {
    /// use client_auth::OAuthProvider;
    /// use serde_json::{Value, json};
    ///
    /// // {"data": {"token": "...", "expires_at": 1767225600}} → the standard shape.
    /// let provider = OAuthProvider::client_credentials("https://auth.example.com/token")
    ///     .client_id("svc")
    ///     .map_token_response(|answer: Value| {
    ///         let data = &answer["data"];
    ///         let now = std::time::SystemTime::now()
    ///             .duration_since(std::time::UNIX_EPOCH)
    ///             .map_or(0, |d| d.as_secs());
    ///         json!({
    ///             "access_token": data["token"],
    ///             "token_type": "Bearer",
    ///             "expires_in": data["expires_at"].as_u64().map(|at| at.saturating_sub(now)),
    ///         })
    ///     })
    ///     .build()?;
    /// # let _ = provider;
    /// # }
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    pub fn map_token_response(
        mut self,
        map: impl Fn(serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.response_map = Some(ResponseMap(Arc::new(map)));
        self
    }

    /// The refresh token to start from (after a sign-in). Without one, the store is read at the
    /// first request.
    pub fn refresh_token(mut self, token: impl Into<RefreshToken>) -> Self {
        self.refresh_token = Some(token.into());
        self
    }

    /// An access token to start from, with its remaining lifetime if known.
    pub fn access_token(
        mut self,
        token: impl Into<AccessToken>,
        expires_in: Option<Duration>,
    ) -> Self {
        self.access_token = Some((token.into(), expires_in));
        self
    }

    /// Where tokens persist, under `namespace` (default: an in-memory store, namespace
    /// `default`).
    pub fn store(mut self, store: Arc<dyn TokenStore>, namespace: impl Into<String>) -> Self {
        self.store = Some(store);
        self.namespace = namespace.into();
        self
    }

    /// The clock (default: [`SystemClock`]); tests inject `ManualClock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The token-endpoint transport (default with feature `reqwest`: [`ReqwestTransport`]).
    pub fn transport(
        self,
        transport: Arc<dyn TokenTransport>,
    ) -> OAuthProviderBuilder<SuppliedTransport> {
        OAuthProviderBuilder {
            token_url: self.token_url,
            revocation_url: self.revocation_url,
            allow_http: self.allow_http,
            grant: self.grant,
            client_id: self.client_id,
            client_secret: self.client_secret,
            client_auth: self.client_auth,
            scope: self.scope,
            extra_params: self.extra_params,
            extra_headers: self.extra_headers,
            response_map: self.response_map,
            invalid_header: self.invalid_header,
            retry_forbidden: self.retry_forbidden,
            grant_source: self.grant_source,
            subject_token_type: self.subject_token_type,
            client_assertion: self.client_assertion,
            refresh_token: self.refresh_token,
            access_token: self.access_token,
            store: self.store,
            namespace: self.namespace,
            clock: self.clock,
            transport: Some(transport),
            timeout: self.timeout,
            max_body: self.max_body,
            windows: self.windows,
            cooldown: self.cooldown,
            cooldown_initial: self.cooldown_initial,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            assume_lifetime: self.assume_lifetime,
            store_timeout: self.store_timeout,
            lease_ttl: self.lease_ttl,
            metrics_name: self.metrics_name,
            issuer: self.issuer,
            dpop_algs: self.dpop_algs,
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            jose: self.jose,
            chosen: PhantomData,
        }
    }

    /// The RFC 7009 revocation endpoint used by [`OAuthProvider::logout`]. Like the token URL,
    /// it must be `https://` unless [`allow_http`](Self::allow_http) is set or its host is a
    /// loopback address.
    pub fn revocation_url(mut self, url: impl Into<String>) -> Self {
        self.revocation_url = Some(url.into());
        self
    }

    /// Allows `http://` token and revocation URLs on any host (default: `false`).
    ///
    /// Token requests carry the client secret and the refresh token, so without this opt-in a
    /// plain-http URL is a configuration error, the same rule adapters apply to origins. Hosts
    /// that never leave the machine are allowed without it: `localhost` and the loopback
    /// addresses `127.0.0.0/8` and `::1` (a local token server, a test server). The default
    /// transport then uses no proxy (a system `HTTP_PROXY` would carry the request off the
    /// machine in clear text); a transport you supply must not either.
    ///
    /// ```
    /// use client_auth::{Error, OAuthProvider};
    ///
    /// let plain = || {
    ///     OAuthProvider::client_credentials("http://auth.internal/token").client_id("svc")
    /// };
    /// # #[cfg(feature = "reqwest")] {
    /// assert!(matches!(plain().build(), Err(Error::Config(_))));
    /// assert!(plain().allow_http(true).build().is_ok());
    /// // Loopback needs no opt-in.
    /// assert!(
    ///     OAuthProvider::client_credentials("http://127.0.0.1:8080/token")
    ///         .client_id("svc")
    ///         .build()
    ///         .is_ok()
    /// );
    /// # }
    /// ```
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// The token-request timeout (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = capped(timeout);
        self
    }

    /// The largest token-endpoint answer read (default 1 MiB).
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The soft window: `min(max(min, ratio × lifetime), max_ratio × lifetime)` before expiry
    /// (default 60 s, 0.10, 0.50).
    pub fn soft_window(mut self, min: Duration, ratio: f64, max_ratio: f64) -> Self {
        self.windows.soft_min = min;
        self.windows.soft_ratio = ratio;
        self.windows.soft_max_ratio = max_ratio;
        self
    }

    /// The hard window: `min(max, ratio × lifetime)` before expiry (default 10 s, 0.25).
    pub fn hard_window(mut self, max: Duration, ratio: f64) -> Self {
        self.windows.hard_max = max;
        self.windows.hard_ratio = ratio;
        self
    }

    /// How much of the span between the soft and hard windows the refresh start is spread over
    /// at random, from 0.0 (refresh exactly at the soft window) to 1.0 (default 0.5).
    pub fn jitter(mut self, ratio: f64) -> Self {
        self.windows.jitter = ratio;
        self
    }

    /// The cooldown for 401s of tokens the server never accepted: after such a 401 starts a
    /// refresh, the next such 401 is returned unchanged until `initial` has passed, then
    /// `2 × initial`, doubling up to `max` (default 1 s to 30 s); a token the server accepts
    /// resets it. A token the server accepted before and later rejects (revocation, key
    /// rotation) is refreshed at once, without a cooldown.
    pub fn unauthorized_cooldown(mut self, initial: Duration, max: Duration) -> Self {
        self.cooldown_initial = initial;
        self.cooldown = max;
        self
    }

    /// How long one call to the token store may take before it counts as failed (default 5 s).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// The ttl of a shared store's refresh lease (default 6 s). The lease is renewed every third
    /// of it while the token request runs, so a process that dies mid-refresh holds up the
    /// others for at most this long.
    pub fn refresh_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The `provider` label of this provider's metrics (feature `metrics`; default
    /// `"default"`): a short, fixed name such as `"billing-api"`, so that a dashboard tells
    /// providers apart. Never put a secret, a URL or a per-user value here. See
    /// [`crate::metrics`].
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.metrics_name = name.into();
        self
    }

    /// Backoff after a failed refresh: exponential with jitter from `initial` to `max`
    /// (default 1 s to 30 s). A longer `Retry-After` wins.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// The lifetime assumed when the server sends no `expires_in` (default: valid until a 401).
    pub fn assume_lifetime(mut self, lifetime: Duration) -> Self {
        self.assume_lifetime = Some(lifetime);
        self
    }

    /// Sends a DPoP proof (RFC 9449) with every token request and every request it
    /// authorizes, so the server binds the access tokens to `key` (`token_type: DPoP`,
    /// `Authorization: DPoP <token>`). Proofs carry `htm`, `htu` (without query and fragment),
    /// `iat`, a unique `jti` and, on resource requests, `ath`.
    ///
    /// Nonces (RFC 9449 §8, §9): a token endpoint's `400 use_dpop_nonce` and a resource's 401
    /// with a `DPoP` challenge `error="use_dpop_nonce"` both carry a `DPoP-Nonce`; the latest
    /// nonce of each origin is remembered and the request is sent once more with it. Such a 401
    /// neither refreshes the token nor counts toward the 401 cooldown, and a 401 saying
    /// `invalid_dpop_proof` is returned unchanged.
    ///
    /// Redirects: the proof is a header of its own, marked sensitive. tower's `RedirectPolicy`
    /// (client-auth-tower) removes it with `Authorization`; reqwest removes only
    /// `Authorization` on a hop to another origin, so with reqwest build the client with
    /// `client_auth_reqwest::same_origin_redirect_policy`, which follows no such hop.
    ///
    /// ```
    /// # #[cfg(feature = "reqwest")] {
    /// use client_auth::{DpopKey, OAuthProvider};
    ///
    /// let provider = OAuthProvider::client_credentials("https://auth.example.com/token")
    ///     .client_id("my-service")
    ///     .client_secret("s3cret")
    ///     .dpop(DpopKey::generate()?)
    ///     .build()?;
    /// # let _ = provider;
    /// # }
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.jose.dpop = Some(key);
        self
    }

    /// Authenticates the client with a JWT signed by its private key (`private_key_jwt`,
    /// RFC 7523 §2.2): `iss` = `sub` = the client id, `aud` =
    /// [`assertion_audience`](Self::assertion_audience) (default: the issuer when the builder
    /// came from [discovery](crate::ServerMetadata), the token endpoint URL otherwise), a unique
    /// `jti`, valid for a minute.
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    pub fn private_key_jwt(mut self, key: ClientAssertionKey) -> Self {
        self.jose.assertion_key = Some(key);
        self.client_auth = ClientAuth::PrivateKeyJwt;
        self
    }

    /// The `aud` of client assertions ([`ClientAuth::SecretJwt`],
    /// [`private_key_jwt`](Self::private_key_jwt)).
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.jose.audience = Some(audience.into());
        self
    }

    /// Settings from discovery.
    pub(crate) fn discovered(
        mut self,
        issuer: String,
        dpop_algs: Vec<String>,
        allow_http: bool,
    ) -> Self {
        self.issuer = Some(issuer);
        self.dpop_algs = dpop_algs;
        self.allow_http |= allow_http;
        self
    }

    /// Builds the provider. Spawns nothing: no runtime is needed until the first request.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unusable URL, an `http://` URL on a host that is not loopback
    /// without [`allow_http`](Self::allow_http), a missing client id, or a ratio outside `0..=1`;
    /// [`Error::EmptyCredential`] for an access token that is empty or only whitespace.
    pub fn build(self) -> Result<OAuthProvider, Error>
    where
        T: TransportChoice,
    {
        let allow_http = self.allow_http;
        let parse_url = |url: &str, what: &'static str| check_endpoint(url, what, allow_http);
        let token_url = parse_url(&self.token_url, "token URL")?;
        let revocation_url = self
            .revocation_url
            .as_deref()
            .map(|u| parse_url(u, "revocation URL"))
            .transpose()?;
        let client_id = self
            .client_id
            .ok_or(Error::Config("a client id is required".into()))?;
        if self.client_auth == ClientAuth::Assertion && self.client_assertion.is_none() {
            return Err(Error::Config(
                "`ClientAuth::Assertion` needs a source: use `client_assertion(source)`".into(),
            ));
        }
        if self.extra_headers.contains_key(AUTHORIZATION)
            && self.client_auth == ClientAuth::SecretBasic
            && self.client_secret.is_some()
        {
            return Err(Error::Config(
                "a token request header sets Authorization, which client_secret_basic sets \
                 itself: use another client authentication"
                    .into(),
            ));
        }
        if self.invalid_header {
            return Err(Error::Config(
                "a token request header is not a valid header name and value".into(),
            ));
        }
        not_blank(self.access_token.as_ref().map(|(token, _)| token))?;
        let w = &self.windows;
        let ratios = [w.soft_ratio, w.soft_max_ratio, w.hard_ratio, w.jitter];
        if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return Err(Error::Config(
                "window ratios must be between 0 and 1".into(),
            ));
        }
        // A plain-http URL is accepted without `allow_http` only because a loopback request
        // never leaves the machine; a system proxy (`HTTP_PROXY`) would carry it off in clear
        // text, so the default transport then uses no proxy.
        let plain_loopback = !allow_http
            && std::iter::once(&token_url)
                .chain(revocation_url.as_ref())
                .any(|u| u.scheme_str() == Some("http"));
        let transport = match self.transport {
            Some(t) => t,
            None => default_transport(plain_loopback)?,
        };
        #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
        let assertion = self.jose.assertion(
            self.client_auth,
            self.client_secret.as_ref(),
            self.issuer.as_deref(),
            &self.token_url,
        )?;
        #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
        if self.jose.dpop.is_some()
            && !self.dpop_algs.is_empty()
            && !self.dpop_algs.iter().any(|a| a == "ES256")
        {
            return Err(Error::Config(
                "the server's metadata lists no ES256 among its DPoP algorithms".into(),
            ));
        }
        let config = Config {
            token_url,
            revocation_url,
            client_id,
            client_secret: self.client_secret,
            client_auth: self.client_auth,
            grant: self.grant,
            scope: self.scope,
            extra_params: self.extra_params,
            extra_headers: self.extra_headers,
            response_map: self.response_map,
            retry_forbidden: self.retry_forbidden,
            grant_source: self.grant_source,
            subject_token_type: self.subject_token_type,
            client_assertion: self.client_assertion,
            namespace: self.namespace,
            timeout: self.timeout,
            max_body: self.max_body,
            windows: self.windows,
            cooldown: capped(self.cooldown.max(self.cooldown_initial)),
            cooldown_initial: capped(self.cooldown_initial),
            backoff_initial: capped(self.backoff_initial),
            backoff_max: capped(self.backoff_max.max(self.backoff_initial)),
            assume_lifetime: self.assume_lifetime,
            store_attempts: 3,
            store_timeout: capped(self.store_timeout),
            lease_ttl: capped(self.lease_ttl).max(Duration::from_millis(30)),
            min_lifetime: MIN_LIFETIME,
            metrics: crate::metrics::OAuthMetrics::new(&self.metrics_name, self.grant.name()),
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            dpop: self.jose.dpop.map(|key| Arc::new(dpop::Dpop::new(key))),
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            assertion,
        };
        let engine = Engine::new(
            config,
            transport,
            self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            self.refresh_token,
            self.access_token,
        )?;
        Ok(OAuthProvider {
            engine: Arc::new(engine),
        })
    }
}

/// `url` as a token, revocation, issuer or metadata URL: absolute, `https://`, or `http://` on
/// loopback or with `allow_http`.
pub(crate) fn check_endpoint(url: &str, what: &str, allow_http: bool) -> Result<Uri, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|_| Error::Config(format!("the {what} is not a valid URL").into()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(uri),
        (Some("http"), Some(host)) if allow_http || is_loopback(host) => Ok(uri),
        (Some("http"), Some(_)) => Err(Error::Config(
            format!(
                "the {what} is plain http, which would send the client secret and \
                 refresh token in clear text: use https, or call `allow_http(true)`"
            )
            .into(),
        )),
        _ => Err(Error::Config(
            format!("the {what} must be an absolute http(s) URL").into(),
        )),
    }
}

#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
impl Jose {
    /// What signs client assertions, and their audience, for `client_auth`.
    fn assertion(
        &self,
        client_auth: ClientAuth,
        secret: Option<&ClientSecret>,
        issuer: Option<&str>,
        token_url: &str,
    ) -> Result<Option<(assertion::AssertionSigner, String)>, Error> {
        let signer = match client_auth {
            ClientAuth::PrivateKeyJwt => match &self.assertion_key {
                Some(key) => assertion::AssertionSigner::PrivateKey(key.clone()),
                None => {
                    return Err(Error::Config(
                        "`private_key_jwt` needs a key: use `private_key_jwt(key)`".into(),
                    ));
                }
            },
            ClientAuth::SecretJwt => match secret {
                Some(secret) => assertion::AssertionSigner::Secret(
                    jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes()),
                ),
                None => {
                    return Err(Error::Config(
                        "`client_secret_jwt` needs a client secret".into(),
                    ));
                }
            },
            _ => return Ok(None),
        };
        let audience = self
            .audience
            .clone()
            .or_else(|| issuer.map(str::to_owned))
            .unwrap_or_else(|| token_url.to_owned());
        Ok(Some((signer, audience)))
    }
}

/// An access token handed in must carry something: `Bearer` and whitespace is no credential.
fn not_blank(token: Option<&AccessToken>) -> Result<(), Error> {
    match token {
        Some(token) if token.expose_secret().trim().is_empty() => Err(Error::EmptyCredential),
        _ => Ok(()),
    }
}

/// Whether `host` (as [`Uri::host`] gives it) never leaves the machine: `localhost` or a
/// loopback address.
fn is_loopback(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => {
            let name = bare.strip_suffix('.').unwrap_or(bare);
            name.eq_ignore_ascii_case("localhost")
        }
    }
}

/// Token lifetimes shorter than this (`expires_in: 0`) are held for a growing while (the
/// backoff's steps) instead of asking the token endpoint again for every request.
const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest delay any setting can ask for: keeps all time arithmetic far from overflow.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

fn capped(d: Duration) -> Duration {
    d.min(MAX_DELAY)
}

#[cfg(feature = "reqwest")]
fn default_transport(plain_loopback: bool) -> Result<Arc<dyn TokenTransport>, Error> {
    if plain_loopback {
        return Ok(Arc::new(ReqwestTransport::from_client_builder(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy(),
        )?));
    }
    Ok(Arc::new(ReqwestTransport::new()?))
}

/// Unreachable: without feature `reqwest`, only [`SuppliedTransport`] builders can be built.
#[cfg(not(feature = "reqwest"))]
fn default_transport(_plain_loopback: bool) -> Result<Arc<dyn TokenTransport>, Error> {
    Err(Error::Config("no token transport".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_contract() {
        let w = Windows::default();
        assert_eq!(
            w.for_lifetime(Duration::from_secs(3600)),
            (Duration::from_secs(360), Duration::from_secs(10))
        );
        assert_eq!(
            w.for_lifetime(Duration::from_secs(300)),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        assert_eq!(
            w.for_lifetime(Duration::from_secs(60)),
            (Duration::from_secs(30), Duration::from_secs(10))
        );
        assert_eq!(
            w.for_lifetime(Duration::from_secs(2)),
            (Duration::from_secs(1), Duration::from_millis(500))
        );
    }

    #[test]
    fn client_secret_basic_form_urlencodes_before_base64() {
        let config = test_config(Some("s p:a+c/e"), ClientAuth::SecretBasic);
        let req = config
            .token_request(Some(&RefreshToken::new("rt")), &Inputs::default())
            .unwrap();
        let auth = req.headers()[AUTHORIZATION].to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"my+client%3A1:s+p%3Aa%2Bc%2Fe");
        assert!(req.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            req.body().as_ref(),
            b"grant_type=refresh_token&refresh_token=rt&scope=a+b"
        );
    }

    #[test]
    fn client_secret_post_and_public_clients_put_the_id_in_the_body() {
        let post = test_config(Some("sec"), ClientAuth::SecretPost);
        let req = post.token_request(None, &Inputs::default()).unwrap();
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert!(
            String::from_utf8_lossy(req.body())
                .ends_with("client_id=my+client%3A1&client_secret=sec")
        );
        let public = test_config(None, ClientAuth::SecretBasic);
        let req = public.token_request(None, &Inputs::default()).unwrap();
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert!(String::from_utf8_lossy(req.body()).ends_with("client_id=my+client%3A1"));
    }

    fn test_config(secret: Option<&str>, auth: ClientAuth) -> Config {
        Config {
            token_url: Uri::from_static("https://auth.example.com/token"),
            revocation_url: None,
            client_id: "my client:1".into(),
            client_secret: secret.map(ClientSecret::new),
            client_auth: auth,
            grant: GrantKind::RefreshToken,
            scope: Some("a b".into()),
            extra_params: vec![],
            extra_headers: http::HeaderMap::new(),
            response_map: None,
            retry_forbidden: false,
            grant_source: None,
            subject_token_type: JWT_TOKEN_TYPE.to_owned(),
            client_assertion: None,
            namespace: "default".into(),
            timeout: Duration::from_secs(10),
            max_body: 1024,
            windows: Windows::default(),
            cooldown: Duration::from_secs(30),
            cooldown_initial: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            assume_lifetime: None,
            store_attempts: 3,
            store_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(6),
            min_lifetime: MIN_LIFETIME,
            metrics: crate::metrics::OAuthMetrics::new("default", "refresh_token"),
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            dpop: None,
            #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
            assertion: None,
        }
    }
}
