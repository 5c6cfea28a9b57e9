//! The scout: a claimer's walk from the start, made beside its claims instead of in their way.
//!
//! While a snapshot held open keeps dead index entries, claims walk from their floors (see [`super::floor`]), and
//! something must still look behind them: for accounts new to the list of accounts with work, and for jobs that
//! became waiting behind a floor. A claim walking from the start did that once a second or less often, and every
//! job enqueued while it walked waited for it: after half an hour of a held snapshot that walk took a quarter of a
//! second, and the start p99 of a steady 1 000 jobs/s grew from 14 to 395 ms. The scout makes the same walk on a
//! connection of its own, locking nothing, and reports what it found; the claimer takes the report before its next
//! claim (see [`super::FairShare::scouted`]) and walks from the start only when the scout saw a job behind a floor.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::floor::Floor;
use super::share::{active_accounts, Scouted};
use super::Result;

/// Walks `queue` from the start for a claimer of `kinds` at `version` whose claims start at `floors`: reads the
/// accounts with waiting work, and whether a job it could claim (due, its turn come, its queue not paused) waits
/// behind a floor. Reads only, in a transaction of its own, so that its reads can be counted.
pub async fn scout(
    conn: &mut PgConnection,
    queue: &str,
    kinds: &[String],
    version: &str,
    floors: &[Floor],
) -> Result<Scouted> {
    let started = Instant::now();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let before = super::claim::index_reads(&mut tx).await?;
    let active = active_accounts(&mut *tx, queue).await?;
    let accounts: Vec<&str> = floors.iter().map(|f| f.account_id.as_str()).collect();
    let priorities: Vec<i16> = floors.iter().map(|f| f.priority).collect();
    let ats: Vec<DateTime<Utc>> = floors.iter().map(|f| f.at).collect();
    // What a claim's walk may take (see job_claim_walk), below each floor. `lateral … limit 1`: one walk of the
    // claim index per floor from the start of its priority, whatever the planner thinks of the table's size.
    let behind: bool = sqlx::query_scalar(
        r#"
        select exists (
            select 1
            from unnest($2::text[], $3::smallint[], $4::timestamptz[]) as f(account_id, priority, at)
            cross join lateral (
                select 1 from job j
                where j.queue = $1
                  and j.account_id = f.account_id
                  and j.state in ('available', 'scheduled', 'retryable')
                  and j.priority = f.priority
                  and j.run_at < f.at
                  and j.run_at <= now()
                  and j.kind = any($5)
                  and (j.version is null or j.version = $6)
                  and (j.concurrency_key is null or j.state <> 'scheduled')
                order by j.run_at
                limit 1
            ) waiting
            where not exists (select 1 from queue_pause p where p.account_id = f.account_id and p.queue = $1)
        )
        "#,
    )
    .bind(queue)
    .bind(&accounts)
    .bind(&priorities)
    .bind(&ats)
    .bind(kinds)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    let reads = super::claim::index_reads(&mut tx).await? - before;
    tx.rollback().await?;
    Ok(Scouted {
        active,
        behind,
        took: started.elapsed(),
        reads,
    })
}
