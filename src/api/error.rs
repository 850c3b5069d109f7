//! The HTTP rendering of [`ApiError`]: its status, `retry-after`, extra headers and the
//! OpenAI error body. The type itself is protocol vocabulary (`crate::protocol::error`).

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::protocol::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp =
            (self.status, [(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (k, v) in self.headers.into_iter().flat_map(|h| *h) {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
