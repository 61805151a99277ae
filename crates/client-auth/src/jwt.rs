//! HS256 signer (placeholder).
