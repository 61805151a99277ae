//! Outbound authorization for HTTP clients, done right.
//!
//! `client-auth` puts the `Authorization` header on the requests your service or SDK sends to
//! APIs protected by API keys, OAuth 2.0 access tokens or per-customer JWTs: refreshed ahead of
//! expiry with exactly one refresh in flight, recovered on a 401, sent only to the origins you
//! name, and never written to a log.
//!
//! # Add it to your client
//!
//! Pick a provider from this crate and hand it to the adapter of your HTTP client:
//! `client-auth-reqwest` (a reqwest-middleware `Middleware`) or `client-auth-tower` (a tower
//! `Layer` for hyper and any `Service<http::Request<B>>`).
//!
//! ```ignore
//! // With reqwest (client-auth-reqwest); its docs carry this example compiled.
//! let provider = OAuthProvider::client_credentials("https://auth.example.com/oauth/token")
//!     .client_id("my-service")
//!     .client_secret("s3cret")
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         AuthorizationMiddleware::builder(provider)
//!             .allow_origin("https://api.example.com") // credentials go only here
//!             .build()?,
//!     )
//!     .build();
//!
//! // With tower (client-auth-tower): the same provider, as a layer.
//! let client = tower::ServiceBuilder::new()
//!     .layer(AuthorizeLayer::builder(provider).allow_origin("https://api.example.com").build()?)
//!     .service(hyper_client);
//! ```
//!
//! # Providers
//!
//! - [`StaticToken`]: a fixed API key (`Token KEY`), bearer token or basic credentials.
//! - [`OAuthProvider`]: OAuth 2.0 `refresh_token` and `client_credentials` grants with a
//!   single-flight token cache: lock-free reads, refresh ahead of expiry, 401 recovery,
//!   backoff, and a session that ends cleanly on `invalid_grant` ([`SessionState`]).
//! - [`CustomerToken`]: a callback asked per request for a customer JWT, with an optional cache,
//!   and [`CustomerTokenSigner`] to mint HS256 customer tokens in a backend.
//! - Your own: implement [`AuthorizationProvider`] (dyn-compatible).
//!
//! The OAuth provider can start from the server's metadata ([`OAuthProvider::discover`]),
//! bind its tokens to a key with DPoP ([`OAuthProviderBuilder::dpop`]), and authenticate the
//! client with a signed JWT ([`OAuthProviderBuilder::private_key_jwt`]).
//!
//! Tokens persist in a [`TokenStore`]: [`MemoryStore`] (the default), `FileStore` for the
//! processes of one host, or `RedisStore` (crate `client-auth-redis`) for a fleet.
//!
//! A provider can be used without an adapter too, to set headers by hand:
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
//! | `reqwest` | [`ReqwestTransport`]: the token-endpoint transport on reqwest, the builder's default. It uses the TLS backend your reqwest has. |
//! | `rustls` | `reqwest` with reqwest's `rustls` TLS backend |
//! | `native-tls` | `reqwest` with reqwest's `native-tls` TLS backend |
//! | `tower` | [`TowerTransport`]: the token-endpoint transport on any `tower_service::Service` |
//! | `jwt-aws-lc-rs` | JOSE through aws-lc-rs: [`CustomerTokenSigner`], DPoP ([`DpopKey`]), client assertions ([`ClientAssertionKey`], [`ClientAuth::SecretJwt`]) |
//! | `jwt-rust-crypto` | the same through RustCrypto; both may be on at once |
//! | `file-store` | [`FileStore`]: a token store in files with an advisory refresh lock, for processes on one host |
//! | `metrics` | counters and histograms of token requests, refresh waits, 401 recoveries, session ends and store leases through the `metrics` facade: the table is in [`metrics`] |
//! | `test-util` | [`ManualClock`], a clock tests move by hand |
//!
//! None is on by default. An [`OAuthProvider`] needs a way to reach its token endpoint: with
//! none of `reqwest`, `rustls` and `native-tls` on, [`OAuthProviderBuilder::build`] only exists
//! after [`OAuthProviderBuilder::transport`], so a provider without one does not compile.
//!
//! # TLS
//!
//! TLS is your application's choice. Feature `reqwest` turns on no TLS backend of its own:
//! reqwest's features are shared by everything in your build, so the token requests use the
//! backend your own reqwest has (reqwest's default features bring rustls). If your reqwest has
//! none (`default-features = false`), turn on `rustls` or `native-tls` here; without any, only
//! `http://` token endpoints on loopback work, and an `https://` one fails with a transport
//! error.
//!
//! # Observability
//!
//! A refresh is a `tracing` span, and each request it sends to the token endpoint a client
//! span inside it, named and filled after the OpenTelemetry HTTP conventions. With feature
//! `metrics`, token requests, waits for a refresh, 401s and their retries, session ends and
//! shared-store leases are counted and timed through the `metrics` facade, with labels of low
//! cardinality only and nothing recorded on the path of a request whose token is at hand.
//! [`metrics`] has the table of every metric, label and span field.
//!
//! # For adapter authors
//!
//! The plumbing the adapters share lives in [`adapter`].
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adapter;
mod auth_header;
mod clock;
mod customer;
mod error;
#[cfg(feature = "file-store")]
mod file_store;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
mod jwt;
pub mod metrics;
mod oauth;
mod origin;
mod provider;
mod redact;
mod secret;
mod session;
mod single_flight;
mod static_token;
mod store;
mod telemetry;
mod www_authenticate;

pub(crate) use adapter::BoxFuture;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use customer::*;
pub use error::{
    Error, InvalidResponse, OAuthError, SessionEnd, SharedError, StoreError, TransportError,
    TransportErrorKind, auth_error,
};
#[cfg(feature = "file-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "file-store")))]
pub use file_store::FileStore;
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
)]
pub use jwt::*;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use oauth::ReqwestTransport;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use oauth::TowerTransport;
pub use oauth::{
    AssertionSource, ClientAuth, DefaultTransport, OAuthProvider, OAuthProviderBuilder,
    PerTargetProvider, PerTargetProviderBuilder, ServerMetadata, SuppliedTransport, TokenTarget,
    TokenTransport, Tokens, TransportChoice,
};
#[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
)]
pub use oauth::{ClientAssertionKey, DpopKey};
pub use origin::{OriginPolicy, OriginPolicyBuilder};
pub use provider::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Generation,
    ProviderFuture, RequestView, Unauthorized, UnauthorizedFuture,
};
pub use secret::{AccessToken, ApiKey, ClientSecret, CustomerJwt, RefreshToken, SecretString};
pub use session::{SessionReason, SessionState, SessionWatch};
pub use static_token::StaticToken;
pub use store::{MemoryStore, RefreshLease, StoredTokens, TokenStore};

// The README's example builds an OAuth provider on the reqwest transport.
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
