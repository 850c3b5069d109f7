//! From a validated request to the engine's job, for chat and completions: what the local
//! engine honours (a 400 naming any parameter it cannot, never a silent ignore), the prompt
//! rendered through the model's chat template (tools and tool results included), sampling,
//! `logit_bias`, `logprobs`, `n`, the grammar that `response_format` or `tools` ask for, and
//! how the output is to be read back ([`Reading`]).

use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::token::LlamaToken;
use serde_json::{Map, Value};

use super::job::GenParams;
use super::reply::{LogprobShape, ParseSpec, Reading};
use super::{ChatFormat, LocalBackend};
use crate::chat::schema::check_schema;
use crate::chat::template::{self, RenderInput};
use crate::chat::tools::{self, ToolChoice, ToolFormat};
use crate::protocol::error::ApiError;
use crate::protocol::{Endpoint, Prompt, ValidRequest};

/// Most alternatives per token that `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u64 = 20;

pub struct Prepared {
    pub tokens: Vec<LlamaToken>,
    pub params: GenParams,
    pub reading: Reading,
}

/// What the request asks decoding to follow, and the field that asked.
struct Constrained {
    constraint: tools::Constraint,
    param: &'static str,
}

impl LocalBackend {
    /// Refuses what the engine cannot honour, naming the parameter.
    fn check_supported(&self, req: &ValidRequest) -> Result<(), ApiError> {
        let b = &req.body;
        let set = |k: &str| b.get(k).is_some_and(|v| !v.is_null());
        for p in ["functions", "function_call", "audio", "modalities", "prediction"] {
            if set(p) {
                return Err(ApiError::unsupported_param(p, "local engine"));
            }
        }
        if req.endpoint == Endpoint::Completions {
            for p in ["tools", "tool_choice"] {
                if set(p) {
                    return Err(ApiError::invalid_request(format!("'{p}' is a chat completions parameter."), Some(p)));
                }
            }
            if set("suffix") {
                return Err(ApiError::invalid_request(
                    "The parameter 'suffix' needs a model with fill-in-the-middle tokens; this one has none.",
                    Some("suffix"),
                )
                .with_code("unsupported_parameter"));
            }
        }
        // Images and audio would be dropped from the prompt: refused until the engine reads them.
        let messages = b.get("messages").and_then(Value::as_array).into_iter().flatten();
        for (i, m) in messages.enumerate() {
            let parts = m.get("content").and_then(Value::as_array).into_iter().flatten();
            for (j, part) in parts.enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "text" {
                    let param = format!("messages[{i}].content[{j}]");
                    return Err(ApiError::invalid_request(
                        format!(
                            "Invalid '{param}': the local engine reads text parts only, not '{kind}'; \
                             send this request to a deployment whose model reads them."
                        ),
                        Some(&param),
                    )
                    .with_code("unsupported_parameter"));
                }
            }
        }
        if b.get("best_of").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(ApiError::unsupported_param("best_of", "local engine"));
        }
        if req.sampling.n > self.info.parallel {
            return Err(ApiError::invalid_request(
                format!(
                    "Invalid 'n': {}; the deployment '{}' generates at most {} choices at once (its sequence slots).",
                    req.sampling.n, self.name, self.info.parallel
                ),
                Some("n"),
            ));
        }
        Ok(())
    }

    /// The whole preparation: checks, prompt, tokens, parameters, grammar.
    pub(super) fn prepare(&self, req: &ValidRequest, seed: u32) -> Result<Prepared, ApiError> {
        self.check_supported(req)?;
        let (text, spec, tool_constraint) = self.render(req)?;
        let show_special = spec.as_ref().is_some_and(|s| s.tools_active && s.format != ToolFormat::Generic);
        let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
        if tokens.is_empty() {
            return Err(ApiError::invalid_request("The prompt is empty.", Some("prompt")));
        }
        if tokens.len() >= self.ctx_per_seq as usize {
            let param = if req.endpoint == Endpoint::Chat { "messages" } else { "prompt" };
            return Err(ApiError::invalid_request(
                format!(
                    "This model's maximum context length is {} tokens. However, your prompt is {} tokens, \
                     which leaves no room for the completion.",
                    self.ctx_per_seq,
                    tokens.len()
                ),
                Some(param),
            )
            .with_code("context_length_exceeded"));
        }
        let constrained = match tool_constraint {
            Some(c) => Some(c),
            None => tools::response_format_constraint(&req.body)?
                .map(|constraint| Constrained { constraint, param: "response_format" }),
        };
        if let Some(c) = &constrained {
            if c.param == "response_format" {
                check_schema(&c.constraint.schema, "response_format.json_schema.schema")?;
            }
        }
        let grammar = match &constrained {
            Some(c) => Some(self.grammars.get(&self.model, &c.constraint, c.param)?),
            None => None,
        };
        let mut params = self.params(req, tokens.len(), seed);
        params.logit_bias = self.logit_bias(&req.body)?;
        let (top, shape) = logprobs(req)?;
        params.top_logprobs = top;
        params.grammar = grammar;
        params.n = req.sampling.n.max(1);
        params.show_special = show_special;
        let echo = match req.body.get("echo") {
            Some(Value::Bool(true)) if req.endpoint == Endpoint::Completions => {
                if top.is_some() {
                    return Err(ApiError::invalid_request(
                        "The local engine does not give prompt log-probabilities: 'echo' cannot be combined with 'logprobs'.",
                        Some("echo"),
                    )
                    .with_code("unsupported_parameter"));
                }
                match &req.prompt {
                    Prompt::Text(t) => Some(t.clone()),
                    _ => None,
                }
            }
            None | Some(Value::Null) | Some(Value::Bool(_)) => None,
            Some(_) => {
                return Err(ApiError::invalid_request("Invalid type for 'echo': expected a boolean.", Some("echo")))
            }
        };
        let reading = Reading { n: params.n, parse: spec, logprobs: shape, echo };
        Ok(Prepared { tokens, params, reading })
    }

    /// The prompt text; for chat, how the answer is to be parsed (tools, reasoning) and the
    /// tool calls' constraint.
    fn render(&self, req: &ValidRequest) -> Result<(String, Option<ParseSpec>, Option<Constrained>), ApiError> {
        let msgs = match &req.prompt {
            Prompt::Text(t) => return Ok((t.clone(), None, None)),
            Prompt::Embed(_) => {
                return Err(ApiError::invalid_request("Embeddings are not served here.", Some("input")))
            }
            Prompt::Chat(_) => match req.body.get("messages") {
                Some(Value::Array(a)) => a.as_slice(),
                _ => {
                    return Err(ApiError::invalid_request("Missing required parameter: 'messages'.", Some("messages")))
                }
            },
        };
        // Each tool's `parameters` is checked here against what the grammar can express.
        let tool_list = tools::parse_tools(&req.body)?;
        let choice = if tool_list.is_empty() {
            if req.body.get("tool_choice").is_some_and(|v| !v.is_null() && v != "none" && v != "auto") {
                return Err(ApiError::invalid_request(
                    "'tool_choice' is only allowed when 'tools' are specified.",
                    Some("tool_choice"),
                ));
            }
            ToolChoice::None
        } else {
            tools::parse_tool_choice(&req.body, &tool_list)?
        };
        let active = !tool_list.is_empty() && choice != ToolChoice::None;
        let parallel = req.body.get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true);
        let (format, reasoning) = match &self.format {
            ChatFormat::Jinja { tools, reasoning, .. } => (*tools, reasoning.clone()),
            ChatFormat::Builtin(_) => (ToolFormat::Generic, None),
        };
        let messages: Vec<Value> =
            if active { tools::prepare_messages(format, msgs, &tool_list, &choice) } else { msgs.to_vec() };
        let tools_json: Option<Vec<Value>> =
            if active { req.body.get("tools").and_then(Value::as_array).cloned() } else { None };
        let text = match &self.format {
            ChatFormat::Jinja { template, .. } => {
                let extra = req.body.get("chat_template_kwargs").and_then(Value::as_object);
                let input = RenderInput {
                    messages: &messages,
                    tools: tools_json.as_deref(),
                    add_generation_prompt: true,
                    now: (self.wall)(),
                    extra,
                };
                // The generic format on a template that renders no tools: minja's polyfills put
                // the tools (and tool calls and results) into the messages, so the model sees them.
                let rendered = if active && format == ToolFormat::Generic && !template.caps().supports_tools {
                    template.render_polyfilled(&input)
                } else {
                    template.render(&input)
                };
                rendered.map_err(|e| {
                    ApiError::invalid_request(
                        format!("The chat template could not render these messages: {e}"),
                        Some("messages"),
                    )
                })?
            }
            ChatFormat::Builtin(t) => {
                let plain = template::polyfill(&messages, tools_json.as_deref(), template::Caps::default());
                let chat = plain
                    .iter()
                    .map(|m| {
                        let role = match m.get("role").and_then(Value::as_str).unwrap_or("user") {
                            "developer" => "system",
                            "tool" | "function" => "user",
                            r => r,
                        };
                        LlamaChatMessage::new(role.to_owned(), template::content_text(m))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::invalid_request("A message contains a NUL character.", Some("messages")))?;
                self.model
                    .apply_chat_template(t, &chat, true)
                    .map_err(|e| ApiError::internal(format!("The chat template could not be applied: {e}")))?
            }
        };
        let generic_envelope = active && format == ToolFormat::Generic;
        // Whether the generation prompt already opened the reasoning block is read from it.
        let reasoning = reasoning.map(|r| r.for_prompt(&text));
        let spec = (active || reasoning.is_some()).then_some(ParseSpec {
            format,
            tools_active: active,
            generic_envelope,
            reasoning,
        });
        let constraint = tools::tool_constraint(format, &tool_list, &choice, parallel)
            .filter(|_| active)
            .map(|constraint| Constrained { constraint, param: "tools" });
        Ok((text, spec, constraint))
    }

    /// `logit_bias`: token ids (as strings) → bias in [-100, 100]; −100 bans the token.
    fn logit_bias(&self, body: &Map<String, Value>) -> Result<Vec<(i32, f32)>, ApiError> {
        let o = match body.get("logit_bias") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Object(o)) => o,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "Invalid type for 'logit_bias': expected an object of token ids to numbers.",
                    Some("logit_bias"),
                ))
            }
        };
        let n_vocab = self.model.n_vocab();
        o.iter()
            .map(|(k, v)| {
                let id = k.parse::<i32>().ok().filter(|t| (0..n_vocab).contains(t)).ok_or_else(|| {
                    ApiError::invalid_request(
                        format!(
                            "Invalid key in 'logit_bias': '{k}' is not a token id of this model (0 to {}).",
                            n_vocab - 1
                        ),
                        Some("logit_bias"),
                    )
                })?;
                let b = v.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| {
                    ApiError::invalid_request(
                        format!("Invalid value in 'logit_bias' for token {k}: it must be a number from -100 to 100."),
                        Some("logit_bias"),
                    )
                })?;
                Ok((id, if b <= -100.0 { f32::NEG_INFINITY } else { b as f32 }))
            })
            .collect()
    }
}

/// `logprobs`/`top_logprobs` (chat) or `logprobs: k` (completions): how many alternatives,
/// and the shape to answer in.
fn logprobs(req: &ValidRequest) -> Result<(Option<u8>, Option<LogprobShape>), ApiError> {
    let b = &req.body;
    let range = |param: &str, v: &Value| -> Result<u8, ApiError> {
        v.as_u64().filter(|k| *k <= MAX_TOP_LOGPROBS).map(|k| k as u8).ok_or_else(|| {
            ApiError::invalid_request(
                format!("Invalid '{param}': it must be an integer from 0 to {MAX_TOP_LOGPROBS}."),
                Some(param),
            )
        })
    };
    if req.endpoint == Endpoint::Completions {
        return match b.get("logprobs") {
            None | Some(Value::Null) => Ok((None, None)),
            Some(v) => Ok((Some(range("logprobs", v)?), Some(LogprobShape::Completions))),
        };
    }
    let on = match b.get("logprobs") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(x)) => *x,
        Some(_) => {
            return Err(ApiError::invalid_request("Invalid type for 'logprobs': expected a boolean.", Some("logprobs")))
        }
    };
    let top = match b.get("top_logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => Some(range("top_logprobs", v)?),
    };
    match (on, top) {
        (false, Some(_)) => {
            Err(ApiError::invalid_request("'top_logprobs' requires 'logprobs' to be true.", Some("top_logprobs")))
        }
        (false, None) => Ok((None, None)),
        (true, k) => Ok((Some(k.unwrap_or(0)), Some(LogprobShape::Chat))),
    }
}
