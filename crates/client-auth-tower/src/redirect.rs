//! Redirects: [`AuthorizeLayer`](crate::AuthorizeLayer) **outside** tower-http's
//! `FollowRedirect`, with [`RedirectPolicy`].
//!
//! ```
//! use bytes::Bytes;
//! use client_auth::StaticToken;
//! use client_auth_tower::{AuthorizeLayer, RedirectPolicy};
//! use http::header::{AUTHORIZATION, LOCATION};
//! use http::{HeaderValue, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//! use tower_http::follow_redirect::{FollowRedirectLayer, RequestUri};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Stands for an HTTP client reaching three hosts; it answers with the `Authorization` it got.
//! let http_client = tower::service_fn(|request: Request<Full<Bytes>>| async move {
//!     let location = match (request.uri().host(), request.uri().path()) {
//!         (Some("webhook.attacker.example"), _) => Some("https://api.example.com/v1/items/7"),
//!         (Some("api.example.com"), "/v1/export") => Some("https://bucket.storage.example/x.csv"),
//!         _ => None,
//!     };
//!     let mut response = Response::new(format!("{:?}", request.headers().get(AUTHORIZATION)));
//!     if let Some(location) = location {
//!         *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
//!         response.headers_mut().insert(LOCATION, HeaderValue::from_static(location));
//!     }
//!     Ok::<_, BoxError>(response)
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     // Outside: stamps the request the caller sends, that is the first hop.
//!     .layer(
//!         AuthorizeLayer::builder(StaticToken::api_key("my-api-key")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     // Inside: follows the redirects, and drops the credential once the chain leaves the
//!     // first hop's origin.
//!     .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
//!     .service(http_client);
//!
//! // The API redirects to its storage: the key stays behind.
//! let request = Request::get("https://api.example.com/v1/export").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! let last = response.extensions().get::<RequestUri>().map(|uri| uri.0.to_string());
//! assert_eq!(last.as_deref(), Some("https://bucket.storage.example/x.csv"));
//! assert_eq!(response.body(), "None");
//!
//! // A foreign site redirects to the API: the API gets no authorized request.
//! let request = Request::delete("https://webhook.attacker.example/hook").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "None");
//!
//! // The API itself: stamped.
//! let request = Request::get("https://api.example.com/v1/items").body(Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "Some(Sensitive)");
//! # Ok(())
//! # }
//! ```
//!
//! # The rule
//!
//! The same for both adapters, and what reqwest does by itself:
//!
//! - the layer stamps the first hop only, the request the caller sends;
//! - a later hop on the first hop's origin (scheme, host and port) carries the copy of the first
//!   hop's headers that `FollowRedirect` makes; once the chain has left that origin, no hop
//!   carries `Authorization`, `Cookie` or `Proxy-Authorization`, even one that comes back to it;
//! - a 401 is retried only when it came from the stamped request's origin: the layer reads the
//!   final URI from the response's `RequestUri` extension (as the reqwest middleware reads
//!   `Response::url()`), and returns a 401 from any other origin unchanged, without asking the
//!   provider. A chain that leaves and comes back (A → B → A) ends on the stamped origin, so a
//!   401 there is retried once, exactly as with reqwest.
//!
//! # Why `RedirectPolicy` and not tower-http's `Standard`
//!
//! `FollowRedirect` builds every hop from the first request's headers, and `Standard`'s
//! `FilterCredentials` drops credentials only when a hop changes origin **from the previous
//! hop**: in a chain A → B → B, the third hop goes from B to B and gets A's `Authorization`
//! back. [`RedirectPolicy`] drops credentials on every hop from the first one that leaves the
//! origin. It follows at most 20 redirects by default ([`RedirectPolicy::new`] sets another
//! bound) and, like `Standard`, copies no request body: a 307 or 308 answering a request with
//! a non-empty body is returned as it is, unless you combine it (`PolicyExt::and`) with a
//! policy whose `clone_body` copies the body.
//!
//! The extra headers of a credential ([`Credential::with_extra_headers`]) are removed the same
//! way: their values are marked sensitive, and so is every value the policy removes.
//!
//! # The other order
//!
//! With `FollowRedirect` outside `AuthorizeLayer`, every hop reaches the layer as a new
//! request, without the caller's extensions and with nothing else to tell it apart from a
//! first request. With tower-http's own policies, the layer therefore stamps **every** hop to
//! an allowed origin with its own provider: a foreign site that redirects to your API makes
//! your client send it an authorized request, and a per-request `AuthorizationControl` applies
//! to the first hop only. Do not use that order. With [`RedirectPolicy`] the later hops carry
//! [`AuthorizationControl::Skip`], so the layer stamps none of them: no credential leaves, but
//! even a same-origin redirect then arrives without one.
//!
//! This module needs the `follow-redirect` feature (tower-http 0.6).
//!
//! [`Credential::with_extra_headers`]: client_auth::Credential::with_extra_headers

use client_auth::{AuthorizationControl, OriginPolicy};
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{Request, Response, Uri};
use tower_http::follow_redirect::RequestUri;
use tower_http::follow_redirect::policy::{Action, Attempt, Policy};

/// The `FollowRedirect` policy to put below an [`AuthorizeLayer`](crate::AuthorizeLayer):
/// follows at most 20 redirects and, from the first hop that leaves the origin of the first
/// request, removes `Authorization`, `Cookie`, `Proxy-Authorization` and every header value
/// marked sensitive (a credential's extra headers are) from every later hop.
/// Later hops also carry [`AuthorizationControl::Skip`].
///
/// Its state is per chain: `FollowRedirect` clones the policy for every request. See the
/// [module docs](self) for the placement and an example.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    max_redirects: usize,
    followed: usize,
    left_origin: bool,
}

impl RedirectPolicy {
    /// A policy that follows at most `max_redirects` redirects in a chain and then returns the
    /// redirect response as it is.
    pub fn new(max_redirects: usize) -> Self {
        Self {
            max_redirects,
            followed: 0,
            left_origin: false,
        }
    }
}

/// At most 20 redirects, as tower-http's `Standard`.
impl Default for RedirectPolicy {
    fn default() -> Self {
        Self::new(20)
    }
}

impl<B, E> Policy<B, E> for RedirectPolicy {
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, E> {
        if self.followed >= self.max_redirects {
            return Ok(Action::Stop);
        }
        self.followed += 1;
        self.left_origin |= !same_origin(attempt.previous(), attempt.location());
        Ok(Action::Follow)
    }

    fn on_request(&mut self, request: &mut Request<B>) {
        // The first hop is the caller's request, as it is.
        if self.followed == 0 {
            return;
        }
        request.extensions_mut().insert(AuthorizationControl::Skip);
        if self.left_origin {
            // Every value marked sensitive goes too: a credential's extra headers are.
            let headers = request.headers_mut();
            let sensitive = headers.iter().filter(|(_, v)| v.is_sensitive());
            let mut names: Vec<_> = sensitive.map(|(name, _)| name.clone()).collect();
            names.extend([AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION]);
            for name in names {
                headers.remove(name);
            }
        }
    }
}

fn origin(uri: &Uri) -> (&str, &str) {
    let authority = uri.authority().map_or("", |a| a.as_str());
    (uri.scheme_str().unwrap_or_default(), authority)
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    OriginPolicy::same_origin(origin(a), origin(b))
}

/// Whether `response` came from the origin of `sent`: `false` only when `FollowRedirect`'s
/// `RequestUri` says the last hop went elsewhere.
pub(crate) fn answered_by<R>(response: &Response<R>, sent: &Uri) -> bool {
    let last = response.extensions().get::<RequestUri>();
    last.is_none_or(|last| same_origin(&last.0, sent))
}
