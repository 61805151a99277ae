//! How a request body is copied for the one retry after a 401.

use http_body::Body;

/// Copies a request body so that the request can be sent once more after a 401, like tower's
/// `Policy::clone_request`.
///
/// [`Authorize`](crate::Authorize) asks for the copy **before** the first send, and only when
/// the provider can recover from a 401 ([`AuthorizationProvider::can_recover`]). Answering
/// `None` never fails the request: it is sent once and its 401, if any, is returned unchanged.
///
/// Implementations shipped here:
///
/// | hook | bodies | copy |
/// |---|---|---|
/// | [`CloneBody`] (default) | `B: Clone` (`Full<Bytes>`, `String`, `Empty<Bytes>`) | `body.clone()` |
/// | [`CloneEmptyBody`] | `B: Body + Default` (`BoxBody`, `UnsyncBoxBody`) | `B::default()` when `size_hint` is exactly 0, else none |
/// | [`NeverClone`] | any | none |
/// | a body type's own `try_clone` (`.clone_body_with(MyBody::try_clone)`) | that type | its deep copy, or none |
/// | a closure or function `Fn(&B) -> Option<B> + Clone` | any | what it returns |
///
/// # The copy must be deep
///
/// The copy is sent after the original was, so it must not share the original's bytes. A
/// `Clone` that shares them (octocrab's `OctoBody` keeps its body in an `Arc<RwLock<..>>`) hands
/// the retry a body the first send already drained. The layer records the copy's exact
/// [`size_hint`](Body::size_hint) when it is taken and checks it before the retry: when it
/// changed, the 401 is returned unchanged with a `tracing` WARN, never a retry with a lost
/// body. For such types use their deep-copy method as the hook: any inherent
/// `fn try_clone(&self) -> Option<Self>` is one, as is (`.clone_body_with(MyBody::try_clone)`).
/// octocrab's `OctoBody::try_clone` has no copy for a request without a body; combine it with
/// [`CloneEmptyBody`] so that those are retried too:
///
/// ```text
/// .clone_body_with(|body: &OctoBody| body.try_clone().or_else(|| CloneEmptyBody.clone_body(body)))
/// ```
///
/// A copy whose size was unknown when it was taken cannot be checked this way.
///
/// # When `Authorize` is not a `Service`
///
/// `Authorize<S, P, C>` is a `Service<Request<B>>` only when the hook `C` can copy a `B` and
/// `S` is `Clone`. With a body that is not `Clone` (`BoxBody`, a streaming body) and the
/// default hook, rustc points at this trait:
///
/// ```compile_fail,E0277
/// use bytes::Bytes;
/// use client_auth::StaticToken;
/// use client_auth_tower::AuthorizeLayer;
/// use http_body_util::combinators::BoxBody;
/// use tower::{BoxError, Layer, Service};
///
/// type Body = BoxBody<Bytes, BoxError>;
/// fn is_service<S: Service<http::Request<Body>>>(_: &S) {}
///
/// let http_client = tower::service_fn(|_: http::Request<Body>| async {
///     Ok::<_, BoxError>(http::Response::new(()))
/// });
/// let layer = AuthorizeLayer::builder(StaticToken::api_key("key")?)
///     .allow_origin("https://api.example.com")
///     .build()?;
/// // error[E0277]: `CloneBody` cannot copy a request body of type
/// // `BoxBody<Bytes, Box<dyn Error + Send + Sync>>` for the retry after a 401
/// is_service(&layer.layer(http_client));
/// # Ok::<(), client_auth::Error>(())
/// ```
///
/// Pick a hook that fits the body: `.clone_body_with(CloneEmptyBody)` (retries bodiless
/// requests), `.clone_body_with(NeverClone)` (no retry), or a closure with a typed parameter,
/// `.clone_body_with(|body: &MyBody| body.try_clone())`. A method call such as
/// `client.ready()` reports the same cause as E0599, "the method `ready` exists for struct
/// `Authorize<..>`, but its trait bounds were not satisfied", and names neither: check the
/// hook, then the inner service. An inner service that is not `Clone` (a `BoxService`, a
/// client without `Clone`) goes inside `tower::buffer::Buffer`, whose handle is `Clone`:
/// `ServiceBuilder::new().layer(authorize).buffer(1024).service(client)`.
///
/// ```
/// use bytes::Bytes;
/// use client_auth::StaticToken;
/// use client_auth_tower::AuthorizeLayer;
/// use http_body_util::Full;
///
/// // Only copy bodies up to 64 KiB; larger uploads are sent once.
/// let layer = AuthorizeLayer::builder(StaticToken::api_key("key")?)
///     .allow_origin("https://api.example.com")
///     .clone_body_with(|body: &Full<Bytes>| {
///         use http_body::Body as _;
///         (body.size_hint().upper().unwrap_or(u64::MAX) <= 64 * 1024).then(|| body.clone())
///     })
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), client_auth::Error>(())
/// ```
///
/// [`AuthorizationProvider::can_recover`]: client_auth::AuthorizationProvider::can_recover
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot copy a request body of type `{B}` for the retry after a 401",
    note = "pick a body clone hook with `.clone_body_with(..)`: `CloneEmptyBody` (boxed bodies), `NeverClone` (no retry), or a closure `|body: &{B}| ..` returning `Option<{B}>`"
)]
pub trait CloneRequestBody<B>: Clone {
    /// A copy of `body` for the retry, or `None` when there is none to be had.
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// Copies request bodies with `Clone` (the default hook). The body's `Clone` must copy the
/// bytes, not share them: see [the copy must be deep](CloneRequestBody#the-copy-must-be-deep).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

impl<B: Clone> CloneRequestBody<B> for CloneBody {
    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

/// Never copies a request body: a request is sent once and its 401 returned unchanged. Works
/// with any body type (a proxied `hyper::body::Incoming`, a stream).
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverClone;

impl<B> CloneRequestBody<B> for NeverClone {
    fn clone_body(&self, _body: &B) -> Option<B> {
        None
    }
}

/// Rebuilds a body known to be empty (its [`Body::size_hint`] is exactly 0) with `Default`,
/// and copies no other body, as tower-http's `FollowRedirect` does.
///
/// Meant for body types that are not `Clone` but are `Default`, such as
/// `http_body_util::combinators::BoxBody` and `UnsyncBoxBody`: a `GET` with an empty boxed
/// body can then be retried after a 401, an upload cannot.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneEmptyBody;

impl<B: Body + Default> CloneRequestBody<B> for CloneEmptyBody {
    fn clone_body(&self, body: &B) -> Option<B> {
        (body.size_hint().exact() == Some(0)).then(B::default)
    }
}

/// Any `Fn(&B) -> Option<B> + Clone` (a closure, a `fn` item or pointer) is a hook.
impl<B, F> CloneRequestBody<B> for F
where
    F: Fn(&B) -> Option<B> + Clone,
{
    fn clone_body(&self, body: &B) -> Option<B> {
        self(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sized0;

    impl Body for Sized0 {
        type Data = std::io::Cursor<Vec<u8>>;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(0)
        }
    }

    #[derive(Default)]
    struct Unknown;

    impl Body for Unknown {
        type Data = std::io::Cursor<Vec<u8>>;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
    }

    #[test]
    fn clone_empty_body_rebuilds_only_bodies_known_to_be_empty() {
        assert!(CloneEmptyBody.clone_body(&Sized0).is_some());
        assert!(CloneEmptyBody.clone_body(&Unknown).is_none());
    }

    #[test]
    fn clone_body_clones_and_never_clone_does_not() {
        assert_eq!(
            CloneBody.clone_body(&String::from("x")),
            Some("x".to_owned())
        );
        assert_eq!(NeverClone.clone_body(&String::from("x")), None);
    }

    #[test]
    fn functions_and_closures_are_hooks() {
        use bytes::Bytes;
        fn copy(b: &Bytes) -> Option<Bytes> {
            Some(b.clone())
        }
        let a = Bytes::from_static(b"a");
        assert_eq!(copy.clone_body(&a), Some(a.clone()));
        let pointer: fn(&Bytes) -> Option<Bytes> = copy;
        assert_eq!(pointer.clone_body(&a), Some(a.clone()));
        let closure = |b: &Bytes| (b.len() < 2).then(|| b.clone());
        assert_eq!(closure.clone_body(&a), Some(a.clone()));
        assert_eq!(closure.clone_body(&Bytes::from_static(b"long")), None);
    }
}
