use super::*;
use std::time::{Duration, UNIX_EPOCH};

/// 2024-07-26 13:20:00 UTC.
fn july_26() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_722_000_000)
}

fn shipped(name: &str) -> ChatTemplate {
    ChatTemplate::new(ChatTemplate::builtin(name).expect("shipped"), "<bos>", "<eos>").expect("compiles")
}

fn input<'a>(messages: &'a [Json], tools: Option<&'a [Json]>) -> RenderInput<'a> {
    RenderInput { messages, tools, add_generation_prompt: true, now: july_26(), extra: None }
}

fn render(name: &str, messages: &[Json], tools: Option<&[Json]>) -> Result<String, TemplateError> {
    shipped(name).render(&input(messages, tools))
}

fn conversation() -> Vec<Json> {
    vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "Hi"}),
        json!({"role": "assistant", "content": "Hello!"}),
        json!({"role": "user", "content": "How are you?"}),
    ]
}

fn tools() -> Vec<Json> {
    vec![json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }})]
}

fn tool_call() -> Vec<Json> {
    vec![
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}
        }]}),
        json!({"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "18C"}),
    ]
}

const QWEN_TOOLS: &str = "<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

const LLAMA_TOOLS: &str = "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Get the weather\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n            ]\n        }\n    }\n}\n\n";

const MISTRAL_TOOLS: &str = "[AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}][/AVAILABLE_TOOLS]";

#[test]
fn every_shipped_template_renders_a_conversation() {
    let m = conversation();
    let cases = [
        ("gemma", "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n".to_owned()),
        ("chatml", "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n".to_owned()),
        ("qwen2.5", "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n".to_owned()),
        ("llama3.1", "<bos><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n".to_owned()),
        ("mistral", "<bos>[INST]Hi[/INST]Hello!<eos>[INST]You are terse.\n\nHow are you?[/INST]".to_owned()),
    ];
    assert_eq!(cases.len(), ChatTemplate::builtin_names().count());
    for (name, want) in cases {
        assert_eq!(render(name, &m, None).unwrap(), want, "{name}");
    }
}

#[test]
fn every_shipped_template_renders_tools() {
    let (m, t) = (conversation(), tools());
    let tail = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(render("qwen2.5", &m, Some(&t)).unwrap(), format!("{QWEN_TOOLS}{tail}"));
    assert_eq!(
        render("llama3.1", &m, Some(&t)).unwrap(),
        format!("<bos><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{LLAMA_TOOLS}Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    );
    assert_eq!(
        render("mistral", &m, Some(&t)).unwrap(),
        format!("<bos>[INST]Hi[/INST]Hello!<eos>{MISTRAL_TOOLS}[INST]You are terse.\n\nHow are you?[/INST]")
    );
    // Templates that never read `tools`: as llama-server, the prompt is the one without.
    for name in ["gemma", "chatml"] {
        assert_eq!(render(name, &m, Some(&t)).unwrap(), render(name, &m, None).unwrap(), "{name}");
    }
}

#[test]
fn every_shipped_template_renders_a_tool_call_and_its_result() {
    let (m, t) = (tool_call(), tools());
    assert_eq!(
        render("qwen2.5", &m, Some(&t)).unwrap(),
        format!("{}<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
            QWEN_TOOLS.replace("You are terse.", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
    );
    assert_eq!(
        render("llama3.1", &m, Some(&t)).unwrap(),
        format!("<bos><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{LLAMA_TOOLS}Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"Paris\"}}}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n\"18C\"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    );
    assert_eq!(
        render("mistral", &m, Some(&t)).unwrap(),
        format!("<bos>{MISTRAL_TOOLS}[INST]Weather in Paris?[/INST][TOOL_CALLS][{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}, \"id\": \"call12345\"}}]<eos>[TOOL_RESULTS]{{\"content\": 18C, \"call_id\": \"call12345\"}}[/TOOL_RESULTS]")
    );
    // ChatML prints the (empty) content of the call, and the tool message under its role.
    assert_eq!(
        render("chatml", &m, Some(&t)).unwrap(),
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\n18C<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn raise_exception_is_raised_with_its_message() {
    match render("gemma", &tool_call(), None) {
        Err(TemplateError::Raised(msg)) => {
            assert_eq!(msg, "Conversation roles must alternate user/assistant/user/assistant/...")
        }
        other => panic!("{other:?}"),
    }
    let t = ChatTemplate::new(
        "{% if messages|length > 1 %}{{ raise_exception('only one, got ' ~ messages|length) }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    assert_eq!(t.render(&input(&conversation()[..1], None)).unwrap(), "ok");
    match t.render(&input(&conversation()[1..], None)) {
        Err(TemplateError::Raised(msg)) => assert_eq!(msg, "only one, got 3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dates_come_from_the_given_time() {
    let t = ChatTemplate::new(
        "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}|{{ datetime }}",
        "",
        "",
    )
    .unwrap();
    assert_eq!(t.render(&input(&conversation(), None)).unwrap(), "26 Jul 2024|2024-07-26|26 Jul 2024|Jul 26 2024");
    let prompt = render("llama3.1", &conversation(), None).unwrap();
    assert!(prompt.contains("Today Date: 26 Jul 2024\n"), "{prompt}");
    let m = conversation();
    let later = RenderInput { now: july_26() + Duration::from_secs(86_400 * 200), ..input(&m, None) };
    assert!(shipped("llama3.1").render(&later).unwrap().contains("Today Date: 11 Feb 2025\n"));
}

#[test]
fn caps_per_shipped_template() {
    let none = Caps::default();
    let tooled = Caps {
        supports_tools: true,
        supports_tool_calls: true,
        supports_tool_responses: true,
        supports_system_role: true,
        supports_parallel_tool_calls: true,
        requires_object_arguments: true,
        requires_typed_content: false,
    };
    let cases = [
        // Gemma 3 puts the system prompt into the first user turn: it does read it.
        ("gemma", Caps { supports_system_role: true, ..none }),
        ("chatml", Caps { supports_system_role: true, supports_tool_responses: true, ..none }),
        ("qwen2.5", tooled),
        // "This model only supports single tool-calls at once!"
        ("llama3.1", Caps { supports_parallel_tool_calls: false, ..tooled }),
        ("mistral", tooled),
    ];
    for (name, want) in cases {
        assert_eq!(shipped(name).caps(), want, "{name}");
    }
    // A template that only takes text parts.
    let typed = ChatTemplate::new(
        "{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert!(typed.caps().requires_typed_content);
    let parts = [json!({"role": "user", "content": "as a string"})];
    assert_eq!(typed.render(&input(&parts, None)).unwrap(), "as a string");
}

#[test]
fn content_parts_follow_what_the_template_takes() {
    let m =
        [json!({"role": "user", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": " Two. "}]})];
    // Gemma walks parts itself (and trims each).
    assert_eq!(
        render("gemma", &m, None).unwrap(),
        "<bos><start_of_turn>user\nOne.Two.<end_of_turn>\n<start_of_turn>model\n"
    );
    // ChatML takes strings: parts are joined with a newline, as llama.cpp joins them.
    assert_eq!(
        render("chatml", &m, None).unwrap(),
        "<|im_start|>user\nOne.\n Two. <|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(content_text(&m[0]), "One.\n Two. ");
    assert_eq!(content_text(&json!({"role": "assistant", "content": null})), "");
    let images = json!({"content": [{"type": "media_marker", "text": "<__media__>"}, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
    assert_eq!(content_text(&images), "<__media__>a\nb");
}

#[test]
fn messages_are_shaped_as_llama_server_parses_them() {
    let t = ChatTemplate::new("{{ messages|tojson }}", "", "").unwrap();
    let m = [
        json!({"role": "developer", "content": "Be brief.", "extra": 1}),
        json!({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5]}}}]}),
        json!({"role": "tool", "tool_call_id": "c1", "name": "f", "content": "ok"}),
    ];
    assert_eq!(
        t.render(&input(&m, None)).unwrap(),
        r#"[{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5]}}, "id": "c1"}]}, {"role": "tool", "content": "ok", "name": "f", "tool_call_id": "c1"}]"#
    );
    assert!(t.caps().requires_object_arguments);
    let strings = ChatTemplate::new(
        "{% for m in messages %}{{ m.tool_calls[0].function.arguments if m.tool_calls else '' }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert!(!strings.caps().requires_object_arguments);
    assert_eq!(strings.render(&input(&m, None)).unwrap(), r#"{"a":[1,2.5]}"#);

    for bad in [
        json!({"content": "no role"}),
        json!({"role": "user"}),
        json!({"role": "user", "content": [{"type": "image_url"}]}),
    ] {
        assert!(matches!(t.render(&input(std::slice::from_ref(&bad), None)), Err(TemplateError::Invalid(_))), "{bad}");
    }
}

#[test]
fn a_template_without_system_role_gets_it_folded_in() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role != 'system' %}[{{ m.role }}:{{ m.content }}]{% endif %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert!(!t.caps().supports_system_role);
    assert_eq!(
        t.render(&input(&conversation(), None)).unwrap(),
        "[user:You are terse.\nHi][assistant:Hello!][user:How are you?]"
    );
}

#[test]
fn tojson_writes_json_as_python_does() {
    let t = ChatTemplate::new(
        "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(ensure_ascii=true) }}|{{ x|tojson(separators=(',', ':')) }}",
        "",
        "",
    )
    .unwrap();
    let extra = json!({"x": {"s": "é\n\"", "n": [1, 0.1, -2e-7, true, null], "o": {}}});
    let rendered = t.render(&RenderInput { extra: extra.as_object(), ..input(&conversation(), None) }).unwrap();
    assert_eq!(
        rendered,
        "{\"s\": \"é\\n\\\"\", \"n\": [1, 0.1, -2e-07, true, null], \"o\": {}}|{\n  \"s\": \"é\\n\\\"\",\n  \"n\": [\n    1,\n    0.1,\n    -2e-07,\n    true,\n    null\n  ],\n  \"o\": {}\n}|{\"s\": \"\\u00e9\\n\\\"\", \"n\": [1, 0.1, -2e-07, true, null], \"o\": {}}|{\"s\":\"é\\n\\\"\",\"n\":[1,0.1,-2e-07,true,null],\"o\":{}}"
    );
}

#[test]
fn python_methods_and_jinja_features_work() {
    let src = "{%- set ns = namespace(n=0) -%}\n{%- for k, v in d.items() -%}{% if loop.index > 2 %}{% break %}{% endif %}{{ k.upper() }}={{ v }};{% set ns.n = ns.n + 1 %}\n{%- endfor -%}\n{{ ns.n }}|{{ ' pad '.strip() }}|{{ 'a,b'.split(',')|join('+') }}|{{ 'abc'.startswith('ab') }}|{{ [1, 2][-1] }}|{{ 'xyz'[:-1] }}|{{ d.get('zz', 'none') }}\n";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let extra = json!({"d": {"a": 1, "b": true, "c": 3}});
    let out = t.render(&RenderInput { extra: extra.as_object(), ..input(&conversation(), None) }).unwrap();
    assert_eq!(out, "A=1;B=True;2|pad|a+b|True|2|xy|none");
}

#[test]
fn context_has_what_llama_server_gives() {
    let t = ChatTemplate::new("{{ bos_token }}{{ add_generation_prompt is defined }}{{ tools is defined }}{{ enable_thinking }}{{ eos_token }}", "<s>", "</s>").unwrap();
    let extra = json!({"enable_thinking": false});
    let m = conversation();
    let t_input = RenderInput { add_generation_prompt: false, extra: extra.as_object(), ..input(&m, None) };
    assert_eq!(t.render(&t_input).unwrap(), "<s>FalseFalseFalse</s>");
    let tl = tools();
    assert_eq!(t.render(&input(&conversation(), Some(&tl))).unwrap(), "<s>TrueTrue</s>");
    // Empty tools are no tools.
    assert_eq!(t.render(&input(&conversation(), Some(&[]))).unwrap(), "<s>TrueFalse</s>");
    // A tokenizer that adds BOS/EOS itself: the template's are cut.
    let stripped = t.with_added_tokens(true, true);
    assert_eq!(stripped.render(&input(&conversation(), None)).unwrap(), "TrueFalse");
}

#[test]
fn errors_are_typed() {
    assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(TemplateError::Syntax(_))));
    let t = ChatTemplate::new("{{ messages[0].content + 1 }}", "", "").unwrap();
    assert!(matches!(t.render(&input(&conversation(), None)), Err(TemplateError::Render(_))));
    assert!(ChatTemplate::builtin("nope").is_none());
}

#[test]
fn polyfill_rewrites_as_minja() {
    let (mut m, t) = (tool_call(), tools());
    m.insert(0, json!({"role": "system", "content": "Be brief."}));
    let out = polyfill(&m, Some(&t), Caps::default());
    let want = json!([
        {"role": "user", "content": "Be brief.\n\nYou can call any of the following tools to satisfy the user's requests: [\n  {\n    \"type\": \"function\",\n    \"function\": {\n      \"name\": \"get_weather\",\n      \"description\": \"Get the weather\",\n      \"parameters\": {\n        \"type\": \"object\",\n        \"properties\": {\n          \"city\": {\n            \"type\": \"string\"\n          }\n        },\n        \"required\": [\n          \"city\"\n        ]\n      }\n    }\n  }\n]\nWeather in Paris?"},
        {"role": "assistant", "content": "{\n  \"tool_calls\": [\n    {\n      \"name\": \"get_weather\",\n      \"arguments\": {\n        \"city\": \"Paris\"\n      },\n      \"id\": \"call12345\"\n    }\n  ]\n}"},
        {"role": "user", "tool_call_id": "call12345", "content": "{\n  \"tool_response\": {\n    \"tool\": \"get_weather\",\n    \"content\": \"18C\",\n    \"tool_call_id\": \"call12345\"\n  }\n}"},
    ]);
    assert_eq!(Json::Array(out), want);

    // Nothing lacking, nothing changed.
    let full = Caps {
        supports_tools: true,
        supports_tool_calls: true,
        supports_tool_responses: true,
        supports_system_role: true,
        ..Caps::default()
    };
    assert_eq!(polyfill(&m, Some(&t), full), m);
    // Typed content and object arguments only.
    let typed = Caps { requires_typed_content: true, requires_object_arguments: true, ..full };
    let out = polyfill(&m[..3], None, typed);
    assert_eq!(out[0], json!({"role": "system", "content": [{"type": "text", "text": "Be brief."}]}));
    assert_eq!(out[2]["tool_calls"][0]["function"]["arguments"], json!({"city": "Paris"}));
    // A system message with nothing after it becomes a user message; an empty call content is kept.
    let tail =
        [json!({"role": "assistant", "content": "", "tool_calls": []}), json!({"role": "system", "content": "S"})];
    let out = polyfill(&tail, None, Caps::default());
    assert_eq!(
        Json::Array(out),
        json!([{"role": "assistant", "content": "{\n  \"tool_calls\": [],\n  \"content\": \"\"\n}"}, {"role": "user", "content": "S"}])
    );
}

#[test]
fn render_polyfilled_brings_tools_to_gemma() {
    let (m, t) = (tool_call(), tools());
    let gemma = shipped("gemma");
    let prompt = gemma.render_polyfilled(&input(&m, Some(&t))).unwrap();
    let example = "{\n  \"tool_calls\": [\n    {\n      \"name\": \"tool_name\",\n      \"arguments\": {\n        \"arg1\": \"some_value\"\n      },\n      \"id\": \"call_1___\"\n    }\n  ]\n}<end_of_turn>\n";
    assert_eq!(gemma.tool_call_example.as_deref(), Some(example));
    assert!(prompt.starts_with("<bos><start_of_turn>user\nYou can call any of the following tools to satisfy the user's requests: [\n  {\n    \"type\": \"function\",\n"), "{prompt}");
    assert!(prompt.contains(&format!("\n\nExample tool call syntax:\n\n{example}\n\n")), "{prompt}");
    assert!(prompt.ends_with("<start_of_turn>model\n{\n  \"tool_calls\": [\n    {\n      \"name\": \"get_weather\",\n      \"arguments\": {\n        \"city\": \"Paris\"\n      },\n      \"id\": \"call12345\"\n    }\n  ]\n}<end_of_turn>\n<start_of_turn>user\n{\n  \"tool_response\": {\n    \"tool\": \"get_weather\",\n    \"content\": \"18C\",\n    \"tool_call_id\": \"call12345\"\n  }\n}<end_of_turn>\n<start_of_turn>model\n"), "{prompt}");
    // A template with tools is left as it is.
    assert_eq!(
        shipped("qwen2.5").render_polyfilled(&input(&m, Some(&t))).unwrap(),
        render("qwen2.5", &m, Some(&t)).unwrap()
    );
}
