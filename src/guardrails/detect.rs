//! The detectors: each a stable name, one or more patterns, and a check beyond the pattern
//! where one exists (Luhn for cards, mod 97 for IBANs, a decodable header for JWTs, the
//! issuing rules for SSNs, Shannon entropy for generic tokens, placeholder rejection for
//! assignments and URLs). Every pattern is compiled once into one [`RegexSet`], so a text
//! with nothing in it is read once; only the detectors the set says matched run their own
//! regex to find where.
//!
//! [`Scanner::find`] returns the findings of a text with overlaps resolved: the detectors
//! are listed most specific first, and a finding is kept only if it does not overlap one
//! kept before it (an OpenAI key in `api_key = "sk-…"` is an `openai_key`, not a
//! `secret_assignment`; the password of a database URL is not also an e-mail address).

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

struct Detector {
    name: &'static str,
    patterns: &'static [&'static str],
    /// The value's capture group in each pattern (0: the whole match).
    check: fn(&str, &str, usize) -> bool,
}

/// One value found in a text: byte offsets of the value to redact (`start..end`) and of the
/// whole match that found it (`from..to`, which may include a keyword before the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub detector: usize,
    pub start: usize,
    pub end: usize,
    pub from: usize,
    pub to: usize,
}

/// `\b` in the patterns below is ASCII's word boundary (the lazy DFA handles it on any text).
const DETECTORS: &[Detector] = &[
    Detector {
        name: "private_key",
        patterns: &[r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"],
        check: |_, _, _| true,
    },
    Detector {
        name: "aws_access_key_id",
        patterns: &[r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b"],
        check: |_, _, _| true,
    },
    Detector {
        name: "aws_secret_access_key",
        patterns: &[
            r#"(?i:aws[_\-. ]?(?:secret[_\-. ]?(?:access[_\-. ]?)?key|sk))["']?\s*(?::|=|=>)\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#,
        ],
        check: |v, _, _| mixed(v),
    },
    Detector {
        name: "gcp_service_account",
        patterns: &[r#""private_key_id"\s*:\s*"([0-9a-f]{40})""#],
        check: |_, _, _| true,
    },
    Detector {
        name: "gcp_api_key",
        patterns: &[r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)"],
        check: |_, _, _| true,
    },
    Detector {
        name: "azure_connection_string",
        patterns: &[r"(?i:\b(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)=)([A-Za-z0-9+/%]{20,}={0,2})"],
        check: |v, _, _| mixed(v),
    },
    Detector {
        name: "github_token",
        patterns: &[r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b"],
        check: |_, _, _| true,
    },
    Detector {
        name: "gitlab_token",
        patterns: &[r"\b(gl(?:pat|dt|rt|ptt|cbt|oas|soat|ffct|imt)-[A-Za-z0-9_\-]{20,})"],
        check: |_, _, _| true,
    },
    Detector {
        name: "slack_token",
        patterns: &[
            r"\b(xox[abposr]-[0-9A-Za-z\-]{10,})",
            r"(https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,})",
        ],
        check: |_, _, _| true,
    },
    Detector {
        name: "stripe_key",
        patterns: &[r"\b((?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,}|whsec_[0-9A-Za-z]{32,})\b"],
        check: |_, _, _| true,
    },
    Detector {
        name: "anthropic_key",
        patterns: &[r"\b(sk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_\-]{32,})"],
        check: |_, _, _| true,
    },
    Detector {
        name: "openai_key",
        patterns: &[
            r"\b(sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,}|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|sk-[A-Za-z0-9]{48})",
        ],
        check: |_, _, _| true,
    },
    Detector {
        name: "huggingface_token",
        patterns: &[r"\b(hf_[A-Za-z0-9]{34,40})\b"],
        check: |v, _, _| mixed(&v[3..]),
    },
    Detector {
        name: "jwt",
        patterns: &[r"\b(eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,})"],
        check: |v, _, _| jwt_header(v),
    },
    Detector {
        name: "database_url",
        patterns: &[
            r#"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|cockroachdb)://[^\s:/@"']*:([^\s/"']+)@[^\s/@"']+"#,
        ],
        check: |v, _, _| !placeholder(v),
    },
    Detector {
        name: "secret_assignment",
        patterns: &[
            r#"(?i:(?:\b|_)(?:password|passwd|pwd|passphrase|secret|secret[_\-]?key|api[_\- ]?key|apikey|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|client[_\-]?secret|private[_\-]?key|token))["'*_`]*[ \t]*(?::=|=>|:|=)[*_`]*[ \t]*(?:"([^"\r\n\\]{4,})"|'([^'\r\n\\]{4,})'|`([^`\r\n]{4,})`|([^\s"',;()\[\]{}<>`]{6,}))"#,
            r"(?i:\bbearer\s+)([A-Za-z0-9\-._~+/]{20,}=*)",
        ],
        check: assignment_value,
    },
    Detector {
        name: "payment_card",
        patterns: &[r"\b((?:[0-9]{4}[ \-]){3}[0-9]{1,7}|[0-9]{4}[ \-][0-9]{6}[ \-][0-9]{5}|[0-9]{13,19})\b"],
        check: |v, _, _| card(v),
    },
    Detector {
        name: "iban",
        patterns: &[r"\b([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30})\b"],
        // Checked (and trimmed to its country's length) by `iban_span`.
        check: |_, _, _| true,
    },
    Detector { name: "us_ssn", patterns: &[r"\b([0-9]{3}-[0-9]{2}-[0-9]{4})\b"], check: |v, _, _| ssn(v) },
    Detector {
        name: "email",
        patterns: &[
            r"\b([A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24})\b",
        ],
        check: |v, _, _| {
            !v.rsplit('.').next().is_some_and(|tld| FILE_EXTENSIONS.contains(&tld.to_ascii_lowercase().as_str()))
        },
    },
    Detector {
        name: "phone_number",
        patterns: &[
            // North American: (415) 555-0134, 415-555-0134, 415.555.0134, +1 415 555 0134.
            r"(?:^|[^0-9A-Za-z+\-.])((?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4})\b",
            // International, written with its country code: +44 20 7946 0958, +49 30 901820.
            r"(?:^|[^0-9A-Za-z+])(\+[1-9][0-9]{0,2}(?:[ .\-]?\(?[0-9]{1,4}\)?){2,5})\b",
        ],
        check: |v, _, _| phone(v),
    },
    Detector { name: "high_entropy_token", patterns: &[r"([A-Za-z0-9+/_\-]{32,}={0,2})"], check: high_entropy },
];

/// What ends a file name written like an address (`NAME@VERSION.txt`), not a domain.
const FILE_EXTENSIONS: &[&str] = &[
    "txt", "js", "ts", "json", "toml", "yaml", "yml", "gguf", "bin", "png", "jpg", "jpeg", "gif", "svg", "html", "css",
    "csv", "jsonl", "lock", "log", "tar", "gz", "whl", "cpp", "h",
];

/// The detectors' names, in the order of their indices.
pub fn names() -> impl Iterator<Item = &'static str> {
    DETECTORS.iter().map(|d| d.name)
}

pub fn name(detector: usize) -> &'static str {
    DETECTORS[detector].name
}

pub fn index(name: &str) -> Option<usize> {
    DETECTORS.iter().position(|d| d.name == name)
}

/// The lazy DFA's cache for the set of every pattern: large enough that text dense with
/// tokens does not make it start over (and fall back to a slower engine) on every search.
const DFA_CACHE: usize = 32 << 20;

pub const PRIVATE_KEY: usize = 0;
/// How many detectors there are.
pub const COUNT: usize = DETECTORS.len();
const IBAN: usize = 17;

/// Every detector's patterns compiled once: one set for the first pass, one regex each.
pub struct Scanner {
    set: RegexSet,
    /// `(detector, regex)` per pattern, in the set's order.
    regexes: Vec<(usize, Regex)>,
    pem_end: Regex,
}

static SCANNER: LazyLock<Scanner> = LazyLock::new(Scanner::compile);

impl Scanner {
    pub fn get() -> &'static Scanner {
        &SCANNER
    }

    fn compile() -> Scanner {
        let mut sources = Vec::new();
        let mut regexes = Vec::new();
        for (i, d) in DETECTORS.iter().enumerate() {
            for p in d.patterns {
                let src = p.replace(r"\b", r"(?-u:\b)");
                regexes.push((i, Regex::new(&src).expect("the detectors' patterns are valid")));
                sources.push(src);
            }
        }
        let set = regex::RegexSetBuilder::new(&sources)
            .dfa_size_limit(DFA_CACHE)
            .build()
            .expect("the detectors' patterns are valid");
        let pem_end = Regex::new(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
            .expect("the PEM footer pattern is valid");
        Scanner { set, regexes, pem_end }
    }

    /// The findings of `text`, in order, without overlaps. A private key without its footer
    /// runs to the end of its base64 lines (or of the text).
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        if text.len() < 6 {
            return found;
        }
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return found;
        }
        for pi in matched.iter() {
            let (d, re) = &self.regexes[pi];
            let d = *d;
            for caps in re.captures_iter(text) {
                let whole = caps.get(0).expect("group 0 is the match");
                let Some(value) = (1..caps.len()).find_map(|g| caps.get(g)).or(Some(whole)) else { continue };
                let (start, mut end) = (value.start(), value.end());
                match d {
                    PRIVATE_KEY => end = self.pem_end(text, whole.end()),
                    IBAN => match iban_span(&text[start..end]) {
                        Some(n) => end = start + n,
                        None => continue,
                    },
                    _ => {
                        if !(DETECTORS[d].check)(value.as_str(), text, start) {
                            continue;
                        }
                    }
                }
                let to = whole.end().max(end);
                found.push(Finding { detector: d, start, end, from: whole.start(), to });
            }
        }
        resolve(found)
    }

    /// Where a private key that starts before `from` ends: after its footer, or after the
    /// last line of its body (base64, its `Name: value` headers, blank lines) when the
    /// footer is missing. Lines may be real newlines or written `\n` (a key inside JSON text).
    fn pem_end(&self, text: &str, from: usize) -> usize {
        if let Some(m) = self.pem_end.find(&text[from..]) {
            return from + m.end();
        }
        let mut end = from;
        let rest = &text[from..];
        let mut at = 0;
        while at < rest.len() {
            let line_end = rest[at..].find(['\n', '\\']).map_or(rest.len(), |i| at + i);
            let line = rest[at..line_end].trim_matches([' ', '\r', '\t']);
            let body = line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            // `Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`.
            let header = line
                .split_once(": ")
                .is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            if !(body || header) {
                break;
            }
            if !line.is_empty() {
                end = from + line_end;
            }
            at = line_end;
            // A newline, or a written `\n`.
            if rest[at..].starts_with("\\n") {
                at += 2;
            } else if at < rest.len() {
                at += 1;
            }
        }
        end
    }

    /// Where the footer of a private key ends, if it is in `text` after `from`.
    pub fn pem_footer_after(&self, text: &str, from: usize) -> Option<usize> {
        self.pem_end.find(&text[from..]).map(|m| from + m.end())
    }
}

/// The findings in order of position, each kept only if it overlaps nothing kept by a
/// detector listed before it (specific before generic), and no finding lies within the whole
/// match of a kept one of higher priority.
fn resolve(mut found: Vec<Finding>) -> Vec<Finding> {
    if found.len() < 2 {
        return found;
    }
    found.sort_by_key(|f| (f.detector, f.start));
    // Kept in order of position; they do not overlap, so only the neighbours of where a
    // finding would go can clash with it.
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        let at = kept.partition_point(|k| k.start < f.start);
        let lo = at.saturating_sub(2);
        let hi = (at + 2).min(kept.len());
        let clash =
            kept[lo..hi].iter().any(|k| f.start < k.end && k.start < f.end || (k.from <= f.start && f.end <= k.to));
        if !clash {
            kept.insert(at, f);
        }
    }
    kept
}

/// Upper- and lower-case letters and a digit or symbol: a random token, not a word.
fn mixed(v: &str) -> bool {
    let b = v.as_bytes();
    b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(|c| c.is_ascii_digit() || b"/+_-".contains(c))
}

/// A value that stands for a secret rather than being one: `${DB_PASSWORD}`, `<password>`,
/// `****`, `password`, `changeit`-style words are kept; these are not.
fn placeholder(v: &str) -> bool {
    let t = v.trim_matches(['"', '\'']);
    let lower = t.to_ascii_lowercase();
    t.is_empty()
        || t.starts_with(['$', '{', '<', '%', '['])
        || t.ends_with(['}', '>', ']'])
        || t.bytes().all(|b| b == t.as_bytes()[0])
        || matches!(
            lower.as_str(),
            "password"
                | "passwd"
                | "pass"
                | "pwd"
                | "secret"
                | "token"
                | "none"
                | "null"
                | "nil"
                | "true"
                | "false"
                | "undefined"
                | "string"
                | "str"
                | "required"
                | "optional"
                | "redacted"
                | "hidden"
                | "example"
                | "your_password"
                | "yourpassword"
                | "your-password"
                | "mypassword"
                | "placeholder"
                | "xxxxxx"
                | "changeme_later"
        )
        || lower.starts_with("your_")
        || lower.starts_with("your-")
        || lower.starts_with("redacted")
}

/// An assignment's value: not a placeholder, and not a code expression (a call, an index, a
/// name or a dotted path of names such as `settings.API_KEY`, a type such as `String`).
fn assignment_value(v: &str, text: &str, start: usize) -> bool {
    if placeholder(v) || v.contains("REDACTED") {
        return false;
    }
    if v.starts_with([':', '.']) {
        // `token::Name`, a path in code.
        return false;
    }
    let quoted = start > 0 && matches!(text.as_bytes()[start - 1], b'"' | b'\'');
    let before = text[..start].trim_end().as_bytes();
    let bearer = before.len() >= 6 && before[before.len() - 6..].eq_ignore_ascii_case(b"bearer");
    if bearer {
        return mixed(v) || v.bytes().filter(u8::is_ascii_digit).count() >= 4;
    }
    if quoted {
        // A quoted literal: a value unless it is a sentence, a template or a short word.
        let b = v.as_bytes();
        let word = b.iter().all(|c| c.is_ascii_lowercase() || b"-_".contains(c)) && b.len() < 12;
        return !word && (!v.contains(' ') || v.split(' ').count() <= 2 && !v.contains("{{"));
    }
    let identifier_path =
        v.split(['.', ':']).all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'));
    !identifier_path && !v.ends_with(['.', ':', '-'])
}

/// A JWT's header is base64url JSON naming its algorithm.
fn jwt_header(v: &str) -> bool {
    let head = v.split('.').next().unwrap_or_default();
    base64url(head).is_some_and(|h| {
        serde_json::from_slice::<serde_json::Value>(&h).is_ok_and(|j| j.get("alg").is_some_and(|a| a.is_string()))
    })
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A card number: 13 to 19 digits passing Luhn, with an issuer's prefix and a length that
/// issuer uses.
fn card(v: &str) -> bool {
    let digits: Vec<u8> = v.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    let n = digits.len();
    if !(13..=19).contains(&n) || !luhn(&digits) {
        return false;
    }
    let prefix = |k: usize| digits[..k].iter().fold(0u32, |a, d| a * 10 + u32::from(*d));
    match digits[0] {
        4 => matches!(n, 13 | 16 | 19),
        5 => (51..=55).contains(&prefix(2)) && n == 16,
        2 => (2221..=2720).contains(&prefix(4)) && n == 16,
        3 => match prefix(2) {
            34 | 37 => n == 15,
            36 | 38 | 30 => (14..=19).contains(&n),
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&n),
            _ => false,
        },
        6 => {
            (prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) || prefix(2) == 62)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry, the countries most seen).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AT", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("EE", 20),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("GR", 27),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MT", 31),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TR", 26),
    ("UA", 29),
];

/// The bytes of `s` that are an IBAN (its country's length, spaces allowed between groups),
/// if its check digits hold (mod 97 = 1).
fn iban_span(s: &str) -> Option<usize> {
    let want = IBAN_LENGTHS.iter().find(|(c, _)| s.starts_with(c))?.1;
    let mut chars = Vec::with_capacity(want);
    let mut end = 0;
    for (i, b) in s.bytes().enumerate() {
        if b == b' ' {
            continue;
        }
        chars.push(b);
        if chars.len() == want {
            end = i + 1;
            break;
        }
    }
    if chars.len() < want {
        return None;
    }
    // Not followed by more of the same run (a longer code is not this IBAN).
    if s.as_bytes().get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut rem = 0u32;
    for &b in chars[4..].iter().chain(&chars[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return None,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    (rem == 1).then_some(end)
}

/// The SSA's rules: no area 000, 666 or 900–999, no group 00, no serial 0000.
fn ssn(v: &str) -> bool {
    let area = &v[..3];
    area != "000" && area != "666" && !area.starts_with('9') && &v[4..6] != "00" && &v[7..] != "0000"
}

/// A phone number has 10 to 15 digits (E.164) and is written with separators or a `+`.
fn phone(v: &str) -> bool {
    let digits = v.bytes().filter(u8::is_ascii_digit).count();
    // Numbers separated by spaces alone are a list (`256 512 1024`), unless a `+` leads.
    let written = v.starts_with('+') || v.bytes().any(|b| b"-.(".contains(&b));
    (10..=15).contains(&digits) && written
}

/// A generic token: long, of mixed case with digits, and random in its characters (Shannon
/// entropy per character near the most its length allows); not a data URL's payload, a
/// package integrity hash or a public key.
fn high_entropy(v: &str, text: &str, start: usize) -> bool {
    let n = v.len();
    if !(32..=1024).contains(&n) || !mixed(v) || !v.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    let before = text[..start].trim_end();
    if before.ends_with("base64,")
        || before.ends_with("ssh-rsa")
        || before.ends_with("ssh-ed25519")
        || before.ends_with("ecdsa-sha2-nistp256")
        || v.starts_with("sha256-")
        || v.starts_with("sha384-")
        || v.starts_with("sha512-")
        || before.ends_with("h1:")
    {
        return false;
    }
    // Paths and identifiers are words joined by separators: a token has few separators.
    let separators = v.bytes().filter(|b| b"/_-".contains(b)).count();
    if separators * 8 > n {
        return false;
    }
    // An alphabet or a counting sequence (`ABCDEFGH…0123456789`) is not random.
    let b = v.as_bytes();
    let steps = b.windows(2).filter(|w| w[1] == w[0].wrapping_add(1)).count();
    if steps * 2 > n {
        return false;
    }
    entropy(v) >= 0.82 * (n.min(64) as f64).log2()
}

/// Shannon entropy of the bytes, bits per byte.
pub fn entropy(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(&'static str, &str)> {
        Scanner::get().find(text).into_iter().map(|f| (name(f.detector), &text[f.start..f.end])).collect()
    }

    #[test]
    fn the_indices_name_their_detectors() {
        assert_eq!((name(PRIVATE_KEY), name(IBAN)), ("private_key", "iban"));
        assert_eq!(names().count(), COUNT);
    }

    #[test]
    fn the_checks_beyond_the_patterns_hold() {
        assert!(card("4111 1111 1111 1111"));
        assert!(!card("4111 1111 1111 1112"), "Luhn");
        assert!(card("378282246310005"));
        assert!(!card("1234567812345670"), "no issuer starts with 1");
        assert_eq!(iban_span("DE89 3704 0044 0532 0130 00"), Some(27));
        assert_eq!(iban_span("DE89 3704 0044 0532 0130 01"), None);
        assert_eq!(iban_span("GB82WEST12345698765432"), Some(22));
        assert!(ssn("123-45-6789") && !ssn("666-45-6789") && !ssn("123-00-6789") && !ssn("912-45-6789"));
        assert!(jwt_header("eyJhbGciOiJIUzI1NiJ9"));
        assert!(!jwt_header("eyJub3RhbGciOjF9"), "a header without alg");
    }

    #[test]
    fn the_specific_detector_wins_an_overlap() {
        assert_eq!(
            found("api_key = \"sk-proj-abcdefghijklmnopqrstuvwxyz0123\""),
            [("openai_key", "sk-proj-abcdefghijklmnopqrstuvwxyz0123")]
        );
        assert_eq!(found("postgres://app:Hx9v2LmQ@db.internal.example.com:5432/prod"), [("database_url", "Hx9v2LmQ")]);
    }

    #[test]
    fn environment_names_urls_and_lists_of_numbers() {
        assert_eq!(found("export GITHUB_TOKEN=9f8e7d6c5b4aX"), [("secret_assignment", "9f8e7d6c5b4aX")]);
        assert_eq!(found("**Password:** `hunter2!x`"), [("secret_assignment", "hunter2!x")]);
        assert_eq!(found("redis://:Sup3rS3cret@redis:6379/0"), [("database_url", "Sup3rS3cret")]);
        assert_eq!(found("postgres://app:p@ssw0rd@db.example.com/shop"), [("database_url", "p@ssw0rd")]);
        assert_eq!(found("for n in 256 512 1024; do"), []);
        assert_eq!(found("github.com/x/y v1.2.3 h1:olpwvP2KacW1ZWvsR7uQhoyTYvKAupfQrRGBFM352Gk="), []);
        assert_eq!(found("write to ana@example.rs"), [("email", "ana@example.rs")]);
    }

    #[test]
    fn a_private_key_runs_to_its_footer_or_the_end_of_its_body() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc+/=\n-----END RSA PRIVATE KEY-----";
        let text = format!("here: {key} done");
        assert_eq!(found(&text), [("private_key", key)]);
        let open = "x -----BEGIN PRIVATE KEY-----\\nMIIEowIBAAKCAQEA7\\nQWERTY\\n\", \"client_email\": 1";
        let f = Scanner::get().find(open);
        assert_eq!(&open[f[0].start..f[0].end], "-----BEGIN PRIVATE KEY-----\\nMIIEowIBAAKCAQEA7\\nQWERTY");
    }
}
