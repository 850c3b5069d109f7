//! The one error type clients see (the protocol's error object; `api/error.rs` renders it): OpenAI's `{"error": {"message", "type", "param", "code"}}`
//! with the HTTP status the OpenAI SDKs map to their exception classes.
//!
//! Internal details are logged where they happen, never sent; every error also carries a
//! low-cardinality `kind` for metrics and the accounting record.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub type_: Cow<'static, str>,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds, sent as `retry-after` (429, 503).
    pub retry_after: Option<u32>,
    /// Extra headers (rate-limit state, `x-should-retry`); boxed, since errors travel in
    /// `Result`s and most have none.
    pub headers: Option<Box<Vec<(HeaderName, HeaderValue)>>>,
}

/// The code of a 429 that says "every deployment is full right now" (not a key's limit, not
/// an upstream's): batch runners wait for capacity on it without counting a try.
pub const BUSY: &str = "deployments_busy";

impl ApiError {
    fn new(status: StatusCode, type_: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            type_: Cow::Borrowed(type_),
            param: None,
            code: None,
            retry_after: None,
            headers: None,
        }
    }

    pub fn push_header(&mut self, h: (HeaderName, HeaderValue)) {
        self.headers.get_or_insert_with(Default::default).push(h);
    }

    pub fn header_list(&self) -> &[(HeaderName, HeaderValue)] {
        self.headers.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_owned);
        e
    }

    /// A parameter a backend cannot honour: a 400 naming it, never a silent ignore.
    pub fn unsupported_param(param: &str, backend: &str) -> Self {
        Self::invalid_request(
            format!("The parameter '{param}' is not supported by the {backend} backend."),
            Some(param),
        )
        .with_code("unsupported_parameter")
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).with_code("invalid_api_key")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{model}' does not exist or you do not have access to it."),
        )
        .with_code("model_not_found")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", message).with_code("method_not_allowed")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// Every deployment of the alias is at its concurrency limit (or its queue is full).
    pub fn overloaded(model: &str, retry_after: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("Every deployment of '{model}' is busy; retry shortly."),
        )
        .with_code(BUSY);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Option<u32>) -> Self {
        let mut e =
            Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).with_code("rate_limit_exceeded");
        e.retry_after = retry_after;
        e
    }

    /// A key's budget is spent: OpenAI's quota error, which SDKs do not retry.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message).with_code("insufficient_quota")
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", message).with_code("upstream_error")
    }

    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "api_error", message).with_code("upstream_timeout")
    }

    /// The request is valid but the state it acts on says no (409).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message).with_code("conflict")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", message).with_code("unavailable")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message).with_code("internal_error")
    }

    /// An upstream 4xx passed through with its status, normalised to the OpenAI shape.
    /// `body` is the upstream's error body, whatever shape it had.
    pub fn from_upstream(status: StatusCode, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let obj = parsed.as_ref().and_then(|v| v.get("error").cloned().or_else(|| Some(v.clone())));
        let (message, up_type, param, code) = match obj {
            Some(Value::Object(o)) => (
                o.get("message").and_then(Value::as_str).map(str::to_owned),
                o.get("type").and_then(Value::as_str).map(str::to_owned),
                o.get("param").and_then(Value::as_str).map(str::to_owned),
                o.get("code").and_then(Value::as_str).map(str::to_owned),
            ),
            // Ollama answers {"error": "message"}.
            Some(Value::String(s)) => (Some(s), None, None, None),
            _ => (None, None, None, None),
        };
        let message = message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("The upstream answered {status}.")
            } else {
                text.chars().take(500).collect()
            }
        });
        let type_ = match status.as_u16() {
            401 | 403 => "authentication_error",
            404 | 400 | 409 | 413 | 415 | 422 => "invalid_request_error",
            429 => "rate_limit_error",
            _ if status.is_server_error() => "api_error",
            _ => "invalid_request_error",
        };
        let mut e = Self::new(status, type_, message);
        e.param = param;
        e.code = code;
        if let Some(t) = up_type {
            // An upstream's own error type is kept when its error passes through.
            e.type_ = Cow::Owned(t);
        }
        e
    }

    /// A low-cardinality name for metrics and records.
    pub fn kind(&self) -> &'static str {
        if self.type_ == "insufficient_quota" {
            return "insufficient_quota";
        }
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "too_large",
            429 => "rate_limited",
            502 => "upstream_error",
            503 => "unavailable",
            504 => "upstream_timeout",
            s if s >= 500 => "internal",
            _ => "client_error",
        }
    }

    /// The `{"error": {...}}` object, as sent in a body or an in-band SSE event.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("message".into(), Value::String(self.message.clone()));
        o.insert("type".into(), Value::String(self.type_.clone().into_owned()));
        o.insert("param".into(), self.param.clone().map_or(Value::Null, Value::String));
        o.insert("code".into(), self.code.clone().map_or(Value::Null, Value::String));
        json!({ "error": Value::Object(o) })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_are_normalised() {
        let e = ApiError::from_upstream(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":400,"message":"'messages' is required","type":"invalid_request_error"}}"#,
        );
        let v = e.to_json();
        assert_eq!(v["error"]["message"], "'messages' is required");
        assert_eq!(v["error"]["code"], Value::Null, "a numeric code becomes null");
        let e = ApiError::from_upstream(StatusCode::NOT_FOUND, br#"{"error":"model 'x' not found"}"#);
        assert_eq!(e.to_json()["error"]["message"], "model 'x' not found");
        let e = ApiError::from_upstream(StatusCode::UNPROCESSABLE_ENTITY, b"plain text");
        assert_eq!(e.to_json()["error"]["message"], "plain text");
    }
}
