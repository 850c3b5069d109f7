//! An incremental Server-Sent Events parser: bytes in, events out, one event as soon as its
//! blank line arrives; never buffers a whole response.

use bytes::{Buf, BytesMut};

/// One parsed event; only `data` matters to the OpenAI protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub data: String,
}

#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
    data: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffered bytes hold one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let nl = memchr::memchr(b'\n', &self.buf)?;
            let mut line = &self.buf[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let ev = if line.is_empty() {
                self.data.take().map(|data| SseEvent { data })
            } else {
                if line[0] != b':' {
                    let (field, value) = match memchr::memchr(b':', line) {
                        Some(i) => {
                            let v = &line[i + 1..];
                            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                        }
                        None => (line, &b""[..]),
                    };
                    if field == b"data" {
                        let v = String::from_utf8_lossy(value);
                        match &mut self.data {
                            Some(d) => {
                                d.push('\n');
                                d.push_str(&v);
                            }
                            None => self.data = Some(v.into_owned()),
                        }
                    }
                }
                None
            };
            self.buf.advance(nl + 1);
            if ev.is_some() {
                return ev;
            }
        }
    }

    /// At end of input: an event not closed by a blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            self.buf.extend_from_slice(b"\n\n");
            return self.next_event();
        }
        self.data.take().map(|data| SseEvent { data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let input = b"data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        for split in 0..input.len() {
            let mut p = SseParser::default();
            let mut out = Vec::new();
            p.push(&input[..split]);
            while let Some(e) = p.next_event() {
                out.push(e.data);
            }
            p.push(&input[split..]);
            while let Some(e) = p.next_event() {
                out.push(e.data);
            }
            assert_eq!(out, vec!["{\"a\":1}", "x\ny", "[DONE]"], "split at {split}");
        }
    }
}
