//! Authorization server metadata: OpenID Connect discovery, with RFC 8414 as the fallback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{Method, StatusCode, Uri};
use serde::Deserialize;

use super::transport::TokenTransport;
use super::{OAuthProviderBuilder, check_endpoint};
use crate::error::Error;
use crate::redact;

/// The largest metadata document read.
const MAX_METADATA: usize = 1024 * 1024;
/// How long one metadata request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What an authorization server says about itself (OpenID Connect Discovery 1.0, RFC 8414):
/// the endpoints a provider needs, how clients may authenticate, and the DPoP algorithms it
/// takes. Get it with [`OAuthProvider::discover`](crate::OAuthProvider::discover) or
/// [`ServerMetadata::discover_with`], then start a provider from it.
///
/// ```no_run
/// # #[cfg(feature = "reqwest")]
/// # async fn demo() -> Result<(), client_auth::Error> {
/// use client_auth::OAuthProvider;
///
/// let metadata = OAuthProvider::discover("https://auth.example.com").await?;
/// let provider = metadata
///     .client_credentials()
///     .client_id("my-service")
///     .client_secret("s3cret")
///     .build()?;
/// # let _ = provider;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    auth_methods: Vec<String>,
    dpop_algs: Vec<String>,
    allow_http: bool,
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    dpop_signing_alg_values_supported: Option<Vec<String>>,
}

impl ServerMetadata {
    /// Reads the metadata of `issuer` through `transport`: first
    /// `{issuer}/.well-known/openid-configuration`, then, when that is not found,
    /// `/.well-known/oauth-authorization-server{issuer path}` (RFC 8414 §3.1).
    ///
    /// The same rules as for token requests hold: `https://` unless the host is loopback or
    /// `allow_http` is set, no redirect is followed (a 3xx is [`Error::Redirect`]), at most
    /// 1 MiB is read, and each request has 10 s.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] saying what is wrong: an unusable issuer URL, no metadata at either
    /// place, a document that is not JSON, an `issuer` that differs from the one asked for (the
    /// mix-up defence of RFC 8414 §3.3), or a missing or unusable `token_endpoint`; a transport
    /// error or timeout as [`Error::Transport`].
    pub async fn discover_with(
        issuer: &str,
        transport: Arc<dyn TokenTransport>,
        allow_http: bool,
    ) -> Result<Self, Error> {
        let base = check_endpoint(issuer, "issuer", allow_http)?;
        if base.query().is_some() || issuer.contains('#') {
            return Err(Error::Config(
                "the issuer URL must have no query or fragment".into(),
            ));
        }
        let trimmed = issuer.trim_end_matches('/');
        let path = base.path().trim_end_matches('/');
        let authority = base.authority().map_or("", |a| a.as_str());
        let scheme = base.scheme_str().unwrap_or("https");
        let places = [
            format!("{trimmed}/.well-known/openid-configuration"),
            format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}"),
        ];
        let mut last = StatusCode::NOT_FOUND;
        for place in &places {
            let (status, body) = get(&*transport, place).await?;
            if status.is_redirection() {
                return Err(Error::Redirect { status });
            }
            if status.is_success() {
                return Self::parse(&body, issuer, allow_http);
            }
            last = status;
        }
        Err(Error::Config(
            format!(
                "no authorization server metadata for issuer {}: the last answer was {last}",
                redact::Url(issuer)
            )
            .into(),
        ))
    }

    fn parse(body: &Bytes, issuer: &str, allow_http: bool) -> Result<Self, Error> {
        let doc: Document = serde_json::from_slice(body).map_err(|_| {
            Error::Config("the authorization server metadata is not a JSON object".into())
        })?;
        match doc.issuer.as_deref() {
            Some(found) if found == issuer => {}
            Some(_) => {
                return Err(Error::Config(
                    "the metadata names another issuer than the one asked for (a mix-up \
                     defence: the issuer must match exactly)"
                        .into(),
                ));
            }
            None => return Err(Error::Config("the metadata has no `issuer`".into())),
        }
        let token_endpoint = doc
            .token_endpoint
            .ok_or(Error::Config("the metadata has no `token_endpoint`".into()))?;
        // Plain http for an endpoint only where the issuer itself is plain http (a loopback
        // test server) or the caller opted in: an https issuer never sends the client's
        // secrets to a plain-http endpoint, loopback included.
        let https_issuer = issuer.starts_with("https://");
        let endpoint = |url: &str, what: &'static str| -> Result<(), Error> {
            let uri = check_endpoint(url, what, allow_http)?;
            if https_issuer && !allow_http && uri.scheme_str() != Some("https") {
                return Err(Error::Config(
                    format!("the {what} is plain http while the issuer is https").into(),
                ));
            }
            Ok(())
        };
        endpoint(&token_endpoint, "metadata's token_endpoint")?;
        if let Some(revocation) = &doc.revocation_endpoint {
            endpoint(revocation, "metadata's revocation_endpoint")?;
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            token_endpoint,
            revocation_endpoint: doc.revocation_endpoint,
            // RFC 8414 §2: absent means `client_secret_basic`.
            auth_methods: doc
                .token_endpoint_auth_methods_supported
                .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
            dpop_algs: doc.dpop_signing_alg_values_supported.unwrap_or_default(),
            allow_http,
        })
    }

    /// The issuer, exactly as configured and confirmed by the server.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The revocation endpoint (RFC 7009), if the server has one.
    pub fn revocation_endpoint(&self) -> Option<&str> {
        self.revocation_endpoint.as_deref()
    }

    /// The client authentication methods the token endpoint takes
    /// (`token_endpoint_auth_methods_supported`; `client_secret_basic` when the server says
    /// nothing).
    pub fn token_endpoint_auth_methods(&self) -> &[String] {
        &self.auth_methods
    }

    /// The DPoP proof algorithms the server takes (`dpop_signing_alg_values_supported`); empty
    /// when the server says nothing.
    pub fn dpop_signing_algs(&self) -> &[String] {
        &self.dpop_algs
    }

    /// A `client_credentials` provider builder for this server.
    pub fn client_credentials(&self) -> OAuthProviderBuilder {
        self.configure(crate::OAuthProvider::client_credentials(
            self.token_endpoint.clone(),
        ))
    }

    /// A `refresh_token` provider builder for this server.
    pub fn refresh_token_grant(&self) -> OAuthProviderBuilder {
        self.configure(crate::OAuthProvider::refresh_token_grant(
            self.token_endpoint.clone(),
        ))
    }

    /// The token and revocation endpoints, the issuer (the default audience of client
    /// assertions), the DPoP algorithms, and `client_secret_post` when the server does not take
    /// `client_secret_basic` but takes it.
    fn configure(&self, mut builder: OAuthProviderBuilder) -> OAuthProviderBuilder {
        if let Some(revocation) = &self.revocation_endpoint {
            builder = builder.revocation_url(revocation.clone());
        }
        let takes = |m: &str| self.auth_methods.iter().any(|a| a == m);
        if !takes("client_secret_basic") && takes("client_secret_post") {
            builder = builder.client_auth(super::ClientAuth::SecretPost);
        }
        builder.discovered(self.issuer.clone(), self.dpop_algs.clone(), self.allow_http)
    }
}

async fn get(transport: &dyn TokenTransport, url: &str) -> Result<(StatusCode, Bytes), Error> {
    let uri: Uri = url
        .parse()
        .map_err(|_| Error::Config("the metadata URL is not a valid URL".into()))?;
    let request = http::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|_| Error::Config("could not build the metadata request".into()))?;
    let response = tokio::time::timeout(TIMEOUT, transport.send(request, MAX_METADATA))
        .await
        .map_err(|_| Error::Transport(crate::error::TransportError::timeout()))??;
    let (parts, body) = response.into_parts();
    Ok((parts.status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ServerMetadata, Error> {
        ServerMetadata::parse(&Bytes::from(body.to_owned()), "https://as.example", false)
    }

    #[test]
    fn metadata_with_another_issuer_is_refused() {
        let err =
            parse(r#"{"issuer":"https://evil.example","token_endpoint":"https://as.example/t"}"#)
                .unwrap_err();
        assert!(
            matches!(err, Error::Config(ref m) if m.contains("another issuer")),
            "{err}"
        );
        // Not even a trailing slash differs.
        assert!(
            parse(r#"{"issuer":"https://as.example/","token_endpoint":"https://as.example/t"}"#)
                .is_err()
        );
    }

    #[test]
    fn bad_metadata_says_what_is_wrong() {
        let cases = [
            ("not json", "not a JSON object"),
            (
                r#"{"token_endpoint":"https://as.example/t"}"#,
                "no `issuer`",
            ),
            (r#"{"issuer":"https://as.example"}"#, "no `token_endpoint`"),
            (
                r#"{"issuer":"https://as.example","token_endpoint":"http://as.example/t"}"#,
                "plain http",
            ),
            (
                r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/t","revocation_endpoint":"ftp://x"}"#,
                "revocation_endpoint",
            ),
        ];
        for (body, says) in cases {
            let err = parse(body).unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains(says)),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn absent_auth_methods_mean_client_secret_basic() {
        let m = parse(r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/t","dpop_signing_alg_values_supported":["ES256"]}"#).unwrap();
        assert_eq!(m.token_endpoint_auth_methods(), ["client_secret_basic"]);
        assert_eq!(m.dpop_signing_algs(), ["ES256"]);
        assert_eq!(m.revocation_endpoint(), None);
    }
}
