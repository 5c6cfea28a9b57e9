//! Orchestration: workflows of rules driven by events against entities, with an event log of audit records.
//!
//! Owns the tables `workflow`, `entity`, `event` and `inventory_position`; no other module writes them.
//!
//! An event is a job of kind [`EVENT_KIND`] whose handler ([`EventHandler`], in [`dispatch`]) executes it in a
//! batch. Its job carries the root entity as `concurrency_key`, so the queue runs one entity's events one at a
//! time in acceptance order while different entities run in parallel. One execution is one transaction: the
//! entity's changes, changed inventory positions, emitted events (queued jobs), webhook jobs, audit records and the
//! job's completion commit together, or (on failure) only the event's status and audit records do.
//!
//! An execution is split at its I/O seam: [`interpreter`] is pure (an entity snapshot, the event, the workflow and
//! the locked positions in; staged writes out), and [`batch`] is the shell that locks, loads, interprets and writes
//! through the functions of [`entity`], [`event`] and [`inventory`], collected by [`stage`].
//!
//! Invariants:
//! - workflow versions are immutable rows; an entity pins a major version and runs its highest minor;
//! - an event row is created in the same transaction as its job, after the queue's per-key lock, so `seq` order
//!   is execution order within a root entity;
//! - rules in `ordo-workers` are pure: they return actions and the interpreter applies them;
//! - a transaction locks inventory positions in one global order, `(sku_ref, location_ref)` (see [`batch`]).

pub mod audit;
pub mod batch;
pub mod bulk;
pub mod dispatch;
pub mod entity;
pub mod event;
pub mod interpreter;
pub mod inventory;
pub mod stage;
pub mod sync;
pub mod webhook;
pub mod workflow;

pub use dispatch::{register, EventHandler};
pub use entity::{create_entity, get_entity, list_entities, Entity, EntityFilter, NewEntity, WorkflowPin};
pub use event::{
    cancel_event, get_event, list_events, prune_events, replay_event, send_event, Accepted, Event, EventFilter,
    EventKind, EventStatus, NewEvent, EVENT_KIND,
};
pub use interpreter::MAX_INLINE_EVENTS;
pub use inventory::{get_position, InventoryPosition};
pub use sync::{SyncEvents, SyncOutcome};
pub use webhook::{WebhookDeliverer, WEBHOOK_KIND};
pub use workflow::{get_workflow, list_workflows, put_workflow, validate_workflow, Version, Workflow};

use ordo_workers::rules::{EntityKey, Problem};

use crate::queue;

/// Rule problems as the queue's field errors, shown the one way field errors are (`path: message; …`).
fn field_errors(problems: &[Problem]) -> queue::FieldErrors {
    queue::FieldErrors(
        problems
            .iter()
            .map(|p| queue::FieldError::new(p.path.clone(), p.message.clone()))
            .collect(),
    )
}

/// The queue orchestration jobs (events and webhook deliveries) go to.
pub const QUEUE: &str = "default";

/// Errors of orchestration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is invalid; every problem is listed (HTTP 422).
    #[error("invalid input: {}", field_errors(.0))]
    Invalid(Vec<Problem>),
    /// No workflow (or no such version) in the account (HTTP 404).
    #[error("workflow {reference} not found")]
    WorkflowNotFound {
        /// `TYPE::SUBTYPE`, with the version when one was asked for.
        reference: String,
    },
    /// No entity with that type and ref in the account (HTTP 404).
    #[error("entity {}:{} not found", .0.entity_type, .0.entity_ref)]
    EntityNotFound(EntityKey),
    /// An entity with that type and ref exists already (HTTP 409).
    #[error("entity {}:{} already exists", .0.entity_type, .0.entity_ref)]
    EntityExists(EntityKey),
    /// No event with that id in the account (HTTP 404).
    #[error("event {id} not found")]
    EventNotFound {
        /// The id asked for.
        id: String,
    },
    /// The event's status does not allow the action (HTTP 409).
    #[error("event {id} is {status}: cannot {action}")]
    InvalidEventState {
        /// The event.
        id: String,
        /// Its status.
        status: EventStatus,
        /// What was asked.
        action: &'static str,
    },
    /// The idempotency key was used with a different event (HTTP 409).
    #[error("idempotency key {key:?} was already used with a different event")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// A sync event did not finish before its deadline; it still completes (HTTP 504).
    #[error("event {event_id} did not finish within the deadline; it will still complete")]
    Timeout {
        /// The event, for a later `GET /api/events/{id}`.
        event_id: String,
    },
    /// A batch of executions needed an inventory position out of the global lock order while another transaction
    /// held it; its events run again one by one.
    #[error("event {event} needs an inventory position another transaction holds, out of lock order")]
    PositionBusy {
        /// The event's seq.
        event: i64,
    },
    /// A stored row does not have the shape the schema promises.
    #[error("corrupt orchestration data: {0}")]
    Corrupt(String),
    /// A queue error other than the ones above.
    #[error(transparent)]
    Queue(queue::Error),
    /// A sealed value could not be sealed or opened (see [`crate::crypt`]).
    #[error(transparent)]
    Crypt(#[from] crate::crypt::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<queue::Error> for Error {
    fn from(e: queue::Error) -> Self {
        match e {
            queue::Error::Database(d) => Error::Database(d),
            queue::Error::Crypt(c) => Error::Crypt(c),
            queue::Error::IdempotencyConflict { key, .. } => Error::IdempotencyConflict { key },
            other => Error::Queue(other),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The queue's concurrency key of a root entity: `<type>:<ref>`.
pub fn concurrency_key(entity: &EntityKey) -> String {
    format!("{}:{}", entity.entity_type, entity.entity_ref)
}

/// A page of a listing and the cursor of the next one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// First run of the event log's pruning after a worker starts, then its period.
const PRUNE_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
/// Events age by days: looking once a minute keeps the table trim without a steady stream of deletes.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The maintenance chore that deletes event-log rows past their retention, in batches of 5 000.
pub fn prune_chore() -> crate::chore::Chore {
    crate::chore::Chore::new("prune event log", PRUNE_FIRST, PRUNE_EVERY, |ctx| async move {
        loop {
            match prune_events(&ctx.pool, ctx.retention, 5000).await {
                Ok(5000) => continue,
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(events = n, "pruned the event log");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to prune the event log");
                    break;
                }
            }
        }
    })
}
