//! Versioned worker pools and blue-green rollouts: the `worker_pool`, `rollout` and `pool_version` tables, the
//! rollout state machine, and the controller that promotes, aborts and completes rollouts on its own.
//!
//! ```text
//!            start                promote                 old version empty
//!   (none) ───────▶ canary ─────────────────▶ promoted ─────────────────────▶ completed
//!                     │                          │
//!                     └───── abort ──────────────┴──▶ aborted
//! ```
//! Roles of a pool's versions follow: at start the old version is `stable` and the new one `canary`; promote
//! makes the new one `stable` and the old one `draining`, which becomes `retired` once no job routed to it waits
//! or runs (the rollout is then `completed`); abort moves the canary's unstarted jobs back to the old version in
//! one statement, keeps the old one `stable` and retires the canary. A retired version claims nothing and its
//! workers exit 0.
//!
//! Invariants: at most one active (`canary`/`promoted`) rollout per pool (a partial unique index); every
//! transition locks the rollout row and is checked by [`RolloutState::apply`], so an illegal one is a
//! [`Error::Conflict`] whoever races; job rows are touched only through [`crate::queue`].

mod controller;
mod store;

pub use controller::{Controller, ROLLOUT_LEASE};
pub use store::{
    abort, announce_version, get, list, list_pools, pool_queues, promote, put_pool, role_of, start, try_complete,
    unclaimed_queues, NewRollout, PoolVersionView, PoolView, Rollout, WorkerPool,
};

use crate::queue::FieldErrors;

/// Errors of pools and rollouts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No rollout with that id.
    #[error("rollout {id} not found")]
    NotFound {
        /// The id asked for.
        id: i64,
    },
    /// No pool of that name.
    #[error("pool {pool:?} not found")]
    PoolNotFound {
        /// The pool asked for.
        pool: String,
    },
    /// The request conflicts with the current state (an illegal transition, a second active rollout, …).
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
    },
    /// One or more fields are invalid.
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<crate::leader::Error> for Error {
    fn from(e: crate::leader::Error) -> Self {
        match e {
            crate::leader::Error::Database(e) => Error::Database(e),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The state of a rollout; mirrors the `rollout.state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// New work is split between the old and the new version by weight.
    Canary,
    /// All new work goes to the new version; the old one drains.
    Promoted,
    /// The old version drained and was retired.
    Completed,
    /// Rolled back: the canary's unstarted work went back to the old version.
    Aborted,
}

/// What an operator or the controller asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Route all new work to the new version.
    Promote,
    /// Roll back.
    Abort,
    /// The old version has drained: retire it.
    Complete,
}

impl RolloutState {
    /// The state after `t`, or a conflict when `t` is not allowed from `self`.
    pub fn apply(self, t: Transition) -> Result<RolloutState> {
        use RolloutState::*;
        match (self, t) {
            (Canary, Transition::Promote) => Ok(Promoted),
            (Canary | Promoted, Transition::Abort) => Ok(Aborted),
            (Promoted, Transition::Complete) => Ok(Completed),
            (s, t) => Err(Error::Conflict {
                message: format!("cannot {} a rollout that is {}", t.verb(), s.as_str()),
            }),
        }
    }
}

crate::text_enum::text_enum!(RolloutState as "rollout state" {
    Canary = "canary",
    Promoted = "promoted",
    Completed = "completed",
    Aborted = "aborted",
});

impl Transition {
    fn verb(self) -> &'static str {
        match self {
            Transition::Promote => "promote",
            Transition::Abort => "abort",
            Transition::Complete => "complete",
        }
    }
}

/// The role of one version of a pool; mirrors the `pool_version.role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes unrouted work, and outside a rollout all of it.
    Stable,
    /// Takes the canary share of new work.
    Canary,
    /// Gets no new work; finishes what was routed to it.
    Draining,
    /// Claims nothing; its workers exit.
    Retired,
}

crate::text_enum::text_enum!(Role as "pool version role" {
    Stable = "stable",
    Canary = "canary",
    Draining = "draining",
    Retired = "retired",
});

/// The share of new work a version with `role` receives while its pool's rollout is in `state` with
/// `canary_percent` (no rollout: a stable version takes everything).
pub fn weight(role: Role, rollout: Option<(RolloutState, i16)>) -> i16 {
    match (role, rollout) {
        (Role::Stable, Some((RolloutState::Canary, pct))) => 100 - pct,
        (Role::Canary, Some((RolloutState::Canary, pct))) => pct,
        (Role::Stable, _) => 100,
        _ => 0,
    }
}

/// How often a process re-reads the declared queues: a new pool's queue gets a metric label of its own within a
/// minute, and reading costs one small query.
const DECLARED_QUEUES_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Until `stop`, keeps the queues that may be metric labels (every worker pool's queues, see
/// [`crate::telemetry::metrics::queue_label`]) up to date in this process.
pub async fn declare_pool_queues(db: sqlx::PgPool, stop: tokio_util::sync::CancellationToken) {
    loop {
        match sqlx::query_scalar::<_, String>("select distinct q from worker_pool p, unnest(p.queues) as q")
            .fetch_all(&db)
            .await
        {
            Ok(queues) => crate::telemetry::metrics::declare_queues(queues),
            Err(e) => tracing::debug!(error = %e, "could not read the pools' queues for metric labels"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DECLARED_QUEUES_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state machine allows exactly the documented transitions.
    #[test]
    fn transitions_follow_the_state_machine() {
        use RolloutState::*;
        use Transition::*;
        let cases = [
            (Canary, Promote, Some(Promoted)),
            (Canary, Abort, Some(Aborted)),
            (Canary, Complete, None),
            (Promoted, Promote, None),
            (Promoted, Abort, Some(Aborted)),
            (Promoted, Complete, Some(Completed)),
            (Completed, Promote, None),
            (Completed, Abort, None),
            (Completed, Complete, None),
            (Aborted, Promote, None),
            (Aborted, Abort, None),
            (Aborted, Complete, None),
        ];
        for (from, t, want) in cases {
            let got = from.apply(t);
            match want {
                Some(to) => assert_eq!(got.ok(), Some(to), "{from:?} --{t:?}-->"),
                None => assert!(
                    matches!(got, Err(Error::Conflict { .. })),
                    "{from:?} --{t:?}--> must conflict"
                ),
            }
        }
    }

    /// Weights shown per role follow the rollout.
    #[test]
    fn weights_follow_the_rollout() {
        let canary = Some((RolloutState::Canary, 30));
        let promoted = Some((RolloutState::Promoted, 30));
        let cases = [
            (Role::Stable, None, 100),
            (Role::Stable, canary, 70),
            (Role::Canary, canary, 30),
            (Role::Stable, promoted, 100),
            (Role::Draining, promoted, 0),
            (Role::Retired, None, 0),
        ];
        for (role, r, want) in cases {
            assert_eq!(weight(role, r), want, "{role:?} {r:?}");
        }
    }
}
