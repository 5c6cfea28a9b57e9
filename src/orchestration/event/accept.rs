//! Accepting events: one queued job per event (keyed by its root entity, so the queue runs an entity's events in
//! order), then the event rows, whose seqs are drawn after the queue's per-key locks.

use chrono::{DateTime, Utc};
use ordo_workers::rules::EntityKey;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::write::{draw_seqs, insert_returning, Row};
use super::{Event, EventKind, EventRow, EventStatus, JobEventRow, NewEvent, EVENT_COLUMNS, EVENT_KIND};
use crate::orchestration::{concurrency_key, Error, Result, QUEUE};
use crate::queue::{self, JobId, KeyLocks, NewJob, Queue};
use crate::tenancy::AccountId;

/// An event about to be accepted inside a transaction (sent, emitted, scheduled or replayed).
#[derive(Debug, Clone)]
pub(crate) struct Accept {
    pub name: String,
    pub entity: EntityKey,
    pub attributes: Value,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub source_event_id: Option<i64>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
}

/// An accepted event.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event as stored (for a replay: as first accepted).
    pub event: Event,
    /// Whether it is an idempotent replay of an earlier send with the same key; nothing new was stored.
    pub replayed: bool,
    /// Its job.
    pub job: JobId,
}

/// Accepts events inside the caller's transaction: one queued job per event (keyed by its root entity, so
/// the queue runs them in order), then the event rows, whose seqs are drawn after the queue's per-key locks.
pub(crate) async fn accept_events(
    conn: &mut PgConnection,
    account: &AccountId,
    events: Vec<Accept>,
) -> Result<Vec<Accepted>> {
    accept_events_locking(conn, account, events, KeyLocks::Exclusive).await
}

/// [`accept_events`], holding the queue's per-key locks as `locks` says (see [`KeyLocks`]).
pub(crate) async fn accept_events_locking(
    conn: &mut PgConnection,
    account: &AccountId,
    events: Vec<Accept>,
    locks: KeyLocks,
) -> Result<Vec<Accepted>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let jobs: Vec<NewJob> = events
        .iter()
        .map(|e| {
            let mut job = NewJob::new(
                EVENT_KIND,
                json!({"entity_type": e.entity.entity_type, "entity_ref": e.entity.entity_ref, "name": e.name}),
            )
            .queue(QUEUE)
            .concurrency_key(concurrency_key(&e.entity));
            job.traceparent.clone_from(&e.traceparent);
            if let Some(t) = e.scheduled_at {
                job = job.run_at(t);
            }
            if let Some(k) = &e.idempotency_key {
                job = job.idempotency_key(format!("event:{k}"));
                job.fingerprint = Some(queue::fingerprint(&json!({
                    "name": e.name, "entity": e.entity, "attributes": e.attributes, "scheduled_at": e.scheduled_at,
                })));
            }
            job
        })
        .collect();
    let enqueued = queue::enqueue_many_locking(&mut *conn, account, &jobs, locks).await?;
    let fresh: Vec<usize> = (0..events.len()).filter(|&i| !enqueued[i].replayed).collect();
    let seqs = draw_seqs(conn, fresh.len()).await?;
    let rows: Vec<Row> = fresh
        .iter()
        .zip(&seqs)
        .map(|(&i, &seq)| {
            let e = &events[i];
            let scheduled = e.scheduled_at.filter(|t| *t > now);
            Row {
                seq,
                name: e.name.clone(),
                kind: EventKind::Orchestration,
                category: None,
                status: if scheduled.is_some() {
                    EventStatus::Scheduled
                } else {
                    EventStatus::Pending
                },
                entity: e.entity.clone(),
                attributes: e.attributes.clone(),
                source_event_id: e.source_event_id,
                job_id: Some(enqueued[i].id.0),
                scheduled_at: e.scheduled_at,
                processed: false,
                processed_at: None,
                error: None,
                traceparent: e.traceparent.clone(),
            }
        })
        .collect();
    let mut by_job: std::collections::HashMap<i64, EventRow> = insert_returning(conn, account, &rows)
        .await?
        .into_iter()
        .map(|r| (r.job_id, r.event))
        .collect();
    // Idempotent replays were not inserted: read the events they stand for.
    let replayed: Vec<i64> = enqueued.iter().filter(|o| o.replayed).map(|o| o.id.0).collect();
    if !replayed.is_empty() {
        let earlier: Vec<JobEventRow> = sqlx::query_as(&format!(
            // One index probe per job, whatever the statistics of a freshly loaded table say.
            "select e.job_id, {} from unnest($2::bigint[]) as k(job_id) \
             cross join lateral (select * from event where account_id = $1 and job_id = k.job_id) e",
            EVENT_COLUMNS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(account.as_str())
        .bind(&replayed)
        .fetch_all(&mut *conn)
        .await?;
        by_job.extend(earlier.into_iter().map(|r| (r.job_id, r.event)));
    }

    enqueued
        .iter()
        .map(|o| {
            let row = by_job
                .remove(&o.id.0)
                .ok_or_else(|| Error::Corrupt(format!("job {} has no event", o.id)))?;
            Ok(Accepted {
                event: row.into_event(account)?,
                replayed: o.replayed,
                job: o.id,
            })
        })
        .collect()
}

/// Which of `entities` do not exist in the account, in one statement (events for unknown entities are refused at
/// the door).
async fn missing_entities(
    conn: &mut PgConnection,
    account: &AccountId,
    entities: &[&EntityKey],
) -> Result<std::collections::HashSet<EntityKey>> {
    let types: Vec<&str> = entities.iter().map(|e| e.entity_type.as_str()).collect();
    let refs: Vec<&str> = entities.iter().map(|e| e.entity_ref.as_str()).collect();
    let found: Vec<(String, String)> = sqlx::query_as(
        r#"
        select k.type, k.ref
        from unnest($2::text[], $3::text[]) as k(type, ref)
        where exists (select 1 from entity e where e.account_id = $1 and e.type = k.type and e.ref = k.ref)
        "#,
    )
    .bind(account.as_str())
    .bind(&types)
    .bind(&refs)
    .fetch_all(&mut *conn)
    .await?;
    let found: std::collections::HashSet<EntityKey> = found
        .into_iter()
        .map(|(entity_type, entity_ref)| EntityKey {
            entity_type,
            entity_ref,
        })
        .collect();
    Ok(entities
        .iter()
        .filter(|e| !found.contains(**e))
        .map(|e| (*e).clone())
        .collect())
}

/// Accepts an event (`POST /api/events`, answered 202): queued now, or scheduled for `scheduled_at`, and wakes
/// the workers.
pub async fn send_event(q: &Queue, account: &AccountId, event: NewEvent) -> Result<Accepted> {
    let mut tx = q.begin_for(account).await?;
    let accepted = accept_new_events(&mut tx, account, vec![event])
        .await?
        .pop()
        .ok_or_else(|| Error::Corrupt("accept returned nothing".into()))??;
    tx.commit().await?;
    q.waker().wake(QUEUE);
    Ok(accepted)
}

/// Accepts sent events ([`NewEvent`]s, validated here) inside the caller's transaction, with one statement per
/// step for all of them. An invalid event or one for an unknown entity gets its error in its place and the others
/// are accepted; an idempotency conflict fails the call (the transaction must then be rolled back).
pub(crate) async fn accept_new_events(
    conn: &mut PgConnection,
    account: &AccountId,
    mut events: Vec<NewEvent>,
) -> Result<Vec<Result<Accepted>>> {
    let mut out: Vec<Option<Result<Accepted>>> = events.iter_mut().map(|e| e.validate().err().map(Err)).collect();
    let valid: Vec<&EntityKey> = events
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_none())
        .map(|(e, _)| &e.entity)
        .collect();
    let missing = if valid.is_empty() {
        Default::default()
    } else {
        missing_entities(conn, account, &valid).await?
    };
    let mut accepts = Vec::new();
    let mut slots = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        if missing.contains(&e.entity) {
            out[i] = Some(Err(Error::EntityNotFound(e.entity)));
            continue;
        }
        slots.push(i);
        accepts.push(Accept {
            name: e.name,
            entity: e.entity,
            attributes: e.attributes,
            scheduled_at: e.scheduled_at,
            source_event_id: None,
            idempotency_key: e.idempotency_key,
            traceparent: e.traceparent,
        });
    }
    for (i, accepted) in slots.into_iter().zip(accept_events(conn, account, accepts).await?) {
        out[i] = Some(Ok(accepted));
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| Error::Corrupt("an event was neither accepted nor refused".into())))
        .collect()
}
