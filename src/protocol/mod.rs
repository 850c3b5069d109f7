//! The OpenAI wire types that tollgate reads and writes.
//!
//! A request body is kept as the JSON object the client sent (`serde_json::Map`, in its
//! original key order) so that fields tollgate does not know (vLLM's `top_k`, `min_p`,
//! `guided_json`, ...) reach OpenAI-compatible upstreams untouched. Validation reads the
//! fields tollgate does know into typed values ([`ValidRequest`]) and names the offending
//! parameter when one is wrong; nothing downstream sees an unvalidated request.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod chunk;
pub mod error;
pub mod raw;
pub mod messages;
pub mod responses;
pub mod translate;

use error::ApiError;

/// Which OpenAI endpoint a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// The API a client spoke. A Responses or Messages request is served as a chat completion
/// (translated by [`responses`] and [`messages`]); its record names the endpoint it came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dialect {
    #[default]
    OpenAi,
    Responses,
    Messages,
}

impl Dialect {
    /// The endpoint a translated request is recorded under.
    pub fn endpoint_name(self) -> Option<&'static str> {
        match self {
            Dialect::OpenAi => None,
            Dialect::Responses => Some("responses"),
            Dialect::Messages => Some("messages"),
        }
    }
}

/// One chat message, as far as a backend that renders prompts itself needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A stop condition: `stop` may be a string or an array of up to four strings.
pub type StopList = Vec<String>;

/// Sampling and length parameters, validated. Serialized (the parameters given, without the
/// seed, which is recorded on its own) as the ledger's `sampler`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(skip)]
    pub seed: Option<i64>,
    /// `max_completion_tokens`, else `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: StopList,
    pub n: u32,
}

/// What the prompt is: chat messages, a raw completion prompt, or embedding inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Embed(Vec<String>),
}

/// A request that passed validation. `body` is the client's JSON object, untouched.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    pub prompt: Prompt,
    pub sampling: Sampling,
    pub user: Option<String>,
    pub body: Map<String, Value>,
}

/// Token usage as OpenAI reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`, when the backend reports it.
    #[serde(skip)]
    pub cached_tokens: Option<u64>,
}

impl Usage {
    /// Reads a `usage` object (chat's or the Responses API's); `None` when it is absent, null,
    /// or not usage-shaped.
    pub fn from_json(v: &Value) -> Option<Usage> {
        let o = v.as_object()?;
        // Chat's names, else the Responses API's (`input_tokens`, `output_tokens`).
        let (p, c, d) = match o.contains_key("prompt_tokens") {
            true => ("prompt_tokens", "completion_tokens", "prompt_tokens_details"),
            false => ("input_tokens", "output_tokens", "input_tokens_details"),
        };
        let prompt = o.get(p)?.as_u64()?;
        let completion = o.get(c).and_then(Value::as_u64).unwrap_or(0);
        let total = o.get("total_tokens").and_then(Value::as_u64).unwrap_or(prompt + completion);
        let cached = o.get(d).and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64);
        Some(Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total, cached_tokens: cached })
    }

    pub fn to_json(self) -> Value {
        let mut o = Map::new();
        o.insert("prompt_tokens".into(), self.prompt_tokens.into());
        o.insert("completion_tokens".into(), self.completion_tokens.into());
        o.insert("total_tokens".into(), self.total_tokens.into());
        if let Some(c) = self.cached_tokens {
            let mut d = Map::new();
            d.insert("cached_tokens".into(), c.into());
            o.insert("prompt_tokens_details".into(), Value::Object(d));
        }
        Value::Object(o)
    }
}

/// Parses and validates a request body for `endpoint`.
pub fn validate(endpoint: Endpoint, bytes: &[u8]) -> Result<ValidRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_request(format!("We could not parse the JSON body of your request: {e}"), None)
    })?;
    let Value::Object(body) = value else {
        return Err(ApiError::invalid_request("The request body must be a JSON object.", None));
    };
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::invalid_request("you must provide a model parameter", Some("model")))
        }
        Some(_) => return Err(type_error("model", "a string")),
    };
    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid_request(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    Some("stream_options"),
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(type_error("stream_options.include_usage", "a boolean")),
            }
        }
        Some(_) => return Err(type_error("stream_options", "an object")),
    };
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(&body)?),
        Endpoint::Completions => Prompt::Text(completion_prompt(&body)?),
        Endpoint::Embeddings => Prompt::Embed(embedding_input(&body)?),
    };
    let sampling =
        if endpoint == Endpoint::Embeddings { Sampling { n: 1, ..Sampling::default() } } else { sampling(&body)? };
    let user = match body.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(type_error("user", "a string")),
    };
    Ok(ValidRequest {
        endpoint,
        model,
        stream: stream && endpoint != Endpoint::Embeddings,
        include_usage,
        prompt,
        sampling,
        user,
        body,
    })
}

fn type_error(param: &str, want: &str) -> ApiError {
    ApiError::invalid_request(format!("Invalid type for '{param}': expected {want}."), Some(param))
}

fn opt_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(key, "a boolean")),
    }
}

fn opt_f64(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if !(lo..=hi).contains(&v) {
                return Err(ApiError::invalid_request(
                    format!("Invalid '{key}': {v} is out of range; it must be between {lo} and {hi}."),
                    Some(key),
                ));
            }
            Ok(Some(v))
        }
        Some(_) => Err(type_error(key, "a number")),
    }
}

fn opt_int(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| type_error(key, "an integer")),
        Some(_) => Err(type_error(key, "an integer")),
    }
}

fn positive_u32(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, ApiError> {
    match opt_int(body, key)? {
        None => Ok(None),
        Some(v) if v >= 1 && v <= u32::MAX as i64 => Ok(Some(v as u32)),
        Some(v) => {
            Err(ApiError::invalid_request(format!("Invalid '{key}': {v}; it must be a positive integer."), Some(key)))
        }
    }
}

fn sampling(body: &Map<String, Value>) -> Result<Sampling, ApiError> {
    let max_completion = positive_u32(body, "max_completion_tokens")?;
    let max_tokens = positive_u32(body, "max_tokens")?;
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 4 {
                return Err(ApiError::invalid_request(
                    "Invalid 'stop': at most 4 stop sequences are allowed.",
                    Some("stop"),
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| type_error("stop", "a string or an array of strings"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(type_error("stop", "a string or an array of strings")),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_request("Invalid 'stop': a stop sequence must not be empty.", Some("stop")));
    }
    let n = match opt_int(body, "n")? {
        None => 1,
        Some(v) if (1..=128).contains(&v) => v as u32,
        Some(v) => {
            return Err(ApiError::invalid_request(
                format!("Invalid 'n': {v}; it must be between 1 and 128."),
                Some("n"),
            ))
        }
    };
    let top_k = opt_int(body, "top_k")?;
    if let Some(k) = top_k {
        if k < -1 {
            return Err(ApiError::invalid_request(
                format!("Invalid 'top_k': {k}; it must be -1, 0 or positive."),
                Some("top_k"),
            ));
        }
    }
    Ok(Sampling {
        temperature: opt_f64(body, "temperature", 0.0, 2.0)?,
        top_p: opt_f64(body, "top_p", 0.0, 1.0)?,
        top_k,
        min_p: opt_f64(body, "min_p", 0.0, 1.0)?,
        presence_penalty: opt_f64(body, "presence_penalty", -2.0, 2.0)?,
        frequency_penalty: opt_f64(body, "frequency_penalty", -2.0, 2.0)?,
        repetition_penalty: opt_f64(body, "repetition_penalty", 0.01, 10.0)?,
        seed: opt_int(body, "seed")?,
        max_tokens: max_completion.or(max_tokens),
        stop,
        n,
    })
}

fn messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_request("Missing required parameter: 'messages'.", Some("messages")))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(type_error("messages", "an array")),
    };
    if list.is_empty() {
        return Err(ApiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            Some("messages"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let o = m.as_object().ok_or_else(|| type_error(&param, "an object"))?;
        let role = match o.get("role") {
            Some(Value::String(r)) => r.clone(),
            _ => {
                return Err(ApiError::invalid_request(
                    format!("Missing required parameter: '{param}.role'."),
                    Some(&format!("{param}.role")),
                ))
            }
        };
        if !matches!(role.as_str(), "system" | "developer" | "user" | "assistant" | "tool" | "function") {
            return Err(ApiError::invalid_request(
                format!("Invalid value for '{param}.role': '{role}'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'."),
                Some(&format!("{param}.role")),
            ));
        }
        let content = match o.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                // Non-text parts (images, audio) are forwarded to remote upstreams untouched;
                // the text is what a backend that renders prompts itself uses.
                let mut text = String::new();
                for p in parts {
                    if p.get("type").and_then(Value::as_str) == Some("text") {
                        text.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                }
                text
            }
            Some(_) => return Err(type_error(&format!("{param}.content"), "a string or an array of content parts")),
        };
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

fn completion_prompt(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("prompt") {
        None | Some(Value::Null) => {
            Err(ApiError::invalid_request("Missing required parameter: 'prompt'.", Some("prompt")))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_owned()),
        Some(Value::Array(_)) => Err(ApiError::invalid_request(
            "Invalid 'prompt': tollgate accepts one prompt per request (a string or an array of one string).",
            Some("prompt"),
        )),
        Some(_) => Err(type_error("prompt", "a string")),
    }
}

fn embedding_input(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match body.get("input") {
        None | Some(Value::Null) => {
            Err(ApiError::invalid_request("Missing required parameter: 'input'.", Some("input")))
        }
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => {
            // Token-id arrays are passed through to upstreams; text is what local embeddings take.
            Ok(a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        }
        Some(Value::Array(_)) => Err(ApiError::invalid_request("Invalid 'input': empty array.", Some("input"))),
        Some(_) => Err(type_error("input", "a string or an array")),
    }
}

/// `"system_prompt": "NAME"` or `"NAME@VERSION"` in a chat request: the named prompt from
/// `prompts/` becomes the first system message (a bare NAME takes its highest version).
/// The field itself is not forwarded.
pub fn apply_named_prompt(
    req: &mut ValidRequest,
    prompts: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let Some(v) = req.body.remove("system_prompt") else { return Ok(()) };
    let name = match v {
        Value::String(s) => s,
        Value::Null => return Ok(()),
        _ => return Err(type_error("system_prompt", "a string")),
    };
    if req.endpoint != Endpoint::Chat {
        return Err(ApiError::invalid_request("'system_prompt' is for chat completions.", Some("system_prompt")));
    }
    let text = prompts.get(&name).or_else(|| {
        let prefix = format!("{name}@");
        prompts
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .max_by(|a, b| version_key(&a.0[prefix.len()..]).cmp(&version_key(&b.0[prefix.len()..])))
            .map(|(_, t)| t)
    });
    let Some(text) = text else {
        return Err(ApiError::invalid_request(
            format!("There is no prompt named '{name}' in prompts/."),
            Some("system_prompt"),
        ));
    };
    let text = text.trim_end().to_owned();
    if let Prompt::Chat(msgs) = &mut req.prompt {
        msgs.insert(0, ChatMessage { role: "system".into(), content: text.clone() });
    }
    if let Some(Value::Array(msgs)) = req.body.get_mut("messages") {
        let mut m = Map::new();
        m.insert("role".into(), "system".into());
        m.insert("content".into(), Value::String(text));
        msgs.insert(0, Value::Object(m));
    }
    Ok(())
}

/// "1.10.2" sorts after "1.9": numeric parts compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split('.').map(|p| (p.parse().unwrap_or(0), p.to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        validate(endpoint, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn names_the_bad_parameter() {
        let e = err(Endpoint::Chat, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":3}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(Endpoint::Chat, r#"{"model":"m","messages":[],"max_tokens":3}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(Endpoint::Chat, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(Endpoint::Chat, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":"x"}"#);
        assert_eq!(e.param.as_deref(), Some("top_p"));
        let e = err(Endpoint::Chat, r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = err(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn max_completion_tokens_wins_and_unknown_fields_stay() {
        let v = validate(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":9,"max_completion_tokens":5,"top_k":3,"guided_json":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(v.sampling.max_tokens, Some(5));
        assert_eq!(v.sampling.top_k, Some(3));
        assert!(v.body.contains_key("guided_json"));
    }

    #[test]
    fn named_prompts_become_the_first_system_message() {
        let prompts: std::collections::BTreeMap<String, String> = [
            ("agent@1".to_string(), "One.\n".to_string()),
            ("agent@1.10".to_string(), "Ten.".to_string()),
            ("agent@1.9".to_string(), "Nine.".to_string()),
        ]
        .into();
        let body = br#"{"model":"m","system_prompt":"agent","messages":[{"role":"user","content":"hi"}]}"#;
        let mut v = validate(Endpoint::Chat, body).unwrap();
        apply_named_prompt(&mut v, &prompts).unwrap();
        assert_eq!(v.body["messages"][0]["content"], "Ten.", "the highest version");
        assert!(!v.body.contains_key("system_prompt"));
        let mut v = validate(
            Endpoint::Chat,
            br#"{"model":"m","system_prompt":"agent@1","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        apply_named_prompt(&mut v, &prompts).unwrap();
        assert_eq!(v.body["messages"][0]["content"], "One.");
        let mut v = validate(
            Endpoint::Chat,
            br#"{"model":"m","system_prompt":"nope","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(apply_named_prompt(&mut v, &prompts).unwrap_err().param.as_deref(), Some("system_prompt"));
    }

    #[test]
    fn malformed_json_is_400() {
        let e = err(Endpoint::Chat, r#"{"model":"#);
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
    }
}
