//! `/api/jobs`: enqueue one or many, read, list, cancel, retry (CONTRACT §4).
//!
//! The idempotency fingerprint is taken from the request exactly as sent (minus the key), before any default is
//! filled in, which is why the handlers read their bodies with the JSON as sent ([`SentBody`]).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::body::SentBody;
use super::error::{ApiError, Problem};
use super::extract::{idempotency_key, same_idempotency_key, ApiPath, REPLAYED_HEADER};
use crate::queue::{self, Job, JobId, JobState};
use crate::telemetry::metrics::{queue_label, JOBS_ENQUEUED_TOTAL};
use wire::{BatchBody, NewJobBody};

mod wire;

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
    pub items: Vec<Job>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// The request's W3C `traceparent`, normalised; an invalid one is ignored, as the W3C spec asks.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::trace::TraceParent::parse)
        .map(|t| t.to_string())
}

/// The answer to `POST /api/jobs`: the job, with `warnings` when there is something the caller should know.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueuedJob {
    #[serde(flatten)]
    job: Job,
    /// Only when there is something to say, e.g. that no live worker serving the queue knows the kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A job answer, with `warnings` (an additive field) when there is something the caller should know.
fn job_response(status: StatusCode, job: Job, replayed: bool, warning: Option<String>) -> Response {
    let warnings = warning.into_iter().collect();
    let mut res = (status, Json(EnqueuedJob { job, warnings })).into_response();
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
        (status = 201, description = "Created", body = EnqueuedJob),
        (status = 200, description = "Replay of an idempotent request (header Idempotent-Replayed: true)", body = EnqueuedJob),
        (status = 409, description = "Idempotency key used with a different payload", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create(
    tenant: Tenant,
    headers: HeaderMap,
    sent: Result<SentBody<NewJobBody>, ApiError>,
) -> Result<Response, ApiError> {
    // A bad header is named beside the body's bad fields, first.
    let (SentBody { body, json }, header_key) = match (sent, idempotency_key(&headers)) {
        (Ok(sent), Ok(key)) => (sent, key),
        (Err(ApiError::Invalid(mut errs)), Err(e)) => {
            errs.insert(0, e);
            return Err(ApiError::Invalid(errs));
        }
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(ApiError::Invalid(vec![e])),
    };
    same_idempotency_key(body.idempotency_key.as_deref(), header_key.as_deref())
        .map_err(|e| ApiError::Invalid(vec![e]))?;
    let keyed = body.idempotency_key.is_some();
    let mut job = body.into_job(&json);
    if let (false, Some(k)) = (keyed, header_key) {
        // The key is not part of the body, so the whole body is the payload compared.
        job.fingerprint = Some(queue::fingerprint(&json));
        job.idempotency_key = Some(k);
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
    SentBody { body, json }: SentBody<BatchBody>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let trace = traceparent(&headers);
    let jobs: Vec<_> = body
        .jobs
        .into_iter()
        .zip(json["jobs"].as_array().into_iter().flatten())
        .map(|(job, sent)| {
            let mut job = job.into_job(sent);
            job.traceparent.clone_from(&trace);
            job
        })
        .collect();
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
        (status = 200, description = "The job", body = Job),
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
        (status = 200, description = "The cancelled job", body = Job),
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
        (status = 200, description = "The job, available again", body = Job),
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

    use chrono::Utc;

    use super::super::body;
    use super::*;
    use serde_json::Value;

    use crate::queue::JobError;

    fn errors_of(v: Value) -> Vec<String> {
        match body::read::<NewJobBody>(&v, "/jobs/3") {
            Ok(_) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| e.path).collect(),
        }
    }

    fn parse_job(v: &Value) -> queue::NewJob {
        body::read::<NewJobBody>(v, "").unwrap().into_job(v)
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
        let a = parse_job(&serde_json::json!({"kind": "noop", "idempotency_key": "k"}));
        let b = parse_job(&serde_json::json!({"kind": "noop", "idempotency_key": "other"}));
        let c = parse_job(&serde_json::json!({"kind": "noop", "priority": 5, "idempotency_key": "k"}));
        assert_eq!((a.queue.as_str(), a.priority, a.max_attempts), ("default", 5, 20));
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(
            a.fingerprint, c.fingerprint,
            "the request as sent is compared, before defaults"
        );
    }

    /// The documented job schema names exactly the fields the API serialises, its error entries too: what serde
    /// skips (the account, the lease) the document leaves out.
    #[test]
    fn job_schema_matches_serialisation() {
        use utoipa::PartialSchema;
        let keys_of = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<String>>();
        let error = JobError {
            attempt: 1,
            at: Utc::now(),
            message: "boom".into(),
            version: None,
        };
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
            errors: vec![error.clone()],
            idempotency_key: None,
            concurrency_key: None,
            pool: None,
            version: None,
            timeout_ms: None,
            traceparent: None,
            lease_owner: Some("w".into()),
            leased_until: Some(Utc::now()),
        };
        let documented = |schema| keys_of(&serde_json::to_value(schema).unwrap()["properties"]);
        assert_eq!(keys_of(&serde_json::to_value(&job).unwrap()), documented(Job::schema()));
        assert_eq!(
            keys_of(&serde_json::to_value(&error).unwrap()),
            documented(JobError::schema())
        );
    }
}
