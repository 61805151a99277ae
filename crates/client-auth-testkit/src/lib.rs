//! An in-process OAuth 2.0 authorization server and protected API on loopback, for testing
//! `client-auth` and code that uses it.
//!
//! [`TestServer`] listens on `127.0.0.1` with a free port, serves HTTP/1.1 with hyper on
//! the current tokio runtime, and gives tests control over everything a client has to cope
//! with: token lifetimes and the server's own clock ([`TestServer::advance`], so tests never
//! sleep to wait for expiry), refresh-token rotation and reuse detection (RFC 9700 §4.14.2),
//! revocation, canned faults at the token endpoint ([`Fault`]: status codes, slow or
//! trickled bodies, requests that never get an answer), and counters ([`Stats`]) to assert
//! how many refreshes happened and how many were in flight at once.
//!
//! Opt-in through [`ServerConfig`], the server also plays the parts of servers that go beyond
//! the two classic grants: tokens per resource or audience checked by the protected API
//! ([`ServerConfig::resource_routes`]), a non-standard answer shape
//! ([`ServerConfig::answer_shape`]), a claims challenge ([`ServerConfig::claims_challenge`]),
//! the JWT bearer grant, token exchange and client authentication by assertion
//! ([`ServerConfig::accept_assertion`], [`ServerConfig::accept_subject_token`],
//! [`ServerConfig::accept_client_assertion`]). [`TestServer::token_requests`] shows what each
//! token request carried.
//!
//! ```
//! use client_auth_testkit::{Fault, ServerConfig, TestServer};
//! use http::StatusCode;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = TestServer::start_with(
//!     ServerConfig::default().access_token_lifetime(Duration::from_secs(300)),
//! )
//! .await?;
//!
//! // A user's grant, as if they had logged in.
//! let tokens = server.issue_grant("alice", Some("read write"));
//! assert!(tokens.access_token.starts_with("at_"));
//! assert_eq!(tokens.expires_in, 300);
//!
//! // The next token request fails once, then normal handling resumes.
//! server.push_fault(Fault::oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"));
//!
//! // Expire the access token on the server's clock only.
//! server.advance(Duration::from_secs(301));
//!
//! println!("token endpoint: {}", server.token_url());
//! assert_eq!(server.stats().token_calls, 0);
//! # Ok(())
//! # }
//! ```
//!
//! The crate has no cargo features. A tokio runtime is required: the server task is spawned
//! with `tokio::spawn`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod fault;
mod handler;
mod jwt;
mod server;
mod state;

pub use config::{AnswerShape, ResourceBinding, ServerConfig};
pub use fault::Fault;
pub use server::TestServer;
pub use state::{IssuedTokens, SeenRequest, SeenTokenRequest, Stats};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
