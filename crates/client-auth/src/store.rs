//! Where tokens live between refreshes, and between processes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::error::StoreError;
use crate::secret::{AccessToken, RefreshToken, SecretString};

/// Tokens as a store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredTokens {
    /// The access token, if one was issued.
    pub access_token: Option<AccessToken>,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<RefreshToken>,
    /// When the access token expires, as wall-clock time; `None` when the server gave no
    /// lifetime.
    pub expires_at: Option<SystemTime>,
    /// The granted scope, if the server said.
    pub scope: Option<String>,
    /// When the access token was issued (when its token request was sent), as wall-clock time.
    /// With `expires_at` it gives the token's whole lifetime, from which a process that adopts
    /// the token computes its refresh windows; `None` when unknown (the remaining lifetime is
    /// then taken as the whole).
    pub issued_at: Option<SystemTime>,
    /// The thumbprint of the DPoP key the access token is bound to (`token_type: DPoP`);
    /// `None` for a bearer token. A process adopts a bound token only with the same key.
    pub dpop_jkt: Option<String>,
}

/// Version of the JSON encoding written by [`StoredTokens::to_json`].
const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct JsonOut<'a> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dpop_jkt: Option<&'a str>,
}

#[derive(Deserialize)]
struct JsonIn {
    v: u32,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    issued_at_ms: Option<u64>,
    #[serde(default)]
    dpop_jkt: Option<String>,
}

impl StoredTokens {
    /// The JSON encoding shared stores write (the file store, the Redis store), so that every
    /// process reads what any other wrote.
    ///
    /// The result holds the tokens, so it is a [`SecretString`]: redacted `Debug`, zeroized on
    /// drop. The expiry is written as UNIX milliseconds (`expires_at_ms`).
    ///
    /// ```
    /// use client_auth::{RefreshToken, StoredTokens};
    ///
    /// let tokens = StoredTokens {
    ///     refresh_token: Some(RefreshToken::new("rt")),
    ///     ..StoredTokens::default()
    /// };
    /// let json = tokens.to_json();
    /// assert_eq!(StoredTokens::from_json(json.expose_secret().as_bytes()).unwrap(), tokens);
    /// ```
    pub fn to_json(&self) -> SecretString {
        let out = JsonOut {
            v: JSON_VERSION,
            access_token: self.access_token.as_ref().map(AccessToken::expose_secret),
            refresh_token: self.refresh_token.as_ref().map(RefreshToken::expose_secret),
            expires_at_ms: self.expires_at.map(unix_ms),
            scope: self.scope.as_deref(),
            issued_at_ms: self.issued_at.map(unix_ms),
            dpop_jkt: self.dpop_jkt.as_deref(),
        };
        // Serialising plain strings and numbers into a `String` cannot fail.
        SecretString::new(serde_json::to_string(&out).unwrap_or_default())
    }

    /// Decodes what [`to_json`](Self::to_json) wrote. Unknown fields are ignored.
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] when the bytes are not that JSON, or were written by a newer
    /// version of the encoding. The message names the position of the problem, never the
    /// content.
    pub fn from_json(bytes: &[u8]) -> Result<Self, StoreError> {
        let parsed: JsonIn = serde_json::from_slice(bytes).map_err(|e| {
            StoreError::permanent(format!(
                "stored tokens are not valid token JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if parsed.v != JSON_VERSION {
            return Err(StoreError::permanent(format!(
                "stored tokens use encoding version {}; this version reads {JSON_VERSION}",
                parsed.v
            )));
        }
        Ok(Self {
            access_token: parsed.access_token.map(AccessToken::from),
            refresh_token: parsed.refresh_token.map(RefreshToken::from),
            expires_at: parsed
                .expires_at_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
            scope: parsed.scope,
            issued_at: parsed
                .issued_at_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
            dpop_jkt: parsed.dpop_jkt,
        })
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A lease on the refresh of one namespace, for stores shared between processes.
///
/// While a process holds it, other processes wait for its result instead of refreshing the
/// same refresh token (which would revoke the grant on servers with reuse detection).
pub trait RefreshLease: Send + Sync + fmt::Debug {
    /// Gives the lease back.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Extends the lease to `ttl` from now. The provider calls it every third of the ttl while
    /// the token request it guards runs, so the ttl can be short and a holder that dies costs
    /// the other processes little. An error means the lease was lost (another process may
    /// refresh now). The default does nothing: right for leases that the operating system holds
    /// for as long as the holder lives (a file lock).
    fn renew(&self, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = ttl;
        Box::pin(async { Ok(()) })
    }
}

/// Persistence for tokens.
///
/// Implementations must not log token values. All methods are async so that network and file
/// stores fit; the in-memory store answers at once.
///
/// A [`TokenStore`] is keyed by a namespace (one per provider: a user, a tenant, a client).
/// Expiry is stored as UNIX time because a store may be shared by processes that do not
/// share a monotonic clock. [`MemoryStore`] keeps tokens in this process.
///
/// ```
/// use client_auth::{MemoryStore, RefreshToken, StoredTokens, TokenStore};
///
/// # async fn demo() -> Result<(), client_auth::StoreError> {
/// let store = MemoryStore::new();
/// let tokens = StoredTokens {
///     refresh_token: Some(RefreshToken::new("rt")),
///     ..StoredTokens::default()
/// };
/// store.save("user-42", &tokens).await?;
/// assert!(store.load("user-42").await?.is_some());
/// store.clear("user-42").await?;
/// assert!(store.load("user-42").await?.is_none());
/// # Ok(()) }
/// ```
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// The tokens stored under `namespace`, if any.
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>>;

    /// Replaces the tokens stored under `namespace`.
    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes the tokens stored under `namespace`.
    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes the tokens stored under `namespace` only while they still hold `refresh_token`
    /// (compare-and-delete), and says whether it removed them. The provider calls it when the
    /// server rejected `refresh_token` (`invalid_grant`): a newer refresh token that another
    /// process wrote meanwhile must survive.
    ///
    /// The default reads, compares and clears in three steps, which is exact for a store used
    /// by one process and for callers holding the refresh lease; stores shared between
    /// processes should do it in one atomic step.
    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.load(namespace).await? {
                Some(stored) if stored.refresh_token.as_ref() == Some(refresh_token) => {
                    self.clear(namespace).await?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Takes the refresh lease of `namespace` for at most `ttl`, for stores shared between
    /// processes. `Ok(None)` means the store needs no lease (the default: one process).
    ///
    /// After a lease is taken, the provider reads the store again: another process may have
    /// refreshed already, and then its tokens are used instead of refreshing.
    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        let _ = (namespace, ttl);
        Box::pin(async { Ok(None) })
    }
}

impl<T: TokenStore + ?Sized> TokenStore for std::sync::Arc<T> {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        (**self).load(namespace)
    }
    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).save(namespace, tokens)
    }
    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).clear(namespace)
    }
    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).clear_if_refresh_token(namespace, refresh_token)
    }
    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        (**self).lock_refresh(namespace, ttl)
    }
}

/// Tokens kept in this process's memory: the default store of an [`OAuthProvider`], enough
/// for one process. Give several providers one `MemoryStore` under different namespaces to see
/// their sessions in one place.
///
/// ```
/// use std::sync::Arc;
/// use client_auth::{MemoryStore, OAuthProvider, TokenStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(MemoryStore::new());
/// # #[cfg(feature = "reqwest")] {
/// let provider = OAuthProvider::refresh_token_grant("https://auth.example.com/token")
///     .client_id("my-client")
///     .refresh_token("refresh-token-from-sign-in")
///     .store(store.clone(), "user-42")
///     .build()?;
/// # let _ = provider;
/// # }
/// // Nothing is stored until the provider has tokens to store.
/// assert!(store.load("user-42").await?.is_none());
/// # Ok(()) }
/// ```
///
/// [`OAuthProvider`]: crate::OAuthProvider
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, StoredTokens>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `tokens` under `namespace`.
    pub fn with(namespace: impl Into<String>, tokens: StoredTokens) -> Self {
        let store = Self::new();
        store.lock().insert(namespace.into(), tokens);
        store
    }

    /// What is stored under `namespace` right now (a synchronous peek, handy in tests).
    pub fn get(&self, namespace: &str) -> Option<StoredTokens> {
        self.lock().get(namespace).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredTokens>> {
        // A panic while holding this lock cannot leave the map half-written (every operation
        // is a single insert/remove/clone), so a poisoned lock is safe to keep using.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TokenStore for MemoryStore {
    fn load<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredTokens>, StoreError>> {
        let found = self.get(namespace);
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(
        &'a self,
        namespace: &'a str,
        tokens: &'a StoredTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().insert(namespace.to_owned(), tokens.clone());
        Box::pin(async { Ok(()) })
    }

    fn clear<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().remove(namespace);
        Box::pin(async { Ok(()) })
    }

    fn clear_if_refresh_token<'a>(
        &'a self,
        namespace: &'a str,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut entries = self.lock();
        let holds = entries
            .get(namespace)
            .is_some_and(|t| t.refresh_token.as_ref() == Some(refresh_token));
        if holds {
            entries.remove(namespace);
        }
        Box::pin(async move { Ok(holds) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_names_no_content_in_errors() {
        let tokens = StoredTokens {
            access_token: Some(AccessToken::new("at-MARKER")),
            refresh_token: Some(RefreshToken::new("rt-MARKER")),
            expires_at: UNIX_EPOCH.checked_add(Duration::from_millis(1_700_000_000_123)),
            scope: Some("read write".to_owned()),
            issued_at: UNIX_EPOCH.checked_add(Duration::from_millis(1_699_999_000_456)),
            dpop_jkt: Some("jkt-1".to_owned()),
        };
        let json = tokens.to_json();
        assert!(!format!("{json:?}").contains("MARKER"));
        assert_eq!(
            StoredTokens::from_json(json.expose_secret().as_bytes()).unwrap(),
            tokens
        );
        assert_eq!(
            StoredTokens::from_json(br#"{"v":1}"#).unwrap(),
            StoredTokens::default()
        );
        let broken = StoredTokens::from_json(br#"{"v":1,"refresh_token":"rt-MARKER"#).unwrap_err();
        assert!(!broken.is_transient());
        assert!(!broken.to_string().contains("MARKER"), "{broken}");
        let newer = StoredTokens::from_json(br#"{"v":2}"#).unwrap_err();
        assert!(newer.to_string().contains("version 2"), "{newer}");
    }

    #[tokio::test]
    async fn memory_clear_if_refresh_token_removes_only_the_matching_refresh_token() {
        let with_refresh = |rt: &str| StoredTokens {
            refresh_token: Some(RefreshToken::new(rt)),
            ..StoredTokens::default()
        };
        let store = std::sync::Arc::new(MemoryStore::with("ns", with_refresh("rt-NEW")));
        // Through `Arc<dyn TokenStore>`, as the provider holds it.
        let shared: std::sync::Arc<dyn TokenStore> = store.clone();
        let old = RefreshToken::new("rt-OLD");
        let new = RefreshToken::new("rt-NEW");
        assert!(!shared.clear_if_refresh_token("ns", &old).await.unwrap());
        assert_eq!(store.get("ns"), Some(with_refresh("rt-NEW")));
        assert!(shared.clear_if_refresh_token("ns", &new).await.unwrap());
        assert_eq!(store.get("ns"), None);
        assert!(!shared.clear_if_refresh_token("ns", &new).await.unwrap());
        // An entry without a refresh token holds no rejected one: it stays.
        store
            .save(
                "ns",
                &StoredTokens {
                    access_token: Some(AccessToken::new("at")),
                    ..StoredTokens::default()
                },
            )
            .await
            .unwrap();
        assert!(!shared.clear_if_refresh_token("ns", &new).await.unwrap());
        assert!(store.get("ns").is_some());
    }
}
