//! Jobs as users see them: read, list, cancel, retry; queue pause and resume. Every query names its account.

use std::sync::LazyLock;

use sqlx::{PgConnection, PgExecutor};

use super::complete::ROUTED_AFRESH;
use super::history::{append_history, finished_row, STORED_COLUMNS};
use super::lane::{member, release_after};
use super::stats::count_after;
use super::types::{job_columns_of, open_jobs, JOB_COLUMNS};
use super::{Error, Job, JobId, Result};
use crate::tenancy::AccountId;

// A job is in one table or the other, never both (it moves in one statement), and one statement sees either.
static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select {JOB_COLUMNS} from job where account_id = $1 and id = $2 \
         union all \
         select {JOB_COLUMNS} from job_history where account_id = $1 and id = $2 \
         limit 1"
    )
});

/// Reads one job of the account.
pub async fn get<'e>(exec: impl PgExecutor<'e>, account: &AccountId, id: JobId) -> Result<Job> {
    let mut job = sqlx::query_as::<_, Job>(GET_SQL.as_str())
        .bind(account.as_str())
        .bind(id)
        .fetch_optional(exec)
        .await?
        .ok_or(Error::NotFound { id })?;
    open_jobs(std::slice::from_mut(&mut job)).await?;
    Ok(job)
}

static GET_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select {JOB_COLUMNS} from job where account_id = $1 and id = any($2) \
         union all \
         select {JOB_COLUMNS} from job_history where account_id = $1 and id = any($2)"
    )
});

/// Reads several jobs of the account in one round trip, in the order of `ids` (ids not found are left out).
pub async fn get_many<'e>(exec: impl PgExecutor<'e>, account: &AccountId, ids: &[JobId]) -> Result<Vec<Job>> {
    let raw: Vec<i64> = ids.iter().map(|i| i.0).collect();
    let mut found: std::collections::HashMap<JobId, Job> = sqlx::query_as::<_, Job>(GET_MANY_SQL.as_str())
        .bind(account.as_str())
        .bind(&raw)
        .fetch_all(exec)
        .await?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let mut jobs: Vec<Job> = ids.iter().filter_map(|id| found.remove(id)).collect();
    open_jobs(&mut jobs).await?;
    Ok(jobs)
}

static CANCEL_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        with done as (
            delete from job
            where account_id = $1
              and id = $2
              and state in ('scheduled', 'available', 'retryable', 'running', 'parked')
            returning {row}, true as finished
        ){history}{release}{count}
        select {JOB_COLUMNS} from done
        "#,
        row = finished_row(&[
            ("state", "'cancelled'"),
            ("finished_at", "now()"),
            ("leased_until", "null::timestamptz"),
        ]),
        history = append_history("done"),
        release = release_after("done"),
        count = count_after("done", &[("cancelled", "count(*)")])
    )
});

/// Cancels a job that has not finished. A running job's worker loses its lease: its outcome is refused.
pub async fn cancel(conn: &mut PgConnection, account: &AccountId, id: JobId) -> Result<Job> {
    transition(conn, account, id, CANCEL_SQL.as_str(), "cancel").await
}

/// Runs a state change that matches only allowed states; when it matches nothing, says why: the job is missing
/// or in a state that does not allow `action`.
async fn transition(
    conn: &mut PgConnection,
    account: &AccountId,
    id: JobId,
    sql: &str,
    action: &'static str,
) -> Result<Job> {
    let job: Option<Job> = sqlx::query_as(sql)
        .bind(account.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match job {
        Some(mut j) => {
            open_jobs(std::slice::from_mut(&mut j)).await?;
            Ok(j)
        }
        None => {
            let current = get(&mut *conn, account, id).await?;
            Err(Error::InvalidState {
                id,
                state: current.state,
                action,
            })
        }
    }
}

static RETRY_SQL: LazyLock<String> = LazyLock::new(|| {
    let cols = job_columns_of("job");
    // its lane has moved on meanwhile: it waits for the jobs there, and runs first after them
    let lane_busy = |j: &str| {
        format!(
            r#"{j}.concurrency_key is not null and exists (
                   select 1 from job e
                   where e.account_id = {j}.account_id
                     and e.concurrency_key = {j}.concurrency_key
                     and e.id <> {j}.id
                     and e.state in ('available', 'scheduled', 'retryable', 'running', 'parked')
                     and {member}
               )"#,
            member = member("e")
        )
    };
    format!(
        r#"
        -- a discarded or cancelled job comes back from history
        with unfinished as (
            delete from job_history h
            where h.account_id = $1
              and h.id = $2
              and h.state in ('discarded', 'cancelled')
            returning h.*
        ),
        revived as (
            insert into job ({STORED_COLUMNS})
            select r.id, r.account_id, r.queue, r.kind, r.args,
                   case when {revived_lane_busy} then 'parked' else 'available' end,
                   r.priority, r.attempt, greatest(r.max_attempts, r.attempt + 1), now(), r.created_at,
                   r.started_at, null, r.lease_owner, null, r.timeout_ms, r.result, r.errors, r.idempotency_key,
                   r.fingerprint, r.concurrency_key, r.pool,
                   route_version(r.queue, coalesce(r.concurrency_key, r.id::text)), r.traceparent
            from unfinished r
            returning {JOB_COLUMNS}
        ),
        -- a retryable or scheduled one is still in the hot table
        old as (
            select id, account_id, queue, state, finished_at
            from job
            where account_id = $1
              and id = $2
              and state in ('discarded', 'cancelled', 'retryable', 'scheduled')
            for update
        ),
        retried as (
            update job
            set state = case when {lane_busy} then 'parked' else 'available' end,
                run_at = now(),
                finished_at = null,
                max_attempts = greatest(job.max_attempts, job.attempt + 1),
                version = {ROUTED_AFRESH}
            from old
            where job.id = $2
              and job.id = old.id
            returning {cols}
        ),
        -- no longer finished: out of the count of the minute it finished in, while that minute is still counted
        stat_counted as (
            insert into job_stat_delta (account_id, queue, minute, discarded, cancelled)
            select o.account_id, o.queue, date_trunc('minute', o.finished_at),
                   -(o.state = 'discarded')::int, -(o.state = 'cancelled')::int
            from (select account_id, queue, state, finished_at from old
                  union all
                  select account_id, queue, state, finished_at from unfinished) o
            where o.state in ('discarded', 'cancelled')
              and exists (
                  select 1 from job_stat s
                  where s.account_id = o.account_id
                    and s.queue = o.queue
                    and s.minute = date_trunc('minute', o.finished_at)
                  union all
                  select 1 from job_stat_delta d
                  where d.account_id = o.account_id
                    and d.queue = o.queue
                    and d.minute = date_trunc('minute', o.finished_at)
              )
        )
        select {JOB_COLUMNS} from retried
        union all
        select {JOB_COLUMNS} from revived
        "#,
        revived_lane_busy = lane_busy("r"),
        lane_busy = lane_busy("job"),
    )
});

/// Makes a discarded, cancelled, retryable or scheduled job available now; one with its attempts used up gets one
/// more. A job of a concurrency key whose lane has other members waits behind them (parked), under the key's
/// enqueue lock, so the lane keeps one head.
pub async fn retry(conn: &mut PgConnection, account: &AccountId, id: JobId) -> Result<Job> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let key: Option<Option<String>> = sqlx::query_scalar(
        "select concurrency_key from job where account_id = $1 and id = $2 \
         union all \
         select concurrency_key from job_history where account_id = $1 and id = $2",
    )
    .bind(account.as_str())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(Some(key)) = &key {
        super::lane::lock_concurrency_keys(&mut tx, account, &[key.as_str()], super::KeyLocks::Exclusive).await?;
    }
    let job = transition(&mut tx, account, id, RETRY_SQL.as_str(), "retry").await?;
    tx.commit().await?;
    Ok(job)
}

/// Pauses a queue for the account: its jobs wait, running ones finish. Pausing twice is harmless.
pub async fn pause<'e>(exec: impl PgExecutor<'e>, account: &AccountId, queue: &str) -> Result<()> {
    sqlx::query(
        r#"
        insert into queue_pause (account_id, queue)
        values ($1, $2)
        on conflict (account_id, queue) do nothing
        "#,
    )
    .bind(account.as_str())
    .bind(queue)
    .execute(exec)
    .await?;
    Ok(())
}

/// Resumes a paused queue. Resuming a running queue is harmless.
pub async fn resume<'e>(exec: impl PgExecutor<'e>, account: &AccountId, queue: &str) -> Result<()> {
    sqlx::query("delete from queue_pause where account_id = $1 and queue = $2")
        .bind(account.as_str())
        .bind(queue)
        .execute(exec)
        .await?;
    Ok(())
}
