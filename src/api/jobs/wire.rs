//! The wire format of `/api/jobs` requests: serde types read by [`crate::api::body`] and documented from the same
//! definitions. The answers are the queue's own types ([`crate::queue::Job`]), documented where they are declared.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::body::{self, field, RequestBody};
use crate::api::error::ApiError;
use crate::api::MAX_BATCH_JOBS;
use crate::queue::{self, FieldError, NewJob};

/// A job to enqueue (the body of `POST /api/jobs`, and each element of a batch).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = NewJob)]
#[serde(deny_unknown_fields)]
pub struct NewJobBody {
    /// Handler kind, e.g. `noop`.
    #[serde(deserialize_with = "field::key")]
    #[schema(min_length = 1, max_length = 255)]
    kind: String,
    /// Handler arguments (an object; default `{}`).
    #[serde(default, deserialize_with = "field::opt_args")]
    args: Option<Map<String, Value>>,
    /// Queue (default `default`).
    #[serde(default, deserialize_with = "field::opt_key")]
    #[schema(min_length = 1, max_length = 255)]
    queue: Option<String>,
    /// 0..9, 0 runs first (default 5).
    #[serde(default, deserialize_with = "field::opt_int::<_, _, 0, 9>")]
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i16>,
    /// Earliest run time (RFC 3339); default now.
    #[serde(default, deserialize_with = "field::opt_time_string")]
    run_at: Option<DateTime<Utc>>,
    /// Attempts allowed (default 20).
    #[serde(default, deserialize_with = "field::opt_int::<_, _, 1, 2147483647>")]
    #[schema(minimum = 1, maximum = 2147483647)]
    max_attempts: Option<i32>,
    /// Per-job timeout in milliseconds.
    #[serde(default, deserialize_with = "field::opt_int::<_, _, 1, 2147483647>")]
    #[schema(minimum = 1, maximum = 2147483647)]
    timeout_ms: Option<i32>,
    /// Per-account deduplication key (or the `Idempotency-Key` header).
    #[serde(default, deserialize_with = "field::opt_key")]
    #[schema(min_length = 1, max_length = 255)]
    pub(super) idempotency_key: Option<String>,
    /// Jobs with one key run one at a time, in enqueue order.
    #[serde(default, deserialize_with = "field::opt_key")]
    #[schema(min_length = 1, max_length = 255)]
    concurrency_key: Option<String>,
}

impl RequestBody for NewJobBody {
    const NOT_AN_OBJECT: &'static str = "must be an object";
}

impl NewJobBody {
    /// The job to enqueue, defaults filled in. `sent` is the job as sent: with a key, the payload a replay is
    /// compared with is `sent` without the key.
    pub(crate) fn into_job(self, sent: &Value) -> NewJob {
        let mut job = NewJob::new(self.kind, Value::Object(self.args.unwrap_or_default()));
        if let Some(q) = self.queue {
            job.queue = q;
        }
        if let Some(p) = self.priority {
            job.priority = p;
        }
        job.run_at = self.run_at;
        if let Some(m) = self.max_attempts {
            job.max_attempts = m;
        }
        job.timeout_ms = self.timeout_ms;
        if let Some(k) = self.idempotency_key {
            let mut sent = sent.clone();
            if let Some(fields) = sent.as_object_mut() {
                fields.remove("idempotency_key");
            }
            job.fingerprint = Some(queue::fingerprint(&sent));
            job.idempotency_key = Some(k);
        }
        job.concurrency_key = self.concurrency_key;
        job
    }
}

/// `POST /api/jobs/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = JobBatch)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Up to 10 000 jobs, enqueued all or nothing.
    #[schema(min_items = 1, max_items = 10000)]
    pub jobs: Vec<NewJobBody>,
}

impl RequestBody for BatchBody {
    /// The envelope: an object holding only `jobs`, an array of 1 to 10 000 jobs (more is a 413).
    fn admit(json: &Value) -> Result<(), ApiError> {
        let Some(obj) = json.as_object() else {
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
        Ok(())
    }

    /// Each job on its own, so that every invalid job is named by its index.
    fn read(json: &Value, at: &str) -> Result<Self, Vec<FieldError>> {
        let items = json
            .get("jobs")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut errs = Vec::new();
        let mut jobs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match body::read::<NewJobBody>(item, &format!("{at}/jobs/{i}")) {
                Ok(job) => jobs.push(job),
                Err(mut e) => errs.append(&mut e),
            }
        }
        if errs.is_empty() {
            Ok(BatchBody { jobs })
        } else {
            Err(errs)
        }
    }
}
