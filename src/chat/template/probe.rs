//! What a template can do, found as llama.cpp finds it (`common/jinja/caps.cpp`, the engine
//! llama-server uses since it replaced minja): render it on probe conversations and see which
//! parts of the input the template *touched*, not only what it printed.
//!
//! llama.cpp marks a value used when the template reaches it (a member or index access, a
//! test, a loop, `tojson`, which touches everything under it). Here the probe's messages and
//! tools are [`Tracked`] objects: each records the paths the template looked up, and whether
//! an array was iterated or indexed. The probes, in llama.cpp's order:
//!
//! 1. content `"STRING_MARKER"`: the template must render it (string content); if it tests
//!    the content with `is string`, a second probe with `content: []` tells whether it also
//!    walks content as an array (typed content).
//! 2. system + user: a template that never reaches `messages[0].content` has no system role.
//! 3. user, assistant with one tool call (arguments an object), tool, assistant, user, with one
//!    tool: tools are supported if `tools[0].function.name` is reached, tool calls if
//!    `messages[1].tool_calls` is, object arguments if `...arguments.arg` is; if the render
//!    fails nothing is learnt, and 4. repeats it with arguments as a JSON string, where a
//!    failure means neither tools nor tool calls.
//! 5. two tool calls: parallel calls if the second call's `function` is reached.
//!
//! Tool responses (a minja notion llama.cpp dropped) count as supported when the tool probe
//! that succeeded reached the tool message's content.
//!
//! Differences from llama.cpp: a plain string cannot be tracked, so "content used as an array"
//! is seen only for array content (`[]`, and `[{"type": "text", ...}]` when string content
//! failed), and string content counts as supported only if its marker is printed. Neither
//! changes the result for the shipped templates.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use serde_json::json;

use super::{environment, TEMPLATE_NAME};

/// Capabilities in llama.cpp's terms; [`super::Caps`] is what is shown of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Detected {
    pub string_content: bool,
    pub typed_content: bool,
    pub system_role: bool,
    pub tools: bool,
    pub tool_calls: bool,
    pub tool_responses: bool,
    pub parallel_tool_calls: bool,
    pub object_arguments: bool,
}

const MARKER: &str = "STRING_MARKER";

#[derive(Default, Debug)]
struct Log {
    used: HashSet<String>,
    array_access: HashSet<String>,
    tested_string: bool,
}

type SharedLog = Arc<Mutex<Log>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A JSON array or object that logs what the template reads of it.
struct Tracked {
    node: serde_json::Value,
    path: String,
    log: SharedLog,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.node)
    }
}

fn track(node: &serde_json::Value, path: String, log: &SharedLog) -> Value {
    match node {
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Value::from_object(Tracked { node: node.clone(), path, log: log.clone() })
        }
        scalar => Value::from_serialize(scalar),
    }
}

impl Object for Tracked {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.node.is_array() {
            ObjectRepr::Seq
        } else {
            ObjectRepr::Map
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let (child, name) = match &self.node {
            serde_json::Value::Array(items) => {
                let index = key.as_i64()?;
                let index = if index < 0 { index + items.len() as i64 } else { index };
                lock(&self.log).array_access.insert(self.path.clone());
                (items.get(usize::try_from(index).ok()?)?, index.to_string())
            }
            serde_json::Value::Object(map) => {
                let name = key.as_str()?;
                (map.get(name)?, name.to_owned())
            }
            _ => return None,
        };
        let path = format!("{}.{name}", self.path);
        lock(&self.log).used.insert(path.clone());
        Some(track(child, path, &self.log))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match &self.node {
            serde_json::Value::Array(items) => {
                lock(&self.log).array_access.insert(self.path.clone());
                Enumerator::Seq(items.len())
            }
            serde_json::Value::Object(map) => {
                let keys: Vec<Value> = map.keys().map(|k| Value::from(k.as_str())).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            _ => Enumerator::Empty,
        }
    }

    // Neither the length nor printing counts as walking an array (llama.cpp's `length` and
    // output do not mark `array_access`).
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match &self.node {
            serde_json::Value::Array(items) => Some(items.len()),
            serde_json::Value::Object(map) => Some(map.len()),
            _ => Some(0),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Value::from_serialize(&self.node))
    }
}

struct Prober {
    env: minijinja::Environment<'static>,
    log: SharedLog,
}

struct Outcome {
    ok: bool,
    output: String,
    log: Log,
}

impl Outcome {
    fn used(&self, path: &str) -> bool {
        self.log.used.contains(path)
    }
    fn walked(&self, path: &str) -> bool {
        self.log.array_access.contains(path)
    }
}

impl Prober {
    fn run(&self, messages: serde_json::Value, tools: serde_json::Value) -> Outcome {
        *lock(&self.log) = Log::default();
        let ctx = minijinja::context! {
            messages => track(&messages, "messages".into(), &self.log),
            tools => track(&tools, "tools".into(), &self.log),
            bos_token => "",
            eos_token => "",
            add_generation_prompt => true,
            strftime_now => super::strftime_now_fn(std::time::UNIX_EPOCH),
        };
        let result = self.env.get_template(TEMPLATE_NAME).and_then(|t| t.render(ctx));
        let log = std::mem::take(&mut *lock(&self.log));
        match result {
            Ok(output) => Outcome { ok: true, output, log },
            Err(_) => Outcome { ok: false, output: String::new(), log },
        }
    }
}

fn probe_tools() -> serde_json::Value {
    json!([{
        "name": "tool",
        "type": "function",
        "function": {
            "name": "tool1",
            "description": "Tool description",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "Arg description"}},
                "required": ["arg"],
            },
        },
    }])
}

fn tool_conversation(calls: serde_json::Value) -> serde_json::Value {
    json!([
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ])
}

fn call(id: &str, args: &serde_json::Value) -> serde_json::Value {
    json!({"id": id, "type": "function", "function": {"name": "tool1", "arguments": args}})
}

/// Runs the probes on `source` (already known to compile).
pub(super) fn detect(source: &str) -> Result<Detected, super::TemplateError> {
    let log: SharedLog = Arc::default();
    let mut env = environment(source)?;
    let test_log = log.clone();
    env.add_test("string", move |v: &Value| {
        if v.as_str() == Some(MARKER) {
            lock(&test_log).tested_string = true;
        }
        v.as_str().is_some()
    });
    let prober = Prober { env, log };
    let none = json!([]);
    let mut caps = Detected {
        string_content: true,
        typed_content: false,
        system_role: true,
        tools: true,
        tool_calls: true,
        tool_responses: false,
        parallel_tool_calls: true,
        object_arguments: false,
    };

    // 1. Content: a string, then an array.
    let first = prober.run(json!([{"role": "user", "content": MARKER}]), none.clone());
    caps.string_content = first.ok && first.output.contains(MARKER);
    if first.log.tested_string {
        let empty = prober.run(json!([{"role": "user", "content": []}]), none.clone());
        if empty.ok && empty.walked("messages.0.content") {
            caps.typed_content = true;
        }
    }
    if !caps.string_content && !caps.typed_content {
        let typed = prober.run(json!([{"role": "user", "content": [{"type": "text", "text": MARKER}]}]), none.clone());
        if typed.walked("messages.0.content") {
            caps.typed_content = true;
        }
    }

    // 2. System role.
    let system = prober.run(
        json!([{"role": "system", "content": "System message"}, {"role": "user", "content": "User message"}]),
        none.clone(),
    );
    caps.system_role = system.used("messages.0.content");

    // 3. and 4. Tools and one tool call, its arguments an object, else a string.
    let tools = probe_tools();
    let object_args = json!({"arg": "value"});
    let with_object = prober.run(tool_conversation(json!([call("call00001", &object_args)])), tools.clone());
    let mut answered = None;
    if with_object.ok {
        caps.tools = with_object.used("tools.0.function.name");
        caps.tool_calls = with_object.used("messages.1.tool_calls");
        caps.object_arguments = caps.tool_calls && with_object.used("messages.1.tool_calls.0.function.arguments.arg");
        answered = Some(with_object);
    }
    if !caps.object_arguments {
        let string_args = json!("{\"arg\": \"value\"}");
        let with_string = prober.run(tool_conversation(json!([call("call00001", &string_args)])), tools.clone());
        if with_string.ok {
            caps.tools = with_string.used("tools.0.function.name");
            caps.tool_calls = with_string.used("messages.1.tool_calls");
            answered = Some(with_string);
        } else {
            caps.tools = false;
            caps.tool_calls = false;
            answered = None;
        }
    }
    caps.tool_responses = answered.is_some_and(|o| o.used("messages.2.content"));

    // 5. Two calls at once.
    let args = if caps.object_arguments { object_args } else { json!("{\"arg\": \"value\"}") };
    let parallel = prober.run(tool_conversation(json!([call("call00001", &args), call("call00002", &args)])), tools);
    caps.parallel_tool_calls = parallel.ok && parallel.used("messages.1.tool_calls.1.function");
    Ok(caps)
}
