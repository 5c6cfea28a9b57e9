//! apalis on ordo: an apalis 1.x backend whose tasks are ordo jobs.
//!
//! An apalis worker (`WorkerBuilder::new(..).backend(OrdoBackend::new(pool, config)).build(handler)`) keeps its
//! handlers and layers and runs on ordo's durable queue, with ordo's guarantees:
//!
//! - **fetching** is ordo's batch claim ([`ordo::queue::claim`]): due jobs of the configured queue and kind, routed
//!   to this pool version or to none, one at a time per concurrency key and in enqueue order; each claimed job is
//!   leased and its lease kept alive by ordo's heartbeats while the worker holds it; the accounts with waiting work
//!   share each claim by their weights and limits, as for `ordo worker`;
//! - **results** settle through ordo's batched, fenced completer: an attempt whose lease was lost (the worker
//!   stalled past the lease and maintenance rescued the job) can no longer complete or fail it;
//! - **failures** become ordo's durable retries with exponential backoff: an error retries the job later (a
//!   [`RetryAfterError`](apalis_core::error::RetryAfterError) after its own delay), an
//!   [`AbortError`](apalis_core::error::AbortError) discards it, and the job is discarded once `max_attempts` are
//!   used up, every attempt's error recorded. apalis's in-process retry layer is not needed (see [`settle`]);
//! - **shutdown** hands back the jobs fetched but never started, available at once and their attempt not used up;
//! - **pushing** through apalis's `TaskSink` (`push`, `push_bulk`, `push_task`, …) enqueues ordo jobs in the
//!   configured account: the task's idempotency key, priority (ordo's 0..9, 0 first), `run_at`, `max_attempts`
//!   and queue carry over, and the concurrency key comes from the task's [`ConcurrencyKey`] metadata.
//!
//! Data flow: `claim → (Job, lease) → Task<Value> → decode → user layers → handler → settle layer → completer`.
//! Jobs enqueued through ordo's HTTP API (`{"kind": "<config.kind>", "args": …}`) reach the handler as its
//! arguments, decoded from the job's JSON `args`; a task pushed here is an ordo job any client can read.

#![warn(missing_docs)]

mod backend;
mod config;
mod fetch;
pub mod settle;
mod sink;

pub use backend::OrdoBackend;
pub use config::Config;
pub use settle::{OrdoJob, SettleLayer, SettleService};

use apalis_core::backend::codec::Codec;
use apalis_core::task::metadata::{Metadata, MetadataError, MetadataStore};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// ordo's queue refused or failed an operation (a push, a claim).
    #[error(transparent)]
    Queue(#[from] ordo::queue::Error),
    /// A pushed task cannot be an ordo job.
    #[error("task cannot be enqueued: {0}")]
    InvalidTask(String),
    /// The backend's background runtime ended abnormally.
    #[error("the backend's runtime failed: {0}")]
    Runtime(String),
}

/// Task arguments as JSON values, the form of an ordo job's `args`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<T: Serialize + DeserializeOwned> Codec<T> for JsonCodec {
    type Error = serde_json::Error;
    type Compact = Value;

    fn encode(&self, val: &T) -> Result<Value, serde_json::Error> {
        serde_json::to_value(val)
    }

    fn decode(&self, val: &Value) -> Result<T, serde_json::Error> {
        T::deserialize(val)
    }
}

/// The metadata key of [`ConcurrencyKey`].
pub const CONCURRENCY_KEY: &str = "ordo.concurrency_key";

/// Task metadata naming the job's ordo concurrency key: jobs of one key never run at the same time and start in
/// the order they were enqueued, across every worker. Set on push (`TaskBuilder::metadata(&ConcurrencyKey(..))`);
/// a fetched task carries the key of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyKey(pub String);

/// Why a [`ConcurrencyKey`] could not be read from or written to a task's metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConcurrencyKeyError {
    /// The task has no concurrency key.
    #[error("the task's metadata has no {CONCURRENCY_KEY}")]
    Missing,
    /// The task has one already.
    #[error(transparent)]
    Duplicate(#[from] MetadataError),
}

impl Metadata for ConcurrencyKey {
    type Error = ConcurrencyKeyError;

    fn extract(map: &MetadataStore) -> Result<Self, ConcurrencyKeyError> {
        map.get(CONCURRENCY_KEY)
            .map(|k| ConcurrencyKey(k.to_owned()))
            .ok_or(ConcurrencyKeyError::Missing)
    }

    fn inject(&self, map: &mut MetadataStore) -> Result<(), ConcurrencyKeyError> {
        Ok(map.insert(CONCURRENCY_KEY, self.0.clone())?)
    }
}
