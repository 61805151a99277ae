//! Outbound authorization for HTTP clients, done right.
//!
//! `client-auth` supplies the `Authorization` header for requests your service sends to APIs
//! protected by API keys, OAuth 2.0 access tokens or per-customer JWTs. This core crate knows
//! no HTTP client: the adapters `client-auth-tower` (a tower `Layer`) and
//! `client-auth-reqwest` (a reqwest-middleware `Middleware`) run its providers.
//!
//! - [`AuthorizationProvider`]: the one trait every provider implements, dyn-compatible.
//! - [`StaticToken`]: a fixed API key (`Token KEY`), bearer token or basic credentials.
//! - [`OAuthProvider`]: OAuth 2.0 `refresh_token` and `client_credentials` grants with a
//!   single-flight token cache: lock-free reads, refresh ahead of expiry with exactly one refresh
//!   in flight, 401 recovery, backoff, and a session that ends cleanly on `invalid_grant`.
//! - [`CustomerToken`]: a callback asked per request for a customer JWT, with an optional cache
//!   and an HS256 signer for backends (features `jwt-aws-lc-rs` / `jwt-rust-crypto`).
//!
//! ```
//! use client_auth::{AuthorizationProvider, RequestView, StaticToken};
//! use http::{Extensions, Method};
//!
//! # fn main() -> Result<(), client_auth::Error> {
//! let provider = StaticToken::api_key("my-api-key")?;
//! let extensions = Extensions::new();
//! let request = RequestView::new(&Method::GET, "https", "api.example.com", "/v1/items", None, &extensions);
//! let credential = provider.authorize(&request).take_ready().expect("a static key is always ready")?;
//! assert_eq!(credential.header_value(), "Token my-api-key");
//! assert!(credential.header_value().is_sensitive());
//! # Ok(()) }
//! ```
//!
//! # A tokio runtime is required
//!
//! Refreshes run on a task spawned on the current tokio runtime, so that a dropped request
//! never aborts a refresh. Without a runtime, a refresh fails with [`Error::NoRuntime`]; nothing
//! panics, and nothing is spawned before the first request.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `reqwest` | [`ReqwestTransport`]: the token-endpoint transport on reqwest, the builder's default |
//! | `tower` | [`TowerTransport`]: the token-endpoint transport on any `tower_service::Service` |
//! | `jwt-aws-lc-rs` | [`CustomerTokenSigner`] signing through aws-lc-rs |
//! | `jwt-rust-crypto` | [`CustomerTokenSigner`] signing through RustCrypto |
//! | `file-store` | `FileStore`: a token store in files with an advisory refresh lock, for processes on one host |
//! | `test-util` | [`ManualClock`], a clock tests move by hand |
//!
//! None is on by default.

mod adapter;
mod auth_header;
mod clock;
mod customer;
mod error;
#[cfg(feature = "file-store")]
mod file_store;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
mod jwt;
mod oauth;
mod origin;
mod provider;
mod redact;
mod secret;
mod session;
mod single_flight;
mod static_token;
mod store;
mod www_authenticate;

use std::future::Future;
use std::pin::Pin;

/// A boxed, `Send` future: what the slow paths return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use adapter::{Plan, ProviderRef, credential_accepted, plan_request};
#[cfg(any(test, feature = "test-util"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use customer::*;
pub use error::{
    Error, InvalidResponse, OAuthError, SessionEnd, SharedError, StoreError, TransportError,
    TransportErrorKind, auth_error,
};
#[cfg(feature = "file-store")]
pub use file_store::FileStore;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
pub use jwt::*;
#[cfg(feature = "reqwest")]
pub use oauth::ReqwestTransport;
#[cfg(feature = "tower")]
pub use oauth::TowerTransport;
pub use oauth::{ClientAuth, OAuthProvider, OAuthProviderBuilder, TokenTransport, Tokens};
pub use origin::{OriginPolicy, OriginPolicyBuilder};
pub use provider::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Generation,
    ProviderFuture, RequestView, Unauthorized, UnauthorizedFuture,
};
pub use secret::{AccessToken, ApiKey, ClientSecret, CustomerJwt, RefreshToken, SecretString};
pub use session::{SessionReason, SessionState, SessionWatch};
pub use static_token::StaticToken;
pub use store::{MemoryStore, RefreshLease, StoredTokens, TokenStore};
pub use www_authenticate::{
    Challenge, bearer_error, is_insufficient_scope, parse_challenges, refresh_may_help,
};
