//! ordo: a durable orchestration engine on PostgreSQL.
//!
//! ```text
//!  clients ──HTTP──▶ api ──┐                      ┌──▶ workers (pool P, version V) ──▶ handlers (ordo-workers)
//!  cron ──▶ scheduler ─────┼──▶ PostgreSQL ◀──────┤        │ claim · heartbeat · complete (batched)
//!  autoscaler ◀── depth ───┘   (source of truth)  └── rollout routing
//!                 └── Redis: wake-ups, rate limits (soft state; losing it loses nothing)
//! ```
//!
//! - [`api`]: the HTTP API (axum): jobs, queues, accounts, health, metrics, OpenAPI.
//! - [`audit`]: the admin audit trail (`admin_event`): every admin change, who made it, what and when.
//! - [`db`]: pools and embedded migrations.
//! - [`engine`]: the seam the runtime runs through: engine handlers and the maintenance chores of their owners.
//! - [`chore`]: periodic clean-up registered by a table's owner, run by the holder of the maintenance lease.
//! - [`crypt`]: encryption at rest: per-account data keys wrapped by master keys, sealed values, rotation.
//! - `group_commit`: concurrent callers' writes batched into one transaction (API enqueues, sync events, the
//!   event executions).
//! - [`queue`]: the durable queue; the only writer of `job` rows.
//! - [`runtime`]: the worker process: claim, execute, complete in batches, heartbeat, drain.
//! - [`tenancy`]: account ids.
//! - [`orchestration`]: workflows, entities, events and their audit log; the rule interpreter and the batches that execute events.
//! - [`leader`]: named leases that elect one holder for singleton work.
//! - [`rollout`]: versioned worker pools and blue-green rollouts (canary → promoted → completed | aborted).
//! - [`autoscale`]: worker counts per pool version from queue depth, applied by a driver (processes, Kubernetes).
//! - [`scheduler`]: cron schedules; fires each tick exactly once under the `scheduler` lease.
//! - [`retry`]: the one backoff every retry loop waits through; it ends early on cancellation.
//! - [`wake`]: Redis wake-ups, a hint beside the poll loop.
//! - [`load`]: loads of batch data (inventory records) processed in chunks by workers, and the `ordo load` client.
//! - [`tls`]: TLS material, the API's HTTPS listener (certificate reloaded in place), the CLI's extra CA.
//! - [`ui`]: the web dashboard at `/ui`: HTML pages over the public HTTP API, called in-process.
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod autoscale;
pub mod bench;
pub mod chore;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypt;
pub mod db;
pub mod engine;
pub(crate) mod group_commit;
pub mod leader;
pub mod load;
pub mod orchestration;
pub mod pgserver;
pub mod queue;
pub mod retry;
pub mod rollout;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod supervisor;
pub mod telemetry;
pub mod tenancy;
mod text_enum;
pub mod tls;
pub mod ui;
pub mod wake;

/// Probe job kinds for crash and concurrency tests.
#[cfg(feature = "testkit")]
pub mod probe;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
