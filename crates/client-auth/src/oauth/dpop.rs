//! DPoP (RFC 9449): the key, the proofs, and the nonces servers hand out.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::jwt::JwtBackend;

/// The `DPoP` request header (a proof) and response header name `DPoP-Nonce`.
pub(crate) static DPOP: HeaderName = HeaderName::from_static("dpop");
pub(crate) static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The most origins whose nonce is remembered; the oldest is forgotten first.
const MAX_NONCES: usize = 32;

/// A DPoP key: an ES256 (P-256) key pair whose public half goes into every proof's `jwk`
/// header, and whose thumbprint (RFC 7638) the server binds the access tokens to.
///
/// Generate one per process with [`generate`](Self::generate), or load one from PKCS#8
/// ([`from_pkcs8_der`](Self::from_pkcs8_der), [`from_pkcs8_pem`](Self::from_pkcs8_pem)).
/// Processes that share a session through a shared token store must use the same key: a token
/// is bound to the key that asked for it, and a process whose key differs does not adopt it
/// (it asks for a token of its own). The key never goes into a store; keep it where you keep
/// the client's other secrets. `Debug` shows the thumbprint only.
///
/// ```
/// use client_auth::DpopKey;
///
/// let key = DpopKey::generate()?;
/// assert_eq!(key.thumbprint().len(), 43); // base64url of a SHA-256
/// # Ok::<(), client_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    pair: KeyPair,
    /// `base64url(header JSON)`, the same for every proof of this key.
    header: String,
    thumbprint: String,
}

enum KeyPair {
    #[cfg(feature = "jwt-aws-lc-rs")]
    AwsLcRs(aws_lc_rs::signature::EcdsaKeyPair),
    #[cfg(feature = "jwt-rust-crypto")]
    RustCrypto(p256::ecdsa::SigningKey),
}

impl DpopKey {
    /// A new random key, through the default backend ([`JwtBackend::default`]).
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when the backend cannot generate a key.
    pub fn generate() -> Result<Self, Error> {
        Self::generate_with(JwtBackend::default())
    }

    /// A new random key, through `backend`.
    ///
    /// # Errors
    ///
    /// [`Error::Signing`] when the backend cannot generate a key.
    pub fn generate_with(backend: JwtBackend) -> Result<Self, Error> {
        let pair = match backend {
            #[cfg(feature = "jwt-aws-lc-rs")]
            JwtBackend::AwsLcRs => {
                use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
                KeyPair::AwsLcRs(
                    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                        .map_err(|_| Error::Signing("could not generate a DPoP key".into()))?,
                )
            }
            #[cfg(feature = "jwt-rust-crypto")]
            JwtBackend::RustCrypto => {
                KeyPair::RustCrypto(p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
            }
        };
        Self::from_pair(pair)
    }

    /// A P-256 private key in PKCS#8 DER, through the default backend.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `der` is not a P-256 PKCS#8 key (the message never holds the
    /// key).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        Self::from_pkcs8_der_with(der, JwtBackend::default())
    }

    /// A P-256 private key in PKCS#8 DER, through `backend`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `der` is not a P-256 PKCS#8 key.
    pub fn from_pkcs8_der_with(der: &[u8], backend: JwtBackend) -> Result<Self, Error> {
        let bad = || Error::Config("the DPoP key is not a P-256 PKCS#8 private key".into());
        let pair = match backend {
            #[cfg(feature = "jwt-aws-lc-rs")]
            JwtBackend::AwsLcRs => {
                use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
                KeyPair::AwsLcRs(
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                        .map_err(|_| bad())?,
                )
            }
            #[cfg(feature = "jwt-rust-crypto")]
            JwtBackend::RustCrypto => {
                use p256::pkcs8::DecodePrivateKey as _;
                KeyPair::RustCrypto(
                    p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|_| bad())?,
                )
            }
        };
        Self::from_pair(pair)
    }

    /// A P-256 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pem` is not a P-256 PKCS#8 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, Error> {
        let der = pem_to_der(pem, "PRIVATE KEY")
            .ok_or_else(|| Error::Config("the DPoP key is not a PKCS#8 PEM private key".into()))?;
        Self::from_pkcs8_der(&der)
    }

    fn from_pair(pair: KeyPair) -> Result<Self, Error> {
        let point = match &pair {
            #[cfg(feature = "jwt-aws-lc-rs")]
            KeyPair::AwsLcRs(pair) => {
                use aws_lc_rs::signature::KeyPair as _;
                pair.public_key().as_ref().to_vec()
            }
            #[cfg(feature = "jwt-rust-crypto")]
            KeyPair::RustCrypto(key) => key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        };
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let (x, y) = match point.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(Error::Signing("the DPoP public key is malformed".into())),
        };
        let (x, y) = (B64.encode(x), B64.encode(y));
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = B64.encode(Sha256::digest(jwk.as_bytes()));
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
        Ok(Self {
            inner: Arc::new(KeyInner {
                pair,
                header: B64.encode(header.as_bytes()),
                thumbprint,
            }),
        })
    }

    /// The key's JWK thumbprint (RFC 7638, SHA-256, base64url): the `jkt` a server binds
    /// tokens to (`cnf.jkt`).
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// A proof for a request: `htm` is the method, `htu` the URL without query and fragment,
    /// `ath` the base64url SHA-256 of the access token it goes with (resource requests only).
    pub(crate) fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
        now: SystemTime,
    ) -> Result<HeaderValue, Error> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            jti: &B64.encode(fastrand::u128(..).to_le_bytes()),
            htm,
            htu,
            iat,
            ath,
            nonce,
        };
        let claims = serde_json::to_vec(&claims)
            .map_err(|_| Error::Signing("could not serialize a DPoP proof".into()))?;
        let mut proof = String::with_capacity(self.inner.header.len() + claims.len() * 2 + 90);
        proof.push_str(&self.inner.header);
        proof.push('.');
        B64.encode_string(&claims, &mut proof);
        let signature = self.sign(proof.as_bytes())?;
        proof.push('.');
        B64.encode_string(signature, &mut proof);
        let mut value = HeaderValue::try_from(proof)
            .map_err(|_| Error::Signing("a DPoP proof is not a header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner.pair {
            #[cfg(feature = "jwt-aws-lc-rs")]
            KeyPair::AwsLcRs(pair) => pair
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Signing("DPoP proof signing failed".into())),
            #[cfg(feature = "jwt-rust-crypto")]
            KeyPair::RustCrypto(key) => {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = key.sign(message);
                Ok(signature.to_bytes().to_vec())
            }
        }
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &"ES256")
            .field("thumbprint", &self.inner.thumbprint)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

/// The `ath` claim for `token`: base64url of its SHA-256.
pub(crate) fn ath(token: &str) -> Arc<str> {
    B64.encode(Sha256::digest(token.as_bytes())).into()
}

/// The body of the first PEM block labelled `label`, decoded.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// The provider's DPoP state: its key and the latest nonce of each origin.
pub(crate) struct Dpop {
    pub(crate) key: DpopKey,
    nonces: Mutex<VecDeque<(String, String)>>,
}

impl fmt::Debug for Dpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Dpop {
    pub(crate) fn new(key: DpopKey) -> Self {
        Self {
            key,
            nonces: Mutex::new(VecDeque::new()),
        }
    }

    /// The latest nonce `origin` (`scheme://authority`) gave, if any.
    pub(crate) fn nonce(&self, origin: &str) -> Option<String> {
        let nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        nonces
            .iter()
            .find(|(o, _)| o.eq_ignore_ascii_case(origin))
            .map(|(_, n)| n.clone())
    }

    /// Remembers the `DPoP-Nonce` in `headers` for `origin`, and gives it back (a retry uses
    /// it as it is: with other origins' nonces arriving at once, the memory may have dropped
    /// it again).
    pub(crate) fn remember_nonce(&self, origin: &str, headers: &HeaderMap) -> Option<String> {
        let nonce = headers
            .get(&DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .filter(|n| is_nonce(n))?;
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        nonces.retain(|(o, _)| !o.eq_ignore_ascii_case(origin));
        if nonces.len() >= MAX_NONCES {
            nonces.pop_front();
        }
        nonces.push_back((origin.to_owned(), nonce.to_owned()));
        Some(nonce.to_owned())
    }

    /// A proof for a request to `htu` (`scheme://authority/path`) with `nonce`, or else the
    /// nonce its origin gave last.
    pub(crate) fn proof_for(
        &self,
        method: &Method,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
        now: SystemTime,
    ) -> Result<HeaderValue, Error> {
        let remembered = match nonce {
            Some(_) => None,
            None => self.nonce(origin_of(htu)),
        };
        self.key.proof(
            method.as_str(),
            htu,
            ath,
            nonce.or(remembered.as_deref()),
            now,
        )
    }
}

/// `scheme://authority` of `url`.
pub(crate) fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// RFC 9449 §8.1: `nonce = 1*NQCHAR` (printable ASCII but `"` and `\`); a sane length cap.
fn is_nonce(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 1024
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// `htu` for a request: `scheme://authority/path`, without query and fragment.
pub(crate) fn htu(scheme: &str, authority: &str, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut htu = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    htu.push_str(scheme);
    htu.push_str("://");
    htu.push_str(authority);
    htu.push_str(path);
    htu
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<DpopKey> {
        vec![
            #[cfg(feature = "jwt-aws-lc-rs")]
            DpopKey::generate_with(JwtBackend::AwsLcRs).unwrap(),
            #[cfg(feature = "jwt-rust-crypto")]
            DpopKey::generate_with(JwtBackend::RustCrypto).unwrap(),
        ]
    }

    fn part(proof: &str, n: usize) -> serde_json::Value {
        let segment = proof.split('.').nth(n).unwrap();
        serde_json::from_slice(&B64.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_carries_the_rfc_9449_header_and_claims() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for key in keys() {
            let proof = key
                .proof(
                    "GET",
                    "https://api.example.com/v1",
                    Some("ATH"),
                    Some("n-1"),
                    now,
                )
                .unwrap();
            assert!(proof.is_sensitive());
            let proof = proof.to_str().unwrap();
            let header = part(proof, 0);
            assert_eq!(header["typ"], "dpop+jwt");
            assert_eq!(header["alg"], "ES256");
            assert_eq!(header["jwk"]["kty"], "EC");
            assert!(header["jwk"].get("d").is_none(), "no private part");
            let claims = part(proof, 1);
            assert_eq!(claims["htm"], "GET");
            assert_eq!(claims["htu"], "https://api.example.com/v1");
            assert_eq!(claims["iat"], 1_700_000_000);
            assert_eq!(claims["ath"], "ATH");
            assert_eq!(claims["nonce"], "n-1");
            let signature = B64.decode(proof.rsplit('.').next().unwrap()).unwrap();
            assert_eq!(signature.len(), 64, "ES256: r and s, 32 bytes each");
        }
    }

    #[test]
    fn every_proof_has_a_new_jti() {
        let key = keys().remove(0);
        let now = SystemTime::now();
        let a = key.proof("GET", "https://a/", None, None, now).unwrap();
        let b = key.proof("GET", "https://a/", None, None, now).unwrap();
        assert_ne!(
            part(a.to_str().unwrap(), 1)["jti"],
            part(b.to_str().unwrap(), 1)["jti"]
        );
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        // RFC 7638 §3.1 computes over the required members in order; recompute from the
        // proof's own jwk to check the two agree.
        let key = keys().remove(0);
        let proof = key
            .proof("GET", "https://a/", None, None, SystemTime::now())
            .unwrap();
        let jwk = &part(proof.to_str().unwrap(), 0)["jwk"];
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            B64.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn nonces_are_remembered_per_origin_and_bounded() {
        let dpop = Dpop::new(keys().remove(0));
        let mut headers = HeaderMap::new();
        headers.insert(&DPOP_NONCE, HeaderValue::from_static("n1"));
        assert_eq!(
            dpop.remember_nonce("https://a", &headers).as_deref(),
            Some("n1")
        );
        assert_eq!(dpop.nonce("https://A").as_deref(), Some("n1"));
        assert_eq!(dpop.nonce("https://b"), None);
        headers.insert(&DPOP_NONCE, HeaderValue::from_static("bad\"nonce"));
        assert_eq!(dpop.remember_nonce("https://a", &headers), None);
        assert_eq!(dpop.nonce("https://a").as_deref(), Some("n1"));
        headers.insert(&DPOP_NONCE, HeaderValue::from_static("n"));
        for i in 0..100 {
            dpop.remember_nonce(&format!("https://h{i}"), &headers);
        }
        assert!(dpop.nonces.lock().unwrap().len() <= MAX_NONCES);
    }

    #[test]
    fn origin_and_htu_drop_path_query_and_fragment() {
        assert_eq!(
            origin_of("https://a.example:8443/x?y#z"),
            "https://a.example:8443"
        );
        assert_eq!(origin_of("https://a.example"), "https://a.example");
        assert_eq!(htu("https", "a.example", ""), "https://a.example/");
        assert_eq!(htu("https", "a.example", "/v1/x"), "https://a.example/v1/x");
    }

    #[test]
    fn a_key_round_trips_through_pkcs8_and_debug_shows_no_secret() {
        let pem = "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----";
        assert!(matches!(
            DpopKey::from_pkcs8_pem(pem),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            DpopKey::from_pkcs8_der(b"junk"),
            Err(Error::Config(_))
        ));
        let key = keys().remove(0);
        let debug = format!("{key:?}");
        assert!(debug.contains(key.thumbprint()));
    }
}
