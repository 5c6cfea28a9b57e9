//! Cron schedules: the `schedule` table, tick maths in IANA time zones, and the loop that fires due ticks.
//!
//! Invariants:
//! - each tick fires exactly once however many schedulers run: its job (or orchestration event) carries the
//!   idempotency key `schedule:<name>:<tick as RFC 3339 UTC>` in the schedule's account, so a second firing is a
//!   replay. The leader lease [`SCHEDULER_LEASE`] only keeps followers from doing the same work twice;
//! - a schedule's `next_fire_at` only moves forward through a conditional update (on the values the firing read),
//!   in the same transaction as the jobs it fires, so a racing or stale scheduler changes nothing;
//! - missed ticks younger than [`run::RECENT_MISSED`] all fire; older ones collapse into one firing of the latest
//!   ([`run::due_ticks`]), so an outage never ends in a burst.
//!
//! The scheduler writes `schedule` rows (through [`store`]), enqueues through [`crate::queue`] and sends events
//! through [`crate::orchestration::send_event`]; it never runs handlers.

pub mod cron;
pub mod run;
pub mod store;

use std::time::Duration;

use clap::Args;

pub use cron::Timetable;
pub use run::{due_ticks, serve, Scheduler, ServeError, SCHEDULER_LEASE};
pub use store::{EventSpec, JobSpec, NewSchedule, Schedule, ScheduleUpdate, Target};

use crate::queue::FieldErrors;

/// Errors of schedules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more fields are invalid (`/cron`, `/timezone`, `/name`, `/job/...`); the API answers 422.
    #[error("invalid schedule: {0}")]
    Invalid(FieldErrors),
    /// No schedule of that name in the account.
    #[error("schedule {name:?} not found")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A schedule of that name already exists in the account.
    #[error("schedule {name:?} already exists")]
    Conflict {
        /// The name.
        name: String,
    },
    /// A stored row does not have the shape the schema promises.
    #[error("corrupt schedule {name:?}: {message}")]
    Corrupt {
        /// The schedule.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Sending a tick's event failed (other than the database).
    #[error("send the scheduled event: {0}")]
    Event(String),
    /// Enqueueing a tick's job failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// The field paths an [`Error::Invalid`] names (empty for other errors).
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Error::Invalid(v) => v.iter().map(|f| f.path.as_str()).collect(),
            _ => Vec::new(),
        }
    }
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

/// `ordo scheduler`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Longest pause between two looks at the schedule table, in milliseconds; the loop also wakes at the earliest
    /// next tick.
    #[arg(long, env = "ORDO_SCHEDULER_TICK_MS", default_value_t = 250)]
    pub tick_ms: u64,
    /// How long the scheduler lease lasts without renewal, in milliseconds: the longest a crashed leader delays
    /// firing.
    #[arg(long, env = "ORDO_SCHEDULER_LEASE_MS", default_value_t = 5_000)]
    pub lease_ms: u64,
    /// Hours finished jobs are kept (jobs with an idempotency key at least 7 days); for the maintenance this
    /// process runs when it holds the maintenance lease.
    #[arg(long, env = "ORDO_RETAIN_FINISHED_HOURS", default_value_t = 24)]
    pub retain_finished_hours: u64,
}

impl SchedulerArgs {
    /// Validates the settings.
    pub fn validate(&self) -> Result<(), crate::config::Error> {
        if self.tick_ms == 0 || self.tick_ms > 60_000 {
            return Err(crate::config::Error::Invalid {
                name: "--tick-ms",
                message: "must be 1 to 60000".into(),
            });
        }
        if self.lease_ms < 3 * self.tick_ms {
            return Err(crate::config::Error::Invalid {
                name: "--lease-ms",
                message: "must be at least three times --tick-ms, so a live leader renews in time".into(),
            });
        }
        Ok(())
    }

    /// The loop's longest pause.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The leader lease's time to live.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}
