//! The small-or-large router policy: a linear rule scorer that reads a chat or completion
//! request body and decides whether the small model can answer it or the large one is needed.
//!
//! # Algorithm
//! [`features`] walks the request body once: it counts the bytes of every message text (a
//! string `content`, or the `text` of each content part; a completion `prompt`) and scans
//! each text in one pass, byte by byte, lower-casing ASCII words into a small stack buffer and
//! matching them against fixed word lists (no regex, no allocation). [`decide`] maps the
//! features to inputs `x_i`, computes `score = bias + sum(w_i * x_i)` and routes large when
//! `score >= threshold`. The reasons are the inputs whose contribution `|w_i * x_i|` is at
//! least [`REASON_MIN`], largest first, each signed by the way it pushed (`+code` toward large,
//! `-short-prompt` toward small); [`Decision::header`] renders them as one ASCII line.
//!
//! # Features and their inputs
//! - `prompt_tokens_est`: bytes of all message text / 4, rounded up. Input
//!   `log2((tokens + 1) / 32)`, clamped to [-5, 6]: negative below ~32 tokens ("short-prompt").
//! - `turns`: user messages (1 for a completion prompt). Input `min(turns, 8) - 1`.
//! - `code`: a ``` fence; or at least [`CODE_WORDS_MIN`] code words (`def`, `fn`, `impl`,
//!   `println`, language and tooling names, upper-case `SELECT`/`FROM`/`JOIN`...); or at least
//!   [`CODE_SYMS_MIN`] code symbols (`{`, `}`, `;` at line end, `=>`, `->`, `::`, `==`, `!=`,
//!   `&&`, `||`, `#include`, snake_case identifiers); or one code word and two symbols. 0/1.
//! - `math`: at least [`MATH_HITS_MIN`] math hits: math words (integral, derivative, prove,
//!   equation, probability, sqrt, ...), LaTeX commands (`\frac`), and operators between
//!   operands with a digit on one side (`12 + 15`, `x^2`; `-` and `/` only when spaced, so
//!   dates and hyphens do not count). 0/1.
//! - `reasoning_cues`: words and phrases that ask for reasoning (step by step, explain, why,
//!   compare, analyze, plan, design, trade-offs, prove, debug, root cause, edge cases...).
//!   Input `min(n, 4)`.
//! - `simple_cues`: words and phrases of tasks a small model does well (translate, rephrase,
//!   typo, synonym, hello, thanks, sentiment, capital of, stand for, one sentence...). Input
//!   `min(n, 3)`.
//! - `max_tokens`: `max_completion_tokens`, else `max_tokens`. Input `log2(max_tokens / 256)`
//!   clamped to [-4, 4]; 0 when absent.
//! - `tools`: a non-empty `tools` (or legacy `functions`) array. 0/1.
//! - `json_mode`: `response_format.type` is `json_object` or `json_schema`. 0/1.
//!
//! # Knobs
//! [`RouterWeights`]: `bias`, one weight per input above, and `threshold`. They deserialize
//! with every field optional (missing ones keep the tuned [`Default`]) and unknown fields
//! refused, so a route file can override a few. The defaults were fit by hand-written
//! logistic regression on the `tune` half of `tests/data/router_prompts.jsonl` (the ignored
//! test `tune_weights` prints them) and are reported on the other half by `evaluation`.
//! The word lists and the constants below are part of the model: changing them calls for
//! re-tuning.
//!
//! # Measured
//! With the defaults, on the `report` half (129 prompts): accuracy 0.907, 47% sent small, an
//! estimated 25% saving against always-large when small costs a tenth per token (tune half:
//! 0.969). `benches/smallroute.rs` times `features + decide`: a few microseconds a request.
//!
//! # Invariants
//! Pure and synchronous; `decide` allocates only the reasons vector. The header is ASCII and
//! contains no control characters.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A contribution of at least this size (in score units) is named as a reason.
pub const REASON_MIN: f64 = 0.25;
/// Code words needed, without a fence or symbols, for `code`.
pub const CODE_WORDS_MIN: u32 = 2;
/// Code symbols needed, without a fence or words, for `code`.
pub const CODE_SYMS_MIN: u32 = 6;
/// Math hits needed for `math`.
pub const MATH_HITS_MIN: u32 = 2;
/// Words longer than this are not matched against the lists (none of them is this long).
const MAX_WORD: usize = 16;

/// The scorer's weights: `score = bias + sum(w_i * x_i)`, large when `score >= threshold`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterWeights {
    pub bias: f64,
    /// Per unit of `log2((prompt_tokens_est + 1) / 32)`.
    pub prompt_tokens: f64,
    /// Per user turn beyond the first.
    pub turns: f64,
    pub code: f64,
    pub math: f64,
    /// Per reasoning cue, up to 4.
    pub reasoning: f64,
    /// Per simple-task cue, up to 3.
    pub simple: f64,
    /// Per unit of `log2(max_tokens / 256)`.
    pub max_tokens: f64,
    pub tools: f64,
    pub json_mode: f64,
    pub threshold: f64,
}

impl Default for RouterWeights {
    /// Tuned on the `tune` split (see the module header).
    fn default() -> Self {
        RouterWeights {
            bias: -0.16,
            prompt_tokens: 0.84,
            turns: -0.24,
            code: 1.25,
            math: 1.77,
            reasoning: 1.62,
            simple: -1.94,
            max_tokens: 0.81,
            tools: 0.83,
            json_mode: 0.11,
            threshold: -0.42,
        }
    }
}

/// What the scorer reads from a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub prompt_tokens_est: u32,
    pub turns: u32,
    pub code: bool,
    pub math: bool,
    pub reasoning_cues: u32,
    pub simple_cues: u32,
    pub max_tokens: Option<u32>,
    pub tools: bool,
    pub json_mode: bool,
}

/// Number of scorer inputs.
pub const INPUTS: usize = 9;
/// The reason named for each input when its contribution pushes toward large (`+`) or
/// toward small (`-`).
const REASONS: [(&str, &str); INPUTS] = [
    ("+long-prompt", "-short-prompt"),
    ("+multi-turn", "-multi-turn"),
    ("+code", "-code"),
    ("+math", "-math"),
    ("+reasoning", "-reasoning"),
    ("+simple-task", "-simple-task"),
    ("+long-output", "-short-output"),
    ("+tools", "-tools"),
    ("+json-mode", "-json-mode"),
];

impl Features {
    /// The scorer inputs `x_i`, in the order of [`RouterWeights::input_weights`].
    pub fn inputs(&self) -> [f64; INPUTS] {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let tokens = ((f64::from(self.prompt_tokens_est) + 1.0) / 32.0).log2().clamp(-5.0, 6.0);
        let out = self.max_tokens.map_or(0.0, |m| (f64::from(m.max(1)) / 256.0).log2().clamp(-4.0, 4.0));
        [
            tokens,
            f64::from(self.turns.min(8).saturating_sub(1)),
            b(self.code),
            b(self.math),
            f64::from(self.reasoning_cues.min(4)),
            f64::from(self.simple_cues.min(3)),
            out,
            b(self.tools),
            b(self.json_mode),
        ]
    }
}

impl RouterWeights {
    /// The weights `w_i`, in the order of [`Features::inputs`].
    pub fn input_weights(&self) -> [f64; INPUTS] {
        [
            self.prompt_tokens,
            self.turns,
            self.code,
            self.math,
            self.reasoning,
            self.simple,
            self.max_tokens,
            self.tools,
            self.json_mode,
        ]
    }
}

/// The router's verdict for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub large: bool,
    pub score: f64,
    /// The inputs that moved the score most, largest contribution first.
    pub reasons: Vec<&'static str>,
}

impl Decision {
    /// `large; score=1.37; reasons=+code,+long-prompt,-simple-task`: ASCII, safe as an HTTP
    /// header value. A reason's sign says which way it pushed the score.
    pub fn header(&self) -> String {
        let model = if self.large { "large" } else { "small" };
        let reasons = if self.reasons.is_empty() { "none".to_string() } else { self.reasons.join(",") };
        let score = if self.score.is_finite() { self.score } else { 0.0 };
        format!("{model}; score={score:.2}; reasons={reasons}")
    }
}

/// Scores features with weights.
pub fn decide(f: &Features, w: &RouterWeights) -> Decision {
    let x = f.inputs();
    let wi = w.input_weights();
    let mut contrib = [(0.0f64, 0usize); INPUTS];
    let mut score = w.bias;
    for i in 0..INPUTS {
        let c = wi[i] * x[i];
        score += c;
        contrib[i] = (c, i);
    }
    contrib.sort_unstable_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    let reasons = contrib
        .iter()
        .take_while(|(c, _)| c.abs() >= REASON_MIN)
        .map(|&(c, i)| if c >= 0.0 { REASONS[i].0 } else { REASONS[i].1 })
        .collect();
    Decision { large: score >= w.threshold, score, reasons }
}

/// Reads the features of a chat (`messages`) or completion (`prompt`) request body.
pub fn features(body: &Map<String, Value>) -> Features {
    let mut scan = Scan::default();
    let mut turns = 0u32;
    match body.get("messages") {
        Some(Value::Array(messages)) => {
            for m in messages {
                if m.get("role").and_then(Value::as_str) == Some("user") {
                    turns += 1;
                }
                match m.get("content") {
                    Some(Value::String(s)) => scan.text(s),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(s) = p.get("text").and_then(Value::as_str) {
                                scan.text(s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => match body.get("prompt") {
            Some(Value::String(s)) => {
                turns = 1;
                scan.text(s);
            }
            Some(Value::Array(ps)) => {
                turns = 1;
                ps.iter().filter_map(Value::as_str).for_each(|s| scan.text(s));
            }
            _ => {}
        },
    }
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    let non_empty = |k: &str| body.get(k).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    let json_mode = matches!(
        body.get("response_format").and_then(|r| r.get("type")).and_then(Value::as_str),
        Some("json_object" | "json_schema")
    );
    Features {
        prompt_tokens_est: u32::try_from(scan.bytes.div_ceil(4)).unwrap_or(u32::MAX),
        turns,
        code: scan.fence
            || scan.code_words >= CODE_WORDS_MIN
            || scan.code_syms >= CODE_SYMS_MIN
            || (scan.code_words >= 1 && scan.code_syms >= 2),
        math: scan.math_hits >= MATH_HITS_MIN,
        reasoning_cues: scan.reasoning,
        simple_cues: scan.simple,
        max_tokens,
        tools: non_empty("tools") || non_empty("functions"),
        json_mode,
    }
}

/// Words that take part in two-word cues.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Tag {
    #[default]
    Other,
    Step,
    By,
    Trade,
    Root,
    Edge,
    One,
    Stand,
    Capital,
    Pros,
    And,
}

const CODE: u8 = 1;
const MATH: u8 = 2;
const REASON: u8 = 4;
const SIMPLE: u8 = 8;
/// Code words only when written in upper case (SQL keywords are also English words).
const SQL: u8 = 16;

/// The categories a lower-cased word belongs to.
fn classify(w: &[u8]) -> u8 {
    match w {
        b"api" | b"async" | b"await" | b"bash" | b"bug" | b"cli" | b"compile" | b"compiler" | b"console" | b"const"
        | b"database" | b"deadlock" | b"def" | b"dict" | b"django" | b"docker" | b"dockerfile" | b"elif"
        | b"endpoint" | b"enum" | b"exception" | b"flask" | b"fn" | b"func" | b"function" | b"git" | b"golang"
        | b"gunicorn" | b"impl" | b"import" | b"include" | b"java" | b"javascript" | b"kafka" | b"kotlin"
        | b"kubernetes" | b"lambda" | b"malloc" | b"mongodb" | b"mutex" | b"nginx" | b"null" | b"nullptr"
        | b"pandas" | b"postgres" | b"postgresql" | b"printf" | b"println" | b"pytest" | b"python" | b"query"
        | b"react" | b"redis" | b"regex" | b"return" | b"rust" | b"schema" | b"script" | b"segfault" | b"sql"
        | b"stacktrace" | b"struct" | b"thread" | b"threads" | b"traceback" | b"typescript" | b"unittest"
        | b"usize" | b"var" | b"vec" | b"void" | b"webhook" | b"webhooks" => CODE,
        b"delete" | b"from" | b"group" | b"insert" | b"join" | b"select" | b"update" | b"where" => SQL,
        b"derive" | b"proof" | b"prove" => MATH | REASON,
        b"abelian" | b"calculate" | b"compounded" | b"compute" | b"cos" | b"derivative" | b"eigenvalue"
        | b"eigenvalues" | b"eigenvectors" | b"equation" | b"equations" | b"expected" | b"extrema" | b"factorial"
        | b"formula" | b"induction" | b"integer" | b"integers" | b"integral" | b"irrational" | b"lemma" | b"ln"
        | b"logarithm" | b"matrix" | b"modulo" | b"mph" | b"percentage" | b"polynomial" | b"prime" | b"primes"
        | b"probability" | b"sin" | b"solve" | b"sqrt" | b"theorem" | b"variance" => MATH,
        b"algorithm" | b"analyse" | b"analysis" | b"analyze" | b"architecture" | b"assess" | b"carefully"
        | b"compare" | b"comparison" | b"complexity" | b"contrast" | b"critique" | b"debug" | b"design"
        | b"detailed" | b"diagnose" | b"evaluate" | b"explain" | b"identify" | b"implement" | b"justify"
        | b"optimize" | b"plan" | b"prioritize" | b"reasoning" | b"refactor" | b"strategy" | b"synthesize"
        | b"thoroughly" | b"tradeoff" | b"tradeoffs" | b"vulnerabilities" | b"why" => REASON,
        b"alphabetical" | b"antonym" | b"bullet" | b"bye" | b"capitalization" | b"capitalize" | b"classify"
        | b"friendlier" | b"haiku" | b"hello" | b"hey" | b"hi" | b"joke" | b"lol" | b"lowercase" | b"opposite"
        | b"paraphrase" | b"polite" | b"politely" | b"punctuation" | b"reformat" | b"rephrase" | b"reword"
        | b"sentiment" | b"shorten" | b"shorter" | b"spam" | b"spelling" | b"synonym" | b"synonyms" | b"thank"
        | b"thanks" | b"translate" | b"translation" | b"typo" | b"typos" | b"uppercase" => SIMPLE,
        _ => 0,
    }
}

fn tag(w: &[u8]) -> Tag {
    match w {
        b"step" => Tag::Step,
        b"by" => Tag::By,
        b"trade" => Tag::Trade,
        b"root" => Tag::Root,
        b"edge" => Tag::Edge,
        b"one" => Tag::One,
        b"stand" => Tag::Stand,
        b"capital" => Tag::Capital,
        b"pros" => Tag::Pros,
        b"and" => Tag::And,
        _ => Tag::Other,
    }
}

/// The one-pass text scanner's running counts.
#[derive(Default)]
struct Scan {
    bytes: usize,
    word: [u8; MAX_WORD],
    len: usize,
    long: bool,
    upper: bool,
    underscore: bool,
    prev: Tag,
    prev2: Tag,
    fence: bool,
    code_words: u32,
    code_syms: u32,
    math_hits: u32,
    reasoning: u32,
    simple: u32,
}

impl Scan {
    fn text(&mut self, s: &str) {
        let b = s.as_bytes();
        self.bytes += b.len();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_alphanumeric() || c == b'_' {
                if self.len == 0 {
                    self.upper = true;
                    self.underscore = false;
                }
                self.upper &= !c.is_ascii_lowercase();
                self.underscore |= c == b'_' && self.len > 0;
                if self.len < MAX_WORD {
                    self.word[self.len] = c.to_ascii_lowercase();
                } else {
                    self.long = true;
                }
                self.len += 1;
                i += 1;
                continue;
            }
            self.end_word();
            let next = b.get(i + 1).copied().unwrap_or(b'\n');
            match c {
                b'`' if b[i..].starts_with(b"```") => {
                    self.fence = true;
                    i += 3;
                    continue;
                }
                b'{' | b'}' => self.code_syms += 1,
                b';' if next == b'\n' || next == b'\r' => self.code_syms += 1,
                b'=' | b'!' if next == b'=' => self.code_syms += 1,
                b'=' | b'-' if next == b'>' => self.code_syms += 1,
                b':' if next == b':' => self.code_syms += 1,
                b'&' | b'|' if next == c => self.code_syms += 1,
                b'#' if b[i..].starts_with(b"#include") => self.code_syms += 2,
                b'\\' if next.is_ascii_alphabetic() && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic) => {
                    self.math_hits += 1
                }
                b'+' | b'*' | b'^' | b'=' | b'<' | b'>' | b'%' | b'-' | b'/' if operator_between_operands(b, i) => {
                    self.math_hits += 1
                }
                _ => {}
            }
            i += 1;
        }
        self.end_word();
        self.prev = Tag::Other;
        self.prev2 = Tag::Other;
    }

    fn end_word(&mut self) {
        if self.len == 0 {
            return;
        }
        let n = self.len;
        self.len = 0;
        if self.underscore {
            self.code_syms += 1;
        }
        if self.long {
            self.long = false;
            self.shift(Tag::Other);
            return;
        }
        let w = &self.word[..n];
        let class = classify(w);
        if class & CODE != 0 || (class & SQL != 0 && self.upper && n >= 4) {
            self.code_words += 1;
        }
        if class & MATH != 0 {
            self.math_hits += 1;
        }
        if class & REASON != 0 {
            self.reasoning += 1;
        }
        if class & SIMPLE != 0 {
            self.simple += 1;
        }
        let t = tag(w);
        match (self.prev2, self.prev, w) {
            (Tag::Step, Tag::By, b"step") | (_, Tag::Trade, b"offs" | b"off") | (_, Tag::Root, b"cause") => {
                self.reasoning += 1
            }
            (_, Tag::Edge, b"case" | b"cases") | (Tag::Pros, Tag::And, b"cons") => self.reasoning += 1,
            (_, Tag::One, b"sentence" | b"word" | b"line") | (_, Tag::Stand, b"for") | (_, Tag::Capital, b"of") => {
                self.simple += 1
            }
            _ => {}
        }
        self.shift(t);
    }

    fn shift(&mut self, t: Tag) {
        self.prev2 = self.prev;
        self.prev = t;
    }
}

/// An arithmetic operator at `b[i]` with operands on both sides (one space allowed) and a
/// digit on at least one side; `-` and `/` only with a space on both sides (not dates, not
/// hyphenated words, not paths).
fn operator_between_operands(b: &[u8], i: usize) -> bool {
    let before = if i >= 1 && b[i - 1] == b' ' { i.checked_sub(2) } else { i.checked_sub(1) };
    let after = if b.get(i + 1) == Some(&b' ') { i + 2 } else { i + 1 };
    let (Some(p), Some(&n)) = (before.map(|j| b[j]), b.get(after)) else {
        return false;
    };
    if matches!(b[i], b'-' | b'/') && !(i >= 1 && b[i - 1] == b' ' && b.get(i + 1) == Some(&b' ')) {
        return false;
    }
    let operand = |c: u8| c.is_ascii_alphanumeric() || c == b')' || c == b'(';
    operand(p) && operand(n) && (p.is_ascii_digit() || n.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// The [`RouterWeights`] field of each input.
    const FIELDS: [&str; INPUTS] =
        ["prompt_tokens", "turns", "code", "math", "reasoning", "simple", "max_tokens", "tools", "json_mode"];

    fn user(text: &str) -> Map<String, Value> {
        body(json!({"model": "auto", "messages": [{"role": "user", "content": text}]}))
    }

    struct Example {
        id: u64,
        hard: bool,
        tune: bool,
        body: Map<String, Value>,
    }

    fn load() -> Vec<Example> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/router_prompts.jsonl");
        let text = std::fs::read_to_string(path).expect("the labelled set is in the repository");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("each line is JSON");
                Example {
                    id: v["id"].as_u64().expect("each line has an id"),
                    hard: v["label"] == "hard",
                    tune: v["split"] == "tune",
                    body: body(v["request"].clone()),
                }
            })
            .collect()
    }

    #[derive(Debug)]
    struct Metrics {
        n: usize,
        accuracy: f64,
        share_small: f64,
        saving: f64,
        /// (hard sent small, easy sent large)
        errors: (usize, usize),
    }

    /// Accuracy, share sent small, and the saving against always-large when the small model
    /// costs a tenth per token (prompt estimate plus max_tokens, or 256, for the completion).
    fn evaluate(examples: &[&Example], w: &RouterWeights) -> Metrics {
        let (mut right, mut small, mut hard_small, mut easy_large) = (0, 0, 0, 0);
        let (mut cost_large, mut cost_routed) = (0.0, 0.0);
        for e in examples {
            let f = features(&e.body);
            let d = decide(&f, w);
            right += usize::from(d.large == e.hard);
            small += usize::from(!d.large);
            hard_small += usize::from(e.hard && !d.large);
            easy_large += usize::from(!e.hard && d.large);
            let tokens = f64::from(f.prompt_tokens_est) + f64::from(f.max_tokens.unwrap_or(256));
            cost_large += tokens;
            cost_routed += if d.large { tokens } else { tokens / 10.0 };
        }
        let n = examples.len();
        Metrics {
            n,
            accuracy: right as f64 / n as f64,
            share_small: small as f64 / n as f64,
            saving: 1.0 - cost_routed / cost_large,
            errors: (hard_small, easy_large),
        }
    }

    #[test]
    fn features_of_hand_made_bodies() {
        let f = features(&user("hi there"));
        assert_eq!(
            (f.prompt_tokens_est, f.turns, f.code, f.math, f.tools, f.json_mode),
            (2, 1, false, false, false, false)
        );
        assert_eq!((f.reasoning_cues, f.simple_cues, f.max_tokens), (0, 1, None));

        let f = features(&user("Why does this fail?\n```rust\nfn main() { let v = vec![1]; }\n```"));
        assert!(f.code);
        assert_eq!(f.reasoning_cues, 1);

        let f = features(&user("Prove that x^2 + 2x + 1 >= 0 for every real x, step by step."));
        assert!(f.math);
        assert_eq!(f.reasoning_cues, 2, "prove, step by step");

        // Dates, hyphens and paths are not arithmetic.
        let f = features(&user("On 2024-05-02 the well-known /var/log path filled up"));
        assert!(!f.math && !f.code);

        let f = features(&user("SELECT id FROM users WHERE name = 'x'"));
        assert!(f.code, "upper-case SQL keywords");
        let f = features(&user("select the one from the list where it fits"));
        assert!(!f.code);

        let f = features(&body(json!({
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Translate 'cat' to French."}]},
                {"role": "assistant", "content": "chat"},
                {"role": "user", "content": "and dog?"}
            ],
            "max_completion_tokens": 16,
            "max_tokens": 999,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema", "json_schema": {}}
        })));
        assert_eq!(f.turns, 2);
        assert_eq!(f.prompt_tokens_est, (10 + 26 + 4 + 8_u32).div_ceil(4));
        assert_eq!(f.max_tokens, Some(16), "max_completion_tokens wins");
        assert!(f.tools && f.json_mode);
        assert_eq!(f.simple_cues, 1);

        let f = features(&body(json!({"model": "auto", "prompt": "Hello", "tools": []})));
        assert_eq!((f.turns, f.prompt_tokens_est, f.tools), (1, 2, false));
    }

    #[test]
    fn words_are_classified_whole() {
        assert_eq!(classify(b"prove"), MATH | REASON);
        assert_eq!(classify(b"proven"), 0);
        assert_eq!(classify(b"select"), SQL);
    }

    #[test]
    fn clear_cases_route_as_expected() {
        let w = RouterWeights::default();
        for easy in ["hi", "thanks!", "Translate 'good night' into Spanish.", "What is the capital of Peru?"] {
            let d = decide(&features(&user(easy)), &w);
            assert!(!d.large, "{easy}: {}", d.header());
        }
        let long_code = format!(
            "Why does this deadlock? Explain and fix it.\n```go\n{}\n```",
            "mu.Lock()\ndefer mu.Unlock()\nch <- v\n".repeat(20)
        );
        for hard in [
            "Prove that there are infinitely many primes.",
            "Compare Raft and Paxos and analyze the trade-offs for a 5-node cluster across two regions.",
            long_code.as_str(),
        ] {
            let d = decide(&features(&user(hard)), &w);
            assert!(d.large, "{hard}: {}", d.header());
        }
        let mut with_tools = user("Book me a table for two at 7pm and check the weather there");
        with_tools.insert("tools".into(), json!([{"type": "function", "function": {"name": "book"}}]));
        assert!(decide(&features(&with_tools), &w).large);
    }

    #[test]
    fn header_is_ascii_and_names_reasons() {
        let w = RouterWeights::default();
        let d = decide(&features(&user("Prove that sqrt(2) is irrational.")), &w);
        let h = d.header();
        assert!(h.starts_with("large; score="), "{h}");
        assert!(h.contains("+math"), "{h}");
        assert!(h.bytes().all(|b| (0x20..0x7f).contains(&b)), "{h}");
        let hi = decide(&features(&user("hi")), &w).header();
        assert!(hi.starts_with("small; ") && hi.contains("-simple-task"), "{hi}");
        let none = Decision { large: false, score: f64::NAN, reasons: vec![] };
        assert_eq!(none.header(), "small; score=0.00; reasons=none");
    }

    #[test]
    fn weights_read_partially_and_refuse_unknown_fields() {
        let w: RouterWeights = serde_json::from_value(json!({"threshold": 0.5, "code": 2.0})).unwrap();
        assert_eq!(w, RouterWeights { threshold: 0.5, code: 2.0, ..RouterWeights::default() });
        assert!(serde_json::from_value::<RouterWeights>(json!({"treshold": 0.5})).is_err());
    }

    /// Scores the router on the labelled set with the frozen default weights. The assertion
    /// is on the `report` half, which took no part in tuning.
    #[test]
    fn evaluation() {
        let all = load();
        assert!(all.len() >= 240, "the labelled set holds at least 240 prompts");
        let w = RouterWeights::default();
        let tune: Vec<&Example> = all.iter().filter(|e| e.tune).collect();
        let report: Vec<&Example> = all.iter().filter(|e| !e.tune).collect();
        for (name, set) in [("tune", &tune), ("report", &report)] {
            let m = evaluate(set, &w);
            println!(
                "{name}: n={} accuracy={:.3} share_small={:.3} saving_vs_always_large={:.3} hard_sent_small={} easy_sent_large={}",
                m.n, m.accuracy, m.share_small, m.saving, m.errors.0, m.errors.1
            );
        }
        for e in &all {
            let d = decide(&features(&e.body), &w);
            if d.large != e.hard {
                let (label, split) = (if e.hard { "hard" } else { "easy" }, if e.tune { "tune" } else { "report" });
                println!("misrouted: id={} {label} ({split}): {}", e.id, d.header());
            }
        }
        // Measured with the frozen defaults: 0.907 (117 of 129). The bound leaves three
        // prompts of margin, so a change to the scorer that loses more fails here.
        let m = evaluate(&report, &w);
        assert!(m.accuracy >= 0.88, "report accuracy {:.3}", m.accuracy);
    }

    /// Fits the weights on the `tune` half: logistic regression (full-batch gradient descent,
    /// light L2), then the threshold that maximises tune accuracy. Prints a `Default` body.
    /// `cargo test --no-default-features --lib smallroute::tests::tune_weights -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn tune_weights() {
        let all = load();
        let tune: Vec<(Vec<f64>, f64)> = all
            .iter()
            .filter(|e| e.tune)
            .map(|e| (features(&e.body).inputs().to_vec(), if e.hard { 1.0 } else { 0.0 }))
            .collect();
        let (mut bias, mut w) = (0.0, [0.0; INPUTS]);
        let (rate, l2, n) = (0.1, 0.01, tune.len() as f64);
        for _ in 0..50_000 {
            let (mut gb, mut gw) = (0.0, [0.0; INPUTS]);
            for (x, y) in &tune {
                let z = bias + x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                let err = 1.0 / (1.0 + (-z).exp()) - y;
                gb += err;
                for i in 0..INPUTS {
                    gw[i] += err * x[i];
                }
            }
            bias -= rate * gb / n;
            for i in 0..INPUTS {
                w[i] -= rate * (gw[i] / n + l2 * w[i]);
            }
        }
        let round = |v: f64| (v * 100.0).round() / 100.0;
        let (bias, w) = (round(bias), w.map(round));
        let scores: Vec<(f64, bool)> =
            tune.iter().map(|(x, y)| (bias + x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>(), *y > 0.5)).collect();
        let accuracy = |t: f64| scores.iter().filter(|(s, hard)| (*s >= t) == *hard).count() as f64 / n;
        // The threshold with the best tune accuracy; ties go to the one nearest 0, the
        // logistic model's own boundary.
        let mut best = (accuracy(0.0), 0.0_f64);
        for t in (-300..=300).map(|t| f64::from(t) / 100.0) {
            let acc = accuracy(t);
            if acc > best.0 + 1e-12 || ((acc - best.0).abs() < 1e-12 && t.abs() < best.1.abs()) {
                best = (acc, t);
            }
        }
        let fields: Vec<String> = FIELDS.iter().zip(w).map(|(name, v)| format!("{name}: {v}")).collect();
        println!("RouterWeights {{ bias: {bias}, {}, threshold: {} }}", fields.join(", "), best.1);
        println!("tune accuracy {:.3} at the threshold ({:.3} at 0)", best.0, accuracy(0.0));
    }
}
