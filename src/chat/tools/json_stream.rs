//! A streaming JSON scanner, fed one character at a time, so that a document cut anywhere
//! reads the same as the whole of it.
//!
//! It checks the syntax as it goes (RFC 8259: no trailing commas, no leading zeros, no raw
//! control characters in strings, only the standard escapes) and reports what it sees as
//! [`Ev`]ents: a value's start (with the key or index it sits under), its end, every
//! significant character (whitespace outside strings is dropped, so the `Char`s of a value
//! concatenated are its compact text, byte for byte as generated otherwise), and the decoded
//! characters of string values (escapes resolved, `\uD83D\uDE00` surrogate pairs joined, a lone
//! surrogate read as U+FFFD). Keys are decoded and handed over with the value that follows them.
//!
//! The root must be an object or an array, so the document always ends on a character it
//! consumed (`}` or `]`), never on the one after a number.

/// Nesting deeper than this is refused (no model's tool call needs it; it bounds memory).
const MAX_DEPTH: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Object,
    Array,
    String,
    Number,
    Literal,
}

/// Where a value sits in its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Root,
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ev {
    /// A value begins; the `Char` of its first character follows.
    Start { kind: Kind, slot: Slot },
    /// A significant character of the document.
    Char(char),
    /// A decoded character of the string value being read (never of a key).
    Str(char),
    /// The innermost open value ended (after the `Char` of its last character).
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    More,
    /// The root value is complete; the scanner takes nothing more.
    Done,
}

/// The text is not JSON (or nests too deep); the character that showed it was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Malformed;

#[derive(Clone, Copy, Debug)]
enum ObjSt {
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,`: a key.
    Key,
    Colon,
    Value,
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug)]
enum ArrSt {
    ValueOrEnd,
    Value,
    CommaOrEnd,
}

#[derive(Clone, Copy, Debug)]
enum Frame {
    Object(ObjSt),
    Array(ArrSt, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn next(self, c: char) -> Option<Num> {
        use Num::*;
        let digit = c.is_ascii_digit();
        match (self, c) {
            (Minus, '0') => Some(Zero),
            (Minus, _) if digit => Some(Int),
            (Zero | Int | Frac, 'e' | 'E') => Some(E),
            (Zero | Int, '.') => Some(Dot),
            (Int, _) if digit => Some(Int),
            (Dot | Frac, _) if digit => Some(Frac),
            (E, '+' | '-') => Some(ESign),
            (E | ESign | Exp, _) if digit => Some(Exp),
            _ => None,
        }
    }

    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Clone, Copy, Debug)]
enum Esc {
    None,
    Backslash,
    Hex { n: u8, acc: u32 },
}

#[derive(Clone, Copy, Debug)]
enum Scalar {
    None,
    Str { key: bool, esc: Esc, high: Option<u32> },
    Num(Num),
    Lit { word: &'static str, at: usize },
}

#[derive(Debug)]
pub(super) struct Scanner {
    stack: Vec<Frame>,
    scalar: Scalar,
    /// The key being read, or read and waiting for its value.
    key: String,
    done: bool,
}

impl Scanner {
    pub(super) fn new() -> Self {
        Scanner { stack: Vec::new(), scalar: Scalar::None, key: String::new(), done: false }
    }

    pub(super) fn feed(&mut self, c: char, out: &mut Vec<Ev>) -> Result<Step, Malformed> {
        if self.done {
            return Err(Malformed);
        }
        match self.scalar {
            Scalar::None => {}
            Scalar::Str { key, esc, high } => return self.string(c, key, esc, high, out),
            Scalar::Num(n) => match n.next(c) {
                Some(n) => {
                    self.scalar = Scalar::Num(n);
                    out.push(Ev::Char(c));
                    return Ok(Step::More);
                }
                None if n.complete() => {
                    self.scalar = Scalar::None;
                    out.push(Ev::End);
                    // The character after a number belongs to its parent: read on below.
                }
                None => return Err(Malformed),
            },
            Scalar::Lit { word, at } => {
                if word[at..].starts_with(c) {
                    out.push(Ev::Char(c));
                    if at + 1 == word.len() {
                        self.scalar = Scalar::None;
                        out.push(Ev::End);
                    } else {
                        self.scalar = Scalar::Lit { word, at: at + 1 };
                    }
                    return Ok(Step::More);
                }
                return Err(Malformed);
            }
        }
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            return Ok(Step::More);
        }
        match self.stack.last().copied() {
            None => match c {
                '{' | '[' => self.start(c, Slot::Root, out),
                _ => Err(Malformed),
            },
            Some(Frame::Object(st)) => match (st, c) {
                (ObjSt::KeyOrEnd | ObjSt::Key, '"') => {
                    self.key.clear();
                    self.scalar = Scalar::Str { key: true, esc: Esc::None, high: None };
                    out.push(Ev::Char(c));
                    Ok(Step::More)
                }
                (ObjSt::KeyOrEnd | ObjSt::CommaOrEnd, '}') => self.close(c, out),
                (ObjSt::Colon, ':') => {
                    self.set_top(Frame::Object(ObjSt::Value));
                    out.push(Ev::Char(c));
                    Ok(Step::More)
                }
                (ObjSt::Value, _) => {
                    let key = std::mem::take(&mut self.key);
                    self.start(c, Slot::Key(key), out)
                }
                (ObjSt::CommaOrEnd, ',') => {
                    self.set_top(Frame::Object(ObjSt::Key));
                    out.push(Ev::Char(c));
                    Ok(Step::More)
                }
                _ => Err(Malformed),
            },
            Some(Frame::Array(st, next)) => match (st, c) {
                (ArrSt::ValueOrEnd | ArrSt::CommaOrEnd, ']') => self.close(c, out),
                (ArrSt::ValueOrEnd | ArrSt::Value, _) => self.start(c, Slot::Index(next), out),
                (ArrSt::CommaOrEnd, ',') => {
                    self.set_top(Frame::Array(ArrSt::Value, next));
                    out.push(Ev::Char(c));
                    Ok(Step::More)
                }
                _ => Err(Malformed),
            },
        }
    }

    fn set_top(&mut self, f: Frame) {
        if let Some(top) = self.stack.last_mut() {
            *top = f;
        }
    }

    /// A value starts with `c` in `slot`; the parent now waits for what follows it.
    fn start(&mut self, c: char, slot: Slot, out: &mut Vec<Ev>) -> Result<Step, Malformed> {
        let (kind, scalar) = match c {
            '{' => (Kind::Object, Scalar::None),
            '[' => (Kind::Array, Scalar::None),
            '"' => (Kind::String, Scalar::Str { key: false, esc: Esc::None, high: None }),
            '-' => (Kind::Number, Scalar::Num(Num::Minus)),
            '0' => (Kind::Number, Scalar::Num(Num::Zero)),
            '1'..='9' => (Kind::Number, Scalar::Num(Num::Int)),
            't' => (Kind::Literal, Scalar::Lit { word: "true", at: 1 }),
            'f' => (Kind::Literal, Scalar::Lit { word: "false", at: 1 }),
            'n' => (Kind::Literal, Scalar::Lit { word: "null", at: 1 }),
            _ => return Err(Malformed),
        };
        if matches!(kind, Kind::Object | Kind::Array) && self.stack.len() >= MAX_DEPTH {
            return Err(Malformed);
        }
        match self.stack.last().copied() {
            Some(Frame::Object(_)) => self.set_top(Frame::Object(ObjSt::CommaOrEnd)),
            Some(Frame::Array(_, next)) => self.set_top(Frame::Array(ArrSt::CommaOrEnd, next + 1)),
            None => {}
        }
        out.push(Ev::Start { kind, slot });
        out.push(Ev::Char(c));
        match kind {
            Kind::Object => self.stack.push(Frame::Object(ObjSt::KeyOrEnd)),
            Kind::Array => self.stack.push(Frame::Array(ArrSt::ValueOrEnd, 0)),
            _ => self.scalar = scalar,
        }
        Ok(Step::More)
    }

    fn close(&mut self, c: char, out: &mut Vec<Ev>) -> Result<Step, Malformed> {
        self.stack.pop();
        out.push(Ev::Char(c));
        out.push(Ev::End);
        Ok(self.after_value())
    }

    fn after_value(&mut self) -> Step {
        if self.stack.is_empty() {
            self.done = true;
            Step::Done
        } else {
            Step::More
        }
    }

    fn string(
        &mut self,
        c: char,
        key: bool,
        esc: Esc,
        high: Option<u32>,
        out: &mut Vec<Ev>,
    ) -> Result<Step, Malformed> {
        let mut high = high;
        let mut esc = esc;
        let mut decoded: Option<char> = None;
        match esc {
            Esc::None => match c {
                '"' => {
                    if high.take().is_some() {
                        self.decoded(key, char::REPLACEMENT_CHARACTER, out);
                    }
                    out.push(Ev::Char(c));
                    self.scalar = Scalar::None;
                    if key {
                        self.set_top(Frame::Object(ObjSt::Colon));
                        return Ok(Step::More);
                    }
                    out.push(Ev::End);
                    return Ok(self.after_value());
                }
                '\\' => esc = Esc::Backslash,
                c if (c as u32) < 0x20 => return Err(Malformed),
                c => decoded = Some(c),
            },
            Esc::Backslash => {
                esc = Esc::None;
                decoded = Some(match c {
                    '"' | '\\' | '/' => c,
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        esc = Esc::Hex { n: 0, acc: 0 };
                        '\0'
                    }
                    _ => return Err(Malformed),
                });
                if matches!(esc, Esc::Hex { .. }) {
                    decoded = None;
                }
            }
            Esc::Hex { n, acc } => {
                let d = c.to_digit(16).ok_or(Malformed)?;
                let acc = acc * 16 + d;
                if n < 3 {
                    esc = Esc::Hex { n: n + 1, acc };
                } else {
                    esc = Esc::None;
                    match acc {
                        0xD800..=0xDBFF => {
                            if high.replace(acc).is_some() {
                                self.decoded(key, char::REPLACEMENT_CHARACTER, out);
                            }
                        }
                        0xDC00..=0xDFFF => {
                            let ch = match high.take() {
                                Some(h) => char::from_u32(0x10000 + ((h - 0xD800) << 10) + (acc - 0xDC00)),
                                None => None,
                            };
                            self.decoded(key, ch.unwrap_or(char::REPLACEMENT_CHARACTER), out);
                        }
                        _ => {
                            if high.take().is_some() {
                                self.decoded(key, char::REPLACEMENT_CHARACTER, out);
                            }
                            self.decoded(key, char::from_u32(acc).unwrap_or(char::REPLACEMENT_CHARACTER), out);
                        }
                    }
                }
            }
        }
        if let Some(ch) = decoded {
            // Anything but the low half of a pair leaves a waiting high half alone.
            if high.take().is_some() {
                self.decoded(key, char::REPLACEMENT_CHARACTER, out);
            }
            self.decoded(key, ch, out);
        }
        out.push(Ev::Char(c));
        self.scalar = Scalar::Str { key, esc, high };
        Ok(Step::More)
    }

    fn decoded(&mut self, key: bool, ch: char, out: &mut Vec<Ev>) {
        if key {
            self.key.push(ch);
        } else {
            out.push(Ev::Str(ch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(Vec<Ev>, Step), Malformed> {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        let mut step = Step::More;
        for c in text.chars() {
            step = s.feed(c, &mut out)?;
        }
        Ok((out, step))
    }

    fn compact(evs: &[Ev]) -> String {
        evs.iter().filter_map(|e| if let Ev::Char(c) = e { Some(*c) } else { None }).collect()
    }

    fn decoded(evs: &[Ev]) -> String {
        evs.iter().filter_map(|e| if let Ev::Str(c) = e { Some(*c) } else { None }).collect()
    }

    #[test]
    fn valid_documents_complete_and_compact() {
        let cases = [
            (r#"{"a": 1, "b": [true, false, null, -0.5e+3, "x"]}"#, r#"{"a":1,"b":[true,false,null,-0.5e+3,"x"]}"#),
            ("[]", "[]"),
            ("{ }", "{}"),
            (r#"{"k" : { "n" : [ [ ] , { } ] } }"#, r#"{"k":{"n":[[],{}]}}"#),
            (r#"{"s": "a b\n"}"#, r#"{"s":"a b\n"}"#),
        ];
        for (text, want) in cases {
            let (evs, step) = scan(text).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(step, Step::Done, "{text}");
            assert_eq!(compact(&evs), want);
            let starts = evs.iter().filter(|e| matches!(e, Ev::Start { .. })).count();
            let ends = evs.iter().filter(|e| matches!(e, Ev::End)).count();
            assert_eq!(starts, ends, "{text}");
        }
    }

    #[test]
    fn malformed_documents_are_refused() {
        for text in [
            "1",
            r#""a""#,
            "{,}",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[01]",
            "[1.]",
            "[-]",
            "[tru]",
            "[nul1]",
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            // Nothing is taken after the end, whitespace included: the caller stops at Done.
            "[] ",
            "{}}",
        ] {
            assert!(scan(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn strings_decode_escapes_and_surrogate_pairs() {
        let (evs, _) = scan(r#"["a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00|\ud83d|\ude00|\u0041"]"#).unwrap();
        assert_eq!(decoded(&evs), "a\"\\/\u{8}\u{c}\n\r\té😀|\u{FFFD}|\u{FFFD}|A");
    }

    #[test]
    fn keys_come_with_their_values() {
        let (evs, _) = scan(r#"{"na\u006de": "x", "list": [1, {"k": null}]}"#).unwrap();
        let slots: Vec<Slot> =
            evs.iter().filter_map(|e| if let Ev::Start { slot, .. } = e { Some(slot.clone()) } else { None }).collect();
        assert_eq!(
            slots,
            vec![
                Slot::Root,
                Slot::Key("name".into()),
                Slot::Key("list".into()),
                Slot::Index(0),
                Slot::Index(1),
                Slot::Key("k".into())
            ]
        );
        // Key characters are not decoded string content.
        assert_eq!(decoded(&evs), "x");
    }

    #[test]
    fn a_number_ends_at_the_character_after_it() {
        let (evs, _) = scan("[12,3]").unwrap();
        let pos_end = evs.iter().position(|e| *e == Ev::End).unwrap();
        assert_eq!(evs[pos_end - 1], Ev::Char('2'));
        assert_eq!(evs[pos_end + 1], Ev::Char(','));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(scan(&deep).is_err());
        assert!(scan(&"[".repeat(MAX_DEPTH)).is_ok());
    }
}
