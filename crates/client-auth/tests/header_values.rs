//! `Authorization` values built from what users and servers hand in: the scheme prefix is
//! normalised (any case, spaces or tabs), and an empty or whitespace-only credential is a typed
//! error, never a header without credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use client_auth::{
    AuthorizationProvider, CustomerToken, Error, InvalidResponse, OAuthProvider, RequestView,
    StaticToken, Tokens,
};
use client_auth_testkit::{Fault, TestServer};
use http::{Extensions, HeaderValue, Method, StatusCode};

async fn header(provider: &impl AuthorizationProvider) -> Result<HeaderValue, Error> {
    let ext = Extensions::new();
    let view = RequestView::new(&Method::GET, "https", "api.example.com", "/", None, &ext);
    let credential = provider.authorize(&view).await?;
    assert!(credential.header_value().is_sensitive());
    Ok(credential.header_value().clone())
}

#[tokio::test]
async fn a_bearer_scheme_in_the_token_is_not_repeated_in_any_case_or_whitespace() {
    for given in [
        "abc",
        " Bearer abc",
        "Bearer\tabc",
        "bearer  abc",
        "BEARER \t abc\t",
        "\tabc ",
    ] {
        let provider = StaticToken::bearer(given).unwrap();
        assert_eq!(header(&provider).await.unwrap(), "Bearer abc", "{given:?}");
    }
}

#[tokio::test]
async fn api_keys_and_other_schemes_are_not_repeated_either() {
    for given in ["KEY", "Token KEY", "token\tKEY", " TOKEN KEY "] {
        let provider = StaticToken::api_key(given).unwrap();
        assert_eq!(header(&provider).await.unwrap(), "Token KEY", "{given:?}");
    }
    let provider = StaticToken::with_scheme("DPoP", "dpop\tproof").unwrap();
    assert_eq!(header(&provider).await.unwrap(), "DPoP proof");
    // Only the provider's own scheme is removed.
    let provider = StaticToken::bearer("Token abc").unwrap();
    assert_eq!(header(&provider).await.unwrap(), "Bearer Token abc");
}

#[test]
fn empty_and_whitespace_only_credentials_are_a_typed_error() {
    let empty = |r: Result<StaticToken, Error>| matches!(r, Err(Error::EmptyCredential));
    for blank in ["", " ", "\t", " \t ", "Bearer", "bearer ", "Bearer\t\t"] {
        assert!(empty(StaticToken::bearer(blank)), "bearer({blank:?})");
    }
    for blank in ["", "  ", "Token", "token\t"] {
        assert!(empty(StaticToken::api_key(blank)), "api_key({blank:?})");
    }
    assert!(empty(StaticToken::with_scheme("DPoP", " DPoP ")));
    for blank in ["", " ", "\t\t", "Bearer", "bearer  ", "Basic\t", "TOKEN"] {
        assert!(
            empty(StaticToken::from_header_value(
                HeaderValue::from_str(blank).unwrap()
            )),
            "from_header_value({blank:?})"
        );
    }
}

#[tokio::test]
async fn a_raw_header_value_is_trimmed_and_its_scheme_separated_by_one_space() {
    for (given, want) in [
        ("Bearer abc", "Bearer abc"),
        ("  Bearer\t\tabc ", "Bearer abc"),
        ("DPoP \t proof", "DPoP proof"),
        (" raw-key-without-scheme ", "raw-key-without-scheme"),
        (
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        ),
    ] {
        let provider =
            StaticToken::from_header_value(HeaderValue::from_str(given).unwrap()).unwrap();
        assert_eq!(header(&provider).await.unwrap(), want, "{given:?}");
    }
}

#[tokio::test]
async fn a_whitespace_only_access_token_from_the_token_endpoint_is_an_invalid_response() {
    let server = TestServer::start().await.unwrap();
    for blank in [" ", "   ", "\t", " \t\n"] {
        server.push_fault(Fault::status(StatusCode::OK).json(serde_json::json!({
            "access_token": blank,
            "token_type": "Bearer",
            "expires_in": 3600,
        })));
        let provider = OAuthProvider::client_credentials(server.token_url())
            .client_id(server.client_id())
            .client_secret(server.client_secret().unwrap())
            .build()
            .unwrap();

        let err = header(&provider).await.unwrap_err();

        assert!(
            matches!(
                err,
                Error::InvalidResponse(InvalidResponse::MissingAccessToken)
            ),
            "{blank:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn whitespace_only_access_tokens_handed_in_are_refused() {
    let builder = || {
        OAuthProvider::refresh_token_grant("https://auth.example.com/token")
            .client_id("c")
            .refresh_token("rt")
    };
    for blank in ["", " ", "\t "] {
        let err = builder()
            .access_token(blank, Some(Duration::from_secs(60)))
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::EmptyCredential), "{blank:?}: {err:?}");

        let provider = builder().build().unwrap();
        let err = provider
            .set_tokens(Tokens {
                access_token: Some(blank.into()),
                ..Tokens::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::EmptyCredential), "{blank:?}: {err:?}");
    }
}

#[tokio::test]
async fn customer_tokens_get_the_same_normalisation() {
    for given in [" Bearer abc", "bearer\tabc", "abc"] {
        let token = given.to_owned();
        let provider = CustomerToken::from_fn(move || {
            let token = token.clone();
            async move { Ok::<_, std::io::Error>(Some(token)) }
        });
        assert_eq!(header(&provider).await.unwrap(), "Bearer abc", "{given:?}");
    }
    for blank in ["", " \t", "Bearer\t"] {
        let token = blank.to_owned();
        let provider = CustomerToken::from_fn(move || {
            let token = token.clone();
            async move { Ok::<_, std::io::Error>(Some(token)) }
        });
        let err = header(&provider).await.unwrap_err();
        assert!(matches!(err, Error::EmptyCredential), "{blank:?}: {err:?}");
    }
}
