//! A loopback HTTP/1.1 server that records every request with all its headers and body, and
//! answers through a handler: the third review's token endpoints and resources that speak DPoP,
//! claims challenges and assertion grants. One request per connection. Include with
//! `#[path = "support/recording_host.rs"] mod recording_host;`.
#![allow(dead_code, reason = "each including test binary uses a different part")]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// One request as the host saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub(crate) fn param(&self, name: &str) -> Option<String> {
        url_decode_form(&self.body)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The claims of the DPoP proof, if the request carries one.
    pub(crate) fn dpop_claims(&self) -> Option<serde_json::Value> {
        let proof = self.header("dpop")?;
        let part = proof.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// `application/x-www-form-urlencoded`, decoded (`+` is a space).
pub(crate) fn url_decode_form(body: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// An answer: status, headers, body.
pub(crate) type Reply = (u16, Vec<(String, String)>, String);

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A recording host. Stops accepting when dropped.
pub(crate) struct Host {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: AbortHandle,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Host {
    /// A host answering every request with `handler`.
    pub(crate) async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                    tokio::spawn(async move {
                        let _ = serve(stream, &seen, &*handler).await;
                    });
                }
            }
        })
        .abort_handle();
        Self { port, seen, accept }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://{host}:{port}`.
    pub(crate) fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        format!("{}{path}", self.origin(host))
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
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
    let request = Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, reply_headers, reply_body) = handler(&request);
    seen.lock().unwrap().push(request);
    let mut response = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply_body.len()
    );
    for (name, value) in reply_headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply_body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Resolves every name to 127.0.0.1 (the URL's port is kept).
pub(crate) struct LoopbackDns;

impl reqwest::dns::Resolve for LoopbackDns {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
            Ok(addrs)
        })
    }
}

/// A JSON answer.
pub(crate) fn json(status: u16, body: &serde_json::Value) -> Reply {
    (
        status,
        vec![("Content-Type".to_owned(), "application/json".to_owned())],
        body.to_string(),
    )
}
