//! The one reader of request bodies. Every route that takes a JSON body declares a serde type for it, which is
//! also the body's OpenAPI schema, and receives it through [`Body`] (or [`SentBody`] when it also needs the JSON
//! exactly as sent, for an idempotency fingerprint).
//!
//! A body of another content type is a 415, one over the route's limit a 413, one that is not JSON a 400. A JSON
//! body that is not what its type describes is a 422 naming the fields that are wrong, every one that can be found
//! in one request (see [`read`]), in the API's words rather than serde's: the constrained fields say what they
//! accept through the deserialisers of [`field`], and serde's own messages (a missing or unknown field, a wrong
//! type) are translated by [`message`].

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;
use serde_path_to_error::Segment;
use utoipa::openapi::{RefOr, Schema};
use utoipa::PartialSchema;

use super::error::ApiError;
use crate::queue::FieldError;

pub mod field;
mod strict;

/// The most field errors one body reports. Each one costs another pass over the body, so a hostile body of
/// thousands of bad fields is answered after this many instead of thousands of passes.
const MAX_ERRORS: usize = 100;

/// A request body type: serde reads it, utoipa documents it, and this trait adds what is particular to a route.
pub trait RequestBody: DeserializeOwned + PartialSchema {
    /// What a body that is not a JSON object is told (a 422 at the body's root).
    const NOT_AN_OBJECT: &'static str = "must be a JSON object";
    /// Whether integral floats (`25.0`) are read as integers, the way JSON Schema reads `integer`: for types whose
    /// integer fields are plain serde integers (those read through [`field`] accept them already).
    const INTEGRAL_FLOATS: bool = false;

    /// Refuses a body before its fields are read, for what is no field's fault: a batch over its size is a 413
    /// however its items look.
    fn admit(_json: &Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Reads the body found at `at` (a JSON pointer prefixing every error's path).
    fn read(json: &Value, at: &str) -> Result<Self, Vec<FieldError>> {
        read(json, at)
    }

    /// Checks what no single field can (combinations, map keys), once every field was read; paths start with `at`.
    fn check(&self, _at: &str, _errs: &mut Vec<FieldError>) {}
}

/// A JSON request body read into `T`: 415 without a JSON content type, 413 past the route's body limit, 400 when it
/// does not parse, 422 when it is not a `T` (see [`read`]).
#[derive(Debug)]
pub struct Body<T>(pub T);

/// A body read as [`Body`] reads it, with the JSON as sent: what an idempotency fingerprint compares.
#[derive(Debug)]
pub struct SentBody<T> {
    /// The body.
    pub body: T,
    /// The JSON it was read from.
    pub json: Value,
}

/// Whether a content type is JSON (`application/json`, or any `application/…+json`), parameters aside.
fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The request's body as JSON, or the 415, 413 or 400 it deserves.
async fn json_of<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body too large".to_owned())
        } else {
            ApiError::BadRequest(format!("could not read the body: {e}"))
        }
    })?;
    // serde_json refuses nesting deeper than 128 levels, so a hostile body cannot exhaust the stack.
    serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

impl<S: Send + Sync, T: RequestBody> FromRequest<S> for SentBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = json_of(req, state).await?;
        T::admit(&json)?;
        let body = T::read(&json, "").map_err(ApiError::Invalid)?;
        Ok(SentBody { body, json })
    }
}

impl<S: Send + Sync, T: RequestBody> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        SentBody::<T>::from_request(req, state).await.map(|s| Body(s.body))
    }
}

/// Reads `json` (found at `at`) into `T`, naming every invalid field.
///
/// serde stops at the first error, so the body is read again after each one with the offending field taken out
/// (or, for a missing field, the object missing it), until it reads or nothing is left to take out. So every
/// invalid field is named, except those beside a missing required field in a nested object (that object is taken
/// out whole) and the items of an array after its first invalid one (the array is taken out whole, so that no item
/// is named by a wrong index). Required fields missing at the top are all named, from the type's schema. The errors
/// are listed in the order the type declares its fields, unknown fields first.
pub fn read<T: RequestBody>(json: &Value, at: &str) -> Result<T, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut pruned: Option<Value> = None;
    if T::INTEGRAL_FLOATS {
        let mut v = json.clone();
        integral_floats_as_integers(&mut v);
        pruned = Some(v);
    }
    if let Some(obj) = json.as_object() {
        for name in required::<T>() {
            if obj.get(&name).is_none_or(Value::is_null) {
                errs.push(FieldError::new(format!("{at}/{name}"), "is required"));
                // A null is taken out so that reading goes on past it to the other fields.
                if obj.contains_key(&name) {
                    if let Some(o) = pruned.get_or_insert_with(|| json.clone()).as_object_mut() {
                        o.remove(&name);
                    }
                }
            }
        }
    }
    loop {
        let current = pruned.as_ref().unwrap_or(json);
        let e = match serde_path_to_error::deserialize::<_, T>(strict::Strict(current)) {
            Ok(t) if errs.is_empty() => {
                t.check(at, &mut errs);
                return if errs.is_empty() {
                    Ok(t)
                } else {
                    Err(in_field_order::<T>(errs, at))
                };
            }
            Ok(_) => return Err(in_field_order::<T>(errs, at)),
            Err(e) => e,
        };
        let inner = e.inner().to_string();
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();
        if let Some(name) = named_field(&inner) {
            // serde names a missing field at its object; an unknown one is already at its key.
            if !matches!(segments.last(), Some(Segment::Map { key }) if key == name) {
                segments.push(Segment::Map { key: name.to_owned() });
            }
        }
        let path = pointer(at, &segments);
        // An error about what was taken out (a field now missing) is not the client's; the reading goes on past
        // the object that misses it, if that can be taken out too.
        let consequence = errs
            .iter()
            .any(|r: &FieldError| r.path == path || r.path.starts_with(&format!("{path}/")));
        if !consequence {
            if errs.len() >= MAX_ERRORS {
                return Err(in_field_order::<T>(errs, at));
            }
            let message = if segments.is_empty() && inner.starts_with("invalid type") {
                Cow::Borrowed(T::NOT_AN_OBJECT)
            } else {
                message(&inner)
            };
            errs.push(FieldError::new(path, message));
        }
        if !prune(pruned.get_or_insert_with(|| json.clone()), &segments) {
            return Err(in_field_order::<T>(errs, at));
        }
    }
}

/// The fields a type's schema requires.
fn required<T: PartialSchema>() -> Vec<String> {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o.required,
        _ => Vec::new(),
    }
}

/// The field serde's message is about, for a missing or an unknown field.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

/// A JSON pointer from `at` and serde's path (unescaped, as the API has always written them: `/queues/mail`).
fn pointer(at: &str, segments: &[Segment]) -> String {
    let mut p = at.to_owned();
    for s in segments {
        match s {
            Segment::Seq { index } => p.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                p.push('/');
                p.push_str(key);
            }
            Segment::Unknown => p.push_str("/?"),
        }
    }
    p
}

/// Takes out the field an error is about, so that the next reading goes past it: the field itself, or the nearest
/// enclosing field that is there (a missing field's object). Inside an array the whole array's field goes, so that
/// the next reading does not number the items after it wrongly. False when nothing could be taken out.
fn prune(v: &mut Value, segments: &[Segment]) -> bool {
    let end = segments
        .iter()
        .position(|s| matches!(s, Segment::Seq { .. }))
        .unwrap_or(segments.len());
    (1..=end).rev().any(|n| remove(v, &segments[..n]))
}

/// Removes the object key at the end of `segments`; false when it is not there.
fn remove(v: &mut Value, segments: &[Segment]) -> bool {
    let Some((Segment::Map { key }, parent)) = segments.split_last() else {
        return false;
    };
    let mut at = v;
    for s in parent {
        at = match (s, at) {
            (Segment::Map { key }, Value::Object(o)) => match o.get_mut(key) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    at.as_object_mut().is_some_and(|o| o.remove(key).is_some())
}

/// serde's message in the API's words. The constrained fields' own messages (from [`field`] and the domain types'
/// deserialisers) pass through unchanged.
pub fn message(serde: &str) -> Cow<'static, str> {
    if serde.starts_with("missing field") {
        return Cow::Borrowed("is required");
    }
    if serde.starts_with("unknown field") {
        return Cow::Borrowed("unknown field");
    }
    if let Some(rest) = serde.strip_prefix("unknown variant ") {
        let values = rest.split_once("expected ").map_or("", |(_, v)| v);
        let values = values.trim_start_matches("one of ").replace('`', "");
        return Cow::Owned(format!("must be one of {values}"));
    }
    let expected = serde
        .strip_prefix("invalid type: ")
        .or_else(|| serde.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "))
        .map(|(_, expected)| expected);
    let Some(expected) = expected else {
        return Cow::Owned(serde.to_owned());
    };
    let integer = |bits: u32, signed: bool| {
        let (min, max) = if signed {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        };
        Cow::Owned(format!("must be an integer from {min} to {max}"))
    };
    match expected {
        "a string" => Cow::Borrowed("must be a string"),
        "a boolean" => Cow::Borrowed("must be a boolean"),
        "a sequence" => Cow::Borrowed("must be an array"),
        "a map" => Cow::Borrowed("must be an object"),
        "f32" | "f64" => Cow::Borrowed("must be a number"),
        e if e.starts_with("struct ") => Cow::Borrowed("must be an object"),
        // A struct that says what it expects (`#[serde(expecting = "an object {type, ref}")]`).
        e if e.starts_with("an object") => Cow::Owned(format!("must be {e}")),
        e => match e.split_at_checked(1) {
            Some(("i", bits)) => bits.parse().map_or(Cow::Owned(serde.to_owned()), |b| integer(b, true)),
            Some(("u", bits)) => bits.parse().map_or(Cow::Owned(serde.to_owned()), |b| integer(b, false)),
            _ => Cow::Owned(serde.to_owned()),
        },
    }
}

/// Rewrites every integral float (`25.0`) as an integer, the way JSON Schema reads `integer`.
fn integral_floats_as_integers(v: &mut Value) {
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

/// Sorts errors as the old readers listed them: unknown fields first, then by the order `T` declares the field
/// each error is in (stable, so several errors in one field keep their order).
fn in_field_order<T: DeserializeOwned>(mut errs: Vec<FieldError>, at: &str) -> Vec<FieldError> {
    let fields = declared_fields::<T>();
    errs.sort_by_key(|e| {
        let field = e.path.strip_prefix(at).unwrap_or("").trim_start_matches('/');
        let field = field.split('/').next().unwrap_or("");
        fields.iter().position(|f| *f == field).map_or(0, |i| i + 1)
    });
    errs
}

/// The fields of a struct in declaration order, as its derived `Deserialize` names them to a deserializer.
fn declared_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only listens for the field names a struct announces.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the fields were asked for"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;
    use utoipa::ToSchema;

    use super::*;

    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: String,
        b: Option<i16>,
    }

    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        list: Option<Vec<String>>,
        count: Option<i32>,
    }

    impl RequestBody for Outer {}

    fn errors(v: Value) -> Vec<(String, String)> {
        read::<Outer>(&v, "/x")
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    /// JSON content types are recognised with parameters and suffixes.
    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", ""] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    /// Every invalid field is named at its path in the API's words, unknown ones first, then in declared order.
    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(
            errors(json!({"count": "x", "zz": 1, "inner": {"a": 5, "b": 70000}, "list": "no"})),
            [
                ("/x/zz".to_owned(), "unknown field".to_owned()),
                ("/x/name".to_owned(), "is required".to_owned()),
                ("/x/inner/a".to_owned(), "must be a string".to_owned()),
                (
                    "/x/inner/b".to_owned(),
                    "must be an integer from -32768 to 32767".to_owned()
                ),
                ("/x/list".to_owned(), "must be an array".to_owned()),
                (
                    "/x/count".to_owned(),
                    "must be an integer from -2147483648 to 2147483647".to_owned()
                ),
            ]
        );
        assert_eq!(
            errors(json!([1])),
            [("/x".to_owned(), "must be a JSON object".to_owned())]
        );
        assert_eq!(
            errors(json!({"name": null, "inner": {}})),
            [
                ("/x/name".to_owned(), "is required".to_owned()),
                ("/x/inner/a".to_owned(), "is required".to_owned()),
            ]
        );
        // The first bad item of an array is named; the array is then left out, so no later index is misnamed.
        assert_eq!(
            errors(json!({"name": "n", "list": ["a", 1, 2]})),
            [("/x/list/1".to_owned(), "must be a string".to_owned())]
        );
        let ok = read::<Outer>(&json!({"name": "n", "inner": {"a": "b", "b": 2}, "count": 1}), "").unwrap();
        let inner = ok.inner.unwrap();
        assert_eq!((ok.name, ok.list, ok.count), ("n".to_owned(), None, Some(1)));
        assert_eq!((inner.a, inner.b), ("b".to_owned(), Some(2)));
    }

    /// However many fields are bad, a body costs at most `MAX_ERRORS` readings.
    #[test]
    fn errors_are_bounded() {
        let many: serde_json::Map<String, Value> = (0..1000).map(|i| (format!("f{i}"), json!(i))).collect();
        assert_eq!(errors(Value::Object(many)).len(), MAX_ERRORS);
    }

    /// serde's messages for wrong types, ranges and variants read as the API's.
    #[test]
    fn serde_messages_are_translated() {
        for (serde, ours) in [
            ("missing field `kind`", "is required"),
            ("unknown field `x`, expected one of `a`, `b`", "unknown field"),
            ("invalid type: integer `5`, expected a string", "must be a string"),
            (
                "invalid value: integer `300`, expected u8",
                "must be an integer from 0 to 255",
            ),
            (
                "unknown variant `x`, expected one of `retry`, `cancel`",
                "must be one of retry, cancel",
            ),
            ("must be 1 to 255 characters", "must be 1 to 255 characters"),
        ] {
            assert_eq!(message(serde), ours, "{serde}");
        }
    }

    /// A struct's fields are listed in the order it declares them.
    #[test]
    fn fields_in_declared_order() {
        assert_eq!(declared_fields::<Outer>(), ["name", "inner", "list", "count"]);
    }
}
