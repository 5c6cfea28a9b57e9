//! Sync events (`POST /api/events/sync`): accept the event like an async one and answer with its outcome once the
//! whole inline chain has run.
//!
//! The event goes through the queue and the same executor as any other, so it keeps its place in its entity's
//! order (events of one root entity run one at a time, in `seq` order) and still completes when the caller's
//! deadline passes first ([`Error::Timeout`], HTTP 504).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::entity::{get_entity, Entity};
use super::event::{get_event, list_events, send_event, Event, EventFilter, EventKind, EventStatus, NewEvent};
use super::{Error, Result};
use crate::queue::Queue;
use crate::tenancy::AccountId;

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
    let (accepted, _) = send_event(q, account, event).await?;
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
