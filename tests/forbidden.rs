//! A 403 through both adapters: returned as it is by default, and handled like a 401 (one new
//! token, one retry) only for a provider built with `retry_forbidden(true)`. The API is a small
//! loopback server that answers 403 to the first token it sees and 200 to any other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use client_auth::OAuthProvider;
use client_auth_testkit::TestServer;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "support/adapters.rs"]
mod adapters;

use adapters::{ADAPTERS, AuthClient, token_transport};

/// An API on loopback: 403 to the first `Authorization` it sees, 200 to every other; it
/// records each request's `Authorization`.
async fn forbidding_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let authorization = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or(l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("")
                    .to_owned();
                let status = {
                    let mut log = log.lock().unwrap();
                    let first = log
                        .first()
                        .cloned()
                        .unwrap_or_else(|| authorization.clone());
                    log.push(authorization.clone());
                    if authorization == first {
                        "403 Forbidden"
                    } else {
                        "200 OK"
                    }
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (origin, seen)
}

fn provider(
    server: &TestServer,
    adapter: adapters::Adapter,
    retry_forbidden: bool,
) -> OAuthProvider {
    OAuthProvider::client_credentials(server.token_url())
        .client_id(server.client_id())
        .client_secret(server.client_secret().unwrap())
        .retry_forbidden(retry_forbidden)
        .transport(token_transport(adapter))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_returned_as_it_is_without_the_opt_in() {
    for adapter in ADAPTERS {
        let server = TestServer::start().await.unwrap();
        let (origin, seen) = forbidding_api().await;
        let client = AuthClient::new(adapter, provider(&server, adapter, false), &origin);

        let outcome = client.get(&format!("{origin}/v1/items")).await;

        assert_eq!(outcome.status(), Some(StatusCode::FORBIDDEN), "{adapter:?}");
        assert_eq!(seen.lock().unwrap().len(), 1, "{adapter:?}: no retry");
        assert_eq!(server.stats().token_calls, 1, "{adapter:?}: no new token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_gets_one_new_token_and_one_retry_with_the_opt_in() {
    for adapter in ADAPTERS {
        let server = TestServer::start().await.unwrap();
        let (origin, seen) = forbidding_api().await;
        let client = AuthClient::new(adapter, provider(&server, adapter, true), &origin);

        let outcome = client.get(&format!("{origin}/v1/items")).await;

        assert_eq!(outcome.status(), Some(StatusCode::OK), "{adapter:?}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{adapter:?}: one retry");
        assert_ne!(seen[0], seen[1], "{adapter:?}: with a new token");
        assert_eq!(server.stats().token_calls, 2, "{adapter:?}");
    }
}
