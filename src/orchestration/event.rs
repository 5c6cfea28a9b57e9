//! The event log: orchestration events (accepted, scheduled, cancelled, replayed) and audit records, read and
//! listed in ascending `seq`.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordo_workers::rules::{EntityKey, Problem};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};

use super::{concurrency_key, Error, Page, Result, QUEUE};
use crate::queue::{self, JobId, NewJob, Queue};
use crate::tenancy::AccountId;

/// The job kind of an orchestration event.
pub const EVENT_KIND: &str = "orchestration.event";

/// Orchestration event or audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An event that runs rulesets.
    Orchestration,
    /// A record describing an orchestration event's execution.
    Audit,
}

impl EventKind {
    /// The database and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Orchestration => "orchestration",
            EventKind::Audit => "audit",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "orchestration" => Ok(EventKind::Orchestration),
            "audit" => Ok(EventKind::Audit),
            o => Err(format!("unknown event kind {o:?}")),
        }
    }
}

/// An event's status, mirroring `event.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Queued, waiting for its turn.
    Pending,
    /// Waiting for its `scheduled_at`.
    Scheduled,
    /// Being executed.
    Running,
    /// Executed (possibly through an exception ruleset, then with `error`).
    Success,
    /// No ruleset matched.
    NoMatch,
    /// A rule failed with no exception ruleset, or the inline chain was too long; nothing but audit was kept.
    Failed,
    /// A scheduled event cancelled before it fired.
    Cancelled,
}

impl EventStatus {
    /// The database and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Scheduled => "scheduled",
            EventStatus::Running => "running",
            EventStatus::Success => "success",
            EventStatus::NoMatch => "no_match",
            EventStatus::Failed => "failed",
            EventStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the event has finished.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EventStatus::Success | EventStatus::NoMatch | EventStatus::Failed | EventStatus::Cancelled
        )
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "pending" => EventStatus::Pending,
            "scheduled" => EventStatus::Scheduled,
            "running" => EventStatus::Running,
            "success" => EventStatus::Success,
            "no_match" => EventStatus::NoMatch,
            "failed" => EventStatus::Failed,
            "cancelled" => EventStatus::Cancelled,
            o => return Err(format!("unknown event status {o:?}")),
        })
    }
}

/// An event or audit record as users see it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Id (the `seq`, as a string).
    pub id: String,
    /// Position in the account's log.
    pub seq: i64,
    /// Event name (for audit records: what they describe, e.g. the rule name).
    pub name: String,
    /// Orchestration or audit.
    pub kind: EventKind,
    /// Audit category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Status.
    pub status: EventStatus,
    /// The entity.
    pub entity: EntityKey,
    /// Attributes (for audit records: the details).
    pub attributes: Value,
    /// The event this one describes (audit) or came from (emitted, replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_event_id: Option<String>,
    /// When a scheduled event fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Acceptance time.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<DateTime<Utc>>,
    /// Why it failed (or the error handled by an exception ruleset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// W3C trace context it was accepted under (from the request's `traceparent`, or its source's trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

pub(crate) const EVENT_COLUMNS: &str = "seq, name, kind, category, status, entity_type, entity_ref, attributes, \
    source_event_id, scheduled_at, created_at, processed_at, error, traceparent";

/// [`EVENT_COLUMNS`] for readers: a pending event whose job a worker holds reads as `running`. The execution
/// commits the event's outcome with everything else, so the row itself never says `running`.
static READ_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    EVENT_COLUMNS.replacen(
        "status",
        &format!("case when {HELD} then 'running' else status end as status"),
        1,
    )
});

/// A pending event whose job a worker holds right now.
const HELD: &str =
    "status = 'pending' and exists (select 1 from job j where j.id = event.job_id and j.state = 'running')";

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    name: String,
    kind: String,
    category: Option<String>,
    status: String,
    entity_type: String,
    entity_ref: String,
    attributes: Value,
    source_event_id: Option<i64>,
    scheduled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    error: Option<String>,
    traceparent: Option<String>,
}

/// The identity of an event's sealed `field` (see [`crate::crypt`]).
fn event_aad<'a>(account: &'a AccountId, row: &'a [&'a str; 1], field: &'a str) -> crate::crypt::Aad<'a> {
    crate::crypt::Aad::new(account.as_str(), "event", row, field)
}

/// An event's error message, sealed for storage under the event's identity.
pub(crate) fn seal_error(account: &AccountId, seq: i64, error: &str) -> crate::crypt::Result<String> {
    let seq = seq.to_string();
    crate::crypt::seal_text(&event_aad(account, &[seq.as_str()], "error"), error)
}

impl EventRow {
    /// The event, its sealed attributes and error opened (the account's data key loaded: [`crate::crypt::prepare`]).
    pub(crate) fn into_event(self, account: &AccountId) -> Result<Event> {
        let mut r = self;
        let seq = r.seq.to_string();
        let row = [seq.as_str()];
        r.attributes = crate::crypt::open_json(&event_aad(account, &row, "attributes"), r.attributes)?;
        if let Some(e) = r.error.take() {
            r.error = Some(crate::crypt::open_text(&event_aad(account, &row, "error"), e)?);
        }
        Ok(Event {
            id: r.seq.to_string(),
            seq: r.seq,
            name: r.name,
            kind: r.kind.parse().map_err(Error::Corrupt)?,
            category: r.category,
            status: r.status.parse().map_err(Error::Corrupt)?,
            entity: EntityKey {
                entity_type: r.entity_type,
                entity_ref: r.entity_ref,
            },
            attributes: r.attributes,
            source_event_id: r.source_event_id.map(|s| s.to_string()),
            scheduled_at: r.scheduled_at,
            created_at: r.created_at,
            processed_at: r.processed_at,
            error: r.error,
            traceparent: r.traceparent,
        })
    }
}

/// An event to send.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Event name.
    pub name: String,
    /// Target entity (must exist).
    pub entity: EntityKey,
    /// Attributes (a JSON object; `Null` = `{}`).
    pub attributes: Value,
    /// Fire later instead of now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Deduplicates sends (per account, as for jobs).
    pub idempotency_key: Option<String>,
    /// W3C trace context to continue (the request's `traceparent`).
    pub traceparent: Option<String>,
}

impl NewEvent {
    /// An event `name` for `entity` with no attributes.
    pub fn new(name: impl Into<String>, entity_type: impl Into<String>, entity_ref: impl Into<String>) -> Self {
        NewEvent {
            name: name.into(),
            entity: EntityKey {
                entity_type: entity_type.into(),
                entity_ref: entity_ref.into(),
            },
            attributes: json!({}),
            scheduled_at: None,
            idempotency_key: None,
            traceparent: None,
        }
    }

    /// Sets the attributes.
    pub fn attributes(mut self, a: Value) -> Self {
        self.attributes = a;
        self
    }

    /// Schedules it.
    pub fn scheduled_at(mut self, t: DateTime<Utc>) -> Self {
        self.scheduled_at = Some(t);
        self
    }

    fn validate(&mut self) -> Result<()> {
        let mut p = Vec::new();
        if self.name.is_empty() || self.name.chars().count() > 255 {
            p.push(Problem::new("/name", "must be 1 to 255 characters"));
        }
        if self.entity.entity_type.is_empty() {
            p.push(Problem::new("/entity/type", "must not be empty"));
        }
        if self.entity.entity_ref.is_empty() {
            p.push(Problem::new("/entity/ref", "must not be empty"));
        }
        if self.attributes.is_null() {
            self.attributes = json!({});
        }
        if !self.attributes.is_object() {
            p.push(Problem::new("/attributes", "must be an object"));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(p))
        }
    }
}

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

/// One row to insert into `event`.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Drawn already, or 0 to draw it in the insert (in row order).
    pub seq: i64,
    pub name: String,
    pub kind: EventKind,
    pub category: Option<&'static str>,
    pub status: EventStatus,
    pub entity: EntityKey,
    pub attributes: Value,
    pub source_event_id: Option<i64>,
    pub job_id: Option<i64>,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Whether it is finished: stamped `processed_at`, at `processed_at` when given, else when inserted.
    pub processed: bool,
    pub processed_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub traceparent: Option<String>,
}

/// Draws `n` seqs, ascending.
pub(crate) async fn draw_seqs(conn: &mut PgConnection, n: usize) -> Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut seqs: Vec<i64> = sqlx::query_scalar("select nextval('event_seq') from generate_series(1, $1)")
        .bind(n as i64)
        .fetch_all(&mut *conn)
        .await?;
    seqs.sort_unstable();
    Ok(seqs)
}

/// Inserts rows with one statement.
pub(crate) async fn insert_rows(conn: &mut PgConnection, account: &AccountId, rows: &[Row]) -> Result<()> {
    insert(conn, account, rows, false).await.map(|_| ())
}

/// Inserts rows of queued events with one statement and returns them as stored, each with its job.
async fn insert_returning(conn: &mut PgConnection, account: &AccountId, rows: &[Row]) -> Result<Vec<JobEventRow>> {
    insert(conn, account, rows, true).await
}

static INSERT_SQL: &str = r#"
        insert into event (account_id, seq, name, kind, category, status, entity_type, entity_ref, attributes,
                           source_event_id, job_id, scheduled_at, processed_at, error, traceparent)
        select $1, case when t.seq = 0 then nextval('event_seq') else t.seq end, t.name, t.kind, t.category, t.status, t.entity_type, t.entity_ref, t.attributes,
               t.source_event_id, t.job_id, t.scheduled_at,
               case when t.processed then coalesce(t.processed_at, clock_timestamp()) end, t.error, t.traceparent
        from unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                    $9::jsonb[], $10::bigint[], $11::bigint[], $12::timestamptz[], $13::bool[], $14::text[],
                    $15::text[], $16::timestamptz[])
             as t(seq, name, kind, category, status, entity_type, entity_ref, attributes, source_event_id, job_id,
                  scheduled_at, processed, error, traceparent, processed_at)
        "#;

/// `INSERT_SQL ... returning` the stored rows: accepting events reads them back in the same round trip.
static INSERT_RETURNING_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{INSERT_SQL} returning coalesce(job_id, 0) as job_id, {EVENT_COLUMNS}"));

async fn insert(
    conn: &mut PgConnection,
    account: &AccountId,
    rows: &[Row],
    returning: bool,
) -> Result<Vec<JobEventRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    crate::crypt::prepare(account.as_str()).await?;
    let sealing = crate::crypt::enabled();
    // A sealed value is bound to its event's seq, so with encryption on every seq is drawn first.
    let mut drawn = if sealing {
        draw_seqs(&mut *conn, rows.iter().filter(|r| r.seq == 0).count())
            .await?
            .into_iter()
    } else {
        Vec::new().into_iter()
    };
    let mut seq = Vec::with_capacity(rows.len());
    let mut sealed_attrs = Vec::with_capacity(if sealing { rows.len() } else { 0 });
    let mut sealed_errors = Vec::with_capacity(if sealing { rows.len() } else { 0 });
    for r in rows.iter().filter(|_| sealing) {
        let s = if r.seq == 0 {
            drawn.next().unwrap_or_default()
        } else {
            r.seq
        };
        seq.push(s);
        let id = s.to_string();
        let row = [id.as_str()];
        sealed_attrs.push(crate::crypt::seal_json(
            &event_aad(account, &row, "attributes"),
            &r.attributes,
        )?);
        sealed_errors.push(match &r.error {
            Some(e) => Some(crate::crypt::seal_text(&event_aad(account, &row, "error"), e)?),
            None => None,
        });
    }
    let mut name = Vec::with_capacity(rows.len());
    let mut kind = Vec::with_capacity(rows.len());
    let mut category = Vec::with_capacity(rows.len());
    let mut status = Vec::with_capacity(rows.len());
    let mut etype = Vec::with_capacity(rows.len());
    let mut eref = Vec::with_capacity(rows.len());
    let mut attrs = Vec::with_capacity(rows.len());
    let mut source = Vec::with_capacity(rows.len());
    let mut job = Vec::with_capacity(rows.len());
    let mut sched = Vec::with_capacity(rows.len());
    let mut processed = Vec::with_capacity(rows.len());
    let mut processed_at = Vec::with_capacity(rows.len());
    let mut error = Vec::with_capacity(rows.len());
    let mut trace = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if !sealing {
            seq.push(r.seq);
        }
        name.push(r.name.as_str());
        kind.push(r.kind.as_str());
        category.push(r.category);
        status.push(r.status.as_str());
        etype.push(r.entity.entity_type.as_str());
        eref.push(r.entity.entity_ref.as_str());
        attrs.push(sealed_attrs.get(i).unwrap_or(&r.attributes));
        source.push(r.source_event_id);
        job.push(r.job_id);
        sched.push(r.scheduled_at);
        processed.push(r.processed);
        processed_at.push(r.processed_at);
        error.push(match sealed_errors.get(i) {
            Some(e) => e.as_deref(),
            None => r.error.as_deref(),
        });
        trace.push(r.traceparent.as_deref());
    }
    let sql = if returning {
        INSERT_RETURNING_SQL.as_str()
    } else {
        INSERT_SQL
    };
    let stored: Vec<JobEventRow> = sqlx::query_as(sql)
        .bind(account.as_str())
        .bind(&seq)
        .bind(&name)
        .bind(&kind)
        .bind(&category)
        .bind(&status)
        .bind(&etype)
        .bind(&eref)
        .bind(&attrs)
        .bind(&source)
        .bind(&job)
        .bind(&sched)
        .bind(&processed)
        .bind(&error)
        .bind(&trace)
        .bind(&processed_at)
        .fetch_all(&mut *conn)
        .await?;
    Ok(stored)
}

/// A root event's outcome, written when its execution commits.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// The event.
    pub seq: i64,
    /// Its outcome.
    pub status: EventStatus,
    /// Why it failed, or the error an exception ruleset handled.
    pub error: Option<String>,
    /// When it counts as processed.
    pub processed_at: DateTime<Utc>,
}

/// Writes executed root events' outcomes, with one statement.
pub(crate) async fn finish_events(conn: &mut PgConnection, account: &AccountId, finished: &[Finished]) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = finished.iter().map(|f| f.seq).collect();
    let statuses: Vec<&str> = finished.iter().map(|f| f.status.as_str()).collect();
    let errors: Vec<Option<String>> = finished
        .iter()
        .map(|f| f.error.as_deref().map(|e| seal_error(account, f.seq, e)).transpose())
        .collect::<Result<_, _>>()?;
    let processed_at: Vec<DateTime<Utc>> = finished.iter().map(|f| f.processed_at).collect();
    sqlx::query(
        r#"
        update event
        set status = r.status,
            error = r.error,
            processed_at = r.processed_at
        from unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) as r(seq, status, error, processed_at)
        where event.account_id = $1
          and event.seq = any($2)
          and event.seq = r.seq
        "#,
    )
    .bind(account.as_str())
    .bind(&seqs)
    .bind(&statuses)
    .bind(&errors)
    .bind(&processed_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Accepts events inside the caller's transaction: one queued job per event (keyed by its root entity, so
/// the queue runs them in order), then the event rows, whose seqs are drawn after the queue's per-key locks.
/// Returns each event and whether it was an idempotent replay of an earlier send.
pub(crate) async fn accept_many(
    conn: &mut PgConnection,
    account: &AccountId,
    events: Vec<Accept>,
) -> Result<Vec<(Event, bool)>> {
    Ok(accept_many_jobs(conn, account, events)
        .await?
        .into_iter()
        .map(|(e, replayed, _)| (e, replayed))
        .collect())
}

/// [`accept_many`], also returning each event's job.
pub(crate) async fn accept_many_jobs(
    conn: &mut PgConnection,
    account: &AccountId,
    events: Vec<Accept>,
) -> Result<Vec<(Event, bool, JobId)>> {
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
    let enqueued = queue::enqueue_many(&mut *conn, account, &jobs).await?;
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
            Ok((row.into_event(account)?, o.replayed, o.id))
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct JobEventRow {
    job_id: i64,
    #[sqlx(flatten)]
    event: EventRow,
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

/// Accepts an event (`POST /api/events`, answered 202): queued now, or scheduled for `scheduled_at`. Returns the
/// event and whether it is an idempotent replay of an earlier send with the same key.
pub async fn send_event(q: &Queue, account: &AccountId, event: NewEvent) -> Result<(Event, bool)> {
    let (event, replayed, _) = accept_event(q, account, event).await?;
    q.waker().wake(QUEUE);
    Ok((event, replayed))
}

/// Accepts an event without waking workers; also returns its job.
pub(crate) async fn accept_event(q: &Queue, account: &AccountId, event: NewEvent) -> Result<(Event, bool, JobId)> {
    let mut tx = q.begin_for(account).await?;
    let out = accept_event_in(&mut tx, account, event).await?;
    tx.commit().await?;
    Ok(out)
}

/// Accepts an event inside the caller's transaction; also returns its job.
pub(crate) async fn accept_event_in(
    conn: &mut PgConnection,
    account: &AccountId,
    event: NewEvent,
) -> Result<(Event, bool, JobId)> {
    accept_events_in(conn, account, vec![event])
        .await?
        .pop()
        .ok_or_else(|| Error::Corrupt("accept returned nothing".into()))?
}

/// Accepts events inside the caller's transaction, with one statement per step for all of them; also returns
/// their jobs. An invalid event or one for an unknown entity gets its error in its place and the others are
/// accepted; an idempotency conflict fails the call (the transaction must then be rolled back).
pub(crate) async fn accept_events_in(
    conn: &mut PgConnection,
    account: &AccountId,
    mut events: Vec<NewEvent>,
) -> Result<Vec<Result<(Event, bool, JobId)>>> {
    let mut out: Vec<Option<Result<(Event, bool, JobId)>>> =
        events.iter_mut().map(|e| e.validate().err().map(Err)).collect();
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
    for (i, accepted) in slots.into_iter().zip(accept_many_jobs(conn, account, accepts).await?) {
        out[i] = Some(Ok(accepted));
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| Error::Corrupt("an event was neither accepted nor refused".into())))
        .collect()
}

fn parse_id(id: &str) -> Result<i64> {
    id.parse::<i64>()
        .map_err(|_| Error::EventNotFound { id: id.to_owned() })
}

/// Reads one event or audit record.
pub async fn get_event<'e>(exec: impl PgExecutor<'e>, account: &AccountId, id: &str) -> Result<Event> {
    let seq = parse_id(id)?;
    get_events(exec, account, &[seq])
        .await?
        .pop()
        .ok_or_else(|| Error::EventNotFound { id: id.to_owned() })
}

/// Reads events and audit records by seq, in seq order; seqs that do not exist are left out.
pub(crate) async fn get_events<'e>(exec: impl PgExecutor<'e>, account: &AccountId, seqs: &[i64]) -> Result<Vec<Event>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "select {} from event where account_id = $1 and seq = any($2) order by seq",
        READ_COLUMNS.as_str()
    ))
    .bind(account.as_str())
    .bind(seqs)
    .fetch_all(exec)
    .await?;
    crate::crypt::prepare(account.as_str()).await?;
    rows.into_iter().map(|r| r.into_event(account)).collect()
}

/// The orchestration events that events `sources` emitted (inline, queued or scheduled), in seq order.
pub(crate) async fn emitted_from<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    sources: &[i64],
) -> Result<Vec<Event>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        // One index probe per source, whatever the statistics of a young table say.
        "select e.* from unnest($2::bigint[]) as s(seq) \
         cross join lateral (select {} from event \
                             where account_id = $1 and source_event_id = s.seq and kind = 'orchestration') e \
         order by e.seq",
        READ_COLUMNS.as_str()
    ))
    .bind(account.as_str())
    .bind(sources)
    .fetch_all(exec)
    .await?;
    crate::crypt::prepare(account.as_str()).await?;
    rows.into_iter().map(|r| r.into_event(account)).collect()
}

/// Filters of an event listing (all optional; `from` defaults to 30 days ago).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Entity type.
    pub entity_type: Option<String>,
    /// Entity ref.
    pub entity_ref: Option<String>,
    /// Event name.
    pub name: Option<String>,
    /// Orchestration or audit.
    pub kind: Option<EventKind>,
    /// Audit category.
    pub category: Option<String>,
    /// Status.
    pub status: Option<EventStatus>,
    /// Records of (or events from) this event.
    pub source_event_id: Option<String>,
    /// Accepted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Accepted before.
    pub to: Option<DateTime<Utc>>,
}

/// Lists events in ascending `seq`; `cursor` is the `next_cursor` of the previous page.
pub async fn list_events(
    conn: &mut PgConnection,
    account: &AccountId,
    f: &EventFilter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<Page<Event>> {
    let after = match cursor {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| Error::Invalid(vec![Problem::new("/cursor", "is not a cursor of this listing")]))?,
        ),
        None => None,
    };
    let source = match &f.source_event_id {
        Some(s) => match s.parse::<i64>() {
            Ok(v) => Some(v),
            // An id that cannot exist matches nothing.
            Err(_) => {
                return Ok(Page {
                    items: Vec::new(),
                    next_cursor: None,
                })
            }
        },
        None => None,
    };
    let from = f.from.unwrap_or_else(|| Utc::now() - chrono::Duration::days(30));
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "select {} from event where account_id = ",
        READ_COLUMNS.as_str()
    ));
    qb.push_bind(account.as_str());
    qb.push(" and created_at >= ").push_bind(from);
    if let Some(v) = &f.entity_type {
        qb.push(" and entity_type = ").push_bind(v.clone());
    }
    if let Some(v) = &f.entity_ref {
        qb.push(" and entity_ref = ").push_bind(v.clone());
    }
    if let Some(v) = &f.name {
        qb.push(" and name = ").push_bind(v.clone());
    }
    if let Some(v) = f.kind {
        qb.push(" and kind = ").push_bind(v.as_str());
    }
    if let Some(v) = &f.category {
        qb.push(" and category = ").push_bind(v.clone());
    }
    match f.status {
        Some(EventStatus::Running) => {
            qb.push(format!(" and {HELD}"));
        }
        Some(EventStatus::Pending) => {
            qb.push(format!(" and status = 'pending' and not ({HELD})"));
        }
        Some(v) => {
            qb.push(" and status = ").push_bind(v.as_str());
        }
        None => {}
    }
    if let Some(v) = source {
        qb.push(" and source_event_id = ").push_bind(v);
    }
    if let Some(v) = f.to {
        qb.push(" and created_at < ").push_bind(v);
    }
    if let Some(v) = after {
        qb.push(" and seq > ").push_bind(v);
    }
    qb.push(" order by seq limit ").push_bind(limit + 1);
    let rows: Vec<EventRow> = qb.build_query_as().persistent(false).fetch_all(&mut *conn).await?;
    crate::crypt::prepare(account.as_str()).await?;
    let mut items = rows
        .into_iter()
        .map(|r| r.into_event(account))
        .collect::<Result<Vec<_>>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit.max(0) as usize);
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

async fn lock_event(conn: &mut PgConnection, account: &AccountId, id: &str) -> Result<(Event, Option<i64>)> {
    let seq = parse_id(id)?;
    let row: Option<JobEventRow> = sqlx::query_as(&format!(
        "select coalesce(job_id, 0) as job_id, {EVENT_COLUMNS} from event where account_id = $1 and seq = $2 \
         and kind = 'orchestration' for update"
    ))
    .bind(account.as_str())
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or_else(|| Error::EventNotFound { id: id.to_owned() })?;
    let job = (row.job_id != 0).then_some(row.job_id);
    crate::crypt::prepare(account.as_str()).await?;
    Ok((row.event.into_event(account)?, job))
}

/// Cancels a scheduled event that has not fired (`DELETE /api/events/{id}`); any other status is a conflict.
pub async fn cancel_event(q: &Queue, account: &AccountId, id: &str) -> Result<Event> {
    let mut tx = q.begin_for(account).await?;
    let (event, job) = lock_event(&mut tx, account, id).await?;
    if event.status != EventStatus::Scheduled {
        return Err(Error::InvalidEventState {
            id: id.to_owned(),
            status: event.status,
            action: "cancel",
        });
    }
    sqlx::query("update event set status = 'cancelled', processed_at = now() where account_id = $1 and seq = $2")
        .bind(account.as_str())
        .bind(event.seq)
        .execute(&mut *tx)
        .await?;
    if let Some(job) = job {
        // The job may already be running; its executor then finds the event cancelled and does nothing.
        match queue::cancel(&mut tx, account, JobId(job)).await {
            Ok(_) | Err(queue::Error::InvalidState { .. }) | Err(queue::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let event = get_event(&mut *tx, account, id).await?;
    tx.commit().await?;
    Ok(event)
}

/// Replays a failed or unmatched event (`POST /api/events/{id}/replay`): a new event with the same name, entity
/// and attributes, whose `source_event_id` is the original. Any other status is a conflict.
pub async fn replay_event(q: &Queue, account: &AccountId, id: &str) -> Result<Event> {
    let mut tx = q.begin_for(account).await?;
    let (original, _) = lock_event(&mut tx, account, id).await?;
    if !matches!(original.status, EventStatus::Failed | EventStatus::NoMatch) {
        return Err(Error::InvalidEventState {
            id: id.to_owned(),
            status: original.status,
            action: "replay",
        });
    }
    let mut out = accept_many(
        &mut tx,
        account,
        vec![Accept {
            name: original.name,
            entity: original.entity,
            attributes: original.attributes,
            scheduled_at: None,
            source_event_id: Some(original.seq),
            idempotency_key: None,
            traceparent: crate::telemetry::trace::child_of(original.traceparent.as_deref()),
        }],
    )
    .await?;
    tx.commit().await?;
    q.waker().wake(QUEUE);
    out.pop()
        .map(|(e, _)| e)
        .ok_or_else(|| Error::Corrupt("accept returned nothing".into()))
}

/// Deletes finished events and audit records older than `retention` (`ORDO_RETAIN_EVENTS_DAYS`), at most
/// `batch` rows per call; returns how many went. Waiting events are kept whatever their age.
pub async fn prune_events<'e>(exec: impl PgExecutor<'e>, retention: Duration, batch: i64) -> Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
    let done = sqlx::query(
        r#"
        delete from event
        where ctid = any(array(
            select ctid
            from event
            where created_at < $1
              and status not in ('pending', 'scheduled', 'running')
            limit $2
        ))
        "#,
    )
    .bind(cutoff)
    .bind(batch)
    .execute(exec)
    .await?;
    Ok(done.rows_affected())
}
