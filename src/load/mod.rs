//! Loads: high-volume batch data (CONTRACT §6). A load is a named container for one UTC day; each batch of up to
//! [`MAX_RECORDS`] inventory records is validated at the door, split into chunks by position and processed by
//! queued jobs of kind [`LOAD_KIND`], which upsert the changed positions and fire their workflow.
//!
//! Owns the tables `load`, `load_batch` and `load_chunk`; inventory positions and events are written through
//! [`crate::orchestration`], which owns them.
//!
//! Invariants:
//! - a position is always in the same partition (a hash of `(sku_ref, location_ref)`), so never in two chunks of a
//!   batch; the chunk jobs of a partition share a concurrency key, so the queue applies a position's records one
//!   batch at a time in acceptance order (a later batch wins), and a chunk locks the positions it changes in key
//!   order against the rule engine;
//! - a chunk's effects (positions, events, results, batch counts) commit together with its job's completion, fenced
//!   by attempt, so a retried or taken-over chunk never applies twice;
//! - a batch is `complete` exactly when all its chunks are, and then `total = unchanged + changed + failed`.
//!
//! [`client`] is the other side: `ordo load FILE`, which streams a file into a load over HTTP.

pub mod apply;
pub mod client;
pub mod records;
pub mod store;

pub use apply::{register, LoadChunkHandler};
pub use records::{Outcome, CHUNK_RECORDS, MAX_RECORDS, PARTITIONS};
pub use store::{Batch, BatchCounts, BatchStatus, Load, LoadDetail, LoadStatus, NewBatch, RecordResult};

/// The job kind that processes one chunk of a load batch: args `{batch_id, chunk}`.
pub const LOAD_KIND: &str = "load.batch";

/// The queue chunk jobs go to (the one every worker serves unless told otherwise).
pub const QUEUE: &str = "default";

/// Errors of loads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is invalid; every bad field is named (HTTP 422).
    #[error("invalid input: {0}")]
    Invalid(crate::queue::FieldErrors),
    /// More records than a batch may hold (HTTP 413).
    #[error("a batch holds at most {max} records, got {got}")]
    TooManyRecords {
        /// The limit.
        max: usize,
        /// Records sent.
        got: usize,
    },
    /// No load with that id in the account (HTTP 404).
    #[error("load {id} not found")]
    LoadNotFound {
        /// The id asked for.
        id: String,
    },
    /// No batch with that id in the load (HTTP 404).
    #[error("batch {id} not found")]
    BatchNotFound {
        /// The id asked for.
        id: String,
    },
    /// A load of that name already exists today (HTTP 409).
    #[error("a load named {name:?} already exists today (id {id}); use it")]
    LoadExists {
        /// The name.
        name: String,
        /// The existing load.
        id: String,
    },
    /// The load's day is over: it takes no more batches (HTTP 409).
    #[error("load {id} is closed (its UTC day {day} is over); open a new load")]
    Closed {
        /// The load.
        id: String,
        /// Its day.
        day: chrono::NaiveDate,
    },
    /// The idempotency key was used with a different batch (HTTP 409).
    #[error("idempotency key {key:?} was already used with a different batch")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// A stored row does not have the shape the schema promises.
    #[error("corrupt load data: {0}")]
    Corrupt(String),
    /// Enqueueing chunk jobs failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    /// Writing positions or events failed.
    #[error(transparent)]
    Orchestration(#[from] crate::orchestration::Error),
    /// A sealed record could not be sealed or opened (see [`crate::crypt`]).
    #[error(transparent)]
    Crypt(#[from] crate::crypt::Error),
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
