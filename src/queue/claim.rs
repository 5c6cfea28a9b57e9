//! Claiming: one statement takes up to N runnable jobs of one queue and leases them.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::PgExecutor;

use super::types::JOB_COLUMNS;
use super::{Job, JobId, Result};
use crate::tenancy::AccountId;

/// The rules every claim applies to a row `r` beyond its own selection: its account has not paused its queue,
/// and no earlier unfinished job of its concurrency key exists (a future scheduled one does not block).
fn turn_has_come(r: &str) -> String {
    format!(
        r#"not exists (
              select 1 from queue_pause p where p.account_id = {r}.account_id and p.queue = {r}.queue
          )
          and ({r}.concurrency_key is null or not exists (
              select 1
              from job e
              where e.account_id = {r}.account_id
                and e.concurrency_key = {r}.concurrency_key
                and e.id < {r}.id
                and e.state in ('available', 'scheduled', 'retryable', 'running')
                and (e.state <> 'scheduled' or e.run_at <= now())
          ))"#
    )
}

/// The lease a claim takes: `running`, one more attempt, until `lease` seconds from now, held by `owner`.
fn lease(lease: &str, owner: &str) -> String {
    format!(
        "state = 'running', attempt = job.attempt + 1, started_at = now(), \
         leased_until = now() + make_interval(secs => {lease}), lease_owner = {owner}"
    )
}

/// `job.`-qualified result columns.
fn returning() -> String {
    JOB_COLUMNS
        .split(", ")
        .map(|c| format!("job.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        with candidate as (
            select j.id
            from job j
            where j.state in ('available', 'scheduled', 'retryable')
              and j.queue = $1
              and j.run_at <= now()
              and j.kind = any($2)
              and (j.version is null or j.version = $3)
              -- a retired version claims nothing (evaluated once per statement: it does not depend on the row)
              and not exists (
                  select 1 from pool_version v where v.pool = $7 and v.version = $3 and v.role = 'retired'
              )
              and {turn}
            order by j.priority, j.run_at, j.id
            limit $4
            for update skip locked
        )
        update job
        set {lease},
            pool = $7,
            version = $3
        from candidate
        where job.id = candidate.id
        returning {cols}
        "#,
        turn = turn_has_come("j"),
        lease = lease("$5", "$6"),
        cols = returning()
    )
});

static CLAIM_ONE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        update job
        set {lease}
        where job.id = $1
          and job.account_id = $2
          and job.state in ('available', 'scheduled', 'retryable')
          and job.run_at <= now()
          and {turn}
        returning {cols}
        "#,
        turn = turn_has_come("job"),
        lease = lease("$4", "$3"),
        cols = returning()
    )
});

/// Claims one specific job of `account` for `owner` (the API node running a sync event inline), under the same
/// rules as [`claim`] but for routing: it must be due, its queue not paused, and no earlier unfinished job of its
/// concurrency key may exist. `None` when a worker has it already or it must wait its turn.
pub async fn claim_one<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    id: JobId,
    owner: &str,
    lease: Duration,
) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(CLAIM_ONE_SQL.as_str())
        .bind(id.0)
        .bind(account.as_str())
        .bind(owner)
        .bind(lease.as_secs_f64())
        .fetch_optional(exec)
        .await?)
}

static CLAIM_NEXT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        update job
        set {lease}
        where job.id = (
                select n.id
                from job n
                where n.account_id = $1
                  and n.concurrency_key = $2
                  and n.id > $3
                  and n.state in ('available', 'scheduled', 'retryable')
                  and (n.state <> 'scheduled' or n.run_at <= now())
                order by n.id
                limit 1
            )
          and job.state in ('available', 'scheduled', 'retryable')
          and job.run_at <= now()
          and job.kind = $4
          and (job.version is null or job.version = $7)
          and {turn}
        returning {cols}
        "#,
        turn = turn_has_come("job"),
        lease = lease("$6", "$5"),
        cols = returning()
    )
});

/// Claims the job that follows `after` in its concurrency key, if it is of `kind`, due, routed to `version` or to
/// none, and nothing earlier of the key is unfinished (as seen by `exec`'s transaction). An executor that has just
/// settled `after` in an open transaction uses it to run an entity's next events in the same transaction.
pub async fn claim_next_in_key<'e>(
    exec: impl PgExecutor<'e>,
    after: &Job,
    owner: &str,
    lease: Duration,
) -> Result<Option<Job>> {
    let Some(key) = after.concurrency_key.as_deref() else {
        return Ok(None);
    };
    Ok(sqlx::query_as::<_, Job>(CLAIM_NEXT_SQL.as_str())
        .bind(&after.account_id)
        .bind(key)
        .bind(after.id.0)
        .bind(&after.kind)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(after.version.as_deref())
        .fetch_optional(exec)
        .await?)
}

/// What a worker asks for in one claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The queue to claim from (one queue per statement keeps the claim an ordered index scan).
    pub queue: &'a str,
    /// Kinds the worker has handlers for; others wait for a worker that knows them.
    pub kinds: &'a [String],
    /// The worker's pool, recorded on the job.
    pub pool: &'a str,
    /// The worker's version: it takes jobs routed to it and unrouted ones.
    pub version: &'a str,
    /// The worker id, recorded as lease owner.
    pub worker_id: &'a str,
    /// How long the lease lasts before another worker may take the job over.
    pub lease: Duration,
    /// At most this many jobs (the worker's free slots).
    pub limit: i64,
}

/// Claims up to `limit` runnable jobs: due, not paused, of a known kind, routed to this version or to none, and
/// not blocked by an earlier unfinished job of the same concurrency key. Each claimed job is `running`, its
/// `attempt` bumped and its lease set.
pub async fn claim<'e>(exec: impl PgExecutor<'e>, req: &ClaimRequest<'_>) -> Result<Vec<Job>> {
    if req.limit <= 0 {
        return Ok(Vec::new());
    }
    // The locking select lives in a CTE: as a plain subquery the planner may lock more rows than the limit.
    // `persistent(false)` sends an unnamed statement, planned with the actual limit every time: a cached generic
    // plan can flip to a full scan once statistics change.
    let jobs = sqlx::query_as::<_, Job>(CLAIM_SQL.as_str())
        .persistent(false)
        .bind(req.queue)
        .bind(req.kinds)
        .bind(req.version)
        .bind(req.limit)
        .bind(req.lease.as_secs_f64())
        .bind(req.worker_id)
        .bind(req.pool)
        .fetch_all(exec)
        .await?;
    Ok(jobs)
}
