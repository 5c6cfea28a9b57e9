//! The rule engine: the engine handler of kind [`EVENT_KIND`], which executes one orchestration event.
//!
//! One execution, in one transaction: lock the event and its (root) entity, load the workflow version pinned to
//! the entity, run the matching rulesets' rules in order on an in-memory copy of the entity and the inventory
//! positions they name, loop over inline events (same entity) up to [`MAX_INLINE_EVENTS`], then write the entity,
//! changed positions, inline events, emitted events (queued jobs), webhook jobs, audit records and the job's
//! completion together. When a rule fails and no exception ruleset of the same name exists, the transaction is
//! rolled back and a second one keeps only the event's `failed` status and its audit records.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ordo_workers::rules::{
    self, template, Action, EntityKey, EntityView, EventView, Position, PositionKey, RuleContext, RuleError,
    RuleRegistry,
};
use ordo_workers::{BoxFuture, StepContext, StepError};
use serde_json::{json, Map, Value};
use sqlx::{Connection, PgConnection, PgPool};

use super::audit::{self, Audit, Category};
use super::event::{accept_many, draw_seqs, insert_rows, Accept, EventKind, EventStatus, Row, EVENT_COLUMNS};
use super::inventory::{lock_positions, write_positions};
use super::webhook::{self, WebhookDeliverer};
use super::workflow::{get_version, Definition, RuleCall, Ruleset, RulesetKind, Version};
use super::{Error, Result};
use crate::queue::{self, Job, JobId, NewJob};
use crate::runtime::{EngineHandler, EngineHandlers, EngineResult};
use crate::telemetry::trace;
use crate::tenancy::AccountId;

/// The job kind of an orchestration event.
pub const EVENT_KIND: &str = "orchestration.event";

/// Most inline events (same entity) one execution may run after its root event; one more fails the event.
pub const MAX_INLINE_EVENTS: usize = 500;

/// The furthest ahead a rule may schedule an event (ten years), so a delay taken from input cannot overflow a
/// timestamp.
const MAX_DELAY_SECONDS: u64 = 10 * 366 * 86_400;

/// Registers the orchestration engine handlers: the event executor and the webhook deliverer.
/// `allow_private_webhooks` lets webhooks reach private, loopback and link-local addresses
/// (`ORDO_WEBHOOK_ALLOW_PRIVATE`).
pub fn register(h: &mut EngineHandlers, allow_private_webhooks: bool) {
    h.register(EventExecutor::new(rules::registry()));
    h.register(WebhookDeliverer::new(allow_private_webhooks));
}

/// The engine handler that executes orchestration events.
#[derive(Clone)]
pub struct EventExecutor {
    rules: Arc<RuleRegistry>,
    definitions: Arc<DefinitionCache>,
}

impl EventExecutor {
    /// An executor running `rules`.
    pub fn new(rules: RuleRegistry) -> Self {
        EventExecutor {
            rules: Arc::new(rules),
            definitions: Arc::default(),
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

impl EventExecutor {
    /// Executes the event of a job this process has claimed, on `conn` (see [`execute_on`]).
    pub(crate) async fn execute_on(&self, conn: &mut PgConnection, job: &Job) -> Result<()> {
        execute_on(conn, &self.rules, &self.definitions, job).await.map(|_| ())
    }
}

impl EngineHandler for EventExecutor {
    fn kind(&self) -> &'static str {
        EVENT_KIND
    }

    fn run(&self, pool: PgPool, job: Job, _ctx: StepContext) -> BoxFuture<'static, EngineResult> {
        let rules = self.rules.clone();
        let definitions = self.definitions.clone();
        Box::pin(async move {
            match execute_chain(&pool, &rules, &definitions, &job).await {
                Ok(()) => EngineResult::Settled,
                // Another worker owns the job now (or it was cancelled): nothing of this attempt was committed.
                Err(Error::Queue(queue::Error::LeaseLost { .. })) => EngineResult::Settled,
                Err(e) => EngineResult::Step(Err(StepError::Retry {
                    reason: format!("execute event: {e}"),
                    after: None,
                })),
            }
        })
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

/// The event with its entity, both locked, and the workflow minor in force.
#[derive(sqlx::FromRow)]
struct Locked {
    #[sqlx(flatten)]
    row: super::event::EventRow,
    subtype: String,
    entity_status: String,
    entity_attributes: Value,
    workflow_major: i32,
    workflow_minor: Option<i32>,
    /// Whether later events of the entity wait already (the executor may chain them).
    has_next: bool,
}

static LOCK_SQL: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<String> = EVENT_COLUMNS.split(", ").map(|c| format!("ev.{c}")).collect();
    format!(
        r#"
        select {cols},
               en.subtype, en.status as entity_status, en.attributes as entity_attributes, en.workflow_major,
               (select max(w.minor)
                from workflow w
                where w.account_id = en.account_id
                  and w.ref = en.type || '::' || en.subtype
                  and w.major = en.workflow_major) as workflow_minor,
               exists (select 1
                       from job n
                       where n.account_id = $1
                         and n.concurrency_key = $3
                         and n.id > $2
                         and n.state in ('available', 'scheduled', 'retryable')) as has_next
        from event ev
        join entity en
          on en.account_id = ev.account_id
         and en.type = ev.entity_type
         and en.ref = ev.entity_ref
        where ev.account_id = $1
          and ev.job_id = $2
        for update of ev, en
        "#,
        cols = cols.join(", ")
    )
});

/// Most events of one entity a worker runs back to back in one transaction.
const CHAIN_MAX: usize = 64;

/// How long a chain may keep its transaction (and its entity's lock) open before it commits.
const CHAIN_BUDGET: Duration = Duration::from_millis(100);

/// Executes the event of `job`, then, in the same transaction, the entity's next events that are already waiting
/// (each in its savepoint, in `seq` order, up to [`CHAIN_MAX`]): one commit for a run of events of one entity,
/// where the commit's flush would otherwise bound an entity's serial rate. Nothing of the chain is visible until
/// it commits; a crash loses none of it (the first job's lease expires, the others were never claimed).
async fn execute_chain(pool: &PgPool, rules: &RuleRegistry, definitions: &DefinitionCache, job: &Job) -> Result<()> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    // The first event commits on its own: most entities have nothing else waiting, and a savepoint would cost them
    // two round trips for nothing.
    if !execute_on(&mut conn, rules, definitions, job).await? {
        return Ok(());
    }
    let owner = job.lease_owner.as_deref().unwrap_or("worker");
    let chained = async {
        let mut tx = conn.begin().await?;
        let mut last = job.clone();
        for _ in 1..CHAIN_MAX {
            if started.elapsed() >= CHAIN_BUDGET {
                break;
            }
            let Some(next) = queue::claim_next_in_key(&mut *tx, &last, owner, CHAIN_LEASE).await? else {
                break;
            };
            let more = execute_on(&mut tx, rules, definitions, &next).await?;
            last = next;
            if !more {
                break;
            }
        }
        tx.commit().await?;
        Ok::<_, Error>(())
    };
    if let Err(e) = chained.await {
        // The first event is done; the chained ones rolled back and wait for the next claim.
        tracing::warn!(job.id = %job.id, error = %e, "chained events rolled back; they will run on their own");
    }
    Ok(())
}

/// Lease recorded on chained events; they commit already settled, so no one ever sees it.
const CHAIN_LEASE: Duration = Duration::from_secs(30);

/// Executes the event of `job` on `conn`: in a transaction of its own, or, when `conn` is inside one already
/// (a sync event accepted and run in one transaction, a chain), in a savepoint that commits with it. Returns
/// whether later events of the entity were waiting.
pub(crate) async fn execute_on(
    conn: &mut PgConnection,
    rules: &RuleRegistry,
    definitions: &DefinitionCache,
    job: &Job,
) -> Result<bool> {
    let account = AccountId::parse(&job.account_id).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut tx = conn.begin().await?;
    // One round trip locks the event and its root entity and finds the workflow version in force.
    let locked: Option<Locked> = sqlx::query_as(LOCK_SQL.as_str())
        .bind(account.as_str())
        .bind(job.id.0)
        .bind(job.concurrency_key.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(locked) = locked else {
        // No event, or no entity: look at the event alone.
        let alone: Option<LockedEvent> = sqlx::query_as(&format!(
            "select {EVENT_COLUMNS} from event where account_id = $1 and job_id = $2 for update"
        ))
        .bind(account.as_str())
        .bind(job.id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(alone) = alone else {
            // Not an event of ours any more (pruned): nothing to do.
            queue::complete_in(&mut tx, job.id, job.attempt, json!({"skipped": "no event"})).await?;
            tx.commit().await?;
            return Ok(false);
        };
        let root = super::event::Event::try_from(alone.row)?;
        if root.status.is_final() {
            queue::complete_in(&mut tx, job.id, job.attempt, json!({"skipped": root.status})).await?;
            tx.commit().await?;
            return Ok(false);
        }
        let key = root.entity;
        let msg = format!("entity {}:{} not found", key.entity_type, key.entity_ref);
        finish_failed(tx, &account, job, root.seq, &key, &msg, &[]).await?;
        return Ok(false);
    };
    let has_next = locked.has_next;
    let root = super::event::Event::try_from(locked.row)?;
    if root.status.is_final() {
        // Cancelled while its job waited, or already executed by an earlier attempt that lost its lease late.
        queue::complete_in(&mut tx, job.id, job.attempt, json!({"skipped": root.status})).await?;
        tx.commit().await?;
        return Ok(locked.has_next);
    }
    let key = root.entity.clone();
    let (subtype, status, attributes, major) = (
        locked.subtype,
        locked.entity_status,
        locked.entity_attributes,
        locked.workflow_major,
    );
    let reference = format!("{}::{subtype}", key.entity_type);
    let Some(minor) = locked.workflow_minor else {
        let msg = format!("workflow {reference} version {major}.x not found");
        finish_failed(tx, &account, job, root.seq, &key, &msg, &[]).await?;
        return Ok(has_next);
    };
    let version = Version { major, minor };
    let cache_key = (account.as_str().to_owned(), reference.clone(), major, minor);
    let definition = match definitions.get(&cache_key) {
        Some(d) => d,
        None => {
            let w = get_version(&mut *tx, &account, &reference, Some(major), Some(minor)).await?;
            let d = Arc::new(w.definition);
            definitions.put(cache_key, d.clone());
            d
        }
    };
    let mut run = Run {
        account: &account,
        rules,
        def: &definition,
        key: key.clone(),
        subtype,
        state: State {
            status,
            attributes,
            positions: BTreeMap::new(),
            dirty: BTreeSet::new(),
        },
        loaded: BTreeMap::new(),
        events: vec![Local {
            name: root.name.clone(),
            attributes: root.attributes.clone(),
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
        root.name.clone(),
        0,
        json!({
            "status": run.state.status,
            "attributes": run.state.attributes,
            "workflow": {"ref": reference, "version": version},
        }),
    ));
    match run.execute(&mut tx).await {
        Ok(()) => {
            let retry = definition
                .settings
                .get("webhook.retry")
                .cloned()
                .unwrap_or_else(|| "fast".to_owned());
            run.commit(tx, job, root.seq, &retry).await?;
            Ok(has_next)
        }
        Err(Abort::Error(e)) => Err(e),
        Err(Abort::Failed(msg)) => {
            tx.rollback().await?;
            let tx = conn.begin().await?;
            finish_failed(tx, &account, job, root.seq, &key, &msg, &run.audits).await?;
            Ok(has_next)
        }
    }
}

/// Records a failed event with its audit records and settles the job; nothing else of the execution is kept.
async fn finish_failed(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    account: &AccountId,
    job: &Job,
    root_seq: i64,
    key: &EntityKey,
    msg: &str,
    audits: &[Audit],
) -> Result<()> {
    sqlx::query(
        r#"
        update event
        set status = 'failed',
            error = $3,
            processed_at = clock_timestamp()
        where account_id = $1
          and seq = $2
        "#,
    )
    .bind(account.as_str())
    .bind(root_seq)
    .bind(msg)
    .execute(&mut *tx)
    .await?;
    // Inline events of a failed execution were never committed: their records describe the root.
    audit::write(&mut tx, account, key, audits, &[root_seq]).await?;
    queue::complete_in(&mut tx, job.id, job.attempt, json!({"status": "failed", "error": msg})).await?;
    tx.commit().await?;
    Ok(())
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

    /// Writes everything and settles the job, in the execution's transaction.
    async fn commit(
        self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        job: &Job,
        root_seq: i64,
        retry: &str,
    ) -> Result<()> {
        let account = self.account;
        let changed: Vec<(PositionKey, Position)> = self
            .state
            .dirty
            .iter()
            .filter_map(|k| self.state.positions.get(k).map(|p| (k.clone(), *p)))
            .collect();
        write_positions(&mut tx, account, &changed).await?;

        // Inline events, then the root's outcome.
        let mut seqs = vec![root_seq];
        seqs.extend(draw_seqs(&mut tx, self.events.len() - 1).await?);
        let inline: Vec<Row> = self
            .events
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, e)| Row {
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
            })
            .collect();
        insert_rows(&mut tx, account, &inline).await?;
        let root = &self.events[0];
        sqlx::query(
            r#"
            with changed as (
                update entity
                set status = $5,
                    attributes = $6,
                    updated_at = now()
                where account_id = $1
                  and type = $2
                  and ref = $3
            )
            update event
            set status = $7,
                error = $8,
                processed_at = clock_timestamp()
            where account_id = $1
              and seq = $4
            "#,
        )
        .bind(account.as_str())
        .bind(&self.key.entity_type)
        .bind(&self.key.entity_ref)
        .bind(root_seq)
        .bind(&self.state.status)
        .bind(&self.state.attributes)
        .bind(root.status.as_str())
        .bind(&root.error)
        .execute(&mut *tx)
        .await?;

        // Events leaving the entity: queued jobs of their own root entities.
        let now = Utc::now();
        let accepts: Vec<Accept> = self
            .emitted
            .iter()
            .map(|e| Accept {
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
            })
            .collect();
        let emitted = accept_many(&mut tx, account, accepts).await?;

        // Webhooks: one delivery job each, with a key stable across its retries.
        let hooks: Vec<NewJob> = self
            .webhooks
            .iter()
            .enumerate()
            .map(|(n, (url, src))| {
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
                let mut hook = webhook::delivery_job(account, url, body, seq, n, retry, &self.key);
                hook.traceparent = trace::child_of(job.traceparent.as_deref());
                hook
            })
            .collect();
        queue::enqueue_many(&mut tx, account, &hooks).await?;

        audit::write(&mut tx, account, &self.key, &self.audits, &seqs).await?;
        let root = &self.events[0];
        queue::complete_in(
            &mut tx,
            JobId(job.id.0),
            job.attempt,
            json!({
                "status": root.status,
                "inline_events": self.events.len() - 1,
                "emitted": emitted.len(),
                "webhooks": hooks.len(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
