//! Deserialisers of constrained body fields, for `#[serde(deserialize_with = "…")]`, each failing with the message
//! the API gives for its field. Each reads any JSON value first, so a value of the wrong type gets the field's
//! message too, not serde's. A null is an absent optional field, and a missing required one. Optional fields also
//! take `#[serde(default)]`, so that an absent one is `None`.

use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Whether a JSON value holds a NUL character anywhere, which PostgreSQL cannot store in `text` or `jsonb`.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// A required field: its value, or "is required" for a null.
fn required<T, E: serde::de::Error>(v: Option<T>) -> Result<T, E> {
    v.ok_or_else(|| E::custom("is required"))
}

fn key_of(v: Value) -> Result<Option<String>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.contains('\0') => Err("must not contain NUL characters"),
        Value::String(s) if !s.is_empty() && s.chars().count() <= 255 => Ok(Some(s)),
        Value::String(_) => Err("must be 1 to 255 characters"),
        _ => Err("must be a string"),
    }
}

/// A name or key of 1 to 255 characters without NUL (a job's kind).
pub fn key<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    required(key_of(Value::deserialize(d)?).map_err(D::Error::custom)?)
}

/// An optional [`key`] (a job's queue, idempotency or concurrency key).
pub fn opt_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    key_of(Value::deserialize(d)?).map_err(D::Error::custom)
}

fn nonempty_of(v: Value) -> Result<Option<String>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() && !s.contains('\0') => Ok(Some(s)),
        _ => Err("must be a non-empty string"),
    }
}

/// A non-empty string without NUL (orchestration's names and refs; the domain checks their lengths).
pub fn nonempty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    required(nonempty_of(Value::deserialize(d)?).map_err(D::Error::custom)?)
}

/// An optional [`nonempty`] string.
pub fn opt_nonempty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    nonempty_of(Value::deserialize(d)?).map_err(D::Error::custom)
}

/// An optional whole number from `MIN` to `MAX`; an integral float (`5.0`) counts, as JSON Schema's `integer`.
pub fn opt_int<'de, D, T, const MIN: i64, const MAX: i64>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v @ Value::Number(_) => crate::queue::json_integer(&v)
            .filter(|i| (MIN..=MAX).contains(i))
            .and_then(|i| T::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("must be an integer from {MIN} to {MAX}"))),
        _ => Err(D::Error::custom("must be an integer")),
    }
}

/// An optional boolean.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        _ => Err(D::Error::custom("must be a boolean")),
    }
}

/// An optional object of a job's arguments.
pub fn opt_args<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v @ Value::Object(_) if has_nul(&v) => Err(D::Error::custom("must not contain NUL characters")),
        Value::Object(m) => Ok(Some(m)),
        _ => Err(D::Error::custom("must be an object")),
    }
}

/// An optional object of attributes (of an entity or an event).
pub fn opt_attributes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(m) if !m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) => Ok(Some(m)),
        _ => Err(D::Error::custom("must be an object without NUL characters")),
    }
}

fn time_of(v: Value, not_a_string: &'static str) -> Result<Option<DateTime<Utc>>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| "must be an RFC 3339 time"),
        _ => Err(not_a_string),
    }
}

/// An optional RFC 3339 time (an event's `scheduled_at`).
pub fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    time_of(Value::deserialize(d)?, "must be an RFC 3339 time").map_err(D::Error::custom)
}

/// An optional RFC 3339 time, saying so when it is not a string (a job's `run_at`).
pub fn opt_time_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    time_of(Value::deserialize(d)?, "must be an RFC 3339 time string").map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run<T>(f: fn(Value) -> Result<T, serde_json::Error>, v: Value) -> Result<T, String> {
        f(v).map_err(|e| e.to_string())
    }

    /// Each field says what it accepts, whatever the wrong value's type; a null is absent, or missing when required.
    #[test]
    fn fields_name_what_they_accept() {
        assert_eq!(run(key, json!("noop")).unwrap(), "noop");
        assert_eq!(run(key, json!(null)).unwrap_err(), "is required");
        assert_eq!(run(key, json!(5)).unwrap_err(), "must be a string");
        assert_eq!(run(key, json!("")).unwrap_err(), "must be 1 to 255 characters");
        assert_eq!(
            run(opt_key, json!("a\u{0}")).unwrap_err(),
            "must not contain NUL characters"
        );
        assert_eq!(run(opt_key, json!(null)).unwrap(), None);
        assert_eq!(run(opt_nonempty, json!([])).unwrap_err(), "must be a non-empty string");
        assert_eq!(run(opt_int::<_, i16, 0, 9>, json!(5.0)).unwrap(), Some(5));
        assert_eq!(
            run(opt_int::<_, i16, 0, 9>, json!(12)).unwrap_err(),
            "must be an integer from 0 to 9"
        );
        assert_eq!(
            run(opt_int::<_, i16, 0, 9>, json!("1")).unwrap_err(),
            "must be an integer"
        );
        assert_eq!(run(opt_bool, json!(1)).unwrap_err(), "must be a boolean");
        assert_eq!(run(opt_args, json!([])).unwrap_err(), "must be an object");
        assert_eq!(
            run(opt_args, json!({"x": ["\u{0}"]})).unwrap_err(),
            "must not contain NUL characters"
        );
        assert_eq!(
            run(opt_attributes, json!(3)).unwrap_err(),
            "must be an object without NUL characters"
        );
        assert_eq!(run(opt_time, json!(3)).unwrap_err(), "must be an RFC 3339 time");
        assert_eq!(
            run(opt_time_string, json!(3)).unwrap_err(),
            "must be an RFC 3339 time string"
        );
        assert!(run(opt_time_string, json!("2026-01-01T00:00:00Z")).unwrap().is_some());
    }
}
