//! Audit records: rows of kind `audit` in the event log, each describing one step of an orchestration event's
//! execution (`source_event_id`): the entity snapshot it started from, each ruleset, each rule (with its
//! duration), each action, an exception path, a no-match, each webhook attempt, and custom `core.Log` lines.

use ordo_workers::rules::EntityKey;
use serde_json::Value;
use sqlx::PgConnection;

use super::event::{insert_rows, EventKind, EventStatus, Row};
use super::Result;
use crate::tenancy::AccountId;

/// The category of an audit record, mirroring `event.category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The entity as the execution found it.
    Snapshot,
    /// A ruleset that ran.
    Ruleset,
    /// A rule that ran, with its duration.
    Rule,
    /// An action a rule returned, as applied.
    Action,
    /// A failure handled by an exception ruleset.
    Exception,
    /// No ruleset matched.
    NoMatch,
    /// One webhook delivery attempt.
    Webhook,
    /// A `core.Log` line.
    Custom,
}

impl Category {
    /// The database and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Snapshot => "snapshot",
            Category::Ruleset => "ruleset",
            Category::Rule => "rule",
            Category::Action => "action",
            Category::Exception => "exception",
            Category::NoMatch => "no_match",
            Category::Webhook => "webhook",
            Category::Custom => "custom",
        }
    }
}

/// An audit record collected during an execution; `source` indexes the execution's events (0 = the root).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Audit {
    pub category: Category,
    pub name: String,
    pub status: EventStatus,
    pub attributes: Value,
    pub source: usize,
    pub error: Option<String>,
}

impl Audit {
    pub fn new(category: Category, name: impl Into<String>, source: usize, attributes: Value) -> Self {
        Audit {
            category,
            name: name.into(),
            status: EventStatus::Success,
            attributes,
            source,
            error: None,
        }
    }

    pub fn failed(mut self, error: impl Into<String>) -> Self {
        self.status = EventStatus::Failed;
        self.error = Some(error.into());
        self
    }
}

/// Writes audit records (see [`rows`]).
pub(crate) async fn write(
    conn: &mut PgConnection,
    account: &AccountId,
    entity: &EntityKey,
    audits: &[Audit],
    source_seqs: &[i64],
) -> Result<()> {
    let rows: Vec<Row> = rows(entity, audits, source_seqs).collect();
    insert_rows(conn, account, &rows).await
}

/// The event-log rows of audit records, resolving each `source` through `source_seqs`; seqs are drawn by the
/// insert in row order, so the records of one execution are ordered like the execution.
pub(crate) fn rows<'a>(
    entity: &'a EntityKey,
    audits: &'a [Audit],
    source_seqs: &'a [i64],
) -> impl Iterator<Item = Row> + 'a {
    audits.iter().map(move |a| Row {
        seq: 0,
        name: a.name.clone(),
        kind: EventKind::Audit,
        category: Some(a.category.as_str()),
        status: a.status,
        entity: entity.clone(),
        attributes: a.attributes.clone(),
        source_event_id: source_seqs.get(a.source).or(source_seqs.first()).copied(),
        job_id: None,
        scheduled_at: None,
        processed: true,
        processed_at: None,
        error: a.error.clone(),
        traceparent: None,
    })
}
