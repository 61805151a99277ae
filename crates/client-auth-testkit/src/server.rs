//! The server handle: binding, accepting, control and inspection.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::ServerConfig;
use crate::fault::Fault;
use crate::handler;
use crate::state::{IssuedTokens, SeenRequest, SeenTokenRequest, State, Stats};

/// An OAuth 2.0 authorization server and protected API listening on `127.0.0.1`.
///
/// Endpoints:
///
/// | path | what |
/// |------|------|
/// | `POST /token` | token endpoint: `refresh_token` and `client_credentials` grants, `client_secret_basic` / `client_secret_post` / public clients; opt-in: the JWT bearer grant, token exchange, `client_assertion` authentication, a nested answer shape |
/// | `POST /revoke` | RFC 7009 revocation, client authentication as at the token endpoint |
/// | `/api/*` | protected API: bearer tokens issued here, `Token <api key>`, HS256 customer JWTs |
/// | `/api/forbidden` | 403 for valid credentials |
/// | `/api/scope` | 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` |
/// | `/api/echo` | echoes the request body in the JSON field `body` |
/// | `/api/r/{name}` | opt-in ([`ServerConfig::resource_routes`]): only tokens issued for resource or audience `name` |
/// | `/api/claims` | opt-in ([`ServerConfig::claims_challenge`]): 401 `insufficient_claims` to tokens asked without the claims |
/// | `GET /redirect?to=URL&status=307` | unprotected redirect to `to` |
///
/// The 200 answer of the protected API is JSON with `ok`, `kind` (`bearer`, `api_key`,
/// `customer_jwt`), `subject`, `path`, `method`, and the bearer token's `resource` and
/// `audience` when its token request named them.
///
/// The server runs on the tokio runtime that started it; dropping the handle stops accepting
/// and closes every connection.
pub struct TestServer {
    state: Arc<State>,
    accept: AbortHandle,
    addr: SocketAddr,
    /// Dropped with the server: every connection task watches it and stops.
    _shutdown: watch::Sender<()>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn bind_loopback() -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    // A deep backlog so that thousands of simultaneous connects do not hit SYN retries;
    // the kernel caps it at `somaxconn`.
    socket.listen(65_535)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: watch::Receiver<()>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Typically EMFILE under heavy load: back off briefly instead of spinning.
                tracing::debug!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "set_nodelay failed");
        }
        let state = Arc::clone(&state);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handler::handle(Arc::clone(&state), request));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        tracing::trace!(%err, "connection ended with an error");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

impl TestServer {
    /// Starts a server with [`ServerConfig::default`].
    ///
    /// # Errors
    ///
    /// When no loopback socket can be bound.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (the server is spawned with `tokio::spawn`).
    pub async fn start() -> std::io::Result<TestServer> {
        Self::start_with(ServerConfig::default()).await
    }

    /// Starts a server with `config` on `127.0.0.1` and a free port.
    ///
    /// # Errors
    ///
    /// When no loopback socket can be bound.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (the server is spawned with `tokio::spawn`).
    pub async fn start_with(config: ServerConfig) -> std::io::Result<TestServer> {
        let listener = bind_loopback()?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config, format!("http://{addr}")));
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let accept =
            tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown_rx)).abort_handle();
        Ok(TestServer {
            state,
            accept,
            addr,
            _shutdown: shutdown_tx,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint, `base_url() + "/token"`.
    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    /// The RFC 7009 revocation endpoint, `base_url() + "/revoke"`.
    ///
    /// Takes the form parameter `token` (and an optional `token_type_hint`) with client
    /// authentication as at the token endpoint, and answers 200 whether or not the token
    /// was known. Revoking a refresh token revokes its whole grant.
    pub fn revocation_url(&self) -> String {
        self.url("/revoke")
    }

    /// A protected resource, `base_url() + "/api/resource"`; every path under `/api/` is
    /// protected.
    pub fn resource_url(&self) -> String {
        self.url("/api/resource")
    }

    /// The RFC 8707 resource indicator that the per-resource route `/api/r/{name}` requires
    /// with [`ResourceBinding::Resource`](crate::ResourceBinding::Resource):
    /// `base_url() + "/r/" + name`.
    pub fn resource_indicator(&self, name: &str) -> String {
        self.state.resource_indicator(name)
    }

    /// The per-resource route of `name`, `base_url() + "/api/r/" + name` (see
    /// [`ServerConfig::resource_routes`]).
    pub fn resource_route_url(&self, name: &str) -> String {
        self.url(&format!("/api/r/{name}"))
    }

    /// The claims challenge route, `base_url() + "/api/claims"` (see
    /// [`ServerConfig::claims_challenge`]).
    pub fn claims_url(&self) -> String {
        self.url("/api/claims")
    }

    /// `base_url() + path`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The id of the first registered client.
    pub fn client_id(&self) -> String {
        self.state
            .first_client()
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }

    /// The secret of the first registered client (`None` for a public client).
    pub fn client_secret(&self) -> Option<String> {
        self.state.first_client().and_then(|c| c.secret.clone())
    }

    /// Mints a grant for `subject` for the first client, as if an `authorization_code`
    /// exchange had happened, and returns its access and refresh tokens.
    pub fn issue_grant(&self, subject: &str, scope: Option<&str>) -> IssuedTokens {
        self.state.issue_grant(subject, scope)
    }

    /// Changes the lifetime of access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.state.set_access_token_lifetime(lifetime);
    }

    /// Moves the server's clock forward: access tokens and customer JWT `exp` claims are
    /// checked against real time plus the sum of all advances.
    pub fn advance(&self, by: Duration) {
        self.state.advance(by);
    }

    /// Makes the protected API reject this access token.
    pub fn revoke_access_token(&self, token: &str) {
        self.state.revoke_access_token(token);
    }

    /// Makes the protected API reject every access token issued so far.
    pub fn revoke_all_access_tokens(&self) {
        self.state.revoke_all_access_tokens();
    }

    /// Revokes the grant holding this refresh token (current or already rotated): its
    /// refresh tokens get `400 invalid_grant` and its access tokens are rejected.
    pub fn revoke_grant(&self, refresh_token: &str) {
        self.state.revoke_grant(refresh_token);
    }

    /// Revokes every grant issued so far.
    pub fn revoke_all_grants(&self) {
        self.state.revoke_all_grants();
    }

    /// While on, the protected API answers `401 invalid_token` to every request.
    pub fn reject_all_tokens(&self, on: bool) {
        self.state.reject_all_tokens(on);
    }

    /// Queues a fault: the next token-endpoint request not served from the queue before it
    /// gets this answer instead of normal handling (FIFO).
    pub fn push_fault(&self, fault: Fault) {
        self.state.push_fault(fault);
    }

    /// Sets (or, with `None`, clears) a fault served to every token-endpoint request; queued
    /// faults take precedence.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state.set_fault(fault);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Resets the counters and forgets the seen requests and token requests. The concurrency maximum restarts
    /// from the number of token requests in flight now.
    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    /// Every request that reached `/api/*` or `/redirect*`, in order of arrival.
    pub fn seen_requests(&self) -> Vec<SeenRequest> {
        self.state.seen_requests()
    }

    /// Every request that reached the token endpoint (faults included), in order of arrival,
    /// with its form parameters and headers; [`reset_stats`](Self::reset_stats) forgets them.
    pub fn token_requests(&self) -> Vec<SeenTokenRequest> {
        self.state.token_requests()
    }
}
