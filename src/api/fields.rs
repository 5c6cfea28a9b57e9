//! Readers of JSON body fields that report every bad field at once (422 with one entry per field), shared by
//! the handlers that validate bodies by hand.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::queue::FieldError;

/// The body as an object, or a 422 for the whole body.
pub fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("", "must be a JSON object"))
}

/// Names every field that is not in `known`.
pub fn reject_unknown(obj: &Map<String, Value>, known: &[&str], errs: &mut Vec<FieldError>) {
    for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errs.push(FieldError::new(format!("/{k}"), "unknown field"));
    }
}

/// A non-empty string field without NUL characters (PostgreSQL cannot store them); absent or null is `None`, or
/// an error when `required`.
pub fn string(obj: &Map<String, Value>, name: &str, required: bool, errs: &mut Vec<FieldError>) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            if required {
                errs.push(FieldError::new(format!("/{name}"), "is required"));
            }
            None
        }
        Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Some(s.clone()),
        Some(_) => {
            errs.push(FieldError::new(format!("/{name}"), "must be a non-empty string"));
            None
        }
    }
}

/// Rewrites every integral float (`25.0`) as an integer, the way JSON Schema reads `integer`, before a body is
/// deserialised into integer fields (serde refuses `25.0` for an `i16`).
pub fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            if let Some(i) = crate::queue::json_integer(v) {
                *v = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// An optional boolean field.
pub fn boolean(obj: &Map<String, Value>, name: &str, errs: &mut Vec<FieldError>) -> Option<bool> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errs.push(FieldError::new(format!("/{name}"), "must be a boolean"));
            None
        }
    }
}
