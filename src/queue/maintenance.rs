//! Queue maintenance: rescue expired leases, promote due jobs, retire history past retention. Each step is
//! idempotent and works in bounded batches, so two holders overlapping after a lease handover do no harm.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::complete::{after_failures, discarded_row, with_error, ROUTED_AFRESH};
use super::history::{add_history_days, retire_history, Retention, RetireCursor, Retired};
use super::types::by_id;
use super::{JobId, JobState, Result, RetryPolicy};

/// A maintenance round every second: an expired lease is rescued, and a due job promoted, within about a second.
const ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// History partitions are a day each: looking after them every 10 s is plenty.
const HISTORY_EVERY: Duration = Duration::from_secs(10);
/// The most time one round spends retiring history, so the rescue and promotion of the next round are not late.
const HISTORY_BUDGET: Duration = Duration::from_millis(200);
/// The queue gauges' period at the least (longer when counting takes long, see `publish_gauges`).
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How far before the start of the previous rescue the next one starts (see `RescueFloor`): a lease written by a
/// transaction that was committing as that rescue began ends no earlier than this before it.
const RESCUE_MARGIN: Duration = Duration::from_secs(10);
/// How often a rescue walks every lease from the start, at the least (see `RescueFloor`).
const RESCUE_FULL_EVERY: Duration = Duration::from_secs(60);
/// The states the queue gauges count, in the order of the counting query's columns.
const GAUGE_STATES: [JobState; 4] = [
    JobState::Available,
    JobState::Scheduled,
    JobState::Running,
    JobState::Retryable,
];
/// A worker counts as live when it heartbeated within this: three missed heartbeats of the default lease.
const WORKER_SEEN_WITHIN: Duration = Duration::from_secs(90);

/// Returns running jobs whose lease expired (their worker died or stalled): the attempt is used up and recorded,
/// and the job becomes `retryable` after a backoff, or `discarded` when its attempts are exhausted. Returns the
/// ids rescued (at most `limit`).
pub async fn rescue_expired<'e>(exec: impl PgExecutor<'e>, policy: RetryPolicy, limit: i64) -> Result<Vec<JobId>> {
    rescue_expired_since(exec, policy, limit, None).await
}

/// [`rescue_expired`] of the leases that ended at `since` or later (all of them for `None`): see [`RescueFloor`].
async fn rescue_expired_since<'e>(
    exec: impl PgExecutor<'e>,
    policy: RetryPolicy,
    limit: i64,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<JobId>> {
    // Unnamed, planned each time: the walk starts at the bound given.
    let rows: Vec<i64> = sqlx::query_scalar(RESCUE_SQL.as_str())
        .persistent(false)
        .bind(policy.base.as_secs_f64())
        .bind(policy.cap.as_secs_f64())
        .bind(limit)
        .bind(since)
        .fetch_all(exec)
        .await?;
    Ok(rows.into_iter().map(JobId).collect())
}

/// Where the next rescue starts its walk of the leases by end (`job_leased_until_idx`, upward).
///
/// Under a snapshot held open that index keeps every lease written since (each claim and heartbeat writes one), and
/// a walk from the start reads them all, every round. A lease written after a rescue began ends after that moment,
/// so the next rescue may start there, less [`RESCUE_MARGIN`] for transactions that were committing. A walk from the
/// start every [`RESCUE_FULL_EVERY`] (or 20 times its own time, if longer) finds what a walk skipped because another
/// transaction held the job locked.
#[derive(Debug, Default)]
struct RescueFloor {
    /// Where the next walk may start; `None` before the first whole walk.
    from: Option<DateTime<Utc>>,
    /// When the last walk from the start began, and how long it took.
    full: Option<(std::time::Instant, Duration)>,
}

impl RescueFloor {
    /// Where the next walk starts: `None` for a walk from the start.
    fn since(&self) -> Option<DateTime<Utc>> {
        match self.full {
            Some((at, took)) if at.elapsed() < (took * 20).max(RESCUE_FULL_EVERY) => self.from,
            _ => None,
        }
    }

    /// A walk from `since` that began at `began` by the server's clock (`started` by this process's) went through
    /// every expired lease.
    fn walked(&mut self, since: Option<DateTime<Utc>>, began: DateTime<Utc>, started: std::time::Instant) {
        if since.is_none() {
            self.full = Some((started, started.elapsed()));
        }
        self.from = chrono::Duration::from_std(RESCUE_MARGIN)
            .ok()
            .and_then(|m| began.checked_sub_signed(m));
    }
}

static RESCUE_SQL: LazyLock<String> = LazyLock::new(|| {
    let errors = with_error(
        "'lease expired: worker ' || coalesce(job.lease_owner, '?') || ' stopped heartbeating'",
        true,
    );
    format!(
        r#"
        with expired as (
            select id
            from job
            where state = 'running'
              and leased_until < now()
              and leased_until >= coalesce($4::timestamptz, '-infinity')
            order by leased_until
            limit $3
            for update skip locked
        ),
        retried as (
            update job
            set state = 'retryable',
                run_at = now() + make_interval(secs => least($2, $1 * power(2, greatest(job.attempt, 1) - 1)) * random()),
                errors = {errors},
                leased_until = null,
                version = {ROUTED_AFRESH}
            from expired
            where {expired}
              and job.attempt < job.max_attempts
            returning job.id, job.account_id, job.queue, job.concurrency_key, job.state
        ),
        discarded as (
            delete from job
            using expired
            where {expired}
              and job.attempt >= job.max_attempts
            returning {row}
        ){rest}
        "#,
        expired = by_id("job.id", "expired.id"),
        row = discarded_row(&errors),
        rest = after_failures()
    )
});

/// Moves due `scheduled` and `retryable` jobs to `available`, so counts say what is runnable; claims take due
/// unkeyed jobs directly, so for them this is bookkeeping. A due scheduled job of a concurrency key is promoted into
/// its lane instead: it becomes the lane's head when nothing of the lane is active, else it parks (see
/// [`super::release_lanes`]); until then no claim takes it. Returns how many moved.
pub async fn promote_due(pool: &sqlx::PgPool, limit: i64) -> Result<u64> {
    Ok(promote(pool, limit).await?.0)
}

/// [`promote_due`], also returning the queues of the keyed jobs it promoted (one entry per job).
async fn promote(pool: &sqlx::PgPool, limit: i64) -> Result<(u64, Vec<String>)> {
    let done = sqlx::query(PROMOTE_SQL.as_str()).bind(limit).execute(pool).await?;
    // In rounds of at most 500: each promoted key holds an advisory lock until its round commits, and the server's
    // lock table is shared by every session.
    let round = limit.clamp(1, 500);
    let mut keyed: Vec<String> = Vec::new();
    while (keyed.len() as i64) < limit {
        let promoted: Vec<String> = sqlx::query_scalar("select promoted_queue from job_lane_promote($1)")
            .bind(i32::try_from(round).unwrap_or(500))
            .fetch_all(pool)
            .await?;
        let n = promoted.len() as i64;
        keyed.extend(promoted);
        if n < round {
            break;
        }
    }
    Ok((done.rows_affected() + keyed.len() as u64, keyed))
}

static PROMOTE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
        with due as (
            select id
            from job
            where state in ('scheduled', 'retryable')
              and run_at <= now()
              -- a keyed retryable job is its lane's head already
              and (concurrency_key is null or state = 'retryable')
            order by run_at
            limit $1
            for update skip locked
        )
        update job
        set state = 'available'
        from due
        where {due}
        "#,
        due = by_id("job.id", "due.id")
    )
});

/// The maintenance loop: whichever process holds the lease `queue.maintenance` rescues, promotes and retires history.
pub struct Maintainer {
    pool: sqlx::PgPool,
    holder: String,
    retry: RetryPolicy,
    /// How often to run; the lease lasts three times this.
    pub interval: Duration,
    /// Retention of finished jobs.
    pub retention: Retention,
    /// Where the release of a retiring partition's keys stands, and when history was last looked after.
    history: std::sync::Mutex<(Option<RetireCursor>, Option<std::time::Instant>)>,
    /// When the queue gauges were last read, and how long that took.
    gauges_at: std::sync::Mutex<Option<(std::time::Instant, Duration)>>,
    /// The minute (Unix seconds / 60) the queues were last sampled in (see [`super::sample_queues`]).
    sampled_minute: std::sync::Mutex<Option<i64>>,
    /// Where the next rescue starts.
    rescue_floor: std::sync::Mutex<RescueFloor>,
    /// Label sets published before, so a queue or pool version that emptied is set back to zero.
    gauge_labels: std::sync::Mutex<GaugeLabels>,
    /// Called with each queue that a round made jobs claimable in (released or promoted jobs of concurrency keys),
    /// so workers start them without waiting for their next poll.
    pub on_ready: Option<OnReady>,
}

/// A callback given a queue name.
pub type OnReady = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Queues and (pool, version) pairs that have gauges.
type GaugeLabels = (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<(String, String)>,
);

/// The lease that elects the maintenance holder.
pub const MAINTENANCE_LEASE: &str = "queue.maintenance";

/// Whether the server runs autovacuum, which ordo relies on to reclaim the row versions every job leaves behind.
pub async fn autovacuum_on<'e>(exec: impl PgExecutor<'e>) -> Result<bool> {
    Ok(sqlx::query_scalar("select current_setting('autovacuum') = 'on'")
        .fetch_one(exec)
        .await?)
}

impl Maintainer {
    /// A maintainer identified as `holder`, running every second.
    pub fn new(pool: sqlx::PgPool, holder: String, retry: RetryPolicy) -> Self {
        Maintainer {
            pool,
            holder,
            retry,
            interval: ROUND_INTERVAL,
            retention: Retention::default(),
            history: std::sync::Mutex::default(),
            gauges_at: std::sync::Mutex::new(None),
            sampled_minute: std::sync::Mutex::new(None),
            gauge_labels: std::sync::Mutex::default(),
            rescue_floor: std::sync::Mutex::default(),
            on_ready: None,
        }
    }

    /// Runs one round if this process holds (or can take) the lease; returns whether it did.
    pub async fn tick(&self) -> Result<bool> {
        let held = crate::leader::acquire(&self.pool, MAINTENANCE_LEASE, &self.holder, self.interval * 3)
            .await
            .map_err(|crate::leader::Error::Database(e)| super::Error::Database(e))?;
        if !held {
            return Ok(false);
        }
        self.rescue().await?;
        // Lanes marked by finishes that raced an enqueue of their key, and any a worker did not settle itself. In
        // rounds of 500: each mark holds an advisory lock until its round commits, and the server's lock table is
        // shared by every session.
        let mut ready = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let released = super::release_lanes(&self.pool, 500).await?;
            if !released.is_empty() {
                tracing::debug!(jobs = released.len(), "released parked jobs of marked lanes");
            }
            ready.extend(released);
            if super::marked_lanes(&self.pool).await? == 0 {
                break;
            }
        }
        ready.extend(promote(&self.pool, 5000).await?.1);
        if let Some(wake) = &self.on_ready {
            for q in &ready {
                wake(q);
            }
        }
        super::fold_stats(&self.pool).await?;
        self.sample_once_a_minute().await?;
        self.publish_gauges().await;
        self.look_after_history().await?;
        super::prune_stats(&self.pool, self.retention.finished).await?;
        super::prune_samples(&self.pool, self.retention.finished).await?;
        super::share::prune_starts(&self.pool).await?;
        Ok(true)
    }

    /// Rescues every expired lease, walking from the floor (see [`RescueFloor`]).
    async fn rescue(&self) -> Result<()> {
        let since = self.rescue_floor.lock().map_or(None, |f| f.since());
        let started = std::time::Instant::now();
        let began: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(&self.pool).await?;
        loop {
            let rescued = rescue_expired_since(&self.pool, self.retry, 1000, since).await?;
            if !rescued.is_empty() {
                tracing::info!(jobs = rescued.len(), "rescued jobs whose lease expired");
            }
            if rescued.len() < 1000 {
                break;
            }
        }
        if let Ok(mut floor) = self.rescue_floor.lock() {
            floor.walked(since, began, started);
        }
        Ok(())
    }

    /// Every 10 s: attaches the coming days' history partitions and retires history past retention, for at most
    /// ~200 ms of work (the rest waits for the next time).
    async fn look_after_history(&self) -> Result<()> {
        let cursor = {
            let Ok(mut h) = self.history.lock() else { return Ok(()) };
            if h.1.is_some_and(|t| t.elapsed() < HISTORY_EVERY) {
                return Ok(());
            }
            h.1 = Some(std::time::Instant::now());
            h.0.take()
        };
        let mut cursor = cursor;
        if let Err(e) = add_history_days(&self.pool).await {
            // a lock not had at once: the next round tries again (rows go to the default partition meanwhile)
            tracing::debug!(error = %e, "could not attach history partitions this round");
        }
        let retired = retire_history(&self.pool, self.retention, &mut cursor, HISTORY_BUDGET).await;
        if let Ok(mut h) = self.history.lock() {
            h.0 = cursor;
        }
        let retired = retired?;
        if retired != Retired::default() {
            tracing::info!(
                partitions = retired.partitions_dropped,
                rows = retired.rows_pruned,
                keys = retired.keys_released,
                "retired job history past retention"
            );
        }
        Ok(())
    }

    /// Once in each minute: the dashboard's history of depth and start delay (one walk of the waiting jobs a minute).
    async fn sample_once_a_minute(&self) -> Result<()> {
        let minute = chrono::Utc::now().timestamp().div_euclid(60);
        {
            let Ok(mut last) = self.sampled_minute.lock() else {
                return Ok(());
            };
            if *last == Some(minute) {
                return Ok(());
            }
            *last = Some(minute);
        }
        super::sample_queues(&self.pool).await?;
        Ok(())
    }

    /// Every 5 s, the holder publishes the cluster's queue and worker gauges (one holder, so no double counting
    /// across processes). A failure only skips a round.
    async fn publish_gauges(&self) {
        use crate::telemetry::metrics as m;
        {
            let Ok(mut at) = self.gauges_at.lock() else { return };
            // Every 5 s, or less often when counting takes long: the count walks every waiting job, and under a
            // backlog of a million it takes over a second of the database's time, which the drain needs more.
            // At most 2 % of the time goes to it.
            if at.is_some_and(|(t, cost)| t.elapsed() < (cost * 50).max(GAUGES_EVERY)) {
                return;
            }
            *at = Some((std::time::Instant::now(), Duration::ZERO));
        }
        let counted = std::time::Instant::now();
        let gauges = super::queue_gauges(&self.pool).await;
        if let Ok(mut at) = self.gauges_at.lock() {
            *at = Some((counted, counted.elapsed()));
        }
        let (Ok(rows), Ok(workers)) = (gauges, super::live_workers(&self.pool, WORKER_SEEN_WITHIN).await) else {
            return;
        };
        let Ok(mut seen) = self.gauge_labels.lock() else { return };
        // By label, not by queue: every queue no operator declared adds to `other` (see `queue_label`).
        let mut queues = std::collections::BTreeMap::new();
        for (queue, available, scheduled, running, retryable, oldest) in rows {
            let (counts, max_oldest) = queues.entry(m::queue_label(&queue)).or_insert(([0; 4], 0.0));
            for (total, n) in counts.iter_mut().zip([available, scheduled, running, retryable]) {
                *total += n;
            }
            *max_oldest = f64::max(*max_oldest, oldest);
        }
        for q in &seen.0 {
            queues.entry(q.clone()).or_insert(([0; 4], 0.0));
        }
        for (queue, (counts, oldest)) in &queues {
            for (state, n) in GAUGE_STATES.into_iter().zip(counts) {
                metrics::gauge!(m::QUEUE_JOBS, "queue" => queue.clone(), "state" => state.as_str()).set(*n as f64);
            }
            metrics::gauge!(m::QUEUE_OLDEST_AVAILABLE_SECONDS, "queue" => queue.clone()).set(*oldest);
        }
        seen.0 = queues.into_keys().collect();
        let mut counts = std::collections::BTreeMap::<(String, String), u32>::new();
        for w in workers {
            *counts.entry((w.pool, w.version)).or_default() += 1;
        }
        for key in &seen.1 {
            counts.entry(key.clone()).or_default();
        }
        for ((pool, version), n) in &counts {
            metrics::gauge!(m::WORKERS_LIVE, "pool" => pool.clone(), "version" => version.clone()).set(f64::from(*n));
        }
        seen.1 = counts.into_keys().collect();
    }

    /// Ticks until `shutdown`, then gives the lease up.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        if let Ok(false) = autovacuum_on(&self.pool).await {
            // Nothing else reclaims them: every job leaves two dead row versions behind, and the claim index bloats.
            tracing::warn!(
                "autovacuum is off on this server: dead tuples of finished jobs will pile up; turn it on \
                 (ordo's tables set their own, eager thresholds)"
            );
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "queue maintenance failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        let _ = crate::leader::release(&self.pool, MAINTENANCE_LEASE, &self.holder).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("a valid time")
    }

    #[test]
    fn a_rescue_walks_from_the_start_first_then_from_the_last_start_less_the_margin() {
        let mut floor = RescueFloor::default();
        assert_eq!(floor.since(), None, "no walk yet");
        floor.walked(None, at(1_000), std::time::Instant::now());
        assert_eq!(floor.since(), Some(at(990)));
        floor.walked(Some(at(990)), at(1_001), std::time::Instant::now());
        assert_eq!(floor.since(), Some(at(991)), "a walk from the floor moves it on");
    }

    #[test]
    fn a_rescue_walks_from_the_start_again_once_a_minute_or_twenty_times_its_cost() {
        let ago = |secs| {
            std::time::Instant::now()
                .checked_sub(Duration::from_secs(secs))
                .expect("uptime")
        };
        let mut floor = RescueFloor {
            from: Some(at(990)),
            full: Some((ago(61), Duration::from_millis(5))),
        };
        assert_eq!(floor.since(), None, "a minute after the last walk from the start");
        floor.full = Some((ago(59), Duration::from_millis(5)));
        assert_eq!(floor.since(), Some(at(990)));
        floor.full = Some((ago(100), Duration::from_secs(6)));
        assert_eq!(floor.since(), Some(at(990)), "a walk of 6 s waits 120 s");
        floor.full = Some((ago(121), Duration::from_secs(6)));
        assert_eq!(floor.since(), None);
    }
}
