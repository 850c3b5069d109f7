use serde_json::json;

use super::*;

fn err(schema: Value) -> String {
    let e = check_schema(&schema, "response_format.json_schema.schema").expect_err(&schema.to_string());
    assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
    assert_eq!(e.type_, "invalid_request_error");
    assert_eq!(e.param.as_deref(), Some("response_format.json_schema.schema"));
    e.message
}

fn ok(schema: Value) {
    if let Err(e) = check_schema(&schema, "p") {
        panic!("{schema} refused: {}", e.message);
    }
}

/// What pydantic v2 writes for a 20-field model: `$defs`/`$ref`, `anyOf` with null for
/// `Optional`, enums, arrays, tuples, maps, formats, bounds on integers, a recursive model.
fn pydantic_user() -> Value {
    json!({
        "$defs": {
            "Address": {
                "properties": {
                    "street": {"title": "Street", "type": "string"},
                    "city": {"title": "City", "type": "string"},
                    "zip_code": {"pattern": "^[0-9]{5}(-[0-9]{4})?$", "title": "Zip Code", "type": "string"}
                },
                "required": ["street", "city", "zip_code"],
                "title": "Address",
                "type": "object"
            },
            "Status": {"enum": ["active", "inactive", "banned"], "title": "Status", "type": "string"},
            "Node": {
                "properties": {
                    "label": {"title": "Label", "type": "string"},
                    "children": {"default": [], "items": {"$ref": "#/$defs/Node"}, "title": "Children", "type": "array"}
                },
                "required": ["label"],
                "title": "Node",
                "type": "object"
            }
        },
        "properties": {
            "id": {"minimum": 1, "title": "Id", "type": "integer"},
            "name": {"maxLength": 100, "minLength": 1, "title": "Name", "type": "string"},
            "email": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Email"},
            "age": {"anyOf": [{"maximum": 150, "minimum": 0, "type": "integer"}, {"type": "null"}], "default": null, "title": "Age"},
            "tags": {"default": [], "items": {"type": "string"}, "title": "Tags", "type": "array"},
            "address": {"$ref": "#/$defs/Address"},
            "previous": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "default": null},
            "status": {"$ref": "#/$defs/Status", "default": "active"},
            "score": {"title": "Score", "type": "number"},
            "active": {"default": true, "title": "Active", "type": "boolean"},
            "created": {"format": "date-time", "title": "Created", "type": "string"},
            "birthday": {"anyOf": [{"format": "date", "type": "string"}, {"type": "null"}], "default": null, "title": "Birthday"},
            "uid": {"format": "uuid", "title": "Uid", "type": "string"},
            "weights": {"additionalProperties": {"type": "number"}, "title": "Weights", "type": "object"},
            "matrix": {"items": {"items": {"type": "integer"}, "type": "array"}, "title": "Matrix", "type": "array"},
            "pair": {"maxItems": 2, "minItems": 2, "prefixItems": [{"type": "integer"}, {"type": "string"}], "title": "Pair", "type": "array"},
            "kind": {"enum": ["a", "b"], "title": "Kind", "type": "string"},
            "homes": {"items": {"$ref": "#/$defs/Address"}, "maxItems": 3, "title": "Homes", "type": "array"},
            "ratio": {"anyOf": [{"type": "integer"}, {"type": "number"}], "title": "Ratio"},
            "tree": {"$ref": "#/$defs/Node", "description": "A tree of labels."}
        },
        "required": ["id", "name", "address", "score", "created", "uid", "weights", "matrix", "pair", "kind", "homes", "ratio", "tree"],
        "title": "User",
        "type": "object",
        "$schema": "https://json-schema.org/draft/2020-12/schema"
    })
}

#[test]
fn a_typical_pydantic_schema_is_accepted() {
    let s = pydantic_user();
    assert_eq!(s["properties"].as_object().unwrap().len(), 20);
    ok(s);
}

#[test]
fn common_shapes_are_accepted() {
    ok(json!({}));
    ok(json!({"title": "anything", "description": "annotations only"}));
    ok(json!({"type": "object"}));
    ok(json!({"type": ["string", "null"], "maxLength": 5}));
    ok(json!({"type": ["string", "null"], "enum": ["a", null]}));
    ok(json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10.5}));
    ok(json!({"type": "integer", "format": "int32", "minimum": -5}));
    ok(json!({"type": "string", "minimum": 3}));
    ok(json!({"type": "object", "properties": {"a": {"const": {"$ref": "not a ref"}}}, "additionalProperties": false}));
    ok(
        json!({"oneOf": [{"properties": {"t": {"const": "x"}}, "required": ["t"]}, {"properties": {"t": {"const": "y"}}}], "type": "object", "discriminator": {"propertyName": "t"}}),
    );
    ok(
        json!({"allOf": [{"$ref": "#/$defs/A"}], "description": "pydantic v1 style", "$defs": {"A": {"properties": {"x": {"type": "integer"}}}}}),
    );
    ok(
        json!({"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "integer"}}}], "required": ["a"]}),
    );
    ok(json!({"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["b", "c", "d"]}], "type": "string"}));
    ok(json!({"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "additionalItems": false}));
    ok(json!({"type": "array", "uniqueItems": false, "minItems": 0}));
    ok(json!({"$ref": "#/definitions/x", "definitions": {"x": {"type": "boolean"}}}));
    ok(json!({"type": "string", "pattern": "^(?:[a-z]+|[A-Z]{2,3})\\.[0-9]{1,}\\-x?$"}));
    ok(json!({"type": "string", "pattern": "^[^\"\\\\]*\\u00e9\\t$"}));
    ok(json!({"type": "string", "format": "uuid4"}));
}

#[test]
fn features_the_grammar_cannot_enforce_are_named() {
    let cases = [
        (json!({"not": {"type": "string"}}), "'not'"),
        (json!({"properties": {"a": {"if": {"type": "string"}, "then": {"minLength": 1}}}}), "'if'"),
        (json!({"$ref": "https://example.com/schema.json#/x"}), "remote $ref 'https://example.com/schema.json#/x'"),
        (json!({"$ref": "other.json"}), "remote $ref 'other.json'"),
        (json!({"$ref": "#"}), "$ref '#'"),
        (json!({"type": "object", "patternProperties": {"^a": {}}}), "'patternProperties'"),
        (json!({"type": "object", "properties": {}, "minProperties": 1}), "'minProperties'"),
        (json!({"type": "object", "properties": {"a": {}}, "dependentSchemas": {"a": {}}}), "'dependentSchemas'"),
        (json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true}), "'uniqueItems'"),
        (json!({"type": "array", "contains": {"type": "integer"}}), "'contains'"),
        (json!({"type": "integer", "multipleOf": 5}), "'multipleOf'"),
        (json!({"type": "number", "minimum": 0}), "'minimum' on a number that is not an integer"),
        (json!({"type": "string", "format": "email"}), "format \"email\""),
        (json!({"format": "uri"}), "format \"uri\""),
        (json!({"minimum": 0}), "'minimum'"),
        (json!({"type": "string", "pattern": "^\\d+$"}), "the escape \\d"),
        (json!({"type": "string", "pattern": "[a-z]+"}), "anchored"),
        (json!({"type": "string", "pattern": "^(?=a)a$"}), "lookarounds"),
        (json!({"type": "string", "pattern": "^a$", "format": "date"}), "'format' together with 'pattern'"),
        (json!({"type": "string", "format": "date", "maxLength": 10}), "together with 'format'"),
        (json!({"type": "object", "properties": {"a": true}}), "boolean schema 'true'"),
        (json!({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}), "'required' naming 'b'"),
        (json!({"required": ["a"]}), "'required'"),
        (json!({"$ref": "#/$defs/A", "maxLength": 3, "$defs": {"A": {"type": "string"}}}), "'maxLength'"),
        (json!({"anyOf": [{"type": "string"}, {"type": "integer"}], "type": "string"}), "'type' \"string\""),
        (json!({"anyOf": [{"type": "string"}], "oneOf": [{"type": "string"}]}), "'anyOf' together with 'oneOf'"),
        (
            json!({"allOf": [{"properties": {"a": {}}}, {"anyOf": [{"properties": {"b": {}}}]}]}),
            "'anyOf' (or a type array) inside 'allOf'",
        ),
        (json!({"allOf": [{"properties": {"a": {}}}, {"type": "string"}]}), "neither an object"),
        (
            json!({"allOf": [{"properties": {"a": {}}, "additionalProperties": false}, {"properties": {"b": {}}}]}),
            "forbid each other's properties ('b')",
        ),
        (json!({"allOf": [{"enum": ["a"]}, {"enum": ["b"]}]}), "no value in common"),
        (json!({"type": "array", "prefixItems": [{}], "items": false}), "'prefixItems' together with 'items'"),
        (json!({"type": "array", "prefixItems": [{}, {}], "minItems": 3}), "tuple of 2 items"),
        (json!({"type": "integer", "minimum": 5, "exclusiveMinimum": true}), "boolean 'exclusiveMinimum'"),
        (json!({"type": "integer", "minimum": 1, "exclusiveMinimum": 3}), "'exclusiveMinimum'"),
        (json!({"type": ["string", "integer"], "enum": ["a", null]}), "values of other types"),
    ];
    for (schema, named) in cases {
        let m = err(schema.clone());
        assert!(m.contains(named), "{schema}: {m:?} should name {named:?}");
        assert!(m.contains("response_format.json_schema.schema"), "{m}");
    }
}

#[test]
fn malformed_schemas_are_400s_too() {
    for (schema, named) in [
        (json!({"type": "array", "items": {}, "minItems": -1}), "'minItems' must be a non-negative integer"),
        (json!({"type": "array", "items": {}, "minItems": 1.5}), "'minItems'"),
        (json!({"type": "array", "items": {}, "minItems": 3, "maxItems": 2}), "greater than"),
        (json!({"type": "strin"}), "unrecognized type 'strin'"),
        (json!({"type": []}), "empty array"),
        (json!({"enum": []}), "'enum' must be a non-empty array"),
        (json!({"anyOf": []}), "non-empty array"),
        (json!({"$ref": "#/$defs/Missing"}), "does not resolve"),
        (json!({"properties": []}), "'properties' must be an object"),
        (json!({"type": "integer", "minimum": 5, "maximum": 4}), "no integer"),
        (json!({"type": "string", "pattern": "^(a$"}), "unbalanced"),
        (json!({"type": "string", "pattern": "^*a$"}), "nothing to repeat"),
        (json!("a string"), "a schema must be an object"),
    ] {
        let m = err(schema.clone());
        assert!(m.contains(named), "{schema}: {m:?} should name {named:?}");
    }
}

#[test]
fn reference_cycles_and_depth_are_handled() {
    ok(
        json!({"$defs": {"T": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/T"}, {"type": "null"}]}}}}, "$ref": "#/$defs/T"}),
    );
    let pure = json!({"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"});
    assert!(err(pure).contains("$ref cycle #/$defs/A -> #/$defs/B"));
    let mut deep = json!({"type": "string"});
    for _ in 0..100 {
        deep = json!({"type": "array", "items": deep});
    }
    assert!(err(deep).contains("nested deeper"));
}

#[test]
fn embedding_rewrites_only_the_references_the_converter_follows() {
    let params = json!({
        "type": "object",
        "properties": {
            "home": {"$ref": "#/$defs/Address"},
            "homes": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}},
            "literal": {"const": {"$ref": "#/$defs/Address"}},
            "via": {"$ref": "#/x-extra/Thing"}
        },
        "$defs": {"Address": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Address"}}}},
        "x-extra": {"Thing": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Address"}}}}
    });
    let at = "/anyOf/1/properties/arguments";
    let e = embed(&params, at);
    let want = "#/anyOf/1/properties/arguments/$defs/Address";
    assert_eq!(e["properties"]["home"]["$ref"], want);
    assert_eq!(e["properties"]["homes"]["items"]["anyOf"][0]["$ref"], want);
    assert_eq!(e["$defs"]["Address"]["properties"]["next"]["$ref"], want);
    assert_eq!(e["properties"]["via"]["$ref"], "#/anyOf/1/properties/arguments/x-extra/Thing");
    assert_eq!(e["x-extra"]["Thing"]["properties"]["a"]["$ref"], want, "reached through a $ref");
    assert_eq!(e["properties"]["literal"]["const"]["$ref"], "#/$defs/Address", "data is left alone");
    // Placed there, it checks (every reference resolves).
    let wrapper = json!({"anyOf": [{"type": "null"}, {"type": "object", "properties": {"arguments": e}, "required": ["arguments"]}]});
    ok(wrapper);
}
