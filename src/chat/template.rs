//! A GGUF's `tokenizer.chat_template` (Jinja), rendered as llama-server renders it (`--jinja`;
//! llama.cpp's own Jinja engine in `common/jinja/` and `common_chat_templates_apply_jinja` in
//! `common/chat.cpp`), which is Hugging Face's `apply_chat_template` plus a few fixed rewrites.
//! The comparison target is llama-server 0.3.36 (llama-cpp-python's vendored llama.cpp), byte
//! for byte; `tests/chat_template.rs` checks it against the real binary.
//!
//! [`ChatTemplate::render`], in order:
//! 1. The messages are rebuilt as llama-server parses them: `role`, `content` (a string, text
//!    parts `[{"type", "text"}]`, or `""` when null or absent), then `reasoning_content`,
//!    `name`, `tool_call_id` when non-empty, and `tool_calls` as
//!    `{"type": "function", "function": {"name", "arguments"}, "id"}` with arguments a JSON
//!    string (an object is written out compactly). Tools become
//!    `{"type": "function", "function": {"name", "description", "parameters"}}`.
//! 2. Content is shaped to the template ([`probe`] finds what it takes): text parts joined
//!    with `\n` when it takes only strings, a string wrapped as one text part when it takes
//!    only parts, left alone when it takes both.
//! 3. llama.cpp's workarounds: `developer` becomes `system` (not for GPT-OSS's `<|channel|>`);
//!    without a system role, a leading system message is put before the next message's
//!    content after `\n`; with object arguments, JSON-string arguments are parsed.
//! 4. The context: `messages`, `bos_token`, `eos_token`, `tools` (only when non-empty),
//!    `date_string` (`%d %b %Y`) and `datetime` (`%b %d %Y`) of [`RenderInput::now`] in UTC
//!    (llama-server's, which is why Llama 3.1 shows today's date and not its default), the
//!    [`RenderInput::extra`] keys over them, then `add_generation_prompt` (only when true, as
//!    llama-server does); `raise_exception(msg)`, `strftime_now(fmt)` (at `now`, UTC) and
//!    Python's string and dict methods (minijinja-contrib's pycompat). `tojson` writes JSON as
//!    llama.cpp does ([`json`]), and values print as they do there ([`print`]). Blocks are trimmed and left-stripped (`trim_blocks`,
//!    `lstrip_blocks`), and one trailing newline of the source is dropped, as HF does.
//! 5. When the tokenizer adds BOS/EOS itself ([`ChatTemplate::with_added_tokens`]), a leading
//!    `bos_token` and a trailing `eos_token` are cut, so they are not doubled.
//!
//! llama-server no longer polyfills: tools given to a template that never reads them are
//! simply not in the prompt. [`ChatTemplate::render_polyfilled`] renders after minja's
//! polyfills instead ([`polyfill`]), for callers that want tools to reach such a model.
//!
//! `enable_thinking` is not set unless `extra` sets it: llama-server sets it from whether its
//! template analysis finds a reasoning format, which is not done here.

mod json;
mod polyfill;
mod print;
mod probe;
mod strftime;

use std::time::SystemTime;

use minijinja::value::{Kwargs, Rest, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::{json, Map, Value as Json};

/// The name the template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The shipped templates, by name: `(name, source)`. See `templates/README.md` for where each
/// comes from and its licence.
const BUILTIN: &[(&str, &str)] = &[
    ("gemma", include_str!("../../templates/gemma.jinja")),
    ("chatml", include_str!("../../templates/chatml.jinja")),
    ("qwen2.5", include_str!("../../templates/qwen2.5.jinja")),
    ("llama3.1", include_str!("../../templates/llama3.1.jinja")),
    ("mistral", include_str!("../../templates/mistral.jinja")),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// Rendering failed (an unknown filter, a type error, ...).
    #[error("chat template render error: {0}")]
    Render(String),
    /// The template called `raise_exception(msg)`: the message is the template's, for the
    /// client (a 400).
    #[error("{0}")]
    Raised(String),
    /// The messages or tools do not have OpenAI's shape (as llama-server refuses them).
    #[error("{0}")]
    Invalid(String),
}

/// What a template does with its input, as llama.cpp detects it ([`probe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// It reads `tools`.
    pub supports_tools: bool,
    /// It reads an assistant message's `tool_calls`.
    pub supports_tool_calls: bool,
    /// It reads a `tool` message's content.
    pub supports_tool_responses: bool,
    /// It reads a system message's content.
    pub supports_system_role: bool,
    /// It reads a second tool call of one message.
    pub supports_parallel_tool_calls: bool,
    /// It reads tool-call arguments as an object (they are parsed from OpenAI's JSON string).
    pub requires_object_arguments: bool,
    /// It takes content only as text parts, never as a string.
    pub requires_typed_content: bool,
}

pub struct RenderInput<'a> {
    /// OpenAI chat messages exactly as the client sent them.
    pub messages: &'a [Json],
    /// OpenAI `tools` (type `function`); `None` when absent or empty.
    pub tools: Option<&'a [Json]>,
    pub add_generation_prompt: bool,
    /// What `strftime_now`, `date_string` and `datetime` show (UTC).
    pub now: SystemTime,
    /// `chat_template_kwargs` (e.g. `enable_thinking`), set over the other context keys.
    pub extra: Option<&'a Map<String, Json>>,
}

/// A compiled chat template with its special tokens and what it supports.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    strip_bos: bool,
    strip_eos: bool,
    detected: probe::Detected,
    caps: Caps,
    /// minja's inferred tool-call example, for [`ChatTemplate::render_polyfilled`].
    tool_call_example: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// A template error raised by `raise_exception`, carried as the minijinja error's source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The environment every render and probe uses, with the template compiled in it.
fn environment(source: &str) -> Result<Environment<'static>, TemplateError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(print::format);
    env.add_filter("tojson", |v: &Value, rest: Rest<Value>, kwargs: Kwargs| json::tojson(v, &rest, kwargs));
    env.add_filter("string", print::string_filter);
    env.add_test("sequence", print::is_sequence);
    env.add_function("raise_exception", |msg: Value| -> Result<Value, minijinja::Error> {
        let msg = msg.as_str().map(str::to_owned).unwrap_or_else(|| msg.to_string());
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
    });
    env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(|e| TemplateError::Syntax(describe(&e)))?;
    Ok(env)
}

/// `strftime_now` for one render: formats `now`.
fn strftime_now_fn(now: SystemTime) -> Value {
    Value::from_function(move |fmt: &str| strftime::strftime(fmt, now))
}

fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

fn render_error(err: minijinja::Error) -> TemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    TemplateError::Render(describe(&err))
}

impl ChatTemplate {
    /// Compiles `source` and detects its capabilities.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, TemplateError> {
        let env = environment(source)?;
        let detected = probe::detect(source)?;
        let caps = Caps {
            supports_tools: detected.tools,
            supports_tool_calls: detected.tool_calls,
            supports_tool_responses: detected.tool_responses,
            supports_system_role: detected.system_role,
            supports_parallel_tool_calls: detected.parallel_tool_calls,
            requires_object_arguments: detected.object_arguments,
            requires_typed_content: detected.typed_content && !detected.string_content,
        };
        let mut template = ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            strip_bos: false,
            strip_eos: false,
            detected,
            caps,
            tool_call_example: None,
        };
        if !caps.supports_tools {
            template.tool_call_example = template.infer_tool_call_example();
        }
        Ok(template)
    }

    /// The tokenizer adds BOS (`add_bos`) or EOS (`add_eos`) itself (GGUF's
    /// `tokenizer.ggml.add_bos_token`): a rendered prompt then loses a leading `bos_token` or
    /// a trailing `eos_token`, as llama-server's does.
    pub fn with_added_tokens(mut self, add_bos: bool, add_eos: bool) -> ChatTemplate {
        self.strip_bos = add_bos;
        self.strip_eos = add_eos;
        self
    }

    /// The source of a shipped template: `gemma` (Gemma 3), `chatml`, `qwen2.5` (Hermes-style
    /// `<tool_call>`), `llama3.1`, `mistral` (Mistral Nemo, `[AVAILABLE_TOOLS]`/`[TOOL_CALLS]`).
    pub fn builtin(name: &str) -> Option<&'static str> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, source)| *source)
    }

    /// The names [`ChatTemplate::builtin`] knows.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(name, _)| *name)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The prompt, as llama-server renders it (see the module header).
    pub fn render(&self, input: &RenderInput<'_>) -> Result<String, TemplateError> {
        let mut messages = parse_messages(input.messages)?;
        self.shape_content(&mut messages);
        if !self.source.contains("<|channel|>") {
            for message in &mut messages {
                if message.get("role").and_then(Json::as_str) == Some("developer") {
                    message["role"] = json!("system");
                }
            }
        }
        if !self.detected.system_role {
            fold_system_message(&mut messages)?;
        }
        if self.detected.object_arguments {
            parse_arguments(&mut messages)?;
        }
        let tools = match input.tools.filter(|t| !t.is_empty()) {
            Some(tools) => Some(parse_tools(tools)?),
            None => None,
        };

        let mut ctx = Map::new();
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert("bos_token".into(), json!(self.bos_token));
        ctx.insert("eos_token".into(), json!(self.eos_token));
        if let Some(tools) = tools {
            ctx.insert("tools".into(), Json::Array(tools));
        }
        ctx.insert("datetime".into(), json!(strftime::strftime("%b %d %Y", input.now)));
        ctx.insert("date_string".into(), json!(strftime::strftime("%d %b %Y", input.now)));
        for (key, value) in input.extra.into_iter().flatten() {
            ctx.insert(key.clone(), value.clone());
        }
        if input.add_generation_prompt {
            ctx.insert("add_generation_prompt".into(), json!(true));
        }
        let mut ctx: std::collections::BTreeMap<String, Value> =
            ctx.into_iter().map(|(k, v)| (k, Value::from_serialize(&v))).collect();
        ctx.insert("strftime_now".into(), strftime_now_fn(input.now));

        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Render(describe(&e)))?;
        let mut prompt = template.render(Value::from(ctx)).map_err(render_error)?;
        if self.strip_bos && !self.bos_token.is_empty() && prompt.starts_with(&self.bos_token) {
            prompt.drain(..self.bos_token.len());
        }
        if self.strip_eos && !self.eos_token.is_empty() && prompt.ends_with(&self.eos_token) {
            prompt.truncate(prompt.len() - self.eos_token.len());
        }
        Ok(prompt)
    }

    /// The prompt after minja's polyfills for what this template lacks ([`polyfill`], with
    /// the tool-call example minja infers from the template), so that tools, tool calls,
    /// tool results and system prompts reach a model whose template ignores them.
    pub fn render_polyfilled(&self, input: &RenderInput<'_>) -> Result<String, TemplateError> {
        let messages = polyfill::apply(input.messages, input.tools, self.caps, self.tool_call_example.as_deref());
        self.render(&RenderInput { messages: &messages, ..*input })
    }

    /// minja's tool-call example, from the template itself (None when it shows none).
    fn infer_tool_call_example(&self) -> Option<String> {
        let (short, long) = polyfill::example_conversations(self.caps);
        fn at(messages: &[Json], add_generation_prompt: bool) -> RenderInput<'_> {
            RenderInput { messages, tools: None, add_generation_prompt, now: std::time::UNIX_EPOCH, extra: None }
        }
        let prefix = self.render_polyfilled(&at(&short, true)).ok()?;
        let full = self.render_polyfilled(&at(&long, false)).ok()?;
        polyfill::example_from(&prefix, &full, &self.eos_token)
    }

    /// Content in the form the template takes (step 2 of the module header).
    fn shape_content(&self, messages: &mut [Json]) {
        let only_string = self.detected.string_content && !self.detected.typed_content;
        let only_typed = !self.detected.string_content && self.detected.typed_content;
        for message in messages {
            let Some(content) = message.get_mut("content") else { continue };
            if only_typed && content.is_string() {
                let text = content.take();
                *content = json!([{"type": "text", "text": text}]);
            } else if only_string && content.is_array() {
                *content = Json::String(join_parts(content.as_array().map(Vec::as_slice).unwrap_or_default()));
            }
        }
    }
}

/// minja's polyfills for a template with `caps` (see [`polyfill`](self::polyfill) module):
/// tools into the system message, assistant tool calls and tool results as JSON text, system
/// messages folded into the next user message. Returns plain messages, unchanged when `caps`
/// lacks nothing they use. No tool-call example is added (that needs the template; see
/// [`ChatTemplate::render_polyfilled`]).
pub fn polyfill(messages: &[Json], tools: Option<&[Json]>, caps: Caps) -> Vec<Json> {
    polyfill::apply(messages, tools, caps, None)
}

/// A message's content as one string: a string as is, text parts joined with `\n` (as
/// llama.cpp joins them for string-only templates), `""` for null or absent content.
pub fn content_text(message: &Json) -> String {
    match message.get("content") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => join_parts(parts),
        _ => String::new(),
    }
}

/// llama.cpp's `concat_content_parts`: text parts joined by `\n`, none around media markers,
/// other parts skipped.
fn join_parts(parts: &[Json]) -> String {
    let mut text = String::new();
    let mut last_was_media = false;
    for part in parts {
        let kind = part.get("type").and_then(Json::as_str).unwrap_or_default();
        let newline = match kind {
            "text" => {
                let newline = !last_was_media && !text.is_empty();
                last_was_media = false;
                newline
            }
            "media_marker" => {
                last_was_media = true;
                false
            }
            _ => continue,
        };
        if newline {
            text.push('\n');
        }
        text.push_str(part.get("text").and_then(Json::as_str).unwrap_or_default());
    }
    text
}

fn invalid(what: &str, value: &Json) -> TemplateError {
    TemplateError::Invalid(format!("Failed to parse messages: {what}: {value}"))
}

fn optional_string(message: &Map<String, Json>, key: &str) -> Result<Option<String>, TemplateError> {
    match message.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(&format!("'{key}' must be a string"), other)),
    }
}

/// Step 1 of the module header: llama-server's `common_chat_msgs_parse_oaicompat` then
/// `to_json_oaicompat`.
fn parse_messages(messages: &[Json]) -> Result<Vec<Json>, TemplateError> {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let Json::Object(m) = message else { return Err(invalid("Expected 'message' to be an object", message)) };
        let role = match m.get("role") {
            Some(Json::String(role)) => role.clone(),
            _ => return Err(invalid("Missing 'role' in message", message)),
        };
        let has_tool_calls = m.contains_key("tool_calls");
        if role != "assistant" && !m.contains_key("content") {
            return Err(TemplateError::Invalid("All non-assistant messages must contain 'content'".into()));
        }
        if !m.contains_key("content") && !has_tool_calls {
            return Err(TemplateError::Invalid("Failed to parse messages: Expected 'content' or 'tool_calls'".into()));
        }
        let content = match m.get("content") {
            None | Some(Json::Null) => json!(""),
            Some(Json::String(s)) => json!(s),
            Some(Json::Array(parts)) if parts.is_empty() => json!(""),
            Some(Json::Array(parts)) => {
                let mut shaped = Vec::with_capacity(parts.len());
                for part in parts {
                    let kind = part.get("type").and_then(Json::as_str);
                    let text = part.get("text").and_then(Json::as_str);
                    match (kind, text) {
                        (Some(kind @ ("text" | "media_marker")), Some(text)) => {
                            shaped.push(json!({"type": kind, "text": text}))
                        }
                        (None, _) => return Err(invalid("Missing content part type", part)),
                        (Some("text" | "media_marker"), None) => {
                            return Err(invalid("Missing content part text", part))
                        }
                        (Some(_), _) => return Err(invalid("Unsupported content part type", part)),
                    }
                }
                Json::Array(shaped)
            }
            Some(other) => return Err(invalid("Invalid 'content' type: expected string or array", other)),
        };
        let mut shaped = Map::new();
        shaped.insert("role".into(), json!(role));
        shaped.insert("content".into(), content);
        for key in ["reasoning_content", "name", "tool_call_id"] {
            if let Some(value) = optional_string(m, key)? {
                shaped.insert(key.into(), json!(value));
            }
        }
        let calls = parse_tool_calls(m.get("tool_calls"))?;
        if !calls.is_empty() {
            shaped.insert("tool_calls".into(), Json::Array(calls));
        }
        out.push(Json::Object(shaped));
    }
    Ok(out)
}

fn parse_tool_calls(calls: Option<&Json>) -> Result<Vec<Json>, TemplateError> {
    let calls = match calls {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(calls)) => calls,
        Some(other) => return Err(invalid("Expected 'tool_calls' to be an array", other)),
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        match call.get("type") {
            Some(Json::String(t)) if t == "function" => {}
            Some(_) => return Err(invalid("Unsupported tool call type", call)),
            None => return Err(invalid("Missing tool call type", call)),
        }
        let Some(function) = call.get("function") else { return Err(invalid("Missing tool call function", call)) };
        let Some(name) = function.get("name").and_then(Json::as_str) else {
            return Err(invalid("Missing tool call name", call));
        };
        let arguments = match function.get("arguments") {
            Some(Json::String(s)) => s.clone(),
            Some(other) => {
                let mut s = String::new();
                json::compact(&mut s, other);
                s
            }
            None => return Err(invalid("Missing tool call arguments", call)),
        };
        let mut shaped = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
        if let Some(id) = call.get("id").and_then(Json::as_str).filter(|id| !id.is_empty()) {
            shaped["id"] = json!(id);
        }
        out.push(shaped);
    }
    Ok(out)
}

/// llama-server's `common_chat_tools_parse_oaicompat` then `..._to_json_oaicompat`.
fn parse_tools(tools: &[Json]) -> Result<Vec<Json>, TemplateError> {
    let bad = |what: &str, tool: &Json| TemplateError::Invalid(format!("Failed to parse tools: {what}: {tool}"));
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        match tool.get("type") {
            Some(Json::String(t)) if t == "function" => {}
            Some(_) => return Err(bad("Unsupported tool type", tool)),
            None => return Err(bad("Missing tool type", tool)),
        }
        let Some(function) = tool.get("function") else { return Err(bad("Missing tool function", tool)) };
        let Some(name) = function.get("name").and_then(Json::as_str) else {
            return Err(bad("Missing tool name", tool));
        };
        let description = function.get("description").and_then(Json::as_str).unwrap_or_default();
        let parameters = function.get("parameters").cloned().unwrap_or_else(|| json!({}));
        out.push(json!({
            "type": "function",
            "function": {"name": name, "description": description, "parameters": parameters},
        }));
    }
    Ok(out)
}

/// llama.cpp's `system_message_not_supported`: a leading system message goes before the next
/// message's content, after `\n` (dropped when it is alone).
fn fold_system_message(messages: &mut Vec<Json>) -> Result<(), TemplateError> {
    if messages.first().and_then(|m| m.get("role")).and_then(Json::as_str) != Some("system") {
        return Ok(());
    }
    let system = messages.remove(0);
    if let Some(next) = messages.first_mut() {
        let (Some(Json::String(sys)), Some(Json::String(content))) = (system.get("content"), next.get("content"))
        else {
            return Err(TemplateError::Invalid(
                "this template has no system role: the system message and the next one must have string content".into(),
            ));
        };
        next["content"] = json!(format!("{sys}\n{content}"));
    }
    Ok(())
}

/// llama.cpp's `func_args_not_string`: JSON-string arguments become objects.
fn parse_arguments(messages: &mut [Json]) -> Result<(), TemplateError> {
    for message in messages {
        let Some(Json::Array(calls)) = message.get_mut("tool_calls") else { continue };
        for call in calls {
            let Some(args) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) else { continue };
            if let Json::String(s) = args {
                *args = serde_json::from_str(s)
                    .map_err(|e| TemplateError::Invalid(format!("Failed to parse tool call arguments as JSON: {e}")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
