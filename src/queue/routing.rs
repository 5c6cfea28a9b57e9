//! Version routing of jobs during rollouts: the writes and reads `rollout` needs on job rows (it owns no job
//! SQL itself). Routing of new jobs happens inside enqueue (`route_version`, see the migration `create_rollout`);
//! retries are routed afresh by the same function in the failure paths.

use sqlx::PgExecutor;

use super::Result;

/// Moves every not-yet-started job of `pool` routed to `from` over to `to`, in one statement (an aborted canary's
/// work goes back to stable). Running jobs are left alone: they finish where they run. Returns how many moved.
pub async fn reroute_waiting<'e>(exec: impl PgExecutor<'e>, pool: &str, from: &str, to: &str) -> Result<u64> {
    let done = sqlx::query(
        r#"
        update job
        set version = $3
        where version = $2
          and (state in ('available', 'scheduled', 'retryable')
               or (state = 'parked' and concurrency_key is not null))
          and pool_of_queue(queue) = $1
        "#,
    )
    .bind(pool)
    .bind(from)
    .bind(to)
    .execute(exec)
    .await?;
    Ok(done.rows_affected())
}

/// How many jobs of `pool` still wait routed to `version` or run on it; a draining version is retired at 0.
pub async fn routed_active<'e>(exec: impl PgExecutor<'e>, pool: &str, version: &str) -> Result<i64> {
    let n: i64 = sqlx::query_scalar(
        r#"
        select (select count(*)
                from job
                where version = $2
                  and (state in ('available', 'scheduled', 'retryable')
                       or (state = 'parked' and concurrency_key is not null))
                  and pool_of_queue(queue) = $1)
             + (select count(*)
                from job
                where leased_until is not null
                  and state = 'running'
                  and version = $2
                  and pool = $1)
        "#,
    )
    .bind(pool)
    .bind(version)
    .fetch_one(exec)
    .await?;
    Ok(n)
}

/// Outcomes of attempts run by `version` of `pool` on jobs enqueued after job id `since`: `(finished, failed)`
/// where `finished` counts completions plus failed attempts (each failure is recorded with the version that ran
/// it, also when the retry was routed elsewhere).
pub async fn version_outcomes<'e>(
    exec: impl PgExecutor<'e>,
    pool: &str,
    version: &str,
    since: i64,
) -> Result<(i64, i64)> {
    let (completed, failed): (i64, i64) = sqlx::query_as(
        r#"
        select count(*) filter (where state = 'completed' and version = $2),
               coalesce(sum((select count(*)
                              from jsonb_array_elements(errors) e
                              where e->>'version' = $2)) filter (where errors <> '[]'::jsonb), 0)::bigint
        from (select state, version, errors from job where id > $3 and pool = $1
              union all
              select state, version, errors from job_history where id > $3 and pool = $1) j
        "#,
    )
    .bind(pool)
    .bind(version)
    .bind(since)
    .fetch_one(exec)
    .await?;
    Ok((completed + failed, failed))
}

/// The last job id drawn so far (0 when none): a rollout measures its canary over jobs after it.
pub async fn last_job_id<'e>(exec: impl PgExecutor<'e>) -> Result<i64> {
    let id: Option<i64> = sqlx::query_scalar("select case when is_called then last_value end from job_id_seq")
        .fetch_one(exec)
        .await?;
    Ok(id.unwrap_or(0))
}

/// Runnable-now and running jobs of one pool version (`version` None: waiting jobs routed to no version).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct VersionDepth {
    /// The pool (of the job's queue).
    pub pool: String,
    /// The version the jobs are routed to or run on; None for unrouted waiting jobs.
    pub version: Option<String>,
    /// Runnable now (never future-scheduled work).
    pub available: i64,
    /// Held by workers.
    pub running: i64,
}

/// Depth of every pool version: runnable-now jobs by routed version and running jobs by the version running
/// them. Read by the autoscaler and `GET /api/pools`. Jobs parked behind their key's head are not runnable now:
/// however many wait behind one key, they need one worker at a time, so they add nothing to the depth.
pub async fn pool_depth<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<VersionDepth>> {
    let rows = sqlx::query_as(
        r#"
        with waiting as (
            select queue, version, count(*) as n
            from job
            where state in ('available', 'scheduled', 'retryable')
              and run_at <= now()
            group by queue, version
        ),
        running as (
            select pool, queue, version, count(*) as n
            from job
            where leased_until is not null
              and state = 'running'
            group by pool, queue, version
        ),
        merged as (
            select pool_of_queue(queue) as pool, version, n as available, 0::bigint as running from waiting
            union all
            select coalesce(pool, pool_of_queue(queue)), version, 0::bigint, n from running
        )
        select pool, version, sum(available)::bigint as available, sum(running)::bigint as running
        from merged
        group by pool, version
        order by pool, version nulls first
        "#,
    )
    .fetch_all(exec)
    .await?;
    Ok(rows)
}
