//! A small checker for the subset of JSON Schema that rule props use: `type` (one or a list), `properties`,
//! `required`, `additionalProperties: false`, `enum` and `minimum`. A string holding a template (`{{…}}`) is
//! accepted for any type, since its value is only known when the rule runs.

use serde::Serialize;
use serde_json::Value;

/// One problem with a value, located by a JSON-pointer-like path relative to the props.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where, e.g. `/status` (empty for the props themselves).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// Builds a problem.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Whether a string holds a template to render at run time.
pub fn is_template(s: &str) -> bool {
    s.contains("{{")
}

/// Every problem of `value` against `schema`.
pub fn check(schema: &Value, value: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    check_at(schema, value, "", &mut out);
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    let have = type_name(v);
    want == have || (want == "number" && have == "integer")
}

fn check_at(schema: &Value, value: &Value, path: &str, out: &mut Vec<Problem>) {
    let templated = matches!(value, Value::String(s) if is_template(s));
    if let Some(t) = schema.get("type") {
        let wants: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !wants.is_empty() && !templated && !wants.iter().any(|w| type_matches(w, value)) {
            out.push(Problem::new(
                path,
                format!("must be of type {}, got {}", wants.join(" or "), type_name(value)),
            ));
            return;
        }
    }
    if templated {
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            out.push(Problem::new(
                path,
                format!("must be one of {}", Value::Array(allowed.clone())),
            ));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if n < min {
            out.push(Problem::new(path, format!("must be at least {min}")));
        }
    }
    let Value::Object(obj) = value else { return };
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(name) {
                out.push(Problem::new(format!("{path}/{name}"), "is required"));
            }
        }
    }
    for (name, v) in obj {
        match props.and_then(|p| p.get(name)) {
            Some(sub) => check_at(sub, v, &format!("{path}/{name}"), out),
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                out.push(Problem::new(format!("{path}/{name}"), "is not a known prop"));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "qty"],
            "properties": {
                "name": {"type": "string"},
                "qty": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "entity": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
            }
        })
    }

    /// A valid value has no problems; templates stand in for any type.
    #[test]
    fn valid_and_templated_values_pass() {
        assert!(check(&schema(), &json!({"name": "x", "qty": 2})).is_empty());
        assert!(check(&schema(), &json!({"name": "x", "qty": "{{event.attributes.qty}}"})).is_empty());
    }

    /// Every problem is listed at once, each with its path.
    #[test]
    fn every_problem_is_listed_with_its_path() {
        let p = check(
            &schema(),
            &json!({"qty": 0, "mode": "c", "extra": 1, "entity": {"ref": 1}}),
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["/name", "/entity/type", "/extra", "/mode", "/qty"], "{p:?}");
        let p = check(&schema(), &json!({"name": 5, "qty": "three"}));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].message.contains("must be of type string"), "{p:?}");
        assert_eq!(check(&schema(), &json!([]))[0].path, "");
    }
}
