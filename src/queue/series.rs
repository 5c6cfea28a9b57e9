//! Per-minute history of an account's queues, kept on the server so it survives a reload: what happened each minute
//! (enqueued, completed, failed, discarded, cancelled; the counters of [`super::stats`]) and how the queues stood
//! (depth, running, start delay; a sample maintenance takes once a minute into `queue_sample`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::Result;
use crate::tenancy::AccountId;

/// Samples every account's queues for the current minute: one `queue_sample` row per account and queue with
/// waiting or running jobs. Reads only waiting and running jobs (the partial indexes `queue_stats` uses); a second
/// call in the same minute writes nothing. Returns the rows written.
pub async fn sample_queues<'e>(exec: impl PgExecutor<'e>) -> Result<u64> {
    Ok(sqlx::query(
        r#"
        insert into queue_sample (account_id, queue, minute, available, running, scheduled, oldest_wait_ms)
        select account_id, queue, date_trunc('minute', now()),
               count(*) filter (where state in ('available', 'parked')
                                   or (state in ('scheduled', 'retryable') and run_at <= now())),
               count(*) filter (where state = 'running'),
               count(*) filter (where state in ('scheduled', 'retryable') and run_at > now()),
               coalesce((extract(epoch from now() - min(run_at) filter (
                   where state in ('available', 'scheduled', 'retryable', 'parked') and run_at <= now()
               )) * 1000)::bigint, 0)
        from job
        where state in ('available', 'scheduled', 'retryable')
           or leased_until is not null
           or (state = 'parked' and concurrency_key is not null)
        group by account_id, queue
        on conflict (account_id, minute, queue) do nothing
        "#,
    )
    .execute(exec)
    .await?
    .rows_affected())
}

/// Drops samples older than `keep` (the same window as the counters, [`super::prune_stats`]).
pub async fn prune_samples<'e>(exec: impl PgExecutor<'e>, keep: Duration) -> Result<u64> {
    Ok(
        sqlx::query("delete from queue_sample where minute < now() - make_interval(secs => $1)")
            .bind(keep.as_secs_f64())
            .execute(exec)
            .await?
            .rows_affected(),
    )
}

/// One minute of an account's queues (all of them, or one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = QueueMinute)]
pub struct Minute {
    /// The minute's start (RFC 3339).
    pub minute: DateTime<Utc>,
    /// Jobs enqueued.
    pub enqueued: i64,
    /// Jobs completed.
    pub completed: i64,
    /// Failed attempts (retried or not).
    pub failed: i64,
    /// Jobs discarded.
    pub discarded: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// Runnable jobs at the sample; `None` when no sample was taken that minute.
    pub available: Option<i64>,
    /// Running jobs at the sample.
    pub running: Option<i64>,
    /// How long the oldest runnable job had waited at the sample, in milliseconds: the start delay.
    pub oldest_wait_ms: Option<i64>,
}

/// The account's minutes since `since`, oldest first: counts ([`super::throughput`]) and samples summed over its
/// queues (`queue` narrows to one; the start delay is the largest of the queues'). Minutes with neither a count nor
/// a sample are left out. Reads the counters' and the samples' primary keys within the window only.
pub async fn minutes(
    conn: &mut PgConnection,
    account: &AccountId,
    queue: Option<&str>,
    since: DateTime<Utc>,
) -> Result<Vec<Minute>> {
    let sampled: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        r#"
        select minute, sum(available)::bigint, sum(running)::bigint, max(oldest_wait_ms)::bigint
        from queue_sample
        where account_id = $1
          and minute >= date_trunc('minute', $3::timestamptz)
          and ($2::text is null or queue = $2)
        group by minute
        "#,
    )
    .bind(account.as_str())
    .bind(queue)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_minute: BTreeMap<DateTime<Utc>, Minute> = BTreeMap::new();
    let blank = |minute| Minute {
        minute,
        enqueued: 0,
        completed: 0,
        failed: 0,
        discarded: 0,
        cancelled: 0,
        available: None,
        running: None,
        oldest_wait_ms: None,
    };
    for t in super::throughput(&mut *conn, account, queue, since).await? {
        let m = by_minute.entry(t.minute).or_insert_with(|| blank(t.minute));
        m.enqueued += t.enqueued;
        m.completed += t.completed;
        m.failed += t.failed;
        m.discarded += t.discarded;
        m.cancelled += t.cancelled;
    }
    for (minute, available, running, wait) in sampled {
        let m = by_minute.entry(minute).or_insert_with(|| blank(minute));
        m.available = Some(available);
        m.running = Some(running);
        m.oldest_wait_ms = Some(wait);
    }
    Ok(by_minute.into_values().collect())
}
