//! The seam between the worker runtime and the modules that plug into it: engine handlers (job kinds implemented
//! inside the engine because they need the database: the orchestration executor, webhooks, load chunks) and the
//! chores their owners register with queue maintenance. It sits below `runtime`, `orchestration` and `load`, so
//! the runtime runs what it is given and knows none of their tables.
//!
//! An engine handler may settle its job itself, inside its own transaction, with [`crate::queue::complete_in`], so
//! its effects commit with the completion or not at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use ordo_workers::{BoxFuture, Outcome, StepContext, StepError};
use sqlx::PgPool;

use crate::chore::Chore;
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

/// Engine handlers by kind, and the maintenance chores of the modules that provide them.
#[derive(Clone, Default)]
pub struct EngineHandlers {
    by_kind: BTreeMap<String, Arc<dyn EngineHandler>>,
    chores: Vec<Chore>,
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

    /// Adds a chore that the holder of the maintenance lease runs.
    pub fn chore(&mut self, chore: Chore) -> &mut Self {
        self.chores.push(chore);
        self
    }

    /// The chores registered.
    pub fn chores(&self) -> &[Chore] {
        &self.chores
    }
}

/// The message a panic carried (its `&str` or `String` payload).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
