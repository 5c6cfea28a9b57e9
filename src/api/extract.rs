//! Request extractors and header readers that fail with problem JSON instead of axum's plain-text rejections
//! (request bodies are read by [`super::body`]).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::queue::FieldError;

/// Page size when `?limit=` is absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size.
pub const MAX_LIMIT: i64 = 1000;

/// Header that may carry an idempotency key instead of the body's field.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header set on an answer that replays an earlier request with the same idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The `Idempotency-Key` header of jobs, events and load batches: absent, or a key of 1 to 255 visible
/// characters; anything else is a field error naming the header.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, FieldError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
            _ => Err(FieldError::new(
                "/headers/idempotency-key",
                "must be 1 to 255 visible characters",
            )),
        },
    }
}

/// A request may carry its idempotency key in the header and in the body's `idempotency_key`, but not two keys.
pub fn same_idempotency_key(field: Option<&str>, header: Option<&str>) -> Result<(), FieldError> {
    match (field, header) {
        (Some(f), Some(h)) if f != h => Err(FieldError::new(
            "/idempotency_key",
            "differs from the Idempotency-Key header",
        )),
        _ => Ok(()),
    }
}

/// Path parameters; a parameter that does not parse names nothing that exists, so it is a 404.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|_| ApiError::NotFound("no such resource".to_owned()))
    }
}

/// `?limit=` of a list with no cursor. The handler reads it with [`Limit::read`] or takes it as an extractor; the
/// OpenAPI document describes the same fields.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// Page size (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: i64,
}

impl Limit {
    /// `?limit=`: default 100, 1..=1000 else 422.
    pub fn read(q: &QueryParams) -> Result<Self, ApiError> {
        let limit = match q.given("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(ApiError::invalid("/query/limit", "must be an integer from 1 to 1000")),
            },
        };
        Ok(Limit { limit })
    }
}

/// `?limit=&cursor=` of a list in key order, whose cursor is the last key of the previous page.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Page size (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: i64,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Page {
    /// `?limit=` as [`Limit::read`], and `?cursor=` (absent when empty).
    pub fn read(q: &QueryParams) -> Result<Self, ApiError> {
        Ok(Page {
            limit: Limit::read(q)?.limit,
            cursor: q.get("cursor").map(str::to_owned),
        })
    }

    /// This page of a list that is computed whole (queues, pools, rules), ordered by `key`: the items after the
    /// cursor, at most `limit` of them, and the `next_cursor` while more follow.
    pub fn of<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        items.sort_by(|a, b| key(a).cmp(key(b)));
        if let Some(after) = &self.cursor {
            items.retain(|i| key(i) > after.as_str());
        }
        let next = next_page(&mut items, self.limit, |i| key(i).to_owned());
        (items, next)
    }
}

/// `?limit=&cursor=` of a list paged by id or sequence number.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdPage {
    /// Page size (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: i64,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<i64>,
}

impl IdPage {
    /// `?limit=` as [`Limit::read`], and `?cursor=` as the document's pattern allows it, else 422.
    pub fn read(q: &QueryParams) -> Result<Self, ApiError> {
        Ok(IdPage {
            limit: Limit::read(q)?.limit,
            cursor: id_cursor(q, "cursor")?,
        })
    }
}

/// The page parameters are extractors of their own, for handlers that read nothing else from the query string.
macro_rules! from_query {
    ($($t:ty),*) => {$(
        impl<S: Send + Sync> FromRequestParts<S> for $t {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                Self::read(&QueryParams::from_request_parts(parts, state).await?)
            }
        }
    )*};
}

from_query!(Limit, Page, IdPage);

/// A numeric cursor under `name` (`cursor`, or an older name of it): a positive id or sequence number of at most
/// 18 digits, as [`IdPage`] documents it, else 422.
pub fn id_cursor(q: &QueryParams, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = q.given(name) else {
        return Ok(None);
    };
    match numeric_id(s) {
        Some(n) => Ok(Some(n)),
        None => Err(ApiError::invalid(
            format!("/query/{name}"),
            "is not a cursor of this listing",
        )),
    }
}

/// Cuts a page read with `limit + 1` rows down to `limit`, and gives the cursor of the next page (the key of its
/// last item) when the extra row showed there is one.
pub fn next_page<T>(items: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(key)
}

/// An id or sequence number as the document's pattern `^[1-9][0-9]{0,17}$` allows it, and nothing else.
pub fn numeric_id(s: &str) -> Option<i64> {
    let well_formed = (1..=18).contains(&s.len()) && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    s.parse::<i64>().ok().filter(|_| well_formed)
}

/// Query parameters as strings; their meaning is checked by the handler (422 naming `/query/<name>`).
#[derive(Debug, Default)]
pub struct QueryParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))
    }
}

impl QueryParams {
    /// A parameter, `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A parameter as sent, `Some("")` when empty: for parameters with a type or a set of values, where an empty
    /// value is as wrong as any other outside it.
    pub fn given(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits outside 1..=1000 are refused, and so is an empty one.
    #[test]
    fn limit_bounds() {
        let q = |v: &str| QueryParams(HashMap::from([("limit".to_owned(), v.to_owned())]));
        assert_eq!(Limit::read(&QueryParams::default()).unwrap().limit, 100);
        assert_eq!(Limit::read(&q("1000")).unwrap().limit, 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            assert!(Limit::read(&q(bad)).is_err(), "{bad:?}");
        }
    }

    /// A numeric cursor is what `IdPage` documents: 1 to 18 digits, no leading zero, nothing else (not even nothing).
    #[test]
    fn id_cursor_is_the_documented_pattern() {
        let q = |v: &str| QueryParams(HashMap::from([("cursor".to_owned(), v.to_owned())]));
        assert_eq!(IdPage::read(&QueryParams::default()).unwrap().cursor, None);
        for (ok, n) in [("1", 1), ("42", 42), ("999999999999999999", 999_999_999_999_999_999)] {
            assert_eq!(IdPage::read(&q(ok)).unwrap().cursor, Some(n), "{ok}");
        }
        for bad in ["", "0", "01", "+1", "-1", " 1", "1a", "1234567890123456789"] {
            assert!(IdPage::read(&q(bad)).is_err(), "{bad:?}");
        }
    }

    /// A list computed whole is paged by key: sorted, after the cursor, at most `limit`, with a cursor while more.
    #[test]
    fn page_by_key_pages_in_key_order() {
        let q = |pairs: &[(&str, &str)]| {
            QueryParams(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
        };
        let items = || vec!["c", "a", "b"];
        let (page, next) = Page::read(&q(&[("limit", "2")])).unwrap().of(items(), |s| s);
        assert_eq!((page, next.as_deref()), (vec!["a", "b"], Some("b")));
        let (page, next) = Page::read(&q(&[("limit", "2"), ("cursor", "b")]))
            .unwrap()
            .of(items(), |s| s);
        assert_eq!((page, next), (vec!["c"], None));
        assert!(Page::read(&q(&[("limit", "0")])).is_err());
    }
}
