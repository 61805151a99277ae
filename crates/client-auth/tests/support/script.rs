//! A scripted token endpoint for the provider-level tests: answers in order, every request
//! recorded (path, headers, form). Each test binary includes it with
//! `#[path = "support/script.rs"] mod script;`.
#![allow(dead_code, reason = "each including test binary uses a different part")]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use client_auth::adapter::BoxFuture;
use client_auth::{Error, TokenTransport};
use http::HeaderMap;

/// One recorded request: its path, headers and form.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) form: Vec<(String, String)>,
}

impl Seen {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn dpop_claims(&self) -> serde_json::Value {
        claims(
            self.headers
                .get("dpop")
                .expect("a DPoP proof")
                .to_str()
                .unwrap(),
        )
    }
}

/// A scripted answer: status, headers, body.
pub(crate) type Answer = (u16, Vec<(&'static str, String)>, String);

/// A scripted endpoint: answers in order, every request recorded.
#[derive(Default)]
pub(crate) struct Script {
    answers: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<Seen>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl Script {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub(crate) fn answer(&self, status: u16, headers: &[(&'static str, &str)], body: &str) {
        self.answers.lock().unwrap().push_back((
            status,
            headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            body.to_owned(),
        ));
    }
    pub(crate) fn token(&self, token_type: &str, at: &str) {
        self.answer(
            200,
            &[],
            &format!(r#"{{"access_token":"{at}","token_type":"{token_type}","expires_in":3600}}"#),
        );
    }
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl TokenTransport for Script {
    fn send(
        &self,
        request: http::Request<Bytes>,
        _max_body: usize,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, Error>> {
        self.seen.lock().unwrap().push(Seen {
            path: request.uri().path().to_owned(),
            headers: request.headers().clone(),
            form: form_urlencoded::parse(request.body())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        });
        let (status, headers, body) = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script ran out of answers");
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        let response = response.body(Bytes::from(body)).unwrap();
        Box::pin(async move { Ok(response) })
    }
}

pub(crate) fn claims(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
