//! Reasoning ("thinking") text: which tags a model's template uses, and a streaming splitter
//! that takes them out of the answer, as llama-server's `--reasoning-format deepseek` does.
//!
//! The rule (llama.cpp's `try_parse_reasoning`): reasoning is only recognised at the very
//! start of the output — the open tag first (leading whitespace allowed), or no tag at all
//! when the generation prompt already opened it ([`ReasoningTags::starts_open`]). It runs to
//! the close tag, or to the end of the output when the model never closes it. The reasoning
//! is trimmed of whitespace at both ends, the answer of whitespace at its start; neither tag
//! ever reaches either. An open tag anywhere later is ordinary text.
//!
//! Streaming: text is passed on as soon as it cannot be the start of the tag being looked
//! for (so `</thi` waits for the next piece); whitespace at the end of the reasoning waits
//! until something other than whitespace follows it, so trimming never takes back what was
//! sent. Pieces are cut anywhere: the splitter works a character at a time.

/// The tags around a model's reasoning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasoningTags {
    pub open: String,
    pub close: String,
    /// The generation prompt already opened the reasoning (`…assistant\n<think>\n`): the
    /// output starts inside it and only the close tag will come.
    pub starts_open: bool,
}

impl ReasoningTags {
    /// `<think>` … `</think>` (DeepSeek-R1, Qwen3, QwQ and most others).
    pub fn think() -> Self {
        ReasoningTags { open: "<think>".into(), close: "</think>".into(), starts_open: false }
    }

    /// These tags with `starts_open` read from the prompt that was actually rendered, which is
    /// what llama.cpp does (`thinking_forced_open`: the prompt ends with the open tag and a
    /// newline). This is the reliable answer; [`detect_reasoning`]'s is a guess from the source.
    pub fn for_prompt(mut self, rendered_prompt: &str) -> Self {
        self.starts_open = rendered_prompt.trim_end().ends_with(self.open.as_str());
        self
    }
}

/// The reasoning tags a chat template's source uses, if any: `<think>` (DeepSeek-R1 and its
/// distills, Qwen3, QwQ, …) or Command R7B's `<|START_THINKING|>`. `starts_open` is guessed
/// from the source (a generation prompt that writes the open tag itself, as DeepSeek-R1's and
/// QwQ's do); prefer [`ReasoningTags::for_prompt`] once the prompt is rendered.
pub fn detect_reasoning(template_source: &str) -> Option<ReasoningTags> {
    let src = template_source;
    if src.contains("<|START_THINKING|>") {
        return Some(ReasoningTags {
            open: "<|START_THINKING|>".into(),
            close: "<|END_THINKING|>".into(),
            starts_open: false,
        });
    }
    if !src.contains("<think>") {
        return None;
    }
    // The generation prompt's literal, as these templates spell it: `'<｜Assistant｜><think>\n'`
    // (DeepSeek-R1), `'<|im_start|>assistant\n<think>\n'` (QwQ). Qwen3 writes `<think>` only
    // to close it at once when thinking is off, so it does not start open.
    let opened = ["Assistant｜><think>", "assistant\\n<think>", "assistant\n<think>"];
    let starts_open = opened.iter().any(|p| src.contains(p));
    Some(ReasoningTags { starts_open, ..ReasoningTags::think() })
}

/// What the splitter hands on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Reasoning(String),
    /// The answer: everything that is not reasoning, for the tool-call parser.
    Body(String),
}

#[derive(Clone, Debug)]
enum State {
    /// Before anything but whitespace: is the open tag coming?
    Start {
        lead: String,
    },
    /// Inside the reasoning; `started` once something but whitespace came.
    Think {
        started: bool,
    },
    /// Just after the close tag: whitespace is dropped.
    BodyStart,
    Body,
}

/// Splits reasoning from the answer, a piece at a time (see the module header).
#[derive(Clone, Debug)]
pub(crate) struct Splitter {
    tags: ReasoningTags,
    state: State,
    /// A possible start of the tag being looked for.
    pending: String,
    /// Whitespace at the end of the reasoning, sent only if something else follows.
    ws: String,
}

impl Splitter {
    pub(crate) fn new(tags: ReasoningTags) -> Self {
        let state =
            if tags.starts_open { State::Think { started: false } } else { State::Start { lead: String::new() } };
        Splitter { tags, state, pending: String::new(), ws: String::new() }
    }

    pub(crate) fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        for (i, c) in text.char_indices() {
            if let State::Body = self.state {
                body(&text[i..], out);
                return;
            }
            self.step(c, out);
        }
    }

    fn step(&mut self, c: char, out: &mut Vec<Piece>) {
        match &mut self.state {
            State::Start { lead } => {
                if self.pending.is_empty() && c.is_whitespace() {
                    lead.push(c);
                    return;
                }
                self.pending.push(c);
                if self.pending == self.tags.open {
                    self.pending.clear();
                    self.state = State::Think { started: false };
                } else if !self.tags.open.starts_with(self.pending.as_str()) {
                    let text = format!("{lead}{}", std::mem::take(&mut self.pending));
                    self.state = State::Body;
                    body(&text, out);
                }
            }
            State::Think { started } => {
                if !*started && c.is_whitespace() {
                    return;
                }
                *started = true;
                self.pending.push(c);
                if self.pending.ends_with(self.tags.close.as_str()) {
                    let keep = self.pending.len() - self.tags.close.len();
                    let text = self.pending[..keep].to_owned();
                    self.reasoning(&text, out);
                    self.pending.clear();
                    self.ws.clear();
                    self.state = State::BodyStart;
                    return;
                }
                let keep = partial_suffix(&self.pending, &self.tags.close);
                if keep < self.pending.len() {
                    let text: String = self.pending.drain(..self.pending.len() - keep).collect();
                    self.reasoning(&text, out);
                }
            }
            State::BodyStart => {
                if !c.is_whitespace() {
                    self.state = State::Body;
                    let mut b = [0; 4];
                    body(c.encode_utf8(&mut b), out);
                }
            }
            State::Body => {
                let mut b = [0; 4];
                body(c.encode_utf8(&mut b), out);
            }
        }
    }

    /// Reasoning text, its trailing whitespace held back.
    fn reasoning(&mut self, text: &str, out: &mut Vec<Piece>) {
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            self.ws.push_str(text);
            return;
        }
        let mut s = std::mem::take(&mut self.ws);
        s.push_str(trimmed);
        self.ws.push_str(&text[trimmed.len()..]);
        push_piece(out, Piece::Reasoning(s));
    }

    /// The end of the output: what was held back is what it is (a partial close tag is
    /// reasoning; a partial open tag is the answer).
    pub(crate) fn flush(&mut self, out: &mut Vec<Piece>) {
        match std::mem::replace(&mut self.state, State::Body) {
            State::Start { lead } => {
                let text = format!("{lead}{}", std::mem::take(&mut self.pending));
                body(&text, out);
            }
            State::Think { .. } => {
                let text = std::mem::take(&mut self.pending);
                self.reasoning(&text, out);
                self.ws.clear();
            }
            State::BodyStart | State::Body => {}
        }
    }
}

fn body(text: &str, out: &mut Vec<Piece>) {
    if !text.is_empty() {
        push_piece(out, Piece::Body(text.to_owned()));
    }
}

/// Appends, joining a piece to the one before it when they are of a kind.
fn push_piece(out: &mut Vec<Piece>, p: Piece) {
    match (out.last_mut(), p) {
        (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) | (Some(Piece::Body(a)), Piece::Body(b)) => a.push_str(&b),
        (_, p) => out.push(p),
    }
}

/// The length of the longest end of `text` that is a proper start of `tag` (0 if none).
pub(crate) fn partial_suffix(text: &str, tag: &str) -> usize {
    let max = tag.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| text.is_char_boundary(text.len() - k) && tag.starts_with(&text[text.len() - k..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reasoning, body) after feeding `pieces` and flushing.
    fn split(tags: &ReasoningTags, pieces: &[&str]) -> (String, String) {
        let mut s = Splitter::new(tags.clone());
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.flush(&mut out);
        let mut r = (String::new(), String::new());
        for p in out {
            match p {
                Piece::Reasoning(t) => r.0.push_str(&t),
                Piece::Body(t) => r.1.push_str(&t),
            }
        }
        r
    }

    fn every_split(tags: &ReasoningTags, text: &str) -> (String, String) {
        let whole = split(tags, &[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(tags, &refs), whole, "one char at a time: {text:?}");
        for (i, _) in text.char_indices().skip(1) {
            assert_eq!(split(tags, &[&text[..i], &text[i..]]), whole, "cut at {i}: {text:?}");
        }
        whole
    }

    #[test]
    fn think_tags_are_split_out_and_trimmed() {
        let t = ReasoningTags::think();
        let r = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(every_split(&t, "<think>\nLet me see.\n</think>\n\nHello."), r("Let me see.", "Hello."));
        assert_eq!(every_split(&t, "  <think>a  b</think>c"), r("a  b", "c"));
        assert_eq!(every_split(&t, "<think></think>Hi"), r("", "Hi"));
        assert_eq!(every_split(&t, "No thoughts. <think>x</think>"), r("", "No thoughts. <think>x</think>"));
        assert_eq!(every_split(&t, "<thin"), r("", "<thin"));
        assert_eq!(every_split(&t, "<thinking>x"), r("", "<thinking>x"));
        // Never closed (max_tokens): all of it is reasoning, a partial close tag included.
        assert_eq!(every_split(&t, "<think>still going </thi"), r("still going </thi", ""));
        assert_eq!(every_split(&t, "<think>a < b <\n/think></think>ok"), r("a < b <\n/think>", "ok"));
    }

    #[test]
    fn a_prompt_that_opened_the_tag_starts_inside() {
        let t = ReasoningTags { starts_open: true, ..ReasoningTags::think() };
        assert_eq!(every_split(&t, "\nhmm 🤔\n</think>\n\nDone"), ("hmm 🤔".into(), "Done".into()));
        assert_eq!(every_split(&t, "only thoughts"), ("only thoughts".into(), String::new()));
    }

    #[test]
    fn other_tags_work_the_same() {
        let t = detect_reasoning("{{ '<|START_THINKING|>' }}").unwrap();
        assert_eq!(every_split(&t, "<|START_THINKING|>plan<|END_THINKING|>act"), ("plan".into(), "act".into()));
    }

    #[test]
    fn detection_reads_the_template_source() {
        assert_eq!(detect_reasoning("{{ messages }}"), None);
        let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}";
        assert_eq!(detect_reasoning(qwen3), Some(ReasoningTags::think()));
        let r1 = "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}";
        assert!(detect_reasoning(r1).unwrap().starts_open);
        let qwq = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}";
        assert!(detect_reasoning(qwq).unwrap().starts_open);
        let t = ReasoningTags::think();
        assert!(t.clone().for_prompt("<|im_start|>assistant\n<think>\n").starts_open);
        assert!(!t.for_prompt("<|im_start|>assistant\n").starts_open);
    }

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("abc</th", "</think>"), 4);
        assert_eq!(partial_suffix("abc", "</think>"), 0);
        assert_eq!(partial_suffix("<", "<"), 0, "a whole tag is not a partial one");
        assert_eq!(partial_suffix("é<", "<x"), 1);
    }
}
