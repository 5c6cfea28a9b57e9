//! Writing the event log: rows inserted with one statement (their seqs drawn first or by the insert), and the
//! outcomes of executed events.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use ordo_workers::rules::EntityKey;
use serde_json::Value;
use sqlx::PgConnection;

use super::{event_aad, seal_error, EventKind, EventStatus, JobEventRow, EVENT_COLUMNS};
use crate::orchestration::Result;
use crate::tenancy::AccountId;

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
pub(super) async fn insert_returning(
    conn: &mut PgConnection,
    account: &AccountId,
    rows: &[Row],
) -> Result<Vec<JobEventRow>> {
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
