//! Client authentication by JWT (RFC 7523 §2.2): `private_key_jwt` with the client's own key,
//! and `client_secret_jwt` (HS256 with the client secret).

use std::fmt;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;

use crate::error::Error;
use crate::jwt::{JwtBackend, compact_jws};

/// How long an assertion is valid: long enough for one token request.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The client's private key for `private_key_jwt` client authentication
/// ([`OAuthProviderBuilder::private_key_jwt`](crate::OAuthProviderBuilder::private_key_jwt)):
/// RS256, PS256 or ES256, from PEM (PKCS#8, or PKCS#1 for RSA).
///
/// The key is a secret: `Debug` shows the algorithm and key id only, and no error holds it.
///
/// ```
/// use client_auth::ClientAssertionKey;
///
/// let pem = "-----BEGIN PRIVATE KEY-----
/// MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
/// L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
/// LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
/// -----END PRIVATE KEY-----";
/// let key = ClientAssertionKey::es256_pem(pem.as_bytes())?.key_id("client-key-1");
/// assert!(!format!("{key:?}").contains("MIGH"));
/// # Ok::<(), client_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientAssertionKey {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
    backend: JwtBackend,
}

impl ClientAssertionKey {
    /// An RSA key for RS256 (PKCS#1 or PKCS#8 PEM).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pem` is not an RSA private key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, Error> {
        Self::rsa(pem, Algorithm::RS256)
    }

    /// An RSA key for PS256 (PKCS#1 or PKCS#8 PEM).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pem` is not an RSA private key.
    pub fn ps256_pem(pem: &[u8]) -> Result<Self, Error> {
        Self::rsa(pem, Algorithm::PS256)
    }

    /// A P-256 key for ES256 (PKCS#8 PEM).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pem` is not an EC private key.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, Error> {
        let key = EncodingKey::from_ec_pem(pem)
            .map_err(|_| Error::Config("the client assertion key is not an EC PEM key".into()))?;
        Self::checked(key, Algorithm::ES256)
    }

    fn rsa(pem: &[u8], alg: Algorithm) -> Result<Self, Error> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|_| Error::Config("the client assertion key is not an RSA PEM key".into()))?;
        Self::checked(key, alg)
    }

    /// Proves the key signs with the default backend now, not at the first token request.
    fn checked(key: EncodingKey, alg: Algorithm) -> Result<Self, Error> {
        let backend = JwtBackend::default();
        (backend.provider().signer_factory)(&alg, &key).map_err(|_| {
            Error::Config(format!("the client assertion key cannot sign {alg:?}").into())
        })?;
        Ok(Self {
            alg,
            key,
            kid: None,
            backend,
        })
    }

    /// The key id written to the assertion header's `kid`, so the server picks the key among
    /// the client's registered ones.
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Signs through `backend` instead of the default.
    pub fn backend(mut self, backend: JwtBackend) -> Self {
        self.backend = backend;
        self
    }
}

impl fmt::Debug for ClientAssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAssertionKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// What signs a client assertion: the client's key, or its secret (HS256).
#[derive(Clone)]
pub(crate) enum AssertionSigner {
    PrivateKey(ClientAssertionKey),
    Secret(EncodingKey),
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionSigner::PrivateKey(key) => f.debug_tuple("PrivateKey").field(key).finish(),
            AssertionSigner::Secret(_) => f.write_str("Secret([REDACTED])"),
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: Algorithm,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    exp: u64,
}

impl AssertionSigner {
    /// A client assertion for `client_id` at `audience`, issued at `now`: `iss` = `sub` =
    /// the client id, a unique `jti`, valid for a minute.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<zeroize::Zeroizing<String>, Error> {
        self.claims_assertion(client_id, client_id, audience, now)
    }

    /// An assertion with `issuer`, `subject` and `audience`, issued at `now`: a unique `jti`,
    /// valid for a minute.
    pub(crate) fn claims_assertion(
        &self,
        issuer: &str,
        subject: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<zeroize::Zeroizing<String>, Error> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Error::Signing("the time is before 1970".into()))?
            .as_secs();
        let jti = format!("{:032x}", fastrand::u128(..));
        let claims = Claims {
            iss: issuer,
            sub: subject,
            aud: audience,
            jti: &jti,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        let (alg, key, kid, backend) = match self {
            AssertionSigner::PrivateKey(k) => (k.alg, &k.key, k.kid.as_deref(), k.backend),
            AssertionSigner::Secret(key) => (Algorithm::HS256, key, None, JwtBackend::default()),
        };
        let header = Header {
            alg,
            typ: "JWT",
            kid,
        };
        compact_jws(&header, &claims, alg, key, backend).map(zeroize::Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbGM/c0ympeDDLRHQ
L2q/pS+oU5H7rafgmGWU0c4vez+hRANCAASOGTIEkNC7H3ZFOEnTcmL22BZ1XQRe
LL/mSbSvXnKq7hmos+uXCANtJOPJmUePZYqTj7Fchoy0GJGsN/+DhL7f
-----END PRIVATE KEY-----";

    fn part(token: &str, n: usize) -> serde_json::Value {
        let segment = token.split('.').nth(n).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn an_assertion_names_the_client_the_audience_and_expires_within_a_minute() {
        let key = ClientAssertionKey::es256_pem(EC_PEM.as_bytes())
            .unwrap()
            .key_id("k1");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = AssertionSigner::PrivateKey(key);
        let a = signer
            .assertion("client-1", "https://issuer.example", now)
            .unwrap();
        let b = signer
            .assertion("client-1", "https://issuer.example", now)
            .unwrap();
        assert_eq!(part(&a, 0)["alg"], "ES256");
        assert_eq!(part(&a, 0)["kid"], "k1");
        let claims = part(&a, 1);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://issuer.example");
        assert_eq!(claims["exp"], 1_700_000_060);
        assert_ne!(claims["jti"], part(&b, 1)["jti"], "a new jti every time");
    }

    #[test]
    fn a_key_that_is_not_pem_is_a_config_error_that_does_not_echo_it() {
        let err = ClientAssertionKey::rs256_pem(b"SECRET-NOT-A-KEY").unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(!err.to_string().contains("SECRET"));
        // An EC key is not an RSA key.
        assert!(ClientAssertionKey::rs256_pem(EC_PEM.as_bytes()).is_err());
    }

    #[test]
    fn client_secret_jwt_signs_hs256_and_debug_hides_the_secret() {
        let signer = AssertionSigner::Secret(EncodingKey::from_secret(b"SECRET-VALUE"));
        let token = signer
            .assertion("c", "https://as.example/token", SystemTime::now())
            .unwrap();
        assert_eq!(part(&token, 0)["alg"], "HS256");
        assert!(!format!("{signer:?}").contains("SECRET-VALUE"));
    }
}
