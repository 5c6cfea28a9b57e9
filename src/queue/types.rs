//! The job row, its states and the shape of a new job.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// A job id, drawn from a sequence, so enqueue order is numeric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for JobId {
    // Ids are strings in JSON: JavaScript clients cannot hold every i64.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// The life cycle of a job, mirroring the `job.state` values (the internal `parked` reads as `available`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed; waits for its backoff, then runs again.
    Retryable,
    /// Failed for good (attempts exhausted or a permanent error).
    Discarded,
    /// Cancelled by a user or its handler.
    Cancelled,
}

/// States in which a job still has work ahead of it.
pub const ACTIVE_STATES: [JobState; 4] = [
    JobState::Scheduled,
    JobState::Available,
    JobState::Running,
    JobState::Retryable,
];
/// States that end a job.
pub const FINISHED_STATES: [JobState; 3] = [JobState::Completed, JobState::Discarded, JobState::Cancelled];

// A job parked behind the head of its concurrency key (see `queue::lane`) is available to its users.
crate::text_enum::text_enum!(JobState as "job state" {
    Scheduled = "scheduled",
    Available = "available" | "parked",
    Running = "running",
    Retryable = "retryable",
    Completed = "completed",
    Discarded = "discarded",
    Cancelled = "cancelled",
});

impl JobState {
    /// Whether the job has ended.
    pub fn is_finished(self) -> bool {
        FINISHED_STATES.contains(&self)
    }
}

// Stored as text with a CHECK constraint (not a Postgres enum), so map through &str.
impl Type<Postgres> for JobState {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for JobState {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as Decode<Postgres>>::decode(value)?;
        Ok(s.parse()?)
    }
}

impl Encode<'_, Postgres> for JobState {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

/// A job as stored, and as the API shows it (`job` in CONTRACT §4).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    /// Id (a string in JSON).
    #[schema(value_type = String)]
    pub id: JobId,
    /// Owning account.
    #[serde(skip)]
    pub account_id: String,
    /// Queue name.
    pub queue: String,
    /// Handler kind.
    pub kind: String,
    /// Handler arguments.
    pub args: Value,
    /// Current state.
    pub state: JobState,
    /// 0 runs first.
    pub priority: i16,
    /// Attempts started so far (1 during the first run).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Earliest time to run.
    pub run_at: DateTime<Utc>,
    /// Enqueue time.
    pub created_at: DateTime<Utc>,
    /// Start of the latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// End time, once finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Handler result, once completed.
    pub result: Option<Value>,
    /// Error history, one entry per failed or cancelled attempt.
    #[sqlx(json)]
    pub errors: Vec<JobError>,
    /// Per-account deduplication key.
    pub idempotency_key: Option<String>,
    /// Jobs of one key run one at a time, in order.
    pub concurrency_key: Option<String>,
    /// Pool of the worker that ran it.
    pub pool: Option<String>,
    /// Version routed to while waiting (null = any), or that ran it.
    pub version: Option<String>,
    /// Per-job timeout override.
    pub timeout_ms: Option<i32>,
    /// W3C trace context of the request that created it.
    pub traceparent: Option<String>,
    /// Worker holding the lease.
    #[serde(skip)]
    pub lease_owner: Option<String>,
    /// Lease expiry while running.
    #[serde(skip)]
    pub leased_until: Option<DateTime<Utc>>,
}

impl Job {
    /// Opens the fields sealed at rest (args, result, error messages) in place; the account's data key must be
    /// loaded ([`crate::crypt::prepare`]). Plain values are left as they are.
    pub fn open(&mut self) -> Result<(), crate::crypt::Error> {
        let id = self.id.to_string();
        let row = [id.as_str()];
        let aad = |field| crate::crypt::Aad::new(&self.account_id, "job", &row, field);
        self.args = crate::crypt::open_json(&aad("args"), std::mem::take(&mut self.args))?;
        if let Some(r) = self.result.take() {
            self.result = Some(crate::crypt::open_json(&aad("result"), r)?);
        }
        for e in &mut self.errors {
            e.message = crate::crypt::open_text(&aad("error"), std::mem::take(&mut e.message))?;
        }
        Ok(())
    }
}

/// One entry of a job's error history.
// Written by `complete::with_error`; what `Job::open` reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// The attempt that failed or was cancelled.
    pub attempt: i32,
    /// When (RFC 3339).
    pub at: DateTime<Utc>,
    /// What went wrong.
    pub message: String,
    /// The version that ran the attempt; null for a cancellation, or when the job had none.
    #[serde(default)]
    pub version: Option<String>,
}

/// Opens every job's sealed fields (see [`Job::open`]), loading each account's data key first.
pub(crate) async fn open_jobs(jobs: &mut [Job]) -> Result<(), crate::crypt::Error> {
    if crate::crypt::enabled() {
        let mut last: Option<&str> = None;
        for j in jobs.iter() {
            if last != Some(j.account_id.as_str()) {
                crate::crypt::prepare(&j.account_id).await?;
                last = Some(j.account_id.as_str());
            }
        }
    }
    jobs.iter_mut().try_for_each(Job::open)
}

/// Seals a job's value of `field` (`args`, `result`, `error`) for storage; see [`Job::open`].
pub(crate) fn seal_json(account: &str, id: i64, field: &str, v: &Value) -> Result<Value, crate::crypt::Error> {
    let id = id.to_string();
    crate::crypt::seal_json(&crate::crypt::Aad::new(account, "job", &[id.as_str()], field), v)
}

/// A waiting job (`available`, `scheduled` or `retryable`), for statements that find jobs by id: said by the states
/// it is not, so that the planner cannot use the claim index (whose predicate is those three states) for them.
/// That index holds every waiting job of a queue; on statistics taken while it was nearly empty, a lookup of a few
/// ids through it read all of them.
pub(crate) const WAITING_BY_ID: &str = "job.state not in ('running', 'completed', 'discarded', 'cancelled')";

/// `{column} = any(array[{id}])`: how a statement joins `job` by id to rows it already holds (a lease list, a CTE).
///
/// Unlike `=` it is no equijoin, so the planner can neither walk `job_pkey` in order for a merge join nor scan
/// `job` to hash on it: it probes the key once per row, whatever the statistics say. Statistics taken while the
/// queue was briefly empty call `job` empty and make such a walk look cheapest; under a snapshot held open it reads
/// every row version written since, and one completion ran for minutes.
pub(crate) fn by_id(column: &str, id: &str) -> String {
    format!("{column} = any(array[{id}])")
}

/// Columns of [`Job`], in one place so every `returning` clause agrees.
pub(crate) const JOB_COLUMNS: &str = "id, account_id, queue, kind, args, state, priority, attempt, max_attempts, \
    run_at, created_at, started_at, finished_at, result, errors, idempotency_key, concurrency_key, pool, version, \
    timeout_ms, traceparent, lease_owner, leased_until";

/// [`JOB_COLUMNS`] qualified by `table`, for statements that join other tables.
pub(crate) fn job_columns_of(table: &str) -> String {
    JOB_COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A job to enqueue. Build with [`NewJob::new`] and the builder methods.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Handler kind.
    pub kind: String,
    /// Handler arguments.
    pub args: Value,
    /// Queue name.
    pub queue: String,
    /// 0..=9, 0 first.
    pub priority: i16,
    /// Earliest run time; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Timeout override.
    pub timeout_ms: Option<i32>,
    /// Per-account deduplication key.
    pub idempotency_key: Option<String>,
    /// Payload fingerprint compared on a key replay; computed from the job when `None`.
    pub fingerprint: Option<Vec<u8>>,
    /// Ordered-exclusion key.
    pub concurrency_key: Option<String>,
    /// Version this job is routed to (`None` = any worker of the pool).
    pub version: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer-ish path, e.g. `/priority`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every invalid field of one input, shown as `path: message; path: message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::ops::Deref for FieldErrors {
    type Target = [FieldError];
    fn deref(&self) -> &[FieldError] {
        &self.0
    }
}

impl From<Vec<FieldError>> for FieldErrors {
    fn from(v: Vec<FieldError>) -> Self {
        FieldErrors(v)
    }
}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        FieldErrors(vec![e])
    }
}

impl From<FieldErrors> for Vec<FieldError> {
    fn from(e: FieldErrors) -> Self {
        e.0
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A JSON number as an integer, the way JSON Schema reads `integer`: `8` and `8.0` alike, `8.5` not.
pub fn json_integer(v: &serde_json::Value) -> Option<i64> {
    let n = v.as_number()?;
    n.as_i64().or_else(|| {
        // 2^63 as f64: every integral float strictly inside ±2^63 converts exactly.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < LIMIT)
            .map(|f| f as i64)
    })
}

impl FieldError {
    /// Builds a field error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl NewJob {
    /// A job of `kind` with `args` and the contract's defaults (queue `default`, priority 5, 20 attempts).
    pub fn new(kind: impl Into<String>, args: Value) -> Self {
        NewJob {
            kind: kind.into(),
            args,
            queue: "default".to_owned(),
            priority: 5,
            run_at: None,
            max_attempts: 20,
            timeout_ms: None,
            idempotency_key: None,
            fingerprint: None,
            concurrency_key: None,
            version: None,
            traceparent: None,
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = q.into();
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, p: i16) -> Self {
        self.priority = p;
        self
    }

    /// Sets the earliest run time.
    pub fn run_at(mut self, t: DateTime<Utc>) -> Self {
        self.run_at = Some(t);
        self
    }

    /// Sets the attempts allowed.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the timeout.
    pub fn timeout_ms(mut self, ms: i32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }

    /// Sets the concurrency key.
    pub fn concurrency_key(mut self, k: impl Into<String>) -> Self {
        self.concurrency_key = Some(k.into());
        self
    }

    /// Sets the trace context.
    pub fn traceparent(mut self, t: impl Into<String>) -> Self {
        self.traceparent = Some(t.into());
        self
    }

    /// Checks the fields the schema would refuse, naming each.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.kind.is_empty() || self.kind.len() > 255 {
            errs.push(FieldError::new("/kind", "must be 1 to 255 characters"));
        }
        if self.queue.is_empty() || self.queue.len() > 255 {
            errs.push(FieldError::new("/queue", "must be 1 to 255 characters"));
        }
        if !(0..=9).contains(&self.priority) {
            errs.push(FieldError::new("/priority", "must be between 0 and 9"));
        }
        if self.max_attempts < 1 {
            errs.push(FieldError::new("/max_attempts", "must be at least 1"));
        }
        if matches!(self.timeout_ms, Some(t) if t <= 0) {
            errs.push(FieldError::new("/timeout_ms", "must be positive"));
        }
        if matches!(&self.idempotency_key, Some(k) if k.is_empty() || k.len() > 255) {
            errs.push(FieldError::new("/idempotency_key", "must be 1 to 255 characters"));
        }
        if matches!(&self.concurrency_key, Some(k) if k.is_empty() || k.len() > 255) {
            errs.push(FieldError::new("/concurrency_key", "must be 1 to 255 characters"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state round-trips through its database spelling.
    #[test]
    fn state_spelling_round_trips() {
        for s in ACTIVE_STATES.iter().chain(FINISHED_STATES.iter()) {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), Value::String(s.as_str().into()));
        }
        assert!("dead".parse::<JobState>().is_err());
    }

    /// Validation names every bad field at once.
    #[test]
    fn validate_lists_every_problem() {
        let mut j = NewJob::new("", Value::Null).priority(12).max_attempts(0);
        j.queue = String::new();
        let errs = j.validate().unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/kind", "/queue", "/priority", "/max_attempts"]);
        assert!(NewJob::new("noop", Value::Null).validate().is_ok());
    }

    /// Ids serialize as strings.
    #[test]
    fn job_id_is_a_string_in_json() {
        assert_eq!(serde_json::to_string(&JobId(42)).unwrap(), "\"42\"");
    }
}
