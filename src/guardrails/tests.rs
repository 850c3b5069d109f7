use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn scope(default: Option<&str>, detectors: &[(&str, &str)]) -> Scope {
    let d: BTreeMap<String, String> = detectors.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Scope::parse(default, &d, "test").unwrap()
}

fn body(v: serde_json::Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn the_most_specific_scope_decides_each_detector() {
    let gateway = scope(Some("block"), &[("email", "log")]);
    let alias = scope(None, &[("email", "redact"), ("phone_number", "off")]);
    let key = scope(Some("log"), &[]);
    let p = Policy::resolve(&[None, Some(&alias), Some(&gateway)]).unwrap();
    let at = |p: &Policy, d: &str| p.action(detect::index(d).unwrap());
    assert_eq!(at(&p, "email"), Action::Redact, "the alias's detector setting over the gateway's");
    assert_eq!(at(&p, "phone_number"), Action::Off);
    assert_eq!(at(&p, "jwt"), Action::Block, "the gateway's default");
    let p = Policy::resolve(&[Some(&key), Some(&alias), Some(&gateway)]).unwrap();
    assert_eq!(at(&p, "email"), Action::Log, "the key's default is more specific than the alias");
    assert_eq!(Policy::resolve(&[Some(&scope(Some("off"), &[]))]), None, "all off: nothing to scan");
}

#[test]
fn a_scope_names_known_detectors_and_actions() {
    let none = BTreeMap::new();
    let e = Scope::parse(Some("deny"), &none, "gateway.toml: guardrails").unwrap_err();
    assert!(e.contains("default = \"deny\" must be one of block, redact, log, off"), "{e}");
    let bad: BTreeMap<String, String> = [("emails".to_string(), "log".to_string())].into();
    let e = Scope::parse(None, &bad, "x").unwrap_err();
    assert!(e.contains("no detector is called 'emails'") && e.contains("email, phone_number"), "{e}");
}

#[test]
fn a_block_names_the_detector_and_where_never_the_value() {
    let p = Policy::resolve(&[Some(&scope(Some("block"), &[]))]).unwrap();
    let mut b = body(json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "my key is AKIAIOSFODNN7EXAMPLE ok"}]}
    ]}));
    let v = scan_request(&p, &mut b);
    let e = v.blocked.expect("blocked");
    assert_eq!(e.code.as_deref(), Some(CODE));
    assert_eq!(e.param.as_deref(), Some("messages[1].content[0].text"));
    assert!(
        e.message.contains("aws_access_key_id found in messages[1].content[0].text at character 10"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("AKIA"));
    assert_eq!(v.hits.summary(), "aws_access_key_id:block:input=1");
}

#[test]
fn redaction_reads_decoded_text_and_keeps_arguments_valid_json() {
    let p = Policy::resolve(&[Some(&scope(Some("redact"), &[]))]).unwrap();
    // The key is written with JSON escapes in the body, and again inside the arguments' JSON.
    let raw = r#"{"model":"m","messages":[{"role":"user","content":"\u0041KIAIOSFODNN7EXAMPLE"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f",
        "arguments":"{\"to\":\"ops\\u0040example.com\",\"n\":1}"}}]}]}"#;
    let mut b: Map<String, Value> = serde_json::from_str(raw).unwrap();
    let v = scan_request(&p, &mut b);
    assert!(v.redacted && v.blocked.is_none());
    assert_eq!(b["messages"][0]["content"], "[REDACTED:aws_access_key_id]");
    let args: Value =
        serde_json::from_str(b["messages"][1]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"to": "[REDACTED:email]", "n": 1}));
    assert_eq!(b["messages"][1]["tool_calls"][0]["id"], "call_1", "ids are not text");
}

#[test]
fn a_tool_calls_input_is_read_whole_but_data_urls_are_not() {
    let p = Policy::resolve(&[Some(&scope(Some("redact"), &[]))]).unwrap();
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = body(json!({"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "fetch", "input": {"url": format!("https://x/?api_key={key}"), "data": {"password": "Hx9!v2LmQ"}}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo".repeat(60)}},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "AKIAIOSFODNN7EXAMPLE".repeat(3))}}
    ]}]}));
    let before = b.clone();
    let v = scan_request(&p, &mut b);
    let input = &b["messages"][0]["content"][0]["input"];
    assert_eq!(input["url"], "https://x/?api_key=[REDACTED:openai_key]");
    assert_eq!(input["data"]["password"], "[REDACTED:secret_assignment]");
    assert_eq!(b["messages"][0]["content"][1], before["messages"][0]["content"][1], "an image's base64 is data");
    assert_eq!(b["messages"][0]["content"][2], before["messages"][0]["content"][2], "so is a data URL");
    assert_eq!(v.hits.summary(), "openai_key:redact:input=1,secret_assignment:redact:input=1");
}

#[test]
fn a_whole_answer_is_redacted_and_its_logprobs_dropped() {
    let p = Policy::resolve(&[Some(&scope(Some("redact"), &[]))]).unwrap();
    let mut b = body(json!({"id": "x", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "call 415-555-0134"}, "logprobs": {"content": []}}]}));
    let mut hits = Hits::default();
    assert_eq!(scan_response(&p, &mut b, &mut hits), None);
    assert_eq!(b["choices"][0]["message"]["content"], "call [REDACTED:phone_number]");
    assert_eq!(b["choices"][0]["logprobs"], Value::Null);
    assert_eq!(hits.summary(), "phone_number:redact:output=1");
    assert_eq!(mask("mail a@b.example now"), "mail [REDACTED:email] now");
}

/// The labelled corpus (`tests/data/guardrails/`): every secret and every piece of personal
/// data is found by its own detector; no near-miss, and nothing in the repository's lock file
/// and sources (outside this module's own examples), is flagged at all.
#[test]
fn the_corpus_is_found_and_the_near_misses_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/guardrails");
    let scanner = detect::Scanner::get();
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut missed = Vec::new();
    for line in std::fs::read_to_string(dir.join("labelled.jsonl")).unwrap().lines().filter(|l| !l.is_empty()) {
        let item: Value = serde_json::from_str(line).unwrap();
        let (label, text, value) =
            (item["label"].as_str().unwrap(), item["text"].as_str().unwrap(), item["value"].as_str().unwrap());
        let at = text.find(value).unwrap_or_else(|| panic!("the value is in its text: {line}"));
        let found = scanner.find(text);
        let hit = found.iter().any(|f| detect::name(f.detector) == label && f.start <= at && at + value.len() <= f.end);
        let e = per.entry(label.to_owned()).or_default();
        e.0 += 1;
        if hit {
            e.1 += 1;
        } else {
            let got: Vec<_> = found.iter().map(|f| (detect::name(f.detector), &text[f.start..f.end])).collect();
            missed.push(format!("{label} in {:?}: found {got:?}", item["kind"]));
        }
    }
    let mut false_positives = Vec::new();
    for line in std::fs::read_to_string(dir.join("near_misses.jsonl")).unwrap().lines().filter(|l| !l.is_empty()) {
        let item: Value = serde_json::from_str(line).unwrap();
        let text = item["text"].as_str().unwrap();
        for f in scanner.find(text) {
            false_positives.push(format!(
                "{} flagged {:?} in {}",
                detect::name(f.detector),
                &text[f.start..f.end],
                item["why"]
            ));
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("Cargo.lock")];
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() && !p.ends_with("guardrails") {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for fd in scanner.find(line) {
                false_positives.push(format!(
                    "{} flagged {:?} at {}:{}",
                    detect::name(fd.detector),
                    &line[fd.start..fd.end],
                    f.strip_prefix(root).unwrap().display(),
                    n + 1
                ));
            }
        }
    }
    for (d, (n, hit)) in &per {
        eprintln!("{d:24} recall {hit}/{n}");
    }
    eprintln!("false positives: {} (near-misses and {} repository files)", false_positives.len(), files.len());
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
    assert!(false_positives.is_empty(), "false positives:\n{}", false_positives.join("\n"));
    assert_eq!(per.len(), detect::COUNT, "the corpus has items for every detector: {:?}", per.keys());
}
