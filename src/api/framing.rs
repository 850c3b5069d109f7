//! Bodies for the answers hyper writes itself. A request whose framing hyper cannot parse
//! (not HTTP, a URL over its limit, a header too large or with too many fields) never
//! reaches the router: hyper answers it `400`, `414` or `431` with an empty body and closes.
//! [`Framed`] sits between hyper and the socket and gives those answers what every other
//! error of the gateway has: an OpenAI error body naming the problem, `content-type`, and an
//! `x-request-id`.
//!
//! It recognises hyper's own answers by their head: an HTTP/1 `4xx`/`5xx` status line
//! without `x-request-id` (every answer the router makes carries one, see `conn`). Every
//! other write passes through untouched; the check reads the first ten bytes of a write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::error::ApiError;

/// A connection's socket, whose hyper-made error answers are given bodies.
pub struct Framed<T> {
    inner: T,
    /// An answer being written in place of hyper's: its bytes, how many are written, and the
    /// length of the write it replaces (reported to hyper once it is all out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> Framed<T> {
    pub fn new(inner: T) -> Self {
        Framed { inner, pending: None }
    }
}

/// The answer to write instead of `head`, when `head` is one hyper made for a request it
/// could not parse.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") || !matches!(head[9], b'4' | b'5') {
        return None;
    }
    let end = memchr::memmem::find(head, b"\r\n\r\n")?;
    let head = &head[..end];
    // hyper writes header names as `http` holds them: lower case.
    if memchr::memmem::find(head, b"x-request-id:").is_some() {
        return None;
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let (message, code) = match &status_line[9..12] {
        b"414" => ("The request's URL is too long.", "uri_too_long"),
        b"431" => ("The request's header is too large, or has too many fields.", "header_too_large"),
        b"400" => (
            "The request is not valid HTTP/1.1: its request line, a header or its framing could not be parsed.",
            "invalid_http",
        ),
        _ => ("The request could not be read.", "invalid_http"),
    };
    let body = ApiError::invalid_request(message, None).with_code(code).to_json().to_string();
    let rid = format!("req_{}", uuid::Uuid::new_v4().simple());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\n");
    out.extend_from_slice(format!("content-length: {}\r\nx-request-id: {rid}\r\n", body.len()).as_bytes());
    for l in lines {
        let name = l.split(|&b| b == b':').next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(name.as_slice(), b"content-length" | b"connection" | b"content-type") {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<T: AsyncWrite + Unpin> Framed<T> {
    /// Writes the pending answer on; ready with the length of the write it replaced.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, replaces)) = &mut self.pending else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *replaces;
        self.pending = None;
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => self.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.pending.is_some() || first.is_some_and(|b| rewrite(b).is_some()) {
            // The head alone: hyper writes the rest (nothing, for its own answers) after it.
            let head = first.map(|b| &b[..]).unwrap_or_default();
            return self.poll_write(cx, head);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            if self.pending.is_some() {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_error_answers_are_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 18:21:34 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_431).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("\r\ndate: Thu, 03 Dec 2026 18:21:34 GMT"), "{head}");
        assert!(head.contains("\r\nx-request-id: req_"), "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "header_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        // The router's own answers carry a request id; successes are never looked into.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: req_1\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite(own).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"data: {\"x\": 1}\n\n").is_none());
    }
}
