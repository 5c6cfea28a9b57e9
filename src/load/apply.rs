//! The worker side of loads: the engine handler of [`LOAD_KIND`] jobs, one per chunk of a batch. A chunk is
//! processed in one transaction that also completes its job (fenced by attempt), so it applies exactly once.

use std::collections::{BTreeSet, HashMap};

use ordo_workers::{BoxFuture, StepContext, StepError};
use serde_json::json;
use sqlx::PgPool;

use super::records::{decide, Key, Outcome};
use super::{Error, Result, LOAD_KIND};
use crate::engine::{EngineHandler, EngineHandlers, EngineResult};
use crate::orchestration::bulk;
use crate::queue::{self, Job, KeyLocks};
use crate::tenancy::AccountId;

/// Registers the load handler and the pruning of old loads.
pub fn register(h: &mut EngineHandlers) {
    h.register(LoadChunkHandler);
    h.chore(super::store::prune_chore());
}

/// The engine handler of [`LOAD_KIND`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadChunkHandler;

impl EngineHandler for LoadChunkHandler {
    fn kind(&self) -> &'static str {
        LOAD_KIND
    }

    fn run(&self, pool: PgPool, job: Job, _ctx: StepContext) -> BoxFuture<'static, EngineResult> {
        Box::pin(async move {
            match apply_chunk(&pool, &job).await {
                Ok(()) => EngineResult::Settled,
                // Another worker owns the job now: nothing of this attempt was committed.
                Err(Error::Queue(queue::Error::LeaseLost { .. })) => EngineResult::Settled,
                Err(e @ Error::Corrupt(_)) => EngineResult::Step(Err(StepError::Fail {
                    reason: format!("apply load chunk: {e}"),
                })),
                // Deadlocks and lost connections included: the chunk is retried as a whole.
                Err(e) => EngineResult::Step(Err(StepError::Retry {
                    reason: format!("apply load chunk: {e}"),
                    after: None,
                })),
            }
        })
    }
}

#[derive(sqlx::FromRow)]
struct ChunkRow {
    idx: Vec<i32>,
    sku_ref: Vec<String>,
    location_ref: Vec<String>,
    qty: Vec<i64>,
    processed: bool,
}

/// Processes one chunk: decides per record against the positions' current quantities, upserts the changed
/// positions with one statement, fires their events, writes the results and the batch counts, and completes the
/// job — all in one transaction.
async fn apply_chunk(pool: &PgPool, job: &Job) -> Result<()> {
    let account = AccountId::parse(&job.account_id).map_err(|e| Error::Corrupt(e.to_string()))?;
    let batch_id = job.args.get("batch_id").and_then(|v| v.as_i64());
    let chunk = job.args.get("chunk").and_then(|v| v.as_i64());
    let (Some(batch_id), Some(chunk)) = (batch_id, chunk) else {
        return Err(Error::Corrupt(format!("malformed {LOAD_KIND} args: {}", job.args)));
    };
    // Outside the chunk's transaction: the batch row is written again at the end by every chunk, and holding its
    // lock for the whole chunk would serialise the chunks of a batch.
    sqlx::query(
        r#"
        update load_batch
        set status = 'running',
            started_at = now()
        where account_id = $1
          and id = $2
          and status = 'pending'
        "#,
    )
    .bind(account.as_str())
    .bind(batch_id)
    .execute(pool)
    .await?;

    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let row: Option<ChunkRow> = sqlx::query_as(
        r#"
        select idx, sku_ref, location_ref, qty, outcome is not null as processed
        from load_chunk
        where account_id = $1
          and batch_id = $2
          and chunk = $3
        "#,
    )
    .bind(account.as_str())
    .bind(batch_id)
    .bind(chunk as i32)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut row) = row.filter(|r| !r.processed) else {
        // Gone, or applied already: an applied chunk's job completed in the same transaction, so only a job
        // enqueued again by hand gets here.
        queue::complete_in(&mut tx, job.id, job.attempt, json!({"skipped": true})).await?;
        tx.commit().await?;
        return Ok(());
    };
    crate::crypt::prepare(account.as_str()).await?;
    let mut skus: Vec<Option<String>> = std::mem::take(&mut row.sku_ref).into_iter().map(Some).collect();
    let mut locs: Vec<Option<String>> = std::mem::take(&mut row.location_ref).into_iter().map(Some).collect();
    super::records::crypt_fields(
        account.as_str(),
        batch_id,
        chunk as i32,
        &row.idx,
        &mut [("sku_ref", &mut skus), ("location_ref", &mut locs)],
        true,
    )?;
    row.sku_ref = skus.into_iter().map(Option::unwrap_or_default).collect();
    row.location_ref = locs.into_iter().map(Option::unwrap_or_default).collect();
    let n = row.idx.len();
    if row.sku_ref.len() != n || row.location_ref.len() != n || row.qty.len() != n {
        return Err(Error::Corrupt(format!(
            "chunk {chunk} of batch {batch_id} has ragged arrays"
        )));
    }
    let keys: Vec<(&str, &str)> = row
        .sku_ref
        .iter()
        .zip(&row.location_ref)
        .map(|(s, l)| (s.as_str(), l.as_str()))
        .collect();
    let distinct: BTreeSet<(&str, &str)> = keys.iter().copied().collect();
    let (skus, locs): (Vec<&str>, Vec<&str>) = distinct.iter().copied().unzip();

    // Read without locks first: most records of a repeated load are unchanged, and locking (a write per row) only
    // the positions that may change keeps those cheap. An unchanged decision on an unlocked row is still a valid
    // order of events: this record applied just before a concurrent change of the same position.
    let mut current: HashMap<Key, i64> = bulk::positions_on_hand(&mut tx, &account, &skus, &locs, false)
        .await?
        .into_iter()
        .map(|(s, l, q)| ((s, l), q))
        .collect();
    let mut decision = decide(&keys, &row.qty, &row.idx, &current);
    if !decision.changes.is_empty() {
        let candidates: BTreeSet<(&str, &str)> = decision.changes.iter().map(|&(i, _, _)| keys[i]).collect();
        let (cs, cl): (Vec<&str>, Vec<&str>) = candidates.iter().copied().unzip();
        // Locked in key order; the values read under the lock are the ones the decision must use.
        let locked = bulk::positions_on_hand(&mut tx, &account, &cs, &cl, true).await?;
        for (s, l) in &candidates {
            current.remove(&((*s).to_owned(), (*l).to_owned()));
        }
        current.extend(locked.into_iter().map(|(s, l, q)| ((s, l), q)));
        decision = decide(&keys, &row.qty, &row.idx, &current);
    }
    // A position created by another load between the lock and this upsert is overwritten with this chunk's value
    // (a set, not an increment, so the final quantity is still one a serial order would give).
    let (ws, wl, wq): (Vec<&str>, Vec<&str>, Vec<i64>) = decision
        .writes
        .iter()
        .map(|((s, l), q)| (s.as_str(), l.as_str(), *q))
        .fold((Vec::new(), Vec::new(), Vec::new()), |mut acc, (s, l, q)| {
            acc.0.push(s);
            acc.1.push(l);
            acc.2.push(q);
            acc
        });
    bulk::set_on_hand(&mut tx, &account, &ws, &wl, &wq).await?;

    let changes: Vec<(&str, &str, serde_json::Value)> = decision
        .changes
        .iter()
        .map(|&(i, previous, on_hand)| {
            let (s, l) = keys[i];
            let attributes = json!({
                "sku_ref": s, "location_ref": l, "on_hand": on_hand, "previous_on_hand": previous,
                "load_batch_id": batch_id.to_string(), "index": row.idx[i],
            });
            (s, l, attributes)
        })
        .collect();
    // The events' key locks shared with the other chunks: a position's events come only from its partition's
    // chunks, which run one at a time, so no two chunks ever enqueue one key together. Held exclusively, the
    // locks of a chunk's ~1 000 keys covered nearly all 512 buckets, and the partitions' chunks took turns.
    let events = bulk::position_events(&mut tx, &account, &changes, KeyLocks::Shared).await?;

    let outcomes: Vec<&str> = decision.outcomes.iter().map(|o| o.as_str()).collect();
    let messages: Vec<Option<&str>> = vec![None; n];
    sqlx::query(
        r#"
        update load_chunk
        set outcome = $4,
            message = $5
        where account_id = $1
          and batch_id = $2
          and chunk = $3
        "#,
    )
    .bind(account.as_str())
    .bind(batch_id)
    .bind(chunk as i32)
    .bind(&outcomes)
    .bind(&messages)
    .execute(&mut *tx)
    .await?;
    let changed = decision.outcomes.iter().filter(|o| **o == Outcome::Changed).count() as i32;
    let unchanged = n as i32 - changed;
    // Last before the commit: the batch row is shared by the batch's chunks, so its lock is held only briefly.
    sqlx::query(
        r#"
        update load_batch
        set unchanged = unchanged + $3,
            changed = changed + $4,
            chunks_done = chunks_done + 1,
            status = case when chunks_done + 1 = chunks then 'complete' else 'running' end,
            started_at = coalesce(started_at, now()),
            completed_at = case when chunks_done + 1 = chunks then now() end
        where account_id = $1
          and id = $2
        "#,
    )
    .bind(account.as_str())
    .bind(batch_id)
    .bind(unchanged)
    .bind(changed)
    .execute(&mut *tx)
    .await?;
    let result = json!({"changed": changed, "unchanged": unchanged, "events": events});
    queue::complete_in(&mut tx, job.id, job.attempt, result).await?;
    tx.commit().await?;
    tracing::debug!(
        batch_id,
        chunk,
        records = n,
        changed,
        events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "applied a load chunk"
    );
    Ok(())
}
