//! Chores: periodic clean-up that one process does for the whole cluster, whichever holds the queue's maintenance
//! lease. The module that owns a table builds its chore (what to delete, how much at a time) and registers it
//! through [`crate::engine::EngineHandlers::chore`]; a worker runs the chores it was given and knows no table.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What a chore gets each time it runs.
#[derive(Clone)]
pub struct ChoreContext {
    /// The database.
    pub pool: PgPool,
    /// How long records of past work (the event log, loads) are kept (`ORDO_RETAIN_EVENTS_DAYS`).
    pub retention: Duration,
    /// Cancelled when the worker stops: a chore working in passes checks it between passes.
    pub stop: CancellationToken,
}

type Work = Arc<dyn Fn(ChoreContext) -> BoxFuture<'static, ()> + Send + Sync>;

/// A named piece of periodic clean-up, run only by the holder of a lease.
#[derive(Clone)]
pub struct Chore {
    name: &'static str,
    first: Duration,
    every: Duration,
    work: Work,
}

impl std::fmt::Debug for Chore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chore")
            .field("name", &self.name)
            .field("first", &self.first)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Chore {
    /// A chore run `first` after start and then every `every`; `work` logs its own failures.
    pub fn new<F, Fut>(name: &'static str, first: Duration, every: Duration, work: F) -> Self
    where
        F: Fn(ChoreContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Chore {
            name,
            first,
            every,
            work: Arc::new(move |ctx| Box::pin(work(ctx))),
        }
    }

    /// Its name, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the chore on schedule until `ctx.stop` fires, each time only if `holder` holds the lease `lease` then.
    pub async fn run(self, ctx: ChoreContext, lease: &'static str, holder: String) {
        let mut wait = self.first;
        loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.every;
            if !holds(&ctx.pool, lease, &holder).await {
                continue;
            }
            tracing::trace!(chore = self.name, "running chore");
            (self.work)(ctx.clone()).await;
        }
    }
}

/// Whether `holder` holds the lease `lease` now.
async fn holds(pool: &PgPool, lease: &str, holder: &str) -> bool {
    let leading = crate::leader::holder(pool, lease).await.ok().flatten();
    leading.as_deref() == Some(holder)
}
