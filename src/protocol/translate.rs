//! What the other dialects ([`super::responses`], [`super::messages`]) read of a chat
//! completion: the one answer (text, reasoning, tool calls, finish reason, usage) of a whole
//! body, and the pieces of a streamed chunk, in the order they arrive. A request in another
//! dialect is served as a chat completion on every backend and translated back through these,
//! so both dialects read chat the same way.

use serde_json::{Map, Value};

use super::Usage;

/// One tool call of an answer: its id, the function's name, the arguments as JSON text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The first choice of a chat completion body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub reasoning: String,
    pub calls: Vec<Call>,
    pub finish: Option<String>,
    pub usage: Option<Usage>,
    /// The stop string that ended the answer, when the backend says which (vLLM's
    /// `stop_reason`).
    pub stop_sequence: Option<String>,
}

impl Reply {
    pub fn of_body(body: &Map<String, Value>) -> Reply {
        let choice = body.get("choices").and_then(|c| c.get(0));
        let msg = choice.and_then(|c| c.get("message"));
        let text_of = |k: &str| msg.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
        let calls = msg
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
            .map(|a| a.iter().map(call_of).collect())
            .unwrap_or_default();
        Reply {
            text: text_of("content"),
            reasoning: msg.map(reasoning_of).unwrap_or_default().to_owned(),
            calls,
            finish: choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str).map(str::to_owned),
            usage: body.get("usage").and_then(Usage::from_json),
            stop_sequence: choice.and_then(stop_reason),
        }
    }
}

fn call_of(v: &Value) -> Call {
    let f = v.get("function");
    let s =
        |o: Option<&Value>, k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
    let arguments = match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) => s.clone(),
        // Ollama sends the arguments as an object.
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => String::new(),
    };
    Call { id: s(Some(v), "id"), name: s(f, "name"), arguments }
}

/// `reasoning_content` (llama-server, DeepSeek) or `reasoning` (vLLM, Ollama).
fn reasoning_of(m: &Value) -> &str {
    m.get("reasoning_content").or_else(|| m.get("reasoning")).and_then(Value::as_str).unwrap_or_default()
}

fn stop_reason(choice: &Value) -> Option<String> {
    choice.get("stop_reason").and_then(Value::as_str).map(str::to_owned)
}

/// One piece of a streamed chunk (of choice 0; other choices are not read).
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Reasoning(String),
    /// A tool call's first delta: its index in the answer, id and name.
    CallStart {
        index: u64,
        id: String,
        name: String,
    },
    /// More of a tool call's arguments.
    CallArgs {
        index: u64,
        delta: String,
    },
    Finish {
        reason: String,
        stop_sequence: Option<String>,
    },
    Usage(Usage),
}

/// The pieces of one chunk, in the order a client would read them.
pub fn pieces(chunk: &Map<String, Value>) -> Vec<Piece> {
    let mut out = Vec::new();
    let choice = chunk.get("choices").and_then(Value::as_array).and_then(|c| c.iter().find(|c| index_of(c) == 0));
    if let Some(c) = choice {
        if let Some(d) = c.get("delta") {
            let r = reasoning_of(d);
            if !r.is_empty() {
                out.push(Piece::Reasoning(r.to_owned()));
            }
            if let Some(t) = d.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                out.push(Piece::Text(t.to_owned()));
            }
            for (i, tc) in d.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let index = tc.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                let f = tc.get("function");
                let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    let id = tc.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                    out.push(Piece::CallStart { index, id, name: name.to_owned() });
                }
                let args = match f.and_then(|f| f.get("arguments")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => String::new(),
                };
                if !args.is_empty() {
                    out.push(Piece::CallArgs { index, delta: args });
                }
            }
        }
        if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
            out.push(Piece::Finish { reason: f.to_owned(), stop_sequence: stop_reason(c) });
        }
    }
    if let Some(u) = chunk.get("usage").and_then(Usage::from_json) {
        out.push(Piece::Usage(u));
    }
    out
}

fn index_of(choice: &Value) -> u64 {
    choice.get("index").and_then(Value::as_u64).unwrap_or(0)
}

/// A JSON text as a value; text that is not JSON stays a string (a model's broken arguments
/// are shown, not dropped).
pub fn parse_or_string(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A fresh id with this prefix (`resp_`, `msg_`, `fc_`, `toolu_`...).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_body_reads_as_one_reply() {
        let body = obj(
            json!({"choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":"hmm",
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls","stop_reason":null}],
            "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1}}}),
        );
        let r = Reply::of_body(&body);
        assert_eq!((r.text.as_str(), r.reasoning.as_str()), ("Hi", "hmm"));
        assert_eq!(r.calls, vec![Call { id: "call_1".into(), name: "f".into(), arguments: r#"{"a":1}"#.into() }]);
        assert_eq!(r.finish.as_deref(), Some("tool_calls"));
        assert_eq!(r.usage.map(|u| (u.prompt_tokens, u.cached_tokens)), Some((3, Some(1))));
        assert_eq!(r.stop_sequence, None);
        // Ollama's arguments are an object; vLLM names the stop string.
        let body = obj(
            json!({"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"g","arguments":{"b":2}}}]},
            "finish_reason":"stop","stop_reason":"END"}]}),
        );
        let r = Reply::of_body(&body);
        assert_eq!((r.text.as_str(), r.calls[0].arguments.as_str()), ("", r#"{"b":2}"#));
        assert_eq!(r.stop_sequence.as_deref(), Some("END"));
    }

    #[test]
    fn chunks_read_as_pieces_in_order() {
        let c = obj(json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}));
        assert_eq!(pieces(&c), vec![]);
        let c = obj(json!({"choices":[{"index":0,"delta":{"reasoning_content":"r","content":"t"}}]}));
        assert_eq!(pieces(&c), vec![Piece::Reasoning("r".into()), Piece::Text("t".into())]);
        let c = obj(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}},
            {"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}));
        assert_eq!(
            pieces(&c),
            vec![
                Piece::CallStart { index: 0, id: "call_a".into(), name: "f".into() },
                Piece::CallStart { index: 1, id: "call_b".into(), name: "g".into() },
                Piece::CallArgs { index: 1, delta: "{}".into() },
            ]
        );
        let c = obj(
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\""}}]}}]}),
        );
        assert_eq!(pieces(&c), vec![Piece::CallArgs { index: 0, delta: "{\"x\"".into() }]);
        let c = obj(
            json!({"choices":[{"index":1,"delta":{"content":"other choice"}},{"index":0,"delta":{},"finish_reason":"length"}]}),
        );
        assert_eq!(pieces(&c), vec![Piece::Finish { reason: "length".into(), stop_sequence: None }]);
        let c = obj(json!({"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}));
        assert_eq!(
            pieces(&c),
            vec![Piece::Usage(Usage { prompt_tokens: 4, completion_tokens: 1, total_tokens: 5, cached_tokens: None })]
        );
    }

    #[test]
    fn arguments_parse_or_stay_text() {
        assert_eq!(parse_or_string(r#"{"a":1}"#), json!({"a":1}));
        assert_eq!(parse_or_string(""), json!({}));
        assert_eq!(parse_or_string("{broken"), json!("{broken"));
    }
}
