//! `ordo bench --tenants N`: fair share under a backlog. The default account holds a backlog of `--jobs` jobs
//! while N other accounts each enqueue `--tenant-jobs` jobs at an even pace over `--tenant-secs`; reports the drain
//! rate over that window and how long the other accounts' jobs waited to start (enqueue → claim).

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use serde::Serialize;
use sqlx::PgPool;

use super::{
    max_rss_mib, round, spawn_workers, statement_stats, stop_workers, wait_for_workers, BenchArgs, Error, Latency,
    Summary,
};
use crate::queue::{self, NewJob};
use crate::tenancy::{self, AccountId};

/// The figures of a `--tenants` run.
#[derive(Debug, Clone, Serialize)]
pub struct TenantFigures {
    /// Accounts enqueuing beside the backlog.
    pub accounts: usize,
    /// Jobs each of them enqueued.
    pub jobs_each: usize,
    /// Over how many seconds.
    pub secs: u64,
    /// Jobs of every account finished per second while they enqueued.
    pub drain_per_s: f64,
    /// Their jobs' wait from enqueue to claim, in milliseconds.
    pub start_delay_ms: Latency,
    /// Jobs of the backlog left when the last of theirs had started.
    pub backlog_left: i64,
}

/// Runs the scenario: backlog first, then the workers, then the paced enqueues of the other accounts.
pub(super) async fn run(args: &BenchArgs, url: &str, pool: &PgPool, account: &AccountId) -> Result<Summary, Error> {
    let pad = "x".repeat(40);
    let started = Instant::now();
    // The backlog is the default account's (the bench's `account`), like `--backlog`'s.
    super::enqueue_backlog(pool, args.jobs).await?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    let mut tenants = Vec::with_capacity(args.tenants);
    for t in 0..args.tenants {
        let id = AccountId::parse(&format!("tenant-{t}")).map_err(|e| Error::Invalid(e.to_string()))?;
        tenancy::create_account(pool, &id, id.as_str(), "local")
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        tenants.push(id);
    }
    sqlx::query("analyze job").execute(pool).await?;
    sqlx::query("checkpoint").execute(pool).await?;
    let mut children = spawn_workers(args, url)?;
    wait_for_workers(pool, args.workers).await?;
    let _ = sqlx::query("create extension if not exists pg_stat_statements")
        .execute(pool)
        .await;
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(pool).await;

    // Every 100 ms each account enqueues its share of the tick, all accounts at once (one transaction each).
    let secs = args.tenant_secs.max(1);
    let ticks = secs * 10;
    let per_tick = args.tenant_jobs.div_ceil(ticks as usize).max(1);
    let window_start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0usize;
    for _ in 0..ticks {
        tick.tick().await;
        let n = per_tick.min(args.tenant_jobs - sent);
        if n == 0 {
            break;
        }
        try_join_all(tenants.iter().map(|t| {
            let jobs: Vec<NewJob> = (0..n)
                .map(|k| NewJob::new("noop", serde_json::json!({"id": sent + k, "pad": pad})))
                .collect();
            async move {
                let mut tx = pool.begin().await?;
                queue::enqueue_many(&mut tx, t, &jobs).await?;
                tx.commit().await?;
                Ok::<_, Error>(())
            }
        }))
        .await?;
        sent += n;
    }
    // Until every job of the other accounts has started.
    let limit = Instant::now() + Duration::from_secs(600);
    loop {
        // The other accounts are named `tenant-…`, after `default`: a range of the claim index, not a scan of the
        // backlog.
        let waiting: bool = sqlx::query_scalar(
            "select exists (select 1 from job where queue = 'default' and account_id > $1
                                                and state in ('available', 'scheduled', 'retryable'))",
        )
        .bind(account.as_str())
        .fetch_one(pool)
        .await?;
        if !waiting {
            break;
        }
        if Instant::now() > limit {
            stop_workers(&mut children).await;
            return Err(Error::Stalled(Duration::from_secs(600)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog_left: i64 = sqlx::query_scalar(
        "select count(*) from job where queue = 'default' and account_id = $1
                                    and state in ('available', 'scheduled', 'retryable')",
    )
    .bind(account.as_str())
    .fetch_one(pool)
    .await?;
    let window_end: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let (p50, p99, finished): (f64, f64, i64) = sqlx::query_as(
        r#"
        select percentile_cont(0.5) within group (order by d),
               percentile_cont(0.99) within group (order by d),
               (select count(*) from job_all where finished_at between $2 and $3)
        from (select extract(epoch from started_at - created_at) * 1000 as d
              from job_all
              where account_id <> $1 and started_at is not null) s
        "#,
    )
    .bind(account.as_str())
    .bind(window_start)
    .bind(window_end)
    .fetch_one(pool)
    .await?;
    let window_secs = ((window_end - window_start).num_microseconds().unwrap_or(1) as f64 / 1e6).max(1e-6);
    let statements = statement_stats(pool).await;
    let worker_max_rss_mib = max_rss_mib(&children);
    stop_workers(&mut children).await;
    let (dead_tuples, index_bytes, table_bytes): (i64, i64, i64) = sqlx::query_as(
        "select n_dead_tup, pg_indexes_size('job'), pg_table_size('job') from pg_stat_user_tables where relname = 'job'",
    )
    .fetch_one(pool)
    .await?;
    Ok(Summary {
        enqueue_per_s: round(args.jobs as f64 / enqueue_secs),
        drain_per_s: round(finished as f64 / window_secs),
        statements,
        backlog: args.jobs,
        worker_max_rss_mib,
        dead_tuples,
        index_bytes,
        table_bytes,
        tenants: Some(TenantFigures {
            accounts: args.tenants,
            jobs_each: sent,
            secs,
            drain_per_s: round(finished as f64 / window_secs),
            start_delay_ms: Latency {
                p50: (p50 * 100.0).round() / 100.0,
                p99: (p99 * 100.0).round() / 100.0,
            },
            backlog_left,
        }),
        ..Summary::of(args)
    })
}
