//! A model's generated text read back, a piece at a time, into OpenAI's shapes: content,
//! reasoning, tool calls (see the formats in `tools.rs`).
//!
//! The text runs through, a character at a time: the reasoning splitter (when the template
//! has reasoning tags), then one of these readers —
//! - **plain** (no tools, or a Generic template without the envelope): the text is content.
//! - **tagged** (Hermes, Llama3, Mistral): content, watched for the format's markers
//!   (`<tool_call>`; `<|python_tag|>` or `{"name"`; `[TOOL_CALLS]`). Text that may be the start
//!   of a marker waits for the next piece; whitespace right before a marker is dropped (it
//!   only separated content from the call), and so is whitespace after a call. From a marker
//!   on, the call's JSON goes through the streaming scanner (`json_stream.rs`); the call is
//!   read from it (`name`, `id`, `arguments` — `parameters` for Llama 3 — as keys of the call
//!   object), then the closing tag if the format has one, then content again.
//! - **envelope** (Generic): the output is one JSON object; `response`'s decoded string is
//!   streamed as content (any other JSON value as its compact text), `tool_call` and
//!   `tool_calls[]` are read as calls. Output that does not start with `{` is content.
//!
//! A call's start is sent as soon as its name is known, with its id: the model's own when
//! it gave one before the name, else a fresh one (`call_` and 24 alphanumerics; for Mistral 9
//! alphanumerics, what its template accepts back). An id the model writes after the name
//! cannot be sent any more and is not used. Arguments are streamed as they are generated, as
//! **compact JSON**: the model's text with the whitespace between tokens dropped, everything
//! else (string contents, escapes, numbers) byte for byte. Their fragments concatenated are
//! the final `arguments`, and that is valid JSON whenever the call completes (the scanner
//! checked it). Arguments given as a JSON string are its decoded text; none at all are `{}`.
//!
//! Broken output: a marker whose JSON turns out not to be a call before anything of the call
//! was sent is content after all (marker and text); once a call has started, broken or cut
//! JSON (max_tokens) ends the reading: `incomplete_call` is set, the call is not among
//! `tool_calls` (its deltas were streamed), the rest is dropped. Nothing here panics.
//!
//! `push` and [`parse`] agree: every result is the concatenation of the deltas, and since
//! the work is per character, how the text was cut into pieces changes nothing.

use rand::distr::{Alphanumeric, SampleString};

use super::json_stream::{Ev, Kind, Malformed, Scanner, Slot, Step};
use super::ToolFormat;
use crate::chat::reasoning::{partial_suffix, Piece, ReasoningTags, Splitter};

/// A completed tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The model's id when it gave one before the name; else `call_` + 24 alphanumerics
    /// (9 alphanumerics for Mistral).
    pub id: String,
    pub name: String,
    /// The arguments as compact JSON text (see the module header).
    pub arguments: String,
}

/// One piece of a streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
    /// A tool call begins (OpenAI's first `tool_calls[]` delta of an index).
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments.
    ToolCallArgs {
        index: usize,
        fragment: String,
    },
}

/// The whole answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// A call began but its JSON never completed (cut by max_tokens, or broken).
    pub incomplete_call: bool,
}

/// One-shot: the same as pushing all of `text` and finishing.
pub fn parse(
    format: ToolFormat,
    tools_active: bool,
    generic_envelope: bool,
    reasoning: Option<ReasoningTags>,
    text: &str,
) -> Parsed {
    let mut p = OutputParser::new(format, tools_active, generic_envelope, reasoning);
    p.push(text);
    p.finish()
}

/// What has been said so far, kept as deltas are made.
#[derive(Default)]
struct Sink {
    deltas: Vec<Delta>,
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    open: Option<ToolCall>,
    started: usize,
    incomplete: bool,
}

impl Sink {
    fn content(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.content.push_str(s);
        match self.deltas.last_mut() {
            Some(Delta::Content(c)) => c.push_str(s),
            _ => self.deltas.push(Delta::Content(s.to_owned())),
        }
    }

    fn reasoning(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.reasoning.push_str(s);
        match self.deltas.last_mut() {
            Some(Delta::Reasoning(c)) => c.push_str(s),
            _ => self.deltas.push(Delta::Reasoning(s.to_owned())),
        }
    }

    fn start(&mut self, id: String, name: String) -> usize {
        let index = self.started;
        self.started += 1;
        self.open = Some(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new() });
        self.deltas.push(Delta::ToolCallStart { index, id, name });
        index
    }

    fn args(&mut self, index: usize, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(c) = &mut self.open {
            c.arguments.push_str(s);
        }
        match self.deltas.last_mut() {
            Some(Delta::ToolCallArgs { index: i, fragment }) if *i == index => fragment.push_str(s),
            _ => self.deltas.push(Delta::ToolCallArgs { index, fragment: s.to_owned() }),
        }
    }

    fn complete(&mut self) {
        if let Some(c) = self.open.take() {
            self.calls.push(c);
        }
    }
}

/// What a JSON value means to the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Envelope,
    Calls,
    Call,
    Name,
    Id,
    /// Arguments as JSON (its compact text is captured).
    Args,
    /// Arguments as a JSON string (its decoded text is).
    ArgsStr,
    Response,
    ResponseStr,
    Ignore,
}

/// A call object being read.
#[derive(Default)]
struct CallState {
    name: Option<String>,
    id: Option<String>,
    buf: String,
    /// Arguments generated before the name was known.
    pending: String,
    args_seen: bool,
    args_len: usize,
    index: Option<usize>,
}

/// One JSON document: a tagged format's call (or array of calls), or the generic envelope.
struct Doc {
    scanner: Scanner,
    top: Role,
    roles: Vec<Role>,
    call: Option<CallState>,
    /// The depth at which raw capture (Args, Response) began.
    capture: Option<(usize, Role)>,
    /// The text read since the marker, while nothing of it has been sent: content after all
    /// if the JSON turns out not to be a call.
    raw: String,
    sent: bool,
    mistral_ids: bool,
    evs: Vec<Ev>,
}

enum DocStep {
    More,
    Done,
    /// The JSON broke at this character (not taken).
    Broken,
}

impl Doc {
    fn new(top: Role, raw: &str, mistral_ids: bool) -> Self {
        Doc {
            scanner: Scanner::new(),
            top,
            roles: Vec::new(),
            call: None,
            capture: None,
            raw: raw.to_owned(),
            sent: false,
            mistral_ids,
            evs: Vec::new(),
        }
    }

    /// A call object (or the array of them) is open.
    fn in_call(&self) -> bool {
        self.roles.iter().any(|r| matches!(r, Role::Call | Role::Calls))
    }

    fn feed(&mut self, c: char, sink: &mut Sink) -> DocStep {
        let mut evs = std::mem::take(&mut self.evs);
        evs.clear();
        let step = match self.scanner.feed(c, &mut evs) {
            Ok(s) => s,
            Err(Malformed) => {
                self.evs = evs;
                return DocStep::Broken;
            }
        };
        let mut ok = true;
        for ev in evs.drain(..) {
            if self.event(ev, sink).is_err() {
                ok = false;
                break;
            }
        }
        self.evs = evs;
        if !ok {
            return DocStep::Broken;
        }
        if !self.sent {
            self.raw.push(c);
        }
        match step {
            Step::Done => DocStep::Done,
            Step::More => DocStep::More,
        }
    }

    fn mark_sent(&mut self) {
        self.sent = true;
        self.raw.clear();
    }

    fn event(&mut self, ev: Ev, sink: &mut Sink) -> Result<(), Malformed> {
        match ev {
            Ev::Start { kind, slot } => {
                let role = match (self.roles.last(), &slot) {
                    (None, _) => {
                        let fits = match self.top {
                            Role::Calls => kind == Kind::Array,
                            _ => kind == Kind::Object,
                        };
                        if !fits {
                            return Err(Malformed);
                        }
                        self.top
                    }
                    (Some(Role::Envelope), Slot::Key(k)) => match (k.as_str(), kind) {
                        ("tool_call", Kind::Object) => Role::Call,
                        ("tool_calls", Kind::Array) => Role::Calls,
                        ("response", Kind::String) => Role::ResponseStr,
                        ("response", _) => Role::Response,
                        _ => Role::Ignore,
                    },
                    (Some(Role::Calls), _) if kind == Kind::Object => Role::Call,
                    (Some(Role::Calls), _) => return Err(Malformed),
                    (Some(Role::Call), Slot::Key(k)) => {
                        let call = self.call.get_or_insert_with(CallState::default);
                        match (k.as_str(), kind) {
                            ("name", Kind::String) if call.name.is_none() => Role::Name,
                            ("id", Kind::String) if call.id.is_none() => Role::Id,
                            ("arguments" | "parameters", Kind::String) if !call.args_seen => Role::ArgsStr,
                            ("arguments" | "parameters", _) if !call.args_seen => Role::Args,
                            _ => Role::Ignore,
                        }
                    }
                    (Some(Role::Args), _) => Role::Args,
                    (Some(Role::Response), _) => Role::Response,
                    (Some(_), _) => Role::Ignore,
                };
                match role {
                    Role::Call => self.call = Some(CallState::default()),
                    Role::Name | Role::Id => {
                        if let Some(call) = &mut self.call {
                            call.buf.clear();
                        }
                    }
                    Role::Args | Role::ArgsStr => {
                        if let Some(call) = &mut self.call {
                            call.args_seen = true;
                        }
                    }
                    _ => {}
                }
                if matches!(role, Role::Args | Role::Response) && self.capture.is_none() {
                    self.capture = Some((self.roles.len(), role));
                }
                self.roles.push(role);
            }
            Ev::Char(c) => match self.capture {
                Some((_, Role::Args)) => self.args(c.encode_utf8(&mut [0; 4]), sink),
                Some((_, Role::Response)) => {
                    sink.content(c.encode_utf8(&mut [0; 4]));
                    self.mark_sent();
                }
                _ => {}
            },
            Ev::Str(c) => match self.roles.last() {
                Some(Role::Name | Role::Id) => {
                    if let Some(call) = &mut self.call {
                        call.buf.push(c);
                    }
                }
                Some(Role::ArgsStr) => self.args(c.encode_utf8(&mut [0; 4]), sink),
                Some(Role::ResponseStr) => {
                    sink.content(c.encode_utf8(&mut [0; 4]));
                    self.mark_sent();
                }
                _ => {}
            },
            Ev::End => {
                let role = self.roles.pop().unwrap_or(Role::Ignore);
                if self.capture.is_some_and(|(d, _)| d == self.roles.len()) {
                    self.capture = None;
                }
                match role {
                    Role::Name => {
                        if let Some(call) = &mut self.call {
                            call.name = Some(std::mem::take(&mut call.buf));
                        }
                        self.start_call(sink);
                    }
                    Role::Id => {
                        if let Some(call) = &mut self.call {
                            call.id = Some(std::mem::take(&mut call.buf));
                        }
                    }
                    Role::Call => return self.end_call(sink),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn args(&mut self, s: &str, sink: &mut Sink) {
        let Some(call) = &mut self.call else { return };
        call.args_len += s.len();
        match call.index {
            Some(i) => sink.args(i, s),
            None => call.pending.push_str(s),
        }
    }

    fn start_call(&mut self, sink: &mut Sink) {
        let mistral = self.mistral_ids;
        let Some(call) = &mut self.call else { return };
        let (Some(name), None) = (&call.name, call.index) else { return };
        let id = match &call.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ if mistral => Alphanumeric.sample_string(&mut rand::rng(), 9),
            _ => format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24)),
        };
        let index = sink.start(id, name.clone());
        call.index = Some(index);
        let pending = std::mem::take(&mut call.pending);
        sink.args(index, &pending);
        self.mark_sent();
    }

    fn end_call(&mut self, sink: &mut Sink) -> Result<(), Malformed> {
        let call = self.call.take().unwrap_or_default();
        let Some(index) = call.index else {
            // A call object without a name is not a call.
            return Err(Malformed);
        };
        if call.args_len == 0 {
            sink.args(index, "{}");
        }
        sink.complete();
        Ok(())
    }
}

/// The tagged formats' syntax.
struct Syntax {
    markers: &'static [&'static str],
    top: Role,
    /// Text that closes a call (Hermes' `</tool_call>`).
    close: Option<&'static str>,
}

fn syntax(format: ToolFormat) -> Option<Syntax> {
    match format {
        ToolFormat::Hermes => Some(Syntax { markers: &["<tool_call>"], top: Role::Call, close: Some("</tool_call>") }),
        ToolFormat::Llama3 => Some(Syntax { markers: &["<|python_tag|>", "{\"name\""], top: Role::Call, close: None }),
        ToolFormat::Mistral => Some(Syntax { markers: &["[TOOL_CALLS]"], top: Role::Calls, close: None }),
        ToolFormat::Generic => None,
    }
}

enum Mode {
    Plain,
    /// Content, watched for markers.
    Scan,
    Doc(Box<Doc>),
    /// After a call, before its closing tag: how much of it has come.
    Close(usize),
    /// Generic: before the envelope's `{`.
    EnvelopeStart,
    /// Generic: after the envelope.
    After,
    Dead,
}

/// Reads a model's output as it is generated (see the module header).
pub struct OutputParser {
    reasoning: Option<Splitter>,
    syntax: Option<Syntax>,
    mistral_ids: bool,
    mode: Mode,
    /// Scan: a possible start of a marker.
    pending: String,
    /// Whitespace not yet sent: dropped if a marker follows.
    ws: String,
    /// Whitespace is dropped until something else comes (after a call).
    drop_ws: bool,
    /// `push_bytes`: an incomplete UTF-8 sequence.
    bytes: Vec<u8>,
    sink: Sink,
    flushed: bool,
}

impl OutputParser {
    /// `tools_active`: tools were offered and may be called; `generic_envelope`: decoding was
    /// constrained to the generic JSON envelope (it takes precedence over `format`);
    /// `reasoning`: the template's reasoning tags. With neither tools nor reasoning, `push`
    /// is the identity.
    pub fn new(
        format: ToolFormat,
        tools_active: bool,
        generic_envelope: bool,
        reasoning: Option<ReasoningTags>,
    ) -> Self {
        let syntax = if tools_active && !generic_envelope { syntax(format) } else { None };
        let mode = if generic_envelope {
            Mode::EnvelopeStart
        } else if syntax.is_some() {
            Mode::Scan
        } else {
            Mode::Plain
        };
        OutputParser {
            reasoning: reasoning.map(Splitter::new),
            syntax,
            mistral_ids: format == ToolFormat::Mistral,
            mode,
            pending: String::new(),
            ws: String::new(),
            drop_ws: false,
            bytes: Vec::new(),
            sink: Sink::default(),
            flushed: false,
        }
    }

    /// The deltas `text` adds.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        if !self.flushed {
            self.feed(text);
        }
        std::mem::take(&mut self.sink.deltas)
    }

    fn feed(&mut self, text: &str) {
        match &mut self.reasoning {
            Some(r) => {
                let mut pieces = Vec::new();
                r.push(text, &mut pieces);
                self.pieces(pieces);
            }
            None => self.body(text),
        }
    }

    /// [`push`](Self::push) for raw token bytes: a UTF-8 sequence cut between pieces waits for
    /// its end; invalid bytes read as U+FFFD.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Vec<Delta> {
        self.bytes.extend_from_slice(bytes);
        let mut text = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.bytes[at..]) {
                Ok(s) => {
                    text.push_str(s);
                    at = self.bytes.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.bytes[at..at + good]));
                    at += good;
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            at += n;
                        }
                        None => break,
                    }
                }
            }
        }
        self.bytes.drain(..at);
        self.push(&text)
    }

    /// The end of the output: the deltas held back until now (text that could have begun a
    /// marker or a tag, trailing whitespace). Later pushes are ignored.
    pub fn flush(&mut self) -> Vec<Delta> {
        if self.flushed {
            return Vec::new();
        }
        if !self.bytes.is_empty() {
            self.bytes.clear();
            self.feed("\u{FFFD}");
        }
        if let Some(r) = &mut self.reasoning {
            let mut pieces = Vec::new();
            r.flush(&mut pieces);
            self.pieces(pieces);
        }
        match std::mem::replace(&mut self.mode, Mode::Dead) {
            Mode::Scan => {
                let text = format!("{}{}", std::mem::take(&mut self.ws), std::mem::take(&mut self.pending));
                self.sink.content(&text);
            }
            Mode::Doc(doc) => {
                if self.syntax.is_some() || doc.in_call() {
                    self.sink.incomplete = true;
                }
            }
            Mode::EnvelopeStart => {
                let ws = std::mem::take(&mut self.ws);
                self.sink.content(&ws);
            }
            Mode::Plain | Mode::Close(_) | Mode::After | Mode::Dead => {}
        }
        self.flushed = true;
        std::mem::take(&mut self.sink.deltas)
    }

    /// Flushes and gives the whole answer.
    pub fn finish(mut self) -> Parsed {
        self.flush();
        let s = self.sink;
        let some = |t: String| (!t.is_empty()).then_some(t);
        Parsed {
            content: some(s.content),
            reasoning: some(s.reasoning),
            tool_calls: s.calls,
            incomplete_call: s.incomplete,
        }
    }

    fn pieces(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Reasoning(t) => self.sink.reasoning(&t),
                Piece::Body(t) => self.body(&t),
            }
        }
    }

    fn body(&mut self, text: &str) {
        if let Mode::Plain = self.mode {
            self.sink.content(text);
            return;
        }
        for c in text.chars() {
            self.step(c);
        }
    }

    fn step(&mut self, c: char) {
        match &mut self.mode {
            Mode::Plain => self.sink.content(c.encode_utf8(&mut [0; 4])),
            Mode::Dead => {}
            Mode::Scan => self.scan(c),
            Mode::Close(matched) => {
                let close = self.syntax.as_ref().and_then(|s| s.close).unwrap_or("");
                if *matched == 0 && c.is_whitespace() {
                    return;
                }
                if close[*matched..].starts_with(c) {
                    *matched += c.len_utf8();
                    if *matched == close.len() {
                        self.mode = Mode::Scan;
                        self.drop_ws = true;
                    }
                    return;
                }
                // No closing tag after all: what came of it is content.
                let partial = close[..*matched].to_owned();
                self.mode = Mode::Scan;
                for p in partial.chars() {
                    self.scan(p);
                }
                self.scan(c);
            }
            Mode::EnvelopeStart => {
                if c.is_whitespace() {
                    self.ws.push(c);
                    return;
                }
                if c == '{' {
                    self.ws.clear();
                    let mut doc = Doc::new(Role::Envelope, "", false);
                    doc.feed(c, &mut self.sink);
                    self.mode = Mode::Doc(Box::new(doc));
                } else {
                    let ws = std::mem::take(&mut self.ws);
                    self.sink.content(&ws);
                    self.mode = Mode::Plain;
                    self.sink.content(c.encode_utf8(&mut [0; 4]));
                }
            }
            Mode::After => {
                if self.drop_ws && c.is_whitespace() {
                    return;
                }
                self.drop_ws = false;
                self.sink.content(c.encode_utf8(&mut [0; 4]));
            }
            Mode::Doc(doc) => match doc.feed(c, &mut self.sink) {
                DocStep::More => {}
                DocStep::Done => {
                    self.mode = match &self.syntax {
                        None => Mode::After,
                        Some(Syntax { close: Some(_), .. }) => Mode::Close(0),
                        Some(_) => Mode::Scan,
                    };
                    self.drop_ws = true;
                }
                DocStep::Broken => {
                    if doc.sent {
                        self.sink.incomplete |= doc.in_call();
                        self.mode = Mode::Dead;
                        return;
                    }
                    // Not a call after all: its text is content, and reading goes on from here.
                    let raw = std::mem::take(&mut doc.raw);
                    self.sink.content(&raw);
                    if self.syntax.is_some() {
                        self.mode = Mode::Scan;
                        self.scan(c);
                    } else {
                        self.mode = Mode::Plain;
                        self.sink.content(c.encode_utf8(&mut [0; 4]));
                    }
                }
            },
        }
    }

    /// Content in a tagged format, watched for the markers.
    fn scan(&mut self, c: char) {
        if self.drop_ws && c.is_whitespace() {
            return;
        }
        self.drop_ws = false;
        let Some((markers, top)) = self.syntax.as_ref().map(|s| (s.markers, s.top)) else {
            self.sink.content(c.encode_utf8(&mut [0; 4]));
            return;
        };
        self.pending.push(c);
        if let Some(&m) = markers.iter().find(|m| self.pending.ends_with(**m)) {
            let before = self.pending[..self.pending.len() - m.len()].to_owned();
            self.content(&before);
            self.pending.clear();
            // The whitespace before the marker goes with it: back to content if the JSON
            // turns out not to be a call.
            let dropped = std::mem::take(&mut self.ws);
            // Llama 3's `{"name"` is the start of the call's JSON itself.
            let in_json = m.starts_with('{');
            let raw = if in_json { dropped.clone() } else { format!("{dropped}{m}") };
            let mut doc = Doc::new(top, &raw, self.mistral_ids);
            if in_json {
                for mc in m.chars() {
                    // `{"name"` always scans; a broken start would just be content.
                    if let DocStep::Broken = doc.feed(mc, &mut self.sink) {
                        self.content(&format!("{dropped}{m}"));
                        return;
                    }
                }
            }
            self.mode = Mode::Doc(Box::new(doc));
            return;
        }
        let keep = markers.iter().map(|m| partial_suffix(&self.pending, m)).max().unwrap_or(0);
        if keep < self.pending.len() {
            let text: String = self.pending.drain(..self.pending.len() - keep).collect();
            self.content(&text);
        }
    }

    /// Content with its trailing whitespace held back.
    fn content(&mut self, text: &str) {
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            self.ws.push_str(text);
            return;
        }
        let ws = std::mem::take(&mut self.ws);
        self.sink.content(&ws);
        self.sink.content(trimmed);
        self.ws.push_str(&text[trimmed.len()..]);
    }
}

#[cfg(test)]
mod tests;
