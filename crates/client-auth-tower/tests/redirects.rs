//! Redirects through tower-http's `FollowRedirect`, against an in-memory "internet" of
//! scripted hosts: the supported placement (`AuthorizeLayer` outside, `RedirectPolicy`), why
//! tower-http's `Standard` policy is not enough, and what the other placement does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use client_auth::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Generation,
    RequestView, StaticToken, Unauthorized, UnauthorizedFuture,
};
use client_auth_tower::{AuthorizeLayer, BoxError, RedirectPolicy};
use http::header::{AUTHORIZATION, COOKIE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::{FollowRedirectLayer, RequestUri};

const API: &str = "https://api.example.com";

/// One request as a host saw it.
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    method: Method,
    url: String,
    authorization: Option<String>,
    cookie: bool,
}

/// A scripted answer: the status, and the `Location` of a redirect.
type Route = (StatusCode, Option<String>);

/// Hosts answering from a script: `url -> route`; anything unscripted is 200.
#[derive(Clone, Default)]
struct Internet {
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Internet {
    fn redirect(&self, from: &str, to: &str, status: StatusCode) -> &Self {
        let route = (status, Some(to.to_owned()));
        self.routes.lock().unwrap().insert(from.to_owned(), route);
        self
    }

    fn answer(&self, url: &str, status: StatusCode) -> &Self {
        self.routes
            .lock()
            .unwrap()
            .insert(url.to_owned(), (status, None));
        self
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The `Authorization` of every hop, in order.
    fn authorizations(&self) -> Vec<Option<String>> {
        self.hits().into_iter().map(|h| h.authorization).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let internet = self.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let internet = internet.clone();
            async move {
                let url = request.uri().to_string();
                let authorization = request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned());
                internet.hits.lock().unwrap().push(Hit {
                    method: request.method().clone(),
                    url: url.clone(),
                    authorization,
                    cookie: request.headers().contains_key(COOKIE),
                });
                let route = internet.routes.lock().unwrap().get(&url).cloned();
                let (status, location) = route.unwrap_or((StatusCode::OK, None));
                let mut response = Response::new(Full::default());
                *response.status_mut() = status;
                if let Some(location) = location {
                    let location = HeaderValue::from_str(&location).unwrap();
                    response.headers_mut().insert(LOCATION, location);
                }
                Ok::<_, BoxError>(response)
            }
        })
    }
}

type Client = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError>;

fn key_layer(origins: &[&str]) -> AuthorizeLayer<StaticToken> {
    origins
        .iter()
        .fold(
            AuthorizeLayer::builder(StaticToken::api_key("api-key").unwrap()),
            |b, o| b.allow_origin(*o),
        )
        .build()
        .unwrap()
}

/// The supported placement: `AuthorizeLayer` outside `FollowRedirect` with `RedirectPolicy`.
fn outside<P: AuthorizationProvider>(layer: AuthorizeLayer<P>, internet: &Internet) -> Client {
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(internet.service());
    BoxCloneSyncService::new(service)
}

async fn send(client: &Client, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    client.clone().oneshot(request).await.unwrap()
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn key() -> Option<String> {
    Some("Token api-key".to_owned())
}

// ---- the supported placement ---------------------------------------------------------------

#[tokio::test]
async fn a_foreign_site_redirecting_to_the_api_does_not_get_an_authorized_request() {
    let internet = Internet::default();
    internet.redirect(
        "https://webhook.attacker.example/hook",
        "https://api.example.com/v1/items/7",
        StatusCode::TEMPORARY_REDIRECT,
    );
    let client = outside(key_layer(&[API]), &internet);
    let request = Request::delete("https://webhook.attacker.example/hook")
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;

    assert_eq!(response.status(), StatusCode::OK);
    let hits = internet.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].method, Method::DELETE);
    assert_eq!(hits[1].url, "https://api.example.com/v1/items/7");
    assert_eq!(internet.authorizations(), [None, None]);
}

#[tokio::test]
async fn with_any_https_origin_a_redirect_to_a_storage_host_carries_no_credential() {
    let internet = Internet::default();
    internet.redirect(
        "https://api.example.com/v1/export",
        "https://bucket.storage.example/export.csv",
        StatusCode::FOUND,
    );
    let layer = AuthorizeLayer::builder(StaticToken::api_key("api-key").unwrap())
        .any_https_origin()
        .build()
        .unwrap();
    let client = outside(layer, &internet);
    let response = send(&client, get("https://api.example.com/v1/export")).await;

    assert_eq!(response.status(), StatusCode::OK);
    let last = &response.extensions().get::<RequestUri>().unwrap().0;
    assert_eq!(last, "https://bucket.storage.example/export.csv");
    assert_eq!(internet.authorizations(), [key(), None]);
}

#[tokio::test]
async fn a_same_origin_redirect_keeps_the_first_hop_s_credential() {
    let internet = Internet::default();
    internet.redirect(
        "https://api.example.com/v1/items",
        "/v1/items/",
        StatusCode::MOVED_PERMANENTLY,
    );
    let client = outside(key_layer(&[API]), &internet);
    let response = send(&client, get("https://api.example.com/v1/items")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(internet.authorizations(), [key(), key()]);
}

#[tokio::test]
async fn once_the_chain_left_the_origin_no_hop_carries_credentials_even_back_on_it() {
    let internet = Internet::default();
    // A -> B -> B -> A.
    internet
        .redirect(
            "https://api.example.com/start",
            "https://cdn.example.net/one",
            StatusCode::FOUND,
        )
        .redirect(
            "https://cdn.example.net/one",
            "https://cdn.example.net/two",
            StatusCode::FOUND,
        )
        .redirect(
            "https://cdn.example.net/two",
            "https://api.example.com/end",
            StatusCode::FOUND,
        );
    let client = outside(key_layer(&[API]), &internet);
    let mut request = get("https://api.example.com/start");
    request
        .headers_mut()
        .insert(COOKIE, HeaderValue::from_static("session=caller"));
    send(&client, request).await;

    assert_eq!(internet.authorizations(), [key(), None, None, None]);
    let cookies: Vec<bool> = internet.hits().iter().map(|h| h.cookie).collect();
    assert_eq!(cookies, [true, false, false, false]);
}

#[tokio::test]
async fn tower_http_s_standard_policy_would_send_the_credential_to_the_other_origin_again() {
    // Why `RedirectPolicy`: `FilterCredentials` compares each hop with the previous one only,
    // and `FollowRedirect` rebuilds every hop from the first request's headers.
    let internet = Internet::default();
    internet
        .redirect(
            "https://api.example.com/start",
            "https://cdn.example.net/one",
            StatusCode::FOUND,
        )
        .redirect(
            "https://cdn.example.net/one",
            "https://cdn.example.net/two",
            StatusCode::FOUND,
        );
    let service = ServiceBuilder::new()
        .layer(key_layer(&[API]))
        .layer(FollowRedirectLayer::new())
        .service(internet.service());
    service
        .oneshot(get("https://api.example.com/start"))
        .await
        .unwrap();
    assert_eq!(internet.authorizations(), [key(), None, key()]);
}

#[tokio::test]
async fn redirect_policy_stops_at_its_bound_and_returns_the_redirect() {
    let internet = Internet::default();
    internet
        .redirect(
            "https://api.example.com/1",
            "https://api.example.com/2",
            StatusCode::FOUND,
        )
        .redirect(
            "https://api.example.com/2",
            "https://api.example.com/3",
            StatusCode::FOUND,
        );
    let service = ServiceBuilder::new()
        .layer(key_layer(&[API]))
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::new(1)))
        .service(internet.service());
    let response = service
        .oneshot(get("https://api.example.com/1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(internet.hits().len(), 2);
}

// ---- per-request control -------------------------------------------------------------------

#[tokio::test]
async fn skip_holds_for_every_hop_of_the_chain() {
    let internet = Internet::default();
    internet.redirect(
        "https://api.example.com/v1/items",
        "https://api.example.com/v1/items/",
        StatusCode::MOVED_PERMANENTLY,
    );
    let client = outside(key_layer(&[API]), &internet);
    let mut request = get("https://api.example.com/v1/items");
    request.extensions_mut().insert(AuthorizationControl::Skip);
    send(&client, request).await;
    assert_eq!(internet.authorizations(), [None, None]);
}

#[tokio::test]
async fn a_per_request_provider_holds_for_every_hop_of_the_chain() {
    let internet = Internet::default();
    internet.redirect(
        "https://api.example.com/v1/items",
        "https://api.example.com/v1/items/",
        StatusCode::MOVED_PERMANENTLY,
    );
    let client = outside(key_layer(&[API]), &internet);
    let admin: Arc<dyn AuthorizationProvider> = Arc::new(StaticToken::api_key("admin").unwrap());
    let mut request = get("https://api.example.com/v1/items");
    request
        .extensions_mut()
        .insert(AuthorizationControl::Provider(admin));
    send(&client, request).await;
    let admin = Some("Token admin".to_owned());
    assert_eq!(internet.authorizations(), [admin.clone(), admin]);
}

// ---- 401 after a redirect --------------------------------------------------------------------

/// A provider that recovers from every 401, counting them.
#[derive(Default)]
struct Recovering {
    asked: AtomicUsize,
}

impl AuthorizationProvider for Recovering {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        let value = HeaderValue::from_static("Bearer first");
        AuthorizeFuture::ready(Ok(Credential::new(value, Generation::new(1))))
    }

    fn on_unauthorized(&self, _: &Credential, _: StatusCode, _: &HeaderMap) -> UnauthorizedFuture {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let value = HeaderValue::from_static("Bearer second");
        let retry = Unauthorized::Retry(Credential::new(value, Generation::new(2)));
        UnauthorizedFuture::ready(Ok(retry))
    }

    fn can_recover(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_401_from_another_origin_is_returned_without_asking_the_provider() {
    let internet = Internet::default();
    internet
        .redirect(
            "https://api.example.com/v1/export",
            "https://bucket.storage.example/export.csv",
            StatusCode::FOUND,
        )
        .answer(
            "https://bucket.storage.example/export.csv",
            StatusCode::UNAUTHORIZED,
        );
    let provider = Arc::new(Recovering::default());
    let client = outside(
        AuthorizeLayer::builder(Arc::clone(&provider))
            .allow_origin(API)
            .build()
            .unwrap(),
        &internet,
    );
    let response = send(&client, get("https://api.example.com/v1/export")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(provider.asked.load(Ordering::SeqCst), 0);
    assert_eq!(internet.hits().len(), 2, "no retry");
}

#[tokio::test]
async fn a_401_back_on_the_stamped_origin_is_retried_once_like_reqwest_does() {
    // A -> B -> A: the last hop has no credential; the 401 comes from the stamped origin, so
    // it is taken for a rejected credential: one retry, which meets the same chain.
    let internet = Internet::default();
    internet
        .redirect(
            "https://api.example.com/start",
            "https://cdn.example.net/bounce",
            StatusCode::FOUND,
        )
        .redirect(
            "https://cdn.example.net/bounce",
            "https://api.example.com/end",
            StatusCode::FOUND,
        )
        .answer("https://api.example.com/end", StatusCode::UNAUTHORIZED);
    let provider = Arc::new(Recovering::default());
    let client = outside(
        AuthorizeLayer::builder(Arc::clone(&provider))
            .allow_origin(API)
            .build()
            .unwrap(),
        &internet,
    );
    let response = send(&client, get("https://api.example.com/start")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(provider.asked.load(Ordering::SeqCst), 1);
    let first = Some("Bearer first".to_owned());
    let second = Some("Bearer second".to_owned());
    assert_eq!(
        internet.authorizations(),
        [first, None, None, second, None, None]
    );
}

// ---- the other placement ---------------------------------------------------------------------

/// `FollowRedirect` outside `AuthorizeLayer`, the order this crate does not support.
fn inside<P>(layer: AuthorizeLayer<StaticToken>, policy: P, internet: &Internet) -> Client
where
    P: tower_http::follow_redirect::policy::Policy<Full<Bytes>, BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::with_policy(policy))
        .layer(layer)
        .service(internet.service());
    BoxCloneSyncService::new(service)
}

#[tokio::test]
async fn inside_follow_redirect_with_tower_http_s_policy_every_hop_to_the_api_is_stamped() {
    // Pinned, as the crate docs say: with `FollowRedirect` outside `AuthorizeLayer` and
    // tower-http's own policy, a later hop looks like any first request, so the foreign
    // site's redirect to the API is stamped (a confused deputy), and `Skip` holds for the
    // first hop only.
    let internet = Internet::default();
    internet
        .redirect(
            "https://webhook.attacker.example/hook",
            "https://api.example.com/v1/items/7",
            StatusCode::TEMPORARY_REDIRECT,
        )
        .redirect(
            "https://api.example.com/v1/items",
            "https://api.example.com/v1/items/",
            StatusCode::MOVED_PERMANENTLY,
        );
    let standard = tower_http::follow_redirect::policy::Standard::default();
    let client = inside(key_layer(&[API]), standard, &internet);
    let request = Request::delete("https://webhook.attacker.example/hook")
        .body(Full::default())
        .unwrap();
    send(&client, request).await;
    assert_eq!(internet.authorizations(), [None, key()]);

    let mut skipped = get("https://api.example.com/v1/items");
    skipped.extensions_mut().insert(AuthorizationControl::Skip);
    send(&client, skipped).await;
    assert_eq!(internet.authorizations()[2..], [None, key()]);
}

#[tokio::test]
async fn inside_follow_redirect_with_redirect_policy_no_later_hop_is_stamped() {
    let internet = Internet::default();
    internet
        .redirect(
            "https://webhook.attacker.example/hook",
            "https://api.example.com/v1/items/7",
            StatusCode::TEMPORARY_REDIRECT,
        )
        .redirect(
            "https://api.example.com/v1/items",
            "https://api.example.com/v1/items/",
            StatusCode::MOVED_PERMANENTLY,
        );
    let client = inside(key_layer(&[API]), RedirectPolicy::default(), &internet);
    let request = Request::delete("https://webhook.attacker.example/hook")
        .body(Full::default())
        .unwrap();
    send(&client, request).await;
    assert_eq!(internet.authorizations(), [None, None]);

    // Safe, not useful: even a same-origin redirect arrives without a credential.
    send(&client, get("https://api.example.com/v1/items")).await;
    assert_eq!(internet.authorizations()[2..], [key(), None]);
}
