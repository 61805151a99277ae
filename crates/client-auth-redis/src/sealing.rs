//! The value of the tokens key: plain JSON, or (feature `encryption`) a sealed envelope.
//!
//! The envelope is `MAGIC || key id (8) || refresh-token tag (32) || nonce (12) || ciphertext
//! and AEAD tag`:
//!
//! - `MAGIC` starts with a zero byte, which no JSON document does, so either side can tell the
//!   two apart (also a store built without the feature, which then refuses it by name).
//! - The key id (HKDF of the user key) says which key sealed it: a wrong key is reported as
//!   such, by `load` and by the compare-and-delete script.
//! - The refresh-token tag is HMAC-SHA256 of the refresh token under a key derived from the
//!   user key (32 zero bytes when there is none): the compare-and-delete script compares it,
//!   as it compares the `refresh_token` field of plain JSON, without ever seeing a token.
//! - The ciphertext is AES-256-GCM of the JSON with a random 96-bit nonce; the associated data
//!   is the header (magic, key id, tag) followed by the Redis key's name, so neither the header
//!   nor the key the value sits under can be changed without `load` noticing.

/// The first bytes of a sealed value (format version 1).
pub(crate) const MAGIC: &[u8] = b"\0CAE\x01";

#[cfg(feature = "encryption")]
pub(crate) use cipher::Cipher;

/// Whether `value` is a sealed envelope (rather than plain JSON).
pub(crate) fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

#[cfg(feature = "encryption")]
mod cipher {
    use std::fmt;

    use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
    use aws_lc_rs::{hkdf, hmac};
    use client_auth::{RefreshToken, StoreError, StoredTokens};
    use zeroize::Zeroizing;

    use super::MAGIC;

    /// Length of the key id.
    pub(crate) const KEY_ID_LEN: usize = 8;
    /// Length of the refresh-token tag (HMAC-SHA256).
    pub(crate) const TAG_LEN: usize = 32;
    const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + TAG_LEN;

    /// An output length for HKDF.
    struct Len(usize);

    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }

    /// The keys derived from the user's key.
    pub(crate) struct Cipher {
        aead: RandomizedNonceKey,
        mac: hmac::Key,
        key_id: [u8; KEY_ID_LEN],
    }

    impl fmt::Debug for Cipher {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Cipher").finish_non_exhaustive()
        }
    }

    fn setup_failed() -> StoreError {
        StoreError::permanent("could not set up the encryption of the Redis token store")
    }

    impl Cipher {
        /// Derives the AEAD key, the HMAC key and the key id from `key` (HKDF-SHA256).
        pub(crate) fn new(key: &[u8; 32]) -> Result<Self, StoreError> {
            let prk =
                hkdf::Salt::new(hkdf::HKDF_SHA256, b"client-auth-redis tokens v1").extract(key);
            let mut aead_key = Zeroizing::new([0_u8; 32]);
            prk.expand(&[b"aead key"], Len(aead_key.len()))
                .and_then(|okm| okm.fill(&mut aead_key[..]))
                .map_err(|_| setup_failed())?;
            let aead =
                RandomizedNonceKey::new(&AES_256_GCM, &aead_key[..]).map_err(|_| setup_failed())?;
            let mac = prk
                .expand(&[b"refresh token tag key"], hmac::HMAC_SHA256)
                .map(hmac::Key::from)
                .map_err(|_| setup_failed())?;
            let mut key_id = [0_u8; KEY_ID_LEN];
            prk.expand(&[b"key id"], Len(KEY_ID_LEN))
                .and_then(|okm| okm.fill(&mut key_id))
                .map_err(|_| setup_failed())?;
            Ok(Self { aead, mac, key_id })
        }

        /// The id of this key, as written in every envelope it seals.
        pub(crate) fn key_id(&self) -> &[u8] {
            &self.key_id
        }

        /// The keyed hash of a refresh token the compare-and-delete script compares.
        pub(crate) fn tag(&self, refresh_token: Option<&RefreshToken>) -> [u8; TAG_LEN] {
            let mut tag = [0_u8; TAG_LEN];
            if let Some(rt) = refresh_token {
                let signed = hmac::sign(&self.mac, rt.expose_secret().as_bytes());
                tag.copy_from_slice(signed.as_ref());
            }
            tag
        }

        /// The envelope of `tokens`, to be stored under the Redis key `key`.
        pub(crate) fn seal(&self, key: &str, tokens: &StoredTokens) -> Result<Vec<u8>, StoreError> {
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&self.key_id);
            header.extend_from_slice(&self.tag(tokens.refresh_token.as_ref()));
            let json = tokens.to_json();
            let plain = json.expose_secret().as_bytes();
            // Room for the AEAD tag up front: no reallocation leaves plaintext behind.
            let mut in_out =
                Zeroizing::new(Vec::with_capacity(plain.len() + AES_256_GCM.tag_len()));
            in_out.extend_from_slice(plain);
            let nonce = self
                .aead
                .seal_in_place_append_tag(Aad::from(aad(&header, key)), &mut *in_out)
                .map_err(|_| StoreError::permanent("could not encrypt the tokens"))?;
            let mut sealed = header;
            sealed.reserve(NONCE_LEN + in_out.len());
            sealed.extend_from_slice(nonce.as_ref());
            sealed.extend_from_slice(&in_out);
            Ok(sealed)
        }

        /// The tokens in the envelope `value` read from the Redis key `key`.
        pub(crate) fn open(&self, key: &str, value: &[u8]) -> Result<StoredTokens, StoreError> {
            let left = |what: &str| {
                StoreError::permanent(format!(
                    "the encrypted tokens in Redis key {key} {what} and were left in place"
                ))
            };
            if value.len() < HEADER_LEN + NONCE_LEN + AES_256_GCM.tag_len()
                || !super::is_sealed(value)
            {
                return Err(left("are corrupt (too short)"));
            }
            let (header, rest) = value.split_at(HEADER_LEN);
            if header[MAGIC.len()..MAGIC.len() + KEY_ID_LEN] != self.key_id {
                return Err(left(
                    "were encrypted with a different key than this store's encryption key",
                ));
            }
            let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
            let nonce =
                Nonce::try_assume_unique_for_key(nonce).map_err(|_| left("are corrupt (nonce)"))?;
            let mut in_out = Zeroizing::new(ciphertext.to_vec());
            let plain = self
                .aead
                .open_in_place(nonce, Aad::from(aad(header, key)), &mut in_out[..])
                .map_err(|_| {
                    left(
                        "could not be decrypted: the value was altered, or copied from \
                         another key",
                    )
                })?;
            StoredTokens::from_json(plain)
                .map_err(|e| left(&format!("are corrupt after decryption: {e}")))
        }
    }

    /// The associated data: the envelope's header, then the Redis key's name.
    fn aad(header: &[u8], key: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + key.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(key.as_bytes());
        aad
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used, clippy::expect_used)]

        use std::time::{Duration, UNIX_EPOCH};

        use client_auth::AccessToken;

        use super::*;

        fn tokens() -> StoredTokens {
            StoredTokens {
                access_token: Some(AccessToken::new("at-SECRET-MARKER")),
                refresh_token: Some(RefreshToken::new("rt-SECRET-MARKER")),
                expires_at: UNIX_EPOCH.checked_add(Duration::from_millis(1_900_000_000_000)),
                scope: None,
                issued_at: None,
                dpop_jkt: None,
            }
        }

        fn contains(haystack: &[u8], needle: &[u8]) -> bool {
            haystack.windows(needle.len()).any(|w| w == needle)
        }

        #[test]
        fn seals_opens_and_binds_the_key_name() {
            let cipher = Cipher::new(&[7; 32]).unwrap();
            let sealed = cipher.seal("p:ns:tokens", &tokens()).unwrap();
            assert!(super::super::is_sealed(&sealed));
            assert!(!contains(&sealed, b"SECRET-MARKER"));
            assert_eq!(cipher.open("p:ns:tokens", &sealed).unwrap(), tokens());
            // Random nonces: two seals differ.
            assert_ne!(sealed, cipher.seal("p:ns:tokens", &tokens()).unwrap());
            // Moved under another key, or altered anywhere: refused, without content.
            let e = cipher.open("p:other:tokens", &sealed).unwrap_err();
            assert!(e.to_string().contains("could not be decrypted"), "{e}");
            for i in [MAGIC.len() + KEY_ID_LEN, HEADER_LEN, sealed.len() - 1] {
                let mut altered = sealed.clone();
                altered[i] ^= 1;
                let e = cipher.open("p:ns:tokens", &altered).unwrap_err();
                assert!(!e.is_transient());
                assert!(!e.to_string().contains("MARKER"), "{e}");
            }
            let e = cipher.open("p:ns:tokens", &sealed[..20]).unwrap_err();
            assert!(e.to_string().contains("too short"), "{e}");
        }

        #[test]
        fn another_key_is_named_as_such() {
            let sealed = Cipher::new(&[7; 32]).unwrap().seal("k", &tokens()).unwrap();
            let other = Cipher::new(&[8; 32]).unwrap();
            let e = other.open("k", &sealed).unwrap_err();
            assert!(!e.is_transient());
            assert!(e.to_string().contains("different key"), "{e}");
        }

        #[test]
        fn the_tag_is_keyed_and_absent_tokens_have_none() {
            let a = Cipher::new(&[1; 32]).unwrap();
            let b = Cipher::new(&[2; 32]).unwrap();
            let rt = RefreshToken::new("rt-x");
            assert_ne!(a.tag(Some(&rt)), b.tag(Some(&rt)));
            assert_ne!(a.tag(Some(&rt)), a.tag(Some(&RefreshToken::new("rt-y"))));
            assert_eq!(a.tag(None), [0; TAG_LEN]);
            assert_ne!(a.key_id(), b.key_id());
        }
    }
}
