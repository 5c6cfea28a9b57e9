//! Engine handlers: job kinds implemented inside the engine because they need the database (the orchestration
//! executor, inventory rules). Such a handler may settle its job itself, inside its own transaction, with
//! [`crate::queue::complete_in`], so its effects commit with the completion or not at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use ordo_workers::{BoxFuture, Outcome, StepContext, StepError};
use sqlx::PgPool;

use crate::queue::Job;

/// What an engine handler did.
#[derive(Debug)]
pub enum EngineResult {
    /// An outcome for the runtime to settle, like a step handler's.
    Step(Result<Outcome, StepError>),
    /// The handler already completed the job in its own transaction.
    Settled,
}

/// A job kind that runs inside the engine with database access.
pub trait EngineHandler: Send + Sync + 'static {
    /// The kind it handles.
    fn kind(&self) -> &'static str;
    /// Runs one attempt.
    fn run(&self, pool: PgPool, job: Job, ctx: StepContext) -> BoxFuture<'static, EngineResult>;
}

/// Engine handlers by kind.
#[derive(Clone, Default)]
pub struct EngineHandlers {
    by_kind: BTreeMap<String, Arc<dyn EngineHandler>>,
}

impl EngineHandlers {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler, replacing one of the same kind.
    pub fn register(&mut self, h: impl EngineHandler) -> &mut Self {
        self.by_kind.insert(h.kind().to_owned(), Arc::new(h));
        self
    }

    /// The handler of a kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn EngineHandler>> {
        self.by_kind.get(kind).cloned()
    }

    /// Kinds handled.
    pub fn kinds(&self) -> Vec<String> {
        self.by_kind.keys().cloned().collect()
    }
}
