//! The regular expressions a schema's `pattern` may use: the subset llama.cpp's converter
//! turns into grammar rules (`_pattern_to_rule`), checked the way it reads them, so that a
//! pattern it would quietly replace by "any string" is refused instead.

pub(super) enum Pattern {
    /// A valid regex the grammar has no equivalent for (the converter would accept any string).
    Unsupported(String),
    Invalid(String),
}

/// Length of a GBNF escape at `i` (`\xHH`, `\uHHHH`, `\UHHHHHHHH`, `\t \r \n \\ \" \[ \] \-`), 0 if none.
fn gbnf_escape_len(p: &[u8], i: usize) -> usize {
    if i + 1 >= p.len() || p[i] != b'\\' {
        return 0;
    }
    let hex = match p[i + 1] {
        b'x' => 2,
        b'u' => 4,
        b'U' => 8,
        b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-' => return 2,
        _ => return 0,
    };
    if i + 2 + hex > p.len() || !p[i + 2..i + 2 + hex].iter().all(u8::is_ascii_hexdigit) {
        return 0;
    }
    2 + hex
}

/// Whether the converter turns `pattern` into a grammar (its `_pattern_to_rule`, followed
/// step by step): anchored `^…$`; literals, `.`, `[…]` classes, `(…)` and `(?:…)` groups, `|`,
/// `* + ?`, `{m}` / `{m,n}`; escapes of regex metacharacters, and GBNF's own.
pub(super) fn check_pattern(pattern: &str) -> Result<(), Pattern> {
    const NON_LITERAL: &[u8] = b"|.()[]{}*+?^$";
    const META: &[u8] = b"^$.[](){}|*+?";
    let unsupported = |why: &str| Err(Pattern::Unsupported(why.to_owned()));
    let p = pattern.as_bytes();
    if p.len() < 2 || p[0] != b'^' || p[p.len() - 1] != b'$' {
        return unsupported("it must be anchored with '^' and '$'");
    }
    let s = &p[1..p.len() - 1];
    let (mut i, mut depth) = (0usize, 0usize);
    // Whether the current group's sequence has an item a quantifier could apply to.
    let mut seq_nonempty: Vec<bool> = vec![false];
    while i < s.len() {
        let c = s[i];
        let has_item = seq_nonempty.last().copied().unwrap_or(false);
        match c {
            b'.' => i += 1,
            b'(' => {
                i += 1;
                if s.get(i) == Some(&b'?') {
                    if s.get(i + 1) == Some(&b':') {
                        i += 2;
                    } else {
                        return unsupported("lookarounds, named groups and inline flags are not");
                    }
                }
                depth += 1;
                if depth > 100 {
                    return unsupported("groups nested too deep");
                }
                seq_nonempty.push(false);
                continue;
            }
            b')' => {
                if depth == 0 {
                    return Err(Pattern::Invalid("unbalanced parentheses".into()));
                }
                depth -= 1;
                seq_nonempty.pop();
                i += 1;
            }
            b'^' | b'$' => return unsupported("anchors inside the pattern are not"),
            b'[' => {
                i += 1;
                while i < s.len() && s[i] != b']' {
                    if s[i] == b'\\' {
                        let n = gbnf_escape_len(s, i);
                        if n == 0 {
                            let esc = String::from_utf8_lossy(&s[i..(i + 2).min(s.len())]).into_owned();
                            return Err(Pattern::Unsupported(format!(
                                "the escape {esc} in a character class is not (write ranges such as [0-9])"
                            )));
                        }
                        i += n;
                    } else {
                        i += 1;
                    }
                }
                if i >= s.len() {
                    return Err(Pattern::Invalid("unterminated character class".into()));
                }
                i += 1;
            }
            b'|' => {
                i += 1;
                if let Some(last) = seq_nonempty.last_mut() {
                    *last = false;
                }
                continue;
            }
            b'*' | b'+' | b'?' => {
                if !has_item {
                    return Err(Pattern::Invalid("nothing to repeat".into()));
                }
                i += 1;
            }
            b'{' => {
                let close = s[i..].iter().position(|&b| b == b'}').map(|k| i + k);
                let Some(close) = close else {
                    return unsupported("unterminated curly brackets");
                };
                let inner = std::str::from_utf8(&s[i + 1..close]).unwrap_or("");
                let nums: Vec<&str> = inner.split(',').collect();
                let num_ok = |n: &str| n.is_empty() || (n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
                let ok = match nums.as_slice() {
                    [n] => !n.is_empty() && num_ok(n),
                    [a, b] => num_ok(a) && num_ok(b),
                    _ => false,
                };
                if !ok {
                    return unsupported("a repetition other than {m}, {m,} or {m,n}");
                }
                if !has_item {
                    return Err(Pattern::Invalid("nothing to repeat".into()));
                }
                i = close + 1;
            }
            _ => {
                // A run of literal characters (one, when a quantifier follows it).
                let start = i;
                while i < s.len() {
                    if s[i] == b'\\' {
                        if i + 1 == s.len() {
                            return Err(Pattern::Invalid("trailing backslash".into()));
                        }
                        if META.contains(&s[i + 1]) {
                            i += 2;
                        } else {
                            let n = gbnf_escape_len(s, i);
                            if n == 0 {
                                let esc = String::from_utf8_lossy(&s[i..i + 2]).into_owned();
                                return Err(Pattern::Unsupported(format!(
                                    "the escape {esc} is not (write a class such as [0-9] or [a-zA-Z0-9_])"
                                )));
                            }
                            i += n;
                        }
                    } else if !NON_LITERAL.contains(&s[i])
                        && (i == s.len() - 1 || i == start || s[i + 1] == b'.' || !NON_LITERAL.contains(&s[i + 1]))
                    {
                        i += 1;
                    } else {
                        break;
                    }
                }
                if i == start {
                    return Err(Pattern::Unsupported(format!("the stray character '{}' is not", s[i] as char)));
                }
            }
        }
        if let Some(last) = seq_nonempty.last_mut() {
            *last = true;
        }
    }
    if depth != 0 {
        return Err(Pattern::Invalid("unbalanced parentheses".into()));
    }
    Ok(())
}
