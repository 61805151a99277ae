//! A tower [`Layer`](tower_layer::Layer) that authorizes outgoing HTTP requests with a
//! [`client_auth`] provider: API keys, OAuth 2.0 access tokens with single-flight refresh,
//! customer JWTs.
//!
//! [`AuthorizeLayer`] wraps an HTTP client service (a hyper-util client, or anything that is
//! a `Service<http::Request<B>>`) in [`Authorize`]. Requests to the origins you name get the
//! provider's `Authorization` header (marked sensitive); when the server answers 401 and the
//! provider can recover (a refreshed token), the request is sent once more. All the auth
//! policy lives in `client-auth`; this crate only runs it.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use client_auth::StaticToken;
//! use client_auth_tower::AuthorizeLayer;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use http_body_util::Full;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Stands for an HTTP client, e.g. hyper_util's legacy `Client`.
//! let http_client = tower::service_fn(|request: Request<Full<Bytes>>| async move {
//!     let auth = request.headers().get(AUTHORIZATION).cloned();
//!     Ok::<_, BoxError>(Response::new(format!("{auth:?}")))
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(
//!         AuthorizeLayer::builder(StaticToken::api_key("my-api-key")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     .service(http_client);
//!
//! let request = Request::get("https://api.example.com/v1/items").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "Some(Sensitive)");
//!
//! // Another origin: sent untouched.
//! let request = Request::get("https://cdn.example.net/logo.png").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "None");
//! # Ok(())
//! # }
//! ```
//!
//! # What happens to a request
//!
//! 1. The request's `Uri` (scheme, authority, path, query) and extensions go through the steps
//!    of [`client_auth::adapter::plan_request`] without allocating (the origin compared with
//!    [`OriginPolicy::allows_uri`](client_auth::OriginPolicy::allows_uri)). It passes the
//!    request through untouched when it goes to an origin you did not name, when the caller already set
//!    `Authorization` (its 401 is returned unchanged too; a `DEBUG` event says so), or when
//!    [`AuthorizationControl::Skip`] is in its extensions. A caller-set value that carries no
//!    credentials (empty, or a scheme alone such as `Bearer `, what an SDK configured with an
//!    empty key sends) counts as absent and is replaced. A request needs an absolute URI to be
//!    authorized: see [Behind a base-URI layer](#behind-a-base-uri-layer).
//! 2. Otherwise the provider gives a credential. Usually it is at hand: it is stamped and the
//!    request goes to the service `poll_ready` made ready. When the provider never recovers
//!    (a static key) no request is copied, no service cloned and nothing allocated by this
//!    layer, as with tower-http's `AddAuthorization`; a static key keeps nothing in the
//!    response future. When a refresh is needed, the request waits for it **without** holding the inner service's readiness
//!    (see [Readiness](#readiness)). If the provider fails, the request is not sent and the
//!    error is returned.
//! 3. When the provider can recover from a 401 ([`AuthorizationProvider::can_recover`]), the
//!    request (method, URI, version, headers, extensions, and the body through the clone
//!    hook) is copied before it is sent.
//! 4. On a 401 to a request it stamped, the provider decides: retry once with a new
//!    credential (the retry's response is returned, whatever it is), give up (the 401 is
//!    returned unchanged), or fail (the session ended: the error is returned). No other
//!    status is retried, 403 included, nor a 401 that a redirect follower below got from
//!    another origin (see [Redirects](#redirects)). If the body could not be copied, the 401
//!    is returned unchanged and a `tracing` warning says the retry was skipped; the request
//!    never fails up front because of its body.
//! 5. Any other answer to a request it stamped that shows acceptance
//!    ([`client_auth::adapter::credential_accepted`]: not 407, 429 or 5xx) is reported to the provider
//!    ([`AuthorizationProvider::on_accepted`], no lock, no allocation): the OAuth provider then
//!    knows that a later 401 for that token means it was revoked, and refreshes at once.
//!
//! # Per-request control
//!
//! Put an [`AuthorizationControl`] in the request's extensions:
//!
//! ```
//! use std::sync::Arc;
//! use client_auth::{AuthorizationControl, StaticToken};
//!
//! # fn main() -> Result<(), client_auth::Error> {
//! let mut request = http::Request::get("https://api.example.com/health").body(())
//!     .map_err(|e| client_auth::Error::Config(e.to_string().into()))?;
//! // Send this one without a credential:
//! request.extensions_mut().insert(AuthorizationControl::Skip);
//! // or with another provider:
//! let admin = Arc::new(StaticToken::api_key("admin-key")?);
//! request.extensions_mut().insert(AuthorizationControl::Provider(admin));
//! // or refresh the token first:
//! request.extensions_mut().insert(AuthorizationControl::ForceRefresh);
//! # Ok(()) }
//! ```
//!
//! # Request bodies and the retry
//!
//! The body clone hook is the type parameter `C` of [`AuthorizeLayer`] and [`Authorize`],
//! like tower's `Policy::clone_request`; see [`CloneRequestBody`]. [`CloneBody`] (the
//! default) needs `B: Clone` (`Full<Bytes>`, `String`); [`CloneEmptyBody`] suits boxed bodies
//! (`BoxBody`, `UnsyncBoxBody`: not `Clone`, but `Default`), rebuilding a body whose
//! `size_hint` is exactly 0 with `Default`; [`NeverClone`] works with any body; a closure
//! `Fn(&B) -> Option<B> + Clone` decides for itself, and so does a body type's own
//! `try_clone` method (`.clone_body_with(MyBody::try_clone)`). Set it with
//! [`AuthorizeLayerBuilder::clone_body_with`]. The copy must not share the original's bytes:
//! a copy the first send drained (a shallow `Clone`) is detected by its changed `size_hint`,
//! and its 401 is returned with a warning instead of a retry with an empty body. If `Authorize`
//! is not a `Service` for your body or your client, [`CloneRequestBody`] explains the compile
//! error (and wrapping a client that is not `Clone` in `Buffer`).
//!
//! # Behind a base-URI layer
//!
//! SDKs built on tower (octocrab among them) send relative URIs (`/user`) and make them
//! absolute in a layer of their own. `AuthorizeLayer` must see the absolute URI to know the
//! origin, so place it **inside** that layer: after it in `ServiceBuilder`, before it in a
//! builder whose `with_layer` wraps the stack built so far (the last layer added is the
//! outermost). Where it has to sit outside, name the origin relative URIs are meant for with
//! [`AuthorizeLayerBuilder::resolve_relative_to`]. Otherwise a relative URI passes through
//! without a credential, and the first one is logged at WARN.
//!
//! ```
//! use bytes::Bytes;
//! use client_auth::StaticToken;
//! use client_auth_tower::AuthorizeLayer;
//! use http::header::AUTHORIZATION;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let http_client = tower::service_fn(|request: Request<Full<Bytes>>| async move {
//!     let auth = request.headers().get(AUTHORIZATION).is_some();
//!     Ok::<_, BoxError>(Response::new(format!("{} {auth}", request.uri())))
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(
//!         AuthorizeLayer::builder(StaticToken::api_key("my-api-key")?)
//!             .allow_origin("https://api.example.com")
//!             .resolve_relative_to("https://api.example.com")
//!             .build()?,
//!     )
//!     .service(http_client);
//! let request = Request::get("/v1/items").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "https://api.example.com/v1/items true");
//! # Ok(())
//! # }
//! ```
//!
//! # Readiness
//!
//! On the fresh path the request is sent on the service that `poll_ready` made ready. A
//! request that must wait for a refresh gives that readiness back first (the ready service is
//! dropped, a clone kept), so a `Buffer` or `ConcurrencyLimit` slot is not held while the token
//! endpoint is asked (the token transport may need that very slot); the clone is made ready
//! once the credential is there. The retry, too, waits for `poll_ready`. `S` must be `Clone`.
//!
//! # Redirects
//!
//! The layer stamps the first hop only. A later hop keeps a copy of that header while the
//! chain stays on the first hop's origin; once the chain has left it, no hop carries it, even
//! one that comes back; a 401 whose final URI is on another origin is returned, not retried.
//! This is what the reqwest middleware does (reqwest follows redirects by itself), and for tower
//! it takes one placement: `AuthorizeLayer` **outside** tower-http's `FollowRedirect` (listed
//! before it in `ServiceBuilder`), with [`RedirectPolicy`] as the redirect policy (feature
//! `follow-redirect`):
//!
#![cfg_attr(feature = "follow-redirect", doc = "```no_run")]
#![cfg_attr(not(feature = "follow-redirect"), doc = "```ignore")]
//! use bytes::Bytes;
//! use client_auth::StaticToken;
//! use client_auth_tower::{AuthorizeLayer, RedirectPolicy};
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//! use tower_http::follow_redirect::FollowRedirectLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Plain HTTP for brevity; give the client a TLS connector (hyper-rustls) for https.
//! let http_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let mut client = ServiceBuilder::new()
//!     .layer(
//!         AuthorizeLayer::builder(StaticToken::api_key("my-api-key")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     ) // outside: stamps the first hop, reads the final URI of a 401
//!     .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default())) // inside
//!     .service(http_client);
//!
//! let request = http::Request::get("https://api.example.com/v1/moved").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! The other order (`FollowRedirect` outside `AuthorizeLayer`) is not supported: with
//! tower-http's own policies it stamps every hop to an allowed origin, including a hop that a
//! foreign site redirected to your API. The [`redirect`] module explains the rule, the policy,
//! and what each order does, with a runnable example; so does `examples/redirects.rs`.
//!
//! # Errors
//!
//! The service's error is [`BoxError`]. It holds the inner service's error, or the provider's
//! [`client_auth::Error`] (the request was not sent, or the session ended during a 401
//! recovery). Layers around `Authorize` may wrap it (`Buffer` does); [`auth_error`] finds it
//! anywhere in the `source()` chain, and its own `source()` leads on to the cause (the token
//! endpoint's transport error, a store's I/O error, a credential callback's own error):
//!
//! ```
//! # fn handle(error: client_auth_tower::BoxError) {
//! if let Some(auth) = client_auth_tower::auth_error(&*error) {
//!     if auth.is_session_ended() {
//!         // Ask the user to sign in again.
//!     }
//! }
//! # }
//! ```
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
//! Providers refresh on tasks spawned on the current tokio runtime (see [`client_auth`]).
//!
//! # Feature flags
//!
//! | feature | adds |
//! |---|---|
//! | `follow-redirect` | [`RedirectPolicy`] and the final-URI check of a 401, for `AuthorizeLayer` outside tower-http 0.6's `FollowRedirect` |
//! | `metrics` | `client-auth`'s `metrics`: counters of 401s and retries, and the providers' metrics (see [Logs, traces and metrics](#logs-traces-and-metrics)) |
//!
//! None is on by default. The crate turns on nothing in `client-auth`; enable the core's
//! `reqwest` or `tower` feature for the token-endpoint transport you use.
//!
//! [`AuthorizationProvider::can_recover`]: client_auth::AuthorizationProvider::can_recover
//! [`AuthorizationProvider::on_accepted`]: client_auth::AuthorizationProvider::on_accepted
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod future;
mod layer;
#[cfg(feature = "follow-redirect")]
#[cfg_attr(docsrs, doc(cfg(feature = "follow-redirect")))]
pub mod redirect;
mod service;

pub use client_auth;
pub use client_auth::{AuthorizationControl, AuthorizationProvider, OriginPolicy, auth_error};

pub use body::{CloneBody, CloneEmptyBody, CloneRequestBody, NeverClone};
pub use future::ResponseFuture;
pub use layer::{AuthorizeLayer, AuthorizeLayerBuilder};
#[cfg(feature = "follow-redirect")]
#[cfg_attr(docsrs, doc(cfg(feature = "follow-redirect")))]
pub use redirect::RedirectPolicy;
pub use service::Authorize;

/// The error type of [`Authorize`] (the inner service's error or a [`client_auth::Error`]):
/// the core's, the same type as tower's own `BoxError`.
pub use client_auth::BoxError;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
