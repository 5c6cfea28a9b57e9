//! `/api/jobs`: enqueue one or many, read, list, cancel, retry (CONTRACT §4).
//!
//! Request bodies are parsed by hand from JSON values rather than derived, so that every invalid field of every
//! job is reported at once with its path (`/jobs/3/priority`), and so that the idempotency fingerprint is taken
//! from the request exactly as sent (minus the key), before any default is filled in.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, Problem};
use super::extract::{ApiPath, JsonBody};
use super::MAX_BATCH_JOBS;
use crate::queue::{self, FieldError, Job, JobId, JobState, NewJob};
use crate::telemetry::metrics::{queue_label, JOBS_ENQUEUED_TOTAL};
pub(super) use wire::JobBody;
use wire::{BatchBody, NewJobBody};

mod wire;

/// Header that may carry the idempotency key instead of the body field.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header set on a replayed idempotent request.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const FIELDS: [&str; 9] = [
    "kind",
    "args",
    "queue",
    "priority",
    "run_at",
    "max_attempts",
    "timeout_ms",
    "idempotency_key",
    "concurrency_key",
];

/// One job's outcome in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// The job's id.
    #[schema(value_type = String)]
    pub id: JobId,
    /// True when an existing job was returned for its idempotency key.
    pub replayed: bool,
}

/// `POST /api/jobs/batch` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One entry per job, in request order.
    pub items: Vec<BatchItem>,
    /// Present when there is something to say: e.g. a queue and kind no live worker serves, so those jobs wait.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Jobs, newest first.
    #[schema(value_type = Vec<JobBody>)]
    pub items: Vec<Job>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// Whether a JSON value holds a NUL character anywhere, which PostgreSQL cannot store in `text` or `jsonb`.
pub(crate) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn string_field(obj: &Map<String, Value>, name: &str, base: &str, errs: &mut Vec<FieldError>) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains('\0') => {
            errs.push(FieldError::new(
                format!("{base}/{name}"),
                "must not contain NUL characters",
            ));
            None
        }
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 255 => Some(s.clone()),
        Some(Value::String(_)) => {
            errs.push(FieldError::new(format!("{base}/{name}"), "must be 1 to 255 characters"));
            None
        }
        Some(_) => {
            errs.push(FieldError::new(format!("{base}/{name}"), "must be a string"));
            None
        }
    }
}

fn int_field(
    obj: &Map<String, Value>,
    name: &str,
    base: &str,
    range: std::ops::RangeInclusive<i64>,
    errs: &mut Vec<FieldError>,
) -> Option<i64> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(v @ Value::Number(_)) => match queue::json_integer(v) {
            Some(i) if range.contains(&i) => Some(i),
            _ => {
                errs.push(FieldError::new(
                    format!("{base}/{name}"),
                    format!("must be an integer from {} to {}", range.start(), range.end()),
                ));
                None
            }
        },
        Some(_) => {
            errs.push(FieldError::new(format!("{base}/{name}"), "must be an integer"));
            None
        }
    }
}

/// Parses one job object, pushing every problem (paths prefixed with `base`) into `errs`.
pub(crate) fn parse_job(v: &Value, base: &str, errs: &mut Vec<FieldError>) -> Option<NewJob> {
    let Some(obj) = v.as_object() else {
        errs.push(FieldError::new(base, "must be an object"));
        return None;
    };
    let before = errs.len();
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errs.push(FieldError::new(format!("{base}/{key}"), "unknown field"));
        }
    }
    let kind = string_field(obj, "kind", base, errs);
    if kind.is_none() && !errs.iter().any(|e| e.path == format!("{base}/kind")) {
        errs.push(FieldError::new(format!("{base}/kind"), "is required"));
    }
    let args = match obj.get("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) if has_nul(a) => {
            errs.push(FieldError::new(
                format!("{base}/args"),
                "must not contain NUL characters",
            ));
            Value::Null
        }
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => {
            errs.push(FieldError::new(format!("{base}/args"), "must be an object"));
            Value::Null
        }
    };
    let queue = string_field(obj, "queue", base, errs);
    let priority = int_field(obj, "priority", base, 0..=9, errs);
    let run_at = match obj.get("run_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errs.push(FieldError::new(format!("{base}/run_at"), "must be an RFC 3339 time"));
                None
            }
        },
        Some(_) => {
            errs.push(FieldError::new(
                format!("{base}/run_at"),
                "must be an RFC 3339 time string",
            ));
            None
        }
    };
    let max_attempts = int_field(obj, "max_attempts", base, 1..=i64::from(i32::MAX), errs);
    let timeout_ms = int_field(obj, "timeout_ms", base, 1..=i64::from(i32::MAX), errs);
    let idempotency_key = string_field(obj, "idempotency_key", base, errs);
    let concurrency_key = string_field(obj, "concurrency_key", base, errs);
    if errs.len() > before {
        return None;
    }
    let mut job = NewJob::new(kind?, args);
    if let Some(q) = queue {
        job.queue = q;
    }
    // The ranges were checked above, so these conversions cannot fail.
    if let Some(p) = priority.and_then(|p| i16::try_from(p).ok()) {
        job.priority = p;
    }
    job.run_at = run_at;
    if let Some(m) = max_attempts.and_then(|m| i32::try_from(m).ok()) {
        job.max_attempts = m;
    }
    job.timeout_ms = timeout_ms.and_then(|t| i32::try_from(t).ok());
    if let Some(k) = idempotency_key {
        // The payload compared on a replay is the request as sent, without the key itself.
        let mut sent = obj.clone();
        sent.remove("idempotency_key");
        job.fingerprint = Some(queue::fingerprint(&Value::Object(sent)));
        job.idempotency_key = Some(k);
    }
    job.concurrency_key = concurrency_key;
    Some(job)
}

/// The request's W3C `traceparent`, normalised; an invalid one is ignored, as the W3C spec asks.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::trace::TraceParent::parse)
        .map(|t| t.to_string())
}

/// A job answer, with `warnings` (an additive field) when there is something the caller should know.
fn job_response(status: StatusCode, job: Job, replayed: bool, warning: Option<String>) -> Response {
    let mut res = match warning {
        None => (status, Json(job)).into_response(),
        Some(w) => match serde_json::to_value(&job) {
            Ok(Value::Object(mut body)) => {
                body.insert("warnings".to_owned(), Value::Array(vec![Value::String(w)]));
                (status, Json(Value::Object(body))).into_response()
            }
            _ => (status, Json(job)).into_response(),
        },
    };
    if replayed {
        res.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    res
}

/// Enqueue one job.
#[utoipa::path(
    post,
    path = "/api/jobs",
    tag = "jobs",
    request_body = NewJobBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key, instead of the body field")),
    responses(
        (status = 201, description = "Created", body = JobBody),
        (status = 200, description = "Replay of an idempotent request (header Idempotent-Replayed: true)", body = JobBody),
        (status = 409, description = "Idempotency key used with a different payload", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create(tenant: Tenant, headers: HeaderMap, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let mut errs = Vec::new();
    let header_key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
            _ => {
                errs.push(FieldError::new(
                    "/headers/idempotency-key",
                    "must be 1 to 255 visible characters",
                ));
                None
            }
        },
    };
    let job = parse_job(&body, "", &mut errs);
    let Some(mut job) = job.filter(|_| errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    if let Some(k) = header_key {
        match &job.idempotency_key {
            Some(field) if *field != k => {
                return Err(ApiError::invalid(
                    "/idempotency_key",
                    "differs from the Idempotency-Key header",
                ))
            }
            Some(_) => {}
            None => {
                job.fingerprint = Some(queue::fingerprint(&body));
                job.idempotency_key = Some(k);
            }
        }
    }
    job.traceparent = traceparent(&headers);
    // Validated here, alone: a job refused inside a shared transaction would fail its neighbours.
    job.validate().map_err(ApiError::Invalid)?;
    let queue_name = job.queue.clone();
    // Concurrent requests share a transaction (group commit); each still gets its own answer, after commit.
    let out = tenant.state().enqueuer().enqueue(tenant.account.clone(), job).await?;
    let warning = match out.job.state {
        JobState::Completed | JobState::Discarded | JobState::Cancelled => None,
        _ => {
            let state = tenant.state();
            state
                .live_kinds()
                .warning(state.pool(), &out.job.queue, &out.job.kind)
                .await
        }
    };
    if out.replayed {
        return Ok(job_response(StatusCode::OK, out.job, true, warning));
    }
    metrics::counter!(JOBS_ENQUEUED_TOTAL, "queue" => queue_label(&queue_name)).increment(1);
    Ok(job_response(StatusCode::CREATED, out.job, false, warning))
}

fn tenant_waker(tenant: &Tenant) -> &crate::wake::Waker {
    tenant.state().waker()
}

/// Enqueue up to 10 000 jobs, all or nothing.
#[utoipa::path(
    post,
    path = "/api/jobs/batch",
    tag = "jobs",
    request_body = BatchBody,
    responses(
        (status = 201, description = "All jobs enqueued (or replayed)", body = BatchResponse),
        (status = 409, description = "An idempotency key was used with a different payload", body = Problem),
        (status = 413, description = "More than 10 000 jobs or a body over 16 MiB", body = Problem),
        (status = 422, description = "Invalid jobs, each named by index", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create_batch(
    tenant: Tenant,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid("", "must be an object {\"jobs\": [...]}"));
    };
    if let Some(k) = obj.keys().find(|k| *k != "jobs") {
        return Err(ApiError::invalid(format!("/{k}"), "unknown field"));
    }
    let Some(items) = obj.get("jobs").and_then(Value::as_array) else {
        return Err(ApiError::invalid("/jobs", "must be an array of jobs"));
    };
    if items.len() > MAX_BATCH_JOBS {
        return Err(ApiError::PayloadTooLarge(format!(
            "a batch holds at most {MAX_BATCH_JOBS} jobs, got {}",
            items.len()
        )));
    }
    if items.is_empty() {
        return Err(ApiError::invalid("/jobs", "must hold at least one job"));
    }
    let trace = traceparent(&headers);
    let mut errs = Vec::new();
    let mut jobs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(mut job) = parse_job(item, &format!("/jobs/{i}"), &mut errs) {
            job.traceparent.clone_from(&trace);
            jobs.push(job);
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let mut tx = tenant.begin().await?;
    let out = queue::enqueue_many(&mut tx, &tenant.account, &jobs).await?;
    tx.commit().await?;
    let mut created: BTreeMap<&str, u64> = BTreeMap::new();
    for (job, o) in jobs.iter().zip(&out) {
        if !o.replayed {
            *created.entry(job.queue.as_str()).or_default() += 1;
        }
    }
    for (q, n) in created {
        tenant_waker(&tenant).wake(q);
        metrics::counter!(JOBS_ENQUEUED_TOTAL, "queue" => queue_label(q)).increment(n);
    }
    let pairs: std::collections::BTreeSet<(&str, &str)> =
        jobs.iter().map(|j| (j.queue.as_str(), j.kind.as_str())).collect();
    let mut warnings = Vec::new();
    let state = tenant.state();
    for (queue, kind) in pairs {
        warnings.extend(state.live_kinds().warning(state.pool(), queue, kind).await);
    }
    let items = out
        .into_iter()
        .map(|o| BatchItem {
            id: o.id,
            replayed: o.replayed,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(BatchResponse { items, warnings })))
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse::<JobId>()
        .map_err(|_| ApiError::NotFound(format!("job {id} not found")))
}

/// Read one job.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        (status = 404, description = "Unknown, or another account's", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account, job.id = %id))]
pub async fn get(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let mut tx = tenant.begin().await?;
    let job = queue::get(&mut *tx, &tenant.account, id).await?;
    tx.commit().await?;
    Ok(Json(job))
}

/// Cancel a job that has not finished.
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The cancelled job", body = JobBody),
        (status = 404, description = "Unknown, or another account's", body = Problem),
        (status = 409, description = "Already finished", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account, job.id = %id))]
pub async fn cancel(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let mut tx = tenant.begin().await?;
    let job = queue::cancel(&mut tx, &tenant.account, id).await?;
    tx.commit().await?;
    Ok(Json(job))
}

/// Make a discarded or cancelled job available now.
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, available again", body = JobBody),
        (status = 404, description = "Unknown, or another account's", body = Problem),
        (status = 409, description = "Running or completed", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account, job.id = %id))]
pub async fn retry(tenant: Tenant, ApiPath(id): ApiPath<String>) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let mut tx = tenant.begin().await?;
    let job = queue::retry(&mut tx, &tenant.account, id).await?;
    tx.commit().await?;
    tenant_waker(&tenant).wake(&job.queue);
    Ok(Json(job))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn errors_of(v: Value) -> Vec<String> {
        let mut errs = Vec::new();
        parse_job(&v, "/jobs/3", &mut errs);
        errs.into_iter().map(|e| e.path).collect()
    }

    /// Every invalid field is named, with its index path.
    #[test]
    fn parse_job_names_every_bad_field() {
        let paths = errors_of(serde_json::json!({
            "kind": 5, "priority": 12, "run_at": "yesterday", "max_attempts": 0, "args": [], "bogus": 1
        }));
        for p in [
            "/jobs/3/kind",
            "/jobs/3/priority",
            "/jobs/3/run_at",
            "/jobs/3/max_attempts",
            "/jobs/3/args",
            "/jobs/3/bogus",
        ] {
            assert!(paths.contains(&p.to_owned()), "{p} missing from {paths:?}");
        }
        assert_eq!(errors_of(serde_json::json!({})), ["/jobs/3/kind"]);
        assert_eq!(errors_of(serde_json::json!([])), ["/jobs/3"]);
        assert_eq!(
            errors_of(serde_json::json!({"kind": "a\u{0}", "args": {"x": ["\u{0}"]}})),
            ["/jobs/3/kind", "/jobs/3/args"]
        );
    }

    /// Defaults are filled in; the fingerprint ignores the key but not the payload.
    #[test]
    fn parse_job_fills_defaults_and_fingerprints_as_sent() {
        let mut errs = Vec::new();
        let a = parse_job(
            &serde_json::json!({"kind": "noop", "idempotency_key": "k"}),
            "",
            &mut errs,
        )
        .unwrap();
        let b = parse_job(
            &serde_json::json!({"kind": "noop", "idempotency_key": "other"}),
            "",
            &mut errs,
        )
        .unwrap();
        let c = parse_job(
            &serde_json::json!({"kind": "noop", "priority": 5, "idempotency_key": "k"}),
            "",
            &mut errs,
        )
        .unwrap();
        assert!(errs.is_empty());
        assert_eq!((a.queue.as_str(), a.priority, a.max_attempts), ("default", 5, 20));
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(
            a.fingerprint, c.fingerprint,
            "the request as sent is compared, before defaults"
        );
    }

    /// The documented job schema names every field the API serialises.
    #[test]
    fn job_schema_matches_serialisation() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(JobBody::schema()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let job = Job {
            id: JobId(1),
            account_id: "a".into(),
            queue: "q".into(),
            kind: "k".into(),
            args: Value::Null,
            state: JobState::Available,
            priority: 5,
            attempt: 0,
            max_attempts: 1,
            run_at: Utc::now(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            result: None,
            errors: Value::Array(vec![]),
            idempotency_key: None,
            concurrency_key: None,
            pool: None,
            version: None,
            timeout_ms: None,
            traceparent: None,
            lease_owner: None,
            leased_until: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        let mut keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        // Added by `POST /api/jobs` to its answer only (see `job_response`).
        keys.insert("warnings");
        let documented: BTreeSet<&str> = props.keys().map(String::as_str).collect();
        assert_eq!(keys, documented);
    }
}
