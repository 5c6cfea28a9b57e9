//! Sync events (`POST /api/events/sync`): accept the event like an async one, run it right here on the API node
//! when it is its entity's turn, and answer with its outcome once the whole inline chain has run.
//!
//! The event is a queued job like any other: the API locks that one job ([`queue::lock_ids`]), so it keeps its
//! place in its entity's order (events of one root entity run one at a time, in `seq` order) and runs through the
//! same executor as on a worker. When an earlier event of the entity is still pending or running, the call waits
//! for the workers instead, and the event still completes when the caller's deadline passes first
//! ([`Error::Timeout`], HTTP 504).
//!
//! Concurrent calls are group-committed ([`crate::group_commit`]): the events that arrive while earlier ones are
//! being written are accepted, locked and executed together, one statement per step and one commit for all of
//! them. As far as a caller can tell each call is its own transaction: a shared transaction that fails is run
//! again call by call, so one bad call answers for itself alone.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ordo_workers::rules;
use ordo_workers::rules::EntityKey;
use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::oneshot;

use super::dispatch::EventHandler;
use super::entity::{get_entities, Entity};
use super::event::{accept_new_events, emitted_from, get_event, get_events, Accepted, Event, EventStatus, NewEvent};
use super::{Error, Result, QUEUE};
use crate::group_commit::{split_by, GroupCommit, Limits};
use crate::queue::{self, JobId, Queue};
use crate::tenancy::AccountId;

/// The API node's event handler: the same rules as the workers', and its own cache of workflow definitions.
static INLINE: LazyLock<EventHandler> = LazyLock::new(|| EventHandler::new(rules::registry()));

/// Owner recorded on the jobs of events run inline, to tell them from a worker's.
static OWNER: LazyLock<String> = LazyLock::new(|| format!("api:{}", std::process::id()));

/// Most calls in one shared transaction.
const MAX_BATCH: usize = 64;

/// Shared transactions of sync events in flight at once on an API node. Fewer than for enqueues: each is longer
/// (it executes the events and reads their outcomes back), and while it runs the next calls gather into a bigger
/// batch. With 32 clients on two cores, two gave about 1 700 calls/s against 1 500 with four and 900 with eight
/// (`benches/orchestration.sh`); one did as well but leaves every call of the node behind one slow transaction.
pub const FLUSHES: usize = 2;

/// Calls that may wait for a transaction before callers feel back-pressure.
const QUEUE_DEPTH: usize = 4096;

/// Group commit of one API node's sync events; cheap to clone.
#[derive(Clone)]
pub struct SyncEvents {
    commits: GroupCommit<Pending>,
}

/// A call waiting for its transaction, and where its accepted event goes.
struct Pending {
    account: AccountId,
    event: NewEvent,
    reply: oneshot::Sender<Result<Answer>>,
}

impl SyncEvents {
    /// Starts the dispatcher on the current Tokio runtime, with at most `flushes` shared transactions at once on
    /// `q`'s pool. It stops when the last clone is dropped.
    pub fn start(q: Queue, flushes: usize) -> Self {
        let limits = Limits {
            max_batch: MAX_BATCH,
            flushes,
            depth: QUEUE_DEPTH,
        };
        let commits = GroupCommit::start(limits, move |batch: Vec<Pending>| {
            let q = q.clone();
            async move {
                for (account, pending) in split_by(batch, |p| p.account.clone()) {
                    flush(&q, &account, pending).await;
                }
            }
        });
        SyncEvents { commits }
    }

    /// Sends an event and waits up to `timeout` for its outcome.
    pub async fn send(
        &self,
        q: &Queue,
        account: &AccountId,
        event: NewEvent,
        timeout: Duration,
    ) -> Result<SyncOutcome> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            account: account.clone(),
            event,
            reply,
        };
        if self.commits.submit(pending).await.is_err() {
            return Err(Error::Corrupt("the sync event dispatcher has stopped".to_owned()));
        }
        let answer = answer
            .await
            .map_err(|_| Error::Corrupt("the sync event dispatcher dropped a call".to_owned()))??;
        let mut out = match answer {
            Answer::Ran(out) => out,
            Answer::Waits(accepted) => wait_for(q, account, accepted, started + timeout).await?,
        };
        out.duration_ms = started.elapsed().as_millis() as u64;
        Ok(out)
    }
}

/// The answer of a sync event.
#[derive(Debug, Clone, Serialize)]
pub struct SyncOutcome {
    /// The event's id.
    pub id: String,
    /// `success`, `no_match` or `failed`.
    pub status: EventStatus,
    /// The entity after the execution.
    pub entity: Entity,
    /// Events the execution emitted (inline, queued and scheduled), in `seq` order.
    pub emitted: Vec<Event>,
    /// Why it failed, or the error an exception ruleset handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From acceptance to outcome.
    pub duration_ms: u64,
}

/// What a call's shared transaction gave it.
enum Answer {
    /// Its event ran in the transaction; the outcome as committed.
    Ran(SyncOutcome),
    /// Its event was accepted and waits for a worker (an earlier event of its entity is unfinished, or it is
    /// scheduled, or an idempotent replay of an event still running).
    Waits(Event),
}

/// The first and the longest wait between two looks at a synchronous event's outcome.
const FIRST_WAIT: Duration = Duration::from_millis(1);
const LONGEST_WAIT: Duration = Duration::from_millis(25);

/// Waits until an accepted event has run (polling, with short waits first: an idle worker picks an event up
/// within milliseconds of the wake-up) and reads its outcome; [`Error::Timeout`] at `deadline`.
async fn wait_for(q: &Queue, account: &AccountId, accepted: Event, deadline: Instant) -> Result<SyncOutcome> {
    let mut wait = FIRST_WAIT;
    let done = loop {
        let mut tx = q.begin_for(account).await?;
        let e = get_event(&mut *tx, account, &accepted.id).await?;
        tx.commit().await?;
        if e.status.is_final() {
            break e;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout { event_id: accepted.id });
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    };
    let mut tx = q.begin_for(account).await?;
    let out = outcomes(&mut tx, account, vec![done]).await?.pop();
    tx.commit().await?;
    out.ok_or_else(|| Error::Corrupt(format!("event {} vanished while it was read", accepted.id)))
}

/// Accepts one account's calls in one transaction, locks the events whose entity's turn it is, executes them
/// together, commits once, and reads back what ran; then answers each call. When the shared transaction fails,
/// each call runs again in a transaction of its own and gets its own answer.
async fn flush(q: &Queue, account: &AccountId, pending: Vec<Pending>) {
    let (events, replies): (Vec<NewEvent>, Vec<_>) = pending.into_iter().map(|p| (p.event, p.reply)).unzip();
    if events.len() > 1 {
        match accept_and_run(q, account, events.clone()).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                return;
            }
            Err(e) => tracing::debug!(calls = events.len(), error = %e, "shared sync transaction failed; one by one"),
        }
    }
    for (event, reply) in events.into_iter().zip(replies) {
        let answer = match accept_and_run(q, account, vec![event]).await {
            Ok(mut answers) => answers
                .pop()
                .unwrap_or_else(|| Err(Error::Corrupt("no answer for a sync event".to_owned()))),
            Err(e) => Err(e),
        };
        let _ = reply.send(answer);
    }
}

/// Accepts `events` and, for each whose entity's turn it is, locks and executes it in the same transaction: one
/// commit for the lot. The others are only accepted, and wait for a worker. Returns each call's answer (or why it
/// was refused), in order. An error of the transaction itself rolls everything back: nothing was accepted. (The
/// flush runs as a task of its own, so a client that hangs up cannot cut this off.)
async fn accept_and_run(q: &Queue, account: &AccountId, events: Vec<NewEvent>) -> Result<Vec<Result<Answer>>> {
    let mut tx = q.begin_for(account).await?;
    let accepted = accept_new_events(&mut tx, account, events).await?;
    let runnable: Vec<JobId> = accepted
        .iter()
        .flatten()
        .filter(|a| !a.replayed && a.event.status == EventStatus::Pending)
        .map(|a| a.job)
        .collect();
    let jobs = queue::lock_ids(&mut *tx, account, &runnable).await?;
    let ran: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    let executed = INLINE.execute_on(&mut tx, jobs, &OWNER).await?;
    tx.commit().await?;
    if executed.events > 0 {
        executed.record("sync");
    }
    if executed.queued || accepted.iter().flatten().any(|a| !ran.contains(&a.job)) {
        // Workers pick up what the executions emitted, and the events that wait for them.
        q.waker().wake(QUEUE);
    }

    let seqs: Vec<i64> = accepted
        .iter()
        .flatten()
        .filter(|a| ran.contains(&a.job))
        .map(|a| a.event.seq)
        .collect();
    // Read back after the commit; should that fail, the calls read their outcome themselves.
    let read = async {
        let mut tx = q.begin_for(account).await?;
        let roots = get_events(&mut *tx, account, &seqs).await?;
        let outs = outcomes(&mut tx, account, roots).await?;
        tx.commit().await?;
        Ok::<_, Error>(outs)
    };
    let mut ran_out: HashMap<String, SyncOutcome> = match read.await {
        Ok(outs) => outs.into_iter().map(|o| (o.id.clone(), o)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading sync outcomes back failed; each call reads its own");
            HashMap::new()
        }
    };
    Ok(accepted
        .into_iter()
        .map(|a| {
            a.map(|Accepted { event, .. }| match ran_out.remove(&event.id) {
                Some(out) => Answer::Ran(out),
                None => Answer::Waits(event),
            })
        })
        .collect())
}

/// The outcomes of finished events `roots`: each with its entity as it is now and the events its execution
/// emitted (following inline chains), with one statement per step for all of them.
async fn outcomes(conn: &mut PgConnection, account: &AccountId, roots: Vec<Event>) -> Result<Vec<SyncOutcome>> {
    let keys: Vec<EntityKey> = roots.iter().map(|r| r.entity.clone()).collect();
    let entities: HashMap<EntityKey, Entity> = get_entities(&mut *conn, account, &keys)
        .await?
        .into_iter()
        .map(|e| (e.key(), e))
        .collect();
    // Breadth first from the roots: inline events ran in the same execution and may have emitted more; queued
    // and scheduled ones belong to executions of their own.
    let mut root_of: HashMap<i64, usize> = roots.iter().enumerate().map(|(i, r)| (r.seq, i)).collect();
    let mut emitted: Vec<Vec<Event>> = vec![Vec::new(); roots.len()];
    let mut frontier: Vec<i64> = roots.iter().map(|r| r.seq).collect();
    while !frontier.is_empty() {
        let children = emitted_from(&mut *conn, account, &frontier).await?;
        frontier.clear();
        for child in children {
            let source = child.source_event_id.as_deref().and_then(|s| s.parse::<i64>().ok());
            let Some(&root) = source.and_then(|s| root_of.get(&s)) else {
                continue;
            };
            if child.entity == roots[root].entity && child.scheduled_at.is_none() {
                root_of.insert(child.seq, root);
                frontier.push(child.seq);
            }
            emitted[root].push(child);
        }
    }
    roots
        .into_iter()
        .zip(emitted)
        .map(|(root, mut emitted)| {
            emitted.sort_by_key(|e| e.seq);
            let entity = entities
                .get(&root.entity)
                .cloned()
                .ok_or_else(|| Error::EntityNotFound(root.entity.clone()))?;
            Ok(SyncOutcome {
                id: root.id,
                status: root.status,
                entity,
                emitted,
                error: root.error,
                duration_ms: 0,
            })
        })
        .collect()
}
