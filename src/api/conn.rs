//! Connection hygiene for every answer, as one middleware ([`hygiene`]):
//! - An answer given before the request's body was read to its end (a 401, 404, 405 or 413
//!   answered from the headers alone) says `Connection: close` on HTTP/1.x: hyper cannot
//!   reuse a connection whose unread body is still on the wire, and without the header the
//!   client would send its next request on a connection that is about to close, and lose it.
//! - Every answer carries `x-request-id`: the client's own (when it is a usable id), else a
//!   fresh one, chosen here and written into the request's headers, where the handlers read
//!   the same id for their records.
//!
//! And `tollgate serve` raises the process's soft open-file limit to its hard limit at start
//! ([`raise_open_file_limit`]): each client connection is a descriptor, and the common soft
//! limit of 1,024 stops a busy gateway accepting long before the machine runs out.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::inference::{request_id, REQUEST_ID_HEADER};

pub async fn hygiene(mut req: Request, next: Next) -> Response {
    // The one place the request's id is chosen: the handlers read it back from the headers.
    let rid = HeaderValue::from_str(&request_id(req.headers())).ok();
    if let Some(v) = &rid {
        if req.headers().get(REQUEST_ID_HEADER) != Some(v) {
            req.headers_mut().insert(REQUEST_ID_HEADER, v.clone());
        }
    }
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let read = (http1 && has_body).then(|| Arc::new(AtomicBool::new(false)));
    let req = match &read {
        None => req,
        Some(read) => {
            let (parts, body) = req.into_parts();
            Request::from_parts(parts, Body::new(Tracked { inner: body, read: read.clone() }))
        }
    };
    let mut resp = next.run(req).await;
    if read.is_some_and(|r| !r.load(Ordering::Relaxed)) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(v) = rid {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// The request body, noting when it has been read to its end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The process's soft open-file limit (after [`raise_open_file_limit`]); 1,024 when it cannot
/// be read.
pub fn open_file_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the plain struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    l.rlim_cur
}

/// Raises the soft limit on open files to the hard limit (a failure is only logged: the
/// gateway still runs, with fewer connections).
pub fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write the plain struct passed by pointer.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 || l.rlim_cur >= l.rlim_max {
            return;
        }
        let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            tracing::debug!(from = l.rlim_cur, to = l.rlim_max, "raised the open-file limit");
        } else {
            tracing::warn!(soft = l.rlim_cur, "could not raise the open-file limit");
        }
    }
}
