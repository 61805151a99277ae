//! Redirect policies for the `reqwest::Client` under the middleware.
//!
//! reqwest follows redirects inside the client, below the middleware, and rebuilds every hop from
//! the first request's headers: it removes `Authorization` on a hop whose host, port or scheme
//! differs from the *previous* hop's, but a chain that leaves the API and then stays on the
//! other host (A → B → B), or comes back (A → B → A → A), gets the credential again on a hop the
//! other site chose. Build the client with [`redirect_policy`] (or `Policy::none()`): it follows
//! redirects until the chain has left the first request's origin, then stops and returns that
//! redirect response, so no later hop is ever sent.
//!
//! reqwest removes only `Authorization`, `Cookie`, `Proxy-Authorization` and
//! `WWW-Authenticate` on a cross-origin hop. A provider whose credentials carry extra headers
//! needs [`same_origin_redirect_policy`], which never follows a redirect to another origin.
//!
//! ```
//! use client_auth::StaticToken;
//! use client_auth_reqwest::{AuthorizationMiddleware, redirect_policy};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest::Client::builder()
//!     .redirect(redirect_policy(10))
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(client)
//!     .with(
//!         AuthorizationMiddleware::builder(StaticToken::api_key("my-api-key")?)
//!             .allow_origin("https://api.example.com")
//!             .build()?,
//!     )
//!     .build();
//! # let _ = client;
//! # Ok(()) }
//! ```

use reqwest::Url;
use reqwest::redirect::{Attempt, Policy};

/// Follows at most `max` redirects, and none once the chain has left the origin (scheme, host
/// and port) of the request the caller sent: the redirect that would be the second hop outside
/// it is returned to the caller as it is. The first hop to another origin is followed, without
/// `Authorization` (reqwest removes it).
pub fn redirect_policy(max: usize) -> Policy {
    Policy::custom(move |attempt| {
        let left = {
            let previous = attempt.previous();
            let first = previous.first();
            previous.iter().any(|url| !same_origin(first, url))
        };
        decide(attempt, max, left)
    })
}

/// Follows at most `max` redirects, all within the origin of the request the caller sent; a
/// redirect to another origin is returned to the caller as it is. For providers whose
/// credentials carry headers besides `Authorization`.
pub fn same_origin_redirect_policy(max: usize) -> Policy {
    Policy::custom(move |attempt| {
        let leaves = {
            let first = attempt.previous().first();
            !same_origin(first, attempt.url())
        };
        decide(attempt, max, leaves)
    })
}

fn decide(attempt: Attempt<'_>, max: usize, stop: bool) -> reqwest::redirect::Action {
    if stop || attempt.previous().len() > max {
        attempt.stop()
    } else {
        attempt.follow()
    }
}

fn same_origin(first: Option<&Url>, url: &Url) -> bool {
    first.is_some_and(|first| {
        first.scheme() == url.scheme()
            && first.host_str().map(str::to_ascii_lowercase)
                == url.host_str().map(str::to_ascii_lowercase)
            && first.port_or_known_default() == url.port_or_known_default()
    })
}
