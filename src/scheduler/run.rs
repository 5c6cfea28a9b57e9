//! The scheduler loop: observe due schedules, decide which ticks fire ([`due_ticks`], pure), act by enqueueing
//! each tick's job and moving the schedule on, in one transaction per schedule.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::store::{self, Schedule};
use super::{Result, Timetable};
use crate::queue;
use crate::wake::Waker;

/// The lease that elects the one scheduler that fires.
pub const SCHEDULER_LEASE: &str = "scheduler";

/// Missed ticks younger than this all fire (a leader change); older ones collapse into one firing of the latest.
pub const RECENT_MISSED: TimeDelta = TimeDelta::seconds(60);

/// Most ticks one schedule fires in one round. Only recent ticks are fired one by one, so this bounds a
/// per-second schedule's catch-up after a 60 s pause with room to spare; the rest fire next round.
const MAX_TICKS_PER_ROUND: usize = 1_000;

/// Due schedules read at once.
const DUE_BATCH: i64 = 500;

/// Batches of due schedules handled per round; the rest wait for the next round.
const MAX_BATCHES_PER_ROUND: usize = 20;

/// What to do with one schedule at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// Ticks to fire now, oldest first, each once.
    pub ticks: Vec<DateTime<Utc>>,
    /// The schedule's next tick afterwards (`None`: the expression never matches again).
    pub next: Option<DateTime<Utc>>,
}

/// Decides which ticks fire at `now` for a schedule whose next tick is `next_fire_at`: every tick up to `now`
/// that is younger than [`RECENT_MISSED`] fires; of the older ones only the latest fires, so an outage ends with
/// one catch-up firing instead of a burst.
pub fn due_ticks(timetable: &Timetable, next_fire_at: DateTime<Utc>, now: DateTime<Utc>) -> Firing {
    let mut ticks = Vec::new();
    let mut next = Some(next_fire_at);
    let cutoff = now - RECENT_MISSED;
    if next_fire_at <= cutoff {
        // The latest old tick; the stored next tick is itself a tick, so the search cannot come back empty
        // unless the expression changed meaning, in which case firing the stored one is the safe choice.
        let latest_old = timetable
            .latest_at_or_before(cutoff)
            .filter(|&t| t >= next_fire_at)
            .unwrap_or(next_fire_at);
        ticks.push(latest_old);
        next = timetable.next_after(latest_old);
    }
    while let Some(t) = next {
        if t > now || ticks.len() >= MAX_TICKS_PER_ROUND {
            break;
        }
        ticks.push(t);
        next = timetable.next_after(t);
    }
    Firing { ticks, next }
}

/// The scheduler: whichever process holds [`SCHEDULER_LEASE`] fires due ticks of every account.
pub struct Scheduler {
    pool: PgPool,
    holder: String,
    waker: Waker,
    /// Longest pause between two rounds; also how often the lease is renewed.
    pub tick: Duration,
    /// The lease's time to live: how long a dead leader delays firing at most.
    pub lease: Duration,
}

/// A cron tick fires within a quarter second of its time.
const TICK: Duration = Duration::from_millis(250);
/// The scheduler's lease: twenty ticks, so a short stall of the leader does not hand firing to another.
const LEASE: Duration = Duration::from_secs(5);

impl Scheduler {
    /// A scheduler identified as `holder` (put the pid in it, so operators and tests can tell who leads).
    pub fn new(pool: PgPool, holder: String, waker: Waker) -> Self {
        Scheduler {
            pool,
            holder,
            waker,
            tick: TICK,
            lease: LEASE,
        }
    }

    /// The lease holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// One round: renew or take the lease and, when leading, fire what is due at `now`. Returns whether this
    /// process leads and the earliest next tick of any schedule afterwards.
    pub async fn round(&self, now: DateTime<Utc>) -> Result<(bool, Option<DateTime<Utc>>)> {
        let leads = crate::leader::acquire(&self.pool, SCHEDULER_LEASE, &self.holder, self.lease).await?;
        if !leads {
            return Ok((false, None));
        }
        // Bounded, so schedules that keep failing cannot hold the loop (and the lease renewal) forever.
        for _ in 0..MAX_BATCHES_PER_ROUND {
            let due = store::due(&self.pool, now, DUE_BATCH).await?;
            let full = due.len() as i64 == DUE_BATCH;
            for schedule in due {
                if let Err(e) = self.fire(&schedule, now).await {
                    // One broken schedule must not stop the others; it is retried next round.
                    tracing::warn!(error = %e, schedule = %schedule.name, account.id = %schedule.account_id,
                        "firing a schedule failed");
                }
            }
            if !full {
                break;
            }
        }
        Ok((true, store::earliest_next_fire(&self.pool).await?))
    }

    /// Fires the due ticks of one schedule and moves it on, all in one transaction. Returns how many jobs it
    /// created (replays of ticks another scheduler already fired do not count).
    #[tracing::instrument(skip_all, fields(schedule = %schedule.name, account.id = %schedule.account_id))]
    pub async fn fire(&self, schedule: &Schedule, now: DateTime<Utc>) -> Result<usize> {
        let Some(next_fire_at) = schedule.next_fire_at else {
            return Ok(0);
        };
        let timetable = schedule.timetable()?;
        let firing = due_ticks(&timetable, next_fire_at, now);
        let mut tx = self.pool.begin().await?;
        // Move the schedule on first: the update locks the row, so a racing scheduler waits here and then finds
        // the row changed and backs off; a user's change since the read also makes it back off.
        if !store::advance(&mut *tx, schedule, firing.next, firing.ticks.last().copied()).await? {
            return Ok(0);
        }
        let mut created = 0;
        let mut queues = Vec::new();
        for &tick in &firing.ticks {
            if let Some(event) = schedule.target.event_for_tick(&schedule.name, tick) {
                created += self.send_event(schedule, event).await?;
                continue;
            }
            let Some(job) = schedule.target.job_for_tick(&schedule.name, tick) else {
                continue;
            };
            queues.push(job.queue.clone());
            match queue::enqueue(&mut tx, &schedule.account_id, job).await {
                Ok(out) if !out.replayed => created += 1,
                Ok(_) => {}
                // The tick's key already holds a job from an earlier version of the target: the tick fired.
                Err(queue::Error::IdempotencyConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        if created > 0 {
            queues.dedup();
            for q in &queues {
                self.waker.wake(q);
            }
        }
        tracing::debug!(ticks = firing.ticks.len(), created, next = ?firing.next, "fired schedule");
        Ok(created)
    }

    /// Sends one tick's event through the same call as `POST /api/events` (its own transaction). It runs while the
    /// firing transaction holds the schedule row: if that transaction then fails, the next round sends the tick
    /// again and the tick's idempotency key makes it a replay, so a tick is neither lost nor doubled. Returns 1 when
    /// the event is new. A tick whose entity is gone (or whose event is refused) is skipped with a warning, so one
    /// bad target does not stall the schedule.
    async fn send_event(&self, schedule: &Schedule, event: crate::orchestration::NewEvent) -> Result<usize> {
        use crate::orchestration::Error as O;
        let q = queue::Queue::new(self.pool.clone(), self.waker.clone());
        match crate::orchestration::send_event(&q, &schedule.account_id, event).await {
            Ok(accepted) => Ok(usize::from(!accepted.replayed)),
            // The tick's key already holds an event from an earlier version of the target: the tick fired.
            Err(O::IdempotencyConflict { .. }) => Ok(0),
            Err(e @ (O::EntityNotFound(_) | O::Invalid(_))) => {
                tracing::warn!(error = %e, schedule = %schedule.name, account.id = %schedule.account_id,
                    "a scheduled event was refused; the tick is skipped");
                Ok(0)
            }
            Err(O::Database(e)) => Err(e.into()),
            Err(e) => Err(super::Error::Event(e.to_string())),
        }
    }

    /// Runs rounds until `shutdown`, then gives the lease up so another scheduler takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut leading = false;
        loop {
            let now = Utc::now();
            let mut pause = self.tick;
            match self.round(now).await {
                Ok((leads, earliest)) => {
                    if leads != leading {
                        leading = leads;
                        tracing::info!(holder = %self.holder, leading, "scheduler leadership changed");
                    }
                    if let Some(at) = earliest {
                        // Wake at the earliest tick when it comes before the next regular round.
                        let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                        pause = pause.min(until);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scheduler round failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = crate::leader::release(&self.pool, SCHEDULER_LEASE, &self.holder).await {
            tracing::warn!(error = %e, "releasing the scheduler lease failed");
        }
    }
}

/// Why `ordo scheduler` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is missing or out of range.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Connecting, or the schema check, failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
}

/// `ordo scheduler`: fires schedules under the scheduler lease and runs queue maintenance under its own lease,
/// until `shutdown`; both leases are given up on the way out.
pub async fn serve(
    db: &crate::config::DbConfig,
    redis: &crate::config::RedisConfig,
    args: &super::SchedulerArgs,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    args.validate()?;
    let redis = redis.client()?;
    let pool = crate::db::connect(db.require()?, 4).await?;
    crate::db::check_schema(&pool).await?;
    db.install_keys(&pool);
    let waker = match redis {
        Some(client) => Waker::with_client(client, &crate::wake::namespace(&pool).await, shutdown.child_token()),
        None => Waker::disabled(),
    };
    // The pid in the holder id tells operators (and crash tests) which process leads.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let holder = format!(
        "scheduler-{}-{}-{:08x}",
        host.trim(),
        std::process::id(),
        rand::random::<u32>()
    );
    let mut maintainer = queue::Maintainer::new(pool.clone(), holder.clone(), queue::RetryPolicy::default());
    maintainer.retention = queue::Retention {
        finished: Duration::from_secs(args.retain_finished_hours * 3600),
        ..queue::Retention::default()
    };
    let maintenance = tokio::spawn(maintainer.run(shutdown.child_token()));
    let labels = tokio::spawn(crate::rollout::declare_pool_queues(
        pool.clone(),
        shutdown.child_token(),
    ));
    // Rollouts also advance (auto-promote, auto-abort, completion) where no autoscaler runs; the controller has a
    // lease of its own, so running it here and in the autoscaler is harmless.
    let rollouts =
        tokio::spawn(crate::rollout::Controller::new(pool.clone(), holder.clone()).run(shutdown.child_token()));
    let mut scheduler = Scheduler::new(pool, holder, waker);
    scheduler.tick = args.tick();
    scheduler.lease = args.lease();
    tracing::info!(holder = %scheduler.holder(), "scheduler started");
    scheduler.run(shutdown).await;
    let _ = labels.await;
    if let Err(e) = maintenance.await {
        tracing::warn!(error = %e, "queue maintenance task failed");
    }
    if let Err(e) = rollouts.await {
        tracing::warn!(error = %e, "rollout controller task failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Missed-tick policy: recent ticks all fire once, older ones collapse into the latest of them.
    #[test]
    fn due_ticks_fires_recent_and_collapses_old() {
        struct Case {
            what: &'static str,
            cron: &'static str,
            next_fire_at: &'static str,
            now: &'static str,
            fire: &'static [&'static str],
            next: &'static str,
        }
        let cases = [
            Case {
                what: "not due yet",
                cron: "*/2 * * * * *",
                next_fire_at: "2026-11-25T12:00:02Z",
                now: "2026-11-25T12:00:01.900Z",
                fire: &[],
                next: "2026-11-25T12:00:02Z",
            },
            Case {
                what: "exactly due",
                cron: "*/2 * * * * *",
                next_fire_at: "2026-11-25T12:00:02Z",
                now: "2026-11-25T12:00:02Z",
                fire: &["2026-11-25T12:00:02Z"],
                next: "2026-11-25T12:00:04Z",
            },
            Case {
                what: "leader change: 5 s of ticks all fire",
                cron: "*/2 * * * * *",
                next_fire_at: "2026-11-25T12:00:02Z",
                now: "2026-11-25T12:00:07Z",
                fire: &["2026-11-25T12:00:02Z", "2026-11-25T12:00:04Z", "2026-11-25T12:00:06Z"],
                next: "2026-11-25T12:00:08Z",
            },
            Case {
                what: "59 s old still fires individually",
                cron: "0 * * * * *",
                next_fire_at: "2026-11-25T12:00:00Z",
                now: "2026-11-25T12:00:59Z",
                fire: &["2026-11-25T12:00:00Z"],
                next: "2026-11-25T12:01:00Z",
            },
            Case {
                what: "outage: old minutely ticks collapse into the latest old one, recent ones fire",
                cron: "0 * * * * *",
                next_fire_at: "2026-11-25T12:00:00Z",
                now: "2026-11-25T12:10:30Z",
                fire: &["2026-11-25T12:09:00Z", "2026-11-25T12:10:00Z"],
                next: "2026-11-25T12:11:00Z",
            },
            Case {
                what: "outage of a per-second schedule: one old tick plus the last minute",
                cron: "*/30 * * * * *",
                next_fire_at: "2026-11-25T10:00:00Z",
                now: "2026-11-25T12:00:45Z",
                fire: &["2026-11-25T11:59:30Z", "2026-11-25T12:00:00Z", "2026-11-25T12:00:30Z"],
                next: "2026-11-25T12:01:00Z",
            },
            Case {
                what: "daily schedule missed for three days fires once",
                cron: "0 3 * * *",
                next_fire_at: "2026-11-22T03:00:00Z",
                now: "2026-11-25T12:00:00Z",
                fire: &["2026-11-25T03:00:00Z"],
                next: "2026-11-26T03:00:00Z",
            },
            Case {
                what: "a single old tick fires once",
                cron: "0 3 * * *",
                next_fire_at: "2026-11-25T03:00:00Z",
                now: "2026-11-25T12:00:00Z",
                fire: &["2026-11-25T03:00:00Z"],
                next: "2026-11-26T03:00:00Z",
            },
        ];
        for c in cases {
            let t = Timetable::new(c.cron, "UTC").unwrap();
            let got = due_ticks(&t, utc(c.next_fire_at), utc(c.now));
            let want: Vec<_> = c.fire.iter().map(|s| utc(s)).collect();
            assert_eq!(got.ticks, want, "{}", c.what);
            assert_eq!(got.next, Some(utc(c.next)), "{}", c.what);
        }
    }

    /// Across the Berlin spring gap, the skipped 02:30 tick fires once at 03:00 local when due.
    #[test]
    fn due_ticks_in_a_time_zone() {
        let t = Timetable::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        let got = due_ticks(&t, utc("2026-03-29T01:00:00Z"), utc("2026-03-29T01:00:00.050Z"));
        assert_eq!(got.ticks, [utc("2026-03-29T01:00:00Z")]);
        assert_eq!(got.next, Some(utc("2026-03-30T00:30:00Z")));
    }
}
