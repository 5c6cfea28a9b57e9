//! The `load`, `load_batch` and `load_chunk` tables as the API sees them: open loads, accept batches (stored as
//! chunks, with one job per chunk enqueued in the same transaction) and read progress and per-record results.
//! Every function takes the account and a connection, so the API runs them in its account-scoped transaction.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};

use super::records::{self, ChunkRows, Outcome, Split, REFUSED_CHUNK};
use super::{Error, Result, LOAD_KIND, QUEUE};
use crate::queue::{self, NewJob};
use crate::tenancy::AccountId;

/// Whether a load still takes batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadStatus {
    /// Its UTC day is today.
    Open,
    /// Its UTC day is over.
    Closed,
}

/// A load as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Load {
    /// Id.
    pub id: String,
    /// Name, unique per account and day.
    pub name: String,
    /// Open or closed.
    pub status: LoadStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it closes: the end of its UTC day.
    pub closes_at: DateTime<Utc>,
}

/// A batch's processing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Stored; no chunk has started.
    Pending,
    /// Some chunks are being processed.
    Running,
    /// Every record has its outcome.
    Complete,
}

crate::text_enum::text_enum!(BatchStatus as "batch status" {
    Pending = "pending",
    Running = "running",
    Complete = "complete",
});

/// Record counts of a batch; once complete, `total = unchanged + changed + failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BatchCounts {
    /// Records in the batch.
    pub total: i64,
    /// Skipped: quantity already as given.
    pub unchanged: i64,
    /// Applied.
    pub changed: i64,
    /// Invalid.
    pub failed: i64,
}

/// A batch as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Batch {
    /// Id.
    pub id: String,
    /// Its load.
    pub load_id: String,
    /// Pending, running or complete.
    pub status: BatchStatus,
    /// Record counts so far.
    pub counts: BatchCounts,
    /// Acceptance time.
    pub created_at: DateTime<Utc>,
    /// When the last chunk finished.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A load with its batches (`GET /api/loads/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LoadDetail {
    /// The load.
    #[serde(flatten)]
    pub load: Load,
    /// Its batches in acceptance order.
    pub batches: Vec<Batch>,
}

/// One record's result (`GET …/results`).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RecordResult {
    /// Position in the batch, from 0.
    pub index: i32,
    /// As sent (null when missing or not a string).
    pub sku_ref: Option<String>,
    /// As sent.
    pub location_ref: Option<String>,
    /// `changed`, `unchanged` or `failed`.
    #[schema(pattern = "^(changed|unchanged|failed)$")]
    pub outcome: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A batch to accept.
#[derive(Debug, Clone)]
pub struct NewBatch {
    /// The records as sent (validated here, one by one).
    pub records: Vec<Value>,
    /// Deduplicates sends (per account).
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request as sent, compared on a replay.
    pub fingerprint: Vec<u8>,
}

fn status_of(day: NaiveDate, now: DateTime<Utc>) -> LoadStatus {
    if day < now.date_naive() {
        LoadStatus::Closed
    } else {
        LoadStatus::Open
    }
}

fn end_of(day: NaiveDate) -> DateTime<Utc> {
    let next = day.succ_opt().unwrap_or(day);
    next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

fn parse_id(id: &str) -> Option<i64> {
    id.parse::<i64>().ok().filter(|v| *v > 0)
}

#[derive(sqlx::FromRow)]
struct InsertedLoad {
    #[sqlx(flatten)]
    row: LoadRow,
    inserted: bool,
}

#[derive(sqlx::FromRow)]
struct KeyedBatch {
    #[sqlx(flatten)]
    row: BatchRow,
    fingerprint: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct LoadRow {
    id: i64,
    name: String,
    day: NaiveDate,
    created_at: DateTime<Utc>,
}

impl LoadRow {
    fn into_load(self, now: DateTime<Utc>) -> Load {
        Load {
            id: self.id.to_string(),
            name: self.name,
            status: status_of(self.day, now),
            created_at: self.created_at,
            closes_at: end_of(self.day),
        }
    }
}

/// Opens a load named `name` for the UTC day of `now`. A load of that name already open today is
/// [`Error::LoadExists`] (its id in the error), so two clients never split one day's data over two loads.
pub async fn create_load<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Load> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(Error::Invalid(
            vec![queue::FieldError::new("/name", "must be 1 to 255 characters")].into(),
        ));
    }
    // `on conflict do update` (a no-op write) returns the existing row too, in one race-free statement.
    let (row, inserted): (LoadRow, bool) = {
        let r: InsertedLoad = sqlx::query_as(
            r#"
            insert into load (account_id, name, day, created_at)
            values ($1, $2, $3, $4)
            on conflict (account_id, name, day) do update
            set name = excluded.name
            returning id, name, day, created_at, (xmax = 0) as inserted
            "#,
        )
        .bind(account.as_str())
        .bind(name)
        .bind(now.date_naive())
        .bind(now)
        .fetch_one(exec)
        .await?;
        (r.row, r.inserted)
    };
    if !inserted {
        return Err(Error::LoadExists {
            name: name.to_owned(),
            id: row.id.to_string(),
        });
    }
    Ok(row.into_load(now))
}

/// The account's loads, newest first, optionally only those named `name`: at most `limit`, older than the id
/// `before` (the list cursor).
pub async fn list_loads<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    name: Option<&str>,
    before: Option<&str>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Load>> {
    let before = match before {
        Some(c) => Some(parse_id(c).ok_or_else(|| {
            Error::Invalid(
                vec![queue::FieldError::new(
                    "/query/cursor",
                    "is not a cursor of this listing",
                )]
                .into(),
            )
        })?),
        None => None,
    };
    let rows: Vec<LoadRow> = sqlx::query_as(
        r#"
        select id, name, day, created_at
        from load
        where account_id = $1
          and ($2::text is null or name = $2)
          and ($3::bigint is null or id < $3)
        order by id desc
        limit $4
        "#,
    )
    .bind(account.as_str())
    .bind(name)
    .bind(before)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_load(now)).collect())
}

async fn load_row(conn: &mut PgConnection, account: &AccountId, id: &str) -> Result<LoadRow> {
    let not_found = || Error::LoadNotFound { id: id.to_owned() };
    let lid = parse_id(id).ok_or_else(not_found)?;
    let row: Option<LoadRow> = sqlx::query_as(
        r#"
        select id, name, day, created_at
        from load
        where account_id = $1
          and id = $2
        "#,
    )
    .bind(account.as_str())
    .bind(lid)
    .fetch_optional(&mut *conn)
    .await?;
    row.ok_or_else(not_found)
}

#[derive(sqlx::FromRow)]
struct BatchRow {
    id: i64,
    load_id: i64,
    status: String,
    total: i32,
    unchanged: i32,
    changed: i32,
    failed: i32,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

const BATCH_COLUMNS: &str = "id, load_id, status, total, unchanged, changed, failed, created_at, completed_at";

impl TryFrom<BatchRow> for Batch {
    type Error = Error;
    fn try_from(r: BatchRow) -> Result<Batch> {
        Ok(Batch {
            id: r.id.to_string(),
            load_id: r.load_id.to_string(),
            status: r.status.parse().map_err(Error::Corrupt)?,
            counts: BatchCounts {
                total: r.total.into(),
                unchanged: r.unchanged.into(),
                changed: r.changed.into(),
                failed: r.failed.into(),
            },
            created_at: r.created_at,
            completed_at: r.completed_at,
        })
    }
}

/// A load with every batch and its counts.
pub async fn get_load(
    conn: &mut PgConnection,
    account: &AccountId,
    id: &str,
    now: DateTime<Utc>,
) -> Result<LoadDetail> {
    let row = load_row(conn, account, id).await?;
    let batches: Vec<BatchRow> = sqlx::query_as(&format!(
        r#"
        select {BATCH_COLUMNS}
        from load_batch
        where account_id = $1
          and load_id = $2
        order by id
        "#
    ))
    .bind(account.as_str())
    .bind(row.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(LoadDetail {
        load: row.into_load(now),
        batches: batches.into_iter().map(Batch::try_from).collect::<Result<_>>()?,
    })
}

/// One batch of a load.
pub async fn get_batch<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    load_id: &str,
    batch_id: &str,
) -> Result<Batch> {
    let not_found = || Error::BatchNotFound {
        id: batch_id.to_owned(),
    };
    let (Some(lid), Some(bid)) = (parse_id(load_id), parse_id(batch_id)) else {
        return Err(not_found());
    };
    let row: Option<BatchRow> = sqlx::query_as(&format!(
        r#"
        select {BATCH_COLUMNS}
        from load_batch
        where account_id = $1
          and load_id = $2
          and id = $3
        "#
    ))
    .bind(account.as_str())
    .bind(lid)
    .bind(bid)
    .fetch_optional(exec)
    .await?;
    row.ok_or_else(not_found)?.try_into()
}

async fn batch_by_key(conn: &mut PgConnection, account: &AccountId, key: &str) -> Result<Option<(Batch, Vec<u8>)>> {
    let r: Option<KeyedBatch> = sqlx::query_as(&format!(
        r#"
        select {BATCH_COLUMNS}, fingerprint
        from load_batch
        where account_id = $1
          and idempotency_key = $2
        "#
    ))
    .bind(account.as_str())
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    r.map(|r| Ok((Batch::try_from(r.row)?, r.fingerprint))).transpose()
}

fn replay_or_conflict(found: (Batch, Vec<u8>), new: &NewBatch, key: &str) -> Result<(Batch, bool)> {
    if found.1 == new.fingerprint {
        Ok((found.0, true))
    } else {
        Err(Error::IdempotencyConflict { key: key.to_owned() })
    }
}

/// Accepts a batch into an open load: validates every record (invalid ones are stored as failed at once),
/// stores the valid ones as chunks by position and enqueues one job per chunk, all in the caller's transaction.
/// Returns the batch and whether it is an idempotent replay of an earlier send with the same key (which is
/// answered even when the load has closed since). Wake the queue's workers after commit.
pub async fn create_batch(
    conn: &mut PgConnection,
    account: &AccountId,
    load_id: &str,
    new: &NewBatch,
    now: DateTime<Utc>,
) -> Result<(Batch, bool)> {
    if new.records.len() > records::MAX_RECORDS {
        return Err(Error::TooManyRecords {
            max: records::MAX_RECORDS,
            got: new.records.len(),
        });
    }
    let load = load_row(conn, account, load_id).await?;
    if status_of(load.day, now) == LoadStatus::Closed {
        if let Some(key) = &new.idempotency_key {
            if let Some(found) = batch_by_key(conn, account, key).await? {
                return replay_or_conflict(found, new, key);
            }
        }
        return Err(Error::Closed {
            id: load_id.to_owned(),
            day: load.day,
        });
    }
    let Split { chunks, refused } = records::split(&new.records, records::PARTITIONS);
    let done = chunks.is_empty();
    // `on conflict do nothing` on the key's unique index: a concurrent send of the same key waits for the first
    // to commit and then replays it, without check-then-insert.
    let inserted: Option<BatchRow> = sqlx::query_as(&format!(
        r#"
        insert into load_batch (account_id, load_id, status, idempotency_key, fingerprint, total, failed, chunks,
                                created_at, completed_at)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, case when $10 then $9 end)
        on conflict (account_id, idempotency_key) where idempotency_key is not null do nothing
        returning {BATCH_COLUMNS}
        "#
    ))
    .bind(account.as_str())
    .bind(load.id)
    .bind(if done { "complete" } else { "pending" })
    .bind(&new.idempotency_key)
    .bind(&new.fingerprint)
    .bind(new.records.len() as i32)
    .bind(refused.len() as i32)
    .bind(chunks.len() as i32)
    .bind(now)
    .bind(done)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = inserted else {
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let found = batch_by_key(conn, account, key)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("batch of key {key:?} vanished")))?;
        return replay_or_conflict(found, new, key);
    };
    let batch_id = row.id;
    for (p, c) in &chunks {
        insert_chunk(conn, account, batch_id, *p, c, false).await?;
    }
    if !refused.is_empty() {
        insert_chunk(conn, account, batch_id, REFUSED_CHUNK, &refused, true).await?;
    }
    // One key per partition: the queue runs a partition's chunks one at a time, in batch order.
    let jobs: Vec<NewJob> = chunks
        .iter()
        .map(|(p, _)| {
            NewJob::new(LOAD_KIND, json!({"batch_id": batch_id, "chunk": p}))
                .queue(QUEUE)
                .concurrency_key(format!("load:{p}"))
        })
        .collect();
    queue::enqueue_many(&mut *conn, account, &jobs).await?;
    Ok((row.try_into()?, false))
}

async fn insert_chunk(
    conn: &mut PgConnection,
    account: &AccountId,
    batch_id: i64,
    chunk: i32,
    rows: &ChunkRows,
    processed: bool,
) -> Result<()> {
    crate::crypt::prepare(account.as_str()).await?;
    let outcome: Option<Vec<&str>> = processed.then(|| vec![Outcome::Failed.as_str(); rows.len()]);
    let (mut skus, mut locs, mut messages) = (rows.sku_ref.clone(), rows.location_ref.clone(), rows.message.clone());
    super::records::crypt_fields(
        account.as_str(),
        batch_id,
        chunk,
        &rows.idx,
        &mut [
            ("sku_ref", &mut skus),
            ("location_ref", &mut locs),
            ("message", &mut messages),
        ],
        false,
    )?;
    let message: Option<&Vec<Option<String>>> = processed.then_some(&messages);
    sqlx::query(
        r#"
        insert into load_chunk (account_id, batch_id, chunk, idx, sku_ref, location_ref, qty, outcome, message)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        "#,
    )
    .bind(account.as_str())
    .bind(batch_id)
    .bind(chunk)
    .bind(&rows.idx)
    .bind(&skus)
    .bind(&locs)
    .bind(&rows.qty)
    .bind(outcome)
    .bind(message)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A result with the chunk it is stored in (part of its sealed fields' identity).
#[derive(sqlx::FromRow)]
struct ResultRow {
    chunk: i32,
    #[sqlx(flatten)]
    result: RecordResult,
}

/// Per-record results of a batch in index order: processed records only, optionally of one outcome, at most
/// `limit`, after the index `after` (the list cursor).
pub async fn results(
    conn: &mut PgConnection,
    account: &AccountId,
    load_id: &str,
    batch_id: &str,
    outcome: Option<Outcome>,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<RecordResult>> {
    let batch = get_batch(&mut *conn, account, load_id, batch_id).await?;
    let bid = parse_id(&batch.id).ok_or_else(|| Error::Corrupt(format!("batch id {}", batch.id)))?;
    let rows: Vec<ResultRow> = sqlx::query_as(
        r#"
        select c.chunk, r.index, r.sku_ref, r.location_ref, r.outcome, r.message
        from load_chunk c
        cross join lateral unnest(c.idx, c.sku_ref, c.location_ref, c.outcome, c.message)
                           as r(index, sku_ref, location_ref, outcome, message)
        where c.account_id = $1
          and c.batch_id = $2
          and c.outcome is not null
          and ($3::text is null or r.outcome = $3)
          and ($4::int is null or r.index > $4)
        order by r.index
        limit $5
        "#,
    )
    .bind(account.as_str())
    .bind(bid)
    .bind(outcome.map(Outcome::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    crate::crypt::prepare(account.as_str()).await?;
    rows.into_iter()
        .map(|ResultRow { chunk, mut result }| {
            let mut fields = [
                vec![result.sku_ref.take()],
                vec![result.location_ref.take()],
                vec![result.message.take()],
            ];
            let [s, l, m] = &mut fields;
            super::records::crypt_fields(
                account.as_str(),
                bid,
                chunk,
                &[result.index],
                &mut [("sku_ref", s), ("location_ref", l), ("message", m)],
                true,
            )?;
            [result.sku_ref, result.location_ref, result.message] = fields.map(|mut v| v.pop().flatten());
            Ok(result)
        })
        .collect()
}

/// First run of the loads' pruning after a worker starts.
const PRUNE_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
/// Loads are kept by the day: once a minute is soon enough, and costs one statement.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The maintenance chore that deletes loads past their retention, at most 1 000 a minute.
pub fn prune_chore() -> crate::chore::Chore {
    crate::chore::Chore::new("prune loads", PRUNE_FIRST, PRUNE_EVERY, |ctx| async move {
        match prune_loads(&ctx.pool, ctx.retention, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(loads = n, "pruned loads past their retention"),
            Err(e) => tracing::warn!(error = %e, "failed to prune loads"),
        }
    })
}

/// Deletes loads whose day ended more than `retention` ago (`ORDO_RETAIN_EVENTS_DAYS`, as for the event log), with
/// their batches and chunks, at most `limit` loads per call; returns how many went. A load with a batch still
/// pending or running is kept, so nothing is deleted under a chunk job.
pub async fn prune_loads<'e>(exec: impl PgExecutor<'e>, retention: std::time::Duration, limit: i64) -> Result<u64> {
    let cutoff =
        (Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30))).date_naive();
    // One statement: the batch rows go in a data-modifying CTE (chunks follow by cascade), and the foreign key
    // from batch to load is checked at the end of the statement, after both deletes.
    let gone: i64 = sqlx::query_scalar(
        r#"
        with old as (
            select l.account_id, l.id
            from load l
            where l.day < $1
              and not exists (
                  select 1
                  from load_batch b
                  where b.account_id = l.account_id
                    and b.load_id = l.id
                    and b.status <> 'complete'
              )
            order by l.day
            limit $2
        ),
        batches as (
            delete from load_batch b
            using old
            where b.account_id = old.account_id
              and b.load_id = old.id
        ),
        loads as (
            delete from load l
            using old
            where l.account_id = old.account_id
              and l.id = old.id
            returning 1
        )
        select count(*) from loads
        "#,
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_one(exec)
    .await?;
    Ok(gone as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load is open during its UTC day and closed from the next midnight on.
    #[test]
    fn loads_close_at_the_end_of_their_utc_day() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(status_of(day, at("2026-11-25T00:00:00Z")), LoadStatus::Open);
        assert_eq!(status_of(day, at("2026-11-25T23:59:59.999Z")), LoadStatus::Open);
        assert_eq!(status_of(day, at("2026-11-26T00:00:00Z")), LoadStatus::Closed);
        assert_eq!(end_of(day), at("2026-11-26T00:00:00Z"));
    }
}
