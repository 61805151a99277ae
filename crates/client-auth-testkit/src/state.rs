//! Server state: registered clients, grants, tokens, clock, faults and counters.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::config::{AnswerShape, ClientRegistration, ResourceBinding, ServerConfig};
use crate::fault::Fault;
use crate::jwt;

/// Tokens minted by [`TestServer::issue_grant`](crate::TestServer::issue_grant).
///
/// `Debug` shows only the first characters of each token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// The access token (`at_…`).
    pub access_token: String,
    /// The refresh token (`rt_…`).
    pub refresh_token: String,
    /// Lifetime of the access token in whole seconds, as a token response would say.
    pub expires_in: u64,
}

fn redacted(token: &str) -> String {
    let prefix: String = token.chars().take(6).collect();
    format!("{prefix}…")
}

impl fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &redacted(&self.access_token))
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// A snapshot of the server's counters, from [`TestServer::stats`](crate::TestServer::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests that reached the token endpoint, faults included.
    pub token_calls: u64,
    /// Token requests with `grant_type=refresh_token` (handled normally, not faults).
    pub refresh_grants: u64,
    /// Token requests with `grant_type=client_credentials` (handled normally, not faults).
    pub client_credentials_grants: u64,
    /// Token requests answered 200 with new tokens.
    pub token_successes: u64,
    /// Token-endpoint error answers by OAuth error code (faults not included).
    pub token_errors: BTreeMap<String, u64>,
    /// Token requests answered with a [`Fault`].
    pub faults_served: u64,
    /// Requests to the revocation endpoint that passed client authentication.
    pub revocations: u64,
    /// Answers of the protected API (`/api/*`) by status code.
    pub resource_calls: BTreeMap<u16, u64>,
    /// The largest number of token-endpoint requests that were in flight at the same time.
    pub max_concurrent_token_requests: u64,
    /// Token requests with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (handled
    /// normally, not faults).
    pub jwt_bearer_grants: u64,
    /// Token requests with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`
    /// (handled normally, not faults).
    pub token_exchange_grants: u64,
    /// Token requests handled normally (not faults) by their `resource` parameter; requests
    /// without one are not counted here.
    pub token_calls_by_resource: BTreeMap<String, u64>,
    /// Token requests handled normally (not faults) by their `audience` parameter; requests
    /// without one are not counted here.
    pub token_calls_by_audience: BTreeMap<String, u64>,
    /// Requests to `/api/r/{name}` refused because their credential was not issued for `name`
    /// ([`ServerConfig::resource_routes`](crate::ServerConfig::resource_routes)).
    pub resource_mismatches: u64,
    /// `401 insufficient_claims` answers of `/api/claims`
    /// ([`ServerConfig::claims_challenge`](crate::ServerConfig::claims_challenge)).
    pub claims_challenges: u64,
    /// Token requests handled normally (not faults) that carried a `claims` parameter.
    pub claims_token_requests: u64,
}

/// A request that reached the token endpoint, from
/// [`TestServer::token_requests`](crate::TestServer::token_requests).
///
/// It holds what was sent, secrets included, for tests to assert on; `Debug` shows parameter
/// names and the values of `grant_type`, `scope`, `resource`, `audience`, `claims`,
/// `client_id`, `subject_token_type` and `client_assertion_type` only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenTokenRequest {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// The form parameters of the body, in order (repeated ones included; empty for a body
    /// that is not a form).
    pub params: Vec<(String, String)>,
    /// The request headers.
    pub headers: HeaderMap,
}

impl SeenTokenRequest {
    /// The first value of the form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of header `name`, if it is there and is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Parameters whose values `SeenTokenRequest`'s `Debug` shows.
const SHOWN_PARAMS: [&str; 8] = [
    "grant_type",
    "scope",
    "resource",
    "audience",
    "claims",
    "client_id",
    "subject_token_type",
    "client_assertion_type",
];

impl fmt::Debug for SeenTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Params<'a>(&'a [(String, String)]);
        impl fmt::Debug for Params<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        let shown = if SHOWN_PARAMS.contains(&k.as_str()) {
                            v.as_str()
                        } else {
                            "…"
                        };
                        (k, shown)
                    }))
                    .finish()
            }
        }
        f.debug_struct("SeenTokenRequest")
            .field("method", &self.method)
            .field("params", &Params(&self.params))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a token request asked its access token for, remembered with it.
#[derive(Debug, Clone, Default)]
struct Target {
    resource: Option<String>,
    audience: Option<String>,
    claims: Option<String>,
}

impl Target {
    fn of(params: &HashMap<String, String>) -> Self {
        Self {
            resource: params.get("resource").cloned(),
            audience: params.get("audience").cloned(),
            claims: params.get("claims").cloned(),
        }
    }
}

/// A freshly minted access token.
struct Minted {
    access_token: String,
    /// Lifetime in whole seconds, rounded up, at least 1.
    expires_in: u64,
    /// Expiry as UNIX seconds on the server's clock, rounded up.
    expires_at: u64,
}

/// A request seen by the protected API (`/api/*`) or the redirect endpoint (`/redirect*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The request method, e.g. `GET`.
    pub method: String,
    /// Path and query of the request target.
    pub path_and_query: String,
    /// The `Authorization` header, if any (lossy UTF-8).
    pub authorization: Option<String>,
    /// The `Host` header, if any.
    pub host: Option<String>,
}

struct Grant {
    subject: String,
    client_id: String,
    scope: Option<String>,
    revoked: bool,
}

struct RefreshRecord {
    grant: u64,
    used: bool,
}

struct AccessRecord {
    subject: String,
    grant: Option<u64>,
    expires_at: Instant,
    revoked: bool,
    target: Target,
}

struct Inner {
    access_token_lifetime: Duration,
    clock_offset: Duration,
    next_grant: u64,
    grants: HashMap<u64, Grant>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    access_tokens: HashMap<String, AccessRecord>,
    faults: VecDeque<Fault>,
    persistent_fault: Option<Fault>,
    reject_all: bool,
    in_flight: u64,
    stats: Stats,
    seen: Vec<SeenRequest>,
    token_requests: Vec<SeenTokenRequest>,
}

/// Shared state of one server.
pub(crate) struct State {
    clients: Vec<ClientRegistration>,
    api_keys: HashSet<String>,
    customer_keys: HashMap<String, Vec<u8>>,
    rotate_refresh_tokens: bool,
    include_expires_in: bool,
    pub(crate) token_delay: Duration,
    answer_shape: AnswerShape,
    resource_routes: Option<ResourceBinding>,
    claims_challenge: Option<String>,
    assertions: Vec<String>,
    subject_tokens: Vec<String>,
    client_assertions: Vec<(String, String)>,
    echo_rejected_assertions: bool,
    /// `http://127.0.0.1:PORT`, the base of resource indicators.
    base_url: String,
    inner: Mutex<Inner>,
}

/// An answer of the token or revocation endpoint, before it becomes HTTP.
#[derive(Debug)]
pub(crate) struct EndpointReply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    /// Add `WWW-Authenticate: Basic realm="token"` (invalid_client).
    pub(crate) basic_challenge: bool,
}

impl EndpointReply {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            basic_challenge: false,
        }
    }

    fn error(status: StatusCode, code: &str, description: &str) -> Self {
        Self {
            status,
            body: json!({ "error": code, "error_description": description }),
            basic_challenge: status == StatusCode::UNAUTHORIZED,
        }
    }

    fn bad_request(code: &str, description: &str) -> Self {
        Self::error(StatusCode::BAD_REQUEST, code, description)
    }

    fn invalid_client() -> Self {
        Self::error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    fn error_code(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

/// How a protected-API request was authorized.
#[derive(Debug)]
pub(crate) struct Authorized {
    pub(crate) kind: &'static str,
    pub(crate) subject: Value,
    /// The `resource` the bearer token was issued for.
    pub(crate) resource: Option<String>,
    /// The `audience` the bearer token was issued for.
    pub(crate) audience: Option<String>,
    /// The `claims` the bearer token's request carried.
    pub(crate) claims: Option<String>,
}

impl Authorized {
    fn other(kind: &'static str, subject: Value) -> Self {
        Self {
            kind,
            subject,
            resource: None,
            audience: None,
            claims: None,
        }
    }
}

/// A client that passed authentication at the token or revocation endpoint.
#[derive(Debug, Clone, Copy)]
struct AuthenticatedClient<'a> {
    id: &'a str,
    /// Authenticated by a secret or an assertion, not a public client.
    confidential: bool,
}

/// `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of token exchange (RFC 8693 §2.1).
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
const JWT_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `issued_token_type` of a token exchange's access token (RFC 8693 §3).
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why a protected-API request was not authorized.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthorized {
    /// No `Authorization` header at all.
    Missing,
    /// Credentials present but not acceptable.
    Invalid,
}

/// Keeps the in-flight gauge of the token endpoint up while alive.
pub(crate) struct InFlightGuard(Arc<State>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }
}

fn random_token(prefix: &str) -> String {
    let mut token = String::with_capacity(prefix.len() + 32);
    token.push_str(prefix);
    token.extend(std::iter::repeat_with(fastrand::alphanumeric).take(32));
    token
}

/// `expires_in` for a lifetime: whole seconds rounded up, at least 1.
pub(crate) fn expires_in_secs(lifetime: Duration) -> u64 {
    (lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)).max(1)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses a form body; `None` when a parameter appears twice (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.insert(k.into_owned(), v.into_owned()).is_some() {
            return None;
        }
    }
    Some(params)
}

/// Whether `resource` can be an RFC 8707 resource indicator here: an absolute `http(s)` URI
/// with a host and without a fragment.
fn is_resource_indicator(resource: &str) -> bool {
    let Some((scheme, rest)) = resource.split_once("://") else {
        return false;
    };
    let host_present = rest
        .split(['/', '?'])
        .next()
        .is_some_and(|authority| !authority.is_empty());
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && host_present
        && !resource.contains('#')
        && !resource.chars().any(char::is_whitespace)
}

/// Client credentials presented with a request: `(client_id, secret)`.
fn client_credentials(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<(String, Option<String>), EndpointReply> {
    let basic = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| EndpointReply::invalid_client())?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(EndpointReply::invalid_client());
            }
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(EndpointReply::invalid_client)?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(EndpointReply::invalid_client)?;
            let id = form_decode(id).ok_or_else(EndpointReply::invalid_client)?;
            let secret = form_decode(secret).ok_or_else(EndpointReply::invalid_client)?;
            Some((id, secret))
        }
    };
    match basic {
        Some((id, secret)) => {
            if params.contains_key("client_secret") {
                return Err(EndpointReply::bad_request(
                    "invalid_request",
                    "more than one client authentication method used",
                ));
            }
            if params
                .get("client_id")
                .is_some_and(|body_id| *body_id != id)
            {
                return Err(EndpointReply::bad_request(
                    "invalid_request",
                    "client_id does not match the Authorization header",
                ));
            }
            Ok((id, Some(secret)))
        }
        None => match params.get("client_id") {
            Some(id) => Ok((id.clone(), params.get("client_secret").cloned())),
            None => Err(EndpointReply::invalid_client()),
        },
    }
}

impl State {
    /// The state of a server reached at `base_url` (`http://127.0.0.1:PORT`).
    pub(crate) fn new(config: ServerConfig, base_url: String) -> Self {
        Self {
            clients: config.clients,
            api_keys: config.api_keys.into_iter().collect(),
            customer_keys: config.customer_keys.into_iter().collect(),
            rotate_refresh_tokens: config.rotate_refresh_tokens,
            include_expires_in: config.include_expires_in,
            token_delay: config.token_delay,
            answer_shape: config.answer_shape,
            resource_routes: config.resource_routes,
            claims_challenge: config.claims_challenge,
            assertions: config.assertions,
            subject_tokens: config.subject_tokens,
            client_assertions: config.client_assertions,
            echo_rejected_assertions: config.echo_rejected_assertions,
            base_url,
            inner: Mutex::new(Inner {
                access_token_lifetime: config.access_token_lifetime,
                clock_offset: Duration::ZERO,
                next_grant: 1,
                grants: HashMap::new(),
                refresh_tokens: HashMap::new(),
                access_tokens: HashMap::new(),
                faults: VecDeque::new(),
                persistent_fault: None,
                reject_all: false,
                in_flight: 0,
                stats: Stats::default(),
                seen: Vec::new(),
                token_requests: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn first_client(&self) -> Option<&ClientRegistration> {
        self.clients.first()
    }

    // ----- clock -----

    pub(crate) fn advance(&self, by: Duration) {
        let mut inner = self.lock();
        inner.clock_offset = inner.clock_offset.saturating_add(by);
    }

    fn now(inner: &Inner) -> Instant {
        Instant::now() + inner.clock_offset
    }

    fn now_unix(inner: &Inner) -> f64 {
        Self::since_epoch(inner).as_secs_f64()
    }

    /// The server clock's time since the UNIX epoch.
    fn since_epoch(inner: &Inner) -> Duration {
        (SystemTime::now() + inner.clock_offset)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }

    pub(crate) fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.lock().access_token_lifetime = lifetime;
    }

    // ----- tokens -----

    fn mint_access(inner: &mut Inner, subject: &str, grant: Option<u64>, target: Target) -> Minted {
        let token = random_token("at_");
        let lifetime = inner.access_token_lifetime;
        let expires_at = Self::now(inner) + lifetime;
        let expires_at_unix = expires_in_secs(Self::since_epoch(inner).saturating_add(lifetime));
        inner.access_tokens.insert(
            token.clone(),
            AccessRecord {
                subject: subject.to_owned(),
                grant,
                expires_at,
                revoked: false,
                target,
            },
        );
        Minted {
            access_token: token,
            expires_in: expires_in_secs(lifetime),
            expires_at: expires_at_unix,
        }
    }

    fn mint_refresh(inner: &mut Inner, grant: u64) -> String {
        let token = random_token("rt_");
        inner
            .refresh_tokens
            .insert(token.clone(), RefreshRecord { grant, used: false });
        token
    }

    pub(crate) fn issue_grant(&self, subject: &str, scope: Option<&str>) -> IssuedTokens {
        let client_id = self
            .first_client()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let mut inner = self.lock();
        let id = inner.next_grant;
        inner.next_grant += 1;
        inner.grants.insert(
            id,
            Grant {
                subject: subject.to_owned(),
                client_id,
                scope: scope.map(str::to_owned),
                revoked: false,
            },
        );
        let minted = Self::mint_access(&mut inner, subject, Some(id), Target::default());
        let refresh_token = Self::mint_refresh(&mut inner, id);
        IssuedTokens {
            access_token: minted.access_token,
            refresh_token,
            expires_in: minted.expires_in,
        }
    }

    /// The body of a successful token answer, in the configured shape.
    fn success_body(
        &self,
        minted: Minted,
        refresh_token: Option<String>,
        scope: Option<&str>,
        issued_token_type: Option<&str>,
    ) -> Value {
        let mut body = json!({ "access_token": minted.access_token });
        if self.answer_shape == AnswerShape::Standard {
            body["token_type"] = json!("Bearer");
        }
        if self.include_expires_in {
            match self.answer_shape {
                AnswerShape::Standard => body["expires_in"] = json!(minted.expires_in),
                AnswerShape::Nested => body["expires_at"] = json!(minted.expires_at),
            }
        }
        if let Some(rt) = refresh_token {
            body["refresh_token"] = json!(rt);
        }
        if let Some(scope) = scope {
            body["scope"] = json!(scope);
        }
        if let Some(issued) = issued_token_type {
            body["issued_token_type"] = json!(issued);
        }
        match self.answer_shape {
            AnswerShape::Standard => body,
            AnswerShape::Nested => json!({ "data": body }),
        }
    }

    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
    ) -> Result<AuthenticatedClient<'_>, EndpointReply> {
        if params.contains_key("client_assertion") || params.contains_key("client_assertion_type") {
            return self.authenticate_by_assertion(headers, params);
        }
        let (id, secret) = client_credentials(headers, params)?;
        let client = self
            .clients
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(EndpointReply::invalid_client)?;
        let presented = secret.filter(|s| !s.is_empty());
        if client.secret != presented {
            return Err(EndpointReply::invalid_client());
        }
        Ok(AuthenticatedClient {
            id: &client.id,
            confidential: client.secret.is_some(),
        })
    }

    /// Client authentication by `client_assertion` (RFC 7523 §2.2), against the configured
    /// assertions.
    fn authenticate_by_assertion(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
    ) -> Result<AuthenticatedClient<'_>, EndpointReply> {
        if headers.contains_key(http::header::AUTHORIZATION) || params.contains_key("client_secret")
        {
            return Err(EndpointReply::bad_request(
                "invalid_request",
                "more than one client authentication method used",
            ));
        }
        if params.get("client_assertion_type").map(String::as_str) != Some(JWT_CLIENT_ASSERTION) {
            return Err(EndpointReply::error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unsupported client_assertion_type",
            ));
        }
        let Some(presented) = params.get("client_assertion") else {
            return Err(EndpointReply::error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "missing client_assertion",
            ));
        };
        let claimed_id = params.get("client_id");
        self.client_assertions
            .iter()
            .find(|(id, assertion)| assertion == presented && claimed_id.is_none_or(|c| c == id))
            .map(|(id, _)| AuthenticatedClient {
                id,
                confidential: true,
            })
            .ok_or_else(|| {
                EndpointReply::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    &self.rejection("client assertion not accepted", presented),
                )
            })
    }

    /// The `error_description` of a rejected assertion: quoting it only when configured to.
    fn rejection(&self, what: &str, presented: &str) -> String {
        if self.echo_rejected_assertions {
            format!("{what}: {presented}")
        } else {
            what.to_owned()
        }
    }

    /// Handles one token request normally (no fault).
    pub(crate) fn token_request(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        body: &[u8],
    ) -> EndpointReply {
        let reply = self.token_request_inner(method, headers, body);
        let mut inner = self.lock();
        match reply.error_code() {
            Some(code) => *inner.stats.token_errors.entry(code.to_owned()).or_default() += 1,
            None => inner.stats.token_successes += 1,
        }
        reply
    }

    fn token_request_inner(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        body: &[u8],
    ) -> EndpointReply {
        let params = match form_post(
            method,
            headers,
            body,
            "the token endpoint accepts POST only",
        ) {
            Ok(params) => params,
            Err(reply) => return reply,
        };
        let grant_type = params.get("grant_type").map(String::as_str);
        let target = Target::of(&params);
        {
            let mut inner = self.lock();
            match grant_type {
                Some("refresh_token") => inner.stats.refresh_grants += 1,
                Some("client_credentials") => inner.stats.client_credentials_grants += 1,
                Some(JWT_BEARER_GRANT) => inner.stats.jwt_bearer_grants += 1,
                Some(TOKEN_EXCHANGE_GRANT) => inner.stats.token_exchange_grants += 1,
                _ => {}
            }
            let stats = &mut inner.stats;
            if let Some(resource) = &target.resource {
                *stats
                    .token_calls_by_resource
                    .entry(resource.clone())
                    .or_default() += 1;
            }
            if let Some(audience) = &target.audience {
                *stats
                    .token_calls_by_audience
                    .entry(audience.clone())
                    .or_default() += 1;
            }
            if target.claims.is_some() {
                stats.claims_token_requests += 1;
            }
        }
        if self.resource_routes.is_some()
            && let Some(resource) = &target.resource
            && !is_resource_indicator(resource)
        {
            return EndpointReply::bad_request(
                "invalid_target",
                "resource must be an absolute http(s) URI without a fragment",
            );
        }
        let client = match self.authenticate_client(headers, &params) {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let assertion_grants = || {
            let mut supported = String::from("refresh_token, client_credentials");
            if !self.assertions.is_empty() {
                supported.push_str(", ");
                supported.push_str(JWT_BEARER_GRANT);
            }
            if !self.subject_tokens.is_empty() {
                supported.push_str(", ");
                supported.push_str(TOKEN_EXCHANGE_GRANT);
            }
            supported
        };
        match grant_type {
            None => EndpointReply::bad_request("invalid_request", "missing grant_type"),
            Some("client_credentials") => {
                if !client.confidential {
                    return EndpointReply::bad_request(
                        "unauthorized_client",
                        "public clients cannot use client_credentials",
                    );
                }
                self.mint_for_client(client, &params, target, None)
            }
            Some("refresh_token") => self.refresh(client, &params, target),
            Some(JWT_BEARER_GRANT) if !self.assertions.is_empty() => {
                let Some(assertion) = params.get("assertion") else {
                    return EndpointReply::bad_request("invalid_request", "missing assertion");
                };
                if !self.assertions.contains(assertion) {
                    return EndpointReply::bad_request(
                        "invalid_grant",
                        &self.rejection("assertion not accepted", assertion),
                    );
                }
                self.mint_for_client(client, &params, target, None)
            }
            Some(TOKEN_EXCHANGE_GRANT) if !self.subject_tokens.is_empty() => {
                let (Some(subject_token), Some(_)) = (
                    params.get("subject_token"),
                    params.get("subject_token_type"),
                ) else {
                    return EndpointReply::bad_request(
                        "invalid_request",
                        "missing subject_token or subject_token_type",
                    );
                };
                if !self.subject_tokens.contains(subject_token) {
                    return EndpointReply::bad_request(
                        "invalid_grant",
                        &self.rejection("subject token not accepted", subject_token),
                    );
                }
                self.mint_for_client(client, &params, target, Some(ACCESS_TOKEN_TYPE))
            }
            Some(_) => EndpointReply::bad_request(
                "unsupported_grant_type",
                &format!("supported: {}", assertion_grants()),
            ),
        }
    }

    /// An access token whose subject is the client, without a refresh token.
    fn mint_for_client(
        &self,
        client: AuthenticatedClient<'_>,
        params: &HashMap<String, String>,
        target: Target,
        issued_token_type: Option<&str>,
    ) -> EndpointReply {
        let scope = params.get("scope").map(String::as_str);
        let mut inner = self.lock();
        let minted = Self::mint_access(&mut inner, client.id, None, target);
        drop(inner);
        EndpointReply::ok(self.success_body(minted, None, scope, issued_token_type))
    }

    fn refresh(
        &self,
        client: AuthenticatedClient<'_>,
        params: &HashMap<String, String>,
        target: Target,
    ) -> EndpointReply {
        let Some(presented) = params.get("refresh_token") else {
            return EndpointReply::bad_request("invalid_request", "missing refresh_token");
        };
        let invalid_grant = |why: &str| EndpointReply::bad_request("invalid_grant", why);
        let mut inner = self.lock();
        let Some(record) = inner.refresh_tokens.get(presented) else {
            return invalid_grant("unknown refresh token");
        };
        let (grant_id, used) = (record.grant, record.used);
        let Some(grant) = inner.grants.get_mut(&grant_id) else {
            return invalid_grant("unknown grant");
        };
        if grant.client_id != client.id {
            return invalid_grant("refresh token was issued to another client");
        }
        if grant.revoked {
            return invalid_grant("grant revoked");
        }
        if used {
            // RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the grant.
            grant.revoked = true;
            return invalid_grant("refresh token reused; grant revoked");
        }
        let scope = match params.get("scope") {
            None => grant.scope.clone(),
            Some(requested) => {
                if let Some(granted) = &grant.scope {
                    let granted: HashSet<&str> = granted.split(' ').collect();
                    if !requested.split(' ').all(|s| granted.contains(s)) {
                        return EndpointReply::bad_request(
                            "invalid_scope",
                            "requested scope exceeds the grant",
                        );
                    }
                }
                Some(requested.clone())
            }
        };
        let subject = grant.subject.clone();
        let minted = Self::mint_access(&mut inner, &subject, Some(grant_id), target);
        let new_refresh = if self.rotate_refresh_tokens {
            if let Some(record) = inner.refresh_tokens.get_mut(presented) {
                record.used = true;
            }
            Some(Self::mint_refresh(&mut inner, grant_id))
        } else {
            None
        };
        drop(inner);
        EndpointReply::ok(self.success_body(minted, new_refresh, scope.as_deref(), None))
    }

    /// Handles one RFC 7009 revocation request.
    pub(crate) fn revocation_request(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        body: &[u8],
    ) -> EndpointReply {
        let params = match form_post(
            method,
            headers,
            body,
            "the revocation endpoint accepts POST only",
        ) {
            Ok(params) => params,
            Err(reply) => return reply,
        };
        let client = match self.authenticate_client(headers, &params) {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let Some(token) = params.get("token") else {
            return EndpointReply::bad_request("invalid_request", "missing token");
        };
        let mut inner = self.lock();
        inner.stats.revocations += 1;
        if let Some(grant_id) = inner.refresh_tokens.get(token).map(|r| r.grant) {
            if let Some(grant) = inner.grants.get_mut(&grant_id)
                && grant.client_id == client.id
            {
                grant.revoked = true;
            }
        } else if let Some(access) = inner.access_tokens.get(token) {
            let owner = match access.grant {
                Some(g) => inner.grants.get(&g).map(|g| g.client_id.as_str()),
                None => Some(access.subject.as_str()),
            };
            if owner == Some(client.id)
                && let Some(access) = inner.access_tokens.get_mut(token)
            {
                access.revoked = true;
            }
        }
        EndpointReply::ok(json!({}))
    }

    // ----- programmatic revocation -----

    pub(crate) fn revoke_access_token(&self, token: &str) {
        if let Some(record) = self.lock().access_tokens.get_mut(token) {
            record.revoked = true;
        }
    }

    pub(crate) fn revoke_all_access_tokens(&self) {
        for record in self.lock().access_tokens.values_mut() {
            record.revoked = true;
        }
    }

    pub(crate) fn revoke_grant(&self, refresh_token: &str) {
        let mut inner = self.lock();
        if let Some(grant_id) = inner.refresh_tokens.get(refresh_token).map(|r| r.grant)
            && let Some(grant) = inner.grants.get_mut(&grant_id)
        {
            grant.revoked = true;
        }
    }

    pub(crate) fn revoke_all_grants(&self) {
        for grant in self.lock().grants.values_mut() {
            grant.revoked = true;
        }
    }

    pub(crate) fn reject_all_tokens(&self, on: bool) {
        self.lock().reject_all = on;
    }

    // ----- protected resource -----

    /// Checks the `Authorization` header of a protected-API request.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<Authorized, Unauthorized> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Unauthorized::Missing)?;
        let value = value.to_str().map_err(|_| Unauthorized::Invalid)?;
        let (scheme, credential) = value.split_once(' ').ok_or(Unauthorized::Invalid)?;
        let credential = credential.trim();
        let inner = self.lock();
        if inner.reject_all {
            return Err(Unauthorized::Invalid);
        }
        if scheme.eq_ignore_ascii_case("token") {
            return if self.api_keys.contains(credential) {
                Ok(Authorized::other("api_key", Value::Null))
            } else {
                Err(Unauthorized::Invalid)
            };
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthorized::Invalid);
        }
        if let Some(record) = inner.access_tokens.get(credential) {
            let grant_ok = record
                .grant
                .is_none_or(|g| inner.grants.get(&g).is_some_and(|g| !g.revoked));
            return if !record.revoked && grant_ok && Self::now(&inner) < record.expires_at {
                Ok(Authorized {
                    kind: "bearer",
                    subject: Value::String(record.subject.clone()),
                    resource: record.target.resource.clone(),
                    audience: record.target.audience.clone(),
                    claims: record.target.claims.clone(),
                })
            } else {
                Err(Unauthorized::Invalid)
            };
        }
        match jwt::verify(credential, &self.customer_keys, Self::now_unix(&inner)) {
            Ok(subject) => Ok(Authorized::other("customer_jwt", subject)),
            Err(why) => {
                tracing::debug!(?why, "customer JWT rejected");
                Err(Unauthorized::Invalid)
            }
        }
    }

    /// For a per-resource route `/api/r/{name}…` while
    /// [`ServerConfig::resource_routes`] is on: whether `authorized` was issued for `name`
    /// (counting a mismatch). `None` for every other path or with the routes off.
    pub(crate) fn resource_route_allows(
        &self,
        path: &str,
        authorized: &Authorized,
    ) -> Option<bool> {
        let binding = self.resource_routes?;
        let rest = path.strip_prefix("/api/r/")?;
        let name = rest.split('/').next().unwrap_or_default();
        let allowed = !name.is_empty()
            && match binding {
                ResourceBinding::Resource => {
                    authorized.resource.as_deref() == Some(self.resource_indicator(name).as_str())
                }
                ResourceBinding::Audience => authorized.audience.as_deref() == Some(name),
            };
        if !allowed {
            self.lock().stats.resource_mismatches += 1;
        }
        Some(allowed)
    }

    /// The RFC 8707 resource indicator of the per-resource route `name`.
    pub(crate) fn resource_indicator(&self, name: &str) -> String {
        format!("{}/r/{name}", self.base_url)
    }

    /// For `/api/claims` while [`ServerConfig::claims_challenge`] is on: `None` when
    /// `authorized` carries the claims, the challenge's base64 `claims` when it does not
    /// (counting the challenge). Always `None` with the challenge off or on another path.
    pub(crate) fn claims_challenge(&self, path: &str, authorized: &Authorized) -> Option<String> {
        let wanted = self.claims_challenge.as_deref()?;
        if path != "/api/claims" {
            return None;
        }
        if authorized
            .claims
            .as_deref()
            .is_some_and(|claims| same_claims(claims, wanted))
        {
            return None;
        }
        self.lock().stats.claims_challenges += 1;
        use base64::Engine as _;
        Some(base64::engine::general_purpose::STANDARD.encode(wanted))
    }

    // ----- faults -----

    pub(crate) fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        self.lock().persistent_fault = fault;
    }

    /// Counts a token-endpoint request, raises the in-flight gauge, and takes the fault to
    /// serve instead of normal handling, if any.
    pub(crate) fn enter_token_endpoint(self: &Arc<Self>) -> (InFlightGuard, Option<Fault>) {
        let mut inner = self.lock();
        inner.stats.token_calls += 1;
        inner.in_flight += 1;
        inner.stats.max_concurrent_token_requests = inner
            .stats
            .max_concurrent_token_requests
            .max(inner.in_flight);
        let fault = match inner.faults.pop_front() {
            Some(fault) => Some(fault),
            None => inner.persistent_fault.clone(),
        };
        if fault.is_some() {
            inner.stats.faults_served += 1;
        }
        drop(inner);
        (InFlightGuard(Arc::clone(self)), fault)
    }

    // ----- records -----

    pub(crate) fn record_seen(&self, seen: SeenRequest) {
        self.lock().seen.push(seen);
    }

    pub(crate) fn record_token_request(
        &self,
        method: &http::Method,
        headers: &HeaderMap,
        body: &[u8],
    ) {
        let params = if check_form_content_type(headers).is_ok() {
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        } else {
            Vec::new()
        };
        self.lock().token_requests.push(SeenTokenRequest {
            method: method.to_string(),
            params,
            headers: headers.clone(),
        });
    }

    pub(crate) fn token_requests(&self) -> Vec<SeenTokenRequest> {
        self.lock().token_requests.clone()
    }

    pub(crate) fn record_resource_status(&self, status: StatusCode) {
        *self
            .lock()
            .stats
            .resource_calls
            .entry(status.as_u16())
            .or_default() += 1;
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub(crate) fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = Stats {
            max_concurrent_token_requests: inner.in_flight,
            ..Stats::default()
        };
        inner.seen.clear();
        inner.token_requests.clear();
    }

    pub(crate) fn seen_requests(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }
}

/// Whether two `claims` values say the same: equal as JSON values when both parse, equal as
/// text otherwise.
fn same_claims(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The shared preamble of the form endpoints: POST only, a form content type, no repeated
/// parameter.
fn form_post(
    method: &http::Method,
    headers: &HeaderMap,
    body: &[u8],
    post_only: &'static str,
) -> Result<HashMap<String, String>, EndpointReply> {
    if method != http::Method::POST {
        return Err(EndpointReply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            post_only,
        ));
    }
    check_form_content_type(headers)?;
    parse_form(body)
        .ok_or_else(|| EndpointReply::bad_request("invalid_request", "repeated parameter"))
}

fn check_form_content_type(headers: &HeaderMap) -> Result<(), EndpointReply> {
    let is_form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if is_form {
        Ok(())
    } else {
        Err(EndpointReply::bad_request(
            "invalid_request",
            "content type must be application/x-www-form-urlencoded",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_rounds_up_and_is_at_least_one() {
        assert_eq!(expires_in_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(expires_in_secs(Duration::from_millis(1500)), 2);
        assert_eq!(expires_in_secs(Duration::from_millis(10)), 1);
        assert_eq!(expires_in_secs(Duration::ZERO), 1);
    }

    #[test]
    fn form_decode_handles_plus_and_percent() {
        assert_eq!(form_decode("s+p%3Aa%2Bc%2Fe").as_deref(), Some("s p:a+c/e"));
        assert_eq!(form_decode("bad%4"), None);
    }

    #[test]
    fn issued_tokens_debug_is_redacted() {
        let state = State::new(ServerConfig::default(), "http://127.0.0.1:1".to_owned());
        let tokens = state.issue_grant("alice", None);
        let shown = format!("{tokens:?}");
        assert!(!shown.contains(&tokens.access_token));
        assert!(!shown.contains(&tokens.refresh_token));
    }
}
