//! Assertions read afresh for every token request: the JWT bearer grant's assertion, a token
//! exchange's subject token, a client assertion from a workload identity.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::BoxFuture;
use crate::customer::BoxError;
use crate::error::{Error, SharedError};
use crate::secret::SecretString;

type Fetch = dyn Fn() -> BoxFuture<'static, Result<SecretString, Error>> + Send + Sync;

/// Where an assertion comes from: read again for every token request, so a source that
/// rotates (a projected service-account token file, a CI system's short-lived identity token)
/// is always current. Used by [`OAuthProvider::jwt_bearer_grant`](crate::OAuthProvider::jwt_bearer_grant)
/// (the `assertion`), [`OAuthProvider::token_exchange`](crate::OAuthProvider::token_exchange)
/// (the `subject_token`) and
/// [`OAuthProviderBuilder::client_assertion`](crate::OAuthProviderBuilder::client_assertion)
/// (a `client_assertion` issued by someone else).
///
/// Its text is a secret: never printed, removed from errors the server echoes it in.
///
/// ```
/// use client_auth::{AssertionSource, BoxError};
///
/// // A file the platform rotates in place.
/// let projected = AssertionSource::file("/var/run/secrets/tokens/api-token");
/// // Any async source.
/// let fetched = AssertionSource::from_fn(|| async { Ok::<_, BoxError>("eyJ...".to_owned()) });
/// # let _ = (projected, fetched);
/// ```
#[derive(Clone)]
pub struct AssertionSource {
    fetch: Arc<Fetch>,
    what: Arc<str>,
}

impl fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSource")
            .field("source", &self.what)
            .finish_non_exhaustive()
    }
}

impl AssertionSource {
    /// The content of the file at `path` (surrounding whitespace removed), read for every
    /// token request on tokio's blocking pool.
    ///
    /// A file that cannot be read, or is empty, fails the token request with
    /// [`Error::Callback`] naming the path, never the content; the next request reads again.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path: Arc<PathBuf> = Arc::new(path.into());
        let what: Arc<str> = format!("file {}", path.display()).into();
        Self {
            fetch: Arc::new(move || {
                let path = Arc::clone(&path);
                Box::pin(async move {
                    let read = {
                        let path = Arc::clone(&path);
                        tokio::task::spawn_blocking(move || std::fs::read_to_string(&*path))
                    };
                    let text = read
                        .await
                        .map_err(|_| Error::RefreshAborted)?
                        .map_err(|e| {
                            callback(format!(
                                "could not read the assertion file {}: {}",
                                path.display(),
                                e.kind()
                            ))
                        })?;
                    non_empty(text.trim().to_owned(), || {
                        format!("the assertion file {} is empty", path.display())
                    })
                })
            }),
            what,
        }
    }

    /// What `source` answers, for every token request. Its error becomes
    /// [`Error::Callback`].
    pub fn from_fn<F, Fut>(source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        Self {
            fetch: Arc::new(move || {
                let answer = source();
                Box::pin(async move {
                    let text = answer
                        .await
                        .map_err(|e| Error::Callback(SharedError::new(e)))?;
                    non_empty(text.trim().to_owned(), || {
                        "the assertion source answered an empty assertion".to_owned()
                    })
                })
            }),
            what: "callback".into(),
        }
    }

    /// An assertion this client signs itself (RFC 7523 §2.1): `iss` = `issuer`, `sub` =
    /// `subject`, `aud` = `audience`, a unique `jti`, valid for a minute. A service account
    /// with a private key uses it with [`OAuthProvider::jwt_bearer_grant`](crate::OAuthProvider::jwt_bearer_grant).
    #[cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto")))
    )]
    pub fn signed(
        key: crate::ClientAssertionKey,
        issuer: impl Into<String>,
        subject: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        let signer = super::assertion::AssertionSigner::PrivateKey(key);
        let (issuer, subject, audience) = (issuer.into(), subject.into(), audience.into());
        Self {
            fetch: Arc::new(move || {
                let signed = signer
                    .claims_assertion(&issuer, &subject, &audience, std::time::SystemTime::now())
                    .map(|jwt| SecretString::new(jwt.to_string()));
                Box::pin(async move { signed })
            }),
            what: "signed".into(),
        }
    }

    /// The current assertion.
    pub(crate) async fn get(&self) -> Result<SecretString, Error> {
        (self.fetch)().await
    }
}

fn callback(text: String) -> Error {
    Error::Callback(SharedError::new(text))
}

fn non_empty(text: String, what: impl FnOnce() -> String) -> Result<SecretString, Error> {
    if text.is_empty() {
        Err(callback(what()))
    } else {
        Ok(SecretString::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_source_reads_the_current_content_every_time() {
        let dir = std::env::temp_dir().join(format!("client-auth-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let source = AssertionSource::file(&path);

        let missing = source.get().await.unwrap_err();
        assert!(matches!(missing, Error::Callback(_)));
        assert!(missing.to_string().contains("token") || format!("{missing:?}").contains("token"));

        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(source.get().await.unwrap().expose_secret(), "first");
        std::fs::write(&path, "SECOND").unwrap();
        assert_eq!(source.get().await.unwrap().expose_secret(), "SECOND");
        std::fs::write(&path, "  \n").unwrap();
        let empty = source.get().await.unwrap_err();
        assert!(!format!("{empty:?}").contains("SECOND"));
        assert!(!format!("{source:?}").contains("SECOND"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_callback_source_error_is_a_callback_error() {
        let source = AssertionSource::from_fn(|| async { Err::<String, BoxError>("down".into()) });
        assert!(matches!(source.get().await, Err(Error::Callback(_))));
    }
}
