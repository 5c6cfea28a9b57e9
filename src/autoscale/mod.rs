//! The autoscaler: observe each pool version's depth (runnable now plus running, never future-scheduled work) →
//! decide the worker count ([`decide`], pure) → act through a [`PoolDriver`] (local processes, the Kubernetes
//! scale subresource, or nothing but metrics).
//!
//! Owns `pool_target` (the scaling policy per pool). Invariants: only the holder of the lease
//! [`AUTOSCALER_LEASE`] acts; `decide` never reads a clock or the database, so its table of cases is the spec.

mod driver;
mod kubernetes;
mod run;
mod store;

use std::time::{Duration, Instant};

pub use driver::{Desired, NoneDriver, PoolDriver, ProcessDriver};
pub use kubernetes::{deployment_name, KubeConfig, KubernetesDriver};
pub use run::{serve, Autoscaler, AutoscalerArgs, DriverKind, ServeError, AUTOSCALER_LEASE};
pub use store::{get_target, observe, put_target, ScaleTarget, VersionStatus};

use crate::queue::FieldErrors;
use crate::rollout::Role;

/// Errors of the autoscaler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No pool of that name.
    #[error("pool {pool:?} not found")]
    PoolNotFound {
        /// The pool asked for.
        pool: String,
    },
    /// One or more fields are invalid.
    #[error("invalid scaling policy: {0}")]
    Invalid(FieldErrors),
    /// The Kubernetes Deployment of a pool version does not exist.
    #[error("kubernetes: deployment {namespace}/{name} not found (create one Deployment per pool version)")]
    DeploymentNotFound {
        /// Namespace.
        namespace: String,
        /// Deployment name.
        name: String,
    },
    /// The Kubernetes API refused the change.
    #[error("kubernetes: scaling {name} failed with HTTP {status}: {message}")]
    Kubernetes {
        /// Deployment name.
        name: String,
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The Kubernetes API could not be reached or configured.
    #[error("kubernetes: {0}")]
    KubeConfig(String),
    /// A worker process could not be started or signalled.
    #[error("worker process: {0}")]
    Process(#[from] std::io::Error),
    /// Reading the pools' state failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    /// Reading the pools' state failed.
    #[error(transparent)]
    Rollout(#[from] crate::rollout::Error),
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

/// A pool's scaling policy (`PUT /api/pools/{pool}/scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Fewest workers of a live (stable or canary) version.
    pub min: u32,
    /// Most workers of any version.
    pub max: u32,
    /// Jobs (runnable now plus running) one worker is meant to carry.
    pub target_per_worker: u32,
    /// How long fewer workers must be wanted before scaling down.
    pub scale_down_delay: Duration,
}

/// What the autoscaler sees of one pool version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Its role (None: a version outside any rollout, treated as stable).
    pub role: Option<Role>,
    /// Runnable-now plus running jobs routed to it (the stable version also carries unrouted ones).
    pub depth: i64,
}

/// What `decide` remembers between rounds for one pool version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// The count last decided (None: never decided, e.g. after a restart).
    pub desired: Option<u32>,
    /// Since when fewer workers than `desired` have been wanted.
    pub wants_fewer_since: Option<Instant>,
}

/// The decision for one pool version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleDecision {
    /// Workers to run now.
    pub desired: u32,
    /// Workers the policy asks for right now (before the scale-down delay).
    pub wanted: u32,
    /// Memory for the next round.
    pub memory: Memory,
}

/// The worker count for one pool version: `clamp(ceil(depth / target_per_worker), min, max)`, up at once and down
/// only after `scale_down_delay` of wanting fewer; a draining version gets no minimum and goes to zero as soon as
/// it is empty, a retired one at once.
pub fn decide(observed: &Observed, policy: &ScalePolicy, now: Instant, memory: &Memory) -> ScaleDecision {
    let per = i64::from(policy.target_per_worker.max(1));
    let depth = observed.depth.max(0);
    let by_depth = u32::try_from((depth + per - 1) / per).unwrap_or(u32::MAX);
    let max = policy.max.max(policy.min);
    let (wanted, immediate) = match observed.role {
        Some(Role::Retired) => (0, true),
        Some(Role::Draining) if depth == 0 => (0, true),
        Some(Role::Draining) => (by_depth.clamp(1, max.max(1)), false),
        _ => (by_depth.clamp(policy.min, max), false),
    };
    let previous = memory.desired.unwrap_or(0);
    if wanted >= previous || immediate || memory.desired.is_none() {
        return ScaleDecision {
            desired: wanted,
            wanted,
            memory: Memory {
                desired: Some(wanted),
                wants_fewer_since: None,
            },
        };
    }
    let since = memory.wants_fewer_since.unwrap_or(now);
    if now.saturating_duration_since(since) >= policy.scale_down_delay {
        ScaleDecision {
            desired: wanted,
            wanted,
            memory: Memory {
                desired: Some(wanted),
                wants_fewer_since: None,
            },
        }
    } else {
        ScaleDecision {
            desired: previous,
            wanted,
            memory: Memory {
                desired: Some(previous),
                wants_fewer_since: Some(since),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: role, depth, remembered count, wanting-fewer age (s), seconds later → desired count.
    #[test]
    fn decide_table() {
        let policy = ScalePolicy {
            min: 1,
            max: 5,
            target_per_worker: 10,
            scale_down_delay: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let stable = Some(Role::Stable);
        #[rustfmt::skip]
        type Case = (&'static str, Option<Role>, i64, Option<u32>, Option<u64>, u64, u32);
        let cases: Vec<Case> = vec![
            // name,                                  role,                 depth, prev,    fewer since, now, want
            ("empty stable keeps min", stable, 0, None, None, 0, 1),
            ("first round scales straight to depth", stable, 35, None, None, 0, 4),
            ("scale up at once", stable, 41, Some(1), None, 0, 5),
            ("never above max", stable, 10_000, Some(1), None, 0, 5),
            ("exact multiple", stable, 20, Some(1), None, 0, 2),
            ("scale down waits for the delay", stable, 0, Some(5), None, 0, 5),
            ("still waiting after 59 s", stable, 0, Some(5), Some(0), 59, 5),
            ("down after the delay", stable, 0, Some(5), Some(0), 60, 1),
            (
                "down to what depth asks, not below",
                stable,
                25,
                Some(5),
                Some(0),
                61,
                3,
            ),
            ("unrouted version behaves as stable", None, 15, Some(1), None, 0, 2),
            ("canary gets min too", Some(Role::Canary), 0, None, None, 0, 1),
            (
                "draining with work keeps workers",
                Some(Role::Draining),
                3,
                Some(4),
                None,
                0,
                4,
            ),
            (
                "draining with work, first round",
                Some(Role::Draining),
                3,
                None,
                None,
                0,
                1,
            ),
            (
                "draining to zero at once when empty",
                Some(Role::Draining),
                0,
                Some(4),
                None,
                0,
                0,
            ),
            ("retired to zero at once", Some(Role::Retired), 50, Some(5), None, 0, 0),
        ];
        for (name, role, depth, prev, since, later, want) in cases {
            let memory = Memory {
                desired: prev,
                wants_fewer_since: since.map(|s| t0 + Duration::from_secs(s)),
            };
            let now = t0 + Duration::from_secs(later);
            let d = decide(&Observed { role, depth }, &policy, now, &memory);
            assert_eq!(d.desired, want, "{name}");
            assert_eq!(d.memory.desired, Some(want), "{name}: remembered");
        }
    }

    /// Wanting fewer starts the delay clock once; wanting more again resets it.
    #[test]
    fn scale_down_clock_starts_once_and_resets_on_scale_up() {
        let policy = ScalePolicy {
            min: 0,
            max: 10,
            target_per_worker: 1,
            scale_down_delay: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let obs = |depth| Observed {
            role: Some(Role::Stable),
            depth,
        };
        let m = decide(&obs(8), &policy, t0, &Memory::default()).memory;
        let d1 = decide(&obs(2), &policy, t0 + Duration::from_secs(1), &m);
        assert_eq!((d1.desired, d1.wanted), (8, 2));
        let d2 = decide(&obs(2), &policy, t0 + Duration::from_secs(5), &d1.memory);
        assert_eq!(
            d2.memory.wants_fewer_since, d1.memory.wants_fewer_since,
            "clock not restarted"
        );
        let d3 = decide(&obs(9), &policy, t0 + Duration::from_secs(6), &d2.memory);
        assert_eq!((d3.desired, d3.memory.wants_fewer_since), (9, None));
        let d4 = decide(&obs(0), &policy, t0 + Duration::from_secs(7), &d3.memory);
        assert_eq!(d4.desired, 9);
        let d5 = decide(&obs(0), &policy, t0 + Duration::from_secs(17), &d4.memory);
        assert_eq!(d5.desired, 0);
    }
}
