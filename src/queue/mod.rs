//! The durable queue: the only module that writes `job` and `job_history` rows.
//!
//! Invariants:
//! - a job is claimed by one statement (`for update skip locked`), which bumps `attempt` and sets a lease;
//! - every later write of a running job (complete, fail, snooze, heartbeat, hand back) is fenced by
//!   `(id, attempt, state = 'running')`, so a worker that lost its lease can change nothing;
//! - `job` holds waiting and running jobs only: the statement that finishes a job moves it to history (see
//!   [`history`]), and reads by id look in both;
//! - jobs with one `concurrency_key` never run together and start in enqueue (id) order; only a key's head is a
//!   claim candidate, the jobs behind it are parked until it finishes (see [`lane`]).
//!
//! Functions take an executor, so callers can enqueue inside their own transaction; [`Queue`] bundles a pool and
//! the wake-up publisher for the common case.

mod admin;
mod backoff;
mod bulk;
mod claim;
mod complete;
mod enqueue;
mod floor;
mod history;
mod lane;
mod limits;
mod maintenance;
mod roster;
mod routing;
mod scout;
mod search;
mod series;
pub mod share;
mod stats;
mod types;

pub use admin::{cancel, get, get_many, pause, resume, retry};
pub use backoff::{backoff, RetryPolicy};
pub use claim::{claim, lock_following, lock_ids, ClaimRequest};
pub(crate) use complete::truncate as truncate_error;
pub use complete::{
    cancel_running, complete_handing_off, complete_in, complete_locked, complete_many, fail_many, hand_back, heartbeat,
    snooze_many, Completion, Failure, HandOff, Snooze,
};
pub use enqueue::{enqueue, enqueue_many, enqueue_many_locking, fingerprint, EnqueueOutcome, Enqueued};
pub use floor::{scout_every, Floor, FULL_WALK_EVERY};
pub use history::{add_history_days, retire_history, Retention, RetireCursor, Retired};
pub use lane::{marked_lanes, release_lanes, KeyLocks};
pub use limits::{get_limits, put_limits, usage, KindLimit, KindUsage, Limits, QueueLimit, QueueUsage, Usage};
pub use maintenance::{autovacuum_on, promote_due, rescue_expired, Maintainer, MAINTENANCE_LEASE};
pub use roster::{deregister_worker, heartbeat_worker, live_workers, register_worker, running_by_worker, WorkerInfo};
pub use routing::{last_job_id, pool_depth, reroute_waiting, routed_active, version_outcomes, VersionDepth};
pub use scout::scout;
pub use search::{bulk, list, list_all, BulkAction, BulkOutcome, JobFilter, MAX_BULK};
pub use series::{minutes, prune_samples, sample_queues, Minute};
pub use share::{FairShare, Scouted};
pub use stats::{
    finished_counts, fold_stats, prune_stats, queue_gauges, queue_stats, throughput, with_finished, FinishedCounts,
    QueueStats, Throughput,
};
pub use types::{
    json_integer, FieldError, FieldErrors, Job, JobError, JobId, JobState, NewJob, ACTIVE_STATES, FINISHED_STATES,
};
pub(crate) use types::{open_jobs, seal_json};

use sqlx::PgPool;

use crate::tenancy::AccountId;
use crate::wake::Waker;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job with that id (in that account).
    #[error("job {id} not found")]
    NotFound {
        /// The id asked for.
        id: JobId,
    },
    /// The job's lease was taken over, or it is no longer running: the write was refused.
    #[error("job {id} attempt {attempt} no longer holds its lease")]
    LeaseLost {
        /// The job.
        id: JobId,
        /// The attempt the caller held.
        attempt: i32,
    },
    /// The same idempotency key was used with a different payload.
    #[error("idempotency key {key:?} was already used with a different payload")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// Index in a batch, when the conflict came from one.
        index: Option<usize>,
    },
    /// The job is in a state that does not allow the action.
    #[error("job {id} is {state}: cannot {action}")]
    InvalidState {
        /// The job.
        id: JobId,
        /// Its current state.
        state: JobState,
        /// What was asked.
        action: &'static str,
    },
    /// No account has this id: a job must belong to an existing account.
    #[error("account {account} does not exist")]
    UnknownAccount {
        /// The id given.
        account: String,
    },
    /// One or more fields are invalid.
    #[error("invalid job: {0}")]
    Invalid(FieldErrors),
    /// A sealed value could not be sealed or opened (see [`crate::crypt`]).
    #[error(transparent)]
    Crypt(#[from] crate::crypt::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A pool plus the wake-up publisher: enqueues commit and then wake idle workers of the queue.
#[derive(Clone)]
pub struct Queue {
    pool: PgPool,
    waker: Waker,
    /// Whether an account's transactions run under row-level security ([`Queue::for_accounts`]).
    scoped: bool,
}

impl Queue {
    /// Wraps a pool; `waker` may be [`Waker::disabled`] (workers then find jobs by polling). Transactions run as
    /// the connecting role (workers and library callers, which may cross accounts).
    pub fn new(pool: PgPool, waker: Waker) -> Self {
        Queue {
            pool,
            waker,
            scoped: false,
        }
    }

    /// Like [`Queue::new`], for account requests: every transaction [`Queue::begin_for`] opens runs as the
    /// account under row-level security (see [`crate::tenancy::begin_as`]).
    pub fn for_accounts(pool: PgPool, waker: Waker) -> Self {
        Queue {
            pool,
            waker,
            scoped: true,
        }
    }

    /// A transaction for `account`'s work: scoped to the account under row-level security when the queue serves
    /// account requests, else as the connecting role.
    pub async fn begin_for(&self, account: &AccountId) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(if self.scoped {
            crate::tenancy::begin_as(&self.pool, account).await?
        } else {
            self.pool.begin().await?
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The waker.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Enqueues one job in its own transaction and wakes the queue's workers.
    pub async fn enqueue(&self, account: &AccountId, job: NewJob) -> Result<Enqueued> {
        let mut conn = self.pool.acquire().await?;
        let queue = job.queue.clone();
        let out = enqueue(&mut conn, account, job).await?;
        if !out.replayed {
            self.waker.wake(&queue);
        }
        Ok(out)
    }

    /// Enqueues many jobs in one transaction (all or nothing) and wakes their queues.
    pub async fn enqueue_many(&self, account: &AccountId, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let mut queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        let mut tx = self.pool.begin().await?;
        let out = enqueue_many(&mut tx, account, &jobs).await?;
        tx.commit().await?;
        for q in &queues {
            self.waker.wake(q);
        }
        Ok(out)
    }
}
