//! Guardrails: credentials and personal data found in what crosses the gateway, and what is
//! done about them. The detectors ([`detect`]) read the decoded text of every content and
//! argument string of a request before any backend sees it, and of the answer before the
//! client does ([`stream`] for streams); a [`Policy`] says per detector whether to `block`,
//! `redact` (the value becomes `[REDACTED:<detector>]`), `log` (count only) or leave it
//! (`off`).
//!
//! The policy of a request is resolved from three scopes, the most specific first: the
//! caller's key, the alias it named, the gateway file's `[guardrails]`; in each, a detector's
//! own setting before the scope's `default`. Nothing configured anywhere: nothing is scanned.
//!
//! What is never done: a value is never written into an error, a log line or a record, whatever
//! the action (`log.content` keeps the text with every finding masked, [`mask`]).

pub mod detect;
pub mod stream;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Map, Value};

use crate::protocol::error::ApiError;
use detect::{Scanner, COUNT};

/// The error code of a request or answer the guardrails refused.
pub const CODE: &str = "content_policy_violation";

/// What is done with a value a detector found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Off,
    Log,
    Redact,
    Block,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "off" => Action::Off,
            "log" => Action::Log,
            "redact" => Action::Redact,
            "block" => Action::Block,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Off => "off",
            Action::Log => "log",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// Which way the text was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// One scope's settings: the gateway file's `[guardrails]`, or an alias's or a key's
/// `guardrails` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub default: Option<Action>,
    /// `(detector, action)`.
    pub detectors: Vec<(usize, Action)>,
}

impl Scope {
    /// Checks a scope as written: `at` names it in errors.
    pub fn parse(default: Option<&str>, detectors: &BTreeMap<String, String>, at: &str) -> Result<Scope, String> {
        let action = |v: &str, what: &str| {
            Action::parse(v).ok_or_else(|| format!("{at}: {what} = \"{v}\" must be one of block, redact, log, off"))
        };
        let default = default.map(|d| action(d, "default")).transpose()?;
        let mut out = Vec::with_capacity(detectors.len());
        for (name, v) in detectors {
            let Some(i) = detect::index(name) else {
                let known = detect::names().collect::<Vec<_>>().join(", ");
                return Err(format!("{at}: no detector is called '{name}' (the detectors: {known})"));
            };
            out.push((i, action(v, &format!("detectors.{name}"))?));
        }
        Ok(Scope { default, detectors: out })
    }
}

/// The action per detector for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    actions: [Action; COUNT],
}

impl Policy {
    /// The policy of scopes given most specific first; `None` when every detector is off.
    pub fn resolve(scopes: &[Option<&Scope>]) -> Option<Policy> {
        let mut actions = [Action::Off; COUNT];
        for (d, a) in actions.iter_mut().enumerate() {
            *a = scopes
                .iter()
                .flatten()
                .find_map(|s| s.detectors.iter().find(|(i, _)| *i == d).map(|(_, a)| *a).or(s.default))
                .unwrap_or(Action::Off);
        }
        actions.iter().any(|a| *a != Action::Off).then_some(Policy { actions })
    }

    pub fn action(&self, detector: usize) -> Action {
        self.actions[detector]
    }
}

/// What the guardrails found in one request, both ways: counts per detector, action and
/// direction (never the values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    counts: Vec<(usize, Action, Direction, u32)>,
}

impl Hits {
    pub fn add(&mut self, detector: usize, action: Action, direction: Direction) {
        self.add_n(detector, action, direction, 1);
    }

    fn add_n(&mut self, detector: usize, action: Action, direction: Direction, n: u32) {
        match self.counts.iter_mut().find(|(d, a, w, _)| (*d, *a, *w) == (detector, action, direction)) {
            Some(c) => c.3 += n,
            None => self.counts.push((detector, action, direction, n)),
        }
    }

    pub fn merge(&mut self, other: &Hits) {
        for &(d, a, w, n) in &other.counts {
            self.add_n(d, a, w, n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// `(detector, action, direction, count)`, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Action, Direction, u32)> + '_ {
        let mut v = self.counts.clone();
        v.sort();
        v.into_iter().map(|(d, a, w, n)| (detect::name(d), a, w, n))
    }

    /// `detector:action:direction=n` joined by commas, for the log line and the ledger.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (d, a, w, n) in self.iter() {
            if !s.is_empty() {
                s.push(',');
            }
            let _ = write!(s, "{d}:{}:{}={n}", a.name(), w.name());
        }
        s
    }
}

/// The verdict on a request's input: what was found, and the refusal when a `block`
/// detector found something (the request then goes nowhere).
#[derive(Debug, Default)]
pub struct Verdict {
    pub hits: Hits,
    pub blocked: Option<Box<ApiError>>,
    /// Some value was replaced in the body.
    pub redacted: bool,
}

/// The fields of a request body whose strings are the user's text, in every API the gateway
/// speaks (chat `messages`, completions `prompt`, embeddings and Responses `input`, Responses
/// `instructions`, Messages `system` and `messages`).
const REQUEST_FIELDS: &[&str] = &["messages", "prompt", "input", "instructions", "system"];
/// The fields of an answer whose strings are the model's text (chat and completions
/// `choices`, a Responses object's `output`, a message's `content`).
const RESPONSE_FIELDS: &[&str] = &["choices", "output", "content"];
/// Keys of the APIs' own structure whose strings are names, ids or signatures, not text: not
/// read (except inside a tool call's arguments or input, which are the model's or the
/// user's data, where every string is read).
const SKIP: &[&str] = &[
    "type",
    "role",
    "id",
    "tool_call_id",
    "tool_use_id",
    "call_id",
    "name",
    "model",
    "cache_control",
    "signature",
    "media_type",
    "file_id",
    "encrypted_content",
    "status",
    "format",
    "detail",
    "finish_reason",
    "stop_reason",
    "logprobs",
    "object",
    "refusal_type",
];

/// Scans a request body (any API's) and redacts it in place; a `block` finding refuses it,
/// naming the detector and where (the field's path and the character offset), never the value.
pub fn scan_request(policy: &Policy, body: &mut Map<String, Value>) -> Verdict {
    let mut w = Walk::new(policy, Direction::Input);
    w.fields(body, REQUEST_FIELDS);
    let blocked = w.blocked.take().map(|(d, path, at)| {
        Box::new(
            ApiError::invalid_request(
                format!(
                    "The request was refused by the gateway's guardrails: {} found in {path} at character {at}.",
                    detect::name(d)
                ),
                Some(&path),
            )
            .with_code(CODE),
        )
    });
    Verdict { hits: w.hits, blocked, redacted: w.redacted }
}

/// Scans a whole answer (a chat completion, a completion, a Responses object) and redacts it
/// in place; a `block` finding withholds it: its detector is returned ([`withheld`] is the
/// error). Token log-probabilities of a redacted answer are dropped: they spell out what was
/// replaced.
pub fn scan_response(policy: &Policy, body: &mut Map<String, Value>, hits: &mut Hits) -> Option<usize> {
    let mut w = Walk::new(policy, Direction::Output);
    w.fields(body, RESPONSE_FIELDS);
    hits.merge(&w.hits);
    if w.redacted {
        if let Some(Value::Array(choices)) = body.get_mut("choices") {
            for c in choices.iter_mut().filter_map(Value::as_object_mut) {
                if c.get("logprobs").is_some_and(|l| !l.is_null()) {
                    c.insert("logprobs".into(), Value::Null);
                }
            }
        }
    }
    w.blocked.map(|(d, _, _)| d)
}

/// The error of an answer withheld because a `block` detector found something in it.
pub fn withheld(detector: usize) -> ApiError {
    ApiError::invalid_request(
        format!(
            "The answer was withheld by the gateway's guardrails: {} found in the model's output.",
            detect::name(detector)
        ),
        None,
    )
    .with_code(CODE)
}

/// `text` with every finding masked, whatever its action: for the text a log keeps.
pub fn mask(text: &str) -> Cow<'_, str> {
    let found = Scanner::get().find(text);
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in found {
        out.push_str(&text[last..f.start]);
        push_marker(&mut out, f.detector);
        last = f.end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

pub(crate) fn push_marker(out: &mut String, detector: usize) {
    out.push_str("[REDACTED:");
    out.push_str(detect::name(detector));
    out.push(']');
}

/// A JSON key that names a secret (`password`, `client_secret`, `apiKey`, ...).
fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "api_key", "apikey", "api-key", "private_key", "credential"]
        .iter()
        .any(|w| k.contains(w))
}

/// Encoded data, not text: a data URL (an image, a file, audio), or a long run of base64.
fn blob(s: &str) -> bool {
    if s.starts_with("data:") {
        return s.get(..200).unwrap_or(s).contains(";base64,");
    }
    s.len() >= 512 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b))
}

/// A walk over a JSON value's strings: counts, redacts, and remembers the first block.
struct Walk<'a> {
    policy: &'a Policy,
    direction: Direction,
    hits: Hits,
    /// `(detector, path, character offset)` of the first `block` finding.
    blocked: Option<(usize, String, usize)>,
    path: String,
    redacted: bool,
    /// Inside a tool call's arguments or input: no key is structure.
    free: bool,
}

impl<'a> Walk<'a> {
    fn new(policy: &'a Policy, direction: Direction) -> Self {
        Walk {
            policy,
            direction,
            hits: Hits::default(),
            blocked: None,
            path: String::new(),
            redacted: false,
            free: false,
        }
    }

    /// The body's `fields`, each walked from its own name.
    fn fields(&mut self, body: &mut Map<String, Value>, fields: &[&str]) {
        for f in fields {
            if let Some(v) = body.get_mut(*f) {
                self.path.clear();
                self.path.push_str(f);
                self.value(v);
            }
        }
    }

    fn value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    let n = self.path.len();
                    let _ = write!(self.path, "[{i}]");
                    self.value(x);
                    self.path.truncate(n);
                }
            }
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if !self.free && SKIP.contains(&k.as_str()) {
                        continue;
                    }
                    let n = self.path.len();
                    self.path.push('.');
                    self.path.push_str(k);
                    match x {
                        Value::String(s) if k == "arguments" && !self.free => self.arguments(s),
                        // A tool call's input (Anthropic's `tool_use`, Ollama's arguments object).
                        Value::Object(_) if !self.free && (k == "input" || k == "arguments") => {
                            self.free = true;
                            self.value(x);
                            self.free = false;
                        }
                        // `"password": "…"` in data: the key says what the value is.
                        Value::String(s) if secret_key(k) => self.keyed(k, s),
                        _ => self.value(x),
                    }
                    self.path.truncate(n);
                }
            }
            _ => {}
        }
    }

    /// A tool call's arguments are JSON text: its decoded strings are read, so that an escape
    /// cannot hide a value, and a redaction keeps it valid JSON.
    fn arguments(&mut self, s: &mut String) {
        match serde_json::from_str::<Value>(s) {
            Ok(mut inner @ (Value::Object(_) | Value::Array(_))) => {
                let before = std::mem::replace(&mut self.redacted, false);
                self.free = true;
                self.value(&mut inner);
                self.free = false;
                if self.redacted {
                    *s = inner.to_string();
                }
                self.redacted |= before;
            }
            _ => self.string(s),
        }
    }

    /// A string under a key that names a secret: read as the assignment `"key": "value"`.
    fn keyed(&mut self, key: &str, s: &mut String) {
        let prefix = format!("\"{key}\": \"");
        let mut text = format!("{prefix}{s}\"");
        let before = std::mem::replace(&mut self.redacted, false);
        self.string(&mut text);
        if self.redacted {
            if let Some(v) = text.strip_prefix(&prefix).and_then(|t| t.strip_suffix('"')) {
                *s = v.to_owned();
            }
        }
        self.redacted |= before;
    }

    fn string(&mut self, s: &mut String) {
        if blob(s) {
            return;
        }
        let found = Scanner::get().find(s);
        if found.is_empty() {
            return;
        }
        let mut out: Option<String> = None;
        let mut last = 0;
        for f in found {
            let a = self.policy.action(f.detector);
            if a == Action::Off {
                continue;
            }
            self.hits.add(f.detector, a, self.direction);
            match a {
                Action::Block if self.blocked.is_none() => {
                    self.blocked = Some((f.detector, self.path.clone(), s[..f.start].chars().count()));
                }
                Action::Redact => {
                    let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                    o.push_str(&s[last..f.start]);
                    push_marker(o, f.detector);
                    last = f.end;
                }
                _ => {}
            }
        }
        if let Some(mut o) = out {
            o.push_str(&s[last..]);
            *s = o;
            self.redacted = true;
        }
    }
}

#[cfg(test)]
mod tests;
