//! HS256 customer-token signer for backends (features `jwt-aws-lc-rs` / `jwt-rust-crypto`).

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::secret::CustomerJwt;

/// The crypto backend that computes the HMAC.
///
/// Which variants exist depends on the features: `AwsLcRs` with `jwt-aws-lc-rs`, `RustCrypto`
/// with `jwt-rust-crypto`. Both produce the same tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtBackend {
    /// aws-lc-rs (feature `jwt-aws-lc-rs`).
    #[cfg(feature = "jwt-aws-lc-rs")]
    AwsLcRs,
    /// The RustCrypto `hmac` and `sha2` crates (feature `jwt-rust-crypto`).
    #[cfg(feature = "jwt-rust-crypto")]
    RustCrypto,
}

impl Default for JwtBackend {
    /// aws-lc-rs when its feature is on, RustCrypto otherwise.
    fn default() -> Self {
        #[cfg(feature = "jwt-aws-lc-rs")]
        {
            JwtBackend::AwsLcRs
        }
        #[cfg(not(feature = "jwt-aws-lc-rs"))]
        {
            JwtBackend::RustCrypto
        }
    }
}

impl JwtBackend {
    pub(crate) fn provider(self) -> &'static jsonwebtoken::crypto::CryptoProvider {
        match self {
            #[cfg(feature = "jwt-aws-lc-rs")]
            JwtBackend::AwsLcRs => &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
            #[cfg(feature = "jwt-rust-crypto")]
            JwtBackend::RustCrypto => &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        }
    }
}

/// Mints HS256 customer JWTs: header `{"alg":"HS256","typ":"JWT","kid":KEY_ID}`, claims
/// `{"sub":{CUSTOMER_IDS},"iat":NOW,"exp":NOW+LIFETIME}` (`exp` only with a lifetime).
///
/// `sub` is an object of customer ids, not the string RFC 7519 describes: that is what
/// customer-token APIs expect. The HMAC is computed by the chosen
/// [`JwtBackend`], never through `jsonwebtoken`'s process-wide default, so both crypto features
/// may be on at once. Sign only in trusted backends: whoever holds the secret can mint a token
/// for any customer.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use client_auth::{CustomerTokenSigner, JwtBackend};
///
/// # fn main() -> Result<(), client_auth::Error> {
/// let signer = CustomerTokenSigner::hs256("key-2024", b"a secret of at least 32 bytes....".to_vec())?
///     .backend(JwtBackend::default());
/// let mut ids = serde_json::Map::new();
/// ids.insert("registered".into(), "customer-42".into());
///
/// // `sign` uses the current time; `sign_at` makes tokens reproducible.
/// let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let a = signer.sign_at(&ids, Some(Duration::from_secs(600)), issued)?;
/// let b = signer.sign_at(&ids, Some(Duration::from_secs(600)), issued)?;
/// assert_eq!(a, b);
/// # Ok(()) }
/// ```
///
/// # Serving the tokens
///
/// A [`CustomerToken`](crate::CustomerToken) callback hands them out:
///
/// ```
/// use std::time::Duration;
/// use client_auth::{BoxError, CustomerToken, CustomerTokenSigner};
///
/// # fn main() -> Result<(), client_auth::Error> {
/// let signer = CustomerTokenSigner::hs256("key-2024", b"a secret of at least 32 bytes....".to_vec())?;
///
/// let mut ids = serde_json::Map::new();
/// ids.insert("registered".into(), "customer-42".into());
/// let token = signer.sign(&ids, Some(Duration::from_secs(600)))?;
/// assert_eq!(token.expose_secret().split('.').count(), 3);
///
/// // Serve it through a provider (a real one would sign for the current customer).
/// let provider = CustomerToken::from_fn(move || {
///     let token = signer.sign(&ids, Some(Duration::from_secs(600)));
///     async move { Ok::<_, BoxError>(Some(token?.expose_secret().to_owned())) }
/// })
/// .cache(true);
/// # let _ = provider;
/// # Ok(()) }
/// ```
///
/// The secret is zeroized on drop and never printed: `Debug` shows the key id and backend
/// only.
#[derive(Clone)]
pub struct CustomerTokenSigner {
    key_id: String,
    /// Zeroized on drop by `jsonwebtoken`.
    key: EncodingKey,
    backend: JwtBackend,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a serde_json::Map<String, serde_json::Value>,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

impl CustomerTokenSigner {
    /// A signer with this key id (the header's `kid`) and HMAC secret, on the default
    /// [`JwtBackend`].
    ///
    /// RFC 7518 §3.2 asks for a secret of at least 32 bytes for HS256; use what your API
    /// issued.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the key id or the secret is empty.
    pub fn hs256(key_id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let key_id = key_id.into();
        let mut secret = secret.into();
        let checked = if secret.is_empty() {
            Err(Error::Config(
                "the customer-token signing secret is empty".into(),
            ))
        } else if key_id.is_empty() {
            Err(Error::Config("the customer-token key id is empty".into()))
        } else {
            Ok(EncodingKey::from_secret(&secret))
        };
        secret.zeroize();
        Ok(Self {
            key_id,
            key: checked?,
            backend: JwtBackend::default(),
        })
    }

    /// Signs through `backend` instead of the default.
    pub fn backend(mut self, backend: JwtBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The key id written to the header's `kid`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A token for the customer identified by `customer_ids` (the `sub` object), issued now,
    /// valid for `expires_in` (no `exp` claim when `None`).
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when `customer_ids` is empty, the expiry is out of range, or the
    /// backend fails.
    pub fn sign(
        &self,
        customer_ids: &serde_json::Map<String, serde_json::Value>,
        expires_in: Option<Duration>,
    ) -> Result<CustomerJwt, Error> {
        self.sign_at(customer_ids, expires_in, SystemTime::now())
    }

    /// Like [`sign`](Self::sign), issued at `now` (for tests and reproducible tokens).
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when `customer_ids` is empty, `now` is before 1970, the expiry is
    /// out of range, or the backend fails.
    pub fn sign_at(
        &self,
        customer_ids: &serde_json::Map<String, serde_json::Value>,
        expires_in: Option<Duration>,
        now: SystemTime,
    ) -> Result<CustomerJwt, Error> {
        if customer_ids.is_empty() {
            return Err(Error::Signing("no customer ids to put in `sub`".into()));
        }
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .map_err(|_| Error::Signing("the time is before 1970".into()))
        };
        let iat = unix(now)?;
        let exp =
            match expires_in {
                None => None,
                Some(lifetime) => Some(unix(now.checked_add(lifetime).ok_or_else(|| {
                    Error::Signing("the token lifetime is out of range".into())
                })?)?),
            };
        let header = Header {
            alg: "HS256",
            typ: "JWT",
            kid: &self.key_id,
        };
        let claims = Claims {
            sub: customer_ids,
            iat,
            exp,
        };
        compact_jws(&header, &claims, Algorithm::HS256, &self.key, self.backend)
            .map(CustomerJwt::new)
    }
}

/// `base64url(header).base64url(claims).base64url(signature)`, signed with `key` through
/// `backend` (never through `jsonwebtoken`'s process-wide default).
pub(crate) fn compact_jws(
    header: &impl Serialize,
    claims: &impl Serialize,
    alg: Algorithm,
    key: &EncodingKey,
    backend: JwtBackend,
) -> Result<String, Error> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut token = String::new();
    b64.encode_string(to_json(header)?, &mut token);
    token.push('.');
    b64.encode_string(to_json(claims)?, &mut token);

    let signer = (backend.provider().signer_factory)(&alg, key)
        .map_err(|e| Error::Signing(format!("the {alg:?} signer failed: {e}").into()))?;
    let signature = Zeroizing::new(
        signer
            .try_sign(token.as_bytes())
            .map_err(|e| Error::Signing(format!("{alg:?} signing failed: {e}").into()))?,
    );
    token.push('.');
    b64.encode_string(&*signature, &mut token);
    Ok(token)
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value)
        .map_err(|e| Error::Signing(format!("could not serialize the token: {e}").into()))
}

impl fmt::Debug for CustomerTokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomerTokenSigner")
            .field("key_id", &self.key_id)
            .field("secret", &"[REDACTED]")
            .field("backend", &self.backend)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Extensions, Method};
    use jsonwebtoken::DecodingKey;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::customer::jwt_expiry;
    use crate::provider::{AuthorizationProvider, RequestView};
    use crate::{BoxError, CustomerToken};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn ids() -> serde_json::Map<String, serde_json::Value> {
        let mut ids = serde_json::Map::new();
        ids.insert("registered".into(), "customer-42".into());
        ids.insert("cookie".into(), "abc".into());
        ids
    }

    fn all_backends() -> Vec<JwtBackend> {
        vec![
            #[cfg(feature = "jwt-aws-lc-rs")]
            JwtBackend::AwsLcRs,
            #[cfg(feature = "jwt-rust-crypto")]
            JwtBackend::RustCrypto,
        ]
    }

    fn segment(token: &str, n: usize) -> serde_json::Value {
        let part = token.split('.').nth(n).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Whether `token`'s signature verifies with `secret` through `backend`'s verifier.
    fn verifies(token: &str, secret: &[u8], backend: JwtBackend) -> bool {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let verifier = (backend.provider().verifier_factory)(
            &Algorithm::HS256,
            &DecodingKey::from_secret(secret),
        )
        .unwrap();
        verifier.verify(message.as_bytes(), &signature).is_ok()
    }

    #[test]
    fn token_verifies_with_the_same_secret_on_every_backend() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for signing in all_backends() {
            let signer = CustomerTokenSigner::hs256("kid-1", SECRET)
                .unwrap()
                .backend(signing);
            let token = signer
                .sign_at(&ids(), Some(Duration::from_secs(60)), now)
                .unwrap();
            for verifying in all_backends() {
                assert!(
                    verifies(token.expose_secret(), SECRET, verifying),
                    "{signing:?} → {verifying:?}"
                );
                assert!(!verifies(
                    token.expose_secret(),
                    b"another secret of 32 bytes......",
                    verifying
                ));
            }
        }
    }

    #[test]
    fn header_carries_kid_and_claims_carry_sub_iat_exp() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = CustomerTokenSigner::hs256("kid-1", SECRET).unwrap();
        let token = signer
            .sign_at(&ids(), Some(Duration::from_secs(60)), now)
            .unwrap();
        let token = token.expose_secret();
        assert_eq!(
            segment(token, 0),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "kid-1"})
        );
        assert_eq!(
            segment(token, 1),
            serde_json::json!({
                "sub": {"registered": "customer-42", "cookie": "abc"},
                "iat": 1_700_000_000u64,
                "exp": 1_700_000_060u64,
            })
        );
    }

    #[test]
    fn no_lifetime_means_no_exp_claim() {
        let signer = CustomerTokenSigner::hs256("kid-1", SECRET).unwrap();
        let token = signer.sign(&ids(), None).unwrap();
        let claims = segment(token.expose_secret(), 1);
        assert!(claims.get("exp").is_none());
        assert!(claims.get("iat").is_some());
    }

    #[cfg(all(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[test]
    fn both_backends_produce_the_identical_token() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sign = |backend| {
            CustomerTokenSigner::hs256("kid-1", SECRET)
                .unwrap()
                .backend(backend)
                .sign_at(&ids(), Some(Duration::from_secs(600)), now)
                .unwrap()
        };
        assert_eq!(sign(JwtBackend::AwsLcRs), sign(JwtBackend::RustCrypto));
    }

    #[cfg(all(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    #[test]
    fn default_backend_is_aws_lc_rs_when_both_are_on() {
        assert_eq!(JwtBackend::default(), JwtBackend::AwsLcRs);
    }

    #[test]
    fn empty_secret_or_key_id_is_a_config_error() {
        assert!(matches!(
            CustomerTokenSigner::hs256("kid", Vec::new()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            CustomerTokenSigner::hs256("", SECRET),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn empty_customer_ids_or_out_of_range_times_are_signing_errors() {
        let signer = CustomerTokenSigner::hs256("kid", SECRET).unwrap();
        let empty = serde_json::Map::new();
        assert!(matches!(signer.sign(&empty, None), Err(Error::Signing(_))));
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(
            signer.sign_at(&ids(), None, before_1970),
            Err(Error::Signing(_))
        ));
        assert!(matches!(
            signer.sign(&ids(), Some(Duration::MAX)),
            Err(Error::Signing(_))
        ));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let marker = "MARKER-SIGNING-SECRET-5555-5555-5555";
        let signer = CustomerTokenSigner::hs256("kid-1", marker).unwrap();
        let printed = format!("{signer:?}");
        assert!(!printed.contains(marker), "{printed}");
        assert!(printed.contains("kid-1") && printed.contains("REDACTED"));
    }

    #[test]
    fn exp_round_trips_through_the_customer_token_decode() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = CustomerTokenSigner::hs256("kid-1", SECRET).unwrap();
        let token = signer
            .sign_at(&ids(), Some(Duration::from_secs(300)), now)
            .unwrap();
        assert_eq!(
            jwt_expiry(token.expose_secret()),
            Some(now + Duration::from_secs(300))
        );
    }

    #[tokio::test]
    async fn signed_token_is_cached_by_customer_token_until_its_hard_window() {
        let clock = ManualClock::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let signer = CustomerTokenSigner::hs256("kid-1", SECRET).unwrap();
        let (counter, signing_clock) = (Arc::clone(&calls), clock.clone());
        let provider = CustomerToken::from_fn(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let token = signer.sign_at(
                &ids(),
                Some(Duration::from_secs(120)),
                signing_clock.unix_now(),
            );
            async move { Ok::<_, BoxError>(Some(token?.expose_secret().to_owned())) }
        })
        .cache(true)
        .clock(Arc::new(clock.clone()));
        let extensions = Extensions::new();
        let request = RequestView::new(&Method::GET, "https", "a", "/", None, &extensions);

        let first = provider.authorize(&request).await.unwrap();
        assert!(
            first
                .header_value()
                .to_str()
                .unwrap()
                .starts_with("Bearer ey")
        );
        // exp is whole seconds: 119-120 s left, hard window 10 s.
        clock.advance(Duration::from_secs(108));
        assert!(provider.is_cached());
        provider.authorize(&request).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(3));
        assert!(!provider.is_cached());
        provider.authorize(&request).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
