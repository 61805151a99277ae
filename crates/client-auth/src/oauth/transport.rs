//! How token-endpoint requests travel: a small trait, with implementations on reqwest
//! (feature `reqwest`) and on any `tower_service::Service` (feature `tower`).

use std::fmt;

use bytes::Bytes;

use crate::BoxFuture;
use crate::error::Error;

/// Sends one token-endpoint request and returns the whole answer.
///
/// Implementations must not follow redirects (a 3xx is returned as it is, and the provider turns
/// it into [`Error::Redirect`]): the request carries the client secret and the refresh token.
/// They must stop reading a body longer than `max_body` bytes with
/// [`InvalidResponse::TooLarge`](crate::InvalidResponse::TooLarge). The provider applies its own
/// timeout around the call, and removes the request's secrets and URL userinfo and query
/// values from the text of any error returned.
pub trait TokenTransport: Send + Sync + fmt::Debug + 'static {
    /// Sends `request`, reading at most `max_body` bytes of the answer.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when the exchange fails, [`Error::InvalidResponse`] when the body is
    /// too large.
    fn send(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>>;
}

impl<T: TokenTransport + ?Sized> TokenTransport for std::sync::Arc<T> {
    fn send(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        (**self).send(request, max_body)
    }
}

/// Appends `chunk` to `buf`, failing once the total passes `max_body`.
#[cfg(any(feature = "reqwest", feature = "tower"))]
fn append_capped(buf: &mut Vec<u8>, chunk: &[u8], max_body: usize) -> Result<(), Error> {
    if buf.len() + chunk.len() > max_body {
        return Err(Error::InvalidResponse(
            crate::error::InvalidResponse::TooLarge,
        ));
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

#[cfg(feature = "reqwest")]
pub use reqwest_transport::ReqwestTransport;

#[cfg(feature = "reqwest")]
mod reqwest_transport {
    use super::*;
    use crate::error::{TransportError, TransportErrorKind};

    /// The token-endpoint transport on reqwest (feature `reqwest`).
    ///
    /// Its client never follows redirects: a token endpoint that answers 3xx gets no second
    /// request, so the refresh token and client secret are never re-sent to the redirect
    /// target; the provider turns the 3xx into [`Error::Redirect`]. That is why there is no
    /// constructor taking a ready `reqwest::Client` (whose redirect policy cannot be checked):
    /// hand in a `reqwest::ClientBuilder` instead, and the transport sets the policy.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use client_auth::{OAuthProvider, ReqwestTransport};
    ///
    /// // Proxies, TLS roots and timeouts stay yours; redirects are switched off whatever the
    /// // builder says.
    /// let builder = reqwest::Client::builder()
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .redirect(reqwest::redirect::Policy::limited(10));
    /// let transport = ReqwestTransport::from_client_builder(builder)?;
    ///
    /// let provider = OAuthProvider::client_credentials("https://auth.example.com/oauth/token")
    ///     .client_id("my-service")
    ///     .client_secret("my-secret")
    ///     .transport(Arc::new(transport))
    ///     .build()?;
    /// # let _ = provider;
    /// # Ok::<(), client_auth::Error>(())
    /// ```
    #[derive(Debug, Clone)]
    pub struct ReqwestTransport {
        client: reqwest::Client,
    }

    impl ReqwestTransport {
        /// A transport with its own client: no redirects, 10 s timeout.
        ///
        /// # Errors
        ///
        /// [`Error::Config`] when the TLS backend cannot be initialised.
        pub fn new() -> Result<Self, Error> {
            Self::from_client_builder(
                reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)),
            )
        }

        /// A transport on a client built from `builder`, with redirects switched off
        /// (`redirect::Policy::none()`, replacing any policy the builder has) and reqwest's
        /// verbose connection logging off (it would log the request body, which holds the
        /// secrets). Everything else (proxies, TLS roots, timeouts, headers) is the builder's.
        ///
        /// A retry policy set on the builder (`ClientBuilder::retry`) applies to token requests
        /// too: keep it to what reqwest retries by default. The provider backs off and retries
        /// refreshes itself, and a replayed refresh token can end the session on a server that
        /// detects refresh-token reuse.
        ///
        /// # Errors
        ///
        /// [`Error::Config`] when reqwest cannot build the client (its TLS backend cannot be
        /// initialised, a setting is invalid).
        pub fn from_client_builder(builder: reqwest::ClientBuilder) -> Result<Self, Error> {
            let client = builder
                .redirect(reqwest::redirect::Policy::none())
                .connection_verbose(false)
                .build()
                .map_err(|_| Error::Config("could not build the reqwest client".into()))?;
            Ok(Self { client })
        }
    }

    /// Whether `error` or one of its causes says `text`.
    fn cause_says(error: &(dyn std::error::Error + 'static), text: &str) -> bool {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.to_string().contains(text) {
                return true;
            }
            cause = e.source();
        }
        false
    }

    fn transport_error(e: reqwest::Error) -> Error {
        let kind = if e.is_timeout() {
            TransportErrorKind::Timeout
        } else if e.is_connect() {
            TransportErrorKind::Connect
        } else {
            TransportErrorKind::Other
        };
        Error::Transport(TransportError::new(kind, e.without_url()))
    }

    impl TokenTransport for ReqwestTransport {
        fn send(
            &self,
            request: http::Request<Bytes>,
            max_body: usize,
        ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
            let client = self.client.clone();
            Box::pin(async move {
                let https = request.uri().scheme_str() == Some("https");
                let request = reqwest::Request::try_from(request).map_err(transport_error)?;
                let mut response = client.execute(request).await.map_err(|e| {
                    // A reqwest built without a TLS backend refuses https before connecting:
                    // that is this build's configuration, not a network failure to retry.
                    if https && cause_says(&e, "scheme is not http") {
                        return Error::Config(
                            "https needs a TLS backend in reqwest: enable client-auth's `rustls` \
                             or `native-tls` feature, or reqwest's own"
                                .into(),
                        );
                    }
                    transport_error(e)
                })?;
                if response
                    .content_length()
                    .is_some_and(|len| len > max_body as u64)
                {
                    return Err(Error::InvalidResponse(
                        crate::error::InvalidResponse::TooLarge,
                    ));
                }
                let mut builder = http::Response::builder().status(response.status());
                if let Some(headers) = builder.headers_mut() {
                    *headers = std::mem::take(response.headers_mut());
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
                    append_capped(&mut body, &chunk, max_body)?;
                }
                builder.body(Bytes::from(body)).map_err(|e| {
                    Error::Transport(TransportError::new(TransportErrorKind::Other, e))
                })
            })
        }
    }
}

#[cfg(feature = "tower")]
pub use tower_transport::TowerTransport;

#[cfg(feature = "tower")]
mod tower_transport {
    use std::marker::PhantomData;

    use super::*;
    use crate::error::{TransportError, TransportErrorKind};

    /// The token-endpoint transport on any `tower_service::Service` (feature `tower`), such as
    /// a hyper-util client.
    ///
    /// **The service must not follow redirects**: this transport cannot see what happens
    /// inside it. hyper-util's client never does; do not wrap it in tower-http's
    /// `FollowRedirect` (which sends a 301, 302 or 303 on to the `Location` as a `GET`, with the
    /// client-secret `Authorization` header on a same-origin hop, and a 307 or 308 with the form
    /// when its policy clones bodies) or in any other redirect follower. A 3xx that reaches the transport is returned as it is, and the provider turns
    /// it into [`Error::Redirect`] without a second request.
    ///
    /// `ReqB` is the request body type the service takes; it is built from the form bytes
    /// (`http_body_util::Full<Bytes>` works). The service's errors are kept as the source of
    /// [`Error::Transport`], unless their text holds a secret of the request or a URL with
    /// userinfo or a query: then a redacted copy of their messages replaces them.
    pub struct TowerTransport<S, ReqB> {
        service: S,
        _body: PhantomData<fn() -> ReqB>,
    }

    impl<S: Clone, ReqB> Clone for TowerTransport<S, ReqB> {
        fn clone(&self) -> Self {
            Self {
                service: self.service.clone(),
                _body: PhantomData,
            }
        }
    }

    impl<S, ReqB> fmt::Debug for TowerTransport<S, ReqB> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TowerTransport").finish_non_exhaustive()
        }
    }

    impl<S, ReqB> TowerTransport<S, ReqB> {
        /// A transport on `service`, which must not follow redirects.
        pub fn new(service: S) -> Self {
            Self {
                service,
                _body: PhantomData,
            }
        }
    }

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// Connect or timeout when an I/O error in the chain says so (hyper-util wraps the
    /// connector's `io::Error`); anything else is `Other`.
    fn kind_of(error: &(dyn std::error::Error + 'static)) -> TransportErrorKind {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable => return TransportErrorKind::Connect,
                    K::TimedOut => return TransportErrorKind::Timeout,
                    _ => {}
                }
            }
            next = e.source();
        }
        TransportErrorKind::Other
    }

    impl<S, ReqB, ResB> TokenTransport for TowerTransport<S, ReqB>
    where
        S: tower_service::Service<http::Request<ReqB>, Response = http::Response<ResB>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqB: From<Bytes> + Send + 'static,
        ResB: http_body::Body + Send + 'static,
        ResB::Data: Send,
        ResB::Error: Into<BoxError>,
    {
        fn send(
            &self,
            request: http::Request<Bytes>,
            max_body: usize,
        ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
            let mut service = self.service.clone();
            Box::pin(async move {
                let other = |e: BoxError| Error::Transport(TransportError::new(kind_of(&*e), e));
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(|e| other(e.into()))?;
                let response = service
                    .call(request.map(ReqB::from))
                    .await
                    .map_err(|e| other(e.into()))?;
                let (parts, body) = response.into_parts();
                let mut body = std::pin::pin!(body);
                let mut buf = Vec::new();
                while let Some(frame) =
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                {
                    let frame = frame.map_err(|e| other(e.into()))?;
                    if let Ok(mut data) = frame.into_data() {
                        use bytes::Buf as _;
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            append_capped(&mut buf, chunk, max_body)?;
                            data.advance(n);
                        }
                    }
                }
                Ok(http::Response::from_parts(parts, Bytes::from(buf)))
            })
        }
    }
}
