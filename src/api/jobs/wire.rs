//! The wire format of `/api/jobs` for the OpenAPI document only: bodies are parsed by hand and answers are
//! serialised from the queue's own types, hence `allow(dead_code)` on these structs.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::queue::JobState;

/// A job to enqueue (the body of `POST /api/jobs`, and each element of a batch).
#[derive(Debug, ToSchema)]
#[schema(as = NewJob)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct NewJobBody {
    /// Handler kind, e.g. `noop`.
    #[schema(min_length = 1, max_length = 255)]
    kind: String,
    /// Handler arguments (an object; default `{}`).
    args: Option<Map<String, Value>>,
    /// Queue (default `default`).
    #[schema(min_length = 1, max_length = 255)]
    queue: Option<String>,
    /// 0..9, 0 runs first (default 5).
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i16>,
    /// Earliest run time (RFC 3339); default now.
    run_at: Option<DateTime<Utc>>,
    /// Attempts allowed (default 20).
    #[schema(minimum = 1, maximum = 2147483647)]
    max_attempts: Option<i32>,
    /// Per-job timeout in milliseconds.
    #[schema(minimum = 1, maximum = 2147483647)]
    timeout_ms: Option<i32>,
    /// Per-account deduplication key (or the `Idempotency-Key` header).
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
    /// Jobs with one key run one at a time, in enqueue order.
    #[schema(min_length = 1, max_length = 255)]
    concurrency_key: Option<String>,
}

/// One entry of a job's error history.
#[derive(Debug, ToSchema)]
#[schema(as = JobError)]
#[allow(dead_code)]
pub(super) struct JobErrorBody {
    /// Attempt that failed.
    attempt: i32,
    /// When (RFC 3339).
    at: DateTime<Utc>,
    /// What went wrong.
    message: String,
}

/// A job (`job` in CONTRACT §4).
#[derive(Debug, ToSchema)]
#[schema(as = Job)]
#[allow(dead_code)]
pub(in crate::api) struct JobBody {
    /// Id (a string).
    id: String,
    /// Queue.
    queue: String,
    /// Handler kind.
    kind: String,
    /// Handler arguments.
    args: Value,
    /// Current state.
    state: JobState,
    /// 0 runs first.
    priority: i16,
    /// Attempts started (1 during the first run).
    attempt: i32,
    /// Attempts allowed.
    max_attempts: i32,
    /// Earliest run time.
    run_at: DateTime<Utc>,
    /// Enqueue time.
    created_at: DateTime<Utc>,
    /// Start of the latest attempt.
    started_at: Option<DateTime<Utc>>,
    /// End time, once finished.
    finished_at: Option<DateTime<Utc>>,
    /// Handler result, once completed.
    result: Option<Value>,
    /// One entry per failed attempt.
    errors: Vec<JobErrorBody>,
    /// Deduplication key.
    idempotency_key: Option<String>,
    /// Ordering key.
    concurrency_key: Option<String>,
    /// Pool of the worker that ran it.
    pool: Option<String>,
    /// Version routed to while waiting (null = any), or that ran it.
    version: Option<String>,
    /// Per-job timeout override.
    timeout_ms: Option<i32>,
    /// W3C trace context of the request that created it.
    traceparent: Option<String>,
    /// Only in answers to `POST /api/jobs`, and only when there is something to say: e.g. that no live worker
    /// serving the queue knows the kind, so the job waits.
    warnings: Option<Vec<String>>,
}

/// `POST /api/jobs/batch` body.
#[derive(Debug, ToSchema)]
#[schema(as = JobBatch)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct BatchBody {
    /// Up to 10 000 jobs, enqueued all or nothing.
    #[schema(min_items = 1, max_items = 10000)]
    jobs: Vec<NewJobBody>,
}
