//! `ordo bench --steady-rate`: a fixed-rate load instead of a drain, sampled minute by minute (claim time, dead
//! tuples, sizes), optionally with a snapshot held open for the whole load.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::{
    max_rss_mib, round, spawn_workers, statement_stats, stop_workers, wait_for_workers, BenchArgs, Error, Summary,
};
use crate::queue::{NewJob, Queue};
use crate::tenancy::AccountId;

/// One minute of a steady load.
#[derive(Debug, Clone, Serialize)]
pub struct SteadyMinute {
    /// Minutes since the start of the load (1 = the first).
    pub minute: u64,
    /// Jobs enqueued in that minute.
    pub enqueued: usize,
    /// Claim statements run in that minute.
    pub claims: i64,
    /// Their mean time, in milliseconds.
    pub claim_mean_ms: f64,
    /// The slowest of them, in milliseconds.
    pub claim_max_ms: f64,
    /// Dead row versions in `job` at the end of the minute.
    pub dead_tuples: i64,
    /// Live rows in `job` at the end of the minute.
    pub live_tuples: i64,
    /// Heap size of `job`, in bytes.
    pub table_bytes: i64,
    /// Size of its indexes, in bytes.
    pub index_bytes: i64,
}

/// `--steady-rate`: enqueue at a fixed rate while the workers run the jobs, sample every minute, then let the
/// queue drain and report.
pub(super) async fn run(
    args: &BenchArgs,
    url: &str,
    pool: &PgPool,
    q: &Queue,
    account: &AccountId,
) -> Result<Summary, Error> {
    let mut children = spawn_workers(args, url)?;
    wait_for_workers(pool, args.workers).await?;
    let _ = sqlx::query("create extension if not exists pg_stat_statements")
        .execute(pool)
        .await;
    // A transaction holding a snapshot for the whole run: no row version dead after it began can be vacuumed.
    let mut pin = if args.pin_xmin {
        let mut conn = crate::db::connect(url, 1).await?.acquire().await?.detach();
        sqlx::query("begin isolation level repeatable read")
            .execute(&mut conn)
            .await?;
        sqlx::query("select count(*) from job").execute(&mut conn).await?;
        Some(conn)
    } else {
        None
    };
    let pad = "x".repeat(40);
    let per_tick = (args.steady_rate / 10).max(1);
    let started = Instant::now();
    let run_for = Duration::from_secs(args.steady_secs.max(1));
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut minutes = Vec::new();
    let (mut total, mut this_minute, mut next_sample) = (0usize, 0usize, Duration::from_secs(60));
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(pool).await;
    while started.elapsed() < run_for {
        ticks.tick().await;
        let jobs: Vec<NewJob> = (total..total + per_tick)
            .map(|k| NewJob::new("noop", serde_json::json!({"id": k, "pad": pad})))
            .collect();
        q.enqueue_many(account, jobs).await?;
        total += per_tick;
        this_minute += per_tick;
        if started.elapsed() >= next_sample {
            minutes.push(sample_minute(pool, minutes.len() as u64 + 1, this_minute).await?);
            this_minute = 0;
            next_sample += Duration::from_secs(60);
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    // The figures at the end of the load, while the snapshot is still held; then let the queue drain.
    let last = sample_minute(pool, minutes.len() as u64 + 1, this_minute).await?;
    if let Some(mut conn) = pin.take() {
        let _ = sqlx::query("rollback").execute(&mut conn).await;
    }
    let limit = Duration::from_secs(600);
    let drain_started = Instant::now();
    loop {
        // Through the partial indexes of waiting and running jobs: never a scan of the whole table.
        let left: bool = sqlx::query_scalar(
            r#"
            select exists (select 1 from job
                           where state in ('available', 'scheduled', 'retryable')
                              or (state = 'parked' and concurrency_key is not null))
                or exists (select 1 from job where leased_until is not null)
            "#,
        )
        .fetch_one(pool)
        .await?;
        if !left || drain_started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let worker_max_rss_mib = max_rss_mib(&children);
    stop_workers(&mut children).await;
    let (dead_tuples, index_bytes, table_bytes) = (last.dead_tuples, last.index_bytes, last.table_bytes);
    minutes.push(last);
    Ok(Summary {
        jobs: total,
        enqueue_per_s: round(total as f64 / load_secs),
        drain_per_s: round(total as f64 / (load_secs + drain_started.elapsed().as_secs_f64())),
        statements: statement_stats(pool).await,
        batch: per_tick,
        backlog: 0,
        keys: 0,
        hot_key: 0,
        worker_max_rss_mib,
        dead_tuples,
        index_bytes,
        table_bytes,
        steady: minutes,
        ..Summary::of(args)
    })
}

/// The figures of one minute of a steady load; resets the statement statistics for the next.
async fn sample_minute(pool: &PgPool, minute: u64, enqueued: usize) -> Result<SteadyMinute, Error> {
    let (claims, claim_mean_ms, claim_max_ms): (i64, f64, f64) = sqlx::query_as(
        r#"
        select coalesce(sum(calls), 0)::bigint,
               coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8,
               coalesce(max(max_exec_time), 0)::float8
        from pg_stat_statements
        where query like '%with unit as%'
        "#,
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0.0, 0.0));
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(pool).await;
    let (dead_tuples, live_tuples, table_bytes, index_bytes): (i64, i64, i64, i64) = sqlx::query_as(
        r#"
        select n_dead_tup, n_live_tup, pg_table_size('job'), pg_indexes_size('job')
        from pg_stat_user_tables
        where relname = 'job'
        "#,
    )
    .fetch_one(pool)
    .await?;
    Ok(SteadyMinute {
        minute,
        enqueued,
        claims,
        claim_mean_ms: (claim_mean_ms * 1000.0).round() / 1000.0,
        claim_max_ms: (claim_max_ms * 1000.0).round() / 1000.0,
        dead_tuples,
        live_tuples,
        table_bytes,
        index_bytes,
    })
}
