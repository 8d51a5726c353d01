//! The runtime's admin API (the operator's only way in):
//!
//! - `GET /healthz` (alive: 503 once the processing loop is stuck longer than
//!   its limit), `GET /readyz` (restored and processing), `GET /metrics`;
//! - `GET /v1/status`;
//! - `POST /v1/savepoints` `{"id": "...", "stop": bool}` -> 202 (idempotent per id);
//! - `GET /v1/savepoints/{id}`;
//! - `DELETE /v1/savepoints/{id}` -> 200 `{"id", "deletedObjects"}` once the
//!   processing loop deleted it from storage (idempotent), 202 when the loop
//!   did not get to it within [`DELETION_WAIT`] (it still will), 409 for the
//!   savepoint this process was started from;
//! - `POST /v1/resume` (after a stop the operator abandons).
//!
//! `/v1/*` needs `Authorization: Bearer <token>` (token from a mounted
//! Secret); without a configured token they are refused, never open.
//!
//! Every client is bounded ([`ConnectionLimits`]): how many connections are
//! served at once, how long one may take to send its headers and how long
//! it may live, so no peer can hold the server (and with it the kubelet's
//! probes and the operator's calls) by connecting and sending nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::shared::{Command, RuntimeState, Shared};
use crate::checkpoint::store::DeletionOutcome;
use streamops_crds::runtime_api::{SavepointDeletion, SavepointRequest};

/// How long `DELETE /v1/savepoints/{id}` waits for the processing loop
/// (which may be in the middle of a checkpoint) before answering 202:
/// within the operator's call timeout (3 s by default), so that it learns
/// the outcome whenever the loop is free.
pub const DELETION_WAIT: Duration = Duration::from_secs(2);

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
pub use streamops_crds::runtime_api::valid_savepoint_id;

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
            return if st == RuntimeState::Running {
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
                        &format!("expected {{\"id\",\"stop\",\"drain\"}}: {e}"),
                    );
                }
            };
            if !valid_savepoint_id(&r.id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "savepoint id: 1-128 of [A-Za-z0-9._-], not starting with '.'",
                );
            }
            shared.request_savepoint(&r.id, r.stop, r.drain);
            json(StatusCode::ACCEPTED, &serde_json::json!({ "id": r.id }))
        }
        (Method::GET, p) if p.starts_with("/v1/savepoints/") => {
            let id = &p["/v1/savepoints/".len()..];
            match shared.savepoint(id) {
                Some(sp) => json(StatusCode::OK, &sp),
                None => error(StatusCode::NOT_FOUND, "unknown savepoint"),
            }
        }
        (Method::DELETE, p) if p.starts_with("/v1/savepoints/") => {
            let id = &p["/v1/savepoints/".len()..];
            if !valid_savepoint_id(id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "savepoint id: 1-128 of [A-Za-z0-9._-], not starting with '.'",
                );
            }
            delete_savepoint(&shared, id, DELETION_WAIT).await
        }
        (Method::POST, "/v1/resume") => {
            shared.push(Command::Resume);
            json(StatusCode::OK, &serde_json::json!({ "resumed": true }))
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Hands the deletion of savepoint `id` to the processing loop (storage
/// calls block, and the loop orders them after any savepoint of that id)
/// and answers with its outcome, or 202 if it takes longer than `wait`.
async fn delete_savepoint(shared: &Shared, id: &str, wait: Duration) -> Response<Full<Bytes>> {
    let outcome = shared.request_deletion(id);
    let answer = |deleted_objects: Option<u64>| SavepointDeletion {
        id: id.to_string(),
        deleted_objects,
    };
    match tokio::time::timeout(wait, outcome).await {
        Ok(Ok(DeletionOutcome::Deleted(n))) => json(StatusCode::OK, &answer(Some(n as u64))),
        Ok(Ok(DeletionOutcome::Refused(why))) => error(StatusCode::CONFLICT, &why),
        Ok(Ok(DeletionOutcome::Failed(why))) => error(StatusCode::INTERNAL_SERVER_ERROR, &why),
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the processing loop ended before deleting it",
        ),
        Err(_) => json(StatusCode::ACCEPTED, &answer(None)),
    }
}

/// How the admin server bounds its clients.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once. Past it the server accepts nothing: a
    /// new connection waits in the kernel's listen backlog until a slot
    /// frees (within `header_read` for an idle one, `deadline` at worst)
    /// and is then served; the client's own timeout decides whether it
    /// waits that long. Waiting rather than refusing keeps a burst of
    /// legitimate calls (probes, the operator, a scrape) answered.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from the
    /// connection's start or the end of the previous response; so it is
    /// also how long an idle keep-alive connection stays open.
    pub header_read: Duration,
    /// Longest life of one connection, whatever it does (a body dripped
    /// byte by byte, keep-alive requests one after another); then it is
    /// closed, mid-request or not. Every answer takes milliseconds.
    pub deadline: Duration,
    /// Pause after a failed accept (e.g. EMFILE: out of file descriptors),
    /// so the loop does not spin while the condition lasts.
    pub accept_backoff: Duration,
}

impl ConnectionLimits {
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max_connections: 64,
        header_read: Duration::from_secs(10),
        deadline: Duration::from_secs(30),
        accept_backoff: Duration::from_millis(100),
    };
}

/// Binds `addr` and serves until the runtime exits, within
/// [`ConnectionLimits::DEFAULT`]; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    serve_within(addr, shared, token, ConnectionLimits::DEFAULT).await
}

async fn serve_within(
    addr: SocketAddr,
    shared: Arc<Shared>,
    token: Option<String>,
    limits: ConnectionLimits,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, shared, token.map(Into::into), limits));
    Ok(local)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    limits: ConnectionLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    loop {
        // The slot first: past the limit nothing is accepted.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // closed: never, the loop owns the semaphore
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, retry_in = ?limits.accept_backoff, "admin API: accepting a connection failed");
                drop(slot);
                tokio::time::sleep(limits.accept_backoff).await;
                continue;
            }
        };
        let (shared, token, http) = (shared.clone(), token.clone(), http.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let (shared, token) = (shared.clone(), token.clone());
                async move { Ok::<_, Infallible>(handle(req, shared, token).await) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "admin API: connection ended"),
                Err(_) => debug!(deadline = ?limits.deadline, "admin API: connection closed at its deadline"),
            }
        });
    }
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

    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const TOKEN: &str = "t0ken";

    async fn start(limits: ConnectionLimits) -> SocketAddr {
        let shared = Arc::new(Shared::new(3, vec![0]).unwrap());
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        serve_within(any, shared, Some(TOKEN.into()), limits)
            .await
            .unwrap()
    }

    fn limits(max_connections: usize, header_read_ms: u64, deadline_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_read: Duration::from_millis(header_read_ms),
            deadline: Duration::from_millis(deadline_ms),
            accept_backoff: Duration::from_millis(100),
        }
    }

    /// Reads one response (head and a `content-length` body) within `wait`;
    /// `None` if none came.
    async fn response(stream: &mut TcpStream, wait: Duration) -> Option<String> {
        let read = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        return Some(text);
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }

    /// How long until the server closes `stream` (reading whatever it sends),
    /// at most `wait`; `None` if it stayed open.
    async fn closed_after(stream: &mut TcpStream, started: Instant, wait: Duration) -> Option<Duration> {
        let mut buf = [0u8; 1024];
        let closed = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(wait, closed).await.ok()
    }

    fn get(path: &str, token: Option<&str>) -> String {
        request("GET", path, token)
    }

    fn request(method: &str, path: &str, token: Option<&str>) -> String {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!("{method} {path} HTTP/1.1\r\nhost: pod\r\n{auth}\r\n")
    }

    /// A server whose processing loop is the test: it pops the commands.
    async fn start_with_loop() -> (SocketAddr, Arc<Shared>) {
        let shared = Arc::new(Shared::new(3, vec![0]).unwrap());
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let addr = serve_within(any, shared.clone(), Some(TOKEN.into()), ConnectionLimits::DEFAULT)
            .await
            .unwrap();
        (addr, shared)
    }

    /// Stands in for the processing loop: answers the next `outcomes.len()`
    /// deletions in order; returns the ids it was asked for.
    fn deletion_loop(
        shared: Arc<Shared>,
        outcomes: Vec<DeletionOutcome>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut outcomes = outcomes.into_iter();
            loop {
                match shared.pop() {
                    Some(Command::DeleteSavepoint { id, done }) => {
                        ids.push(id);
                        let Some(outcome) = outcomes.next() else {
                            return ids;
                        };
                        done.send(outcome).unwrap();
                    }
                    Some(other) => panic!("unexpected command {other:?}"),
                    None if outcomes.len() == 0 => return ids,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
    }

    #[tokio::test]
    async fn savepoint_deletion_answers_with_the_processing_loops_outcome() {
        let (addr, shared) = start_with_loop().await;
        let wait = Duration::from_secs(5);
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Refused before the loop hears of it: no token, not an id.
        c.write_all(request("DELETE", "/v1/savepoints/sp-1", None).as_bytes())
            .await
            .unwrap();
        let r = response(&mut c, wait).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        for bad in [
            "/v1/savepoints/",
            "/v1/savepoints/..",
            "/v1/savepoints/.x",
            "/v1/savepoints/a/b",
        ] {
            c.write_all(request("DELETE", bad, Some(TOKEN)).as_bytes())
                .await
                .unwrap();
            let r = response(&mut c, wait).await.unwrap();
            assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
        }
        assert!(shared.pop().is_none(), "nothing reached the loop");

        let outcomes = vec![
            DeletionOutcome::Deleted(6),
            DeletionOutcome::Refused("started from it".into()),
            DeletionOutcome::Failed("disk gone".into()),
        ];
        let answered = deletion_loop(shared.clone(), outcomes);
        let mut answers = Vec::new();
        for id in ["sp-1", "sp-2", "sp-3"] {
            let path = format!("/v1/savepoints/{id}");
            c.write_all(request("DELETE", &path, Some(TOKEN)).as_bytes())
                .await
                .unwrap();
            answers.push(response(&mut c, wait).await.unwrap());
        }
        assert_eq!(answered.await.unwrap(), ["sp-1", "sp-2", "sp-3"]);
        assert!(answers[0].starts_with("HTTP/1.1 200"), "{}", answers[0]);
        assert!(
            answers[0].ends_with(r#"{"id":"sp-1","deletedObjects":6}"#),
            "{}",
            answers[0]
        );
        assert!(
            answers[1].starts_with("HTTP/1.1 409") && answers[1].contains("started from it"),
            "{}",
            answers[1]
        );
        assert!(
            answers[2].starts_with("HTTP/1.1 500") && answers[2].contains("disk gone"),
            "{}",
            answers[2]
        );
    }

    #[tokio::test]
    async fn a_deletion_the_busy_loop_has_not_reached_is_accepted_and_stays_queued() {
        let (addr, shared) = start_with_loop().await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request("DELETE", "/v1/savepoints/sp-1", Some(TOKEN)).as_bytes())
            .await
            .unwrap();
        let r = response(&mut c, DELETION_WAIT + Duration::from_secs(5))
            .await
            .unwrap();
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        assert!(r.ends_with(r#"{"id":"sp-1"}"#), "{r}");
        // The loop gets to it later; nobody waits for the outcome any more.
        match shared.pop() {
            Some(Command::DeleteSavepoint { id, done }) => {
                assert_eq!(id, "sp-1");
                assert!(done.send(DeletionOutcome::Deleted(1)).is_err());
            }
            other => panic!("expected the queued deletion, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_are_answered_on_kept_alive_connections() {
        let addr = start(ConnectionLimits::DEFAULT).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let wait = Duration::from_secs(5);
        c.write_all(get("/healthz", None).as_bytes()).await.unwrap();
        let r = response(&mut c, wait).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        // The same connection: /v1 without, then with the token.
        c.write_all(get("/v1/status", None).as_bytes()).await.unwrap();
        let r = response(&mut c, wait).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        c.write_all(get("/v1/status", Some(TOKEN)).as_bytes())
            .await
            .unwrap();
        let r = response(&mut c, wait).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(r#""generation":3"#), "{r}");
    }

    #[tokio::test]
    async fn a_silent_or_dripping_client_is_closed_at_the_header_timeout() {
        let addr = start(limits(64, 300, 30_000)).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut silent, started, Duration::from_secs(5))
            .await
            .expect("a client that sends nothing stays connected");
        assert!(
            took >= Duration::from_millis(250),
            "closed before the timeout: {took:?}"
        );

        // Headers one byte every 50 ms: the timeout counts from the start.
        let started = Instant::now();
        let mut dripping = TcpStream::connect(addr).await.unwrap();
        let request = get("/healthz", None) + &"x-pad: 1\r\n".repeat(20);
        let drip = async {
            for b in request.as_bytes() {
                if dripping.write_all(&[*b]).await.is_err() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        };
        let dripped_for = tokio::time::timeout(Duration::from_secs(5), drip).await.unwrap();
        let took = closed_after(&mut dripping, started, Duration::from_secs(5))
            .await
            .expect("a client dripping its headers stays connected");
        assert!(
            dripped_for < Duration::from_secs(2) && took < Duration::from_secs(2),
            "the dripping client was held for {took:?}"
        );
    }

    #[tokio::test]
    async fn a_dripped_body_is_cut_at_the_connection_deadline() {
        let addr = start(limits(64, 5_000, 500)).await;
        let started = Instant::now();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/savepoints HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 100\r\n\r\n{{"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let took = closed_after(&mut c, started, Duration::from_secs(5))
            .await
            .expect("a request whose body never ends keeps its connection");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "closed after {took:?}, the deadline is 500 ms"
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_slot() {
        let addr = start(limits(2, 10_000, 30_000)).await;
        // Two idle connections take both slots (accepted in connect order).
        let mut idle = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(get("/healthz", None).as_bytes()).await.unwrap();
        assert_eq!(
            response(&mut third, Duration::from_millis(700)).await,
            None,
            "a third connection was served past the limit of 2"
        );
        // One idle client leaves: its slot goes to the waiting connection.
        drop(idle.pop());
        let r = response(&mut third, Duration::from_secs(5))
            .await
            .expect("the waiting connection was never served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // The remaining idle connection still holds its slot, open.
        let mut buf = [0u8; 1];
        let still_open = tokio::time::timeout(Duration::from_millis(100), idle[0].read(&mut buf)).await;
        assert!(
            still_open.is_err(),
            "the idle connection was closed: {still_open:?}"
        );
    }
}
