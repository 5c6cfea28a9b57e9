//! Settling running jobs: complete, fail, snooze, cancel, hand back, and heartbeat. Every statement is fenced by
//! `(id, attempt, state = 'running')` and returns the ids it changed, so the caller learns which leases were lost.
//! The batch forms take arrays, paired through `job_leases` (see its migration) and joined by [`LEASED`]: one round
//! trip and one primary-key probe per job settle a whole batch.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use super::history::{append_history, finished_row};
use super::lane::{release_after, release_after_handing_off};
use super::stats::count_after;
use super::types::JOB_COLUMNS;
use super::types::{by_id, WAITING_BY_ID};
use super::{Error, JobId, Result};

/// A successful attempt.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The attempt that held the lease.
    pub attempt: i32,
    /// The handler's result (`Value::Null` for none).
    pub result: Value,
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The job.
    pub id: JobId,
    /// The attempt that held the lease.
    pub attempt: i32,
    /// Why it failed; recorded in the job's error history.
    pub message: String,
    /// A permanent failure discards the job whatever attempts remain.
    pub permanent: bool,
    /// When to run again if attempts remain.
    pub retry_at: DateTime<Utc>,
}

/// A snooze: run again later without using up the attempt.
#[derive(Debug, Clone)]
pub struct Snooze {
    /// The job.
    pub id: JobId,
    /// The attempt that held the lease.
    pub attempt: i32,
    /// How long to wait.
    pub delay: Duration,
}

/// The condition pairing `job` with `job_leases(..) as r`: each job at its leased attempt, probed by id (see
/// [`by_id`]).
static LEASED: LazyLock<String> = LazyLock::new(|| format!("{} and job.attempt = r.attempt", by_id("job.id", "r.id")));

/// A job's version when it waits again: routed afresh (null outside a rollout), so it never waits for a retired
/// version.
pub(crate) const ROUTED_AFRESH: &str = "route_version(job.queue, coalesce(job.concurrency_key, job.id::text))";

/// Longest error message kept per attempt; handlers sometimes put whole response bodies in errors.
const MAX_ERROR_LEN: usize = 4096;

/// Cuts an error message to [`MAX_ERROR_LEN`]; a sealed one was cut before it was sealed, and must stay whole.
pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN || crate::crypt::is_sealed_text(s) {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn ids_attempts<'a>(items: impl Iterator<Item = (&'a JobId, &'a i32)>) -> (Vec<i64>, Vec<i32>) {
    items.map(|(id, a)| (id.0, *a)).unzip()
}

/// The ids, attempts and results (JSON null as SQL null) of completions, as the arrays the statements take.
fn completion_arrays(items: &[Completion]) -> (Vec<i64>, Vec<i32>, Vec<Option<&Value>>) {
    let (ids, attempts) = ids_attempts(items.iter().map(|c| (&c.id, &c.attempt)));
    let results = items
        .iter()
        .map(|c| (!c.result.is_null()).then_some(&c.result))
        .collect();
    (ids, attempts, results)
}

fn to_ids(rows: Vec<i64>) -> Vec<JobId> {
    rows.into_iter().map(JobId).collect()
}

/// Marks jobs completed; returns the ids whose lease was still held (the others were fenced off).
pub async fn complete_many<'e>(exec: impl PgExecutor<'e>, items: &[Completion]) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts, results) = completion_arrays(items);
    let rows: Vec<i64> = sqlx::query_scalar(COMPLETE_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&results)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static COMPLETE_SQL: LazyLock<String> = LazyLock::new(|| completion_sql(&release_after("done"), "select id from done"));

/// Deletes the jobs of `job_leases($1, $2)` (each at its attempt) that satisfy `cond`, returning `row`.
///
/// [`LEASED`] keeps the join a probe per job whatever the statistics say, so the statements are prepared once per
/// connection like any other: even a plan made while `job` looked empty probes it by id (planning them afresh for
/// every call cost a sync event about 1 ms).
fn leased_delete(cond: &str, row: &str) -> String {
    format!(
        "delete from job using job_leases($1, $2) as r where {leased} and {cond} returning {row}",
        leased = *LEASED
    )
}

/// Updates the jobs of `job_leases($1, $2)` (each at its attempt) that are running and satisfy `cond` with `set`,
/// returning `row` (see [`leased_delete`]).
fn leased_update(set: &str, cond: &str, row: &str) -> String {
    format!(
        "update job set {set} from job_leases($1, $2) as r \
         where {leased} and job.state = 'running' and {cond} returning {row}",
        leased = *LEASED
    )
}

/// A statement that finishes the leased jobs satisfying `cond` with `row` (see [`finished_row`]): history, the
/// lane release `release` (a fragment of [`super::lane`]), the count `counted` (see [`count_after`]), then `tail`.
fn finishing_sql(cond: &str, row: &str, counted: (&str, &str), release: &str, tail: &str) -> String {
    format!(
        r#"
        with done as ({delete}){history}{release}{count}
        {tail}
        "#,
        delete = leased_delete(cond, &format!("{row}, true as finished")),
        history = append_history("done"),
        count = count_after("done", &[counted])
    )
}

/// A completion of leased jobs, with `release` and `tail` as in [`finishing_sql`].
fn completion_sql(release: &str, tail: &str) -> String {
    finishing_sql(
        "job.state = 'running'",
        &completed_row(),
        ("completed", "count(*)"),
        release,
        tail,
    )
}

/// A worker's offer to run the next jobs of the lanes its completions release (see [`complete_handing_off`]).
#[derive(Debug, Clone, Copy)]
pub struct HandOff<'a> {
    /// The worker, as the lease owner.
    pub worker_id: &'a str,
    /// How long the lease lasts.
    pub lease: Duration,
    /// The kinds it runs.
    pub kinds: &'a [String],
    /// The queues it serves.
    pub queues: &'a [String],
    /// Its pool.
    pub pool: &'a str,
    /// Its version.
    pub version: &'a str,
    /// The most jobs it takes (its free permits).
    pub limit: i64,
}

/// [`complete_many`] that also hands the worker the next job of each lane its completions release, leased to it
/// in the same statement, as a claim would have leased it (see [`super::lane`]): a busy key's jobs follow each
/// other without a claim and its commit in between. Jobs the worker cannot run become available as usual.
/// Returns the ids completed and the jobs handed over (in lane order).
pub async fn complete_handing_off(
    conn: &mut PgConnection,
    items: &[Completion],
    offer: &HandOff<'_>,
) -> Result<(Vec<JobId>, Vec<super::Job>)> {
    if items.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (ids, attempts, results) = completion_arrays(items);
    let rows: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(COMPLETE_HANDING_OFF_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&results)
        .bind(offer.worker_id)
        .bind(offer.lease.as_secs_f64())
        .bind(offer.kinds)
        .bind(offer.queues)
        .bind(offer.pool)
        .bind(offer.version)
        .bind(offer.limit)
        .fetch_all(&mut *conn)
        .await?;
    let done: Vec<JobId> = rows.iter().filter_map(|r| r.0).map(JobId).collect();
    let handed: Vec<i64> = rows.iter().filter_map(|r| r.1).collect();
    if handed.is_empty() {
        return Ok((done, Vec::new()));
    }
    // Leased to this worker by the statement above: nobody else changes them until it lets go or its lease ends.
    let jobs: Vec<super::Job> = sqlx::query_as(&format!(
        "select {JOB_COLUMNS} from job where id = any($1) and lease_owner = $2 and state = 'running' order by id"
    ))
    .bind(&handed)
    .bind(offer.worker_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok((done, jobs))
}

static COMPLETE_HANDING_OFF_SQL: LazyLock<String> = LazyLock::new(|| {
    completion_sql(
        &release_after_handing_off("done", 4),
        "select id, null::bigint from done union all select null, id from lane_released where handed",
    )
});

/// The `returning` list of a completion (see [`finished_row`]).
fn completed_row() -> String {
    finished_row(&[
        ("state", "'completed'"),
        ("finished_at", "now()"),
        ("result", "($3::jsonb[])[r.ord]"),
        ("leased_until", "null::timestamptz"),
    ])
}

/// Completes jobs that the caller's transaction holds locked without a lease ([`super::lock_following`],
/// [`super::lock_ids`]), each at the attempt it was read with: it takes its attempt and finishes at once, with
/// `owner` recorded as the lease owner that ran it. Returns the ids completed; a job no longer waiting is left out.
pub async fn complete_locked<'e>(exec: impl PgExecutor<'e>, items: &[Completion], owner: &str) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts, results) = completion_arrays(items);
    let rows: Vec<i64> = sqlx::query_scalar(COMPLETE_LOCKED_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&results)
        .bind(owner)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static COMPLETE_LOCKED_SQL: LazyLock<String> = LazyLock::new(|| {
    finishing_sql(
        WAITING_BY_ID,
        &finished_row(&[
            ("state", "'completed'"),
            ("attempt", "job.attempt + 1"),
            ("started_at", "now()"),
            ("finished_at", "now()"),
            ("result", "($3::jsonb[])[r.ord]"),
            ("lease_owner", "$4::text"),
        ]),
        ("completed", "count(*)"),
        &release_after("done"),
        "select id from done",
    )
});

/// Completes one job inside the caller's transaction, so an engine handler's effects commit with the completion
/// or not at all. Errors with [`Error::LeaseLost`] when the attempt no longer holds the lease.
pub async fn complete_in(conn: &mut PgConnection, id: JobId, attempt: i32, result: Value) -> Result<()> {
    let done = complete_many(&mut *conn, &[Completion { id, attempt, result }]).await?;
    if done.is_empty() {
        return Err(Error::LeaseLost { id, attempt });
    }
    Ok(())
}

/// Records failed attempts: each job becomes `retryable` at its `retry_at`, or `discarded` when the failure is
/// permanent or its attempts are used up. Returns the ids changed.
pub async fn fail_many<'e>(exec: impl PgExecutor<'e>, items: &[Failure]) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = ids_attempts(items.iter().map(|f| (&f.id, &f.attempt)));
    let messages: Vec<String> = items.iter().map(|f| truncate(&f.message)).collect();
    let permanent: Vec<bool> = items.iter().map(|f| f.permanent).collect();
    let retry_at: Vec<DateTime<Utc>> = items.iter().map(|f| f.retry_at).collect();
    let rows: Vec<i64> = sqlx::query_scalar(FAIL_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&messages)
        .bind(&permanent)
        .bind(&retry_at)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

/// The error history of `job` with one more entry for its current attempt, saying `message` (an SQL expression).
/// A failed attempt names the version that ran it (a rollout counts them); a cancellation does not.
pub(crate) fn with_error(message: &str, failed: bool) -> String {
    let version = if failed { ", 'version', job.version" } else { "" };
    format!(
        r#"job.errors || jsonb_build_array(jsonb_build_object(
            'attempt', job.attempt,
            'at', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'message', {message}{version}))"#
    )
}

static FAIL_SQL: LazyLock<String> = LazyLock::new(|| {
    let gives_up = "(($4::bool[])[r.ord] or job.attempt >= job.max_attempts)";
    let errors = with_error("($3::text[])[r.ord]", true);
    format!(
        r#"
        with retried as ({retried}),
        -- a discarded job keeps the version that ran it
        discarded as ({discarded}){rest}
        "#,
        retried = leased_update(
            &format!(
                "state = 'retryable', run_at = ($5::timestamptz[])[r.ord], errors = {errors}, leased_until = null, \
                 version = {ROUTED_AFRESH}"
            ),
            &format!("not {gives_up}"),
            "job.id, job.account_id, job.queue, job.concurrency_key, job.state"
        ),
        discarded = leased_delete(
            &format!("job.state = 'running' and {gives_up}"),
            &discarded_row(&errors)
        ),
        rest = after_failures()
    )
});

/// The `returning` list of a statement's CTE `discarded` that deletes failed jobs for good, `errors` being their
/// error history with the failure added.
pub(crate) fn discarded_row(errors: &str) -> String {
    finished_row(&[
        ("state", "'discarded'"),
        ("finished_at", "now()"),
        ("errors", errors),
        ("leased_until", "null::timestamptz"),
    ])
}

/// The end of a statement that records failed attempts, after its CTEs `retried` (an update returning `id`,
/// `account_id`, `queue`, `concurrency_key` and `state` of the jobs that will run again) and `discarded` (a delete
/// returning [`discarded_row`]): history, lanes and counts, then the ids changed.
pub(crate) fn after_failures() -> String {
    format!(
        r#",
        -- a retryable job stays its lane's head; a discarded one leaves it
        done as (
            select id, account_id, queue, concurrency_key, state, false as finished from retried
            union all
            select id, account_id, queue, concurrency_key, state, true from discarded
        ){history}{release}{count}
        select id from done"#,
        history = append_history("discarded"),
        release = release_after("done"),
        count = count_after(
            "done",
            &[
                ("discarded", "count(*) filter (where state = 'discarded')"),
                ("failed", "count(*)")
            ]
        )
    )
}

/// Puts jobs back to wait `delay` without using up the attempt. Returns the ids changed.
pub async fn snooze_many<'e>(exec: impl PgExecutor<'e>, items: &[Snooze]) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = ids_attempts(items.iter().map(|s| (&s.id, &s.attempt)));
    let delays: Vec<f64> = items.iter().map(|s| s.delay.as_secs_f64()).collect();
    let rows: Vec<i64> = sqlx::query_scalar(SNOOZE_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&delays)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static SNOOZE_SQL: LazyLock<String> = LazyLock::new(|| {
    leased_update(
        &format!(
            "state = case when ($3::float8[])[r.ord] > 0 then 'scheduled' else 'available' end, \
             run_at = now() + make_interval(secs => ($3::float8[])[r.ord]), attempt = job.attempt - 1, \
             leased_until = null, version = {ROUTED_AFRESH}"
        ),
        "true",
        "job.id",
    )
});

/// Cancels running jobs at their handler's request, recording the reason. Returns the ids changed.
pub async fn cancel_running<'e>(exec: impl PgExecutor<'e>, items: &[(JobId, i32, String)]) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = ids_attempts(items.iter().map(|(id, a, _)| (id, a)));
    let reasons: Vec<String> = items.iter().map(|(_, _, r)| truncate(r)).collect();
    let rows: Vec<i64> = sqlx::query_scalar(CANCEL_RUNNING_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(&reasons)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static CANCEL_RUNNING_SQL: LazyLock<String> = LazyLock::new(|| {
    finishing_sql(
        "job.state = 'running'",
        &finished_row(&[
            ("state", "'cancelled'"),
            ("finished_at", "now()"),
            // A sealed reason carries its `cancelled: ` inside (see `crate::crypt`).
            (
                "errors",
                &with_error(
                    "case when ($3::text[])[r.ord] like 'ordo:enc:v1:%' then ($3::text[])[r.ord] \
                     else 'cancelled: ' || ($3::text[])[r.ord] end",
                    false,
                ),
            ),
            ("leased_until", "null::timestamptz"),
        ]),
        ("cancelled", "count(*)"),
        &release_after("done"),
        "select id from done",
    )
});

/// Hands jobs back at shutdown: available at once, the attempt not used up. Returns the ids changed.
pub async fn hand_back<'e>(exec: impl PgExecutor<'e>, items: &[(JobId, i32)]) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = ids_attempts(items.iter().map(|(id, a)| (id, a)));
    let rows: Vec<i64> = sqlx::query_scalar(HAND_BACK_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static HAND_BACK_SQL: LazyLock<String> = LazyLock::new(|| {
    leased_update(
        &format!(
            "state = 'available', attempt = job.attempt - 1, run_at = least(job.run_at, now()), \
             leased_until = null, version = {ROUTED_AFRESH}"
        ),
        "true",
        "job.id",
    )
});

/// Extends the leases of running jobs; returns the ids still held (a missing id means the lease was lost).
pub async fn heartbeat<'e>(exec: impl PgExecutor<'e>, items: &[(JobId, i32)], lease: Duration) -> Result<Vec<JobId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = ids_attempts(items.iter().map(|(id, a)| (id, a)));
    let rows: Vec<i64> = sqlx::query_scalar(HEARTBEAT_SQL.as_str())
        .bind(&ids)
        .bind(&attempts)
        .bind(lease.as_secs_f64())
        .fetch_all(exec)
        .await?;
    Ok(to_ids(rows))
}

static HEARTBEAT_SQL: LazyLock<String> =
    LazyLock::new(|| leased_update("leased_until = now() + make_interval(secs => $3)", "true", "job.id"));

#[cfg(test)]
mod tests {
    use super::*;

    /// Long error messages are cut on a character boundary.
    #[test]
    fn truncate_keeps_char_boundaries() {
        let s = "é".repeat(MAX_ERROR_LEN);
        let t = truncate(&s);
        assert!(t.len() <= MAX_ERROR_LEN + "…".len());
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short"), "short");
    }
}
