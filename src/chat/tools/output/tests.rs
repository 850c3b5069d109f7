use serde_json::{json, Value};

use super::*;

/// How an output is read.
#[derive(Clone)]
struct Cfg {
    format: ToolFormat,
    tools: bool,
    envelope: bool,
    reasoning: Option<ReasoningTags>,
}

fn cfg(format: ToolFormat) -> Cfg {
    Cfg { format, tools: true, envelope: false, reasoning: None }
}

fn envelope() -> Cfg {
    Cfg { format: ToolFormat::Generic, tools: true, envelope: true, reasoning: None }
}

fn thinking(mut c: Cfg) -> Cfg {
    c.reasoning = Some(ReasoningTags::think());
    c
}

impl Cfg {
    fn parser(&self) -> OutputParser {
        OutputParser::new(self.format, self.tools, self.envelope, self.reasoning.clone())
    }
}

/// A call as the deltas tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Streamed {
    id: String,
    name: String,
    args: String,
}

/// The deltas folded into what they say; checks their order on the way.
fn fold(deltas: &[Delta]) -> (String, String, Vec<Streamed>) {
    let (mut content, mut reasoning, mut calls) = (String::new(), String::new(), Vec::<Streamed>::new());
    for d in deltas {
        match d {
            Delta::Content(t) => content.push_str(t),
            Delta::Reasoning(t) => reasoning.push_str(t),
            Delta::ToolCallStart { index, id, name } => {
                assert_eq!(*index, calls.len(), "indices count up from 0");
                calls.push(Streamed { id: id.clone(), name: name.clone(), args: String::new() });
            }
            Delta::ToolCallArgs { index, fragment } => {
                assert_eq!(*index + 1, calls.len(), "arguments follow their call's start");
                calls[*index].args.push_str(fragment);
            }
        }
    }
    (content, reasoning, calls)
}

/// Feeds `pieces`, flushes, finishes; checks that the result is what the deltas said.
fn run(c: &Cfg, pieces: &[&[u8]]) -> Parsed {
    let mut p = c.parser();
    let mut deltas = Vec::new();
    for piece in pieces {
        deltas.extend(p.push_bytes(piece));
    }
    deltas.extend(p.flush());
    let parsed = p.finish();
    let (content, reasoning, calls) = fold(&deltas);
    assert_eq!(parsed.content.clone().unwrap_or_default(), content);
    assert_eq!(parsed.reasoning.clone().unwrap_or_default(), reasoning);
    let done: Vec<Streamed> = parsed
        .tool_calls
        .iter()
        .map(|t| Streamed { id: t.id.clone(), name: t.name.clone(), args: t.arguments.clone() })
        .collect();
    // Completed calls are the streamed ones, in order; an incomplete one may follow.
    assert_eq!(done[..], calls[..done.len()]);
    assert!(calls.len() <= done.len() + 1);
    if calls.len() > done.len() {
        assert!(parsed.incomplete_call);
    }
    parsed
}

/// The parse with ids blanked (they are random).
fn blank(mut p: Parsed) -> Parsed {
    for t in &mut p.tool_calls {
        t.id.clear();
    }
    p
}

/// A small deterministic generator for random cuts.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Parses `text` whole, a character at a time, cut in two at every byte (UTF-8 sequences
/// split included), and cut at random; every way gives the same answer, which is returned.
fn every_way(c: &Cfg, text: &str) -> Parsed {
    let whole = blank(run(c, &[text.as_bytes()]));
    let one_shot = blank(parse(c.format, c.tools, c.envelope, c.reasoning.clone(), text));
    assert_eq!(one_shot, whole, "parse() and push(): {text:?}");
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let pieces: Vec<&[u8]> = chars.iter().map(|s| s.as_bytes()).collect();
    assert_eq!(blank(run(c, &pieces)), whole, "a character at a time: {text:?}");
    let bytes = text.as_bytes();
    let each: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(blank(run(c, &each)), whole, "a byte at a time: {text:?}");
    for i in 1..bytes.len() {
        assert_eq!(blank(run(c, &[&bytes[..i], &bytes[i..]])), whole, "cut at byte {i}: {text:?}");
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ bytes.len() as u64);
    for _ in 0..20 {
        let mut cuts: Vec<usize> = (0..rng.below(6) + 1).map(|_| rng.below(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for k in cuts {
            pieces.push(&bytes[at..k]);
            at = k;
        }
        pieces.push(&bytes[at..]);
        assert_eq!(blank(run(c, &pieces)), whole, "random cuts {pieces:?}");
    }
    whole
}

fn call(name: &str, args: &str) -> ToolCall {
    ToolCall { id: String::new(), name: name.into(), arguments: args.into() }
}

fn answer(content: Option<&str>, calls: Vec<ToolCall>) -> Parsed {
    Parsed { content: content.map(str::to_owned), reasoning: None, tool_calls: calls, incomplete_call: false }
}

const WEATHER: &str = r#"{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}"#;
const WEATHER_ARGS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

#[test]
fn hermes_zero_one_and_two_calls() {
    let c = cfg(ToolFormat::Hermes);
    assert_eq!(every_way(&c, "Bonjour ! Ça va ? 🤔"), answer(Some("Bonjour ! Ça va ? 🤔"), vec![]));
    let one = format!("<tool_call>\n{WEATHER}\n</tool_call>");
    assert_eq!(every_way(&c, &one), answer(None, vec![call("get_weather", WEATHER_ARGS)]));
    let two = format!(
        "<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{}\n</tool_call>",
        r#"{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}"#
    );
    assert_eq!(
        every_way(&c, &two),
        answer(None, vec![call("get_weather", WEATHER_ARGS), call("get_time", r#"{"tz":"Europe/Paris"}"#)])
    );
}

#[test]
fn hermes_content_around_calls() {
    let c = cfg(ToolFormat::Hermes);
    let text = format!("Let me check the weather.\n\n<tool_call>\n{WEATHER}\n</tool_call>\n\nDone.");
    assert_eq!(
        every_way(&c, &text),
        answer(Some("Let me check the weather.Done."), vec![call("get_weather", WEATHER_ARGS)])
    );
    // Text that only looks like the start of a marker is content, at the end too.
    assert_eq!(every_way(&c, "a <tool and <tool_cal"), answer(Some("a <tool and <tool_cal"), vec![]));
    assert_eq!(every_way(&c, "trailing space  \n"), answer(Some("trailing space  \n"), vec![]));
}

#[test]
fn hermes_with_qwen3_reasoning() {
    let c = thinking(cfg(ToolFormat::Hermes));
    let text = format!("<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{WEATHER}\n</tool_call>");
    let p = every_way(&c, &text);
    assert_eq!(p.reasoning.as_deref(), Some("The user wants weather."));
    assert_eq!(p.content, None);
    assert_eq!(p.tool_calls, vec![call("get_weather", WEATHER_ARGS)]);
    // A tool-call marker inside the reasoning is reasoning.
    let p = every_way(&c, "<think>maybe <tool_call>?</think>No call.");
    assert_eq!((p.reasoning.as_deref(), p.content.as_deref()), (Some("maybe <tool_call>?"), Some("No call.")));
    assert!(p.tool_calls.is_empty());
}

#[test]
fn arguments_are_compact_valid_json_byte_for_byte_otherwise() {
    let c = cfg(ToolFormat::Hermes);
    let args = r#"{ "q" : "a \"quoted\"\n word \u00e9 😀 \ud83d\ude00", "n": [ 1, -2.5e3 , true, null ], "o": {} }"#;
    let text = format!("<tool_call>\n{{\"name\": \"search\", \"arguments\": {args}}}\n</tool_call>");
    let p = every_way(&c, &text);
    let got = &p.tool_calls[0].arguments;
    assert_eq!(got, r#"{"q":"a \"quoted\"\n word \u00e9 😀 \ud83d\ude00","n":[1,-2.5e3,true,null],"o":{}}"#);
    let a: Value = serde_json::from_str(got).unwrap();
    let b: Value = serde_json::from_str(args).unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_shapes_a_call_object_may_take() {
    let c = cfg(ToolFormat::Hermes);
    let wrap = |obj: &str| format!("<tool_call>{obj}</tool_call>");
    // Arguments as a JSON string: its text.
    let p = every_way(&c, &wrap(r#"{"name": "f", "arguments": "{\"a\": 1}"}"#));
    assert_eq!(p.tool_calls, vec![call("f", r#"{"a": 1}"#)]);
    // No arguments: an empty object.
    assert_eq!(every_way(&c, &wrap(r#"{"name": "f"}"#)).tool_calls, vec![call("f", "{}")]);
    // Arguments before the name wait for it.
    let p = every_way(&c, &wrap(r#"{"arguments": {"x": [1]}, "name": "f", "extra": {"ignored": true}}"#));
    assert_eq!(p.tool_calls, vec![call("f", r#"{"x":[1]}"#)]);
    // The model's id, when it comes first.
    let p = run(&c, &[wrap(r#"{"id": "mine", "name": "f", "arguments": {}}"#).as_bytes()]);
    assert_eq!(p.tool_calls[0].id, "mine");
}

#[test]
fn generated_ids() {
    let p = run(&cfg(ToolFormat::Hermes), &[format!("<tool_call>{WEATHER}</tool_call>").as_bytes()]);
    let id = &p.tool_calls[0].id;
    assert!(id.starts_with("call_") && id.len() == 29 && id[5..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    // Mistral: nine alphanumerics (what its template accepts back); the model's own id comes
    // after the name and cannot be sent any more.
    let text = r#"[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "abcDEF123"}]"#;
    let p = run(&cfg(ToolFormat::Mistral), &[text.as_bytes()]);
    let id = &p.tool_calls[0].id;
    assert!(id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
}

#[test]
fn incomplete_calls_keep_the_content_before_them() {
    let c = cfg(ToolFormat::Hermes);
    let text = r#"Sure.<tool_call>
{"name": "get_weather", "arguments": {"city": "Par"#;
    let p = every_way(&c, text);
    assert_eq!(p, Parsed { content: Some("Sure.".into()), reasoning: None, tool_calls: vec![], incomplete_call: true });
    // Streamed: the call's start and the arguments so far went out.
    let mut parser = c.parser();
    let mut deltas = parser.push(text);
    deltas.extend(parser.flush());
    let (_, _, calls) = fold(&deltas);
    assert_eq!((calls[0].name.as_str(), calls[0].args.as_str()), ("get_weather", r#"{"city":"Par"#));
    // Cut before the name: nothing of the call was sent, and it is still incomplete.
    let p = every_way(&c, "Hi <tool_call>\n{\"na");
    assert_eq!(p, Parsed { content: Some("Hi".into()), reasoning: None, tool_calls: vec![], incomplete_call: true });
    // After a complete call, a cut second one.
    let p = every_way(&c, &format!("<tool_call>{WEATHER}</tool_call><tool_call>{{\"name\": \"g\", \"argu"));
    assert_eq!(p.tool_calls, vec![call("get_weather", WEATHER_ARGS)]);
    assert!(p.incomplete_call);
}

#[test]
fn broken_json_before_a_call_began_is_content() {
    let c = cfg(ToolFormat::Hermes);
    let text = "Use <tool_call> tags like this: <tool_call>{\"arguments\": {}}</tool_call> ok";
    let p = every_way(&c, text);
    assert_eq!(p, answer(Some(text), vec![]));
    // Broken after it began: the rest is dropped.
    let p = every_way(&c, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1,}}</tool_call> more");
    assert_eq!(p, Parsed { content: None, reasoning: None, tool_calls: vec![], incomplete_call: true });
}

#[test]
fn llama3_calls() {
    let c = cfg(ToolFormat::Llama3);
    let text = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    assert_eq!(every_way(&c, text), answer(None, vec![call("get_weather", r#"{"city":"Paris"}"#)]));
    let text = r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    assert_eq!(every_way(&c, text), answer(None, vec![call("get_weather", r#"{"city":"Paris"}"#)]));
    let text = r#"I'll look. {"name": "f", "parameters": {}}"#;
    assert_eq!(every_way(&c, text), answer(Some("I'll look."), vec![call("f", "{}")]));
    // JSON that is not a call stays content.
    assert_eq!(every_way(&c, r#"{"name": 5}"#), answer(Some(r#"{"name": 5}"#), vec![]));
    assert_eq!(every_way(&c, r#"Call me {"nam"#), answer(Some(r#"Call me {"nam"#), vec![]));
    assert_eq!(every_way(&c, "{\"age\": 3}"), answer(Some("{\"age\": 3}"), vec![]));
}

#[test]
fn mistral_calls() {
    let c = cfg(ToolFormat::Mistral);
    let one = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123XYZ"}]"#;
    assert_eq!(every_way(&c, one), answer(None, vec![call("get_weather", r#"{"city":"Paris"}"#)]));
    let two = r#"Checking both.[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}, "id": "aaaaaaaaa"}, {"name": "b", "arguments": {}, "id": "bbbbbbbbb"}]"#;
    assert_eq!(every_way(&c, two), answer(Some("Checking both."), vec![call("a", r#"{"x":1}"#), call("b", "{}")]));
    assert_eq!(every_way(&c, "No tools needed."), answer(Some("No tools needed."), vec![]));
    let p = every_way(&c, r#"[TOOL_CALLS][{"name": "a", "arguments": {"x": "#);
    assert!(p.incomplete_call && p.tool_calls.is_empty());
}

#[test]
fn generic_envelope_calls() {
    let c = envelope();
    let one = r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}"#;
    assert_eq!(every_way(&c, one), answer(None, vec![call("get_weather", r#"{"city":"Paris"}"#)]));
    let two = r#" {
  "tool_calls": [
    {"name": "a", "arguments": {"x": [1, 2]}, "id": "call_1"},
    {"name": "b", "arguments": {}, "id": "call_2"}
  ]
}"#;
    assert_eq!(every_way(&c, two), answer(None, vec![call("a", r#"{"x":[1,2]}"#), call("b", "{}")]));
    let p = every_way(&c, r#"{"tool_call": {"name": "f", "arguments": {"a": "#);
    assert!(p.incomplete_call && p.tool_calls.is_empty() && p.content.is_none());
}

#[test]
fn generic_envelope_responses() {
    let c = envelope();
    let text = r#"{"response": "Hello \"you\"\n\u00e9\ud83d\ude00 \u0041\\"}"#;
    assert_eq!(every_way(&c, text), answer(Some("Hello \"you\"\né😀 A\\"), vec![]));
    // A lone surrogate reads as U+FFFD.
    assert_eq!(every_way(&c, r#"{"response": "a\ud83d b"}"#), answer(Some("a\u{FFFD} b"), vec![]));
    // A structured response (response_format with tools) is its compact JSON.
    assert_eq!(every_way(&c, r#"{"response": {"a": [1, 2]}}"#), answer(Some(r#"{"a":[1,2]}"#), vec![]));
    // Cut short: what came is content, and no call was cut.
    assert_eq!(every_way(&c, r#"{"response": "Hel"#), answer(Some("Hel"), vec![]));
    // Not the envelope at all: content.
    assert_eq!(every_way(&c, "  Plain text."), answer(Some("  Plain text."), vec![]));
    assert_eq!(every_way(&c, "{not json"), answer(Some("{not json"), vec![]));
    let c = thinking(envelope());
    let p = every_way(&c, "<think>plan</think>\n{\"response\": \"ok\"}");
    assert_eq!((p.reasoning.as_deref(), p.content.as_deref()), (Some("plan"), Some("ok")));
}

#[test]
fn the_response_is_streamed_as_it_is_decoded() {
    let mut p = envelope().parser();
    assert_eq!(p.push(r#"{"response": "Hi \u00"#), vec![Delta::Content("Hi ".into())]);
    assert_eq!(p.push("e9!"), vec![Delta::Content("é!".into())]);
    assert_eq!(p.push(r#"\ud83d"#), vec![]);
    assert_eq!(p.push(r#"\ude00"}"#), vec![Delta::Content("😀".into())]);
    assert_eq!(p.flush(), vec![]);
}

#[test]
fn deltas_come_as_soon_as_they_are_known() {
    let mut p = cfg(ToolFormat::Hermes).parser();
    assert_eq!(p.push("Checking "), vec![Delta::Content("Checking".into())]);
    assert_eq!(p.push("now. <tool"), vec![Delta::Content(" now.".into())]);
    assert_eq!(p.push("_call>\n{\"name\": \"get_"), vec![]);
    let d = p.push("weather\", \"arguments\": {\"ci");
    assert!(matches!(&d[0], Delta::ToolCallStart { index: 0, name, .. } if name == "get_weather"), "{d:?}");
    assert_eq!(d[1], Delta::ToolCallArgs { index: 0, fragment: "{\"ci".into() });
    assert_eq!(
        p.push("ty\": \"Paris\"}}\n</tool_call>"),
        vec![Delta::ToolCallArgs { index: 0, fragment: "ty\":\"Paris\"}".into() }]
    );
    assert_eq!(p.flush(), vec![]);
    let parsed = p.finish();
    assert_eq!(parsed.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(parsed.content.as_deref(), Some("Checking now."));
}

#[test]
fn without_tools_or_reasoning_push_is_the_identity() {
    for format in [ToolFormat::Generic, ToolFormat::Hermes, ToolFormat::Llama3, ToolFormat::Mistral] {
        let c = Cfg { format, tools: false, envelope: false, reasoning: None };
        let mut p = c.parser();
        for piece in ["<tool_call>", "\n{\"name\": \"f\"", " [TOOL_CALLS]", "<think>", " x \n"] {
            assert_eq!(p.push(piece), vec![Delta::Content(piece.into())]);
        }
        assert_eq!(p.push(""), vec![]);
        assert_eq!(p.flush(), vec![]);
        assert_eq!(p.finish().content.as_deref(), Some("<tool_call>\n{\"name\": \"f\" [TOOL_CALLS]<think> x \n"));
    }
    // A Generic template without the envelope reads content too.
    assert_eq!(
        every_way(&cfg(ToolFormat::Generic), "{\"tool_call\": {}}"),
        answer(Some("{\"tool_call\": {}}"), vec![])
    );
}

#[test]
fn reasoning_split_across_pieces() {
    let c = Cfg { format: ToolFormat::Generic, tools: false, envelope: false, reasoning: Some(ReasoningTags::think()) };
    let p = every_way(&c, "<think>\nStep 1: ☕\nStep 2: 🍰\n</think>\n\nThe answer is 42.");
    assert_eq!(p.reasoning.as_deref(), Some("Step 1: ☕\nStep 2: 🍰"));
    assert_eq!(p.content.as_deref(), Some("The answer is 42."));
    let mut parser = c.parser();
    assert_eq!(parser.push("<thi"), vec![]);
    assert_eq!(parser.push("nk>Hmm, "), vec![Delta::Reasoning("Hmm,".into())]);
    assert_eq!(parser.push("ok</th"), vec![Delta::Reasoning(" ok".into())]);
    assert_eq!(parser.push("ink> Yes"), vec![Delta::Content("Yes".into())]);
    let open = Cfg { reasoning: Some(ReasoningTags { starts_open: true, ..ReasoningTags::think() }), ..c };
    let p = every_way(&open, "thinking…</think>done");
    assert_eq!((p.reasoning.as_deref(), p.content.as_deref()), (Some("thinking…"), Some("done")));
}

#[test]
fn invalid_utf8_bytes_read_as_replacement_characters() {
    let c = cfg(ToolFormat::Generic);
    let p = run(&c, &[b"a\xff", b"\xe2\x82", b"\xacb\xe2"]);
    assert_eq!(p.content.as_deref(), Some("a\u{FFFD}€b\u{FFFD}"));
}

#[test]
fn arguments_round_trip_through_serde() {
    // Whatever the model wrote, complete arguments parse, and equal what it meant.
    let c = cfg(ToolFormat::Mistral);
    let args = json!({"s": "tab\tquote\" back\\ nl\n", "u": "é😀", "deep": {"a": [[{}], [1e10, -0.0]]}});
    let text =
        format!("[TOOL_CALLS][{{\"name\": \"f\", \"arguments\": {}}}]", serde_json::to_string_pretty(&args).unwrap());
    let p = every_way(&c, &text);
    let got: Value = serde_json::from_str(&p.tool_calls[0].arguments).unwrap();
    assert_eq!(got, args);
}
