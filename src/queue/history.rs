//! History: finished jobs, out of the hot table.
//!
//! A statement that finishes jobs deletes them from `job` and appends them to `job_history` in the same
//! statement ([`append_history`]), so `job` holds only waiting and running jobs. History is append-only and
//! partitioned by idempotency class and UTC day (see the migration `create_job_history`): maintenance attaches the
//! coming days' partitions ([`add_history_days`]) and drops those past retention whole ([`retire_history`]), after
//! releasing the idempotency keys of the jobs in them. Reads by id and listings look in both tables.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::{PgExecutor, PgPool};

use super::Result;

/// Finished jobs are kept a day by default: long enough to look into yesterday's failures.
pub const KEEP_FINISHED: Duration = Duration::from_secs(24 * 3600);
/// Jobs with an idempotency key are kept a week by default, so a client's replay within that finds the job.
pub const KEEP_KEYED: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs without an idempotency key.
    pub finished: Duration,
    /// Finished jobs with an idempotency key (a replay within this window still finds the job).
    pub keyed: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            finished: KEEP_FINISHED,
            keyed: KEEP_KEYED,
        }
    }
}

/// The stored columns of `job` and `job_history`, in table order.
pub(crate) const STORED_COLUMNS: &str = "id, account_id, queue, kind, args, state, priority, attempt, max_attempts, \
    run_at, created_at, started_at, finished_at, lease_owner, leased_until, timeout_ms, result, errors, \
    idempotency_key, fingerprint, concurrency_key, pool, version, traceparent";

/// The stored columns of `job` as a `returning` list of a statement that finishes jobs, each `(column, expression)`
/// of `finished` replacing the column's value (e.g. `("state", "'completed'")`).
pub(crate) fn finished_row(finished: &[(&str, &str)]) -> String {
    STORED_COLUMNS
        .split(", ")
        .map(|c| match finished.iter().find(|(name, _)| *name == c) {
            Some((_, expr)) => format!("{expr} as {c}"),
            None => format!("job.{c}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A CTE, comma first, that appends the rows of `done` (an earlier CTE returning [`finished_row`]) to history.
pub(crate) fn append_history(done: &str) -> String {
    format!(
        r#",
        history_appended as (
            insert into job_history ({STORED_COLUMNS})
            select {STORED_COLUMNS} from {done}
        )"#
    )
}

/// The two classes of history: jobs with an idempotency key are kept for the longer window.
const CLASSES: [&str; 2] = ["keyed", "unkeyed"];

fn keep(class: &str, retention: Retention) -> Duration {
    if class == "keyed" {
        retention.keyed.max(retention.finished)
    } else {
        retention.finished
    }
}

/// How long DDL on history may wait for a lock before it gives up until the next round: attaching or dropping a
/// partition queues every completion behind it while it waits.
const DDL_LOCK_TIMEOUT: &str = "100ms";

/// Attaches the partitions of today and tomorrow (UTC) that are missing; returns how many it attached. A day whose
/// rows already went to the default partition gets none (they stay there until pruned).
pub async fn add_history_days(pool: &PgPool) -> Result<u32> {
    let mut added = 0;
    for class in CLASSES {
        for ahead in 0..2 {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("set local lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
                .execute(&mut *tx)
                .await?;
            let attached: bool =
                sqlx::query_scalar("select job_history_add_day($1, (now() at time zone 'UTC')::date + $2)")
                    .bind(class)
                    .bind(ahead)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            added += u32::from(attached);
        }
    }
    Ok(added)
}

/// What one call of [`retire_history`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retired {
    /// Day partitions dropped.
    pub partitions_dropped: u32,
    /// Rows deleted from the default partitions.
    pub rows_pruned: u64,
    /// Idempotency keys released.
    pub keys_released: u64,
}

/// Where the release of a partition's idempotency keys stands, so the next call goes on from there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetireCursor {
    partition: String,
    after: (String, i64),
}

/// Rows handled per statement.
const BATCH: i64 = 5_000;

/// Removes history past retention, for at most about `budget` of work: day partitions whose day ended more than the
/// retention ago are dropped whole, after the idempotency keys of their jobs are released (in batches, resumed
/// from `cursor` by the next call); rows of the default partitions are deleted. A partition whose drop cannot take
/// its lock at once is left for the next call.
pub async fn retire_history(
    pool: &PgPool,
    retention: Retention,
    cursor: &mut Option<RetireCursor>,
    budget: Duration,
) -> Result<Retired> {
    let started = std::time::Instant::now();
    let mut out = Retired::default();
    let today = Utc::now();
    for class in CLASSES {
        let cutoff = today - chrono::Duration::from_std(keep(class, retention)).unwrap_or(chrono::Duration::days(7));
        // Default partition first: rows there have no day partition to go with.
        loop {
            let n = prune_default(pool, class, cutoff).await?;
            out.rows_pruned += n.0;
            out.keys_released += n.1;
            if n.0 < BATCH as u64 || started.elapsed() > budget {
                break;
            }
        }
        for (part, day) in day_partitions(pool, class).await? {
            let Some(end) = day.succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)) else {
                continue;
            };
            if end.and_utc() > cutoff {
                continue;
            }
            if class == "keyed" {
                loop {
                    if started.elapsed() > budget {
                        return Ok(out);
                    }
                    let from = match cursor.take() {
                        Some(c) if c.partition == part => c.after,
                        _ => (String::new(), i64::MIN),
                    };
                    let (released, last) = release_keys(pool, &part, &from).await?;
                    out.keys_released += released;
                    match last {
                        Some(after) => {
                            *cursor = Some(RetireCursor {
                                partition: part.clone(),
                                after,
                            })
                        }
                        None => break,
                    }
                }
            }
            if drop_partition(pool, &part).await? {
                out.partitions_dropped += 1;
            }
        }
    }
    Ok(out)
}

/// The day partitions of one class and their days, oldest first.
async fn day_partitions(pool: &PgPool, class: &str) -> Result<Vec<(String, NaiveDate)>> {
    let parent = format!("job_history_{class}");
    let names: Vec<String> = sqlx::query_scalar(
        r#"
        select c.relname::text
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        where i.inhparent = to_regclass($1)
        "#,
    )
    .bind(&parent)
    .fetch_all(pool)
    .await?;
    let mut days: Vec<(String, NaiveDate)> = names
        .into_iter()
        .filter_map(|n| {
            let day = n.strip_prefix(&parent)?.strip_prefix('_')?;
            let day = NaiveDate::parse_from_str(day, "%Y%m%d").ok()?;
            Some((n, day))
        })
        .collect();
    days.sort_by_key(|(_, d)| *d);
    Ok(days)
}

/// Deletes up to [`BATCH`] rows finished before `cutoff` from the class's default partition, releasing their keys;
/// returns (rows, keys).
async fn prune_default(pool: &PgPool, class: &str, cutoff: chrono::DateTime<Utc>) -> Result<(u64, u64)> {
    let (rows, keys): (i64, i64) = sqlx::query_as(&format!(
        r#"
        with old as (
            select ctid, account_id, id, idempotency_key
            from job_history_{class}_default
            where finished_at < $1
            limit $2
        ),
        released as (
            delete from job_key k
            using old
            where k.account_id = old.account_id
              and k.idempotency_key = old.idempotency_key
              and k.job_id = old.id
            returning 1
        ),
        gone as (
            delete from job_history_{class}_default d
            using old
            where d.ctid = old.ctid
            returning 1
        )
        select (select count(*) from gone), (select count(*) from released)
        "#
    ))
    .bind(cutoff)
    .bind(BATCH)
    .fetch_one(pool)
    .await?;
    Ok((rows as u64, keys as u64))
}

/// Releases the keys of up to [`BATCH`] jobs of a keyed day partition after `(account, id)`, in index order;
/// returns how many keys went and where the batch ended (None once the partition is done).
async fn release_keys(pool: &PgPool, part: &str, after: &(String, i64)) -> Result<(u64, Option<(String, i64)>)> {
    let (released, seen, last_account, last_id): (i64, i64, Option<String>, Option<i64>) = sqlx::query_as(&format!(
        r#"
            with batch as (
                select account_id, id, idempotency_key
                from "{part}"
                where (account_id, id) > ($1, $2)
                order by account_id, id
                limit $3
            ),
            released as (
                delete from job_key k
                using batch b
                where k.account_id = b.account_id
                  and k.idempotency_key = b.idempotency_key
                  and k.job_id = b.id
                returning 1
            ),
            last as (
                select account_id, id from batch order by account_id desc, id desc limit 1
            )
            select (select count(*) from released), (select count(*) from batch),
                   (select account_id from last), (select id from last)
            "#
    ))
    .bind(&after.0)
    .bind(after.1)
    .bind(BATCH)
    .fetch_one(pool)
    .await?;
    let next = match (last_account, last_id) {
        (Some(a), Some(i)) if seen > 0 => Some((a, i)),
        _ => None,
    };
    Ok((released as u64, next))
}

/// Drops one day partition; returns false when its lock could not be had at once (try again next round).
async fn drop_partition(pool: &PgPool, part: &str) -> Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("set local lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    // Through the owner's function: the role of workers (`ordo_worker`) owns no table.
    match sqlx::query("select job_history_drop_day($1)")
        .bind(part)
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        // lock_not_available: someone reads or writes it right now
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The job an idempotency key belongs to and the fingerprint of its payload.
pub(crate) async fn find_key<'e>(
    exec: impl PgExecutor<'e>,
    account: &str,
    key: &str,
) -> Result<Option<(i64, Option<Vec<u8>>)>> {
    Ok(
        sqlx::query_as("select job_id, fingerprint from job_key where account_id = $1 and idempotency_key = $2")
            .bind(account)
            .bind(key)
            .fetch_optional(exec)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished row names every stored column once, with the given expressions in place.
    #[test]
    fn finished_row_replaces_only_the_named_columns() {
        let row = finished_row(&[("state", "'completed'"), ("finished_at", "now()")]);
        let cols: Vec<&str> = row.split(", ").collect();
        assert_eq!(cols.len(), STORED_COLUMNS.split(", ").count());
        assert!(cols.contains(&"'completed' as state"));
        assert!(cols.contains(&"now() as finished_at"));
        assert!(cols.contains(&"job.id"));
        assert!(!cols.contains(&"job.state"));
    }

    /// Keyed history is kept for the longer of the two windows.
    #[test]
    fn keyed_history_keeps_the_longer_window() {
        let r = Retention {
            finished: Duration::from_secs(3600),
            keyed: Duration::from_secs(7200),
        };
        assert_eq!(keep("keyed", r), Duration::from_secs(7200));
        assert_eq!(keep("unkeyed", r), Duration::from_secs(3600));
        let r = Retention {
            finished: Duration::from_secs(9000),
            keyed: Duration::from_secs(7200),
        };
        assert_eq!(keep("keyed", r), Duration::from_secs(9000));
    }
}
