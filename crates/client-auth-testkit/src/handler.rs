//! HTTP handling: routing, token and revocation endpoints, protected API, redirects.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::fault::Fault;
use crate::state::{EndpointReply, InFlightGuard, SeenRequest, State, Unauthorized};

/// Body of every answer: a full body, or a channel for trickled faults.
pub(crate) type ResponseBody = Either<Full<Bytes>, Channel<Bytes>>;

fn full(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    full(
        status,
        Some("application/json"),
        Bytes::from(body.to_string()),
    )
}

/// Entry point of the hyper service.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            tracing::debug!(%err, "failed to read request body");
            return Ok(full(StatusCode::BAD_REQUEST, None, Bytes::new()));
        }
    };
    let path = parts.uri.path();
    let response = if path == "/token" {
        token_endpoint(&state, &parts, &body).await
    } else if path == "/revoke" {
        endpoint_reply(state.revocation_request(&parts.method, &parts.headers, &body))
    } else if path.starts_with("/api/") {
        record_seen(&state, &parts);
        let response = resource(&state, &parts, &body);
        state.record_resource_status(response.status());
        response
    } else if path.starts_with("/redirect") {
        record_seen(&state, &parts);
        redirect(&parts)
    } else {
        json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" }))
    };
    Ok(response)
}

fn record_seen(state: &State, parts: &http::request::Parts) {
    let header = |name| {
        parts
            .headers
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    state.record_seen(SeenRequest {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        authorization: header(header::AUTHORIZATION),
        host: header(header::HOST),
    });
}

fn endpoint_reply(reply: EndpointReply) -> Response<ResponseBody> {
    let mut response = json_response(reply.status, &reply.body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if reply.basic_challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token\""),
        );
    }
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

async fn token_endpoint(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Response<ResponseBody> {
    state.record_token_request(&parts.method, &parts.headers, body);
    let (guard, fault) = state.enter_token_endpoint();
    if !state.token_delay.is_zero() {
        tokio::time::sleep(state.token_delay).await;
    }
    match fault {
        Some(fault) => serve_fault(fault, guard).await,
        None => {
            let response = endpoint_reply(state.token_request(&parts.method, &parts.headers, body));
            drop(guard);
            response
        }
    }
}

async fn serve_fault(fault: Fault, guard: InFlightGuard) -> Response<ResponseBody> {
    if fault.hang {
        // Accepted, never answered; the future is dropped with the connection.
        std::future::pending::<()>().await;
    }
    if !fault.delay.is_zero() {
        tokio::time::sleep(fault.delay).await;
    }
    let body = match fault.trickle {
        None => {
            drop(guard);
            Either::Left(Full::new(fault.body))
        }
        Some(every) => {
            let (mut sender, channel) = Channel::new(1);
            let bytes = fault.body;
            tokio::spawn(async move {
                let _guard = guard;
                for i in 0..bytes.len() {
                    tokio::time::sleep(every).await;
                    if sender.send_data(bytes.slice(i..=i)).await.is_err() {
                        break;
                    }
                }
            });
            Either::Right(channel)
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = fault.status;
    for (name, value) in &fault.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(name, "skipping invalid fault header"),
        }
    }
    response
}

fn resource(state: &State, parts: &http::request::Parts, body: &Bytes) -> Response<ResponseBody> {
    let path = parts.uri.path();
    let authorized = match state.authorize(&parts.headers) {
        Ok(authorized) => authorized,
        Err(why) => {
            let challenge = match why {
                Unauthorized::Missing => "Bearer",
                Unauthorized::Invalid => "Bearer error=\"invalid_token\"",
            };
            return unauthorized("invalid_token", HeaderValue::from_static(challenge));
        }
    };
    if state.resource_route_allows(path, &authorized) == Some(false) {
        return unauthorized(
            "invalid_token",
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", \
                 error_description=\"the token was not issued for this resource\"",
            ),
        );
    }
    if let Some(claims) = state.claims_challenge(path, &authorized) {
        let challenge =
            format!("Bearer realm=\"testkit\", error=\"insufficient_claims\", claims=\"{claims}\"");
        // Base64 is always a valid header value; the fallback is never taken.
        let challenge = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_claims\""));
        return unauthorized("insufficient_claims", challenge);
    }
    match path {
        "/api/forbidden" => json_response(
            StatusCode::FORBIDDEN,
            &json!({ "ok": false, "error": "forbidden" }),
        ),
        "/api/scope" => {
            let mut response = json_response(
                StatusCode::FORBIDDEN,
                &json!({ "ok": false, "error": "insufficient_scope" }),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            );
            response
        }
        _ => {
            let mut answer = json!({
                "ok": true,
                "kind": authorized.kind,
                "subject": authorized.subject,
                "path": path,
                "method": parts.method.as_str(),
            });
            if path == "/api/echo" {
                answer["body"] = json!(String::from_utf8_lossy(body));
            }
            if let Some(resource) = authorized.resource {
                answer["resource"] = json!(resource);
            }
            if let Some(audience) = authorized.audience {
                answer["audience"] = json!(audience);
            }
            json_response(StatusCode::OK, &answer)
        }
    }
}

/// A `401` from the protected API with this challenge.
fn unauthorized(error: &str, challenge: HeaderValue) -> Response<ResponseBody> {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "ok": false, "error": error }),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    response
}

fn redirect(parts: &http::request::Parts) -> Response<ResponseBody> {
    let mut to = None;
    let mut status = StatusCode::TEMPORARY_REDIRECT;
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "to" => to = Some(v.into_owned()),
            "status" => match v
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                Some(s) if s.is_redirection() => status = s,
                _ => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": "bad status" }),
                    );
                }
            },
            _ => {}
        }
    }
    let Some(location) = to.and_then(|to| HeaderValue::from_str(&to).ok()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "missing or invalid `to`" }),
        );
    };
    let mut response = full(status, None, Bytes::new());
    response.headers_mut().insert(header::LOCATION, location);
    response
}
