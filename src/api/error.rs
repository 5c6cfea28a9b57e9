//! The one error type of the API, rendered as RFC 9457 `application/problem+json`.
//!
//! Every failure a handler or extractor can meet maps to exactly one variant here, so the status code of each case
//! in CONTRACT §2 is decided in one place. Internal errors answer a generic body and are logged once, inside the
//! request's span (which carries the request id).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::queue::{self, FieldError};
use crate::tenancy;

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait before retrying while the database is unreachable.
const DB_RETRY_AFTER_S: u64 = 1;

/// Rate-limit details carried by a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// Requests per second allowed.
    pub limit: u32,
    /// Seconds until a request will be allowed.
    pub retry_after_s: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
}

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON (400).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The request is malformed in another way (400).
    #[error("{0}")]
    BadRequest(String),
    /// No key, or a key nobody knows (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid credential of the wrong kind (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Unknown resource, or one of another account (404).
    #[error("{0}")]
    NotFound(String),
    /// No such method on the route (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Conflicts with the resource's current state (409).
    #[error("{detail}")]
    Conflict {
        /// What conflicts.
        detail: String,
        /// Fields involved, if any.
        errors: Vec<FieldError>,
    },
    /// Body or batch too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Not `application/json` (415).
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The account is homed in another region (421).
    #[error("account is homed in region {0}; send requests to a node of that region")]
    MisdirectedRegion(String),
    /// One or more invalid fields (422).
    #[error("invalid request: {} problem(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// Per-account rate limit exceeded (429).
    #[error("rate limit exceeded")]
    RateLimited(RateLimited),
    /// A synchronous call passed its deadline; the work goes on (504, with `event_id`).
    #[error("{detail}")]
    GatewayTimeout {
        /// What timed out.
        detail: String,
        /// The event that will still complete.
        event_id: String,
    },
    /// The database (or the request's deadline) could not be met (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500); the detail is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    pub detail: String,
    /// One entry per invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ProblemField>>,
    /// The event a timed-out synchronous call accepted (504 only); it still completes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// One invalid field of a problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemField {
    /// JSON pointer into the request, e.g. `/jobs/3/priority`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MisdirectedRegion(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::MisdirectedRegion(_) => "wrong-region",
            ApiError::Invalid(_) => "invalid-request",
            ApiError::RateLimited(_) => "rate-limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::GatewayTimeout { .. } => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            // Internal details stay in the log.
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid(errs) | ApiError::Conflict { errors: errs, .. } if !errs.is_empty() => Some(
                errs.iter()
                    .map(|e| ProblemField {
                        path: e.path.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
            ),
            _ => None,
        };
        Problem {
            type_: format!("https://ordo.dev/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
            event_id: match self {
                ApiError::GatewayTimeout { event_id, .. } => Some(event_id.clone()),
                _ => None,
            },
        }
    }

    /// A 422 with one field error.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(path, message)])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            // Logged here, once, inside the request span that carries the request id.
            tracing::error!(error = %detail, "request failed");
        }
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(DB_RETRY_AFTER_S));
            }
            ApiError::RateLimited(r) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_s.max(1)));
                headers.insert("ratelimit-limit", HeaderValue::from(r.limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
                headers.insert("ratelimit-reset", HeaderValue::from(r.reset_s.max(1)));
            }
            _ => {}
        }
        (status, headers, body).into_response()
    }
}

/// Whether a database error means "the database is unreachable" (503) rather than a bug (500).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01..57P03: shutdown / cannot connect now; 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P0") || c == "53300"
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return ApiError::Unavailable("database unavailable; retry later".to_owned());
        }
        if let sqlx::Error::Database(db) = &e {
            // Input the handlers did not anticipate but the database refused (a NUL byte in a text value, a
            // number out of a column's range, a check constraint) is still the client's input: never a 500.
            let code = db.code().unwrap_or_default();
            if code.starts_with("22") || code == "23514" {
                return ApiError::invalid("", format!("invalid value: {}", db.message()));
            }
            if code == "23505" || code == "23503" {
                return ApiError::Conflict {
                    detail: "the request conflicts with the current state; retry or change it".to_owned(),
                    errors: Vec::new(),
                };
            }
        }
        ApiError::Internal(e.to_string())
    }
}

impl From<queue::Error> for ApiError {
    fn from(e: queue::Error) -> Self {
        match e {
            queue::Error::NotFound { id } => ApiError::NotFound(format!("job {id} not found")),
            queue::Error::IdempotencyConflict { key, index } => {
                let path = match index {
                    Some(i) => format!("/jobs/{i}/idempotency_key"),
                    None => "/idempotency_key".to_owned(),
                };
                ApiError::Conflict {
                    detail: format!("idempotency key {key:?} was already used with a different payload"),
                    errors: vec![FieldError::new(path, "already used with a different payload")],
                }
            }
            e @ queue::Error::InvalidState { .. } => ApiError::Conflict {
                detail: e.to_string(),
                errors: Vec::new(),
            },
            queue::Error::Invalid(errs) => ApiError::Invalid(errs.into()),
            queue::Error::UnknownAccount { account } => ApiError::NotFound(format!("account {account} not found")),
            queue::Error::Crypt(e) => e.into(),
            queue::Error::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::scheduler::Error> for ApiError {
    fn from(e: crate::scheduler::Error) -> Self {
        use crate::scheduler::Error as S;
        match e {
            S::Invalid(errs) => ApiError::Invalid(errs.into()),
            e @ S::NotFound { .. } => ApiError::NotFound(e.to_string()),
            S::Conflict { name } => ApiError::Conflict {
                detail: format!("schedule {name:?} already exists"),
                errors: vec![FieldError::new("/name", "already exists")],
            },
            S::Queue(e) => e.into(),
            S::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::orchestration::Error> for ApiError {
    fn from(e: crate::orchestration::Error) -> Self {
        use crate::orchestration::Error as O;
        match e {
            O::Invalid(problems) => ApiError::Invalid(
                problems
                    .into_iter()
                    .map(|p| FieldError::new(p.path, p.message))
                    .collect(),
            ),
            e @ (O::WorkflowNotFound { .. } | O::EntityNotFound(_) | O::EventNotFound { .. }) => {
                ApiError::NotFound(e.to_string())
            }
            e @ (O::EntityExists(_) | O::InvalidEventState { .. } | O::IdempotencyConflict { .. }) => {
                ApiError::Conflict {
                    detail: e.to_string(),
                    errors: Vec::new(),
                }
            }
            O::Timeout { event_id } => ApiError::GatewayTimeout {
                detail: format!("event {event_id} did not finish within the deadline; it will still complete"),
                event_id: event_id.to_string(),
            },
            O::Queue(e) => e.into(),
            O::Crypt(e) => e.into(),
            O::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A value that cannot be opened is the server's problem (500, logged with the row it names), never the caller's.
impl From<crate::crypt::Error> for ApiError {
    fn from(e: crate::crypt::Error) -> Self {
        match e {
            crate::crypt::Error::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<tenancy::Error> for ApiError {
    fn from(e: tenancy::Error) -> Self {
        match e {
            e @ tenancy::Error::AccountExists(_) => ApiError::Conflict {
                detail: e.to_string(),
                errors: vec![FieldError::new("/id", "already exists")],
            },
            e @ (tenancy::Error::AccountNotFound(_) | tenancy::Error::KeyNotFound(_)) => {
                ApiError::NotFound(e.to_string())
            }
            tenancy::Error::Crypt(e) => e.into(),
            tenancy::Error::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant renders a problem whose status matches the response status, and internals never leak.
    #[test]
    fn problem_matches_status_and_hides_internals() {
        let cases = [
            ApiError::MalformedJson("x".into()),
            ApiError::Unauthorized("missing key"),
            ApiError::Forbidden("admin"),
            ApiError::NotFound("job 1 not found".into()),
            ApiError::PayloadTooLarge("big".into()),
            ApiError::UnsupportedMediaType,
            ApiError::MisdirectedRegion("eu".into()),
            ApiError::invalid("/priority", "must be between 0 and 9"),
            ApiError::Unavailable("db".into()),
            ApiError::Internal("secret connection string".into()),
        ];
        for e in cases {
            let p = e.problem();
            assert_eq!(p.status, e.status().as_u16());
            assert!(!p.detail.contains("secret"), "{}", p.detail);
        }
        let p = ApiError::invalid("/priority", "bad").problem();
        assert_eq!(p.errors.unwrap()[0].path, "/priority");
    }

    /// Connection failures are 503, not 500.
    #[test]
    fn pool_timeouts_are_unavailable() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }
}
