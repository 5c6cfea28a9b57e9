//! The rollout controller: observe active rollouts and the canary's outcomes → decide ([`decide`], pure) →
//! act through the state machine (promote, abort, complete). Runs under the lease [`ROLLOUT_LEASE`] in the
//! autoscaler process; every transition is itself checked and locked, so two controllers overlapping after a
//! handover change nothing twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::store::{self, Rollout};
use super::{Result, RolloutState, Transition};
use crate::queue;

/// The lease that elects the one rollout controller that acts.
pub const ROLLOUT_LEASE: &str = "rollout";

/// Finished attempts the canary needs before its failure rate can abort it: one early failure is not a trend.
pub const MIN_SAMPLE: i64 = 10;

/// How long after a rollout ended the controller still moves jobs stranded on its retired version (an enqueue
/// that read the rollout's old state and committed after the transition).
const SWEEP_WINDOW: Duration = Duration::from_secs(3600);

/// The canary's outcomes since the rollout began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanaryOutcomes {
    /// Finished attempts (completed or failed).
    pub finished: i64,
    /// Failed attempts.
    pub failed: i64,
}

/// What to do with one active rollout at `now`: abort a canary failing above its threshold (once it has
/// [`MIN_SAMPLE`] finished attempts), else promote it once `auto_promote_after_s` has passed; a promoted rollout
/// is offered completion (which happens only when the old version is empty).
pub fn decide(r: &Rollout, outcomes: CanaryOutcomes, now: DateTime<Utc>) -> Option<(Transition, String)> {
    match r.state {
        RolloutState::Canary => {
            if let Some(max) = r.max_failure_rate {
                if outcomes.finished >= MIN_SAMPLE {
                    let rate = outcomes.failed as f64 / outcomes.finished as f64;
                    if rate > max {
                        return Some((
                            Transition::Abort,
                            format!(
                                "canary failure rate {rate:.3} ({} of {} attempts) exceeds {max}",
                                outcomes.failed, outcomes.finished
                            ),
                        ));
                    }
                }
            }
            if let Some(after) = r.auto_promote_after_s {
                if now >= r.created_at + chrono::TimeDelta::seconds(i64::from(after)) {
                    return Some((Transition::Promote, format!("auto-promoted after {after} s")));
                }
            }
            None
        }
        RolloutState::Promoted => Some((Transition::Complete, "old version drained".to_owned())),
        RolloutState::Completed | RolloutState::Aborted => None,
    }
}

/// The controller loop.
pub struct Controller {
    db: PgPool,
    holder: String,
    /// Pause between rounds.
    pub tick: Duration,
    /// The lease's time to live.
    pub lease: Duration,
}

/// A rollout's automatic steps (promote, abort, complete) happen within half a second of being due.
const TICK: Duration = Duration::from_millis(500);
/// The controller's lease: ten ticks, so a leader that stalls for a few ticks keeps it.
const LEASE: Duration = Duration::from_secs(5);

impl Controller {
    /// A controller identified as `holder`.
    pub fn new(db: PgPool, holder: String) -> Self {
        Controller {
            db,
            holder,
            tick: TICK,
            lease: LEASE,
        }
    }

    /// Promotes or aborts rollout `id` by its own rules, recorded in the admin audit (actor `controller`) in the
    /// same transaction: an operator sees who moved a rollout they did not.
    async fn decided(&self, id: i64, t: Transition, reason: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let action = if matches!(t, Transition::Abort) {
            store::abort(&mut *tx, id, Some(reason)).await?;
            "rollout.abort"
        } else {
            store::promote(&mut *tx, id).await?;
            "rollout.promote"
        };
        crate::audit::record(&mut tx, crate::audit::Actor::Controller, action, &id.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One round: take or renew the lease and, when leading, act on every active rollout. Returns whether this
    /// process leads.
    #[tracing::instrument(skip_all, err)]
    pub async fn round(&self) -> Result<bool> {
        if !crate::leader::acquire(&self.db, ROLLOUT_LEASE, &self.holder, self.lease).await? {
            return Ok(false);
        }
        let now = Utc::now();
        for r in store::active(&self.db).await? {
            let outcomes = if r.state == RolloutState::Canary && r.max_failure_rate.is_some() {
                let (finished, failed) =
                    queue::version_outcomes(&self.db, &r.pool, &r.to_version, r.start_job_id).await?;
                CanaryOutcomes { finished, failed }
            } else {
                CanaryOutcomes::default()
            };
            let Some((t, reason)) = decide(&r, outcomes, now) else {
                continue;
            };
            let res = match t {
                Transition::Abort | Transition::Promote => self.decided(r.id, t, &reason).await,
                Transition::Complete => store::try_complete(&self.db, r.id).await.map(|_| ()),
            };
            if let Err(e) = res {
                // An operator may have moved it first (a conflict), or the database blinked; next round decides again.
                tracing::warn!(rollout.id = r.id, error = %e, "rollout transition failed");
            }
        }
        for r in store::recently_finished(&self.db, SWEEP_WINDOW).await? {
            let (retired, stable) = match r.state {
                RolloutState::Aborted => (&r.to_version, &r.from_version),
                _ => (&r.from_version, &r.to_version),
            };
            let moved = queue::reroute_waiting(&self.db, &r.pool, retired, stable).await?;
            if moved > 0 {
                tracing::warn!(rollout.id = r.id, moved, pool.version = %retired,
                    "moved jobs routed to a retired version after its rollout ended");
            }
        }
        Ok(true)
    }

    /// Runs rounds until `shutdown`, then gives the lease up.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "rollout controller round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
        let _ = crate::leader::release(&self.db, ROLLOUT_LEASE, &self.holder).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(state: RolloutState, auto: Option<i32>, max: Option<f64>) -> Rollout {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid timestamp");
        Rollout {
            id: 1,
            pool: "default".into(),
            from_version: "v1".into(),
            to_version: "v2".into(),
            state,
            canary_percent: 10,
            auto_promote_after_s: auto,
            max_failure_rate: max,
            reason: None,
            created_at: t0,
            updated_at: t0,
            promoted_at: None,
            finished_at: None,
            start_job_id: 0,
        }
    }

    /// The controller aborts failing canaries, promotes on time, and completes promoted rollouts.
    #[test]
    fn decide_table() {
        use RolloutState::*;
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid timestamp");
        let o = |finished, failed| CanaryOutcomes { finished, failed };
        let cases: Vec<(&str, Rollout, CanaryOutcomes, i64, Option<Transition>)> = vec![
            (
                "manual canary waits",
                rollout(Canary, None, None),
                o(100, 100),
                10_000,
                None,
            ),
            (
                "failing canary aborts",
                rollout(Canary, None, Some(0.2)),
                o(20, 5),
                1,
                Some(Transition::Abort),
            ),
            (
                "rate at threshold stays",
                rollout(Canary, None, Some(0.25)),
                o(20, 5),
                1,
                None,
            ),
            (
                "too few attempts to judge",
                rollout(Canary, None, Some(0.1)),
                o(5, 5),
                1,
                None,
            ),
            (
                "auto promote not yet",
                rollout(Canary, Some(60), None),
                o(0, 0),
                59,
                None,
            ),
            (
                "auto promote due",
                rollout(Canary, Some(60), None),
                o(0, 0),
                60,
                Some(Transition::Promote),
            ),
            (
                "abort wins over promote",
                rollout(Canary, Some(1), Some(0.0)),
                o(10, 1),
                60,
                Some(Transition::Abort),
            ),
            (
                "promoted offers completion",
                rollout(Promoted, None, None),
                o(0, 0),
                0,
                Some(Transition::Complete),
            ),
            (
                "completed is left alone",
                rollout(Completed, Some(1), None),
                o(0, 0),
                60,
                None,
            ),
            (
                "aborted is left alone",
                rollout(Aborted, None, Some(0.0)),
                o(50, 50),
                60,
                None,
            ),
        ];
        for (name, r, outcomes, secs, want) in cases {
            let got = decide(&r, outcomes, t0 + chrono::TimeDelta::seconds(secs)).map(|(t, _)| t);
            assert_eq!(got, want, "{name}");
        }
    }
}
