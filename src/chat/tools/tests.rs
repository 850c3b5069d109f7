use serde_json::json;

use super::*;

fn body(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }},
        {"type": "function", "function": {"name": "get_time"}}
    ])
}

fn tools() -> Vec<Tool> {
    parse_tools(&body(json!({"tools": weather_tools()}))).unwrap()
}

/// The 400's param and message.
fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> (String, String) {
    let e = r.expect_err("a 400");
    assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
    (e.param.unwrap_or_default(), e.message)
}

#[test]
fn formats_are_detected_as_llama_cpp_does() {
    assert_eq!(ToolFormat::detect(None), ToolFormat::Generic);
    let qwen =
        "{%- if tools %}<tools>{{ tool | tojson }}</tools>…<tool_call>\\n{\"name\": …}\\n</tool_call>{%- endif %}";
    assert_eq!(ToolFormat::detect(Some(qwen)), ToolFormat::Hermes);
    let llama = "<|start_header_id|>ipython<|end_header_id|>\\n\\n{{ message.content }}<|python_tag|>";
    assert_eq!(ToolFormat::detect(Some(llama)), ToolFormat::Llama3);
    assert_eq!(ToolFormat::detect(Some("{{- '[TOOL_CALLS][' }}")), ToolFormat::Mistral);
    assert_eq!(ToolFormat::detect(Some("{{ bos_token }}{% for m in messages %}…")), ToolFormat::Generic);
    // Formats llama.cpp checks first, which tollgate reads generically.
    assert_eq!(ToolFormat::detect(Some("<｜tool▁calls▁begin｜> <tool_call>")), ToolFormat::Generic);
    assert_eq!(ToolFormat::detect(Some("<|start_header_id|> <function= ipython")), ToolFormat::Generic);
    // llama.cpp checks Hermes before Llama 3 and Mistral.
    assert_eq!(ToolFormat::detect(Some("<tool_call> [TOOL_CALLS]")), ToolFormat::Hermes);
}

#[test]
fn tools_are_parsed() {
    let t = tools();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].name, "get_weather");
    assert_eq!(t[0].description.as_deref(), Some("Weather in a city"));
    assert_eq!(t[1].parameters, json!({}));
    assert!(!t[1].strict);
    assert_eq!(parse_tools(&body(json!({}))).unwrap(), vec![]);
    assert_eq!(parse_tools(&body(json!({"tools": null}))).unwrap(), vec![]);
}

#[test]
fn bad_tools_name_the_parameter() {
    let f = |tools: Value| err(parse_tools(&body(json!({ "tools": tools }))));
    assert_eq!(f(json!({})).0, "tools");
    assert_eq!(f(json!([1])).0, "tools[0]");
    assert_eq!(f(json!([{"function": {"name": "a"}}])).0, "tools[0].type");
    assert_eq!(f(json!([{"type": "code_interpreter"}])).0, "tools[0].type");
    assert_eq!(f(json!([{"type": "function"}])).0, "tools[0].function");
    let (p, m) = f(
        json!([{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"name": "no spaces"}}]),
    );
    assert_eq!(p, "tools[1].function.name");
    assert!(m.contains("no spaces"), "{m}");
    assert_eq!(f(json!([{"type": "function", "function": {"name": "x".repeat(65)}}])).0, "tools[0].function.name");
    assert_eq!(f(json!([{"type": "function", "function": {}}])).0, "tools[0].function.name");
    let (p, m) =
        f(json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]));
    assert_eq!(p, "tools[1].function.name");
    assert!(m.contains("twice"), "{m}");
    assert_eq!(
        f(json!([{"type": "function", "function": {"name": "a", "description": 3}}])).0,
        "tools[0].function.description"
    );
    assert_eq!(
        f(json!([{"type": "function", "function": {"name": "a", "parameters": "x"}}])).0,
        "tools[0].function.parameters"
    );
    assert_eq!(
        f(json!([{"type": "function", "function": {"name": "a", "strict": "yes"}}])).0,
        "tools[0].function.strict"
    );
    // A strict tool is enforced as written, or refused.
    let (p, m) = f(json!([{"type": "function", "function": {"name": "a", "strict": true,
        "parameters": {"type": "object", "not": {}}}}]));
    assert_eq!(p, "tools[0].function.parameters");
    assert!(m.contains("'not'"), "{m}");
}

#[test]
fn what_a_grammar_cannot_enforce_is_loosened_in_a_tool_that_is_not_strict() {
    // Claude Code's own tools: `propertyNames`, bounds on a float, a `format`.
    let params = json!({"type": "object", "properties": {
        "metadata": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "description": "tags"},
        "timeout": {"type": "number", "minimum": 0.5, "maximum": 600.0},
        "url": {"type": "string", "format": "uri"},
        "count": {"type": "integer", "minimum": 1},
    }, "required": ["url"], "additionalProperties": false});
    let t =
        parse_tools(&body(json!({"tools": [{"type": "function", "function": {"name": "a", "parameters": params}}]})))
            .unwrap();
    assert_eq!(
        t[0].parameters["properties"],
        json!({"metadata": {"type": "object", "description": "tags"}, "timeout": {"type": "number"},
            "url": {"type": "string"}, "count": {"type": "integer", "minimum": 1}}),
        "each loosened to its type; what can be enforced stays"
    );
    assert_eq!(t[0].parameters["required"], json!(["url"]));
    // Not a schema at all is still an error.
    let bad = body(json!({"tools": [{"type": "function", "function": {"name": "a", "parameters": {"type": 5}}}]}));
    assert!(parse_tools(&bad).is_err());
}

#[test]
fn tool_choice_is_parsed_against_the_tools() {
    let t = tools();
    let choice = |v: Value| parse_tool_choice(&body(json!({ "tool_choice": v })), &t);
    assert_eq!(parse_tool_choice(&body(json!({})), &t).unwrap(), ToolChoice::Auto);
    assert_eq!(parse_tool_choice(&body(json!({})), &[]).unwrap(), ToolChoice::None);
    assert_eq!(choice(json!("auto")).unwrap(), ToolChoice::Auto);
    assert_eq!(choice(json!("none")).unwrap(), ToolChoice::None);
    assert_eq!(choice(json!("required")).unwrap(), ToolChoice::Required);
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "get_time"}})).unwrap(),
        ToolChoice::Named("get_time".into())
    );
}

#[test]
fn bad_tool_choices_name_the_parameter() {
    let t = tools();
    let f = |v: Value| err(parse_tool_choice(&body(json!({ "tool_choice": v })), &t));
    let (p, m) = f(json!("always"));
    assert_eq!(p, "tool_choice");
    assert!(m.contains("'always'"), "{m}");
    assert_eq!(f(json!(3)).0, "tool_choice");
    assert_eq!(f(json!({"function": {"name": "get_time"}})).0, "tool_choice.type");
    assert_eq!(f(json!({"type": "allowed_tools", "tools": []})).0, "tool_choice.type");
    assert_eq!(f(json!({"type": "function"})).0, "tool_choice.function");
    assert_eq!(f(json!({"type": "function", "function": {}})).0, "tool_choice.function.name");
    let (p, m) = f(json!({"type": "function", "function": {"name": "launch"}}));
    assert_eq!(p, "tool_choice.function.name");
    assert!(m.contains("'launch'"), "{m}");
    let (p, _) = err(parse_tool_choice(&body(json!({"tool_choice": "required"})), &[]));
    assert_eq!(p, "tool_choice");
}

#[test]
fn hermes_constraints() {
    let t = tools();
    let auto = tool_constraint(ToolFormat::Hermes, &t, &ToolChoice::Auto, true).unwrap();
    assert_eq!(auto.prefix, "<tool_call>\n");
    assert_eq!(auto.suffix, "\n</tool_call>");
    assert!(auto.repeat);
    assert_eq!(auto.lazy_triggers, vec!["<tool_call>".to_owned()]);
    assert_eq!(auto.schema["anyOf"][0]["properties"]["name"], json!({"const": "get_weather"}));
    assert_eq!(
        auto.schema["anyOf"][1]["properties"]["arguments"],
        json!({"type": "object"}),
        "no parameters: any object"
    );
    let required = tool_constraint(ToolFormat::Hermes, &t, &ToolChoice::Required, false).unwrap();
    assert!(required.lazy_triggers.is_empty() && !required.repeat);
    let named = tool_constraint(ToolFormat::Hermes, &t, &ToolChoice::Named("get_weather".into()), true).unwrap();
    assert!(named.lazy_triggers.is_empty());
    assert_eq!(
        named.schema,
        json!({
            "type": "object",
            "properties": {
                "name": {"const": "get_weather"},
                "arguments": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
            "required": ["name", "arguments"],
        })
    );
    assert_eq!(tool_constraint(ToolFormat::Hermes, &t, &ToolChoice::None, true), None);
    assert_eq!(tool_constraint(ToolFormat::Hermes, &[], &ToolChoice::Auto, true), None);
}

#[test]
fn llama3_and_mistral_constraints() {
    let t = tools();
    let l = tool_constraint(ToolFormat::Llama3, &t, &ToolChoice::Auto, true).unwrap();
    assert_eq!((l.prefix.as_str(), l.suffix.as_str(), l.repeat), ("", "", false));
    assert_eq!(l.lazy_triggers, vec!["{\"name\"".to_owned()]);
    assert_eq!(l.schema["anyOf"][0]["required"], json!(["name", "parameters"]));
    let m = tool_constraint(ToolFormat::Mistral, &t, &ToolChoice::Auto, false).unwrap();
    assert_eq!((m.prefix.as_str(), m.lazy_triggers.clone()), ("[TOOL_CALLS]", vec!["[TOOL_CALLS]".to_owned()]));
    assert_eq!(m.schema["type"], "array");
    assert_eq!((m.schema["minItems"].clone(), m.schema["maxItems"].clone()), (json!(1), json!(1)));
    assert_eq!(m.schema["items"]["anyOf"][0]["properties"]["id"]["pattern"], "^[a-zA-Z0-9]{9}$");
    let m = tool_constraint(ToolFormat::Mistral, &t, &ToolChoice::Required, true).unwrap();
    assert!(m.schema.get("maxItems").is_none() && m.lazy_triggers.is_empty());
}

#[test]
fn the_generic_schema_is_llama_cpps() {
    let t = tools();
    let one = &t[..1];
    let c = tool_constraint(ToolFormat::Generic, one, &ToolChoice::Auto, false).unwrap();
    let call = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "const": "get_weather"},
            "arguments": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        "required": ["name", "arguments"],
        "description": "Weather in a city",
    });
    assert_eq!(
        c.schema,
        json!({"anyOf": [
            {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"]},
            {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]},
        ]})
    );
    assert!(c.lazy_triggers.is_empty() && c.prefix.is_empty() && !c.repeat);
    let p = tool_constraint(ToolFormat::Generic, &t, &ToolChoice::Required, true).unwrap();
    let items = &p.schema["properties"]["tool_calls"]["items"];
    assert_eq!(p.schema["properties"]["tool_calls"]["minItems"], 1);
    assert_eq!(items["anyOf"][0]["properties"]["id"], json!({"type": "string", "minLength": 4}));
    assert_eq!(items["anyOf"][0]["required"], json!(["name", "arguments", "id"]));
    assert!(p.schema.get("anyOf").is_none(), "required: no response alternative");
    let with_format =
        generic_tool_constraint(one, &ToolChoice::Auto, false, Some(&json!({"type": "integer"}))).unwrap();
    assert_eq!(with_format.schema["anyOf"][1]["properties"]["response"], json!({"type": "integer"}));
}

#[test]
fn references_in_parameters_still_resolve_once_embedded() {
    let params = json!({
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/Address"}},
        "required": ["home"],
        "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}
    });
    let tools = vec![
        Tool { name: "a".into(), description: None, parameters: params.clone(), strict: false },
        Tool { name: "b".into(), description: None, parameters: params, strict: true },
    ];
    for format in [ToolFormat::Generic, ToolFormat::Hermes, ToolFormat::Llama3, ToolFormat::Mistral] {
        for parallel in [false, true] {
            for choice in [ToolChoice::Auto, ToolChoice::Required] {
                let c = tool_constraint(format, &tools, &choice, parallel).unwrap();
                crate::chat::schema::check_schema(&c.schema, "tools")
                    .unwrap_or_else(|e| panic!("{format:?}: {}", e.message));
                let text = c.schema.to_string();
                assert!(!text.contains("\"#/$defs/Address\""), "{format:?} left a reference behind: {text}");
            }
        }
    }
    let c = tool_constraint(ToolFormat::Hermes, &tools, &ToolChoice::Auto, true).unwrap();
    assert_eq!(
        c.schema["anyOf"][1]["properties"]["arguments"]["properties"]["home"]["$ref"],
        "#/anyOf/1/properties/arguments/$defs/Address"
    );
}

#[test]
fn response_formats() {
    let rf = |v: Value| response_format_constraint(&body(json!({ "response_format": v })));
    assert_eq!(response_format_constraint(&body(json!({}))).unwrap(), None);
    assert_eq!(rf(json!({"type": "text"})).unwrap(), None);
    let c = rf(json!({"type": "json_object"})).unwrap().unwrap();
    assert_eq!(c.schema, json!({"type": "object"}));
    assert!(c.prefix.is_empty() && c.suffix.is_empty() && c.lazy_triggers.is_empty() && !c.repeat);
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let c = rf(json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}}))
        .unwrap()
        .unwrap();
    assert_eq!(c.schema, schema);
    assert_eq!(
        rf(json!({"type": "json_schema", "json_schema": {"name": "x"}})).unwrap().unwrap().schema,
        json!({"type": "object"})
    );
    assert_eq!(
        rf(json!({"type": "json_object", "schema": {"type": "array"}})).unwrap().unwrap().schema,
        json!({"type": "array"})
    );
}

#[test]
fn bad_response_formats_name_the_parameter() {
    let rf = |v: Value| err(response_format_constraint(&body(json!({ "response_format": v }))));
    assert_eq!(rf(json!("json")).0, "response_format");
    assert_eq!(rf(json!({})).0, "response_format.type");
    assert_eq!(rf(json!({"type": "yaml"})).0, "response_format.type");
    assert_eq!(rf(json!({"type": "json_schema"})).0, "response_format.json_schema");
    assert_eq!(rf(json!({"type": "json_schema", "json_schema": []})).0, "response_format.json_schema");
    assert_eq!(
        rf(json!({"type": "json_schema", "json_schema": {"name": "a b"}})).0,
        "response_format.json_schema.name"
    );
    assert_eq!(
        rf(json!({"type": "json_schema", "json_schema": {"strict": 1}})).0,
        "response_format.json_schema.strict"
    );
    assert_eq!(
        rf(json!({"type": "json_schema", "json_schema": {"schema": 5}})).0,
        "response_format.json_schema.schema"
    );
    let (p, m) = rf(json!({"type": "json_schema", "json_schema": {"schema": {"$ref": "https://x.test/s.json"}}}));
    assert_eq!(p, "response_format.json_schema.schema");
    assert!(m.contains("remote $ref"), "{m}");
}

#[test]
fn generic_messages_get_llama_cpps_system_text() {
    let t = tools();
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    let out = prepare_messages(ToolFormat::Generic, std::slice::from_ref(&user), &t, &ToolChoice::Auto);
    assert_eq!(
        out,
        vec![
            json!({"role": "system", "content": "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` reply to the user's request"}),
            user.clone()
        ]
    );
    let sys = json!({"role": "system", "content": "You are terse."});
    let out = prepare_messages(ToolFormat::Generic, &[sys, user.clone()], &t, &ToolChoice::Required);
    assert_eq!(out[0]["content"], format!("You are terse.\n\n{GENERIC_SYSTEM_PROMPT}"));
    assert_eq!(out.len(), 2);
    let parts = json!({"role": "developer", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]});
    let out = prepare_messages(ToolFormat::Generic, &[parts], &t, &ToolChoice::Auto);
    assert_eq!(out[0], json!({"role": "developer", "content": format!("A\nB\n\n{GENERIC_SYSTEM_PROMPT}")}));
    // Templates that render tools themselves, and calls that may not be made: unchanged.
    for (format, choice) in [(ToolFormat::Hermes, ToolChoice::Auto), (ToolFormat::Generic, ToolChoice::None)] {
        assert_eq!(prepare_messages(format, std::slice::from_ref(&user), &t, &choice), vec![user.clone()]);
    }
}
