//! Integration tests of `client-auth` inside real SDKs and middleware stacks, run by
//! `cargo test --workspace`; not published.
//!
//! - `tests/octocrab.rs`: octocrab with `AuthorizeLayer` against the testkit's loopback server:
//!   a revoked token refreshed and the request retried, a `POST` body that survives the retry
//!   (`OctoBody::try_clone`) or is not resent drained (the default hook), relative URIs outside
//!   octocrab's base-URI layer.
//! - `tests/reqwest_stack.rs`: `AuthorizationMiddleware` with reqwest-retry and reqwest-tracing,
//!   in both orders.
//!
//! The workspace README's examples are compiled and run as this crate's doctests: it sees every
//! crate a recipe uses.

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
