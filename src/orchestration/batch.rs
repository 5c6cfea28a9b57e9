//! The shell around the interpreter: a batch of executions in one transaction. It locks the events and their
//! entities, loads each workflow version, locks the inventory positions the executions can touch, runs the pure
//! [`interpreter`](super::interpreter) on its in-memory copy of each entity, and writes the results with one
//! statement per kind of write ([`Writes`]).
//!
//! Positions are locked in one global order, `(sku_ref, location_ref)`, so that two batches never wait on each
//! other: before a round of executions runs, the positions its events' rulesets name
//! ([`interpreter::predicted_positions`]) are locked with one ordered statement. A position found only while
//! interpreting is locked then if it sorts after every position the batch holds; otherwise only if it is free at
//! once. A chained round whose positions are not free leaves its events for later, and a claimed event whose
//! position is not free fails the batch (its events run again one by one). A batch of one claimed event has
//! nowhere to fall back to: when it needs a taken position that sorts before one it holds, it lets go of every
//! position it holds (a savepoint taken before its first) and locks them all again, in order, with the new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ordo_workers::rules::{EntityKey, Position, PositionKey, RuleRegistry};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::audit::Audit;
use super::entity::{open_attributes, Changed};
use super::event::{draw_seqs, Event, EventRow, EVENT_COLUMNS};
use super::interpreter::{self, Flow, Outcome, Snapshot, Staged, Trigger};
use super::inventory::lock_positions;
use super::stage::{Execution, Writes};
use super::workflow::{get_version, Definition, DefinitionCache, Version};
use super::{Error, Result};
use crate::queue::{self, Job};
use crate::telemetry::metrics as m;
use crate::tenancy::AccountId;

/// Most events executed in one batch's transaction.
const BATCH_EVENTS_MAX: usize = 1024;

/// How long a batch may keep its transaction (and its entities' locks) open before it commits.
const CHAIN_BUDGET: Duration = Duration::from_millis(100);

/// The event of a claimed job with its entity, both locked, and the workflow minor in force.
#[derive(sqlx::FromRow)]
struct Locked {
    locked_job_id: i64,
    #[sqlx(flatten)]
    row: EventRow,
    subtype: String,
    entity_status: String,
    entity_attributes: Value,
    workflow_major: i32,
    workflow_minor: Option<i32>,
    /// The database's clock when the row was locked.
    locked_at: DateTime<Utc>,
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
                  and w.major = en.workflow_major) as workflow_minor,
               clock_timestamp() as locked_at
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
        lone: jobs.len() == 1,
        out: Writes::default(),
    };
    let mut round = jobs;
    let mut first = true;
    let mut executed = 0;
    // The database's clock at the first lock, and the batch's own since: the base of its `processed_at` stamps.
    let mut clock: Option<(DateTime<Utc>, Instant)> = None;
    loop {
        let mut locked = lock_events(tx, account, &round).await?;
        if clock.is_none() {
            clock = locked.values().map(|l| (l.locked_at, Instant::now())).next();
        }
        let mut prepared = Vec::with_capacity(round.len());
        for job in &round {
            prepared.push(match locked.remove(&job.id.0) {
                Some(l) => Some(batch.prepare(tx, l).await?),
                None => None,
            });
        }
        // The positions the round's events name, locked at once; a chained round that would have to wait for
        // them out of order is left for later.
        let wanted: BTreeSet<PositionKey> = prepared
            .iter()
            .flatten()
            .filter_map(|p| p.as_ref().ok())
            .flat_map(|p| p.positions.iter().cloned())
            .collect();
        let wait = if first { Wait::Yes } else { Wait::InOrder };
        if !batch.lock_positions(tx, wanted, wait).await? {
            break;
        }
        // Per entity, the last job this round ran: the events waiting behind it come next.
        let mut last_of_key: HashMap<String, Job> = HashMap::new();
        let mut stopped = false;
        for (job, prepared) in round.into_iter().zip(prepared) {
            let ran = match prepared {
                Some(p) => batch.execute(tx, &job, p, first).await?,
                None => batch.execute_unlocked(tx, &job).await.map(|()| true)?,
            };
            if !ran {
                // A chained event whose position is not free: it and the rest of the round wait for later.
                stopped = true;
                break;
            }
            if let Some(key) = job.concurrency_key.clone() {
                last_of_key.insert(key, job);
            }
            executed += 1;
        }
        let follow: Vec<Job> = last_of_key.into_values().collect();
        if !chain || stopped {
            break;
        }
        let room = BATCH_EVENTS_MAX.saturating_sub(executed);
        if follow.is_empty() || room == 0 || started.elapsed() >= CHAIN_BUDGET {
            break;
        }
        let per_key = (room / follow.len()).max(1) as i64;
        round = queue::lock_following(&mut *tx, &follow, version.as_deref(), per_key).await?;
        first = false;
        // Its chained rounds take positions in order only, like any batch's.
        batch.lone = false;
        if round.is_empty() {
            break;
        }
    }
    batch.out.complete(tx, account, owner).await?;
    let queued = !batch.out.emitted.is_empty() || !batch.out.hooks.is_empty();
    let at = match clock {
        Some((at, then)) => at + chrono::Duration::from_std(then.elapsed()).unwrap_or(chrono::Duration::zero()),
        None => Utc::now(),
    };
    let changed: Vec<Changed<'_>> = batch
        .entities
        .iter()
        .filter(|(_, c)| c.changed)
        .map(|(key, c)| Changed {
            key,
            status: &c.status,
            attributes: &c.attributes,
        })
        .collect();
    batch.out.write(tx, account, &changed, at).await?;
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

/// Taken by a lone batch before it locks its first position; [`ROLLBACK_TO_POSITIONS`] lets go of them all (and of
/// nothing else: the events and entities were locked before it, and nothing is written until the end).
const SAVEPOINT_POSITIONS: &str = "savepoint positions";
/// See [`SAVEPOINT_POSITIONS`].
const ROLLBACK_TO_POSITIONS: &str = "rollback to savepoint positions";

/// A batch's working state.
struct Batch<'a> {
    account: &'a AccountId,
    rules: &'a RuleRegistry,
    definitions: &'a DefinitionCache,
    /// Each entity the batch has locked, as its executions have left it so far.
    entities: HashMap<EntityKey, Current>,
    /// Each position the batch has locked (or found missing), as its successful executions have left it so far.
    positions: BTreeMap<PositionKey, Position>,
    /// A batch of one claimed event, in its first round: a position its execution finds while interpreting is
    /// waited for, even out of the global order, by locking all of its positions again (see
    /// [`Batch::relock_in_order`]).
    lone: bool,
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

/// Whether a batch waits for positions another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// It waits.
    Yes,
    /// It waits when the positions sort after every position it holds; otherwise it takes them only if free.
    InOrder,
}

/// A locked event ready to interpret: its workflow loaded and the positions it names predicted.
struct Prepared {
    root: Event,
    reference: String,
    version: Version,
    definition: Arc<Definition>,
    positions: BTreeSet<PositionKey>,
}

/// A locked event with nothing to interpret: already final, or its workflow version is gone.
enum Settled {
    Skipped(Event),
    NoWorkflow(Event, String),
}

impl Batch<'_> {
    /// Loads what the event of `locked` runs under, keeping its entity as the batch has it.
    async fn prepare(&mut self, conn: &mut PgConnection, locked: Locked) -> Result<Result<Prepared, Settled>> {
        let root = locked.row.into_event(self.account)?;
        if root.status.is_final() {
            // Cancelled while its job waited, or already executed by an earlier attempt that lost its lease late.
            return Ok(Err(Settled::Skipped(root)));
        }
        let key = root.entity.clone();
        // An entity an earlier event of the batch ran on is as that event left it, not as the database has it.
        let current = match self.entities.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Current {
                subtype: locked.subtype,
                status: locked.entity_status,
                attributes: open_attributes(self.account, &key, locked.entity_attributes)?,
                major: locked.workflow_major,
                changed: false,
            }),
        };
        let reference = format!("{}::{}", key.entity_type, current.subtype);
        let major = current.major;
        let Some(minor) = locked.workflow_minor else {
            let msg = format!("workflow {reference} version {major}.x not found");
            return Ok(Err(Settled::NoWorkflow(root, msg)));
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
        let positions = interpreter::predicted_positions(
            self.rules,
            &definition,
            snapshot(&key, current),
            Trigger {
                name: &root.name,
                attributes: &root.attributes,
            },
        );
        Ok(Ok(Prepared {
            root,
            reference,
            version,
            definition,
            positions,
        }))
    }

    /// Locks the positions of `keys` the batch does not hold yet, with one statement in the global order.
    /// Returns false, holding none of them, when `wait` forbids waiting for them and one is taken.
    async fn lock_positions(
        &mut self,
        conn: &mut PgConnection,
        keys: BTreeSet<PositionKey>,
        wait: Wait,
    ) -> Result<bool> {
        let new: Vec<PositionKey> = keys.into_iter().filter(|k| !self.positions.contains_key(k)).collect();
        let Some(lowest) = new.first() else {
            return Ok(true);
        };
        // Locks taken after every lock held keep the order; only an earlier one could close a cycle.
        let in_order = self
            .positions
            .last_key_value()
            .is_none_or(|(highest, _)| lowest > highest);
        let wait = match wait {
            Wait::InOrder if in_order => Wait::Yes,
            w => w,
        };
        if wait == Wait::Yes && !in_order && self.lone {
            return self.relock_in_order(conn, new).await.map(|()| true);
        }
        if self.lone && self.positions.is_empty() {
            // Before the first position it locks, so that it can let go of them all (see `relock_in_order`).
            sqlx::query(SAVEPOINT_POSITIONS).execute(&mut *conn).await?;
        }
        let Some(found) = lock_positions(conn, self.account, &new, wait == Wait::Yes).await? else {
            return Ok(false);
        };
        self.keep(new, &found);
        Ok(true)
    }

    /// Locks `new`, which sorts before a position the lone batch holds: at once if free; otherwise, since waiting
    /// for it while holding the later ones could close a cycle with a batch that holds it and waits for those, it
    /// lets go of every position (back to the savepoint taken before the first) and locks them all again, `new`
    /// with them, in the global order. Only the first execution of a lone batch asks this, before it has staged
    /// anything, so the positions are read afresh from the database.
    async fn relock_in_order(&mut self, conn: &mut PgConnection, new: Vec<PositionKey>) -> Result<()> {
        if let Some(found) = lock_positions(conn, self.account, &new, false).await? {
            self.keep(new, &found);
            return Ok(());
        }
        sqlx::query(ROLLBACK_TO_POSITIONS).execute(&mut *conn).await?;
        let all: BTreeSet<PositionKey> = std::mem::take(&mut self.positions).into_keys().chain(new).collect();
        let all: Vec<PositionKey> = all.into_iter().collect();
        let found = lock_positions(conn, self.account, &all, true)
            .await?
            .unwrap_or_default();
        self.keep(all, &found);
        Ok(())
    }

    /// Holds `keys` as locked, each as `found` (a missing position starts empty).
    fn keep(&mut self, keys: Vec<PositionKey>, found: &BTreeMap<PositionKey, Position>) {
        for k in keys {
            let p = found.get(&k).copied().unwrap_or_default();
            self.positions.insert(k, p);
        }
    }

    /// Interprets a prepared event, locking the positions it turns out to need, and stages its writes. Returns
    /// false, staging nothing, when a position it needs is taken and this batch may not wait for it.
    async fn execute(
        &mut self,
        conn: &mut PgConnection,
        job: &Job,
        p: Result<Prepared, Settled>,
        first: bool,
    ) -> Result<bool> {
        let p = match p {
            Ok(p) => p,
            Err(Settled::Skipped(root)) => {
                self.out.settle(job, json!({"skipped": root.status}));
                return Ok(true);
            }
            Err(Settled::NoWorkflow(root, msg)) => {
                self.out.fail(job, root.seq, &root.entity, &msg, &[]);
                return Ok(true);
            }
        };
        let key = p.root.entity.clone();
        let flow = Flow {
            reference: &p.reference,
            version: p.version,
            definition: &p.definition,
        };
        let trigger = Trigger {
            name: &p.root.name,
            attributes: &p.root.attributes,
        };
        loop {
            let current = self
                .entities
                .get(&key)
                .ok_or_else(|| Error::Corrupt(format!("entity {key:?} of a locked event is not loaded")))?;
            match interpreter::interpret(self.rules, flow, snapshot(&key, current), trigger, &self.positions) {
                Outcome::NeedsPositions(keys) => {
                    let wait = if first && self.lone { Wait::Yes } else { Wait::InOrder };
                    if !self.lock_positions(conn, keys, wait).await? {
                        if first {
                            return Err(Error::PositionBusy { event: p.root.seq });
                        }
                        return Ok(false);
                    }
                }
                Outcome::Ran(staged) => {
                    self.stage(conn, job, &p, &key, staged).await?;
                    return Ok(true);
                }
                Outcome::Failed { error, audits } => {
                    self.out.fail(job, p.root.seq, &key, &error, &audits);
                    return Ok(true);
                }
            }
        }
    }

    /// Stages a successful execution and keeps the entity and the positions as it left them.
    async fn stage(
        &mut self,
        conn: &mut PgConnection,
        job: &Job,
        p: &Prepared,
        key: &EntityKey,
        staged: Staged,
    ) -> Result<()> {
        for (k, pos) in &staged.positions {
            self.positions.insert(k.clone(), *pos);
            self.out.positions.insert(k.clone(), *pos);
        }
        let mut seqs = vec![p.root.seq];
        seqs.extend(draw_seqs(conn, staged.events.len() - 1).await?);
        let retry = p
            .definition
            .settings
            .get("webhook.retry")
            .map(String::as_str)
            .unwrap_or("fast");
        self.out.stage(Execution {
            job,
            account: self.account,
            entity: key,
            staged: &staged,
            seqs: &seqs,
            retry,
        });
        if let Some(current) = self.entities.get_mut(key) {
            current.status = staged.status;
            current.attributes = staged.attributes;
            current.changed = true;
        }
        Ok(())
    }

    /// A claimed job whose event or entity is gone: nothing to run, or the event fails.
    async fn execute_unlocked(&mut self, conn: &mut PgConnection, job: &Job) -> Result<()> {
        let alone: Option<EventRow> = sqlx::query_as(&format!(
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
        let root = alone.into_event(self.account)?;
        if root.status.is_final() {
            self.out.settle(job, json!({"skipped": root.status}));
            return Ok(());
        }
        let msg = format!(
            "entity {}:{} not found",
            root.entity.entity_type, root.entity.entity_ref
        );
        let none: &[Audit] = &[];
        self.out.fail(job, root.seq, &root.entity, &msg, none);
        Ok(())
    }
}

fn snapshot<'a>(key: &'a EntityKey, current: &'a Current) -> Snapshot<'a> {
    Snapshot {
        key,
        subtype: &current.subtype,
        status: &current.status,
        attributes: &current.attributes,
    }
}
