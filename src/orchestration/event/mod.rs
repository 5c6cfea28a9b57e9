//! The event log: orchestration events (accepted, scheduled, cancelled, replayed) and audit records, read and
//! listed in ascending `seq`. Accepting events is `accept`'s, writing rows `write`'s.

mod accept;
mod write;

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordo_workers::rules::{EntityKey, Problem};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};

pub(crate) use self::accept::{accept_events, accept_events_locking, accept_new_events, Accept};
pub use self::accept::{send_event, Accepted};
pub(crate) use self::write::{draw_seqs, finish_events, insert_rows, Finished, Row};
use super::{Error, Page, Result, QUEUE};
use crate::queue::{self, JobId, Queue};
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

#[derive(sqlx::FromRow)]
pub(crate) struct JobEventRow {
    job_id: i64,
    #[sqlx(flatten)]
    event: EventRow,
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
    let mut out = accept_events(
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
        .map(|a| a.event)
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
