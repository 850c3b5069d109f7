//! Which JSON schemas constrained decoding can enforce: a 400 naming the feature for any
//! schema that llama.cpp's `json_schema_to_grammar` (the copy vendored by `llama-cpp-sys-2`,
//! `common/json-schema.cpp`, which the engine links) would refuse, or would quietly not
//! enforce. A schema that passes here gives a grammar whose every output validates against it.
//!
//! How the converter reads a schema object, first match wins — and what that means here:
//! - `$ref`: only `#/…` pointers into the same document (tokens split on `/`, not unescaped);
//!   its siblings are ignored, so a validation keyword beside it is refused.
//! - `oneOf` / `anyOf` (oneOf wins): the union of the alternatives; siblings ignored. A `type`
//!   beside them is accepted when every alternative already has that type.
//! - `type` as an array: one alternative per type, each with the other keywords.
//! - `const`, `enum`: the literal values; siblings ignored (`type` checked as above).
//! - by `type` (or, with none, by the keywords present): object (`properties`, `required`,
//!   `additionalProperties`; extra properties are refused unless `additionalProperties` says
//!   otherwise, a stricter grammar than the schema, never a looser one), `allOf` (merged
//!   objects — every property becomes required — or the intersection of enums), array
//!   (`items`, `prefixItems` as a fixed tuple, `minItems`, `maxItems`), string (`pattern` in a
//!   regex subset, else `format` date / time / date-time / uuid, else `minLength` /
//!   `maxLength`), integer (`minimum`, `maximum`, `exclusive*`, rounded inwards), number,
//!   boolean, null; a schema with none of these (`{}`, or annotations only) is any value.
//!
//! Everything else that constrains a value (`not`, `if`/`then`/`else`, `patternProperties`,
//! `propertyNames`, `min/maxProperties`, `dependent*`, `uniqueItems`, `contains`, `multipleOf`,
//! bounds on non-integers, unknown formats, a pattern outside the subset, boolean schemas…)
//! is refused where it applies to a value the grammar can produce; a keyword that cannot
//! apply (`minimum` on a string) is vacuous and passes. Annotations (`title`, `description`,
//! `default`, `examples`, `$schema`, `$id`, `$comment`, `deprecated`, …) and unknown keywords
//! pass: validators ignore them too.
//!
//! [`embed`] is the other half: a schema placed inside a larger one (tool parameters inside
//! the tool-call envelope) has its `#/…` references rewritten to point where it now lives.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::protocol::error::ApiError;

mod pattern;

use pattern::{check_pattern, Pattern};

/// Checks that decoding can be constrained to `schema`; `param` names the request field.
pub fn check_schema(schema: &Value, param: &str) -> Result<(), ApiError> {
    let mut c = Checker { root: schema, refs: HashMap::new(), depth: 0 };
    c.node(schema, "#").map(drop).map_err(|f| f.into_error(param))
}

/// `schema` made enforceable for a tool's arguments: each subschema that uses what the grammar
/// cannot enforce (`propertyNames`, a `format`, bounds on a float...) is loosened to its bare
/// `type` (and description), so the arguments keep their structure and lose only that
/// constraint. Returns the schema and what was loosened; a schema that is not valid, or that
/// cannot be loosened, is the error [`check_schema`] gives.
pub fn relax_schema(schema: &Value, param: &str) -> Result<(Value, Vec<String>), ApiError> {
    let mut s = schema.clone();
    let mut loosened = Vec::new();
    for _ in 0..64 {
        let checked = {
            let mut c = Checker { root: &s, refs: HashMap::new(), depth: 0 };
            c.node(&s, "#").map(drop)
        };
        let (what, at) = match checked {
            Ok(()) => return Ok((s, loosened)),
            Err(Fail::Unsupported { what, at }) => (what, at),
            Err(f) => return Err(f.into_error(param)),
        };
        let ptr = at.strip_prefix('#').unwrap_or(&at).to_owned();
        let loose = match s.pointer(&ptr) {
            Some(Value::Object(o)) => {
                let mut m = Map::new();
                for k in ["type", "description"] {
                    if let Some(v @ Value::String(_)) = o.get(k) {
                        m.insert(k.into(), v.clone());
                    }
                }
                Some(Value::Object(m))
            }
            _ => None,
        };
        match (loose, s.pointer_mut(&ptr)) {
            (Some(l), Some(node)) if *node != l => {
                *node = l;
                loosened.push(format!("{what} at {at}"));
            }
            _ => return Err(Fail::Unsupported { what, at }.into_error(param)),
        }
    }
    check_schema(&s, param).map(|()| (s, loosened))
}

/// Types of JSON values, as a bit set.
type Types = u8;
const NULL: Types = 1;
const BOOL: Types = 2;
const INT: Types = 4;
/// Numbers that are not integers.
const FRAC: Types = 8;
const STR: Types = 16;
const ARR: Types = 32;
const OBJ: Types = 64;
const NUM: Types = INT | FRAC;
const ALL: Types = 127;

/// Deeper schemas are refused (a guard for the recursion, far beyond real schemas).
const MAX_DEPTH: usize = 64;

#[derive(Debug)]
enum Fail {
    /// A feature the grammar cannot enforce.
    Unsupported { what: String, at: String },
    /// Not a valid schema (or one the converter rejects as malformed).
    Invalid { what: String, at: String },
}

impl Fail {
    fn into_error(self, param: &str) -> ApiError {
        match self {
            Fail::Unsupported { what, at } => ApiError::invalid_request(
                format!(
                    "Invalid schema for '{param}': {what} (at {at}) is not supported; constrained decoding \
                     cannot enforce it."
                ),
                Some(param),
            )
            .with_code("unsupported_schema"),
            Fail::Invalid { what, at } => {
                ApiError::invalid_request(format!("Invalid schema for '{param}': {what} (at {at})."), Some(param))
                    .with_code("invalid_schema")
            }
        }
    }
}

fn unsupported(what: impl Into<String>, at: &str) -> Fail {
    Fail::Unsupported { what: what.into(), at: at.to_owned() }
}

fn invalid(what: impl Into<String>, at: &str) -> Fail {
    Fail::Invalid { what: what.into(), at: at.to_owned() }
}

/// What a checked schema can produce, as far as `allOf` and sibling checks need to know.
#[derive(Clone, Debug)]
struct Summary {
    types: Types,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    /// `closed`: the schema itself limits other properties (`additionalProperties` false or a
    /// schema); the grammar allows none either way.
    Object {
        props: Vec<String>,
        closed: bool,
    },
    Enum(Vec<Value>),
    AnyOf,
    Other,
}

struct Checker<'a> {
    root: &'a Value,
    /// Checked `$ref` targets; `None` while one is being checked (a cycle).
    refs: HashMap<String, Option<Summary>>,
    depth: usize,
}

/// Keywords that never constrain (or that the converter uses only to pick a branch).
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "example",
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "$defs",
    "definitions",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
    "$vocabulary",
    "$dynamicAnchor",
];

/// The values a validation keyword applies to; `None` for annotations and unknown keywords.
fn applies_to(keyword: &str) -> Option<Types> {
    Some(match keyword {
        "type" | "enum" | "const" | "allOf" | "anyOf" | "oneOf" | "not" | "if" | "then" | "else" | "$ref"
        | "$dynamicRef" | "$recursiveRef" => ALL,
        "multipleOf" | "maximum" | "exclusiveMaximum" | "minimum" | "exclusiveMinimum" => NUM,
        "maxLength" | "minLength" | "pattern" | "format" => STR,
        "items" | "prefixItems" | "additionalItems" | "maxItems" | "minItems" | "uniqueItems" | "contains"
        | "maxContains" | "minContains" | "unevaluatedItems" => ARR,
        "properties"
        | "required"
        | "additionalProperties"
        | "patternProperties"
        | "propertyNames"
        | "maxProperties"
        | "minProperties"
        | "dependentRequired"
        | "dependentSchemas"
        | "dependencies"
        | "unevaluatedProperties" => OBJ,
        _ => return None,
    })
}

/// A keyword whose value constrains nothing.
fn trivial(keyword: &str, v: &Value) -> bool {
    match keyword {
        "uniqueItems" => v == &Value::Bool(false),
        "minLength" | "minItems" | "minProperties" | "minContains" => v.as_u64() == Some(0),
        "required" => v.as_array().is_some_and(Vec::is_empty),
        "additionalProperties" => v == &Value::Bool(true),
        _ => false,
    }
}

fn types_named(name: &str) -> Option<Types> {
    Some(match name {
        "null" => NULL,
        "boolean" => BOOL,
        "integer" => INT,
        "number" => NUM,
        "string" => STR,
        "array" => ARR,
        "object" => OBJ,
        _ => return None,
    })
}

fn type_of(v: &Value) -> Types {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOL,
        Value::Number(n) if n.is_i64() || n.is_u64() => INT,
        Value::Number(_) => FRAC,
        Value::String(_) => STR,
        Value::Array(_) => ARR,
        Value::Object(_) => OBJ,
    }
}

fn describe(keyword: &str, v: &Value, produced: Types) -> String {
    match keyword {
        "format" => format!("format {v}"),
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" if produced & FRAC != 0 => {
            format!("'{keyword}' on a number that is not an integer (only integer bounds can be enforced)")
        }
        _ => format!("'{keyword}'"),
    }
}

impl Checker<'_> {
    fn node(&mut self, s: &Value, at: &str) -> Result<Summary, Fail> {
        if self.depth >= MAX_DEPTH {
            return Err(unsupported(format!("a schema nested deeper than {MAX_DEPTH} levels"), at));
        }
        self.depth += 1;
        let r = self.node_inner(s, at);
        self.depth -= 1;
        r
    }

    fn node_inner(&mut self, s: &Value, at: &str) -> Result<Summary, Fail> {
        let o = match s {
            Value::Object(o) => o,
            Value::Bool(b) => {
                return Err(unsupported(format!("the boolean schema '{b}' (write {{}} for any value)"), at))
            }
            _ => return Err(invalid("a schema must be an object", at)),
        };
        for k in ["not", "if", "then", "else", "$dynamicRef", "$recursiveRef"] {
            if o.contains_key(k) {
                return Err(unsupported(format!("'{k}'"), at));
            }
        }
        if let Some(r) = o.get("$ref") {
            let sum = self.reference(r, at)?;
            rest(o, &["$ref"], sum.types, at)?;
            return Ok(sum);
        }
        if o.contains_key("oneOf") || o.contains_key("anyOf") {
            if o.contains_key("oneOf") && o.contains_key("anyOf") {
                return Err(unsupported("'anyOf' together with 'oneOf' (only 'oneOf' is used)", at));
            }
            let key = if o.contains_key("oneOf") { "oneOf" } else { "anyOf" };
            let types = self.alternatives(&o[key], &format!("{at}/{key}"))?.iter().fold(0, |t, s| t | s.types);
            rest(o, &[key], types, at)?;
            return Ok(Summary { types, shape: Shape::AnyOf });
        }
        let ty = o.get("type");
        if let Some(Value::Array(ts)) = ty {
            if ts.is_empty() {
                return Err(invalid("'type' must not be an empty array", at));
            }
            if o.contains_key("const") || o.contains_key("enum") {
                // Every alternative is the same literals: they must fit one of the types.
                let declared = declared_types(&o["type"]).ok_or_else(|| invalid("'type' names an unknown type", at))?;
                let mut alt = o.clone();
                alt.remove("type");
                let sum = self.node(&Value::Object(alt), at)?;
                if sum.types & !declared != 0 {
                    return Err(unsupported(format!("'type' {} with values of other types", o["type"]), at));
                }
                return Ok(sum);
            }
            let mut types = 0;
            for (i, t) in ts.iter().enumerate() {
                if !t.is_string() {
                    return Err(invalid("'type' must be a string or an array of strings", at));
                }
                let mut alt = o.clone();
                alt.insert("type".into(), t.clone());
                types |= self.node(&Value::Object(alt), &format!("{at}/type/{i}"))?.types;
            }
            return Ok(Summary { types, shape: Shape::AnyOf });
        }
        if let Some(v) = o.get("const") {
            let types = type_of(v);
            rest(o, &["const"], types, at)?;
            return Ok(Summary { types, shape: Shape::Other });
        }
        if let Some(v) = o.get("enum") {
            let values = match v {
                Value::Array(a) if !a.is_empty() => a,
                _ => return Err(invalid("'enum' must be a non-empty array", at)),
            };
            let types = values.iter().fold(0, |t, v| t | type_of(v));
            rest(o, &["enum"], types, at)?;
            return Ok(Summary { types, shape: Shape::Enum(values.clone()) });
        }
        let name = match ty {
            None => "",
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(invalid("'type' must be a string or an array of strings", at)),
        };
        let has_props =
            o.contains_key("properties") || o.get("additionalProperties").is_some_and(|v| v != &Value::Bool(true));
        match name {
            "" if has_props => self.object(o, at),
            "" if o.contains_key("allOf") => self.all_of(o, at),
            "" if o.contains_key("items") || o.contains_key("prefixItems") => self.array(o, at),
            "" if ["pattern", "minLength", "maxLength"].iter().any(|k| o.contains_key(*k)) || known_format(o, at)? => {
                self.string(o, at)
            }
            "" => {
                rest(o, &[], ALL, at)?;
                Ok(Summary { types: ALL, shape: Shape::Other })
            }
            "object" if !has_props && o.contains_key("allOf") => self.all_of(o, at),
            "object" => self.object(o, at),
            "string" if o.contains_key("allOf") => self.all_of(o, at),
            "string" => self.string(o, at),
            "array" => self.array(o, at),
            "integer" => self.integer(o, at),
            "number" | "boolean" | "null" => {
                let types = types_named(name).unwrap_or(ALL);
                rest(o, &["type"], types, at)?;
                Ok(Summary { types, shape: Shape::Other })
            }
            other => Err(invalid(format!("unrecognized type '{other}'"), at)),
        }
    }

    fn alternatives(&mut self, v: &Value, at: &str) -> Result<Vec<Summary>, Fail> {
        match v {
            Value::Array(a) if !a.is_empty() => {
                a.iter().enumerate().map(|(i, s)| self.node(s, &format!("{at}/{i}"))).collect()
            }
            _ => Err(invalid("must be a non-empty array of schemas", at)),
        }
    }

    fn reference(&mut self, r: &Value, at: &str) -> Result<Summary, Fail> {
        let Value::String(r) = r else {
            return Err(invalid("'$ref' must be a string", at));
        };
        if !r.starts_with("#/") {
            let what = if r.contains("://") || !r.starts_with('#') {
                format!("the remote $ref '{r}' (only references into the same schema, '#/…', are)")
            } else {
                format!("the $ref '{r}' (only JSON pointers into the same schema, '#/…', are)")
            };
            return Err(unsupported(what, at));
        }
        match self.refs.get(r.as_str()) {
            Some(Some(sum)) => return Ok(sum.clone()),
            // A cycle: it adds no type of its own.
            Some(None) => return Ok(Summary { types: 0, shape: Shape::Other }),
            None => {}
        }
        let root = self.root;
        let resolve = |r: &str| pointer_tokens(r).and_then(|t| lookup(root, &t));
        let target = resolve(r).ok_or_else(|| invalid(format!("the $ref '{r}' does not resolve"), at))?;
        // References that only lead to each other would be a grammar rule defined by itself.
        let mut chain = vec![r.as_str()];
        let mut t = target;
        while let Some(Value::String(next)) = t.get("$ref") {
            if chain.contains(&next.as_str()) {
                return Err(unsupported(format!("the $ref cycle {} with no schema in it", chain.join(" -> ")), at));
            }
            chain.push(next);
            match resolve(next) {
                Some(n) => t = n,
                None => break,
            }
        }
        self.refs.insert(r.clone(), None);
        let sum = self.node(target, r)?;
        self.refs.insert(r.clone(), Some(sum.clone()));
        Ok(sum)
    }

    fn object(&mut self, o: &Map<String, Value>, at: &str) -> Result<Summary, Fail> {
        let required: Vec<&str> = match o.get("required") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().ok_or_else(|| invalid("'required' must be an array of strings", at)))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("'required' must be an array of strings", at)),
        };
        let mut props = Vec::new();
        match o.get("properties") {
            None => {}
            Some(Value::Object(p)) => {
                for (name, sub) in p {
                    self.node(sub, &format!("{at}/properties/{name}"))?;
                    props.push(name.clone());
                }
            }
            Some(_) => return Err(invalid("'properties' must be an object", at)),
        }
        if let Some(missing) = required.iter().find(|r| !props.iter().any(|p| p == *r)) {
            return Err(unsupported(format!("'required' naming '{missing}', which is not in 'properties'"), at));
        }
        // The grammar allows other properties only when `additionalProperties` says so, or
        // when there are no `properties` at all.
        let (grammar_extra, closed) = match o.get("additionalProperties") {
            None => (!o.contains_key("properties"), false),
            Some(Value::Bool(b)) => (*b, !*b),
            Some(sub @ Value::Object(_)) => {
                self.node(sub, &format!("{at}/additionalProperties"))?;
                (true, true)
            }
            Some(_) => return Err(invalid("'additionalProperties' must be a boolean or a schema", at)),
        };
        let mut used = vec!["type", "properties", "required", "additionalProperties"];
        // With no extra properties allowed, there is nothing left to evaluate.
        if !grammar_extra && o.get("unevaluatedProperties") == Some(&Value::Bool(false)) {
            used.push("unevaluatedProperties");
        }
        rest(o, &used, OBJ, at)?;
        Ok(Summary { types: OBJ, shape: Shape::Object { props, closed } })
    }

    fn all_of(&mut self, o: &Map<String, Value>, at: &str) -> Result<Summary, Fail> {
        let at_all = format!("{at}/allOf");
        let items = self.alternatives(&o["allOf"], &at_all)?;
        let n = items.len();
        let mut used = vec!["allOf"];
        let sum = if items.iter().any(|s| matches!(s.shape, Shape::Enum(_))) {
            let mut common: Option<Vec<Value>> = None;
            for s in &items {
                let Shape::Enum(values) = &s.shape else {
                    return Err(unsupported("an 'allOf' that mixes enums with other schemas", &at_all));
                };
                common = Some(match common {
                    None => values.clone(),
                    Some(c) => c.into_iter().filter(|v| values.contains(v)).collect(),
                });
            }
            let common = common.unwrap_or_default();
            if common.is_empty() {
                return Err(unsupported("an 'allOf' of enums with no value in common", &at_all));
            }
            Summary { types: common.iter().fold(0, |t, v| t | type_of(v)), shape: Shape::Enum(common) }
        } else {
            let mut merged: Vec<String> = Vec::new();
            for (i, s) in items.iter().enumerate() {
                match &s.shape {
                    Shape::Object { props, .. } => {
                        if let Some(dup) = props.iter().find(|p| merged.contains(p)) {
                            return Err(unsupported(
                                format!("the property '{dup}' in more than one 'allOf' item"),
                                &format!("{at_all}/{i}"),
                            ));
                        }
                        merged.extend(props.iter().cloned());
                    }
                    Shape::AnyOf => {
                        return Err(unsupported("'anyOf' (or a type array) inside 'allOf'", &format!("{at_all}/{i}")))
                    }
                    Shape::Enum(_) | Shape::Other => {
                        return Err(unsupported(
                            "an 'allOf' item that is neither an object with 'properties' nor an 'enum'",
                            &format!("{at_all}/{i}"),
                        ))
                    }
                }
            }
            // Merged, every property is required and nothing else allowed: an item that
            // forbids the others' properties would be broken by them.
            if n > 1 {
                for (i, s) in items.iter().enumerate() {
                    if let Shape::Object { props, closed: true } = &s.shape {
                        if let Some(p) = merged.iter().find(|p| !props.contains(p)) {
                            return Err(unsupported(
                                format!("'allOf' items that forbid each other's properties ('{p}')"),
                                &format!("{at_all}/{i}"),
                            ));
                        }
                    }
                }
            }
            let required_ok = match o.get("required") {
                Some(Value::Array(r)) => r.iter().all(|v| v.as_str().is_some_and(|s| merged.iter().any(|m| m == s))),
                _ => false,
            };
            if required_ok {
                used.push("required");
            }
            if o.get("additionalProperties") == Some(&Value::Bool(true)) {
                used.push("additionalProperties");
            }
            let closed = items.iter().any(|s| matches!(s.shape, Shape::Object { closed: true, .. }));
            Summary { types: OBJ, shape: Shape::Object { props: merged, closed } }
        };
        rest(o, &used, sum.types, at)?;
        Ok(sum)
    }

    fn array(&mut self, o: &Map<String, Value>, at: &str) -> Result<Summary, Fail> {
        if o.contains_key("items") && o.contains_key("prefixItems") {
            return Err(unsupported("'prefixItems' together with 'items' (only 'items' is used)", at));
        }
        let min = count(o, "minItems", at)?;
        let max = count(o, "maxItems", at)?;
        let key = if o.contains_key("items") { "items" } else { "prefixItems" };
        match o.get(key) {
            None => {}
            Some(Value::Array(tuple)) => {
                for (i, s) in tuple.iter().enumerate() {
                    self.node(s, &format!("{at}/{key}/{i}"))?;
                }
                // A tuple is exactly its items: the bounds must allow that many.
                let n = tuple.len() as u64;
                if min.is_some_and(|m| m > n) || max.is_some_and(|m| m < n) {
                    return Err(unsupported(
                        format!("'minItems'/'maxItems' that a tuple of {n} items cannot meet"),
                        at,
                    ));
                }
            }
            Some(_) if key == "prefixItems" => return Err(invalid("'prefixItems' must be an array of schemas", at)),
            Some(s) => {
                self.node(s, &format!("{at}/items"))?;
            }
        }
        if let (Some(a), Some(b)) = (min, max) {
            if a > b {
                return Err(invalid("'minItems' is greater than 'maxItems'", at));
            }
        }
        // `additionalItems` only speaks of items past a tuple, and a tuple has none.
        rest(o, &["type", "items", "prefixItems", "minItems", "maxItems", "additionalItems"], ARR, at)?;
        Ok(Summary { types: ARR, shape: Shape::Other })
    }

    fn string(&mut self, o: &Map<String, Value>, at: &str) -> Result<Summary, Fail> {
        let min = count(o, "minLength", at)?;
        let max = count(o, "maxLength", at)?;
        let lengths = min.is_some_and(|n| n > 0) || max.is_some();
        let first = if o.contains_key("pattern") { "pattern" } else { "format" };
        if o.contains_key("pattern") && o.contains_key("format") {
            return Err(unsupported("'format' together with 'pattern' (only the pattern is enforced)", at));
        }
        if lengths && (o.contains_key("pattern") || known_format(o, at)?) {
            return Err(unsupported(
                format!("'minLength'/'maxLength' together with '{first}' (only the {first} is enforced)"),
                at,
            ));
        }
        let mut used = vec!["type", "minLength", "maxLength"];
        if let Some(p) = o.get("pattern") {
            let Value::String(p) = p else {
                return Err(invalid("'pattern' must be a string", at));
            };
            check_pattern(p).map_err(|e| match e {
                Pattern::Unsupported(why) => unsupported(format!("the pattern {p:?} ({why})"), at),
                Pattern::Invalid(why) => invalid(format!("the pattern {p:?} is not a valid regex ({why})"), at),
            })?;
            used.push("pattern");
        } else if known_format(o, at)? {
            used.push("format");
        } else if let (Some(a), Some(b)) = (min, max) {
            if a > b {
                return Err(invalid("'minLength' is greater than 'maxLength'", at));
            }
        }
        rest(o, &used, STR, at)?;
        Ok(Summary { types: STR, shape: Shape::Other })
    }

    fn integer(&mut self, o: &Map<String, Value>, at: &str) -> Result<Summary, Fail> {
        let bound = |k: &str, up: bool| -> Result<Option<f64>, Fail> {
            match o.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    let r = if up { x.ceil() } else { x.floor() };
                    // Within i64, where the converter reads it.
                    if !(-9.2e18..=9.2e18).contains(&r) {
                        return Err(unsupported(format!("'{k}' beyond the 64-bit integer range"), at));
                    }
                    Ok(Some(r))
                }
                Some(Value::Bool(_)) => Err(unsupported(format!("a boolean '{k}' (JSON Schema draft 4)"), at)),
                Some(_) => Err(invalid(format!("'{k}' must be a number"), at)),
            }
        };
        let (min, xmin) = (bound("minimum", true)?, bound("exclusiveMinimum", false)?.map(|x| x + 1.0));
        let (max, xmax) = (bound("maximum", false)?, bound("exclusiveMaximum", true)?.map(|x| x - 1.0));
        let mut used = vec!["type", "minimum", "maximum"];
        // The converter reads `exclusive*` only without the plain bound: beside it, it must
        // already be implied.
        if min.is_none() || xmin.zip(min).is_some_and(|(x, m)| x <= m) {
            used.push("exclusiveMinimum");
        }
        if max.is_none() || xmax.zip(max).is_some_and(|(x, m)| x >= m) {
            used.push("exclusiveMaximum");
        }
        let lo = min.or(xmin);
        let hi = max.or(xmax);
        if let (Some(a), Some(b)) = (lo, hi) {
            if a > b {
                return Err(invalid("no integer lies between the minimum and the maximum", at));
            }
        }
        rest(o, &used, INT, at)?;
        Ok(Summary { types: INT, shape: Shape::Other })
    }
}

/// The keywords of `o` not in `used` must not constrain the values `produced` may hold.
fn rest(o: &Map<String, Value>, used: &[&str], produced: Types, at: &str) -> Result<(), Fail> {
    for (k, v) in o {
        if used.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        let Some(applies) = applies_to(k) else { continue };
        if applies & produced == 0 || trivial(k, v) {
            continue;
        }
        if k == "type" {
            if declared_types(v).is_some_and(|d| produced & !d == 0) {
                continue;
            }
            return Err(unsupported(
                format!("'type' {v} beside a keyword that allows other types (the grammar follows that keyword)"),
                at,
            ));
        }
        return Err(unsupported(describe(k, v, produced), at));
    }
    Ok(())
}

/// The types a `type` value names (a string or an array of them); `None` if one is unknown.
fn declared_types(v: &Value) -> Option<Types> {
    match v {
        Value::String(t) => types_named(t),
        Value::Array(ts) => ts.iter().try_fold(0, |acc, t| Some(acc | types_named(t.as_str()?)?)),
        _ => None,
    }
}

/// A non-negative integer keyword, as the converter requires.
fn count(o: &Map<String, Value>, k: &str, at: &str) -> Result<Option<u64>, Fail> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => match v.as_u64().filter(|n| *n <= i32::MAX as u64) {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(format!("'{k}' must be a non-negative integer"), at)),
        },
    }
}

/// Whether `format` is one the converter writes a grammar for.
fn known_format(o: &Map<String, Value>, at: &str) -> Result<bool, Fail> {
    match o.get("format") {
        None => Ok(false),
        Some(Value::String(f)) => Ok(matches!(f.as_str(), "date" | "time" | "date-time" | "uuid")
            || (f.len() == 5 && f.starts_with("uuid") && matches!(f.as_bytes()[4], b'1'..=b'5'))),
        Some(_) => Err(invalid("'format' must be a string", at)),
    }
}

/// The tokens of a `#/…` pointer, as the converter splits them (no `~1` unescaping).
fn pointer_tokens(r: &str) -> Option<Vec<String>> {
    let p = r.strip_prefix('#')?;
    Some(p.split('/').skip(1).map(str::to_owned).collect())
}

fn lookup<'v>(mut v: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    for t in tokens {
        v = match v {
            Value::Object(o) => o.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'v>(mut v: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    for t in tokens {
        v = match v {
            Value::Object(o) => o.get_mut(t)?,
            Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// `schema` as it must read once placed at the JSON pointer `at` of a larger schema (e.g.
/// `/properties/arguments`): every local `$ref` the converter would follow is rewritten to
/// `#{at}/…`, so it still finds its target. Walks only where the converter looks for
/// schemas (and the targets of references), never into `const`, `enum` or `default` values.
pub(crate) fn embed(schema: &Value, at: &str) -> Value {
    let mut refs: Vec<Vec<String>> = Vec::new();
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(Value::Object(o)) = lookup(schema, &path) else { continue };
        let child = |k: &str| -> Vec<String> {
            let mut p = path.clone();
            p.push(k.to_owned());
            p
        };
        if let Some(Value::String(r)) = o.get("$ref") {
            if r.starts_with("#/") {
                refs.push(path.clone());
                if let Some(t) = pointer_tokens(r) {
                    todo.push(t);
                }
            }
            continue;
        }
        for k in ["anyOf", "oneOf", "allOf", "items", "prefixItems"] {
            match o.get(k) {
                Some(Value::Array(a)) => {
                    for i in 0..a.len() {
                        let mut p = child(k);
                        p.push(i.to_string());
                        todo.push(p);
                    }
                }
                Some(Value::Object(_)) => todo.push(child(k)),
                _ => {}
            }
        }
        if let Some(Value::Object(props)) = o.get("properties") {
            for name in props.keys() {
                let mut p = child("properties");
                p.push(name.clone());
                todo.push(p);
            }
        }
        if let Some(Value::Object(_)) = o.get("additionalProperties") {
            todo.push(child("additionalProperties"));
        }
    }
    let mut out = schema.clone();
    for path in refs {
        if let Some(Value::Object(o)) = lookup_mut(&mut out, &path) {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                *r = format!("#{at}{}", &r[1..]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
