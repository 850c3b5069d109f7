//! A whole JSON answer passed through as the upstream wrote it, with one field changed in
//! place: `model` becomes the alias the client asked for ([`set_model`]). Every other byte
//! (key order, number spellings, whitespace, escapes) is the upstream's, and the answer is
//! not serialized again.
//!
//! The scan walks the top-level object only: a key is read as a JSON string (escapes
//! decoded, so `"mod\u0065l"` is `model` too), a value is skipped by its brackets and
//! strings. Input that is not a well-formed object is left alone (`None`); the caller
//! parsed the same bytes already, so that does not happen in practice.

use bytes::Bytes;

/// `raw` with its top-level `model` value replaced by the string `model` (as the parsed
/// body's `model` is); `raw` itself when it has no `model` field (nothing is added); `None`
/// when `raw` is not a JSON object.
pub fn set_model(raw: &Bytes, model: &str) -> Option<Bytes> {
    let Some((start, end)) = model_span(raw)? else {
        return Some(raw.clone());
    };
    let value = serde_json::to_string(model).ok()?;
    if raw[start..end] == *value.as_bytes() {
        return Some(raw.clone());
    }
    let mut out = Vec::with_capacity(raw.len() - (end - start) + value.len());
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&raw[end..]);
    Some(Bytes::from(out))
}

/// Where the top-level `model` value stands (`Some(None)`: there is none).
fn model_span(b: &[u8]) -> Option<Option<(usize, usize)>> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(None);
    }
    let mut found = None;
    loop {
        let key_end = string_end(b, i)?;
        let is_model = key_is(&b[i..key_end], "model");
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = value_end(b, i)?;
        if is_model {
            // The last one wins, as in the parse that read the same bytes.
            found = Some((i, value_end));
        }
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(found),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// Whether the quoted key `q` says `name` (decoding its escapes when it has any).
fn key_is(q: &[u8], name: &str) -> bool {
    if !q.contains(&b'\\') {
        return &q[1..q.len() - 1] == name.as_bytes();
    }
    serde_json::from_slice::<String>(q).is_ok_and(|k| k == name)
}

/// The end of the value starting at `i` (a string, an object or array by its brackets, or
/// a scalar up to the next delimiter).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(raw: &str, model: &str) -> Option<String> {
        set_model(&Bytes::from(raw.to_owned()), model).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn only_the_top_level_model_changes_and_every_other_byte_stays() {
        let raw = r#"{"choices":[{"message":{"model":"inner","content":"a \"model\": \"x\" {"}}],"model":"gemma-3.gguf","t":{"x":6.230321428571429e0}}"#;
        let out = set(raw, "chat").unwrap();
        assert_eq!(out, raw.replace(r#""model":"gemma-3.gguf""#, r#""model":"chat""#));
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["model"], "chat");
        assert_eq!(parsed["choices"][0]["message"]["model"], "inner");
        // Spacing, escapes in the key, an alias that needs escaping.
        assert_eq!(
            set(" {\n \"mod\\u0065l\" : \"m\" , \"n\": 1 }", "a\"b").unwrap(),
            " {\n \"mod\\u0065l\" : \"a\\\"b\" , \"n\": 1 }"
        );
        // The last of two keys, as serde_json reads it.
        assert_eq!(set(r#"{"model":"a","model":"b"}"#, "c").unwrap(), r#"{"model":"a","model":"c"}"#);
    }

    #[test]
    fn nothing_is_added_or_guessed() {
        assert_eq!(set(r#"{"id":"x","n":[1,{"model":"y"}]}"#, "c").unwrap(), r#"{"id":"x","n":[1,{"model":"y"}]}"#);
        assert_eq!(set(r#"{"model":null}"#, "c").unwrap(), r#"{"model":"c"}"#, "as the parsed body's is set");
        assert_eq!(set("{}", "c").unwrap(), "{}");
        for bad in ["[]", "", "{\"model\":\"a\"", "{\"model\" \"a\"}", "{\"a\":1 \"b\":2}", "nope"] {
            assert_eq!(set(bad, "c"), None, "{bad:?}");
        }
    }
}
