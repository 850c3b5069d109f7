//! An incremental NDJSON parser (the framing of Ollama's streamed replies, as [`super::sse`]
//! is of OpenAI's): bytes in, one line out as soon as its newline arrives; never buffers
//! more than the line not yet complete.

use bytes::{Bytes, BytesMut};

#[derive(Default)]
pub struct NdjsonParser {
    buf: BytesMut,
    /// How far `buf` is known to hold no newline.
    scanned: usize,
}

impl NdjsonParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for a line not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete, non-blank line, without its `\n` or `\r\n`.
    pub fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) else {
                self.scanned = self.buf.len();
                return None;
            };
            let nl = self.scanned + i;
            self.scanned = 0;
            let mut line = self.buf.split_to(nl + 1).freeze();
            line.truncate(if nl > 0 && line[nl - 1] == b'\r' { nl - 1 } else { nl });
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    /// At end of input: a last line without its newline still counts.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        let rest = self.buf.split().freeze();
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &mut NdjsonParser) -> Vec<Bytes> {
        std::iter::from_fn(|| p.next_line()).collect()
    }

    #[test]
    fn lines_split_anywhere() {
        let input: &[u8] = b"{\"a\":1}\n{\"b\":\"\xc3\xa9\"}\r\n\r\n  \n{\"c\":[1,2]}\r\n";
        let want = [&b"{\"a\":1}"[..], "{\"b\":\"é\"}".as_bytes(), b"{\"c\":[1,2]}"];
        for split in 0..=input.len() {
            let mut p = NdjsonParser::default();
            p.push(&input[..split]);
            let mut got = lines(&mut p);
            p.push(&input[split..]);
            got.extend(lines(&mut p));
            assert_eq!(got, want, "split at {split}");
            assert_eq!((p.buffered(), p.finish()), (0, None));
        }
    }

    #[test]
    fn a_last_line_without_its_newline_counts() {
        let mut p = NdjsonParser::default();
        p.push(b"{\"a\":1}\n{\"b\":");
        assert_eq!(lines(&mut p), vec![Bytes::from_static(b"{\"a\":1}")]);
        p.push(b"2}");
        assert_eq!((lines(&mut p).len(), p.buffered()), (0, 7));
        assert_eq!(p.finish(), Some(Bytes::from_static(b"{\"b\":2}")));
        p.push(b" \r\n\t");
        assert_eq!((lines(&mut p).len(), p.finish()), (0, None));
    }
}
