//! The engine handler of kind [`EVENT_KIND`]: hands each attempt a worker runs to a group commit, which
//! executes the attempts waiting at that moment as one batch ([`execute_batch`]), and reruns a batch that fails
//! event by event.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use ordo_workers::rules::{self, RuleRegistry};
use ordo_workers::{BoxFuture, StepContext, StepError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::oneshot;

use super::batch::{execute_batch, Executed};
use super::event::EVENT_KIND;
use super::webhook::WebhookDeliverer;
use super::workflow::DefinitionCache;
use super::{Error, Result};
use crate::engine::{panic_message, EngineHandler, EngineHandlers, EngineResult};
use crate::group_commit::{split_by, GroupCommit, Limits};
use crate::queue::{self, Job};
use crate::tenancy::AccountId;

/// Most claimed events a worker puts into one batch (the events waiting behind them in their entities come on
/// top, see [`execute_batch`]).
const BATCH_MAX: usize = 64;

/// Batches a worker executes at once: while some wait on the database (a round trip, the commit's flush), others
/// run their rules. On two cores four measured best (about 6 500 executions/s, against 6 100 with two and 5 600
/// with eight; `benches/orchestration.sh`).
const BATCHES_IN_FLIGHT: usize = 4;

/// Registers the orchestration engine handlers: the event handler and the webhook deliverer.
/// `allow_private_webhooks` lets webhooks reach private, loopback and link-local addresses
/// (`ORDO_WEBHOOK_ALLOW_PRIVATE`).
pub fn register(h: &mut EngineHandlers, allow_private_webhooks: bool) {
    h.register(EventHandler::new(rules::registry()));
    h.register(WebhookDeliverer::new(allow_private_webhooks));
}

/// The engine handler that executes orchestration events. Each attempt is handed to a group commit
/// ([`crate::group_commit`]), which takes every attempt waiting at that moment (up to [`BATCH_MAX`], with no
/// linger) and executes them together in one transaction.
#[derive(Clone)]
pub struct EventHandler {
    rules: Arc<RuleRegistry>,
    definitions: Arc<DefinitionCache>,
    /// The batches' dispatcher; the first attempt starts it, on the worker's pool.
    batches: Arc<Mutex<Option<GroupCommit<Submission>>>>,
}

/// An attempt handed to the batch dispatcher, and where its result goes.
type Submission = (Job, oneshot::Sender<EngineResult>);

impl EventHandler {
    /// A handler running `rules`.
    pub fn new(rules: RuleRegistry) -> Self {
        EventHandler {
            rules: Arc::new(rules),
            definitions: Arc::default(),
            batches: Arc::default(),
        }
    }

    /// Executes the events of jobs this process has claimed or locked (all of one account, in id order), in
    /// `owner`'s name, inside the transaction `conn` is in (sync events accepted and run in one transaction), so
    /// they commit with the caller's.
    pub(crate) async fn execute_on(&self, conn: &mut PgConnection, jobs: Vec<Job>, owner: &str) -> Result<Executed> {
        let Some(first) = jobs.first() else {
            return Ok(Executed::default());
        };
        let account = AccountId::parse(&first.account_id).map_err(|e| Error::Corrupt(e.to_string()))?;
        execute_batch(conn, &self.rules, &self.definitions, &account, jobs, owner, false).await
    }

    /// The running batch dispatcher, started when none runs (the first attempt, or a new runtime).
    fn batches(&self, pool: &PgPool) -> GroupCommit<Submission> {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        match batches.as_ref() {
            Some(b) if !b.is_closed() => b.clone(),
            _ => {
                let (pool, rules, definitions) = (pool.clone(), self.rules.clone(), self.definitions.clone());
                let limits = Limits {
                    max_batch: BATCH_MAX,
                    flushes: BATCHES_IN_FLIGHT,
                    depth: 4096,
                };
                let b = GroupCommit::start(limits, move |batch| {
                    let (pool, rules, definitions) = (pool.clone(), rules.clone(), definitions.clone());
                    async move { run_batch(&pool, &rules, &definitions, batch).await }
                });
                *batches = Some(b.clone());
                b
            }
        }
    }
}

impl EngineHandler for EventHandler {
    fn kind(&self) -> &'static str {
        EVENT_KIND
    }

    fn run(&self, pool: PgPool, job: Job, _ctx: StepContext) -> BoxFuture<'static, EngineResult> {
        let batches = self.batches(&pool);
        Box::pin(async move {
            let (done, result) = oneshot::channel();
            if batches.submit((job, done)).await.is_err() {
                return retry("the event batch dispatcher stopped".to_owned());
            }
            result
                .await
                .unwrap_or_else(|_| retry("the event batch was dropped".to_owned()))
        })
    }
}

fn retry(reason: String) -> EngineResult {
    EngineResult::Step(Err(StepError::Retry { reason, after: None }))
}

/// Executes a batch, one transaction per account in it. When a transaction fails (a database error, a lost
/// lease, a panicking rule, a position taken out of order), each of its events runs again on its own, so one bad
/// event costs the others only a second try.
async fn run_batch(pool: &PgPool, rules: &RuleRegistry, definitions: &DefinitionCache, batch: Vec<Submission>) {
    for (account, submissions) in split_by(batch, |s| s.0.account_id.clone()) {
        let (jobs, replies): (Vec<Job>, Vec<oneshot::Sender<EngineResult>>) = submissions.into_iter().unzip();
        let account = match AccountId::parse(&account) {
            Ok(a) => a,
            Err(e) => {
                for r in replies {
                    let _ = r.send(retry(format!("corrupt job: {e}")));
                }
                continue;
            }
        };
        let owner = jobs[0].lease_owner.clone().unwrap_or_else(|| "worker".to_owned());
        let together = execute_pooled(pool, rules, definitions, &account, jobs.clone(), &owner, true).await;
        match together {
            Ok(()) => {
                for r in replies {
                    let _ = r.send(EngineResult::Settled);
                }
            }
            Err(e) if jobs.len() == 1 => {
                if let Some(r) = replies.into_iter().next() {
                    let _ = r.send(settled_or_retry(Err(e)));
                }
            }
            Err(e) => {
                tracing::warn!(events = jobs.len(), error = %e, "event batch rolled back; its events run one by one");
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let alone = execute_pooled(pool, rules, definitions, &account, vec![job], &owner, false).await;
                    let _ = reply.send(settled_or_retry(alone));
                }
            }
        }
    }
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// A job's lease was lost: another worker owns it, and none of the batch was committed.
    #[error("lease lost")]
    LeaseLost,
    /// Anything else; the attempt is retried.
    #[error("{0}")]
    Other(String),
}

fn settled_or_retry(r: Result<(), BatchError>) -> EngineResult {
    match r {
        Ok(()) => EngineResult::Settled,
        // Another worker owns the job now (or it was cancelled): nothing of this attempt was committed.
        Err(BatchError::LeaseLost) => EngineResult::Settled,
        Err(BatchError::Other(reason)) => retry(format!("execute event: {reason}")),
    }
}

/// [`execute_batch`] on a connection of `pool`, with a panicking rule caught.
async fn execute_pooled(
    pool: &PgPool,
    rules: &RuleRegistry,
    definitions: &DefinitionCache,
    account: &AccountId,
    jobs: Vec<Job>,
    owner: &str,
    chain: bool,
) -> Result<(), BatchError> {
    let run = async {
        let mut tx = pool.begin().await?;
        let executed = execute_batch(&mut tx, rules, definitions, account, jobs, owner, chain).await?;
        tx.commit().await?;
        executed.record("worker");
        Ok::<_, Error>(())
    };
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(Error::Queue(queue::Error::LeaseLost { .. }))) => Err(BatchError::LeaseLost),
        Ok(Err(e)) => Err(BatchError::Other(e.to_string())),
        Err(panic) => Err(BatchError::Other(format!(
            "a rule panicked: {}",
            panic_message(panic.as_ref())
        ))),
    }
}
