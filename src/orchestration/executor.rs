//! The rule engine: the engine handler of kind [`EVENT_KIND`], which executes orchestration events.
//!
//! One execution: lock the event and its (root) entity, load the workflow version pinned to the entity, run the
//! matching rulesets' rules in order on an in-memory copy of the entity and the inventory positions they name,
//! loop over inline events (same entity) up to [`MAX_INLINE_EVENTS`], then write the entity, changed positions,
//! inline events, emitted events (queued jobs), webhook jobs, audit records and the job's completion together.
//! When a rule fails and no exception ruleset of the same name exists, only the event's `failed` status and its
//! audit records are written: nothing of the execution reached the database before, so there is nothing to undo.
//!
//! Executions run in batches ([`execute_batch`]): a worker executes the events it has claimed in one
//! transaction, each on the batch's in-memory copy of its entity, and writes them with one statement per kind of
//! write, so the commit's flush and the round trips are paid once per batch, not once per event.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt;
use ordo_workers::rules::{
    self, template, Action, EntityKey, EntityView, EventView, Position, PositionKey, RuleContext, RuleError,
    RuleRegistry,
};
use ordo_workers::{BoxFuture, StepContext, StepError};
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, PgPool};
use tokio::sync::oneshot;

use super::audit::{self, Audit, Category};
use super::event::{accept_many, draw_seqs, insert_rows, Accept, EventKind, EventStatus, Row, EVENT_COLUMNS};
use super::inventory::{lock_positions, write_positions};
use super::webhook::{self, WebhookDeliverer};
use super::workflow::{get_version, Definition, RuleCall, Ruleset, RulesetKind, Version};
use super::{Error, Result};
use crate::engine::{panic_message, EngineHandler, EngineHandlers, EngineResult};
use crate::group_commit::{split_by, GroupCommit, Limits};
use crate::queue::{self, Completion, Job, JobState, NewJob};
use crate::telemetry::metrics as m;
use crate::telemetry::trace;
use crate::tenancy::AccountId;

/// The job kind of an orchestration event.
pub const EVENT_KIND: &str = "orchestration.event";

/// Most inline events (same entity) one execution may run after its root event; one more fails the event.
pub const MAX_INLINE_EVENTS: usize = 500;

/// The furthest ahead a rule may schedule an event (ten years), so a delay taken from input cannot overflow a
/// timestamp.
const MAX_DELAY_SECONDS: u64 = 10 * 366 * 86_400;

/// Most claimed events a worker puts into one batch (the events waiting behind them in their entities come on
/// top, see [`execute_batch`]).
const BATCH_MAX: usize = 64;

/// Batches a worker executes at once: while some wait on the database (a round trip, the commit's flush), others
/// run their rules. On two cores four measured best (about 6 500 executions/s, against 6 100 with two and 5 600
/// with eight; `benches/orchestration.sh`).
const BATCHES_IN_FLIGHT: usize = 4;

/// Registers the orchestration engine handlers: the event executor and the webhook deliverer.
/// `allow_private_webhooks` lets webhooks reach private, loopback and link-local addresses
/// (`ORDO_WEBHOOK_ALLOW_PRIVATE`).
pub fn register(h: &mut EngineHandlers, allow_private_webhooks: bool) {
    h.register(EventExecutor::new(rules::registry()));
    h.register(WebhookDeliverer::new(allow_private_webhooks));
}

/// The engine handler that executes orchestration events. Each attempt is handed to a group commit
/// ([`crate::group_commit`]), which takes every attempt waiting at that moment (up to [`BATCH_MAX`], with no
/// linger) and executes them together in one transaction.
#[derive(Clone)]
pub struct EventExecutor {
    rules: Arc<RuleRegistry>,
    definitions: Arc<DefinitionCache>,
    /// The batches' dispatcher; the first attempt starts it, on the worker's pool.
    batches: Arc<Mutex<Option<GroupCommit<Submission>>>>,
}

/// An attempt handed to the batch dispatcher, and where its result goes.
type Submission = (Job, oneshot::Sender<EngineResult>);

impl EventExecutor {
    /// An executor running `rules`.
    pub fn new(rules: RuleRegistry) -> Self {
        EventExecutor {
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

/// Parsed workflow definitions by `(account, ref, major, minor)`. Versions are immutable, so an entry never goes
/// stale; the cache only saves fetching and parsing the definition on every execution.
#[derive(Default)]
pub(crate) struct DefinitionCache {
    by_version: Mutex<HashMap<VersionKey, Arc<Definition>>>,
}

/// `(account, ref, major, minor)`.
type VersionKey = (String, String, i32, i32);

/// Entries kept before the cache starts over (a bound, not a tuning knob: workflows are few).
const DEFINITION_CACHE_SIZE: usize = 1024;

impl DefinitionCache {
    fn get(&self, key: &VersionKey) -> Option<Arc<Definition>> {
        self.by_version.lock().ok()?.get(key).cloned()
    }

    fn put(&self, key: VersionKey, def: Arc<Definition>) {
        if let Ok(mut m) = self.by_version.lock() {
            if m.len() >= DEFINITION_CACHE_SIZE {
                m.clear();
            }
            m.insert(key, def);
        }
    }
}

impl EngineHandler for EventExecutor {
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
/// lease, a panicking rule), each of its events runs again on its own, so one bad event costs the others only a
/// second try.
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

/// Why an execution stopped early.
enum Abort {
    /// The event fails (rule failure without exception path, inline cap): only its audit is kept.
    Failed(String),
    /// Infrastructure trouble: the attempt is retried.
    Error(Error),
}

impl From<Error> for Abort {
    fn from(e: Error) -> Self {
        Abort::Error(e)
    }
}

impl From<sqlx::Error> for Abort {
    fn from(e: sqlx::Error) -> Self {
        Abort::Error(e.into())
    }
}

impl From<RuleError> for Abort {
    fn from(e: RuleError) -> Self {
        Abort::Failed(e.to_string())
    }
}

/// The entity and the positions it touched, as changed so far.
#[derive(Clone)]
struct State {
    status: String,
    attributes: Value,
    positions: BTreeMap<PositionKey, Position>,
    dirty: BTreeSet<PositionKey>,
}

/// An event of this execution: index 0 is the root, the rest are inline events.
struct Local {
    name: String,
    attributes: Value,
    source: usize,
    status: EventStatus,
    error: Option<String>,
}

/// An event leaving the execution as a queued job.
struct Emitted {
    name: String,
    entity: EntityKey,
    attributes: Value,
    delay_seconds: Option<u64>,
    source: usize,
}

struct Run<'a> {
    account: &'a AccountId,
    rules: &'a RuleRegistry,
    def: &'a Definition,
    key: EntityKey,
    subtype: String,
    state: State,
    /// Positions as read from the database (locked), the base for `state.positions`.
    loaded: BTreeMap<PositionKey, Position>,
    events: Vec<Local>,
    emitted: Vec<Emitted>,
    webhooks: Vec<(String, usize)>,
    audits: Vec<Audit>,
}

#[derive(sqlx::FromRow)]
struct LockedEvent {
    #[sqlx(flatten)]
    row: super::event::EventRow,
}

/// The event of a claimed job with its entity, both locked, and the workflow minor in force.
#[derive(sqlx::FromRow)]
struct Locked {
    locked_job_id: i64,
    #[sqlx(flatten)]
    row: super::event::EventRow,
    subtype: String,
    entity_status: String,
    entity_attributes: Value,
    workflow_major: i32,
    workflow_minor: Option<i32>,
}

static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<String> = EVENT_COLUMNS.split(", ").map(|c| format!("ev.{c}")).collect();
    // The events are found by their job ids and each entity by its key, one index probe each: `limit 1` keeps
    // the entity lookup a probe per event, where a join planned on a fresh table's statistics scanned them all.
    format!(
        r#"
        select ev.job_id as locked_job_id, {cols},
               en.subtype, en.status as entity_status, en.attributes as entity_attributes, en.workflow_major,
               (select max(w.minor)
                from workflow w
                where w.account_id = ev.account_id
                  and w.ref = ev.entity_type || '::' || en.subtype
                  and w.major = en.workflow_major) as workflow_minor
        from event ev
        cross join lateral (
            select en.subtype, en.status, en.attributes, en.workflow_major
            from entity en
            where en.account_id = ev.account_id
              and en.type = ev.entity_type
              and en.ref = ev.entity_ref
            limit 1
            for update
        ) en
        where ev.account_id = $1
          and ev.job_id = any($2)
          and ev.job_id is not null
        for update of ev
        "#,
        cols = cols.join(", ")
    )
});

/// Locks the events of `jobs` with their entities, by job id; an event whose entity is gone is left out.
async fn lock_events(conn: &mut PgConnection, account: &AccountId, jobs: &[Job]) -> Result<HashMap<i64, Locked>> {
    let ids: Vec<i64> = jobs.iter().map(|j| j.id.0).collect();
    let rows: Vec<Locked> = sqlx::query_as(LOCK_SQL.as_str())
        .bind(account.as_str())
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(|l| (l.locked_job_id, l)).collect())
}

/// Most events executed in one batch's transaction.
const BATCH_EVENTS_MAX: usize = 1024;

/// How long a batch may keep its transaction (and its entities' locks) open before it commits.
const CHAIN_BUDGET: Duration = Duration::from_millis(100);

/// Executes the events of `jobs` (claimed, or locked by the caller's transaction; all of `account`) in `owner`'s
/// name in the transaction `tx` is in, which the caller commits (or rolls back on an error). Each event runs on
/// the batch's in-memory copy of its entity, so events of one entity see each other's changes, and everything is
/// written at the end with one statement per kind of write. With `chain`, the events already waiting behind them
/// in their entities are locked and run in the same transaction ([`queue::lock_following`]), round after round,
/// until none wait or the batch reaches [`BATCH_EVENTS_MAX`] events or [`CHAIN_BUDGET`]: one commit for a run of
/// an entity's events, where the commit's flush would otherwise bound an entity's serial rate. Nothing is visible
/// until it commits; a crash loses none of it (the claimed jobs' leases expire).
pub(crate) async fn execute_batch(
    tx: &mut PgConnection,
    rules: &RuleRegistry,
    definitions: &DefinitionCache,
    account: &AccountId,
    jobs: Vec<Job>,
    owner: &str,
    chain: bool,
) -> Result<Executed> {
    let started = Instant::now();
    crate::crypt::prepare(account.as_str()).await?;
    // The claimed jobs carry the version of the worker that claimed them: the runs behind them may be routed to
    // it too, or to none.
    let version = jobs.iter().find_map(|j| j.version.clone());
    let mut batch = Batch {
        account,
        rules,
        definitions,
        entities: HashMap::new(),
        positions: BTreeMap::new(),
        out: Writes::default(),
    };
    let mut round = jobs;
    let mut executed = 0;
    loop {
        let mut locked = lock_events(tx, account, &round).await?;
        // Per entity, the last job this round ran: the events waiting behind it come next.
        let mut last_of_key: HashMap<String, Job> = HashMap::new();
        for job in round {
            match locked.remove(&job.id.0) {
                Some(l) => batch.execute(tx, &job, l).await?,
                None => batch.execute_unlocked(tx, &job).await?,
            }
            if let Some(key) = job.concurrency_key.clone() {
                last_of_key.insert(key, job);
            }
            executed += 1;
        }
        let follow: Vec<Job> = last_of_key.into_values().collect();
        if !chain {
            break;
        }
        let room = BATCH_EVENTS_MAX.saturating_sub(executed);
        if follow.is_empty() || room == 0 || started.elapsed() >= CHAIN_BUDGET {
            break;
        }
        let per_key = (room / follow.len()).max(1) as i64;
        round = queue::lock_following(&mut *tx, &follow, version.as_deref(), per_key).await?;
        if round.is_empty() {
            break;
        }
    }
    batch.out.complete(tx, account, owner).await?;
    let queued = !batch.out.emitted.is_empty() || !batch.out.hooks.is_empty();
    batch.out.write(tx, account, &batch.entities).await?;
    Ok(Executed {
        events: executed,
        queued,
    })
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Executed {
    /// Events executed (or skipped, or failed at once), the runs behind the claimed ones included.
    pub events: usize,
    /// Whether it queued work for workers (emitted events, webhook deliveries).
    pub queued: bool,
}

impl Executed {
    /// Counts the batch in the metrics once its transaction has committed; `path` is `worker` or `sync`.
    pub(crate) fn record(&self, path: &'static str) {
        metrics::counter!(m::EVENT_BATCHES_TOTAL, "path" => path).increment(1);
        metrics::counter!(m::EVENT_BATCH_EVENTS_TOTAL, "path" => path).increment(self.events as u64);
    }
}

/// A batch's working state.
struct Batch<'a> {
    account: &'a AccountId,
    rules: &'a RuleRegistry,
    definitions: &'a DefinitionCache,
    /// Each entity the batch has locked, as its executions have left it so far.
    entities: HashMap<EntityKey, Current>,
    /// Each position the batch has locked, as its successful executions have left it so far.
    positions: BTreeMap<PositionKey, Position>,
    out: Writes,
}

/// An entity as a batch's executions have left it.
struct Current {
    subtype: String,
    status: String,
    attributes: Value,
    major: i32,
    /// Whether an execution succeeded on it (and it must be written).
    changed: bool,
}

impl Batch<'_> {
    /// Executes the event of `job`, locked with its entity, and stages its writes.
    async fn execute(&mut self, conn: &mut PgConnection, job: &Job, locked: Locked) -> Result<()> {
        let root = locked.row.into_event(self.account)?;
        if root.status.is_final() {
            // Cancelled while its job waited, or already executed by an earlier attempt that lost its lease late.
            self.out.settle(job, json!({"skipped": root.status}));
            return Ok(());
        }
        let key = root.entity.clone();
        // An entity an earlier event of the batch ran on is as that event left it, not as the database has it.
        let current = match self.entities.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Current {
                subtype: locked.subtype,
                status: locked.entity_status,
                attributes: super::entity::open_attributes(self.account, &key, locked.entity_attributes)?,
                major: locked.workflow_major,
                changed: false,
            }),
        };
        let reference = format!("{}::{}", key.entity_type, current.subtype);
        let major = current.major;
        let Some(minor) = locked.workflow_minor else {
            let msg = format!("workflow {reference} version {major}.x not found");
            self.out.fail(job, root.seq, &key, &msg, &[]);
            return Ok(());
        };
        let version = Version { major, minor };
        let cache_key = (self.account.as_str().to_owned(), reference.clone(), major, minor);
        let definition = match self.definitions.get(&cache_key) {
            Some(d) => d,
            None => {
                let w = get_version(&mut *conn, self.account, &reference, Some(major), Some(minor)).await?;
                let d = Arc::new(w.definition);
                self.definitions.put(cache_key, d.clone());
                d
            }
        };
        let mut run = Run {
            account: self.account,
            rules: self.rules,
            def: &definition,
            key: key.clone(),
            subtype: current.subtype.clone(),
            state: State {
                status: current.status.clone(),
                attributes: current.attributes.clone(),
                positions: BTreeMap::new(),
                dirty: BTreeSet::new(),
            },
            loaded: std::mem::take(&mut self.positions),
            events: vec![Local {
                name: root.name.clone(),
                attributes: root.attributes,
                source: 0,
                status: EventStatus::Running,
                error: None,
            }],
            emitted: Vec::new(),
            webhooks: Vec::new(),
            audits: Vec::new(),
        };
        run.audits.push(Audit::new(
            Category::Snapshot,
            root.name,
            0,
            json!({
                "status": run.state.status,
                "attributes": run.state.attributes,
                "workflow": {"ref": reference, "version": version},
            }),
        ));
        let result = run.execute(conn).await;
        self.positions = std::mem::take(&mut run.loaded);
        match result {
            Ok(()) => {
                for k in &run.state.dirty {
                    if let Some(p) = run.state.positions.get(k) {
                        self.positions.insert(k.clone(), *p);
                        self.out.positions.insert(k.clone(), *p);
                    }
                }
                let mut seqs = vec![root.seq];
                seqs.extend(draw_seqs(conn, run.events.len() - 1).await?);
                let retry = definition
                    .settings
                    .get("webhook.retry")
                    .map(String::as_str)
                    .unwrap_or("fast");
                run.stage(&mut self.out, job, &seqs, retry);
                current.status = run.state.status;
                current.attributes = run.state.attributes;
                current.changed = true;
            }
            Err(Abort::Failed(msg)) => self.out.fail(job, root.seq, &key, &msg, &run.audits),
            Err(Abort::Error(e)) => return Err(e),
        }
        Ok(())
    }

    /// A claimed job whose event or entity is gone: nothing to run, or the event fails.
    async fn execute_unlocked(&mut self, conn: &mut PgConnection, job: &Job) -> Result<()> {
        let alone: Option<LockedEvent> = sqlx::query_as(&format!(
            "select {EVENT_COLUMNS} from event where account_id = $1 and job_id = $2 for update"
        ))
        .bind(self.account.as_str())
        .bind(job.id.0)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(alone) = alone else {
            // Not an event of ours any more (pruned): nothing to do.
            self.out.settle(job, json!({"skipped": "no event"}));
            return Ok(());
        };
        let root = alone.row.into_event(self.account)?;
        if root.status.is_final() {
            self.out.settle(job, json!({"skipped": root.status}));
            return Ok(());
        }
        let msg = format!(
            "entity {}:{} not found",
            root.entity.entity_type, root.entity.entity_ref
        );
        self.out.fail(job, root.seq, &root.entity, &msg, &[]);
        Ok(())
    }
}

/// Everything a batch writes, collected from its executions: one statement per kind of write.
#[derive(Default)]
struct Writes {
    /// Changed positions, as last left.
    positions: BTreeMap<PositionKey, Position>,
    /// Inline events, their seqs drawn.
    inline: Vec<Row>,
    /// Root events' outcomes: seq, status, error.
    roots: Vec<(i64, EventStatus, Option<String>)>,
    /// Events leaving their entity, to queue.
    emitted: Vec<Accept>,
    /// Webhook delivery jobs.
    hooks: Vec<NewJob>,
    /// Audit records, in execution order.
    audits: Vec<Row>,
    /// Completions of claimed jobs (leased, `running`), not yet written.
    completions: Vec<Completion>,
    /// Completions of jobs the batch only locked (the events waiting behind the claimed ones), not yet written.
    locked: Vec<Completion>,
}

impl Writes {
    fn settle(&mut self, job: &Job, result: Value) {
        let c = Completion {
            id: job.id,
            attempt: job.attempt,
            result,
        };
        if job.state == JobState::Running {
            self.completions.push(c);
        } else {
            self.locked.push(c);
        }
    }

    /// A failed event: its status and audit records, nothing else of its execution. Its inline events were
    /// never kept, so their records describe the root.
    fn fail(&mut self, job: &Job, root_seq: i64, key: &EntityKey, msg: &str, audits: &[Audit]) {
        self.roots.push((root_seq, EventStatus::Failed, Some(msg.to_owned())));
        self.audits.extend(audit::rows(key, audits, &[root_seq]));
        self.settle(job, json!({"status": "failed", "error": msg}));
    }

    /// Completes the settled jobs, the locked ones in `owner`'s name; a lost lease fails the whole batch (nothing
    /// of it commits).
    async fn complete(&mut self, conn: &mut PgConnection, account: &AccountId, owner: &str) -> Result<()> {
        let mut claimed = std::mem::take(&mut self.completions);
        let mut locked = std::mem::take(&mut self.locked);
        // Results name the outcome and its error, which may quote the customer's data: sealed like any result.
        for c in claimed.iter_mut().chain(locked.iter_mut()) {
            c.result = queue::seal_json(account.as_str(), c.id.0, "result", &c.result)?;
        }
        let mut done = queue::complete_many(&mut *conn, &claimed).await?;
        done.extend(queue::complete_locked(&mut *conn, &locked, owner).await?);
        if let Some(lost) = claimed.iter().chain(&locked).find(|c| !done.contains(&c.id)) {
            return Err(queue::Error::LeaseLost {
                id: lost.id,
                attempt: lost.attempt,
            }
            .into());
        }
        Ok(())
    }

    /// Writes everything but the completions, and the entities the batch changed.
    async fn write(
        self,
        conn: &mut PgConnection,
        account: &AccountId,
        entities: &HashMap<EntityKey, Current>,
    ) -> Result<()> {
        let positions: Vec<(PositionKey, Position)> = self.positions.into_iter().collect();
        write_positions(&mut *conn, account, &positions).await?;
        insert_rows(&mut *conn, account, &self.inline).await?;

        let changed: Vec<(&EntityKey, &Current)> = entities.iter().filter(|(_, c)| c.changed).collect();
        let types: Vec<&str> = changed.iter().map(|(k, _)| k.entity_type.as_str()).collect();
        let refs: Vec<&str> = changed.iter().map(|(k, _)| k.entity_ref.as_str()).collect();
        let statuses: Vec<&str> = changed.iter().map(|(_, c)| c.status.as_str()).collect();
        let attributes: Vec<Value> = changed
            .iter()
            .map(|(k, c)| super::entity::seal_attributes(account, k, &c.attributes))
            .collect::<Result<_, _>>()?;
        let seqs: Vec<i64> = self.roots.iter().map(|r| r.0).collect();
        let outcomes: Vec<&str> = self.roots.iter().map(|r| r.1.as_str()).collect();
        let errors: Vec<Option<String>> = self
            .roots
            .iter()
            .map(|r| {
                r.2.as_deref()
                    .map(|e| super::event::seal_error(account, r.0, e))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        sqlx::query(
            r#"
            with changed as (
                update entity
                set status = u.status,
                    attributes = u.attributes,
                    updated_at = now()
                from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[]) as u(type, ref, status, attributes)
                where entity.account_id = $1
                  -- index conditions of their own, so that no join order can scan the account's rows
                  and entity.type = any($2)
                  and entity.ref = any($3)
                  and entity.type = u.type
                  and entity.ref = u.ref
            )
            update event
            set status = r.status,
                error = r.error,
                processed_at = clock_timestamp()
            from unnest($6::bigint[], $7::text[], $8::text[]) as r(seq, status, error)
            where event.account_id = $1
              and event.seq = any($6)
              and event.seq = r.seq
            "#,
        )
        .bind(account.as_str())
        .bind(&types)
        .bind(&refs)
        .bind(&statuses)
        .bind(&attributes)
        .bind(&seqs)
        .bind(&outcomes)
        .bind(&errors)
        .execute(&mut *conn)
        .await?;

        accept_many(&mut *conn, account, self.emitted).await?;
        queue::enqueue_many(&mut *conn, account, &self.hooks).await?;
        insert_rows(&mut *conn, account, &self.audits).await?;
        Ok(())
    }
}

impl Run<'_> {
    async fn execute(&mut self, conn: &mut PgConnection) -> Result<(), Abort> {
        let mut next = 0;
        while next < self.events.len() {
            self.run_event(conn, next).await?;
            next += 1;
        }
        Ok(())
    }

    async fn run_event(&mut self, conn: &mut PgConnection, idx: usize) -> Result<(), Abort> {
        let def = self.def;
        let name = self.events[idx].name.clone();
        let status = self.state.status.clone();
        let normal = def.matching(RulesetKind::Normal, &name, &self.key.entity_type, &status);
        if normal.is_empty() {
            self.events[idx].status = EventStatus::NoMatch;
            let mut a = Audit::new(Category::NoMatch, name, idx, json!({"status": status}));
            a.status = EventStatus::NoMatch;
            self.audits.push(a);
            return Ok(());
        }
        let saved = (
            self.state.clone(),
            self.events.len(),
            self.emitted.len(),
            self.webhooks.len(),
        );
        match self.run_rulesets(conn, idx, &normal).await {
            Ok(()) => {
                self.events[idx].status = EventStatus::Success;
                Ok(())
            }
            Err(Abort::Failed(msg)) => {
                let exceptions = def.matching(RulesetKind::Exception, &name, &self.key.entity_type, &status);
                if exceptions.is_empty() {
                    return Err(Abort::Failed(msg));
                }
                // The failed pass leaves nothing behind; the exception rulesets start from the same state.
                let (state, events, emitted, webhooks) = saved;
                self.state = state;
                self.events.truncate(events);
                self.emitted.truncate(emitted);
                self.webhooks.truncate(webhooks);
                for a in &mut self.audits {
                    if a.source >= events {
                        a.source = idx;
                    }
                }
                self.audits
                    .push(Audit::new(Category::Exception, name, idx, json!({"error": msg})).failed(msg.clone()));
                self.run_rulesets(conn, idx, &exceptions).await?;
                self.events[idx].status = EventStatus::Success;
                self.events[idx].error = Some(msg);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn run_rulesets(&mut self, conn: &mut PgConnection, idx: usize, rulesets: &[&Ruleset]) -> Result<(), Abort> {
        for rs in rulesets {
            self.audits.push(Audit::new(
                Category::Ruleset,
                rs.name.clone(),
                idx,
                json!({"ruleset": rs.name, "kind": rs.kind, "triggers": rs.triggers}),
            ));
            for call in &rs.rules {
                let started = Instant::now();
                let result = self.run_rule(conn, idx, call).await;
                let duration_us = started.elapsed().as_micros() as u64;
                let details = json!({"ruleset": rs.name, "rule": call.name, "duration_us": duration_us});
                match result {
                    Ok(actions) => {
                        self.audits
                            .push(Audit::new(Category::Rule, call.name.clone(), idx, details));
                        for action in actions {
                            self.apply(conn, idx, action).await?;
                        }
                    }
                    Err(Abort::Failed(msg)) => {
                        self.audits
                            .push(Audit::new(Category::Rule, call.name.clone(), idx, details).failed(msg.clone()));
                        return Err(Abort::Failed(format!("rule {} failed: {msg}", call.name)));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn ctx(&self, idx: usize) -> RuleContext<'_> {
        RuleContext {
            event: EventView {
                name: &self.events[idx].name,
                attributes: &self.events[idx].attributes,
            },
            entity: EntityView {
                entity_type: &self.key.entity_type,
                subtype: &self.subtype,
                entity_ref: &self.key.entity_ref,
                status: &self.state.status,
                attributes: &self.state.attributes,
            },
            settings: &self.def.settings,
            positions: &self.state.positions,
        }
    }

    async fn run_rule(&mut self, conn: &mut PgConnection, idx: usize, call: &RuleCall) -> Result<Vec<Action>, Abort> {
        let rules = self.rules;
        let Some(rule) = rules.get(&call.name) else {
            return Err(Abort::Failed(format!("unknown rule {:?}", call.name)));
        };
        let props = template::render(&call.props, &self.ctx(idx))?;
        let keys = rule.positions(&props)?;
        self.ensure_positions(conn, &keys).await?;
        Ok(rule.apply(&self.ctx(idx), &props)?)
    }

    /// Loads (and locks) positions not read yet, and puts every named one into the working state.
    async fn ensure_positions(&mut self, conn: &mut PgConnection, keys: &[PositionKey]) -> Result<(), Abort> {
        let missing: Vec<PositionKey> = keys.iter().filter(|k| !self.loaded.contains_key(k)).cloned().collect();
        if !missing.is_empty() {
            let found = lock_positions(conn, self.account, &missing).await?;
            for k in missing {
                let p = found.get(&k).copied().unwrap_or_default();
                self.loaded.insert(k, p);
            }
        }
        for k in keys {
            let base = self.loaded.get(k).copied().unwrap_or_default();
            self.state.positions.entry(k.clone()).or_insert(base);
        }
        Ok(())
    }

    async fn apply(&mut self, conn: &mut PgConnection, idx: usize, action: Action) -> Result<(), Abort> {
        let record = serde_json::to_value(&action).unwrap_or(Value::Null);
        let label = record
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("action")
            .to_owned();
        match action {
            Action::SetState { status } => {
                if !self.def.declares(&status) {
                    return Err(Abort::Failed(format!(
                        "status {status:?} is not declared by the workflow"
                    )));
                }
                self.state.status = status;
            }
            Action::SetAttribute { name, value } => {
                if !self.state.attributes.is_object() {
                    self.state.attributes = Value::Object(Map::new());
                }
                if let Some(m) = self.state.attributes.as_object_mut() {
                    m.insert(name, value);
                }
            }
            Action::SendEvent {
                event_name,
                entity: None,
                attributes,
            } => {
                if self.events.len() > MAX_INLINE_EVENTS {
                    return Err(Abort::Failed(format!(
                        "more than {MAX_INLINE_EVENTS} inline events in one execution"
                    )));
                }
                self.events.push(Local {
                    name: event_name,
                    attributes: Value::Object(attributes),
                    source: idx,
                    status: EventStatus::Pending,
                    error: None,
                });
            }
            Action::SendEvent {
                event_name,
                entity: Some(entity),
                attributes,
            } => self.emitted.push(Emitted {
                name: event_name,
                entity,
                attributes: Value::Object(attributes),
                delay_seconds: None,
                source: idx,
            }),
            Action::ScheduleEvent {
                event_name,
                delay_seconds,
                ..
            } if delay_seconds > MAX_DELAY_SECONDS => {
                return Err(Abort::Failed(format!(
                    "cannot schedule {event_name} {delay_seconds} s ahead: at most {MAX_DELAY_SECONDS} s"
                )));
            }
            Action::ScheduleEvent {
                event_name,
                entity,
                attributes,
                delay_seconds,
            } => self.emitted.push(Emitted {
                name: event_name,
                entity: entity.unwrap_or_else(|| self.key.clone()),
                attributes: Value::Object(attributes),
                delay_seconds: Some(delay_seconds),
                source: idx,
            }),
            Action::SendWebhook { url } => self.webhooks.push((url, idx)),
            Action::Log { message } => {
                self.audits
                    .push(Audit::new(Category::Custom, "log", idx, json!({"message": message})));
                return Ok(());
            }
            Action::Reserve { position, qty } => {
                self.change(conn, &position, |p| {
                    p.reserved = p.reserved.checked_add(qty).ok_or("reserved quantity overflows")?;
                    Ok(())
                })
                .await?
            }
            Action::ConfirmSale { position, qty } => {
                self.change(conn, &position, |p| {
                    if p.reserved < qty {
                        return Err(format!("only {} reserved", p.reserved));
                    }
                    p.reserved -= qty;
                    p.on_hand -= qty;
                    Ok(())
                })
                .await?
            }
            Action::Release { position, qty } => {
                self.change(conn, &position, |p| {
                    if p.reserved < qty {
                        return Err(format!("only {} reserved", p.reserved));
                    }
                    p.reserved -= qty;
                    Ok(())
                })
                .await?
            }
            Action::UpsertPosition { position, on_hand } => {
                self.change(conn, &position, |p| {
                    p.on_hand = on_hand;
                    Ok(())
                })
                .await?
            }
        }
        self.audits.push(Audit::new(Category::Action, label, idx, record));
        Ok(())
    }

    async fn change(
        &mut self,
        conn: &mut PgConnection,
        key: &PositionKey,
        f: impl FnOnce(&mut Position) -> std::result::Result<(), String>,
    ) -> Result<(), Abort> {
        self.ensure_positions(conn, std::slice::from_ref(key)).await?;
        let Some(p) = self.state.positions.get_mut(key) else {
            return Err(Abort::Failed(format!("position {key} not loaded")));
        };
        let mut next = *p;
        f(&mut next).map_err(|e| Abort::Failed(format!("position {key}: {e}")))?;
        if next.on_hand < 0 || next.reserved < 0 {
            return Err(Abort::Failed(format!("position {key} would go negative")));
        }
        *p = next;
        self.state.dirty.insert(key.clone());
        Ok(())
    }

    /// Stages what a successful execution writes; `seqs` are its events' seqs, the root's first.
    fn stage(&self, out: &mut Writes, job: &Job, seqs: &[i64], retry: &str) {
        out.inline
            .extend(self.events.iter().enumerate().skip(1).map(|(i, e)| Row {
                seq: seqs[i],
                name: e.name.clone(),
                kind: EventKind::Orchestration,
                category: None,
                status: e.status,
                entity: self.key.clone(),
                attributes: e.attributes.clone(),
                source_event_id: Some(seqs[e.source]),
                job_id: None,
                scheduled_at: None,
                processed: true,
                error: e.error.clone(),
                traceparent: job.traceparent.clone(),
            }));
        let root = &self.events[0];
        out.roots.push((seqs[0], root.status, root.error.clone()));

        // Events leaving the entity: queued jobs of their own root entities.
        let now = Utc::now();
        out.emitted.extend(self.emitted.iter().map(|e| {
            Accept {
                name: e.name.clone(),
                entity: e.entity.clone(),
                attributes: e.attributes.clone(),
                // Bounded by MAX_DELAY_SECONDS when the action was applied.
                scheduled_at: e
                    .delay_seconds
                    .map(|s| now + chrono::Duration::seconds(s.min(MAX_DELAY_SECONDS) as i64)),
                source_event_id: Some(seqs[e.source]),
                idempotency_key: None,
                // Each emitted event is a new hop of the caller's trace.
                traceparent: trace::child_of(job.traceparent.as_deref()),
            }
        }));

        // Webhooks: one delivery job each, with a key stable across its retries.
        out.hooks
            .extend(self.webhooks.iter().enumerate().map(|(n, (url, src))| {
                let e = &self.events[*src];
                let seq = seqs[*src];
                let body = json!({
                    "id": seq.to_string(),
                    "seq": seq,
                    "name": e.name,
                    "kind": "orchestration",
                    "status": "success",
                    "entity": self.key,
                    "entity_status": self.state.status,
                    "entity_attributes": self.state.attributes,
                    "attributes": e.attributes,
                    "source_event_id": (*src != 0).then(|| seqs[e.source].to_string()),
                    "processed_at": now,
                });
                let mut hook = webhook::delivery_job(self.account, url, body, seq, n, retry, &self.key);
                hook.traceparent = trace::child_of(job.traceparent.as_deref());
                hook
            }));

        out.audits.extend(audit::rows(&self.key, &self.audits, seqs));
        out.settle(
            job,
            json!({
                "status": root.status,
                "inline_events": self.events.len() - 1,
                "emitted": self.emitted.len(),
                "webhooks": self.webhooks.len(),
            }),
        );
    }
}
