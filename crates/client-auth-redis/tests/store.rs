//! The Redis store's own behaviour against a real `redis-server`: lease exclusivity,
//! fencing, compare-and-delete release, lease renewal, compare-and-delete of the tokens, wait
//! timeout, outage handling, corrupt data.
//!
//! Gated like the fleet tests: `CLIENT_AUTH_REDIS=1` runs them (and fails without
//! `redis-server`); without it they print how to enable them and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant, SystemTime};

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
async fn saves_loads_and_clears_under_the_prefix() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .prefix("t1:")
        .build()
        .unwrap();
    assert!(store.load("ns").await.unwrap().is_none());
    store.save("ns", &tokens("A")).await.unwrap();
    assert_eq!(store.load("ns").await.unwrap(), Some(tokens("A")));
    assert_eq!(store.tokens_key("ns"), "t1:ns:tokens");
    assert_eq!(store.lock_key("ns"), "t1:ns:lock");
    let mut conn = raw(&redis).await;
    let exists: bool = conn.exists("t1:ns:tokens").await.unwrap();
    assert!(exists);
    store.clear("ns").await.unwrap();
    assert!(store.load("ns").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_exclusive_and_a_waiter_gets_it_on_release() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let a = RedisStore::builder(redis.url()).build().unwrap();
    let b = RedisStore::builder(redis.url())
        .lock_wait_timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let lease = a
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let t = Instant::now();
    let e = b
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(150));
    let waiter = tokio::spawn({
        let b = RedisStore::builder(redis.url()).build().unwrap();
        async move {
            let lease = b.lock_refresh("ns", Duration::from_secs(10)).await.unwrap();
            lease.unwrap().release().await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    lease.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_cannot_write_or_release_the_next_holders() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let a = RedisStore::builder(redis.url()).build().unwrap();
    let b = RedisStore::builder(redis.url()).build().unwrap();
    let stale = a
        .lock_refresh("ns", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    // The holder stalls past its ttl; another process takes over and writes.
    let fresh = b
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    b.save("ns", &tokens("NEW")).await.unwrap();
    // The stale holder's fenced write is refused and says so without a token.
    let e = a.save("ns", &tokens("OLD-MARKER")).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(!e.to_string().contains("MARKER"), "{e}");
    assert_eq!(b.load("ns").await.unwrap(), Some(tokens("NEW")));
    // Its release does not delete the new holder's lock.
    stale.release().await.unwrap();
    let mut conn = raw(&redis).await;
    let held: Option<String> = conn.get(b.lock_key("ns")).await.unwrap();
    assert!(held.is_some());
    fresh.release().await.unwrap();
    let held: Option<String> = conn.get(b.lock_key("ns")).await.unwrap();
    assert!(held.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_if_refresh_token_keeps_a_newer_refresh_token() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let this = RedisStore::builder(redis.url()).build().unwrap();
    let other = RedisStore::builder(redis.url()).build().unwrap();
    let old = RefreshToken::new("rt-OLD");
    // Nothing stored: nothing removed.
    assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
    this.save("ns", &tokens("OLD")).await.unwrap();
    // Another process rotated the refresh token after this one sent the old one.
    other.save("ns", &tokens("NEW")).await.unwrap();
    assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
    assert_eq!(this.load("ns").await.unwrap(), Some(tokens("NEW")));
    // Also under this process's lease (the fenced path).
    let lease = this
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(!this.clear_if_refresh_token("ns", &old).await.unwrap());
    lease.release().await.unwrap();
    assert_eq!(other.load("ns").await.unwrap(), Some(tokens("NEW")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_if_refresh_token_clears_the_matching_one() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url()).build().unwrap();
    let mut conn = raw(&redis).await;
    let rejected = RefreshToken::new("rt-A");
    let with_issue_time = StoredTokens {
        issued_at: SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(1_899_999_000_000)),
        ..tokens("A")
    };
    store.save("ns", &with_issue_time).await.unwrap();
    store.save("other", &tokens("A")).await.unwrap();
    assert!(store.clear_if_refresh_token("ns", &rejected).await.unwrap());
    let exists: bool = conn.exists(store.tokens_key("ns")).await.unwrap();
    assert!(!exists);
    assert!(!store.clear_if_refresh_token("ns", &rejected).await.unwrap());
    assert_eq!(store.load("other").await.unwrap(), Some(tokens("A")));
    // The JSON may carry fields this version does not know; only `refresh_token` is compared.
    let _: () = conn
        .set(
            store.tokens_key("ns"),
            r#"{"v":1,"access_token":"at-A","refresh_token":"rt-A/x","issued_at_ms":1,"later":{"n":[1,2.5,null]}}"#,
        )
        .await
        .unwrap();
    assert!(!store.clear_if_refresh_token("ns", &rejected).await.unwrap());
    assert!(
        store
            .clear_if_refresh_token("ns", &RefreshToken::new("rt-A/x"))
            .await
            .unwrap()
    );
    // Under this process's lease (the fenced path).
    let lease = store
        .lock_refresh("other", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .clear_if_refresh_token("other", &rejected)
            .await
            .unwrap()
    );
    lease.release().await.unwrap();
    assert!(store.load("other").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_if_refresh_token_after_the_lease_expired_is_refused() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let a = RedisStore::builder(redis.url()).build().unwrap();
    let b = RedisStore::builder(redis.url()).build().unwrap();
    a.save("ns", &tokens("OLD-MARKER")).await.unwrap();
    let stale = a
        .lock_refresh("ns", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let fresh = b
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    // The stale holder may not touch the store the new holder now owns.
    let e = a
        .clear_if_refresh_token("ns", &RefreshToken::new("rt-OLD-MARKER"))
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(!e.to_string().contains("MARKER"), "{e}");
    assert_eq!(b.load("ns").await.unwrap(), Some(tokens("OLD-MARKER")));
    assert!(
        b.clear_if_refresh_token("ns", &RefreshToken::new("rt-OLD-MARKER"))
            .await
            .unwrap()
    );
    stale.release().await.unwrap();
    fresh.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_if_refresh_token_leaves_a_corrupt_value_and_says_so() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url()).build().unwrap();
    let mut conn = raw(&redis).await;
    for corrupt in ["{\"v\":1,\"refresh_token\":\"rt-SECRET", "\"rt-SECRET\""] {
        let _: () = conn.set(store.tokens_key("ns"), corrupt).await.unwrap();
        let e = store
            .clear_if_refresh_token("ns", &RefreshToken::new("rt-SECRET"))
            .await
            .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let still: Option<String> = conn.get(store.tokens_key("ns")).await.unwrap();
        assert_eq!(still.as_deref(), Some(corrupt));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_extends_the_lease_past_its_original_ttl() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let holder = RedisStore::builder(redis.url()).build().unwrap();
    // One attempt, no waiting: "can another process take it right now?"
    let other = RedisStore::builder(redis.url())
        .lock_wait_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let taken = Instant::now();
    let lease = holder
        .lock_refresh("ns", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    lease.renew(Duration::from_millis(600)).await.unwrap();
    // Past the original ttl, the lease is still held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(taken.elapsed() > Duration::from_millis(300));
    let e = other
        .lock_refresh("ns", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    let mut conn = raw(&redis).await;
    let left: i64 = conn.pttl(holder.lock_key("ns")).await.unwrap();
    assert!(left > 0, "{left}");
    // The renewed lease still fences and releases as before.
    holder.save("ns", &tokens("A")).await.unwrap();
    lease.release().await.unwrap();
    other
        .lock_refresh("ns", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_after_the_lease_was_lost_is_an_error() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let a = RedisStore::builder(redis.url()).build().unwrap();
    let b = RedisStore::builder(redis.url()).build().unwrap();
    let mut conn = raw(&redis).await;
    // Expired, and nobody took it.
    let expired = a
        .lock_refresh("lone", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let e = expired.renew(Duration::from_secs(10)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    let exists: bool = conn.exists(a.lock_key("lone")).await.unwrap();
    assert!(!exists, "a lost lease is not brought back");
    expired.release().await.unwrap();
    // Expired, and another process holds it now.
    let stale = a
        .lock_refresh("ns", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let fresh = b
        .lock_refresh("ns", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let e = stale.renew(Duration::from_secs(30)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    // The new holder's lease kept its own ttl, and the stale holder's writes stay fenced.
    let left: i64 = conn.pttl(b.lock_key("ns")).await.unwrap();
    assert!(left > 0 && left <= 10_000, "{left}");
    assert!(a.save("ns", &tokens("STALE")).await.is_err());
    stale.release().await.unwrap();
    fresh.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_a_permanent_error_and_stays() {
    if !redis_enabled() {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url()).build().unwrap();
    let mut conn = raw(&redis).await;
    let _: () = conn
        .set(
            store.tokens_key("ns"),
            "{\"v\":1,\"refresh_token\":\"rt-SECRET",
        )
        .await
        .unwrap();
    let e = store.load("ns").await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    let still: Option<String> = conn.get(store.tokens_key("ns")).await.unwrap();
    assert!(still.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_transient_or_a_local_refresh_when_allowed() {
    if !redis_enabled() {
        return;
    }
    let mut redis = RedisServer::start();
    let strict = RedisStore::builder(redis.url()).build().unwrap();
    let lenient = RedisStore::builder(redis.url())
        .allow_local_refresh_when_unavailable(true)
        .build()
        .unwrap();
    // Connected once, then Redis goes away.
    strict.save("ns", &tokens("A")).await.unwrap();
    lenient.load("ns").await.unwrap();
    redis.stop();
    let t = Instant::now();
    let e = strict
        .lock_refresh("ns", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(strict.load("ns").await.unwrap_err().is_transient());
    assert!(
        lenient
            .lock_refresh("ns", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    // It recovers by itself once Redis is back (empty: no persistence).
    redis.restart();
    assert!(strict.load("ns").await.unwrap().is_none());
    let lease = strict
        .lock_refresh("ns", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    strict.save("ns", &tokens("B")).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(lenient.load("ns").await.unwrap(), Some(tokens("B")));
}

#[test]
fn build_needs_a_runtime_and_hides_the_url() {
    let e = RedisStore::builder("redis://:hunter2@127.0.0.1:1/")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("runtime"), "{e}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = RedisStore::builder("not a url :hunter2@")
            .build()
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let store = RedisStore::builder("redis://:hunter2@127.0.0.1:1/")
            .build()
            .unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
    });
}
