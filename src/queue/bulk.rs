//! Bulk enqueue by binary `COPY`, for batches of plain jobs.
//!
//! A batch whose jobs have no idempotency key, no concurrency key and no version of their own, enqueued while no
//! rollout routes work, needs none of the insert statement's per-row work (key claims, lanes, routing): its rows
//! are streamed into `job` with `COPY … (format binary)`, in chunks, so the server inserts one chunk while the
//! client encodes the next. Ids are drawn first, in batch order, so the batch keeps its order as the statement path
//! does. Every other batch takes the statement path ([`super::enqueue_many`]).

use chrono::Utc;
use sqlx::encode::IsNull;
use sqlx::postgres::PgArgumentBuffer;
use sqlx::{Encode, PgConnection, Postgres};

use super::{Error, JobState, NewJob, Result};
use crate::tenancy::AccountId;

/// Below this many jobs the statement path is as fast (a `COPY` costs round trips of its own).
pub(crate) const MIN_COPY: usize = 64;

/// Bytes encoded before a chunk is sent.
const CHUNK: usize = 256 * 1024;

/// The binary `COPY` signature, flags (none) and header extension length (none).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Whether the batch can be copied: see the module docs (the rollout is checked in the database).
pub(crate) fn copyable(jobs: &[NewJob]) -> bool {
    jobs.len() >= MIN_COPY
        && jobs
            .iter()
            .all(|j| j.idempotency_key.is_none() && j.concurrency_key.is_none() && j.version.is_none())
}

/// Copies a [`copyable`] batch into `job` on `conn` (call inside a transaction) and returns the ids in batch
/// order; `None` when a rollout is active, so that routing applies (take the statement path).
pub(crate) async fn copy_jobs(
    conn: &mut PgConnection,
    account: &AccountId,
    jobs: &[NewJob],
) -> Result<Option<Vec<i64>>> {
    let (known, routing, guarded, staged, mut ids): (bool, bool, bool, bool, Vec<i64>) = sqlx::query_as(
        r#"
        -- (the same rule as enqueue::account_exists: a deleted account takes no more jobs)
        select exists (select 1 from account where id = $1 and deleted_at is null),
               exists (select 1 from rollout where state in ('canary', 'promoted')),
               row_security_active('job'),
               to_regclass('pg_temp.ordo_job_copy') is not null,
               array(select nextval('job_id_seq') from generate_series(1, $2))
        "#,
    )
    .bind(account.as_str())
    .bind(jobs.len() as i64)
    .fetch_one(&mut *conn)
    .await?;
    if !known {
        return Err(Error::UnknownAccount {
            account: account.to_string(),
        });
    }
    if routing {
        return Ok(None);
    }
    crate::crypt::prepare(account.as_str()).await?;
    // Drawn in one statement, so ascending is the order they were drawn in.
    ids.sort_unstable();
    if guarded {
        // PostgreSQL refuses `COPY FROM` into a table whose row-level security applies to the caller (the API's
        // role): copy into a temporary table instead and insert from it, under the table's policy.
        // Once per connection (`if not exists` alone would log a notice for every batch).
        if !staged {
            sqlx::query(
                r#"
                create temp table if not exists ordo_job_copy (
                    id bigint, account_id text, queue text, kind text, args jsonb, state text, priority smallint,
                    max_attempts integer, timeout_ms integer, traceparent text, run_at timestamptz
                ) on commit delete rows
                "#,
            )
            .execute(&mut *conn)
            .await?;
        }
        let rows: Vec<(usize, &NewJob)> = jobs.iter().enumerate().collect();
        copy_rows(conn, "ordo_job_copy", account, &ids, &rows, true).await?;
        // Only this batch's rows: an earlier batch of the same transaction left its own until the commit.
        sqlx::query(&format!(
            "insert into job ({COLUMNS}, run_at) select {COLUMNS}, coalesce(run_at, now()) from ordo_job_copy \
             where id between $1 and $2"
        ))
        .bind(ids.first().copied().unwrap_or(0))
        .bind(ids.last().copied().unwrap_or(0))
        .execute(&mut *conn)
        .await?;
    } else {
        // Jobs without a run_at take the server's now() (the column default), not this process's clock: two
        // COPYs, one naming run_at and one leaving it out.
        type Rows<'a> = Vec<(usize, &'a NewJob)>;
        let (timed, untimed): (Rows, Rows) = jobs.iter().enumerate().partition(|(_, j)| j.run_at.is_some());
        copy_rows(conn, "job", account, &ids, &untimed, false).await?;
        copy_rows(conn, "job", account, &ids, &timed, true).await?;
    }

    // One count per queue, as the statement path's `count_after` appends.
    let mut per_queue: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for j in jobs {
        *per_queue.entry(j.queue.as_str()).or_default() += 1;
    }
    let (queues, counts): (Vec<&str>, Vec<i64>) = per_queue.into_iter().unzip();
    sqlx::query(
        r#"
        insert into job_stat_delta (account_id, queue, minute, enqueued)
        select $1, q, date_trunc('minute', now()), n
        from unnest($2::text[], $3::bigint[]) as t(q, n)
        "#,
    )
    .bind(account.as_str())
    .bind(&queues)
    .bind(&counts)
    .execute(&mut *conn)
    .await?;
    Ok(Some(ids))
}

/// The columns a copy fills besides `run_at`; the rest take their defaults.
const COLUMNS: &str = "id, account_id, queue, kind, args, state, priority, max_attempts, timeout_ms, traceparent";

/// Streams `rows` (index into `ids`, job) into `table` with one binary `COPY`, `run_at` included or left to its
/// default.
async fn copy_rows(
    conn: &mut PgConnection,
    table: &str,
    account: &AccountId,
    ids: &[i64],
    rows: &[(usize, &NewJob)],
    with_run_at: bool,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let run_at = if with_run_at { ", run_at" } else { "" };
    let mut copy = conn
        .copy_in_raw(&format!("copy {table} ({COLUMNS}{run_at}) from stdin (format binary)"))
        .await?;
    let now = Utc::now();
    let mut out = Tuples::new();
    for &(i, job) in rows {
        // Counts read a due job as available whatever it says; the claim goes by run_at, not by this.
        let state = match job.run_at {
            Some(at) if at > now => JobState::Scheduled.as_str(),
            _ => JobState::Available.as_str(),
        };
        out.tuple(if with_run_at { 11 } else { 10 });
        out.field(&ids[i])?;
        out.field(&account.as_str())?;
        out.field(&job.queue.as_str())?;
        out.field(&job.kind.as_str())?;
        if crate::crypt::enabled() {
            out.jsonb(&super::seal_json(account.as_str(), ids[i], "args", &job.args)?)?;
        } else {
            out.jsonb(&job.args)?;
        }
        out.field(&state)?;
        out.field(&job.priority)?;
        out.field(&job.max_attempts)?;
        out.field(&job.timeout_ms)?;
        out.field(&job.traceparent.as_deref())?;
        if with_run_at {
            out.field(&job.run_at)?;
        }
        if out.bytes.len() >= CHUNK {
            copy.send(std::mem::take(&mut out.bytes)).await?;
        }
    }
    out.end();
    copy.send(out.bytes).await?;
    copy.finish().await?;
    Ok(())
}

/// Tuples in `COPY`'s binary format: a header, then per tuple its field count and each field as a length (-1 for
/// null) and the value in the type's binary send format, then a trailer.
struct Tuples {
    bytes: Vec<u8>,
    /// Where sqlx's encoders write one value.
    value: PgArgumentBuffer,
}

impl Tuples {
    fn new() -> Self {
        Tuples {
            bytes: HEADER.to_vec(),
            value: PgArgumentBuffer::default(),
        }
    }

    fn tuple(&mut self, fields: i16) {
        self.bytes.extend_from_slice(&fields.to_be_bytes());
    }

    /// One field, encoded by sqlx's binary encoder for its type.
    fn field<'q, T: Encode<'q, Postgres>>(&mut self, v: &T) -> Result<()> {
        self.value.clear();
        match v.encode_by_ref(&mut self.value) {
            Ok(IsNull::No) => self.put(Some(self.value.len())),
            Ok(IsNull::Yes) => self.put(None),
            Err(e) => return Err(Error::Database(sqlx::Error::Encode(e))),
        }
        Ok(())
    }

    /// A `jsonb` field: its binary format is a version byte (1) and the JSON text.
    fn jsonb(&mut self, v: &serde_json::Value) -> Result<()> {
        self.value.clear();
        self.value.push(1);
        let text: &mut Vec<u8> = &mut self.value;
        serde_json::to_writer(text, v).map_err(|e| Error::Database(sqlx::Error::Encode(Box::new(e))))?;
        self.put(Some(self.value.len()));
        Ok(())
    }

    /// Appends the length and bytes of the value just encoded (`None`: null).
    fn put(&mut self, len: Option<usize>) {
        match len.and_then(|n| i32::try_from(n).ok()) {
            Some(n) => {
                self.bytes.extend_from_slice(&n.to_be_bytes());
                self.bytes.extend_from_slice(&self.value);
            }
            None => self.bytes.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn end(&mut self) {
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields are length-prefixed in network order, null is length -1, jsonb carries its version byte, and the
    /// stream starts with the signature and ends with the trailer.
    #[test]
    fn tuples_follow_the_binary_copy_format() {
        let mut t = Tuples::new();
        t.tuple(3);
        t.field(&7_i64).unwrap();
        t.field(&None::<i32>).unwrap();
        t.jsonb(&serde_json::json!({"a": 1})).unwrap();
        t.end();
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&3_i16.to_be_bytes());
        want.extend_from_slice(&8_i32.to_be_bytes());
        want.extend_from_slice(&7_i64.to_be_bytes());
        want.extend_from_slice(&(-1_i32).to_be_bytes());
        let json = br#"{"a":1}"#;
        want.extend_from_slice(&(json.len() as i32 + 1).to_be_bytes());
        want.push(1);
        want.extend_from_slice(json);
        want.extend_from_slice(&(-1_i16).to_be_bytes());
        assert_eq!(t.bytes, want);
    }

    /// Only plain batches of at least MIN_COPY jobs are copied.
    #[test]
    fn only_plain_batches_are_copyable() {
        let plain: Vec<NewJob> = (0..MIN_COPY)
            .map(|_| NewJob::new("noop", serde_json::json!({})))
            .collect();
        assert!(copyable(&plain));
        assert!(!copyable(&plain[1..]), "too small");
        for odd in [
            NewJob::new("noop", serde_json::json!({})).idempotency_key("k"),
            NewJob::new("noop", serde_json::json!({})).concurrency_key("c"),
        ] {
            let mut batch = plain.clone();
            batch.push(odd);
            assert!(!copyable(&batch));
        }
    }
}
