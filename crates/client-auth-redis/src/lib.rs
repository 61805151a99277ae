//! A Redis [`TokenStore`] for `client-auth`: one session shared by processes on many hosts,
//! refreshed once by the whole fleet.
//!
//! Every replica of a service that refreshes the same rotating refresh token on its own revokes
//! the others' token, and an authorization server with reuse detection then revokes the whole
//! grant (RFC 9700 §4.14.2): every replica is logged out. [`RedisStore`] keeps the tokens in
//! Redis and coordinates refreshes with a lease:
//!
//! 1. `SET <prefix><ns>:lock <random> NX PX <ttl>`, polled with backoff until taken (bounded by
//!    [`RedisStoreBuilder::lock_wait_timeout`]). The ttl is the provider's
//!    `OAuthProviderBuilder::refresh_lease_ttl` (6 s by default).
//! 2. The provider re-reads `<prefix><ns>:tokens`: if another process refreshed meanwhile, it
//!    uses those tokens and does not call the token endpoint.
//! 3. Otherwise it refreshes. While the token request runs it renews the lease every third of
//!    the ttl ([`RefreshLease::renew`]): a script sets the lock's expiry to the ttl again
//!    (`PEXPIRE`) only while the lock still holds this process's random value. A renewal that
//!    finds another value, or no lock, fails with a transient error: the lease was lost and
//!    another process may be refreshing.
//! 4. It writes the new tokens with a script that first checks the lock still holds this
//!    process's random value (fencing): a holder whose lease expired never overwrites a newer
//!    holder's tokens.
//! 5. The lease is released with a compare-and-delete script.
//!
//! **Keep the lease ttl short**: a few seconds (the provider's default of 6 s is a good choice)
//! rather than a multiple of the token-endpoint timeout. Renewal keeps the lease of a holder
//! that is alive however long its token request takes, and a holder that dies (killed,
//! partitioned) blocks the other processes only until the ttl runs out. The lower bound: a
//! renewal is sent a third of the ttl after the previous one and must reach Redis within the
//! remaining two thirds, retry included; with the default connection settings (1 s response
//! timeout, one retry) that is about 4 s. Waiters give up after [`RedisStoreBuilder::lock_wait_timeout`] (by default the
//! ttl plus 15 s: longer than the provider's default token-request timeout, so waiters outwait
//! a live holder that keeps renewing, while a dead holder's lease still ends with its ttl).
//!
//! When the token endpoint rejects the refresh token (`invalid_grant`), the provider removes
//! the stored tokens with [`TokenStore::clear_if_refresh_token`], one script that deletes the
//! key only while it still holds the rejected refresh token: it decodes plain JSON (Redis's
//! `cjson`) and compares its `refresh_token`, or, when the tokens are
//! [encrypted][encryption-key], compares the keyed hash of the refresh token
//! the envelope carries. A newer refresh token that another process wrote meanwhile survives.
//! Like a write, it is fenced while this process holds the namespace's lease.
//!
//! The hot path is unchanged: requests read the token from memory; Redis is touched on the
//! first use and around refreshes only.
//!
//! ```no_run
//! use std::sync::Arc;
//! use client_auth::OAuthProvider;
//! use client_auth_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://redis.internal:6379/")
//!     .prefix("billing-service:")
//!     .build()?;
//! let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
//!     .client_id("billing")
//!     .client_secret("s3cret")
//!     .store(Arc::new(store), "tenant-7")
//!     .build()?;
//! let token = provider.access_token().await?;
//! # let _ = token;
//! # Ok(()) }
//! ```
//!
//! # When Redis is unavailable
//!
//! Requests keep being served from the in-memory token while it is valid. A refresh that cannot
//! take the lease fails with a transient error (the provider backs off and keeps serving a
//! still-valid token) rather than risk two processes rotating the same refresh token. The
//! connection manager reconnects by itself; the next refresh after Redis returns works
//! normally (Redis without persistence comes back empty: the processes still hold the refresh
//! token in memory, the first one to refresh writes the new tokens, the others adopt them).
//!
//! [`RedisStoreBuilder::allow_local_refresh_when_unavailable`] trades that safety for
//! availability: when Redis cannot be reached, the lease is skipped and each process refreshes
//! on its own. Use it only with an authorization server that does not rotate refresh tokens,
//! or when one process per session is the norm.
//!
//! # Keys
//!
//! | key | value |
//! |---|---|
//! | `<prefix><ns>:tokens` | the tokens as JSON ([`StoredTokens::to_json`]), or their encrypted envelope ([`RedisStoreBuilder::encryption_key`][encryption-key]); no expiry unless [`RedisStoreBuilder::tokens_ttl`] is set, and then each write sets it again; written by `SET` or the fenced save script, deleted by `clear` or by the compare-and-delete script (which compares the refresh token, or its keyed hash, and nothing else) |
//! | `<prefix><ns>:lock` | the lease holder's random value, with the lease ttl; each renewal sets the ttl again from now, and only while the value is still the holder's |
//!
//! The save and compare-and-delete scripts touch both keys, so Redis Cluster is not supported
//! (one primary, with or without replicas or Sentinel, is).
//!
//! # Protecting the tokens
//!
//! **Whoever can read the tokens key holds the session**: with the refresh token they can mint
//! access tokens until the authorization server revokes the grant. By default the key holds the
//! tokens as plain JSON, so the Redis instance must be protected like the client secret:
//!
//! - **Access control.** Give the service its own ACL user limited to its prefix and to the
//!   commands the store sends (the scripts' own commands are checked too), and put the user
//!   and password in the URL (`redis://billing:PASSWORD@redis.internal:6379/`); the URL is
//!   never printed. The store needs exactly:
//!
//!   ```text
//!   ACL SETUSER billing on >PASSWORD resetkeys ~billing-service:* resetchannels -@all
//!       +get +set +del +pexpire +evalsha +script|load
//!   ```
//!
//!   Keep other clients away from the prefix (they could read the tokens, or plant their
//!   own), bind Redis to a private network, and disable or restrict `MONITOR`, `SLOWLOG`,
//!   `DEBUG` and `CONFIG` for everyone else: `MONITOR` and `SLOWLOG` show command arguments,
//!   and with plain JSON those are tokens.
//! - **TLS.** Use `rediss://host:6380/` whenever the connection leaves the host; without TLS
//!   the tokens (and the password) cross the network in clear. It needs this crate's feature
//!   `tls` (redis's `tokio-rustls-comp`, rustls with the aws-lc-rs provider, the platform's
//!   root certificates; if your build also enables rustls's `ring` provider, install a
//!   process-wide default provider before the first connection). Building a store with a
//!   `rediss://` URL without the feature fails with an error that says so.
//! - **Persistence, replicas and backups** (RDB, AOF, `SYNC`) copy the tokens: protect them
//!   like the live instance, or encrypt the tokens.
//! - **Expiry.** The tokens key has no expiry by default, so an abandoned session stays in
//!   Redis. Set [`RedisStoreBuilder::tokens_ttl`] to the refresh token's lifetime: the expiry
//!   is set atomically with each write (fenced or not), and an expired key reads as "nothing
//!   stored". The lease key always expires after the lease ttl and holds only a random value.
//! - **Encryption at rest** (feature `encryption`, [`RedisStoreBuilder::encryption_key`][encryption-key]): the
//!   key then holds an AES-256-GCM envelope (aws-lc-rs) bound to the key's name, and no token
//!   is sent to Redis at all, not even to compare-and-delete, which compares an HMAC-SHA256
//!   of the refresh token under a key derived from yours. A dump, a replica, `MONITOR` or a
//!   reader of the prefix then sees no token; a value that cannot be decrypted (another key,
//!   altered, copied from another namespace, or plain JSON) is a permanent error and is left
//!   in place. Encryption does not stop someone who can write the prefix from deleting the
//!   tokens (a logout) or holding the lease (a delayed refresh): access control still
//!   matters.
//!
//! Tokens travel only as values and script arguments; no error or log line contains them, and
//! `Debug` of the store shows neither the URL (which may hold a password), the encryption key
//! nor tokens.
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs (see above).
//! - `encryption`: [`RedisStoreBuilder::encryption_key`][encryption-key].
//!
#![cfg_attr(
    feature = "encryption",
    doc = "[encryption-key]: RedisStoreBuilder::encryption_key"
)]
#![cfg_attr(not(feature = "encryption"), doc = "[encryption-key]: #features")]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use client_auth::adapter::BoxFuture;
use client_auth::metrics::LeaseWait;
use client_auth::{RefreshLease, RefreshToken, StoreError, StoredTokens, TokenStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, RedisError, Script};
use zeroize::Zeroizing;

pub use redis;

mod sealing;

/// The fenced write. KEYS: lock, tokens. ARGV: the lease value, the tokens' value, their
/// expiry in milliseconds (empty: none, and any previous expiry is removed, as `SET` does).
const SAVE_FENCED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[2], ARGV[2])
  else
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  end
  return 1
end
return 0
";

/// Compare-and-delete of the tokens. KEYS: tokens, lock. ARGV: the refresh token (plain JSON
/// only; empty when this store encrypts), the lease value this process holds for the namespace
/// (empty when it holds none: no fencing), the refresh token's keyed hash and this store's key
/// id (both empty when it does not encrypt), the envelope's magic bytes.
/// Returns 1 deleted, 0 not the given refresh token (or nothing stored), -1 fenced out (the
/// lease expired), -2 the stored value is not token JSON or a whole envelope (left in place),
/// -3 an envelope but this store has no key, -4 an envelope sealed with another key, -5 plain
/// JSON but this store encrypts.
const CLEAR_IF_REFRESH_TOKEN: &str = r"
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local stored = redis.call('GET', KEYS[1])
if not stored then
  return 0
end
local magic = ARGV[5]
if string.sub(stored, 1, #magic) == magic then
  if ARGV[3] == '' then
    return -3
  end
  local at = #magic + #ARGV[4]
  if #stored < at + #ARGV[3] then
    return -2
  end
  if string.sub(stored, #magic + 1, at) ~= ARGV[4] then
    return -4
  end
  if string.sub(stored, at + 1, at + #ARGV[3]) == ARGV[3] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if ARGV[3] ~= '' then
  return -5
end
local ok, doc = pcall(cjson.decode, stored)
if not ok or type(doc) ~= 'table' then
  return -2
end
local rt = doc['refresh_token']
if type(rt) == 'string' and rt == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Compare-and-`PEXPIRE` of the lease. KEYS: lock. ARGV: the holder's value, the ttl in ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How long a failed command waits before its one retry (the connection manager reconnects
/// meanwhile).
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// How much longer than the lease ttl a waiter waits by default: more than the provider's
/// default token-request timeout (10 s).
const DEFAULT_EXTRA_WAIT: Duration = Duration::from_secs(15);

/// Tokens and a fenced refresh lease in Redis. Cheap to clone; clones share the connection.
///
/// Build it with [`RedisStore::builder`]. See the [crate docs](crate) for the protocol.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    lock_wait: Option<Duration>,
    poll_max: Duration,
    local_when_unavailable: bool,
    /// The expiry of the tokens key, in milliseconds.
    tokens_ttl_ms: Option<u64>,
    #[cfg(feature = "encryption")]
    cipher: Option<sealing::Cipher>,
    /// Leases this store holds now: namespace → the random value in the lock key.
    held: Mutex<HashMap<String, String>>,
    save_fenced: Script,
    clear_if_refresh_token: Script,
    renew: Script,
    release: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("lock_wait", &self.inner.lock_wait)
            .field("local_when_unavailable", &self.inner.local_when_unavailable)
            .field("tokens_ttl_ms", &self.inner.tokens_ttl_ms)
            .field("encrypted", &self.encrypts())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    lock_wait: Option<Duration>,
    poll_max: Duration,
    local_when_unavailable: bool,
    tokens_ttl: Option<Duration>,
    #[cfg(feature = "encryption")]
    encryption_key: Option<Zeroizing<[u8; 32]>>,
    connection: ConnectionManagerConfig,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("lock_wait", &self.lock_wait)
            .field("poll_max", &self.poll_max)
            .field("local_when_unavailable", &self.local_when_unavailable)
            .field("tokens_ttl", &self.tokens_ttl)
            .field("encrypted", &self.encrypts())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store on the Redis server at `url`:
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS (feature `tls`;
    /// see [Protecting the tokens](crate#protecting-the-tokens)).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "client-auth:".to_owned(),
            lock_wait: None,
            poll_max: Duration::from_millis(100),
            local_when_unavailable: false,
            tokens_ttl: None,
            #[cfg(feature = "encryption")]
            encryption_key: None,
            // Fail fast while Redis is down (one reconnect attempt per command); the manager
            // keeps reconnecting on later commands.
            connection: ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1))),
        }
    }

    /// The key holding the tokens of `namespace`.
    pub fn tokens_key(&self, namespace: &str) -> String {
        format!("{}{namespace}:tokens", self.inner.prefix)
    }

    /// The key holding the refresh lease of `namespace`.
    pub fn lock_key(&self, namespace: &str) -> String {
        format!("{}{namespace}:lock", self.inner.prefix)
    }

    /// Whether the tokens are encrypted at rest (`RedisStoreBuilder::encryption_key`).
    fn encrypts(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.inner.cipher.is_some();
        #[cfg(not(feature = "encryption"))]
        false
    }

    /// The value stored for `tokens` under `key`: their JSON, or its sealed envelope.
    fn seal(&self, key: &str, tokens: &StoredTokens) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        #[cfg(feature = "encryption")]
        if let Some(cipher) = &self.inner.cipher {
            return cipher.seal(key, tokens).map(Zeroizing::new);
        }
        let _ = key;
        Ok(Zeroizing::new(
            tokens.to_json().expose_secret().as_bytes().to_vec(),
        ))
    }

    /// The tokens in `value`, read from `key`. Plain JSON and envelopes are told apart by their
    /// first byte; each is accepted only by a store configured for it.
    fn unseal(&self, key: &str, value: &[u8]) -> Result<StoredTokens, StoreError> {
        let sealed = sealing::is_sealed(value);
        #[cfg(feature = "encryption")]
        if let Some(cipher) = &self.inner.cipher {
            if sealed {
                return cipher.open(key, value);
            }
            return Err(StoreError::permanent(format!(
                "the tokens in Redis key {key} are not encrypted, but this store encrypts: \
                 they were left in place and not used (delete the key and store the session \
                 again)"
            )));
        }
        if sealed {
            return Err(not_decryptable(key));
        }
        StoredTokens::from_json(value).map_err(|e| {
            StoreError::permanent(format!(
                "the tokens in Redis key {key} are corrupt and were left in place: {e}"
            ))
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedisStoreBuilder {
    fn encrypts(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.encryption_key.is_some();
        #[cfg(not(feature = "encryption"))]
        false
    }

    /// Prefix of every key (default `client-auth:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a process waits for another's refresh lease before failing with a transient
    /// error (default: the lease ttl plus 15 s, so that waiters outwait a living holder whose
    /// token request takes up to the provider's default 10 s timeout, and the lease of a holder
    /// that died expires within one wait).
    ///
    /// A living holder renews its lease for as long as its token request runs: with a longer
    /// token-endpoint timeout, set this to that timeout plus the ttl.
    pub fn lock_wait_timeout(mut self, timeout: Duration) -> Self {
        self.lock_wait = Some(timeout);
        self
    }

    /// The longest pause between two attempts to take a held lease (default 100 ms). Polls
    /// start at a few milliseconds and back off, with jitter, up to this.
    pub fn lock_poll_max(mut self, max: Duration) -> Self {
        self.poll_max = max.max(Duration::from_millis(1));
        self
    }

    /// When Redis cannot be reached, refresh without the lease instead of failing (default
    /// `false`).
    ///
    /// Off, a refresh that cannot coordinate fails with a transient error and the provider
    /// keeps serving its still-valid token and backs off: no rotation race is possible. On,
    /// every process refreshes on its own while Redis is down: with refresh-token rotation
    /// and reuse detection that can revoke the grant, so turn it on only when the server does
    /// not rotate refresh tokens or a single process uses each session.
    pub fn allow_local_refresh_when_unavailable(mut self, allow: bool) -> Self {
        self.local_when_unavailable = allow;
        self
    }

    /// Let the tokens key expire this long after each write (default: never).
    ///
    /// Set it to the refresh token's lifetime (its idle lifetime, if the authorization server
    /// extends it on use), which this store cannot know by itself: a session nobody refreshes
    /// then leaves Redis when it could not be used any more. The expiry is set by the same
    /// command or script as the value (also on the fenced write), and every write sets it again
    /// from that moment. An expired key reads as "nothing stored", as after a Redis restart
    /// without persistence: processes that still hold the refresh token in memory keep using
    /// it, and the next refresh writes the tokens again. Durations are rounded up to whole
    /// milliseconds (at least one).
    pub fn tokens_ttl(mut self, ttl: Duration) -> Self {
        self.tokens_ttl = Some(ttl);
        self
    }

    /// Encrypt the tokens at rest with `key` (feature `encryption`; default: stored as plain
    /// JSON).
    ///
    /// The value becomes an AES-256-GCM envelope (aws-lc-rs; keys derived from `key` with
    /// HKDF-SHA256, a random nonce per write) bound to its Redis key's name, so a dump of Redis
    /// (`SAVE`, a replica, `MONITOR`, a backup) holds no token and an envelope copied under
    /// another namespace is refused. Compare-and-delete stays one atomic script: the envelope
    /// carries an HMAC-SHA256 of its refresh token under a derived key, which the script
    /// compares. No token is sent to Redis in clear.
    ///
    /// Use 32 random bytes, the same in every process of the fleet, kept outside Redis (a
    /// secret manager). A value this store cannot decrypt is left in place and reported by a
    /// permanent [`StoreError`] that says why and names the key, never the content: sealed
    /// with another key, altered or copied from another key, or plain JSON (not encrypted).
    /// A store without a key refuses envelopes the same way. So enabling encryption, or
    /// changing the key, needs the sessions stored again (or a new [`prefix`](Self::prefix)).
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        let mut key = key;
        self.encryption_key = Some(Zeroizing::new(key));
        zeroize::Zeroize::zeroize(&mut key);
        self
    }

    /// Connection settings (timeouts, reconnect backoff). The default fails a command after
    /// one reconnect attempt, within about a second, so a refresh does not hang while Redis is
    /// down.
    pub fn connection_config(mut self, config: ConnectionManagerConfig) -> Self {
        self.connection = config;
        self
    }

    /// Builds the store. The connection is made on first use, so this succeeds while Redis
    /// is down; the store connects (and reconnects) by itself.
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] for an invalid URL (the message does not repeat the URL,
    /// which may contain a password), or when no tokio runtime is running.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::permanent(
                "a tokio runtime is required to build a RedisStore",
            ));
        }
        if cfg!(not(feature = "tls"))
            && self
                .url
                .get(..9)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
        {
            return Err(StoreError::permanent(
                "a rediss:// URL needs the `tls` feature of client-auth-redis",
            ));
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|_| StoreError::permanent("invalid Redis URL"))?;
        #[cfg(feature = "encryption")]
        let cipher = match &self.encryption_key {
            Some(key) => Some(sealing::Cipher::new(key)?),
            None => None,
        };
        let tokens_ttl_ms = self.tokens_ttl.map(|ttl| {
            // Rounded up; at most what Redis accepts added to the current time.
            let ms = ttl.as_nanos().div_ceil(1_000_000).max(1);
            u64::try_from(ms).unwrap_or(u64::MAX).min(MAX_TTL_MS)
        });
        let conn = ConnectionManager::new_lazy_with_config(client, self.connection)
            .map_err(|e| StoreError::permanent(format!("invalid Redis settings: {e}")))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                lock_wait: self.lock_wait,
                poll_max: self.poll_max,
                local_when_unavailable: self.local_when_unavailable,
                tokens_ttl_ms,
                #[cfg(feature = "encryption")]
                cipher,
                held: Mutex::new(HashMap::new()),
                save_fenced: Script::new(SAVE_FENCED),
                clear_if_refresh_token: Script::new(CLEAR_IF_REFRESH_TOKEN),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
            }),
        })
    }
}

/// The longest tokens ttl passed to Redis (about 146 years; Redis refuses an expiry that
/// overflows when added to the current time).
const MAX_TTL_MS: u64 = 1 << 52;

/// The value at `key` is an envelope, and this store has no key to open it.
fn not_decryptable(key: &str) -> StoreError {
    StoreError::permanent(format!(
        "the tokens in Redis key {key} are encrypted, but this store has no encryption key \
         (RedisStoreBuilder::encryption_key, feature `encryption`); they were left in place"
    ))
}

/// Whether `e` means Redis could not be reached (as opposed to a command it rejected).
fn unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn store_error(what: &str, e: &RedisError) -> StoreError {
    use redis::RetryMethod;
    let message = format!("Redis {what} failed: {e}");
    let transient = unreachable(e)
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        );
    if transient {
        StoreError::transient(message)
    } else {
        StoreError::permanent(message)
    }
}

/// Runs `op` once more after a short pause when Redis was unreachable: the connection manager
/// reconnects after the first failure, so a Redis that came back is used at once.
async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    match op().await {
        Err(e) if unreachable(&e) => {
            tokio::time::sleep(RETRY_DELAY).await;
            op().await
        }
        other => other,
    }
}

impl TokenStore for RedisStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        Box::pin(async move {
            let key = self.tokens_key(namespace);
            let value: Option<Vec<u8>> = with_retry(|| {
                let mut conn = self.inner.conn.clone();
                let key = key.clone();
                async move { conn.get(key).await }
            })
            .await
            .map_err(|e| store_error("read", &e))?;
            let Some(bytes) = value else {
                return Ok(None);
            };
            let bytes = Zeroizing::new(bytes);
            self.unseal(&key, &bytes).map(Some)
        })
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.tokens_key(namespace);
            let value = self.seal(&key, tokens)?;
            let ttl_ms = self.inner.tokens_ttl_ms;
            let lease = self.held().get(namespace).cloned();
            match lease {
                // One command: the value and its expiry are set together.
                None => with_retry(|| {
                    let mut conn = self.inner.conn.clone();
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(value.as_slice());
                    if let Some(ms) = ttl_ms {
                        cmd.arg("PX").arg(ms);
                    }
                    async move { cmd.query_async::<()>(&mut conn).await }
                })
                .await
                .map_err(|e| store_error("write", &e)),
                Some(token) => {
                    let lock = self.lock_key(namespace);
                    let written: i64 = with_retry(|| {
                        let mut conn = self.inner.conn.clone();
                        let mut invocation = self.inner.save_fenced.prepare_invoke();
                        invocation
                            .key(&lock)
                            .key(&key)
                            .arg(&token)
                            .arg(value.as_slice())
                            .arg(ttl_ms.map(|ms| ms.to_string()).unwrap_or_default());
                        async move { invocation.invoke_async(&mut conn).await }
                    })
                    .await
                    .map_err(|e| store_error("fenced write", &e))?;
                    if written == 1 {
                        Ok(())
                    } else {
                        lease_lost("write");
                        Err(StoreError::permanent(format!(
                            "the refresh lease {lock} expired before the tokens were written; \
                             they were not written, so a newer holder's tokens are kept"
                        )))
                    }
                }
            }
        })
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.tokens_key(namespace);
            with_retry(|| {
                let mut conn = self.inner.conn.clone();
                let key = key.clone();
                async move { conn.del::<_, ()>(key).await }
            })
            .await
            .map_err(|e| store_error("delete", &e))
        })
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = self.tokens_key(namespace);
            let lock = self.lock_key(namespace);
            // Fenced like `save` while this process holds the namespace's lease.
            let lease = self.held().get(namespace).cloned().unwrap_or_default();
            // Encrypting, the script compares the refresh token's keyed hash and never sees
            // the token; otherwise it compares the token with the JSON's field.
            #[cfg(feature = "encryption")]
            let (plain, tag, key_id) = match &self.inner.cipher {
                Some(cipher) => (
                    "",
                    cipher.tag(Some(refresh_token)).to_vec(),
                    cipher.key_id().to_vec(),
                ),
                None => (refresh_token.expose_secret(), Vec::new(), Vec::new()),
            };
            #[cfg(not(feature = "encryption"))]
            let (plain, tag, key_id) = (
                refresh_token.expose_secret(),
                Vec::<u8>::new(),
                Vec::<u8>::new(),
            );
            let outcome: i64 = with_retry(|| {
                let mut conn = self.inner.conn.clone();
                let mut invocation = self.inner.clear_if_refresh_token.prepare_invoke();
                invocation
                    .key(&key)
                    .key(&lock)
                    .arg(plain)
                    .arg(&lease)
                    .arg(tag.as_slice())
                    .arg(key_id.as_slice())
                    .arg(sealing::MAGIC);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await
            .map_err(|e| store_error("compare-and-delete", &e))?;
            match outcome {
                1 => Ok(true),
                0 => Ok(false),
                -1 => Err({
                    lease_lost("clear");
                    StoreError::permanent(format!(
                        "the refresh lease {lock} expired before the tokens were removed; \
                     they were left in place for the newer holder"
                    ))
                }),
                -2 => Err(StoreError::permanent(format!(
                    "the tokens in Redis key {key} are corrupt and were left in place"
                ))),
                -3 => Err(not_decryptable(&key)),
                -4 => Err(StoreError::permanent(format!(
                    "the encrypted tokens in Redis key {key} were encrypted with a different \
                     key than this store's encryption key and were left in place"
                ))),
                -5 => Err(StoreError::permanent(format!(
                    "the tokens in Redis key {key} are not encrypted, but this store encrypts: \
                     they were left in place"
                ))),
                other => Err(StoreError::permanent(format!(
                    "unexpected answer {other} from the compare-and-delete script on {key}"
                ))),
            }
        })
    }

    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        Box::pin(async move {
            let lock = self.lock_key(namespace);
            let token = format!("{:032x}", fastrand::u128(..));
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let wait = self
                .inner
                .lock_wait
                .unwrap_or_else(|| ttl.saturating_add(DEFAULT_EXTRA_WAIT));
            let started = Instant::now();
            let mut delay = Duration::from_millis(2);
            loop {
                let taken = with_retry(|| {
                    let mut conn = self.inner.conn.clone();
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&lock).arg(&token).arg("NX").arg("PX").arg(ttl_ms);
                    async move { cmd.query_async::<Option<String>>(&mut conn).await }
                })
                .await;
                match taken {
                    Ok(Some(_)) => {
                        self.held().insert(namespace.to_owned(), token.clone());
                        tracing::trace!(key = %lock, ttl_ms, "redis refresh lease taken");
                        lease_wait(LeaseWait::Acquired, started.elapsed());
                        return Ok(Some(Box::new(RedisLease {
                            store: self.clone(),
                            namespace: namespace.to_owned(),
                            lock,
                            token: Some(token),
                        }) as Box<dyn RefreshLease>));
                    }
                    Ok(None) => {}
                    Err(e) if unreachable(&e) && self.inner.local_when_unavailable => {
                        tracing::warn!(
                            error = %e,
                            key = %lock,
                            "Redis is unavailable; refreshing without the shared lease"
                        );
                        lease_wait(LeaseWait::Error, started.elapsed());
                        return Ok(None);
                    }
                    Err(e) => {
                        lease_wait(LeaseWait::Error, started.elapsed());
                        return Err(store_error("lease", &e));
                    }
                }
                let waited = started.elapsed();
                if waited >= wait {
                    lease_wait(LeaseWait::Timeout, waited);
                    return Err(StoreError::transient(format!(
                        "timed out after {} ms waiting for the refresh lease {lock}",
                        waited.as_millis()
                    )));
                }
                let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                tokio::time::sleep(jittered.min(wait - waited)).await;
                delay = (delay * 2).min(self.inner.poll_max);
            }
        })
    }
}

/// A held Redis lease. Dropped without [`release`](RefreshLease::release), it stops fencing
/// writes at once and the key expires after its ttl.
struct RedisLease {
    store: RedisStore,
    namespace: String,
    lock: String,
    token: Option<String>,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    fn forget(&mut self) -> Option<String> {
        let token = self.token.take()?;
        let mut held = self.store.held();
        if held.get(&self.namespace) == Some(&token) {
            held.remove(&self.namespace);
        }
        Some(token)
    }

    /// The error of a renewal that found the lease gone. It stays in `held`, so this process's
    /// writes remain fenced (and refused) rather than becoming unconditional.
    fn lost(&self) -> StoreError {
        lease_lost("renew");
        StoreError::transient(format!(
            "the refresh lease {} was lost (it expired or another process holds it now); \
             another process may refresh",
            self.lock
        ))
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.forget();
    }
}

impl RefreshLease for RedisLease {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        let token = self.forget();
        Box::pin(async move {
            let Some(token) = token else {
                return Ok(());
            };
            let store = &self.store;
            with_retry(|| {
                let mut conn = store.inner.conn.clone();
                let mut invocation = store.inner.release.prepare_invoke();
                invocation.key(&self.lock).arg(&token);
                async move { invocation.invoke_async::<i64>(&mut conn).await }
            })
            .await
            .map(|_| ())
            .map_err(|e| store_error("lease release", &e))
        })
    }

    fn renew(&self, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(token) = self.token.as_deref() else {
                return Err(self.lost());
            };
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let store = &self.store;
            let renewed: i64 = with_retry(|| {
                let mut conn = store.inner.conn.clone();
                let mut invocation = store.inner.renew.prepare_invoke();
                invocation.key(&self.lock).arg(token).arg(ttl_ms);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await
            .map_err(|e| store_error("lease renewal", &e))?;
            if renewed == 1 {
                tracing::trace!(key = %self.lock, ttl_ms, "redis refresh lease renewed");
                Ok(())
            } else {
                Err(self.lost())
            }
        })
    }
}

/// Records a wait for the lease (feature `metrics`; see `client_auth::metrics`).
fn lease_wait(outcome: LeaseWait, waited: Duration) {
    client_auth::metrics::lease_wait("redis", outcome, waited);
}

/// Records a lease found lost `at` a renewal, a fenced write or a fenced clear.
fn lease_lost(at: &'static str) {
    client_auth::metrics::lease_lost("redis", at);
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
