//! Grammars for constrained decoding, built from the JSON schemas that `response_format` and
//! `tools` carry ([`crate::chat::tools::Constraint`]), compiled once per distinct constraint.
//!
//! A schema becomes GBNF through llama.cpp's own converter (`json_schema_to_grammar`, the one
//! llama-server uses); the literal text a format puts around the JSON (`<tool_call>\n` …
//! `\n</tool_call>`) wraps it. The result is checked to compile with the model's vocabulary
//! before any job carries it, so a grammar never fails on the engine thread; a schema the
//! converter cannot express is the client's 400, naming the parameter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use super::job::Grammar;
use crate::chat::tools::Constraint;
use crate::protocol::error::ApiError;

/// Compiled grammars by constraint (its JSON), at most [`Grammars::MAX`]; the oldest goes.
#[derive(Default)]
pub struct Grammars {
    by_key: Mutex<Compiled>,
}

/// The grammars by key, and the keys oldest first.
type Compiled = (HashMap<String, Arc<Grammar>>, std::collections::VecDeque<String>);

impl Grammars {
    pub const MAX: usize = 256;

    /// The grammar for `c`, from the cache or built now; `param` names the request field the
    /// schema came from, for the 400.
    pub fn get(&self, model: &LlamaModel, c: &Constraint, param: &str) -> Result<Arc<Grammar>, ApiError> {
        let key = key(c);
        if let Some(g) = self.lock().0.get(&key) {
            return Ok(g.clone());
        }
        let g = Arc::new(build(model, c, param)?);
        let mut st = self.lock();
        if !st.0.contains_key(&key) {
            st.1.push_back(key.clone());
            if st.1.len() > Self::MAX {
                if let Some(old) = st.1.pop_front() {
                    st.0.remove(&old);
                }
            }
        }
        st.0.insert(key, g.clone());
        Ok(g)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Compiled> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(c: &Constraint) -> String {
    serde_json::json!([c.schema, c.prefix, c.suffix, c.repeat, c.lazy_triggers]).to_string()
}

/// GBNF for `c`: the converter's rules with its `root` renamed, under a root that adds the
/// literal prefix and suffix (and repeats the item, newline-separated, when `c.repeat`).
///
/// Tool calls (`param` "tools") are constrained to compact JSON: their arguments reach the
/// client compacted anyway, so whitespace would be tokens spent for nothing, and a format
/// whose marker is the JSON itself (Llama 3's `{"name"`) is then always recognised.
pub fn gbnf(c: &Constraint, param: &str) -> Result<String, ApiError> {
    let schema = serde_json::to_string(&c.schema).unwrap_or_default();
    let mut rules = llama_cpp_2::json_schema_to_grammar(&schema).map_err(|e| {
        ApiError::invalid_request(
            format!("The JSON schema in '{param}' cannot be turned into a grammar: {e}."),
            Some(param),
        )
    })?;
    if param == "tools" {
        let compact: Vec<&str> =
            rules.lines().map(|l| if l.starts_with("space ::=") { r#"space ::= """# } else { l }).collect();
        rules = compact.join("\n") + "\n";
    }
    if c.prefix.is_empty() && c.suffix.is_empty() && !c.repeat {
        return Ok(rules);
    }
    let mut out = String::with_capacity(rules.len() + 128);
    for line in rules.lines() {
        match line.strip_prefix("root ::=") {
            Some(rest) => {
                out.push_str("tg-json ::=");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    let item = format!("{} tg-json {}", literal(&c.prefix), literal(&c.suffix));
    if c.repeat {
        out.push_str(&format!("tg-item ::= {item}\nroot ::= tg-item (\"\\n\" tg-item)*\n"));
    } else {
        out.push_str(&format!("root ::= {item}\n"));
    }
    Ok(out)
}

fn build(model: &LlamaModel, c: &Constraint, param: &str) -> Result<Grammar, ApiError> {
    let gbnf = gbnf(c, param)?;
    let compiled = if c.lazy_triggers.is_empty() {
        LlamaSampler::grammar(model, &gbnf, "root").map(drop)
    } else {
        LlamaSampler::grammar_lazy(model, &gbnf, "root", &c.lazy_triggers, &[]).map(drop)
    };
    compiled.map_err(|e| {
        tracing::warn!(error = %e, grammar = %gbnf, "a generated grammar did not compile");
        ApiError::invalid_request(
            format!("The JSON schema in '{param}' produced a grammar that does not compile ({e})."),
            Some(param),
        )
    })?;
    Ok(Grammar { gbnf, triggers: c.lazy_triggers.clone() })
}

/// A GBNF string literal (`""` for empty text, which GBNF accepts).
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_what_gbnf_needs() {
        assert_eq!(literal("<tool_call>\n"), r#""<tool_call>\n""#);
        assert_eq!(literal(r#"a"b\"#), r#""a\"b\\""#);
        assert_eq!(literal(""), r#""""#);
    }

    #[test]
    fn a_wrapped_schema_renames_the_converters_root() {
        let c = Constraint {
            schema: serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
            prefix: "<tool_call>\n".into(),
            suffix: "\n</tool_call>".into(),
            repeat: true,
            lazy_triggers: vec!["<tool_call>".into()],
        };
        let g = gbnf(&c, "tools").unwrap();
        assert_eq!(g.lines().filter(|l| l.starts_with("root ::=")).count(), 1, "{g}");
        assert!(g.lines().any(|l| l == r#"space ::= """#), "tool calls are compact JSON: {g}");
        assert!(g.contains("tg-json ::="), "{g}");
        assert!(g.contains(r#"tg-item ::= "<tool_call>\n" tg-json "\n</tool_call>""#), "{g}");
    }
}
