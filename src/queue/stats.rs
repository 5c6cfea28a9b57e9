//! Queue statistics per account: counts by state, what no live worker can claim, and the age of the oldest
//! runnable job.

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::PgExecutor;

use super::Result;
use crate::tenancy::AccountId;

/// One queue's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Paused for this account.
    pub paused: bool,
    /// Runnable now (including due scheduled jobs not yet promoted).
    pub available: i64,
    /// Waiting for a future `run_at`.
    pub scheduled: i64,
    /// Held by workers.
    pub running: i64,
    /// Waiting for a retry.
    pub retryable: i64,
    /// Completed within the retention window.
    pub completed: i64,
    /// Discarded within the retention window.
    pub discarded: i64,
    /// Cancelled within the retention window.
    pub cancelled: i64,
    /// Runnable, but no live worker serving the queue has a handler for the kind.
    pub unclaimable: i64,
    /// Runnable, but held back by one of the account's limits, which is full right now (CONTRACT §12).
    pub limited: i64,
    /// Age of the oldest runnable job in milliseconds, 0 when none.
    pub oldest_available_ms: i64,
}

/// Figures for every queue the account has waiting or running jobs in, or has paused. `fresh` is how recent a
/// worker's heartbeat must be for its kinds to count. The finished counts are left at 0: they come from the
/// counters, [`finished_counts`], merged in by [`with_finished`].
pub async fn queue_stats<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    fresh: Duration,
) -> Result<Vec<QueueStats>> {
    let rows = sqlx::query_as(
        r#"
        with live as (
            select queues, kinds
            from worker
            where heartbeat_at >= now() - make_interval(secs => $2)
        ),
        -- the account's limits that are full right now: their waiting jobs are held back
        full_queue as (
            select l.queue
            from account_queue_limit l
            where l.account_id = $1
              and l.max_running <= (select count(*) from job r
                                    where r.account_id = $1 and r.queue = l.queue and r.leased_until is not null)
        ),
        full_kind as (
            select k.kind
            from account_kind_limit k
            where k.account_id = $1
              and (k.max_running <= (select count(*) from job r
                                     where r.account_id = $1 and r.kind = k.kind and r.leased_until is not null)
                   or k.max_per_second <= (select coalesce(sum(s.n), 0) from account_kind_start s
                                           where s.account_id = $1 and s.kind = k.kind
                                             and s.at >= now() - interval '1 second'))
        ),
        counts as (
            select j.queue,
                   count(*) filter (where j.state in ('available', 'parked')
                                       or (j.state = 'scheduled' and j.run_at <= now())) as available,
                   count(*) filter (where j.state = 'scheduled' and j.run_at > now()) as scheduled,
                   count(*) filter (where j.state = 'running') as running,
                   count(*) filter (where j.state = 'retryable') as retryable,
                   0::bigint as completed,
                   0::bigint as discarded,
                   0::bigint as cancelled,
                   count(*) filter (where j.state in ('available', 'scheduled', 'retryable', 'parked')
                                      and j.run_at <= now()
                                      and not exists (
                                          select 1 from live w where j.queue = any(w.queues) and j.kind = any(w.kinds)
                                      )) as unclaimable,
                   count(*) filter (where j.state in ('available', 'scheduled', 'retryable')
                                      and j.run_at <= now()
                                      and (j.queue in (select queue from full_queue)
                                           or j.kind in (select kind from full_kind))) as limited,
                   coalesce(
                       (extract(epoch from now() - min(j.run_at) filter (
                           where j.state in ('available', 'scheduled', 'retryable', 'parked') and j.run_at <= now()
                       )) * 1000)::bigint,
                       0) as oldest_available_ms
            from job j
            where j.account_id = $1
              -- Waiting and running jobs only, through their partial indexes: history never slows this down.
              and (j.state in ('available', 'scheduled', 'retryable')
                   or j.leased_until is not null
                   or (j.state = 'parked' and j.concurrency_key is not null))
            group by j.queue
        ),
        queues as (
            select queue from counts
            union
            select queue from queue_pause where account_id = $1
        )
        select q.queue,
               exists (select 1 from queue_pause p where p.account_id = $1 and p.queue = q.queue) as paused,
               coalesce(c.available, 0) as available,
               coalesce(c.scheduled, 0) as scheduled,
               coalesce(c.running, 0) as running,
               coalesce(c.retryable, 0) as retryable,
               coalesce(c.completed, 0) as completed,
               coalesce(c.discarded, 0) as discarded,
               coalesce(c.cancelled, 0) as cancelled,
               coalesce(c.unclaimable, 0) as unclaimable,
               coalesce(c.limited, 0) as limited,
               coalesce(c.oldest_available_ms, 0) as oldest_available_ms
        from queues q
        left join counts c on c.queue = q.queue
        order by q.queue
        "#,
    )
    .bind(account.as_str())
    .bind(fresh.as_secs_f64())
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// Finished jobs of one queue of an account, within the retention window.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FinishedCounts {
    /// Queue name.
    pub queue: String,
    /// Completed jobs.
    pub completed: i64,
    /// Discarded jobs.
    pub discarded: i64,
    /// Cancelled jobs.
    pub cancelled: i64,
}

/// Counts the account's finished jobs per queue within the retention window, from the counters (`job_stat`): exact
/// at the time of the call, and no read of job history.
pub async fn finished_counts<'e>(exec: impl PgExecutor<'e>, account: &AccountId) -> Result<Vec<FinishedCounts>> {
    Ok(sqlx::query_as(
        r#"
        select queue,
               sum(completed)::bigint as completed,
               sum(discarded)::bigint as discarded,
               sum(cancelled)::bigint as cancelled
        from (
            select queue, completed, discarded, cancelled from job_stat where account_id = $1
            union all
            select queue, completed, discarded, cancelled from job_stat_delta where account_id = $1
        ) c
        group by queue
        having sum(completed) <> 0 or sum(discarded) <> 0 or sum(cancelled) <> 0
        order by queue
        "#,
    )
    .bind(account.as_str())
    .fetch_all(exec)
    .await?)
}

/// One minute of one queue's throughput.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Throughput {
    /// Queue name.
    pub queue: String,
    /// The minute (its start).
    pub minute: DateTime<Utc>,
    /// Jobs enqueued.
    pub enqueued: i64,
    /// Jobs completed.
    pub completed: i64,
    /// Jobs discarded.
    pub discarded: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// Failed attempts (retried or not).
    pub failed: i64,
}

/// The account's per-minute counts since `since`, oldest first, per queue (`queue` narrows to one); minutes with
/// nothing counted are left out.
pub async fn throughput<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    queue: Option<&str>,
    since: DateTime<Utc>,
) -> Result<Vec<Throughput>> {
    Ok(sqlx::query_as(
        r#"
        select queue, minute,
               sum(enqueued)::bigint as enqueued, sum(completed)::bigint as completed,
               sum(discarded)::bigint as discarded, sum(cancelled)::bigint as cancelled,
               sum(failed)::bigint as failed
        from (
            select queue, minute, enqueued, completed, discarded, cancelled, failed
            from job_stat
            where account_id = $1 and minute >= date_trunc('minute', $3::timestamptz)
            union all
            select queue, minute, enqueued, completed, discarded, cancelled, failed
            from job_stat_delta
            where account_id = $1 and minute >= date_trunc('minute', $3::timestamptz)
        ) c
        where $2::text is null or queue = $2
        group by queue, minute
        order by minute, queue
        "#,
    )
    .bind(account.as_str())
    .bind(queue)
    .bind(since)
    .fetch_all(exec)
    .await?)
}

/// A CTE, comma first, that counts what a statement did: one `job_stat_delta` row per account and queue of the
/// rows of `done` (an earlier CTE returning `account_id` and `queue`), with each `(column, aggregate)` of
/// `counts` (e.g. `("completed", "count(*)")`), in the statement's minute.
pub(crate) fn count_after(done: &str, counts: &[(&str, &str)]) -> String {
    let cols: Vec<&str> = counts.iter().map(|(c, _)| *c).collect();
    let aggs: Vec<&str> = counts.iter().map(|(_, a)| *a).collect();
    format!(
        r#",
        stat_counted as (
            insert into job_stat_delta (account_id, queue, minute, {cols})
            select account_id, queue, date_trunc('minute', now()), {aggs}
            from {done}
            group by account_id, queue
        )"#,
        cols = cols.join(", "),
        aggs = aggs.join(", ")
    )
}

/// Folds the appended counts into one row per account, queue and minute (run by maintenance); returns the deltas
/// folded. Readers sum both tables, so a fold changes no count.
pub async fn fold_stats<'e>(exec: impl PgExecutor<'e>) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(
        r#"
        with moved as (
            delete from job_stat_delta
            returning account_id, queue, minute, enqueued, completed, discarded, cancelled, failed
        ),
        folded as (
            insert into job_stat as s (account_id, queue, minute, enqueued, completed, discarded, cancelled, failed)
            select account_id, queue, minute, sum(enqueued), sum(completed), sum(discarded), sum(cancelled),
                   sum(failed)
            from moved
            group by account_id, queue, minute
            on conflict (account_id, queue, minute) do update
            set enqueued = s.enqueued + excluded.enqueued,
                completed = s.completed + excluded.completed,
                discarded = s.discarded + excluded.discarded,
                cancelled = s.cancelled + excluded.cancelled,
                failed = s.failed + excluded.failed
        )
        select count(*) from moved
        "#,
    )
    .fetch_one(exec)
    .await?;
    Ok(n as u64)
}

/// Drops counted minutes older than `keep` (the finished-job retention): finished counts cover that window.
pub async fn prune_stats<'e>(exec: impl PgExecutor<'e>, keep: Duration) -> Result<u64> {
    Ok(
        sqlx::query("delete from job_stat where minute < now() - make_interval(secs => $1)")
            .bind(keep.as_secs_f64())
            .execute(exec)
            .await?
            .rows_affected(),
    )
}

/// Adds finished counts to [`queue_stats`] figures, with a row for each queue that has only finished jobs.
pub fn with_finished(mut stats: Vec<QueueStats>, finished: &[FinishedCounts]) -> Vec<QueueStats> {
    for f in finished {
        match stats.iter_mut().find(|s| s.queue == f.queue) {
            Some(s) => {
                s.completed = f.completed;
                s.discarded = f.discarded;
                s.cancelled = f.cancelled;
            }
            None => stats.push(QueueStats {
                queue: f.queue.clone(),
                paused: false,
                available: 0,
                scheduled: 0,
                running: 0,
                retryable: 0,
                completed: f.completed,
                discarded: f.discarded,
                cancelled: f.cancelled,
                unclaimable: 0,
                limited: 0,
                oldest_available_ms: 0,
            }),
        }
    }
    stats.sort_by(|a, b| a.queue.cmp(&b.queue));
    stats
}

/// Cluster-wide figures for the metrics gauges: per queue, jobs by state (`available` counts due jobs) and the age
/// of the oldest due job, over all accounts. Only waiting and running jobs are read (partial indexes).
pub async fn queue_gauges<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<(String, i64, i64, i64, i64, f64)>> {
    let rows = sqlx::query_as(
        r#"
        select queue,
               count(*) filter (where state in ('available', 'scheduled', 'retryable', 'parked') and run_at <= now()),
               count(*) filter (where state in ('scheduled', 'retryable') and run_at > now()),
               count(*) filter (where state = 'running'),
               count(*) filter (where state = 'retryable'),
               coalesce(extract(epoch from now() - min(run_at) filter (
                   where state in ('available', 'scheduled', 'retryable', 'parked') and run_at <= now())), 0)::float8
        from job
        where state in ('available', 'scheduled', 'retryable', 'running')
           or (state = 'parked' and concurrency_key is not null)
        group by queue
        order by queue
        "#,
    )
    .fetch_all(exec)
    .await?;
    Ok(rows)
}
