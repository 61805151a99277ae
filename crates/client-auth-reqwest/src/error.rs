//! How a provider's error travels through reqwest-middleware, and how to get it back.

use std::error::Error as StdError;

/// The middleware's error for a provider's `error`: [`reqwest_middleware::Error::Middleware`]
/// holding it under a context, so that it is found both ways:
/// `anyhow::Error::downcast_ref::<client_auth::Error>()` on the inner error, and `source()`
/// walking from any wrapper (reqwest-middleware's `Error::Middleware` is transparent: it
/// forwards `source()` to the inner error's own source, which the context makes ours).
pub(crate) fn middleware_error(error: client_auth::Error) -> reqwest_middleware::Error {
    let context = format!("authorization failed: {error}");
    reqwest_middleware::Error::Middleware(anyhow::Error::new(error).context(context))
}

/// The [`client_auth::Error`] inside an error from a reqwest-middleware client, if there is one:
/// the provider failed to give a credential (the request was not sent), or the session ended
/// while a 401 was being recovered.
///
/// It walks `source()` and looks inside reqwest-middleware's `Error::Middleware` and, through
/// it, reqwest-retry's `RetryError` or any other wrapper an SDK adds (an error enum holding a
/// `reqwest_middleware::Error` as its source).
///
/// ```no_run
/// use client_auth_reqwest::auth_error;
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) {
/// match client.get("https://api.example.com/v1/me").send().await {
///     Ok(response) => println!("{}", response.status()),
///     Err(error) => match auth_error(&error) {
///         Some(auth) if auth.is_session_ended() => println!("sign in again"),
///         Some(auth) if auth.is_transient() => println!("try again later: {auth}"),
///         Some(auth) => println!("fix the configuration: {auth}"),
///         None => println!("not an authorization problem: {error}"),
///     },
/// }
/// # }
/// ```
pub fn auth_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a client_auth::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<client_auth::Error>() {
            return Some(found);
        }
        if let Some(reqwest_middleware::Error::Middleware(inner)) = error.downcast_ref() {
            let inner: &(dyn StdError + Send + Sync + 'static) = inner.as_ref();
            if let Some(found) = auth_error(inner) {
                return Some(found);
            }
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_found_by_source_walking_and_by_downcasting() {
        let error = middleware_error(client_auth::Error::NoCredentials);
        assert!(matches!(
            auth_error(&error),
            Some(client_auth::Error::NoCredentials)
        ));
        let reqwest_middleware::Error::Middleware(inner) = &error else {
            panic!("a middleware error")
        };
        assert!(inner.downcast_ref::<client_auth::Error>().is_some());
        // Plain walking, as any error reporter does.
        let mut walked = None;
        let mut next: Option<&(dyn StdError + 'static)> = Some(&error);
        while let Some(e) = next {
            walked = walked.or(e.downcast_ref::<client_auth::Error>());
            next = e.source();
        }
        assert!(walked.is_some());
        assert!(error.to_string().contains("no credentials available"));
    }

    #[test]
    fn other_errors_hold_none() {
        let error = reqwest_middleware::Error::Middleware(anyhow::anyhow!("something else"));
        assert!(auth_error(&error).is_none());
        assert!(auth_error(&std::io::Error::other("io")).is_none());
    }
}
