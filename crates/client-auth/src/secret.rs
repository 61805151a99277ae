//! Secret newtypes: redacted `Debug`, no `Display`, no `Serialize`, zeroized on drop.

use std::fmt;

use zeroize::Zeroize;

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        ///
        /// The value is reachable only through [`expose_secret`](Self::expose_secret); `Debug`
        /// prints the type name and `[REDACTED]`, and the memory is zeroized on drop.
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret itself. Keep it out of logs and error messages.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

secret_type!(
    /// An OAuth 2.0 access token.
    AccessToken
);
secret_type!(
    /// An OAuth 2.0 refresh token.
    RefreshToken
);
secret_type!(
    /// An OAuth 2.0 client secret.
    ClientSecret
);
secret_type!(
    /// An API key, sent as `Token KEY` or `Bearer KEY`.
    ApiKey
);
secret_type!(
    /// A customer token (usually a JWT) handed out by a callback.
    CustomerJwt
);
secret_type!(
    /// Any other secret string (a password, a signing key given as text).
    SecretString
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_every_secret_type_hides_the_value() {
        let marker = "MARKER-SECRET-1234";
        let printed = [
            format!("{:?}", AccessToken::new(marker)),
            format!("{:?}", RefreshToken::new(marker)),
            format!("{:?}", ClientSecret::new(marker)),
            format!("{:?}", ApiKey::new(marker)),
            format!("{:?}", CustomerJwt::new(marker)),
            format!("{:?}", SecretString::new(marker)),
        ];
        for p in printed {
            assert!(!p.contains(marker), "{p}");
            assert!(p.contains("REDACTED"), "{p}");
        }
        assert_eq!(AccessToken::new(marker).expose_secret(), marker);
    }
}
