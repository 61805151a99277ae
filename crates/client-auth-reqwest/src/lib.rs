//! A [`reqwest-middleware`](reqwest_middleware) middleware that authorizes outgoing requests
//! with a [`client-auth`](client_auth) provider: a static API key, OAuth 2.0 access tokens with
//! a single-flight refresh, or per-customer JWTs.
//!
//! ```
//! use client_auth_reqwest::AuthorizationMiddleware;
//! use client_auth_reqwest::client_auth::StaticToken;
//! use client_auth_reqwest::reqwest_middleware::ClientBuilder;
//!
//! # fn main() -> Result<(), client_auth_reqwest::client_auth::Error> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         AuthorizationMiddleware::builder(StaticToken::api_key("k")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     .build();
//! // `client.get("https://api.example.com/v1/items").send().await` carries
//! // `Authorization: Token k`; requests to any other origin carry nothing of ours.
//! # let _ = client;
//! # Ok(()) }
//! ```
//!
//! All authorization policy lives in `client-auth` ([`client_auth::adapter::plan_request`],
//! [`OriginPolicy`], the providers); this crate only runs it for reqwest.
//!
//! # What happens to a request
//!
//! 1. **Plan.** A request passes through untouched when it carries
//!    [`AuthorizationControl::Skip`], when the caller already set `Authorization` (its 401, too,
//!    is returned unchanged), or when its origin is not allowed. Credentials go only to the
//!    origins you named ([`allow_origin`](AuthorizationMiddlewareBuilder::allow_origin));
//!    [`any_https_origin`](AuthorizationMiddlewareBuilder::any_https_origin) is the explicit
//!    opt-out, `http://` origins need [`allow_http`](AuthorizationMiddlewareBuilder::allow_http),
//!    and naming no origin is an error when the middleware is built. A URL with user info
//!    (`https://user@host/`) never matches an origin.
//! 2. **Authorize.** The provider hands over a credential (without waiting while a valid token
//!    is cached). If it fails, the request is **not sent**, and the error comes back as
//!    [`reqwest_middleware::Error::Middleware`] wrapping a [`client_auth::Error`] (see
//!    [Errors](#errors)).
//! 3. **Stamp.** `Authorization` (marked sensitive) and any extra headers of the credential are
//!    set on the request. A caller-set `Authorization` that carries no credentials (empty, or a
//!    scheme alone such as `Bearer `, what an SDK configured with an empty key sends) counts as
//!    absent and is replaced; a real one is kept, with a `DEBUG` event.
//! 4. **Send**, having first taken a snapshot of the request when the provider can recover from
//!    a 401 (a static key cannot, so it costs nothing more than setting a header).
//! 5. **401.** When the answer is a 401 from the origin that was stamped, the provider is asked
//!    what it means: `Retry` sends the snapshot once more with the new credential, through the
//!    rest of the middleware chain and with the same extensions (at most once); `GiveUp`
//!    returns the 401; a session that ended comes back as an error. 403 (including
//!    `insufficient_scope`) and every other status are returned untouched.
//! 6. **Accepted.** Any other answer to a request it stamped that shows acceptance
//!    ([`credential_accepted`](client_auth::adapter::credential_accepted): not 407, 429 or 5xx) is
//!    reported to the provider
//!    ([`AuthorizationProvider::on_accepted`](client_auth::AuthorizationProvider::on_accepted)):
//!    the OAuth provider then knows that a later 401 for that token means it was revoked, and
//!    refreshes at once.
//!
//! A request whose body cannot be cloned (a streaming body, `reqwest::Body::wrap_stream`) is
//! sent once, and a 401 to it is returned unchanged: it never fails up front for want of a
//! snapshot. A `tracing` event at `WARN` says so (see
//! [Logs, traces and metrics](#logs-traces-and-metrics)).
//!
//! # Redirects
//!
//! reqwest follows redirects inside the `Client`, below every middleware, so this middleware
//! sees the first hop and the final response only. It stamps the first hop. reqwest rebuilds
//! every later hop from the first request's headers and removes `Authorization` (and `Cookie`,
//! `Proxy-Authorization`, `WWW-Authenticate`) only when a hop's origin differs from the
//! *previous* hop's: with its default policy, a chain A → B → B gives B the credential again,
//! and A → B → A → A stamps a hop a foreign site chose. **Build the client with
//! [`redirect_policy`]** (or `redirect::Policy::none()`): it follows redirects until the chain
//! has left the first request's origin and returns the next redirect as it is, so no hop after
//! the chain left is ever sent. A same-origin redirect keeps the credential. A 401 whose final
//! response came from another origin than the one stamped answered a request without our
//! credential, and is returned without a retry.
//!
//! Extra credential headers (beyond `Authorization`) are not on reqwest's list and would follow
//! the first cross-origin hop: pair a provider that adds some with
//! [`same_origin_redirect_policy`], which never leaves the origin.
//!
//! # Per-request control
//!
//! `reqwest::Request`'s own extensions are private; per-request control goes into the
//! middleware's extensions with
//! [`RequestBuilder::with_extension`](reqwest_middleware::RequestBuilder::with_extension):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use client_auth_reqwest::{AuthorizationControl, AuthorizationMiddleware};
//! use client_auth_reqwest::client_auth::{AuthorizationProvider, StaticToken};
//! use client_auth_reqwest::reqwest_middleware::ClientBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         AuthorizationMiddleware::builder(StaticToken::api_key("k")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     .build();
//!
//! // Sent without a credential.
//! client
//!     .get("https://api.example.com/health")
//!     .with_extension(AuthorizationControl::Skip)
//!     .send()
//!     .await?;
//!
//! // Sent with another provider's credential.
//! let admin: Arc<dyn AuthorizationProvider> = Arc::new(StaticToken::api_key("admin")?);
//! client
//!     .delete("https://api.example.com/v1/items/7")
//!     .with_extension(AuthorizationControl::Provider(admin))
//!     .send()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`AuthorizationControl::ForceRefresh`] asks the provider to refresh before this request.
//!
//! # Errors
//!
//! A provider's [`client_auth::Error`] reaches the caller inside
//! [`reqwest_middleware::Error::Middleware`], and stays reachable however many layers an SDK
//! or reqwest-retry adds: [`auth_error`] finds it, and so does plain `source()` walking (an
//! error reporter). Its own `source()` goes on to the cause: the token endpoint's transport
//! error, a store's I/O error, your credential callback's own error type.
//!
//! ```
//! use client_auth_reqwest::client_auth::{CustomerToken, Error};
//! use client_auth_reqwest::reqwest_middleware::ClientBuilder;
//! use client_auth_reqwest::{AuthorizationMiddleware, auth_error};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! // No customer token for this request: it is not sent.
//! let provider = CustomerToken::from_fn(|| async { Ok::<_, Error>(None) });
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         AuthorizationMiddleware::builder(provider)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     .build();
//! let Err(error) = client.get("https://api.example.com/v1").send().await else {
//!     panic!("the request was sent without a credential");
//! };
//! assert!(matches!(auth_error(&error), Some(Error::NoCredentials)));
//! # Ok(()) }
//! ```
//!
//! With the `retry` feature, [`AuthRetryableStrategy`] lets reqwest-retry retry a transient
//! failure to get a credential (never a session that ended).
//!
//! # Recipes
//!
//! The workspace README shows this middleware with reqwest-retry and reqwest-tracing (both
//! orders work: inside the retry, the middleware runs again for every attempt and serves the
//! cached token, with no extra token request), and with SDKs whose constructors take a
//! `ClientWithMiddleware`.
//!
//! # Logs, traces and metrics
//!
//! Both adapters, `client-auth-tower` and `client-auth-reqwest`, log the same decision at the
//! same level (one function of the core, [`client_auth::adapter::report_retry_skipped`], logs
//! and counts it for both):
//!
//! | level | what |
//! |---|---|
//! | WARN | a 401 the provider could have recovered from is returned, because of how the request was built: its body could not be copied before the send (`body_not_cloneable`), or the copy changed with the send (`body_copy_changed`). The application can fix it. Also the first relative URI a policy sees. |
//! | DEBUG | every other decision, made by design: a retry being sent (with `http.request.resend_count = 1`), a 401 returned because the provider never retries (`cannot_recover`), because it answered the retry (`already_retried`), because it came from another origin after a redirect (`foreign_origin`), because the provider gave up (`declined`: cooldown, backoff) or its session ended (`session_ended`); a caller-set `Authorization` kept |
//!
//! Nothing is logged for a request whose answer is not a 401, and an error the provider
//! returns goes to the caller, not to the log. The providers log their own refreshes (a failed
//! refresh and a session that ended at WARN, a store failure at ERROR) inside the refresh span.
//!
//! With feature `metrics` (which turns on `client-auth`'s), every 401 to a stamped request is
//! counted (`client_auth_unauthorized_total`), and then either its retry
//! (`client_auth_retries_total`) or the reason it was not retried
//! (`client_auth_retries_skipped_total{reason}`), labelled with the provider's
//! [`metrics_name`](client_auth::AuthorizationProvider::metrics_name). Nothing is recorded for
//! other answers. [`client_auth::metrics`] lists every metric and span.
//!
//! # A tokio runtime is required
//!
//! Refreshes run on a task spawned on the current tokio runtime (see [`client_auth`]).
//!
//! # Feature flags
//!
//! | feature | adds |
//! |---|---|
//! | `retry` | [`AuthRetryableStrategy`], a reqwest-retry 0.9 `RetryableStrategy` |
//! | `metrics` | `client-auth`'s `metrics`: counters of 401s and retries, and the providers' metrics (see [Logs, traces and metrics](#logs-traces-and-metrics)) |
//!
//! None is on by default.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod middleware;
pub mod redirect;
#[cfg(feature = "retry")]
mod retry;

pub use client_auth;
pub use client_auth::{AuthorizationControl, OriginPolicy};
pub use error::auth_error;
pub use middleware::{AuthorizationMiddleware, AuthorizationMiddlewareBuilder};
pub use redirect::{redirect_policy, same_origin_redirect_policy};
pub use reqwest_middleware;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use reqwest_retry;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use retry::AuthRetryableStrategy;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
