//! What protects the tokens in Redis: the tokens key's expiry (`tokens_ttl`), at-rest
//! encryption (feature `encryption`), the `tls` feature for `rediss://`, and the ACL the docs
//! recommend.
//!
//! Gated like the other Redis tests: `CLIENT_AUTH_REDIS=1` runs them (and fails without
//! `redis-server`); without it they print how to enable them and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use client_auth::{AccessToken, RefreshToken, StoredTokens, TokenStore};
use client_auth_redis::RedisStore;
use client_auth_redis::redis::AsyncCommands as _;
use support::{RedisServer, redis_enabled};

fn tokens(marker: &str) -> StoredTokens {
    StoredTokens {
        access_token: Some(AccessToken::new(format!("at-{marker}"))),
        refresh_token: Some(RefreshToken::new(format!("rt-{marker}"))),
        expires_at: SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(1_900_000_000_000)),
        scope: Some("read".to_owned()),
        issued_at: None,
        dpop_jkt: None,
    }
}

async fn raw(redis: &RedisServer) -> client_auth_redis::redis::aio::MultiplexedConnection {
    client_auth_redis::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_ttl_is_set_with_every_write() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = raw(&redis).await;
    let store = RedisStore::builder(redis.url())
        .tokens_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let key = store.tokens_key("ns");
    // Without the lease: one `SET … PX`.
    store.save("ns", &tokens("A")).await.unwrap();
    let left: i64 = conn.pttl(&key).await.unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    // Under the lease: the fenced script sets the expiry with the value.
    let lease = store
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let _: bool = conn.persist(&key).await.unwrap();
    store.save("ns", &tokens("B")).await.unwrap();
    let left: i64 = conn.pttl(&key).await.unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    lease.release().await.unwrap();
    assert_eq!(store.load("ns").await.unwrap(), Some(tokens("B")));

    // Without the option, a write leaves no expiry (and removes an earlier one), as before.
    let plain = RedisStore::builder(redis.url()).build().unwrap();
    plain.save("ns", &tokens("C")).await.unwrap();
    let left: i64 = conn.pttl(&key).await.unwrap();
    assert_eq!(left, -1);
    let lease = plain
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    plain.save("ns", &tokens("D")).await.unwrap();
    let left: i64 = conn.pttl(&key).await.unwrap();
    assert_eq!(left, -1);
    lease.release().await.unwrap();

    // An expired key reads as nothing stored.
    let short = RedisStore::builder(redis.url())
        .tokens_ttl(Duration::from_millis(50))
        .build()
        .unwrap();
    short.save("ns", &tokens("E")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(short.load("ns").await.unwrap().is_none());
}

#[test]
fn rediss_urls_need_the_tls_feature() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let built = RedisStore::builder("rediss://:hunter2@redis.internal:6380/").build();
        #[cfg(feature = "tls")]
        built.unwrap();
        #[cfg(not(feature = "tls"))]
        {
            let e = built.unwrap_err();
            assert!(e.to_string().contains("`tls` feature"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    });
}

/// The ACL the crate docs recommend is enough for every operation of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let mut admin = raw(&redis).await;
    // As in the crate docs' "Protecting the tokens".
    let _: () = client_auth_redis::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("billing")
        .arg("on")
        .arg(">s3cret-pw")
        .arg("resetkeys")
        .arg("~billing-service:*")
        .arg("resetchannels")
        .arg("-@all")
        .arg("+get")
        .arg("+set")
        .arg("+del")
        .arg("+pexpire")
        .arg("+evalsha")
        .arg("+script|load")
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://billing:s3cret-pw@127.0.0.1:{}/", redis.port);
    let store = RedisStore::builder(url.as_str())
        .prefix("billing-service:")
        .tokens_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    store.save("ns", &tokens("A")).await.unwrap();
    assert_eq!(store.load("ns").await.unwrap(), Some(tokens("A")));
    let lease = store
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    lease.renew(Duration::from_secs(10)).await.unwrap();
    store.save("ns", &tokens("B")).await.unwrap();
    assert!(
        store
            .clear_if_refresh_token("ns", &RefreshToken::new("rt-B"))
            .await
            .unwrap()
    );
    lease.release().await.unwrap();
    store.save("ns", &tokens("C")).await.unwrap();
    store.clear("ns").await.unwrap();
    assert!(store.load("ns").await.unwrap().is_none());
    // Keys outside the prefix are out of reach.
    let outside = RedisStore::builder(url.as_str())
        .prefix("other-service:")
        .build()
        .unwrap();
    let e = outside.load("ns").await.unwrap_err();
    assert!(!e.to_string().contains("s3cret-pw"), "{e}");
}

#[cfg(feature = "encryption")]
mod encryption {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raw_value_holds_no_token_and_round_trips() {
        if !redis_enabled() {
            return;
        }
        let redis = RedisServer::start();
        let mut conn = raw(&redis).await;
        let store = RedisStore::builder(redis.url())
            .encryption_key(KEY)
            .build()
            .unwrap();
        assert!(format!("{store:?}").contains("encrypted: true"));
        store.save("ns", &tokens("SECRET-MARKER")).await.unwrap();
        let stored: Vec<u8> = conn.get(store.tokens_key("ns")).await.unwrap();
        for needle in [&b"SECRET-MARKER"[..], b"access_token", b"read", &KEY[..8]] {
            assert!(!contains(&stored, needle), "{needle:?} in the raw value");
        }
        assert_eq!(
            store.load("ns").await.unwrap(),
            Some(tokens("SECRET-MARKER"))
        );
        // Another process with the same key reads it; the fenced write encrypts too.
        let other = RedisStore::builder(redis.url())
            .encryption_key(KEY)
            .build()
            .unwrap();
        assert_eq!(
            other.load("ns").await.unwrap(),
            Some(tokens("SECRET-MARKER"))
        );
        let lease = other
            .lock_refresh("ns", Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        other.save("ns", &tokens("NEW-MARKER")).await.unwrap();
        lease.release().await.unwrap();
        let stored: Vec<u8> = conn.get(store.tokens_key("ns")).await.unwrap();
        assert!(!contains(&stored, b"MARKER"));
        assert_eq!(store.load("ns").await.unwrap(), Some(tokens("NEW-MARKER")));
        // An envelope copied under another namespace is refused (it is bound to its key).
        let _: () = conn.set(store.tokens_key("moved"), &stored).await.unwrap();
        let e = store.load("moved").await.unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("could not be decrypted"), "{e}");
        assert!(!e.to_string().contains("MARKER"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_or_missing_key_is_a_clear_permanent_error() {
        if !redis_enabled() {
            return;
        }
        let redis = RedisServer::start();
        let mut conn = raw(&redis).await;
        let store = RedisStore::builder(redis.url())
            .encryption_key(KEY)
            .build()
            .unwrap();
        let wrong = RedisStore::builder(redis.url())
            .encryption_key([0x43; 32])
            .build()
            .unwrap();
        let keyless = RedisStore::builder(redis.url()).build().unwrap();
        store.save("ns", &tokens("SECRET-MARKER")).await.unwrap();
        let key = store.tokens_key("ns");
        let stored: Vec<u8> = conn.get(&key).await.unwrap();
        let rt = RefreshToken::new("rt-SECRET-MARKER");

        let check = |e: client_auth::StoreError, what: &str| {
            let text = e.to_string();
            assert!(!e.is_transient(), "{text}");
            assert!(text.contains(what), "{text}");
            assert!(text.contains(&key), "{text}");
            assert!(!text.contains("MARKER"), "{text}");
        };
        check(wrong.load("ns").await.unwrap_err(), "different key");
        check(
            wrong.clear_if_refresh_token("ns", &rt).await.unwrap_err(),
            "different key",
        );
        check(
            keyless.load("ns").await.unwrap_err(),
            "this store has no encryption key",
        );
        check(
            keyless.clear_if_refresh_token("ns", &rt).await.unwrap_err(),
            "this store has no encryption key",
        );
        // Nothing was removed or rewritten.
        let still: Vec<u8> = conn.get(&key).await.unwrap();
        assert_eq!(still, stored);
        assert_eq!(
            store.load("ns").await.unwrap(),
            Some(tokens("SECRET-MARKER"))
        );

        // Plain JSON (written without the key, or planted) is not adopted by an encrypting
        // store, nor compared.
        keyless
            .save("plain", &tokens("SECRET-MARKER"))
            .await
            .unwrap();
        let plain_key = store.tokens_key("plain");
        for e in [
            store.load("plain").await.unwrap_err(),
            store
                .clear_if_refresh_token("plain", &rt)
                .await
                .unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(!e.is_transient(), "{text}");
            assert!(text.contains("not encrypted"), "{text}");
            assert!(text.contains(&plain_key), "{text}");
            assert!(!text.contains("MARKER"), "{text}");
        }
        let exists: bool = conn.exists(&plain_key).await.unwrap();
        assert!(exists);
        // A truncated envelope is corrupt, for both readers.
        let _: () = conn.set(&key, &stored[..30]).await.unwrap();
        check(store.load("ns").await.unwrap_err(), "corrupt");
        check(
            store.clear_if_refresh_token("ns", &rt).await.unwrap_err(),
            "corrupt",
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compare_and_delete_works_encrypted() {
        if !redis_enabled() {
            return;
        }
        let redis = RedisServer::start();
        let mut conn = raw(&redis).await;
        let this = RedisStore::builder(redis.url())
            .encryption_key(KEY)
            .build()
            .unwrap();
        let other = RedisStore::builder(redis.url())
            .encryption_key(KEY)
            .build()
            .unwrap();
        let old = RefreshToken::new("rt-OLD");
        assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
        this.save("ns", &tokens("OLD")).await.unwrap();
        // Another process rotated the refresh token: the newer one survives, also under the
        // lease (the fenced path).
        other.save("ns", &tokens("NEW")).await.unwrap();
        assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
        let lease = this
            .lock_refresh("ns", Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
        assert_eq!(this.load("ns").await.unwrap(), Some(tokens("NEW")));
        // The matching one is removed, under the lease and without it.
        assert!(
            this.clear_if_refresh_token("ns", &RefreshToken::new("rt-NEW"))
                .await
                .unwrap()
        );
        lease.release().await.unwrap();
        let exists: bool = conn.exists(this.tokens_key("ns")).await.unwrap();
        assert!(!exists);
        this.save("ns", &tokens("A")).await.unwrap();
        assert!(
            other
                .clear_if_refresh_token("ns", &RefreshToken::new("rt-A"))
                .await
                .unwrap()
        );
        assert!(this.load("ns").await.unwrap().is_none());
        // Tokens without a refresh token match no refresh token.
        let no_refresh = StoredTokens {
            refresh_token: None,
            ..tokens("B")
        };
        this.save("ns", &no_refresh).await.unwrap();
        assert!(
            !this
                .clear_if_refresh_token("ns", &RefreshToken::new(""))
                .await
                .unwrap()
        );
        assert_eq!(this.load("ns").await.unwrap(), Some(no_refresh));
        // A stale holder stays fenced out.
        let stale = this
            .lock_refresh("ns", Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        let fresh = other
            .lock_refresh("ns", Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let e = this
            .clear_if_refresh_token("ns", &RefreshToken::new("rt-B"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        stale.release().await.unwrap();
        fresh.release().await.unwrap();
    }
}
