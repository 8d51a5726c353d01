//! The runtime's admin API (the operator's only way in):
//!
//! - `GET /healthz` (alive: 503 once the processing loop is stuck longer than
//!   its limit), `GET /readyz` (restored and processing), `GET /metrics`;
//! - `GET /v1/status`;
//! - `POST /v1/savepoints` `{"id": "...", "stop": bool}` -> 202 (idempotent per id);
//! - `GET /v1/savepoints/{id}`;
//! - `POST /v1/resume` (after a stop the operator abandons).
//!
//! `/v1/*` needs `Authorization: Bearer <token>` (token from a mounted
//! Secret); without a configured token they are refused, never open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, TextEncoder};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::shared::{Command, RunState, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointRequest {
    id: String,
    #[serde(default)]
    stop: bool,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(b) => reply(status, "application/json", b),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Constant-time comparison of the presented token.
fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A valid savepoint id: what the operator generates, safe as a path segment.
pub fn valid_savepoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            return match shared.heartbeat.stalled_for() {
                None => reply(StatusCode::OK, "text/plain", "ok\n"),
                Some(ms) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "the processing loop has not turned for {:.1} s\n",
                        ms as f64 / 1000.0
                    ),
                ),
            };
        }
        (&Method::GET, "/readyz") => {
            let st = shared.status().state;
            return if st == RunState::Running {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{st:?}\n"))
            };
        }
        (&Method::GET, "/metrics") => {
            let mut buf = Vec::new();
            return match TextEncoder::new().encode(&shared.metrics.registry.gather(), &mut buf) {
                Ok(()) => reply(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
            };
        }
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if !authorized(&req, token.as_deref()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/status") => json(StatusCode::OK, &shared.status()),
        (Method::POST, "/v1/savepoints") => {
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::BAD_REQUEST, "unreadable or oversized body"),
            };
            let r: SavepointRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("expected {{\"id\",\"stop\"}}: {e}"),
                    );
                }
            };
            if !valid_savepoint_id(&r.id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "savepoint id: 1-128 of [A-Za-z0-9._-], not starting with '.'",
                );
            }
            shared.request_savepoint(&r.id, r.stop);
            json(StatusCode::ACCEPTED, &serde_json::json!({ "id": r.id }))
        }
        (Method::GET, p) if p.starts_with("/v1/savepoints/") => {
            let id = &p["/v1/savepoints/".len()..];
            match shared.savepoint(id) {
                Some(sp) => json(StatusCode::OK, &sp),
                None => error(StatusCode::NOT_FOUND, "unknown savepoint"),
            }
        }
        (Method::POST, "/v1/resume") => {
            shared.push(Command::Resume);
            json(StatusCode::OK, &serde_json::json!({ "resumed": true }))
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Binds `addr` and serves until the runtime exits; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let token: Option<Arc<str>> = token.map(Into::into);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (shared, token) = (shared.clone(), token.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (shared, token) = (shared.clone(), token.clone());
                    async move { Ok::<_, Infallible>(handle(req, shared, token).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_ids_are_safe_path_segments() {
        assert!(valid_savepoint_id("sp-3-abc_1.2"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_savepoint_id(bad), "{bad:?}");
        }
    }
}
