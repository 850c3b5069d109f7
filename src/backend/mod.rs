//! The `Backend` trait and the remote kinds: OpenAI-compatible servers ([`openai`]) and
//! Ollama ([`ollama`]), which share their HTTP side ([`remote`]) and each have a stream
//! framing ([`sse`], [`ndjson`]). The embedded engine (module `engine`, a layer above)
//! implements the same trait.
//!
//! A backend answers a validated request with either one full OpenAI-shaped body or a stream
//! of OpenAI-shaped chunks. It knows nothing of HTTP on the client side, of retries or of
//! fallbacks: the router owns those, and classifies failures through [`BackendError`].

pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod remote;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::StatusCode;
use serde_json::{Map, Value};

use crate::protocol::error::ApiError;
use crate::protocol::{Usage, ValidRequest};

/// One OpenAI-shaped streaming chunk (`chat.completion.chunk` or `text_completion`).
pub type Chunk = Map<String, Value>;

pub type EventStream = BoxStream<'static, Result<Chunk, BackendError>>;

/// What the router hands a backend.
#[derive(Clone, Debug)]
pub struct BackendRequest {
    pub req: Arc<ValidRequest>,
    pub request_id: String,
    pub traceparent: Option<String>,
    /// Batch work yields to interactive work where the backend can tell them apart.
    pub priority: Priority,
    /// The prefix or session fingerprint for prefix-affine routing.
    pub fingerprint: u64,
    /// The request's session (`x-session-id`), bound to the API key that names it: the
    /// caller's key name and the id, hashed (hex).
    pub session: Option<String>,
    /// The seed an embedded engine draws with when the request names none (chosen by the
    /// gateway and recorded, so that the answer can be reproduced).
    pub seed: u32,
    /// A Responses API request as the client wrote it, for a deployment whose upstream
    /// speaks that API itself; every other deployment serves `req`, its translation.
    pub native: Option<Arc<NativeResponses>>,
}

/// A `/v1/responses` body to pass through as it is (only `model` is rewritten).
#[derive(Debug)]
pub struct NativeResponses {
    pub body: Map<String, Value>,
    /// The deployment that holds the state `previous_response_id` names: no other upstream
    /// knows that id, so any other deployment serves the translation (with the gateway's
    /// copy of the history).
    pub pinned: Option<String>,
}

impl NativeResponses {
    /// Whether the deployment `name` (which passes the Responses API through) may be sent it.
    pub fn for_deployment(&self, name: &str) -> bool {
        self.pinned.as_deref().is_none_or(|p| p == name)
    }

    /// Whether a stream event or a whole body is the Responses API's own (not a chat chunk).
    pub fn is_native(chunk: &Chunk) -> bool {
        chunk.get("type").is_some_and(Value::is_string)
            || chunk.get("object").and_then(Value::as_str) == Some("response")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

pub enum BackendReply {
    /// A whole response body, as the upstream sent it (the API layer sets `model`).
    Full {
        body: Map<String, Value>,
        usage: Option<Usage>,
        /// The bytes `body` was parsed from, when they may go to the client as they are
        /// (with `model` rewritten in place, [`crate::protocol::raw::set_model`]).
        raw: Option<Bytes>,
    },
    Stream(EventStream),
}

/// How a backend failed; the router decides from this whether to retry, fall back, or
/// pass the failure to the client.
#[derive(Debug)]
pub enum BackendError {
    /// Could not connect, or the connection broke before a response.
    Connect(String),
    /// No response, or no first event, within the deployment's timeout.
    Timeout(String),
    /// The upstream answered with a non-success status.
    Status { status: StatusCode, body: Bytes, retry_after: Option<Duration> },
    /// The upstream sent something that is not the protocol it should speak.
    Protocol(String),
    /// An in-band error event in a stream (`data: {"error": ...}`).
    InBand(ApiError),
    /// The backend's queue is full: try the next deployment.
    Full,
    /// The request cannot be served by this backend (a 400 naming the parameter, a prompt
    /// longer than the context): never retried, never a fallback.
    Rejected(ApiError),
    /// The backend failed in a way that is its own fault (engine decode failure).
    Internal(String),
}

impl BackendError {
    /// Worth another try on the same or the next deployment (before the first byte).
    pub fn retryable(&self) -> bool {
        match self {
            BackendError::Connect(_) | BackendError::Timeout(_) | BackendError::Protocol(_) => true,
            BackendError::Internal(_) => true,
            BackendError::InBand(e) => e.status == StatusCode::TOO_MANY_REQUESTS || e.status.is_server_error(),
            BackendError::Status { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
            BackendError::Full | BackendError::Rejected(_) => false,
        }
    }

    /// Counts against the deployment's circuit breaker: its own failures, not the load
    /// it sheds (429) nor the client's mistakes (4xx).
    pub fn counts_against_breaker(&self) -> bool {
        match self {
            BackendError::Connect(_) | BackendError::Timeout(_) | BackendError::Protocol(_) => true,
            BackendError::Internal(_) => true,
            BackendError::InBand(e) => e.status.is_server_error(),
            BackendError::Status { status, .. } => status.is_server_error(),
            BackendError::Full | BackendError::Rejected(_) => false,
        }
    }

    pub fn to_api(&self, deployment: &str) -> ApiError {
        match self {
            BackendError::Connect(m) => {
                ApiError::upstream(format!("The upstream '{deployment}' could not be reached: {m}"))
            }
            BackendError::Timeout(m) => {
                ApiError::upstream_timeout(format!("The upstream '{deployment}' timed out: {m}"))
            }
            BackendError::Protocol(m) => {
                ApiError::upstream(format!("The upstream '{deployment}' sent an invalid response: {m}"))
            }
            BackendError::InBand(e) => {
                let mut e = e.clone();
                if e.status.is_success() || e.status.is_server_error() {
                    e.status = StatusCode::BAD_GATEWAY;
                }
                e
            }
            BackendError::Status { status, body, retry_after } => {
                if status.is_server_error() {
                    let inner = ApiError::from_upstream(*status, body);
                    ApiError::upstream(format!(
                        "The upstream '{deployment}' failed ({}): {}",
                        status.as_u16(),
                        inner.message
                    ))
                } else {
                    let mut e = ApiError::from_upstream(*status, body);
                    e.retry_after = retry_after.map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32);
                    e
                }
            }
            BackendError::Full => ApiError::overloaded(deployment, 1),
            BackendError::Rejected(e) => e.clone(),
            BackendError::Internal(m) => ApiError::upstream(format!("The backend '{deployment}' failed: {m}")),
        }
    }
}

/// Why a backend cannot serve now (`/ready`, and a version's smoke test).
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// The upstream could not be reached (connection refused, timeout, TLS, ...).
    #[error("{0}")]
    Unreachable(String),
    /// The upstream answered its health path with a non-success status.
    #[error("GET /{path} answered {status}")]
    Status { path: &'static str, status: StatusCode },
    /// The embedded engine's thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// No answer within the readiness check's time.
    #[error("health check timed out")]
    TimedOut,
    /// The deployment's circuit breaker is open.
    #[error("circuit breaker open")]
    BreakerOpen,
}

pub trait Backend: Send + Sync + 'static {
    /// Serves one request. For a streamed request the returned stream yields its chunks;
    /// dropping it cancels the work upstream.
    fn call(&self, req: BackendRequest) -> BoxFuture<'static, Result<BackendReply, BackendError>>;

    /// Whether the backend can serve now (for `/ready`).
    fn health(&self) -> BoxFuture<'static, Result<(), Unhealthy>>;

    /// Extra facts for `/v1/models` (the engine's model metadata).
    fn info(&self) -> Option<Value> {
        None
    }

    /// The prompt tokens this backend would read for `req`, when it can count them itself
    /// (the engine, with its model's tokenizer and chat template); `None` when it cannot.
    fn count_tokens(&self, _req: &ValidRequest) -> Option<Result<u64, ApiError>> {
        None
    }

    /// Deletes a stored response this backend's upstream made (it passes the Responses API
    /// through); `None` when it keeps no responses of its own.
    fn delete_response(&self, _id: &str) -> Option<BoxFuture<'static, Result<(), BackendError>>> {
        None
    }
}

/// A vector as base64 of its little-endian f32s (standard alphabet, padded): what
/// `encoding_format: "base64"` asks for (the OpenAI Python SDK's default).
pub fn base64_f32(v: impl Iterator<Item = f32>) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.flat_map(f32::to_le_bytes).collect();
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            s.push(if k <= c.len() { char::from(A[(n >> (18 - 6 * k)) as usize & 63]) } else { '=' });
        }
    }
    s
}
