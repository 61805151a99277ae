//! Redirects with the tower layer: `AuthorizeLayer` **outside** tower-http's `FollowRedirect`,
//! which follows with `client_auth_tower::RedirectPolicy`, against in-process servers.
//!
//! The credential goes on the first hop only: a same-origin redirect keeps it, a hop to another
//! origin never gets it (nor any later hop of that chain), and a foreign site that redirects to
//! the API does not get an authorized request out of our client.
//!
//! Run it with `cargo run --example redirects`.

use bytes::Bytes;
use client_auth::StaticToken;
use client_auth_testkit::{ServerConfig, TestServer};
use client_auth_tower::{AuthorizeLayer, BoxError, RedirectPolicy};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::{FollowRedirectLayer, RequestUri};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let api = TestServer::start_with(ServerConfig::default().api_key("api-key")).await?;
    let storage = TestServer::start().await?;
    let elsewhere = TestServer::start().await?;

    let mut client = ServiceBuilder::new()
        // Outside: stamps the request the caller sends (the first hop), and reads the final URI
        // of a 401 before asking the provider about it.
        .layer(
            AuthorizeLayer::builder(StaticToken::api_key("api-key")?)
                .allow_origin(api.base_url())
                .allow_http(true) // loopback test servers; use https in production
                .build()?,
        )
        // Inside: follows redirects, and drops the credential from the first hop that leaves
        // the first hop's origin to the end of the chain.
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // 1. The API moves a resource within itself: both hops carry the key.
    let moved = redirect(&api, &api.resource_url());
    let response = send(&mut client, Method::GET, &moved).await?;
    println!("same-origin redirect   -> {}", response.status());
    assert!(response.status().is_success());
    assert!(
        api.seen_requests()
            .iter()
            .all(|r| r.authorization.is_some())
    );

    // 2. The API sends us to a storage host: the key stays behind.
    let export = redirect(&api, &storage.url("/api/export.csv"));
    let response = send(&mut client, Method::GET, &export).await?;
    let last = response
        .extensions()
        .get::<RequestUri>()
        .map(|u| u.0.clone());
    let storage_saw = storage.seen_requests()[0].authorization.clone();
    println!(
        "cross-origin redirect  -> {} from {last:?}; the storage host saw Authorization: {storage_saw:?}",
        response.status(),
    );
    assert!(storage_saw.is_none());

    // 3. A site we do not name answers our DELETE with a 307 to the API: the API gets the
    //    DELETE, but not an authorized one.
    let hook = redirect(&elsewhere, &api.url("/api/items/7"));
    let response = send(&mut client, Method::DELETE, &hook).await?;
    let forged = api
        .seen_requests()
        .pop()
        .map(|r| (r.method, r.authorization));
    println!(
        "foreign redirect       -> {}; the API saw {forged:?}",
        response.status()
    );
    assert_eq!(forged, Some(("DELETE".to_owned(), None)));
    Ok(())
}

/// `from`'s redirect endpoint, answering 307 with `Location: to`.
fn redirect(from: &TestServer, to: &str) -> String {
    format!("{}?to={to}", from.url("/redirect"))
}

async fn send<S, B>(client: &mut S, method: Method, url: &str) -> Result<Response<B>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
{
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::default())?;
    client.ready().await?.call(request).await
}
