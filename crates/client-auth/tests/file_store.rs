//! Providers that share a `FileStore` (as processes on one host do) refresh a rotating
//! refresh token once: the advisory lock is per open file, so providers in one process
//! coordinate exactly like separate processes. The multi-process version of this test is
//! `crates/client-auth-redis/tests/fleet.rs`.
#![cfg(feature = "file-store")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use client_auth::{
    AccessToken, FileStore, ManualClock, OAuthProvider, RefreshToken, StoredTokens, TokenStore,
};
use client_auth_testkit::{ServerConfig, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_sharing_a_file_store_refresh_a_rotating_token_once() {
    let server = TestServer::start_with(
        ServerConfig::default()
            .access_token_lifetime(Duration::from_secs(100))
            .token_delay(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "client-auth-file-store-providers-{}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let grant = server.issue_grant("alice", None);
    FileStore::new(&dir)
        .save(
            "alice",
            &StoredTokens {
                access_token: Some(AccessToken::new(grant.access_token.as_str())),
                refresh_token: Some(RefreshToken::new(grant.refresh_token.as_str())),
                expires_at: Some(SystemTime::now() + Duration::from_secs(100)),
                scope: None,
                issued_at: None,
            },
        )
        .await
        .unwrap();

    let clock = ManualClock::new();
    let providers: Vec<OAuthProvider> = (0..6)
        .map(|_| {
            OAuthProvider::refresh_token_grant(server.token_url())
                .client_id(server.client_id())
                .client_secret(server.client_secret().unwrap())
                .clock(Arc::new(clock.clone()))
                // One store value per provider: separate lock files, as in separate processes.
                .store(Arc::new(FileStore::new(&dir)), "alice")
                .build()
                .unwrap()
        })
        .collect();
    for p in &providers {
        assert_eq!(
            p.access_token().await.unwrap().expose_secret(),
            grant.access_token
        );
    }
    for round in 1..=3u64 {
        clock.advance(Duration::from_secs(95));
        server.advance(Duration::from_secs(95));
        let mut tasks = Vec::new();
        for p in &providers {
            for _ in 0..50 {
                let p = p.clone();
                tasks.push(tokio::spawn(async move { p.access_token().await }));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            seen.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
        }
        assert_eq!(seen.len(), 1, "every provider adopted the one new token");
        let stats = server.stats();
        assert_eq!(stats.refresh_grants, round, "{stats:?}");
        assert!(stats.token_errors.is_empty(), "{stats:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
