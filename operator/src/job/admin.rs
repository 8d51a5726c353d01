//! The runtime pods' admin API (`/v1/*`, bearer token), behind a trait so
//! the decisions are tested with a fake and the shell with the real thing.
//!
//! Pods are reached by pod IP (no cluster DNS on the local test cluster).

use std::{fmt, net::SocketAddr, time::Duration};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use streamops_crds::runtime_api::{RuntimeStatus, SavepointDeletion, SavepointRequest, SavepointStatus};

/// One pod's admin endpoint. `Debug` never shows the token.
#[derive(Clone)]
pub struct PodEndpoint {
    pub pod: String,
    pub addr: SocketAddr,
    pub token: String,
}

impl fmt::Debug for PodEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodEndpoint")
            .field("pod", &self.pod)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a call got no usable answer; becomes text in status, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{pod} ({addr}): unreachable: {message}")]
    Unreachable {
        pod: String,
        addr: SocketAddr,
        message: String,
    },
    #[error("{pod}: HTTP {status}: {body}")]
    Http { pod: String, status: u16, body: String },
    #[error("{pod}: unreadable answer: {message}")]
    Decode { pod: String, message: String },
    #[error("{pod}: answer larger than {limit} bytes, not read further")]
    TooLarge { pod: String, limit: usize },
}

/// The largest answer body the operator reads from a runtime pod. A status
/// or savepoint answer is a few KiB; a pod (or anything listening at its
/// address) cannot make the operator buffer more than this per call.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The calls the operator makes on a runtime pod.
pub trait RuntimeAdmin: Send + Sync {
    fn status<'a>(&'a self, pod: &'a PodEndpoint) -> BoxFuture<'a, Result<RuntimeStatus, AdminError>>;
    /// `POST /v1/savepoints`; idempotent for one id.
    fn trigger_savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        request: &'a SavepointRequest,
    ) -> BoxFuture<'a, Result<(), AdminError>>;
    /// `GET /v1/savepoints/{id}`; `None` when the pod does not know the id.
    fn savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SavepointStatus>, AdminError>>;
    fn resume<'a>(&'a self, pod: &'a PodEndpoint) -> BoxFuture<'a, Result<(), AdminError>>;
    /// `DELETE /v1/savepoints/{id}`: `Some(objects deleted)` once the pod
    /// deleted it from storage (0: already gone), `None` when the pod only
    /// queued it (ask again: idempotent). A refusal (409: the pod was
    /// started from it) is an [`AdminError::Http`].
    fn delete_savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, AdminError>>;
}

/// HTTP/1.1 over a fresh TCP connection per call, each bounded by `timeout`.
#[derive(Clone, Debug)]
pub struct HttpAdmin {
    pub timeout: Duration,
}

impl HttpAdmin {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    async fn call(
        &self,
        pod: &PodEndpoint,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let unreachable = |message: String| AdminError::Unreachable {
            pod: pod.pod.clone(),
            addr: pod.addr,
            message,
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(pod.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, pod.addr.to_string())
                .header(AUTHORIZATION, format!("Bearer {}", pod.token));
            if body.is_some() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| unreachable(format!("building the request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let read = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            driver.abort();
            match read {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(e) if e.is::<LengthLimitError>() => Err(AdminError::TooLarge {
                    pod: pod.pod.clone(),
                    limit: MAX_ANSWER_BYTES,
                }),
                Err(e) => Err(unreachable(format!("reading the answer: {e}"))),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    fn expect_ok(pod: &PodEndpoint, status: StatusCode, body: &Bytes) -> Result<(), AdminError> {
        if status.is_success() {
            Ok(())
        } else {
            Err(AdminError::Http {
                pod: pod.pod.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(body).chars().take(300).collect(),
            })
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(pod: &PodEndpoint, body: &Bytes) -> Result<T, AdminError> {
        serde_json::from_slice(body).map_err(|e| AdminError::Decode {
            pod: pod.pod.clone(),
            message: e.to_string(),
        })
    }
}

impl RuntimeAdmin for HttpAdmin {
    fn status<'a>(&'a self, pod: &'a PodEndpoint) -> BoxFuture<'a, Result<RuntimeStatus, AdminError>> {
        Box::pin(async move {
            let (status, body) = self.call(pod, Method::GET, "/v1/status", None).await?;
            Self::expect_ok(pod, status, &body)?;
            Self::decode(pod, &body)
        })
    }

    fn trigger_savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        request: &'a SavepointRequest,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(request).map_err(|e| AdminError::Decode {
                pod: pod.pod.clone(),
                message: e.to_string(),
            })?;
            let (status, body) = self.call(pod, Method::POST, "/v1/savepoints", Some(body)).await?;
            Self::expect_ok(pod, status, &body)
        })
    }

    fn savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SavepointStatus>, AdminError>> {
        Box::pin(async move {
            let path = format!("/v1/savepoints/{id}");
            let (status, body) = self.call(pod, Method::GET, &path, None).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            Self::expect_ok(pod, status, &body)?;
            Self::decode(pod, &body).map(Some)
        })
    }

    fn resume<'a>(&'a self, pod: &'a PodEndpoint) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let (status, body) = self
                .call(pod, Method::POST, "/v1/resume", Some(b"{}".to_vec()))
                .await?;
            Self::expect_ok(pod, status, &body)
        })
    }

    fn delete_savepoint<'a>(
        &'a self,
        pod: &'a PodEndpoint,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, AdminError>> {
        Box::pin(async move {
            let path = format!("/v1/savepoints/{id}");
            let (status, body) = self.call(pod, Method::DELETE, &path, None).await?;
            Self::expect_ok(pod, status, &body)?;
            if status != StatusCode::OK {
                return Ok(None);
            }
            let answer: SavepointDeletion = Self::decode(pod, &body)?;
            if answer.id != id {
                return Err(AdminError::Decode {
                    pod: pod.pod.clone(),
                    message: format!("asked to delete savepoint {id}, answered for {}", answer.id),
                });
            }
            Ok(answer.deleted_objects)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamops_crds::runtime_api::{RuntimeState, SavepointState};

    /// A one-shot HTTP server on a thread: answers one request with
    /// `status` and `body`, returns the raw request it read.
    async fn serve_once(
        status: &'static str,
        body: impl Into<String>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        use std::io::{Read, Write};
        let body = body.into();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::task::spawn_blocking(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut request = Vec::new();
            loop {
                let n = socket.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // A client that stops reading (an oversized answer) closes early.
            let _ = socket.write_all(response.as_bytes());
            String::from_utf8_lossy(&request).to_string()
        });
        (addr, task)
    }

    fn endpoint(addr: SocketAddr) -> PodEndpoint {
        PodEndpoint {
            pod: "job-0".into(),
            addr,
            token: "s3cret".into(),
        }
    }

    #[tokio::test]
    async fn status_sends_the_bearer_token_and_decodes() {
        let (addr, server) = serve_once(
            "200 OK",
            r#"{"state":"Running","generation":3,"tasks":[0,4],"checkpointId":17,"lastCommitMs":1}"#,
        )
        .await;
        let status = HttpAdmin::new(Duration::from_secs(2))
            .status(&endpoint(addr))
            .await
            .unwrap();
        assert_eq!(status.state, RuntimeState::Running);
        assert_eq!(status.checkpoint_id, Some(17));
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /v1/status HTTP/1.1"), "{request}");
        assert!(request.contains("authorization: Bearer s3cret"), "{request}");
    }

    #[tokio::test]
    async fn savepoint_trigger_posts_the_request_and_unknown_ids_are_none() {
        let (addr, server) = serve_once("202 Accepted", r#"{"id":"sp-1"}"#).await;
        let admin = HttpAdmin::new(Duration::from_secs(2));
        admin
            .trigger_savepoint(
                &endpoint(addr),
                &SavepointRequest {
                    id: "sp-1".into(),
                    stop: true,
                    drain: false,
                },
            )
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /v1/savepoints HTTP/1.1"), "{request}");
        assert!(request.ends_with(r#"{"id":"sp-1","stop":true}"#), "{request}");

        let (addr, _server) = serve_once("404 Not Found", r#"{"error":"unknown"}"#).await;
        assert_eq!(admin.savepoint(&endpoint(addr), "sp-2").await.unwrap(), None);

        let (addr, _server) = serve_once(
            "200 OK",
            r#"{"id":"sp-1","state":"Failed","location":null,"checkpointId":null,"offsets":{},"error":"disk full"}"#,
        )
        .await;
        let sp = admin.savepoint(&endpoint(addr), "sp-1").await.unwrap().unwrap();
        assert_eq!(sp.state, SavepointState::Failed);
        assert_eq!(sp.error.as_deref(), Some("disk full"));
    }

    #[tokio::test]
    async fn savepoint_deletion_is_done_queued_or_refused() {
        let admin = HttpAdmin::new(Duration::from_secs(2));
        let (addr, server) = serve_once("200 OK", r#"{"id":"sp-1","deletedObjects":6}"#).await;
        assert_eq!(
            admin.delete_savepoint(&endpoint(addr), "sp-1").await.unwrap(),
            Some(6)
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("DELETE /v1/savepoints/sp-1 HTTP/1.1"),
            "{request}"
        );
        assert!(request.contains("authorization: Bearer s3cret"), "{request}");

        let (addr, _server) = serve_once("202 Accepted", r#"{"id":"sp-1"}"#).await;
        assert_eq!(
            admin.delete_savepoint(&endpoint(addr), "sp-1").await.unwrap(),
            None,
            "queued is not done"
        );
        let (addr, _server) = serve_once("409 Conflict", r#"{"error":"started from it"}"#).await;
        let e = admin.delete_savepoint(&endpoint(addr), "sp-1").await.unwrap_err();
        assert!(matches!(e, AdminError::Http { status: 409, .. }), "{e}");
        assert!(e.to_string().contains("started from it"), "{e}");
        // An answer about another savepoint confirms nothing.
        let (addr, _server) = serve_once("200 OK", r#"{"id":"sp-2","deletedObjects":1}"#).await;
        let e = admin.delete_savepoint(&endpoint(addr), "sp-1").await.unwrap_err();
        assert!(matches!(e, AdminError::Decode { .. }), "{e}");
    }

    #[tokio::test]
    async fn errors_are_values_not_panics() {
        let admin = HttpAdmin::new(Duration::from_millis(500));
        let (addr, _server) = serve_once("401 Unauthorized", "no").await;
        let e = admin.resume(&endpoint(addr)).await.unwrap_err();
        assert!(matches!(e, AdminError::Http { status: 401, .. }), "{e}");
        let (addr, _server) = serve_once("200 OK", "not json").await;
        assert!(matches!(
            admin.status(&endpoint(addr)).await,
            Err(AdminError::Decode { .. })
        ));
        // Nothing listens on a port just freed.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            admin.status(&endpoint(free)).await,
            Err(AdminError::Unreachable { .. })
        ));
        assert!(!format!("{:?}", endpoint(free)).contains("s3cret"));
    }

    #[tokio::test]
    async fn answers_are_read_up_to_a_limit() {
        let admin = HttpAdmin::new(Duration::from_secs(10));
        // Exactly the limit is read whole (whitespace only: not a status).
        let (addr, _server) = serve_once("200 OK", " ".repeat(MAX_ANSWER_BYTES)).await;
        let e = admin.status(&endpoint(addr)).await.unwrap_err();
        assert!(matches!(e, AdminError::Decode { .. }), "{e}");
        // One byte more is refused, error answers included.
        let (addr, _server) = serve_once("200 OK", "x".repeat(MAX_ANSWER_BYTES + 1)).await;
        let e = admin.status(&endpoint(addr)).await.unwrap_err();
        assert!(
            matches!(
                e,
                AdminError::TooLarge {
                    limit: MAX_ANSWER_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        let (addr, _server) = serve_once("500 Internal Server Error", "x".repeat(2 * MAX_ANSWER_BYTES)).await;
        let e = admin.resume(&endpoint(addr)).await.unwrap_err();
        assert!(matches!(e, AdminError::TooLarge { .. }), "{e}");
    }

    /// An answer of no announced length that never ends: the client stops at
    /// the limit instead of buffering until the call's timeout.
    #[tokio::test]
    async fn an_endless_answer_stops_at_the_limit() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::task::spawn_blocking(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf);
            let mut sent = 0usize;
            let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).is_err() {
                return sent;
            }
            // Bounded: 64 MiB at most, far past the client's limit.
            while sent < 64 * MAX_ANSWER_BYTES && socket.write_all(chunk.as_bytes()).is_ok() {
                sent += 0x10000;
            }
            sent
        });
        let e = HttpAdmin::new(Duration::from_secs(10))
            .status(&endpoint(addr))
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::TooLarge { .. }), "{e}");
        let sent = server.await.unwrap();
        assert!(
            sent < 64 * MAX_ANSWER_BYTES,
            "the client kept reading: {sent} bytes"
        );
    }
}
