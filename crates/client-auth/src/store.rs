//! Where tokens live between refreshes, and between processes.
//!
//! A [`TokenStore`] is keyed by a namespace (one per provider: a user, a tenant, a client).
//! Expiry is stored as UNIX time because a store may be shared by processes that do not
//! share a monotonic clock. [`MemoryStore`] keeps tokens in this process.
//!
//! ```
//! use client_auth::{MemoryStore, RefreshToken, StoredTokens, TokenStore};
//!
//! # async fn demo() -> Result<(), client_auth::StoreError> {
//! let store = MemoryStore::new();
//! let tokens = StoredTokens {
//!     refresh_token: Some(RefreshToken::new("rt")),
//!     ..StoredTokens::default()
//! };
//! store.save("user-42", &tokens).await?;
//! assert!(store.load("user-42").await?.is_some());
//! store.clear("user-42").await?;
//! assert!(store.load("user-42").await?.is_none());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::BoxFuture;
use crate::error::StoreError;
use crate::secret::{AccessToken, RefreshToken};

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
}

/// A lease on the refresh of one namespace, for stores shared between processes.
///
/// While a process holds it, other processes wait for its result instead of refreshing the
/// same refresh token (which would revoke the grant on servers with reuse detection).
pub trait RefreshLease: Send + Sync + fmt::Debug {
    /// Gives the lease back.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// Persistence for tokens.
///
/// Implementations must not log token values. All methods are async so that network and file
/// stores fit; the in-memory store answers at once.
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
    fn lock_refresh<'a>(
        &'a self,
        namespace: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn RefreshLease>>, StoreError>> {
        (**self).lock_refresh(namespace, ttl)
    }
}

/// Tokens kept in this process's memory.
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
}
