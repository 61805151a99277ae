//! Which origins receive credentials.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use crate::error::Error;
use crate::redact::Url;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// `host:port`, compared as it stands before any parsing (the hot path).
    host_port: String,
    /// Whether `port` is the scheme's default, so that a bare `host` matches too.
    default_port: bool,
    /// The authority as a normalised URL writes it: `host` on the default port, else
    /// `host:port` (the fast paths of `allows_uri` and `allows_url`).
    written: String,
    /// `scheme://written`: the start of a normalised URL to this origin.
    prefix: String,
}

impl Origin {
    /// Whether `authority` is literally this origin's `host:port` (or `host` on the default
    /// port), ignoring ASCII case. A literal match cannot carry user info.
    fn matches_literally(&self, https: bool, authority: &str) -> bool {
        // Exact bytes first (a memcmp: hosts are usually written in lower case), then ASCII
        // case-insensitively.
        let literal = |form: &str| authority == form || authority.eq_ignore_ascii_case(form);
        self.https == https
            && (literal(&self.host_port) || (self.default_port && literal(&self.host)))
    }
}

/// The origins that receive credentials. Cheap to clone; clones share the once-only warning
/// about relative URIs.
///
/// Credentials go only to origins the user named. Building a policy that names none is an
/// error, not a silently header-less client; `http://` origins need an explicit opt-in.
///
/// ```
/// use client_auth::OriginPolicy;
///
/// let policy = OriginPolicy::builder()
///     .allow_origin("https://api.example.com")
///     .allow_origin("https://uploads.example.com:8443")
///     .build()?;
/// assert!(policy.allows("https", "api.example.com"));
/// assert!(policy.allows("https", "API.example.com:443"));
/// assert!(!policy.allows("http", "api.example.com"));
/// assert!(!policy.allows("https", "evil.example.com"));
///
/// // Naming no origin is an error.
/// assert!(OriginPolicy::builder().build().is_err());
/// // So is a plain-http origin without the opt-in.
/// assert!(OriginPolicy::builder().allow_origin("http://localhost:8080").build().is_err());
/// # Ok::<(), client_auth::Error>(())
/// ```
///
/// # Relative URIs
///
/// A request whose URI is relative (`/v1/items`, no scheme and host) has no origin, so it never
/// gets a credential; the first one each policy sees is logged at WARN. Such requests reach a
/// tower layer placed outside (before) a layer that sets the base URI, as SDKs built on tower
/// do. Place the authorization layer inside it, where URIs are absolute, or name the origin
/// they are meant for:
///
/// ```
/// use client_auth::OriginPolicy;
///
/// let policy = OriginPolicy::builder()
///     .allow_origin("https://api.example.com")
///     .resolve_relative_to("https://api.example.com")
///     .build()?;
/// let mut uri: http::Uri = "/v1/items?page=2".parse().unwrap();
/// assert!(policy.resolve_relative(&mut uri));
/// assert_eq!(uri, "https://api.example.com/v1/items?page=2");
/// # Ok::<(), client_auth::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    origins: Arc<[Origin]>,
    any_https: bool,
    relative_base: Option<(Scheme, Authority)>,
    warned_relative: Arc<AtomicBool>,
}

/// Builds an [`OriginPolicy`].
#[derive(Default)]
#[must_use]
pub struct OriginPolicyBuilder {
    origins: Vec<String>,
    any_https: bool,
    allow_http: bool,
    relative_base: Option<String>,
}

impl fmt::Debug for OriginPolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Origins are printed without userinfo or query values, as every URL is.
        let origins: Vec<Url<'_>> = self.origins.iter().map(|o| Url(o)).collect();
        f.debug_struct("OriginPolicyBuilder")
            .field("origins", &origins)
            .field("any_https", &self.any_https)
            .field("allow_http", &self.allow_http)
            .field("relative_base", &self.relative_base.as_deref().map(Url))
            .finish()
    }
}

impl OriginPolicy {
    /// A builder with no origin.
    pub fn builder() -> OriginPolicyBuilder {
        OriginPolicyBuilder::default()
    }

    /// Whether a request to `scheme://authority` gets credentials. Allocation-free.
    pub fn allows(&self, scheme: &str, authority: &str) -> bool {
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return false;
        };
        if self
            .origins
            .iter()
            .any(|o| o.matches_literally(https, authority))
        {
            return true;
        }
        let Some((host, port)) = split_authority(authority, https) else {
            return false;
        };
        if https && self.any_https {
            return true;
        }
        self.origins
            .iter()
            .any(|o| o.https == https && o.port == port && o.host.eq_ignore_ascii_case(host))
    }

    /// [`allows`](Self::allows) for a request URI. A URI naming an allowed origin as a
    /// normalised URL writes it (scheme `http`/`https`, lower-case host, no default port) is
    /// recognised by one comparison of its authority, without parsing it; any other goes through
    /// `allows`. A relative URI (no scheme) is not allowed.
    ///
    /// ```
    /// use client_auth::OriginPolicy;
    /// use http::Uri;
    ///
    /// let policy = OriginPolicy::builder().allow_origin("https://api.example.com").build()?;
    /// assert!(policy.allows_uri(&Uri::from_static("https://api.example.com/v1?page=2")));
    /// assert!(policy.allows_uri(&Uri::from_static("https://API.example.com:443/v1")));
    /// assert!(!policy.allows_uri(&Uri::from_static("http://api.example.com/v1")));
    /// assert!(!policy.allows_uri(&Uri::from_static("/v1")));
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    #[inline]
    pub fn allows_uri(&self, uri: &Uri) -> bool {
        let Some(scheme) = uri.scheme() else {
            return false;
        };
        let authority = uri.authority().map_or("", Authority::as_str);
        let https = if *scheme == Scheme::HTTPS {
            true
        } else if *scheme == Scheme::HTTP {
            false
        } else {
            return false;
        };
        if self
            .origins
            .iter()
            .any(|o| o.https == https && same_bytes(o.written.as_bytes(), authority.as_bytes()))
        {
            return true;
        }
        self.allows(scheme.as_str(), authority)
    }

    /// [`allows`](Self::allows) for a serialized absolute URL (`scheme://authority/path?query`,
    /// what `url::Url::as_str` returns). A URL starting with an allowed origin as a normalised
    /// URL writes it (`https://api.example.com` followed by `/`, `?`, `#` or the end) is
    /// recognised by one comparison of that prefix; any other has its scheme and authority cut
    /// out and goes through `allows`.
    ///
    /// ```
    /// use client_auth::OriginPolicy;
    ///
    /// let policy = OriginPolicy::builder().allow_origin("https://api.example.com").build()?;
    /// assert!(policy.allows_url("https://api.example.com/v1?page=2"));
    /// assert!(policy.allows_url("https://api.example.com:443/v1"));
    /// assert!(!policy.allows_url("https://api.example.com.evil.example/v1"));
    /// assert!(!policy.allows_url("https://user@api.example.com/v1"));
    /// assert!(!policy.allows_url("/v1"));
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    #[inline]
    pub fn allows_url(&self, url: &str) -> bool {
        let fast = self.origins.iter().any(|o| {
            url.len() >= o.prefix.len()
                && same_bytes(o.prefix.as_bytes(), &url.as_bytes()[..o.prefix.len()])
                && matches!(
                    url.as_bytes().get(o.prefix.len()),
                    None | Some(b'/' | b'?' | b'#')
                )
        });
        fast || self.allows_url_parsed(url)
    }

    /// The slow path of `allows_url`: the scheme and authority cut out of the string.
    fn allows_url_parsed(&self, url: &str) -> bool {
        let Some((scheme, rest)) = url.split_once("://") else {
            return false;
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        self.allows(scheme, &rest[..end])
    }

    /// Makes a relative `uri` (no scheme, no authority: `/v1/items?page=2`) absolute on the
    /// origin named with [`OriginPolicyBuilder::resolve_relative_to`], keeping its path and
    /// query. Returns whether it did: not without that origin, nor for a URI that has a scheme
    /// or an authority.
    pub fn resolve_relative(&self, uri: &mut Uri) -> bool {
        let Some((scheme, authority)) = &self.relative_base else {
            return false;
        };
        // Only origin-form (`/path`) is resolved; `*` (asterisk-form) is not a path.
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            return false;
        }
        let path = uri.path_and_query().cloned();
        let resolved = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path.unwrap_or_else(|| PathAndQuery::from_static("/")))
            .build();
        match resolved {
            Ok(resolved) => {
                *uri = resolved;
                true
            }
            Err(_) => false,
        }
    }

    /// Logs, once per policy (and its clones), that a request with a relative URI was seen.
    pub(crate) fn warn_relative_once(&self) {
        if !self.warned_relative.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a request with a relative URI (no scheme and host) reached the authorization \
                 adapter and is sent without a credential; place the adapter where URIs are \
                 absolute (inside the layer that sets the base URI) or name their origin with \
                 resolve_relative_to (logged once)"
            );
        }
    }

    /// Whether `a` and `b` (scheme, authority) are the same origin.
    pub fn same_origin(a: (&str, &str), b: (&str, &str)) -> bool {
        let https_a = a.0.eq_ignore_ascii_case("https");
        let https_b = b.0.eq_ignore_ascii_case("https");
        if https_a != https_b || !a.0.eq_ignore_ascii_case(b.0) {
            return false;
        }
        match (split_authority(a.1, https_a), split_authority(b.1, https_b)) {
            (Some((ha, pa)), Some((hb, pb))) => pa == pb && ha.eq_ignore_ascii_case(hb),
            _ => false,
        }
    }
}

/// `a == b`, lengths first.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a == b
}

/// `host[:port]` with the scheme's default port; `None` for userinfo or a bad port.
fn split_authority(authority: &str, https: bool) -> Option<(&str, u16)> {
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let default = if https { 443 } else { 80 };
    // IPv6 literals: `[::1]:8080`
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

impl OriginPolicyBuilder {
    /// Allows `origin` (`https://host[:port]`; a path is not allowed).
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Sends credentials to every `https` origin. An explicit opt-out of the origin check, for
    /// clients that only ever talk to one API.
    pub fn any_https_origin(mut self) -> Self {
        self.any_https = true;
        self
    }

    /// Allows `http://` origins among the named ones (default: refused, since credentials would
    /// cross the network in clear text). Meant for loopback test servers.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Resolves relative request URIs (`/v1/items`, no scheme and host) against `origin`
    /// (`https://host[:port]`, one of the allowed origins), so that they get a credential: see
    /// [`OriginPolicy::resolve_relative`]. For an adapter placed before a layer that sets the
    /// base URI; placing it after that layer needs no resolution.
    pub fn resolve_relative_to(mut self, origin: impl Into<String>) -> Self {
        self.relative_base = Some(origin.into());
        self
    }

    /// Builds the policy.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no origin is named (and `any_https_origin` was not called), when an
    /// origin does not parse, has a path, or is `http://` without [`allow_http`](Self::allow_http),
    /// and when the origin relative URIs resolve against is not an allowed one.
    pub fn build(self) -> Result<OriginPolicy, Error> {
        if self.origins.is_empty() && !self.any_https {
            return Err(Error::Config(
                "no origin is allowed to receive credentials: call allow_origin(\"https://api.example.com\") or any_https_origin()".into(),
            ));
        }
        let mut origins = Vec::with_capacity(self.origins.len());
        for raw in &self.origins {
            let uri: http::Uri = raw.parse().map_err(|_| {
                Error::Config(format!("`{}` is not a valid origin", Url(raw)).into())
            })?;
            let https = match uri.scheme_str() {
                Some(s) if s.eq_ignore_ascii_case("https") => true,
                Some(s) if s.eq_ignore_ascii_case("http") => {
                    if !self.allow_http {
                        return Err(Error::Config(
                            format!("`{}` is plain http: credentials would travel in clear text; call allow_http(true) to allow it", Url(raw)).into(),
                        ));
                    }
                    false
                }
                _ => {
                    return Err(Error::Config(
                        format!("`{}` must start with https://", Url(raw)).into(),
                    ));
                }
            };
            let has_path = uri
                .path_and_query()
                .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty());
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let (host, port) = match split_authority(authority, https) {
                Some(hp) if !has_path => hp,
                _ => {
                    return Err(Error::Config(
                        format!(
                            "`{}` is not an origin (scheme://host[:port], no user, no path)",
                            Url(raw)
                        )
                        .into(),
                    ));
                }
            };
            let host = host.to_ascii_lowercase();
            let default_port = port == if https { 443 } else { 80 };
            let written = if default_port {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            let scheme = if https { "https" } else { "http" };
            origins.push(Origin {
                https,
                host_port: format!("{host}:{port}"),
                default_port,
                prefix: format!("{scheme}://{written}"),
                written,
                host,
                port,
            });
        }
        let mut policy = OriginPolicy {
            origins: origins.into(),
            any_https: self.any_https,
            relative_base: None,
            warned_relative: Arc::new(AtomicBool::new(false)),
        };
        if let Some(raw) = &self.relative_base {
            let uri = raw.parse::<Uri>().ok();
            let base = uri.and_then(|uri| {
                let is_origin = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
                let authority = uri.authority().filter(|_| is_origin)?.clone();
                Some((uri.scheme()?.clone(), authority))
            });
            match base {
                Some((scheme, authority)) if policy.allows(scheme.as_str(), authority.as_str()) => {
                    policy.relative_base = Some((scheme, authority));
                }
                _ => {
                    return Err(Error::Config(
                        format!(
                            "`{}` (resolve_relative_to) is not one of the allowed origins",
                            Url(raw)
                        )
                        .into(),
                    ));
                }
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_origins_match_by_scheme_host_and_effective_port() {
        let p = OriginPolicy::builder()
            .allow_origin("https://api.example.com")
            .allow_origin("http://127.0.0.1:8080")
            .allow_origin("https://[::1]:9443")
            .allow_http(true)
            .build()
            .unwrap();
        assert!(p.allows("https", "api.example.com:443"));
        assert!(!p.allows("https", "api.example.com:8443"));
        assert!(!p.allows("http", "api.example.com"));
        assert!(p.allows("http", "127.0.0.1:8080"));
        assert!(!p.allows("https", "127.0.0.1:8080"));
        assert!(p.allows("https", "[::1]:9443"));
        assert!(!p.allows("https", "user@api.example.com"));
        assert!(!p.allows("ftp", "api.example.com"));
    }

    #[test]
    fn the_fast_checks_agree_with_allows() {
        let p = OriginPolicy::builder()
            .allow_origin("https://api.example.com")
            .allow_origin("http://127.0.0.1:8080")
            .allow_origin("https://[::1]:9443")
            .allow_http(true)
            .build()
            .unwrap();
        for (url, allowed) in [
            ("https://api.example.com/v1?x=1", true),
            ("https://api.example.com", true),
            ("https://api.example.com?x", true),
            ("https://api.example.com#f", true),
            ("https://API.Example.com/v1", true),
            ("https://api.example.com:443/v1", true),
            ("HTTPS://api.example.com/v1", true),
            ("https://api.example.com:8443/v1", false),
            ("https://api.example.com.evil.example/v1", false),
            ("https://api.example.comx/v1", false),
            ("https://user@api.example.com/v1", false),
            ("https://user:pw@api.example.com/v1", false),
            ("http://api.example.com/v1", false),
            ("ftp://api.example.com/v1", false),
            ("http://127.0.0.1:8080/x", true),
            ("http://127.0.0.1/x", false),
            ("https://127.0.0.1:8080/x", false),
            ("https://[::1]:9443/x", true),
            ("https://[::1]/x", false),
            ("/v1", false),
            ("", false),
        ] {
            assert_eq!(p.allows_url(url), allowed, "allows_url({url:?})");
            if let Ok(uri) = url.parse::<Uri>() {
                assert_eq!(p.allows_uri(&uri), allowed, "allows_uri({url:?})");
                if let Some(scheme) = uri.scheme_str() {
                    let authority = uri.authority().map_or("", |a| a.as_str());
                    assert_eq!(p.allows(scheme, authority), allowed, "allows({url:?})");
                }
            }
        }
        let any = OriginPolicy::builder().any_https_origin().build().unwrap();
        assert!(any.allows_url("https://whatever.example/x"));
        assert!(any.allows_uri(&Uri::from_static("https://whatever.example/x")));
        assert!(!any.allows_url("http://whatever.example/x"));
        assert!(!any.allows_uri(&Uri::from_static("http://whatever.example/x")));
    }

    #[test]
    fn any_https_origin_still_refuses_plain_http() {
        let p = OriginPolicy::builder().any_https_origin().build().unwrap();
        assert!(p.allows("https", "whatever.example"));
        assert!(!p.allows("http", "whatever.example"));
    }

    #[test]
    fn bad_origins_are_configuration_errors() {
        for bad in [
            "https://api.example.com/v1",
            "api.example.com",
            "https://u@h",
            "ftp://x",
        ] {
            let r = OriginPolicy::builder().allow_origin(bad).build();
            assert!(matches!(r, Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn relative_uris_resolve_against_the_named_origin_only() {
        let p = OriginPolicy::builder()
            .allow_origin("https://api.example.com:8443")
            .resolve_relative_to("https://api.example.com:8443")
            .build()
            .unwrap();
        let mut uri = Uri::from_static("/v1/items?page=2");
        assert!(p.resolve_relative(&mut uri));
        assert_eq!(uri, "https://api.example.com:8443/v1/items?page=2");
        let mut absolute = Uri::from_static("https://other.example/x");
        assert!(!p.resolve_relative(&mut absolute));
        assert_eq!(absolute, "https://other.example/x");

        let mut uri = Uri::from_static("/v1");
        let without = OriginPolicy::builder().any_https_origin().build().unwrap();
        assert!(!without.resolve_relative(&mut uri));
        assert_eq!(uri, "/v1");
    }

    #[test]
    fn resolving_against_an_origin_that_is_not_allowed_is_a_configuration_error() {
        for base in [
            "https://other.example.com",
            "https://api.example.com/v1",
            "/v1",
            "not a uri",
        ] {
            let r = OriginPolicy::builder()
                .allow_origin("https://api.example.com")
                .resolve_relative_to(base)
                .build();
            assert!(matches!(r, Err(Error::Config(_))), "{base}");
        }
    }

    #[test]
    fn same_origin_compares_effective_ports() {
        assert!(OriginPolicy::same_origin(
            ("https", "a.example"),
            ("https", "A.example:443")
        ));
        assert!(!OriginPolicy::same_origin(
            ("https", "a.example"),
            ("http", "a.example")
        ));
        assert!(!OriginPolicy::same_origin(
            ("https", "a.example"),
            ("https", "b.example")
        ));
    }
}
