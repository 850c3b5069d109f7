//! The output side of a stream: each choice's text (and each tool call's arguments) is a
//! channel that holds back only what may still be the start of a finding (the last word, a
//! run of digit groups, an assignment's keyword, a private key's header line) and never
//! more than [`WINDOW`] characters; the rest goes on at once, redacted. A private key is
//! caught at its header line and nothing is sent from there to its footer; a word longer
//! than the window that starts like a token is withheld to its end. A `block` finding ends
//! the stream with the endpoint's own error event.
//!
//! Chunks keep their number and order: a chunk carries what its channel let go of (possibly
//! nothing), and a choice's last chunk (`finish_reason`) carries the rest. A stream that
//! ends without one gets a last chunk with the rest before its end or its error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::StreamExt;
use regex::Regex;
use serde_json::{Map, Value};

use super::detect::{self, Scanner, PRIVATE_KEY};
use super::{push_marker, Action, Direction, Hits, Policy};
use crate::protocol::error::ApiError;

/// A stream chunk: a chat completion chunk, or a Responses event passed through.
type Chunk = Map<String, Value>;

/// The most characters a channel holds back.
pub const WINDOW: usize = 256;

/// An assignment still being written at the end of the text: a keyword, its separator and
/// what there is of its value (a stream holds it back until the value is complete).
static OPEN_ASSIGNMENT: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(
        r#"(?i)["']?(?:password|passwd|pwd|passphrase|secret|api[_\- ]?key|apikey|token|bearer|private_key|accountkey|sharedaccesskey|aws_)[a-z_]*["'*_`]*\s*(?::=|=>|:|=)?[*_`]*\s*(?:"[^"\r\n\\]*|'[^'\r\n\\]*|`[^`\r\n]*|[^\s"',;()\[\]{}<>`]*)$"#,
    )
    .expect("the open-assignment pattern is valid")
});

/// How tokens begin, and the detector each belongs to: a word longer than the window that
/// starts so is withheld whole.
static TOKEN_START: std::sync::LazyLock<(Regex, Vec<usize>)> = std::sync::LazyLock::new(|| {
    let starts: &[(&str, &str)] = &[
        ("eyJ", "jwt"),
        ("AKIA", "aws_access_key_id"),
        ("ASIA", "aws_access_key_id"),
        ("gh[pousr]_", "github_token"),
        ("github_pat_", "github_token"),
        ("glpat-", "gitlab_token"),
        ("xox[abposr]-", "slack_token"),
        ("sk-ant-", "anthropic_key"),
        ("sk-", "openai_key"),
        ("[sr]k_live_", "stripe_key"),
        ("AIza", "gcp_api_key"),
        ("hf_", "huggingface_token"),
    ];
    let src = starts.iter().map(|(p, _)| format!("({p})")).collect::<Vec<_>>().join("|");
    let re = Regex::new(&format!(r"(?-u:\b)(?:{src})")).expect("the token starts are valid patterns");
    let ds = starts.iter().map(|(_, d)| detect::index(d).expect("a known detector")).collect();
    (re, ds)
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Content,
    Reasoning,
    /// `reasoning`, as vLLM and Ollama name it.
    ReasoningAlt,
    Text,
    Arguments(u64),
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Content => "content",
            Field::Reasoning => "reasoning_content",
            Field::ReasoningAlt => "reasoning",
            Field::Text => "text",
            Field::Arguments(_) => "arguments",
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Skip {
    #[default]
    None,
    /// Inside a private key: nothing is sent until its footer.
    Pem,
    /// Inside a long word that began as a token: nothing is sent until whitespace.
    Word,
}

#[derive(Debug, Default)]
struct Channel {
    pending: String,
    skip: Skip,
}

/// The guard of one stream.
pub struct Guard {
    policy: Policy,
    hits: Arc<Mutex<Hits>>,
    channels: Vec<((u64, Field), Channel)>,
    blocked: Option<usize>,
    /// Some detector redacts or blocks (a log-only policy changes nothing that is sent).
    acts: bool,
    /// Events added to a passed-through Responses stream so far (later ones are numbered on).
    shift: u64,
    /// The stream is a passed-through Responses stream (its parts end with `.done` events).
    native: bool,
    /// `id`, `object`, `created`, `model` of the last chunk (for a last chunk of its own).
    template: Map<String, Value>,
}

impl Guard {
    pub fn new(policy: Policy, hits: Arc<Mutex<Hits>>) -> Self {
        let acts = (0..detect::COUNT).any(|d| acts(policy.action(d)));
        Guard { policy, hits, channels: Vec::new(), blocked: None, acts, shift: 0, native: false, template: Map::new() }
    }

    /// Passes one chunk through its channels: a chunk to send before it, if any; a `block`
    /// finding gives the detector.
    pub fn chunk(&mut self, chunk: &mut Chunk) -> Result<Option<Chunk>, usize> {
        if chunk.get("type").is_some_and(Value::is_string) {
            return self.native(chunk);
        }
        for k in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(v) = chunk.get(k) {
                self.template.insert(k.into(), v.clone());
            }
        }
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else { return Ok(None) };
        for c in choices.iter_mut().filter_map(Value::as_object_mut) {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
            // Token log-probabilities would spell out what is held back or redacted.
            if self.acts && c.get("logprobs").is_some_and(|l| !l.is_null()) {
                c.insert("logprobs".into(), Value::Null);
            }
            if let Some(Value::String(t)) = c.get_mut("text") {
                *t = self.push(idx, Field::Text, t);
            }
            if let Some(Value::Object(delta)) = c.get_mut("delta") {
                for f in [Field::Content, Field::Reasoning, Field::ReasoningAlt] {
                    if let Some(Value::String(t)) = delta.get_mut(f.key()) {
                        *t = self.push(idx, f, t);
                    }
                }
                if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                    for call in calls.iter_mut() {
                        let ti = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some(Value::String(a)) = call.pointer_mut("/function/arguments") {
                            *a = self.push(idx, Field::Arguments(ti), a);
                        }
                    }
                }
            }
            if finished {
                self.flush_into(idx, c);
            }
        }
        match self.blocked {
            Some(d) => Err(d),
            None => Ok(None),
        }
    }

    /// A chunk with what every channel still holds (a stream that ended without its
    /// choices' last chunks), or `None` when they hold nothing.
    pub fn rest(&mut self) -> Option<Chunk> {
        if self.native {
            // A Responses stream cut before a part's end: what was held is not sent (the
            // client gets the error event that ends it).
            self.channels.clear();
            return None;
        }
        let mut indices: Vec<u64> = self.channels.iter().map(|((i, _), _)| *i).collect();
        indices.dedup();
        let mut choices = Vec::new();
        for idx in indices {
            let mut c = Map::new();
            c.insert("index".into(), idx.into());
            c.insert("delta".into(), Value::Object(Map::new()));
            c.insert("finish_reason".into(), Value::Null);
            if self.flush_into(idx, &mut c) {
                choices.push(Value::Object(c));
            }
        }
        if choices.is_empty() {
            return None;
        }
        let mut chunk = self.template.clone();
        chunk.insert("choices".into(), Value::Array(choices));
        Some(chunk)
    }

    /// Empties the channels of choice `idx` into its chunk `c`; whether anything was added.
    fn flush_into(&mut self, idx: u64, c: &mut Map<String, Value>) -> bool {
        let mut added = false;
        let fields: Vec<Field> = self.channels.iter().filter(|((i, _), _)| *i == idx).map(|((_, f), _)| *f).collect();
        for f in fields {
            let rest = self.settle(idx, f, true);
            if rest.is_empty() {
                continue;
            }
            added = true;
            let append = |slot: &mut Value| match slot {
                Value::String(s) => s.push_str(&rest),
                other => *other = Value::String(rest.clone()),
            };
            match f {
                Field::Text => append(c.entry("text").or_insert(Value::Null)),
                Field::Content | Field::Reasoning | Field::ReasoningAlt => {
                    let delta = c.entry("delta").or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(d) = delta {
                        append(d.entry(f.key()).or_insert(Value::Null));
                    }
                }
                Field::Arguments(ti) => {
                    let delta = c.entry("delta").or_insert_with(|| Value::Object(Map::new()));
                    let Value::Object(d) = delta else { continue };
                    let calls = d.entry("tool_calls").or_insert_with(|| Value::Array(Vec::new()));
                    let Value::Array(calls) = calls else { continue };
                    let at = calls.iter().position(|c| c.get("index").and_then(Value::as_u64) == Some(ti));
                    match at.and_then(|i| calls[i].pointer_mut("/function/arguments")) {
                        Some(slot) => append(slot),
                        None => calls.push(serde_json::json!({"index": ti, "function": {"arguments": rest}})),
                    }
                }
            }
        }
        added
    }

    /// A Responses event passed through from an upstream. Its deltas (output text, reasoning,
    /// call arguments) go through channels as a chat stream's do, one per output item and part;
    /// a part's `.done` event is preceded by a delta with what its channel still held (the
    /// events after it are numbered on), and its whole text, like every item, part and
    /// response object, is redacted in place (counted once, on the deltas).
    fn native(&mut self, event: &mut Chunk) -> Result<Option<Chunk>, usize> {
        if let Some(n) = event.get("sequence_number").and_then(Value::as_u64) {
            event.insert("sequence_number".into(), (n + self.shift).into());
        }
        self.native = true;
        if self.acts {
            if let Some(l) = event.get_mut("logprobs") {
                *l = Value::Array(Vec::new());
            }
        }
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let out = event.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        let part = event.get("content_index").and_then(Value::as_u64).unwrap_or(0);
        let idx = out << 16 | part;
        let field = match kind.as_str() {
            k if k.starts_with("response.output_text.") => Some((Field::Content, "response.output_text.delta")),
            k if k.starts_with("response.reasoning_text.") => Some((Field::Reasoning, "response.reasoning_text.delta")),
            k if k.starts_with("response.reasoning_summary_text.") => {
                Some((Field::ReasoningAlt, "response.reasoning_summary_text.delta"))
            }
            k if k.starts_with("response.function_call_arguments.") => {
                Some((Field::Arguments(0), "response.function_call_arguments.delta"))
            }
            _ => None,
        };
        let mut extra = None;
        if let Some((f, delta_kind)) = field {
            if kind.ends_with(".delta") {
                if let Some(Value::String(d)) = event.get_mut("delta") {
                    *d = self.push(idx, f, d);
                }
            } else if kind.ends_with(".done") {
                let rest = self.settle(idx, f, true);
                if !rest.is_empty() {
                    let mut d = Map::new();
                    d.insert("type".into(), delta_kind.into());
                    for k in ["item_id", "output_index", "content_index", "summary_index"] {
                        if let Some(v) = event.get(k) {
                            d.insert(k.into(), v.clone());
                        }
                    }
                    d.insert("delta".into(), Value::String(rest));
                    if let Some(n) = event.get("sequence_number").and_then(Value::as_u64) {
                        d.insert("sequence_number".into(), n.into());
                        event.insert("sequence_number".into(), (n + 1).into());
                        self.shift += 1;
                    }
                    extra = Some(d);
                }
            }
        }
        // Whole texts: redacted in place; their findings were counted on the deltas.
        let mut uncounted = Hits::default();
        let mut blocked = self.blocked;
        for key in ["text", "arguments", "part", "item"] {
            if let Some(v) = event.remove(key) {
                let mut body = Map::new();
                body.insert("output".into(), v);
                blocked = blocked.or(super::scan_response(&self.policy, &mut body, &mut uncounted));
                event.insert(key.into(), body.remove("output").unwrap_or_default());
            }
        }
        if let Some(Value::Object(r)) = event.get_mut("response") {
            blocked = blocked.or(super::scan_response(&self.policy, r, &mut uncounted));
        }
        match blocked {
            Some(d) => Err(d),
            None => Ok(extra),
        }
    }

    fn channel(&mut self, idx: u64, f: Field) -> &mut Channel {
        let at = match self.channels.iter().position(|(k, _)| *k == (idx, f)) {
            Some(i) => i,
            None => {
                self.channels.push(((idx, f), Channel::default()));
                self.channels.len() - 1
            }
        };
        &mut self.channels[at].1
    }

    /// Characters held back, in every channel.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.channels.iter().map(|(_, c)| c.pending.chars().count()).sum()
    }

    /// Takes `text` into the channel; what may be sent now.
    fn push(&mut self, idx: u64, f: Field, text: &str) -> String {
        if text.is_empty() {
            return String::new();
        }
        self.channel(idx, f).pending.push_str(text);
        self.settle(idx, f, false)
    }

    /// Sends what the channel need not hold (everything when `last`), redacted.
    fn settle(&mut self, idx: u64, f: Field, last: bool) -> String {
        let policy = self.policy.clone();
        let scanner = Scanner::get();
        let mut out = String::new();
        let mut hits = Hits::default();
        let mut blocked = None;
        {
            let ch = self.channel(idx, f);
            loop {
                match ch.skip {
                    Skip::Pem => match scanner.pem_footer_after(&ch.pending, 0) {
                        Some(end) => {
                            ch.pending.drain(..end);
                            ch.skip = Skip::None;
                        }
                        None => {
                            // Keep enough for a footer split across chunks.
                            keep_tail(&mut ch.pending, 64);
                            if last {
                                ch.pending.clear();
                            }
                            break;
                        }
                    },
                    Skip::Word => match ch.pending.find(boundary) {
                        Some(ws) => {
                            ch.pending.drain(..ws);
                            ch.skip = Skip::None;
                        }
                        None => {
                            ch.pending.clear();
                            break;
                        }
                    },
                    Skip::None => {}
                }
                if ch.skip != Skip::None {
                    break;
                }
                let found = scanner.find(&ch.pending);
                let len = ch.pending.len();
                let mut hold = if last { len } else { holdback(&ch.pending) };
                // A finding that reaches into the held part is decided when it is complete.
                let mut open_key = None;
                for fd in &found {
                    if fd.to > hold || (!last && fd.to == len) {
                        if fd.detector == PRIVATE_KEY
                            && scanner.pem_footer_after(&ch.pending, fd.from).is_none()
                            && acts(policy.action(fd.detector))
                        {
                            open_key = Some(*fd);
                        }
                        hold = hold.min(fd.from);
                    }
                }
                // Never more than the window: the text before the cut goes, except that a
                // finding across the cut goes whole when it is complete, and is withheld to its
                // end when it is still growing, as is a word that starts like a token.
                let mut withhold: Option<(usize, usize)> = None;
                if !last && open_key.is_none() && ch.pending[hold..].chars().count() > WINDOW {
                    let cut = char_back(&ch.pending, WINDOW);
                    hold = cut;
                    for fd in found.iter().filter(|fd| fd.from < cut && cut < fd.to) {
                        if fd.to < len {
                            hold = hold.max(fd.to);
                        } else if acts(policy.action(fd.detector)) {
                            withhold = Some((fd.start, fd.detector));
                            hold = fd.start;
                        }
                    }
                    if withhold.is_none() {
                        let ws = word_start(&ch.pending, cut);
                        let (re, ds) = &*TOKEN_START;
                        if let Some(c) =
                            re.captures_iter(&ch.pending[ws..]).find(|c| ws + c.get(0).map_or(0, |m| m.start()) < cut)
                        {
                            let at = ws + c.get(0).map_or(0, |m| m.start());
                            let d = (1..c.len()).find(|g| c.get(*g).is_some()).map_or(0, |g| ds[g - 1]);
                            if acts(policy.action(d)) {
                                withhold = Some((at, d));
                                hold = hold.min(at);
                            }
                        }
                    }
                }
                let stop = open_key.map_or(hold, |k| k.start);
                let mut last_end = 0;
                for fd in found.iter().filter(|fd| fd.to <= stop) {
                    let a = policy.action(fd.detector);
                    if a == Action::Off {
                        continue;
                    }
                    hits.add(fd.detector, a, Direction::Output);
                    if a == Action::Block {
                        blocked = blocked.or(Some(fd.detector));
                    }
                    if acts(a) {
                        // A blocked value is not sent either (the error follows it).
                        out.push_str(&ch.pending[last_end..fd.start]);
                        push_marker(&mut out, fd.detector);
                        last_end = fd.end;
                    }
                }
                out.push_str(&ch.pending[last_end..stop]);
                if let Some(k) = open_key {
                    let a = policy.action(k.detector);
                    hits.add(k.detector, a, Direction::Output);
                    if a == Action::Block {
                        blocked = blocked.or(Some(k.detector));
                    }
                    push_marker(&mut out, k.detector);
                    ch.pending.drain(..k.start);
                    ch.skip = Skip::Pem;
                    continue;
                }
                if let Some((at, d)) = withhold.filter(|(at, _)| *at == stop) {
                    let a = policy.action(d);
                    hits.add(d, a, Direction::Output);
                    if a == Action::Block {
                        blocked = blocked.or(Some(d));
                    }
                    push_marker(&mut out, d);
                    ch.pending.drain(..at);
                    ch.skip = Skip::Word;
                    continue;
                }
                ch.pending.drain(..stop);
                break;
            }
        }
        if !hits.is_empty() {
            self.hits.lock().expect("the hits lock is never poisoned").merge(&hits);
        }
        self.blocked = self.blocked.or(blocked);
        out
    }
}

/// Where the part of `text` that may still grow into a finding begins.
fn holdback(text: &str) -> usize {
    let len = text.len();
    let b = text.as_bytes();
    // The last word (nothing, when the text ends in whitespace).
    let mut hold = word_start(text, len);
    // With the quote that opens it (a pattern may begin with it: `"private_key_id"`).
    if hold > 0 && matches!(b[hold - 1], b'"' | b'\'') {
        hold -= 1;
    }
    let line_start = text[..hold].rfind('\n').map_or(0, |i| i + 1);
    // Digit groups written with spaces or dashes: a card, a phone number, an IBAN.
    let mut i = hold;
    while i > line_start
        && (b[i - 1].is_ascii_digit() || b[i - 1].is_ascii_uppercase() || b" ()+-.".contains(&b[i - 1]))
    {
        i -= 1;
    }
    if b[i..len].iter().any(u8::is_ascii_digit) && i < hold {
        hold = i;
    }
    // An assignment whose value is not complete yet (its keyword, separator and what there
    // is of the value), within the window.
    let tail_from = char_back(text, WINDOW);
    if let Some(m) = OPEN_ASSIGNMENT.find(&text[tail_from..]) {
        hold = hold.min(tail_from + m.start());
    }
    if let Some(k) = text[line_start..].find("-----") {
        hold = hold.min(line_start + k);
    }
    hold
}

/// A character no token, key or address contains: the edge of a word.
fn boundary(c: char) -> bool {
    c.is_whitespace() || !c.is_ascii() || "\"'`()<>[]{},;".contains(c)
}

/// Where the word that contains byte `at` of `s` begins.
fn word_start(s: &str, at: usize) -> usize {
    s[..at].char_indices().rev().find(|(_, c)| boundary(*c)).map_or(0, |(i, c)| i + c.len_utf8())
}

/// Whether an action changes what is sent.
fn acts(a: Action) -> bool {
    matches!(a, Action::Redact | Action::Block)
}

/// The byte index `n` characters before the end of `s` (0 if it is shorter).
fn char_back(s: &str, n: usize) -> usize {
    s.char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i)
}

/// Drops all but the last `n` bytes of `s` (at a character boundary).
fn keep_tail(s: &mut String, n: usize) {
    if s.len() > n {
        let mut cut = s.len() - n;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
}

/// The stream of chunks with the guard applied; its first chunk is guarded at once. A `block`
/// finding ends it with `refuse` of the error ([`super::withheld`]).
pub fn guard<E: Send + 'static>(
    mut guard: Guard,
    first: &mut Chunk,
    rest: BoxStream<'static, Result<Chunk, E>>,
    refuse: fn(ApiError) -> E,
) -> Result<BoxStream<'static, Result<Chunk, E>>, usize> {
    // The first chunk is never a part's end: nothing comes before it.
    guard.chunk(first)?;
    struct St<E> {
        guard: Guard,
        rest: BoxStream<'static, Result<Chunk, E>>,
        queue: VecDeque<Result<Chunk, E>>,
        done: bool,
        refuse: fn(ApiError) -> E,
    }
    let st = St { guard, rest, queue: VecDeque::new(), done: false, refuse };
    let s = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.rest.next().await {
                Some(Ok(mut chunk)) => match st.guard.chunk(&mut chunk) {
                    Ok(None) => return Some((Ok(chunk), st)),
                    Ok(Some(before)) => {
                        st.queue.push_back(Ok(chunk));
                        return Some((Ok(before), st));
                    }
                    Err(d) => {
                        st.done = true;
                        return Some((Err((st.refuse)(super::withheld(d))), st));
                    }
                },
                Some(Err(e)) => {
                    st.done = true;
                    let rest = st.guard.rest();
                    match st.guard.blocked {
                        Some(d) => st.queue.push_back(Err((st.refuse)(super::withheld(d)))),
                        None => {
                            st.queue.extend(rest.map(Ok));
                            st.queue.push_back(Err(e));
                        }
                    }
                }
                None => {
                    st.done = true;
                    match st.guard.rest() {
                        Some(c) if st.guard.blocked.is_none() => st.queue.push_back(Ok(c)),
                        Some(_) => {
                            let d = st.guard.blocked.unwrap_or(0);
                            st.queue.push_back(Err((st.refuse)(super::withheld(d))));
                        }
                        None => {}
                    }
                }
            }
        }
    });
    Ok(s.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_all() -> Policy {
        Policy::resolve(&[Some(&super::super::Scope { default: Some(Action::Redact), detectors: vec![] })]).unwrap()
    }

    /// Streams `text` in pieces of `n` characters; what the client gets, and the most
    /// characters held back after any piece.
    fn run(text: &str, n: usize) -> (String, usize) {
        let mut g = Guard::new(redact_all(), Arc::default());
        let chars: Vec<char> = text.chars().collect();
        let (mut got, mut lag) = (String::new(), 0usize);
        for piece in chars.chunks(n) {
            let piece: String = piece.iter().collect();
            got.push_str(&g.push(0, Field::Content, &piece));
            lag = lag.max(g.held());
        }
        got.push_str(&g.settle(0, Field::Content, true));
        (got, lag)
    }

    #[test]
    fn prose_flows_with_only_its_last_word_held() {
        let text = "The quick brown fox jumps over the lazy dog, and then it rests in the shade for a while.";
        let (got, lag) = run(text, 3);
        assert_eq!(got, text);
        assert!(lag <= 12, "held {lag} characters of plain prose");
    }

    #[test]
    fn a_key_split_across_chunks_is_redacted() {
        let text = "Use AKIAIOSFODNN7EXAMPLE with the CLI, then email ops@example.com today.";
        for n in [1, 2, 5, 17] {
            let (got, lag) = run(text, n);
            assert_eq!(
                got, "Use [REDACTED:aws_access_key_id] with the CLI, then email [REDACTED:email] today.",
                "pieces of {n}"
            );
            assert!(lag <= WINDOW);
        }
    }

    #[test]
    fn a_card_written_in_groups_is_held_until_complete() {
        let (got, _) = run("Card: 4111 1111 1111 1111 exp 12/29", 2);
        assert_eq!(got, "Card: [REDACTED:payment_card] exp 12/29");
    }

    #[test]
    fn a_private_key_is_cut_from_its_header_to_its_footer() {
        let body = "MIIEowIBAAKCAQEA7bq9vX2\n".repeat(20);
        let text = format!("key:\n-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\nbye");
        let (got, lag) = run(&text, 7);
        assert_eq!(got, "key:\n[REDACTED:private_key]\nbye");
        assert!(lag <= WINDOW, "held {lag}");
    }

    #[test]
    fn a_long_token_is_withheld_to_its_end_and_the_window_bounds_any_word() {
        let jwt_payload = "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWV9".repeat(5);
        let text = format!(
            "token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{jwt_payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c end"
        );
        let (got, lag) = run(&text, 4);
        assert!(!got.contains("eyJ"), "{got}");
        assert!(got.ends_with(" end"));
        assert!(lag <= WINDOW, "held {lag}");
        let blob = "ab".repeat(400);
        let (got, lag) = run(&blob, 5);
        assert_eq!(got, blob);
        assert!(lag <= WINDOW, "held {lag}");
    }

    #[test]
    fn text_without_spaces_and_quoted_tokens_are_cut_at_the_window_without_leaking() {
        let zh = "您好！请帮我查一下订单状态，谢谢。".repeat(12);
        let text = format!("{zh}您的邮箱是jane.doe@example.com，卡号4111111111111111，{zh}");
        for n in [1, 3, 8] {
            let (got, lag) = run(&text, n);
            assert!(!got.contains("jane.doe") && !got.contains("4111111111111111"), "pieces of {n}: {got}");
            assert!(got.contains("[REDACTED:email]") && got.contains("[REDACTED:payment_card]"));
            assert!(lag <= WINDOW, "held {lag}");
        }
        let payload = "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWV9".repeat(5);
        let jwt = format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c");
        let (got, lag) = run(&format!("{{\"access_token\": \"{jwt}\", \"ok\": true}}"), 4);
        assert!(!got.contains("eyJ"), "{got}");
        assert!(got.ends_with("\", \"ok\": true}"), "{got}");
        assert!(lag <= WINDOW, "held {lag}");
    }

    #[test]
    fn an_assignment_is_held_from_its_keyword_until_its_value_is_complete() {
        let pad = "x ".repeat(30);
        for text in [
            format!("{{\"private_key_id\": \"3f1a9c0b7d2e4f6a8b1c3d5e7f9a0b2c4d6e8f01\", {pad}}}"),
            format!("{{\"client_secret\": \"9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c\", {pad}}}"),
            format!("export DB_PASSWORD=Xk9mQ2vLp7w0 {pad}"),
        ] {
            let (got, _) = run(&text, 3);
            assert!(got.contains("[REDACTED:"), "{got}");
            assert!(!got.contains("3f1a9c0b") && !got.contains("9f8e7d6c") && !got.contains("Xk9mQ2"), "{got}");
        }
    }

    #[test]
    fn log_probabilities_are_dropped_and_an_upstream_error_after_a_block_sends_nothing_held() {
        let block =
            Policy::resolve(&[Some(&super::super::Scope { default: Some(Action::Block), detectors: vec![] })]).unwrap();
        let chunk = |t: &str| -> Chunk {
            serde_json::from_value(serde_json::json!({"choices": [{"index": 0, "delta": {"content": t},
                "logprobs": {"content": [{"token": t, "logprob": -0.1}]}, "finish_reason": null}]}))
            .unwrap()
        };
        let mut first = chunk("The key is ");
        let rest: Vec<Result<Chunk, String>> =
            vec![Ok(chunk("AKIAIOSFODN")), Ok(chunk("N7EXAMPLE")), Err("cut".into())];
        let s =
            guard(Guard::new(block, Arc::default()), &mut first, futures::stream::iter(rest).boxed(), |e| e.message)
                .unwrap();
        assert_eq!(first["choices"][0]["logprobs"], Value::Null);
        let items: Vec<Result<Chunk, String>> = futures::executor::block_on(s.collect());
        let sent: String = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        assert!(!sent.contains("AKIA"), "{sent}");
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert!(last.contains("withheld") && last.contains("aws_access_key_id"), "{last}");
    }

    #[test]
    fn a_passed_through_responses_stream_is_held_back_and_renumbered() {
        let ev = |v: serde_json::Value| -> Chunk { serde_json::from_value(v).unwrap() };
        let mut g = Guard::new(redact_all(), Arc::default());
        let text = "Key: AKIAIOSFODNN7EXAMPLE ok";
        let mut events = vec![ev(
            serde_json::json!({"type": "response.created", "sequence_number": 0, "response": {"id": "r", "output": []}}),
        )];
        let pieces = ["Key: AK", "IAIOSFOD", "NN7EXAMPLE", " ok"];
        for (i, p) in pieces.iter().enumerate() {
            events.push(ev(serde_json::json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                "item_id": "m", "output_index": 0, "content_index": 0, "delta": p})));
        }
        events.push(ev(serde_json::json!({"type": "response.output_text.done", "sequence_number": 5,
            "item_id": "m", "output_index": 0, "content_index": 0, "text": text})));
        events.push(ev(serde_json::json!({"type": "response.completed", "sequence_number": 6,
            "response": {"id": "r", "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}})));
        let mut sent = Vec::new();
        for mut e in events {
            if let Some(before) = g.chunk(&mut e).unwrap() {
                sent.push(before);
            }
            sent.push(e);
        }
        let deltas: String = sent
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(deltas, "Key: [REDACTED:aws_access_key_id] ok");
        let seq: Vec<u64> = sent.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>(), "numbered on after the added delta");
        let done = sent.iter().find(|e| e["type"] == "response.output_text.done").unwrap();
        assert_eq!(done["text"], "Key: [REDACTED:aws_access_key_id] ok");
        let last = sent.last().unwrap();
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Key: [REDACTED:aws_access_key_id] ok");
        assert_eq!(g.hits.lock().unwrap().summary(), "aws_access_key_id:redact:output=1", "counted once");
    }
}
