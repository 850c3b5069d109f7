//! Token bytes to client text, incrementally: UTF-8 characters split across tokens are held
//! until complete (never emitted broken), and stop strings are matched across token
//! boundaries. Text is held back only while it could still be the start of a stop string;
//! a matched stop string and everything after it is never emitted.

/// What one push produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// Text safe to send now.
    pub text: String,
    /// The stop string that matched: generation ends here.
    pub stop: Option<String>,
}

pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Valid text held back because its end may begin a stop string.
    held: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream { stops, partial: Vec::new(), held: String::new() }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        self.partial.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: `valid` bytes were just checked.
                    self.held.push_str(std::str::from_utf8(&self.partial[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Bytes that can never be UTF-8: one replacement character each run.
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.partial.drain(..valid + bad);
                        }
                        // An incomplete character: keep its bytes for the next token.
                        None => {
                            self.partial.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        self.release()
    }

    fn release(&mut self) -> Piece {
        if self.stops.is_empty() {
            return Piece { text: std::mem::take(&mut self.held), stop: None };
        }
        // A complete stop string: emit what precedes the earliest one, and stop.
        // (At one place, the first stop listed.)
        let earliest = self.stops.iter().filter_map(|s| Some((self.held.find(s.as_str())?, s))).min_by_key(|m| m.0);
        if let Some((at, stop)) = earliest {
            let text = self.held[..at].to_owned();
            let stop = Some(stop.clone());
            self.held.clear();
            return Piece { text, stop };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self.longest_partial_stop();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Piece { text, stop: None }
    }

    fn longest_partial_stop(&self) -> usize {
        let h = self.held.as_bytes();
        let mut best = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            for len in (best + 1..s.len().min(h.len() + 1)).rev() {
                if h.ends_with(&s[..len]) && self.held.is_char_boundary(h.len() - len) {
                    best = len;
                    break;
                }
            }
        }
        best
    }

    /// At the end of generation (not by a stop string): the held text is released; a
    /// character never completed is dropped rather than sent broken.
    pub fn finish(&mut self) -> String {
        self.partial.clear();
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, Option<String>) {
        let mut t = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = t.push(p);
            out.push_str(&r.text);
            if r.stop.is_some() {
                return (out, r.stop);
            }
        }
        out.push_str(&t.finish());
        (out, None)
    }

    fn stop(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let s = "héllo 世界 🎉";
        let bytes = s.as_bytes();
        let mut t = TextStream::new(vec![]);
        let mut out = String::new();
        for b in bytes {
            let r = t.push(std::slice::from_ref(b));
            // Every emitted piece is whole characters.
            out.push_str(&r.text);
        }
        assert_eq!(out, s);
    }

    #[test]
    fn stop_strings_across_tokens() {
        assert_eq!(run(&["END"], &[b"abc E", b"N", b"D tail"]), ("abc ".into(), stop("END")));
        assert_eq!(run(&["\n\n"], &[b"one\n", b"\ntwo"]), ("one".into(), stop("\n\n")));
        // A partial match that does not complete is released.
        assert_eq!(run(&["END"], &[b"abc EN", b"X"]), ("abc ENX".into(), None));
        // Held text is released at the end.
        assert_eq!(run(&["END"], &[b"abc EN"]), ("abc EN".into(), None));
        // The earliest of several stops wins, and is the one named.
        assert_eq!(run(&["b", "a"], &[b"xxab"]), ("xx".into(), stop("a")));
        // Two matching at one place: the one listed first.
        assert_eq!(run(&["ab", "a"], &[b"xxab"]), ("xx".into(), stop("ab")));
    }

    #[test]
    fn text_is_held_only_while_a_stop_can_complete() {
        let mut t = TextStream::new(vec!["STOP".into()]);
        assert_eq!(t.push(b"hello S").text, "hello ");
        assert_eq!(t.push(b"T").text, "");
        assert_eq!(t.push(b"x").text, "STx");
    }
}
