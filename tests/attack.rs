//! Attacks on the redirect rule and the token-endpoint transport rule through both adapters,
//! over real loopback sockets.
//!
//! Every host name resolves to 127.0.0.1 (the hyper client through `tls::Loopback`, reqwest
//! through [`LoopbackDns`]); each "origin" is its own [`Host`], a tiny HTTP/1.1 server that
//! records every request it gets with all its headers and answers from a script.
//!
//! A test marked `#[ignore = "known limit…"]` asserts the contract where the crate cannot hold it
//! and its docs say so; every other test pins behaviour that holds under attack (several were
//! reproductions of defects, since fixed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod tls;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client_auth::{
    AuthorizationControl, AuthorizationProvider, AuthorizeFuture, Credential, Generation,
    OAuthProvider, OriginPolicy, RequestView, StaticToken, TowerTransport,
};
use client_auth_reqwest::AuthorizationMiddleware;
use client_auth_tower::{AuthorizeLayer, BoxError, RedirectPolicy};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use reqwest_middleware::ClientWithMiddleware;
use tls::TlsFront;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

/// Any one request may take this long before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(15);

const CA_PEM: &[u8] = include_bytes!("support/tls/ca.pem");

// ---------------------------------------------------------------------------------------------
// A recording host
// ---------------------------------------------------------------------------------------------

/// One request as a host saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer: status and optional `Location`.
type Route = (u16, Option<String>);

/// A loopback HTTP/1.1 server answering from a script (`path -> route`, anything else 200) and
/// recording every request with all its headers. One request per connection.
struct Host {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    accept: AbortHandle,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Host {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let accept = tokio::spawn({
            let (seen, routes) = (Arc::clone(&seen), Arc::clone(&routes));
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, routes) = (Arc::clone(&seen), Arc::clone(&routes));
                    tokio::spawn(async move {
                        let _ = serve(stream, &seen, &routes).await;
                    });
                }
            }
        })
        .abort_handle();
        Self {
            port,
            seen,
            routes,
            accept,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://{host}:{port}`.
    fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("{}{path}", self.origin(host))
    }

    fn route(&self, path: &str, status: u16, location: Option<&str>) -> &Self {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, location.map(str::to_owned)));
        self
    }

    fn redirect(&self, path: &str, status: u16, location: &str) -> &Self {
        self.route(path, status, Some(location))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `(path, Authorization)` of every request, in order.
    fn authorizations(&self) -> Vec<(String, Option<String>)> {
        self.seen()
            .into_iter()
            .map(|s| {
                let auth = s.header("authorization").map(str::to_owned);
                (s.target, auth)
            })
            .collect()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    routes: &Mutex<HashMap<String, Route>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 256 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let path = target.split('?').next().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(Seen {
        method,
        target: target.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let route = {
        let routes = routes.lock().unwrap();
        routes.get(&target).or_else(|| routes.get(&path)).cloned()
    };
    let (status, location) = route.unwrap_or((200, None));
    let mut response = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    );
    if let Some(location) = location {
        response.push_str(&format!("Location: {location}\r\n"));
    }
    response.push_str("\r\nok");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Both adapters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    /// `AuthorizeLayer` outside `FollowRedirect(RedirectPolicy)`, the supported placement.
    Tower,
    /// `AuthorizationMiddleware` on a reqwest client (reqwest follows redirects).
    Reqwest,
}

/// Resolves every name to 127.0.0.1 (the URL's port is kept).
struct LoopbackDns;

impl reqwest::dns::Resolve for LoopbackDns {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
            Ok(addrs)
        })
    }
}

type TowerClient =
    BoxCloneSyncService<Request<Full<Bytes>>, http::Response<hyper::body::Incoming>, BoxError>;

#[derive(Clone)]
enum Client {
    Tower(TowerClient),
    Reqwest(ClientWithMiddleware),
}

/// The hops a chain reaches: all of them through the tower layer (later hops lose the
/// credential), the first `reqwest_hops` through reqwest, whose `redirect_policy` stops the
/// chain at the first redirect after it left the origin.
fn followed<const N: usize>(
    adapter: Adapter,
    hops: [(String, Option<String>); N],
    reqwest_hops: usize,
) -> Vec<(String, Option<String>)> {
    let mut hops = hops.to_vec();
    if matches!(adapter, Adapter::Reqwest) {
        hops.truncate(reqwest_hops);
    }
    hops
}

/// A reqwest client as the middleware's docs say to build it: with
/// `client_auth_reqwest::redirect_policy` (reqwest's own policy rebuilds later hops from the
/// first request's headers).
fn reqwest_client() -> reqwest::Client {
    reqwest_client_with(client_auth_reqwest::redirect_policy(10))
}

fn reqwest_client_with(policy: reqwest::redirect::Policy) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(CA_PEM).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .dns_resolver(Arc::new(LoopbackDns))
        .no_proxy()
        .redirect(policy)
        .build()
        .unwrap()
}

impl Client {
    fn new<P: AuthorizationProvider>(adapter: Adapter, provider: P, origins: OriginPolicy) -> Self {
        match adapter {
            Adapter::Tower => {
                let service = ServiceBuilder::new()
                    .layer(AuthorizeLayer::new(provider, origins))
                    .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
                    .service(tls::hyper_client::<Full<Bytes>>());
                Client::Tower(BoxCloneSyncService::new(service))
            }
            Adapter::Reqwest => Client::Reqwest(
                reqwest_middleware::ClientBuilder::new(reqwest_client())
                    .with(AuthorizationMiddleware::new(provider, origins))
                    .build(),
            ),
        }
    }

    /// Sends and returns the final status.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: &'static str,
        control: Option<AuthorizationControl>,
    ) -> StatusCode {
        tokio::time::timeout(LIMIT, self.send_now(method, url, body, control))
            .await
            .expect("no answer in time")
    }

    async fn send_now(
        &self,
        method: Method,
        url: &str,
        body: &'static str,
        control: Option<AuthorizationControl>,
    ) -> StatusCode {
        match self {
            Client::Tower(service) => {
                let mut request = Request::builder()
                    .method(method)
                    .uri(url)
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                if let Some(control) = control {
                    request.extensions_mut().insert(control);
                }
                let response = service.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                status
            }
            Client::Reqwest(client) => {
                let mut builder = client.request(method, url);
                if !body.is_empty() {
                    builder = builder.body(body);
                }
                if let Some(control) = control {
                    builder = builder.with_extension(control);
                }
                let response = builder.send().await.unwrap();
                let status = response.status();
                let _ = response.bytes().await;
                status
            }
        }
    }

    async fn get(&self, url: &str) -> StatusCode {
        self.send(Method::GET, url, "", None).await
    }
}

fn named(origins: &[String]) -> OriginPolicy {
    origins
        .iter()
        .fold(OriginPolicy::builder(), |b, o| b.allow_origin(o.as_str()))
        .allow_http(true)
        .build()
        .unwrap()
}

fn key() -> StaticToken {
    StaticToken::api_key("API-KEY-MARKER").unwrap()
}

const KEY: &str = "Token API-KEY-MARKER";

/// The two tests of a scenario, each optionally ignored as a reproduction.
macro_rules! both {
    ($scenario:ident: $tower:ident $([$tower_why:literal])?, $reqwest:ident $([$reqwest_why:literal])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[ignore = $tower_why])?
        async fn $tower() {
            $scenario(Adapter::Tower).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[ignore = $reqwest_why])?
        async fn $reqwest() {
            $scenario(Adapter::Reqwest).await;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Redirect chains: the credential goes on the first hop only, and never again once the chain
// has left the stamped origin (the one redirect rule)
// ---------------------------------------------------------------------------------------------

both!(
    a_chain_that_left_the_api_never_carries_the_credential_on_a_later_foreign_hop:
    tower_a_chain_that_left_the_api_never_carries_the_credential_on_a_later_foreign_hop,
    reqwest_a_chain_that_left_the_api_never_carries_the_credential_on_a_later_foreign_hop
);
/// API -> files host -> files host (a storage host that redirects within itself, as object
/// stores and CDNs do). reqwest 0.13 follows redirects with tower-http's `FollowRedirect`,
/// which rebuilds every hop from the first request's headers, and its policy strips
/// credentials only when a hop changes host **from the previous hop**: the B -> B hop gets the
/// API's `Authorization` back.
async fn a_chain_that_left_the_api_never_carries_the_credential_on_a_later_foreign_hop(
    adapter: Adapter,
) {
    let api = Host::start().await;
    let files = Host::start().await;
    api.redirect("/export", 302, &files.url("files.example.net", "/a"));
    files.redirect("/a", 302, "/b");
    let client = Client::new(adapter, key(), named(&[api.origin("api.example.com")]));

    client.get(&api.url("api.example.com", "/export")).await;

    assert_eq!(
        api.authorizations(),
        [("/export".to_owned(), Some(KEY.to_owned()))]
    );
    assert_eq!(
        files.authorizations(),
        followed(
            adapter,
            [("/a".to_owned(), None), ("/b".to_owned(), None)],
            1
        ),
        "the files host must never see the API key"
    );
}

both!(
    a_chain_that_came_back_to_the_api_is_not_stamped_on_its_next_same_origin_hop:
    tower_a_chain_that_came_back_to_the_api_is_not_stamped_on_its_next_same_origin_hop,
    reqwest_a_chain_that_came_back_to_the_api_is_not_stamped_on_its_next_same_origin_hop
);
/// API -> attacker -> API path of the attacker's choice -> (the API's own trailing-slash
/// redirect) -> API. Once the chain has left the origin no hop may carry the credential,
/// "even one that returns to the stamped origin": otherwise the attacker chooses a path
/// (and, with 307, the method and body) of an authorized request (the confused deputy of issue
/// 11, item 1).
async fn a_chain_that_came_back_to_the_api_is_not_stamped_on_its_next_same_origin_hop(
    adapter: Adapter,
) {
    let api = Host::start().await;
    let attacker = Host::start().await;
    api.redirect(
        "/avatar",
        302,
        &attacker.url("webhook.attacker.example", "/x"),
    )
    .redirect("/v1/items/7", 307, "/v1/items/7/");
    attacker.redirect("/x", 307, &api.url("api.example.com", "/v1/items/7"));
    let client = Client::new(adapter, key(), named(&[api.origin("api.example.com")]));

    client.get(&api.url("api.example.com", "/avatar")).await;

    assert_eq!(
        api.authorizations(),
        followed(
            adapter,
            [
                ("/avatar".to_owned(), Some(KEY.to_owned())),
                ("/v1/items/7".to_owned(), None),
                ("/v1/items/7/".to_owned(), None),
            ],
            1
        ),
        "no hop after the chain left the API carries the key"
    );
    assert_eq!(attacker.authorizations(), [("/x".to_owned(), None)]);
}

both!(
    with_any_https_origin_a_storage_host_redirecting_within_itself_gets_no_credential:
    tower_with_any_https_origin_a_storage_host_redirecting_within_itself_gets_no_credential,
    reqwest_with_any_https_origin_a_storage_host_redirecting_within_itself_gets_no_credential
);
/// The storage-host case (`any_https_origin()`, the API answers 302 to its storage), with one more
/// hop inside the storage host.
async fn with_any_https_origin_a_storage_host_redirecting_within_itself_gets_no_credential(
    adapter: Adapter,
) {
    let api = Host::start().await;
    let storage = Host::start().await;
    let api_tls = TlsFront::start(api.addr()).await;
    let storage_tls = TlsFront::start(storage.addr()).await;
    api.redirect(
        "/v1/export",
        302,
        &storage_tls.url("bucket.storage.example", "/export.csv"),
    );
    storage.redirect("/export.csv", 307, "/eu/export.csv");
    let origins = OriginPolicy::builder().any_https_origin().build().unwrap();
    let client = Client::new(adapter, key(), origins);

    client
        .get(&api_tls.url("api.example.com", "/v1/export"))
        .await;

    assert_eq!(
        api.authorizations(),
        [("/v1/export".to_owned(), Some(KEY.to_owned()))]
    );
    assert_eq!(
        storage.authorizations(),
        followed(
            adapter,
            [
                ("/export.csv".to_owned(), None),
                ("/eu/export.csv".to_owned(), None)
            ],
            1
        )
    );
}

both!(
    a_per_request_provider_s_credential_never_reaches_a_later_foreign_hop:
    tower_a_per_request_provider_s_credential_never_reaches_a_later_foreign_hop,
    reqwest_a_per_request_provider_s_credential_never_reaches_a_later_foreign_hop
);
/// The same hole with a per-request override: the admin key leaks.
async fn a_per_request_provider_s_credential_never_reaches_a_later_foreign_hop(adapter: Adapter) {
    let api = Host::start().await;
    let other = Host::start().await;
    api.redirect("/r", 307, &other.url("other.example.net", "/a"));
    other.redirect("/a", 308, "/b");
    let client = Client::new(adapter, key(), named(&[api.origin("api.example.com")]));
    let admin: Arc<dyn AuthorizationProvider> =
        Arc::new(StaticToken::api_key("ADMIN-KEY").unwrap());

    client
        .send(
            Method::GET,
            &api.url("api.example.com", "/r"),
            "",
            Some(AuthorizationControl::Provider(admin)),
        )
        .await;

    assert_eq!(
        api.authorizations(),
        [("/r".to_owned(), Some("Token ADMIN-KEY".to_owned()))]
    );
    assert_eq!(
        other.authorizations(),
        followed(
            adapter,
            [("/a".to_owned(), None), ("/b".to_owned(), None)],
            1
        )
    );
}

// ---- hop variants that held -------------------------------------------------------------------

both!(
    every_kind_of_hop_keeps_or_drops_the_credential_as_the_rule_says:
    tower_every_kind_of_hop_keeps_or_drops_the_credential_as_the_rule_says,
    reqwest_every_kind_of_hop_keeps_or_drops_the_credential_as_the_rule_says
);
/// One hop each, from `api.example.com:A`: relative, case, trailing dot, userinfo, port change,
/// IDN, scheme-relative to another host, 303 after a POST. Same origin keeps the credential
/// (the copy of the first hop's headers), anything else drops it; both adapters agree.
async fn every_kind_of_hop_keeps_or_drops_the_credential_as_the_rule_says(adapter: Adapter) {
    let api = Host::start().await;
    let other_port = Host::start().await;
    let a = |path: &str| api.url("api.example.com", path);
    let cases: Vec<(&str, String, bool)> = vec![
        ("relative", "/same".to_owned(), true),
        ("upper-case host", api.url("API.EXAMPLE.COM", "/same"), true),
        ("explicit same port", a("/same"), true),
        ("trailing dot", api.url("api.example.com.", "/dot"), false),
        (
            "other port",
            other_port.url("api.example.com", "/port"),
            false,
        ),
        // Same host, port and scheme, with userinfo: tower's `RedirectPolicy` takes it for
        // another origin (drops), reqwest for the same host (keeps). Not a leak either way (the
        // same server), but the adapters disagree, which the one redirect rule says they must not.
        (
            "userinfo",
            api.url("user:pw@api.example.com", "/userinfo"),
            adapter == Adapter::Reqwest,
        ),
        ("IDN host", api.url("bücher.example", "/idn"), false),
        (
            "scheme-relative",
            format!("//evil.example:{}/sr", api.port),
            false,
        ),
        (
            "suffix host",
            api.url("api.example.com.evil.example", "/suffix"),
            false,
        ),
    ];
    let client = Client::new(adapter, key(), named(&[api.origin("api.example.com")]));
    for (what, location, keeps) in &cases {
        let start = format!("/start-{}", what.replace(' ', "-"));
        api.redirect(&start, 302, location);
        let before_api = api.seen().len();
        let before_other = other_port.seen().len();
        client.get(&a(&start)).await;
        let hops: Vec<Seen> = api.seen()[before_api..]
            .iter()
            .chain(&other_port.seen()[before_other..])
            .cloned()
            .collect();
        assert_eq!(hops.len(), 2, "{what}: {hops:?}");
        assert_eq!(hops[0].header("authorization"), Some(KEY), "{what}");
        let second = hops[1].header("authorization");
        assert_eq!(second.is_some(), *keeps, "{what}: second hop {second:?}");
    }

    // 303 after a POST: a GET without the body, on the same origin with the credential.
    api.redirect("/post", 303, "/after-post");
    client.send(Method::POST, &a("/post"), "form=1", None).await;
    let seen = api.seen();
    let last = &seen[seen.len() - 1];
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        ("GET", "/after-post")
    );
    assert_eq!(last.header("authorization"), Some(KEY));
    assert!(last.body.is_empty());
}

both!(
    an_https_api_redirecting_to_plain_http_on_the_same_host_does_not_send_the_credential:
    tower_an_https_api_redirecting_to_plain_http_on_the_same_host_does_not_send_the_credential,
    reqwest_an_https_api_redirecting_to_plain_http_on_the_same_host_does_not_send_the_credential
);
/// Scheme downgrade on the same host name: `https://api:A` -> `http://api:B`.
async fn an_https_api_redirecting_to_plain_http_on_the_same_host_does_not_send_the_credential(
    adapter: Adapter,
) {
    let api = Host::start().await;
    let front = TlsFront::start(api.addr()).await;
    api.redirect("/secure", 301, &api.url("api.example.com", "/clear"));
    let origins = named(&[front.origin("api.example.com")]);
    let client = Client::new(adapter, key(), origins);

    client.get(&front.url("api.example.com", "/secure")).await;

    assert_eq!(
        api.authorizations(),
        [
            ("/secure".to_owned(), Some(KEY.to_owned())),
            ("/clear".to_owned(), None)
        ]
    );
}

// ---- extra headers of a credential ------------------------------------------------------------

/// A provider whose credential carries an extra header (`Credential::with_extra_headers`:
/// "a DPoP proof, a tenant header"), here an API key header.
struct WithExtra;

impl AuthorizationProvider for WithExtra {
    fn authorize(&self, _: &RequestView<'_>) -> AuthorizeFuture {
        let mut extra = HeaderMap::new();
        extra.insert(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("EXTRA-SECRET"),
        );
        AuthorizeFuture::ready(Ok(Credential::new(
            HeaderValue::from_static("Bearer MAIN-SECRET"),
            Generation::new(0),
        )
        .with_extra_headers(extra)))
    }

    fn can_recover(&self) -> bool {
        false
    }
}

both!(
    a_credential_s_extra_headers_never_reach_another_origin:
    tower_a_credential_s_extra_headers_never_reach_another_origin,
    reqwest_a_credential_s_extra_headers_never_reach_another_origin
);
/// the one redirect rule: "no hop on another origin carries [the credential]". A credential is its
/// `Authorization` value **and** its extra headers (`Credential`'s own docs); only the former
/// is dropped on a cross-origin hop.
async fn a_credential_s_extra_headers_never_reach_another_origin(adapter: Adapter) {
    let api = Host::start().await;
    let other = Host::start().await;
    api.redirect("/r", 302, &other.url("other.example.net", "/landing"));
    let origins = named(&[api.origin("api.example.com")]);
    let client = match adapter {
        Adapter::Tower => Client::new(adapter, WithExtra, origins),
        // reqwest removes only its own list of headers on a cross-origin hop: the middleware's
        // docs pair such a provider with a client that stays on the origin.
        Adapter::Reqwest => Client::Reqwest(
            reqwest_middleware::ClientBuilder::new(reqwest_client_with(
                client_auth_reqwest::same_origin_redirect_policy(10),
            ))
            .with(AuthorizationMiddleware::new(WithExtra, origins))
            .build(),
        ),
    };

    client.get(&api.url("api.example.com", "/r")).await;

    let first = &api.seen()[0];
    assert_eq!(first.header("x-api-key"), Some("EXTRA-SECRET"));
    let landed = other.seen();
    // Through the tower layer the chain lands there without the credential; reqwest's
    // same-origin policy does not follow the hop at all.
    assert_eq!(landed.len(), usize::from(matches!(adapter, Adapter::Tower)));
    for hop in &landed {
        assert_eq!(hop.header("authorization"), None);
        assert_eq!(
            hop.header("x-api-key"),
            None,
            "the extra credential header reached another origin"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: "never follow redirects, whatever client the user supplies (take a
// ClientBuilder and set the policy, or refuse)"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limit, documented on TowerTransport: it cannot see a redirect follower inside the service it wraps; tower-http's default policy then sends the client secret on token -> B -> B (use no follower, or RedirectPolicy)"]
async fn tower_transport_never_lets_a_token_request_follow_a_redirect_whatever_service_it_wraps() {
    let auth = Host::start().await;
    let other = Host::start().await;
    auth.redirect("/token", 303, &other.url("other.example.net", "/a"));
    other.redirect("/a", 302, "/b");
    // A hyper client the user already wraps in tower-http's `FollowRedirect` (its default,
    // `Standard` policy) for the rest of the application, handed to the token transport.
    let service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .service(tls::hyper_client::<Full<Bytes>>());
    let provider = OAuthProvider::client_credentials(auth.url("auth.example.com", "/token"))
        .allow_http(true)
        .client_id("svc")
        .client_secret("CLIENT-SECRET-MARKER")
        .transport(Arc::new(TowerTransport::new(service)))
        .build()
        .unwrap();

    let error = tokio::time::timeout(LIMIT, provider.access_token())
        .await
        .unwrap()
        .unwrap_err();

    let basic = auth.seen()[0].header("authorization").map(str::to_owned);
    assert!(basic.as_deref().is_some_and(|b| b.starts_with("Basic ")));
    let leaked: Vec<_> = other
        .seen()
        .into_iter()
        .filter(|s| s.header("authorization") == basic.as_deref())
        .map(|s| s.target)
        .collect();
    assert!(
        other.seen().is_empty(),
        "the token request was followed to another host ({error}); the client secret reached it on {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_transport_over_the_crate_s_own_redirect_policy_sends_no_secret_off_the_token_origin()
{
    // The README's stack reused for the token transport: `RedirectPolicy` never re-adds the
    // secret once the chain left the token endpoint's origin, and copies no form body.
    let auth = Host::start().await;
    let other = Host::start().await;
    auth.redirect("/token", 303, &other.url("other.example.net", "/a"));
    other.redirect("/a", 302, "/b");
    let service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::with_policy(RedirectPolicy::default()))
        .service(tls::hyper_client::<Full<Bytes>>());
    let provider = OAuthProvider::client_credentials(auth.url("auth.example.com", "/token"))
        .allow_http(true)
        .client_id("svc")
        .client_secret("CLIENT-SECRET-MARKER")
        .transport(Arc::new(TowerTransport::new(service)))
        .build()
        .unwrap();

    let _ = tokio::time::timeout(LIMIT, provider.access_token())
        .await
        .unwrap();

    for seen in other.seen() {
        assert_eq!(seen.header("authorization"), None, "{seen:?}");
        assert!(!seen.body.contains("MARKER"), "{seen:?}");
    }
}
