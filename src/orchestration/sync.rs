//! Sync events (`POST /api/events/sync`): accept the event like an async one, run it right here on the API node
//! when it is its entity's turn, and answer with its outcome once the whole inline chain has run.
//!
//! The event is a queued job like any other: the API claims that one job ([`queue::claim_one`]), so it keeps its
//! place in its entity's order (events of one root entity run one at a time, in `seq` order) and runs through the
//! same executor as on a worker. When an earlier event of the entity is still pending or running, the call waits
//! for the workers instead, and the event still completes when the caller's deadline passes first
//! ([`Error::Timeout`], HTTP 504).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ordo_workers::rules;
use serde::Serialize;
use sqlx::{Connection, PgPool};

use super::entity::{get_entity, Entity};
use super::event::{accept_event_in, get_event, list_events, Event, EventFilter, EventKind, EventStatus, NewEvent};
use super::executor::EventExecutor;
use super::{Error, Result, QUEUE};
use crate::queue::{self, Queue};
use crate::tenancy::AccountId;

/// The API node's executor: the same rules as the workers', and its own cache of workflow definitions.
static INLINE: LazyLock<EventExecutor> = LazyLock::new(|| EventExecutor::new(rules::registry()));

/// The lease on an event run inline. It commits already settled, so the lease only matters to readers of the job.
const INLINE_LEASE: Duration = Duration::from_secs(30);

/// Lease owner recorded on events run inline, to tell them from a worker's.
static OWNER: LazyLock<String> = LazyLock::new(|| format!("api:{}", std::process::id()));

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

/// Sends an event and waits up to `timeout` for its outcome.
pub async fn send_event_sync(
    q: &Queue,
    account: &AccountId,
    event: NewEvent,
    timeout: Duration,
) -> Result<SyncOutcome> {
    let started = Instant::now();
    let deadline = started + timeout;
    let accepted = accept_and_run(q.pool(), account, event).await?;
    // Workers pick up what the execution emitted (or the event itself when it had to wait its turn).
    q.waker().wake(QUEUE);
    // Short waits first: an idle worker picks the event up within milliseconds of the wake-up.
    let mut wait = Duration::from_millis(1);
    let done = loop {
        let e = get_event(q.pool(), account, &accepted.id).await?;
        if e.status.is_final() {
            break e;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout { event_id: accepted.id });
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 2).min(Duration::from_millis(25));
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let entity = get_entity(q.pool(), account, &done.entity.entity_type, &done.entity.entity_ref).await?;
    let emitted = emitted_by(q, account, &done).await?;
    Ok(SyncOutcome {
        id: done.id,
        status: done.status,
        entity,
        emitted,
        error: done.error,
        duration_ms,
    })
}

/// Accepts the event and, when it is its entity's turn, claims and executes it in the same transaction: one
/// commit for the whole call. Otherwise the event is only accepted, and waits for a worker. Returns the accepted
/// event. (The API runs every handler as a task of its own, so a client that hangs up cannot cut this off.)
async fn accept_and_run(pool: &PgPool, account: &AccountId, event: NewEvent) -> Result<Event> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let (accepted, replayed, job_id) = accept_event_in(&mut tx, account, event).await?;
    if !replayed && accepted.status == EventStatus::Pending {
        if let Some(job) = queue::claim_one(&mut *tx, account, job_id, &OWNER, INLINE_LEASE).await? {
            // An error here rolls the whole call back: the event was not accepted, and the caller is told so.
            INLINE.execute_on(&mut tx, &job).await?;
        }
    }
    tx.commit().await?;
    Ok(accepted)
}

/// Orchestration events emitted by `root`'s execution, following inline chains.
async fn emitted_by(q: &Queue, account: &AccountId, root: &Event) -> Result<Vec<Event>> {
    let mut conn = q.pool().acquire().await?;
    let mut out = Vec::new();
    let mut frontier = vec![root.clone()];
    while let Some(e) = frontier.pop() {
        let filter = EventFilter {
            kind: Some(EventKind::Orchestration),
            source_event_id: Some(e.id.clone()),
            from: Some(root.created_at - chrono::Duration::seconds(1)),
            ..EventFilter::default()
        };
        let mut cursor = None;
        loop {
            let page = list_events(&mut conn, account, &filter, 1000, cursor.as_deref()).await?;
            for child in page.items {
                // Inline events ran in this execution and may have emitted more; queued ones belong to theirs.
                if child.entity == root.entity && child.scheduled_at.is_none() {
                    frontier.push(child.clone());
                }
                out.push(child);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}
