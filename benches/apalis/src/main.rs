//! Drains N no-op tasks through an apalis worker (`WorkerBuilder`) on ordo (`apalis-ordo`) or on apalis's own
//! PostgreSQL backend (`apalis-postgres`), in a scratch database on the given server, and prints one JSON line:
//! `{backend, jobs, enqueue_per_s, drain_per_s}`. The method is BENCH.md's: 100 000 jobs of about 60 bytes
//! (`{"id": i, "pad": "<40 characters>"}`), enqueued 1 000 per transaction, `ANALYZE` and `CHECKPOINT`, then the
//! drain from a full queue until the last completion is committed, on the database's clock.

use std::time::{Duration, Instant};

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// apalis-ordo.
    Ordo,
    /// apalis-postgres.
    Postgres,
}

/// Drain N no-op tasks through an apalis worker.
#[derive(Parser)]
struct Args {
    /// The backend.
    backend: Which,
    /// A server URL (any database on it): the run uses a scratch database, dropped after.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Tasks.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// apalis-ordo: jobs held at once. apalis-postgres: the fetch batch size.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Run each task as a Tokio task of its own (apalis's `parallelize(tokio::spawn)`), over every core, instead
    /// of as a future of the worker's one task.
    #[arg(long)]
    parallel: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    id: usize,
    pad: String,
}

async fn noop(_: Noop) -> Result<(), BoxDynError> {
    Ok(())
}

fn tasks(from: usize, to: usize) -> Vec<Noop> {
    (from..to)
        .map(|id| Noop {
            id,
            pad: "x".repeat(40),
        })
        .collect()
}

/// The URL of database `db` on the server of `url`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Polls every 250 ms (slow on purpose: no CPU taken from the drain) until `left` says nothing is left.
async fn wait_until_drained(pool: &sqlx::PgPool, left: &str) -> Result<(), BoxDynError> {
    let limit = Instant::now() + Duration::from_secs(1800);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let any: bool = sqlx::query_scalar(left).fetch_one(pool).await?;
        if !any {
            return Ok(());
        }
        if Instant::now() > limit {
            return Err("the drain did not finish within 30 minutes".into());
        }
    }
}

/// Stops the worker and waits for it.
async fn finish(
    ctx: &WorkerContext,
    handle: tokio::task::JoinHandle<Result<(), apalis_core::error::WorkerError>>,
) -> Result<(), BoxDynError> {
    ctx.stop()?;
    handle.await??;
    Ok(())
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(1) as f64 / 1e6
}

async fn now(pool: &sqlx::PgPool) -> Result<DateTime<Utc>, BoxDynError> {
    Ok(sqlx::query_scalar("select now()").fetch_one(pool).await?)
}

/// Enqueue and drain seconds on apalis-ordo.
async fn ordo_run(url: &str, args: &Args) -> Result<(f64, f64), BoxDynError> {
    use ordo::queue::{self, NewJob};
    let pool = ordo::db::connect(url, 20).await?;
    ordo::db::migrate(&pool).await?;
    let account = ordo::tenancy::AccountId::default_account();
    // The worker starts against a paused queue: the drain is timed from a full queue, not from start-up.
    queue::pause(&pool, &account, "default").await?;
    let q = queue::Queue::new(pool.clone(), ordo::wake::Waker::disabled());
    let started = Instant::now();
    for from in (0..args.jobs).step_by(1000) {
        let jobs: Vec<NewJob> = tasks(from, (from + 1000).min(args.jobs))
            .into_iter()
            .map(|t| NewJob::new("bench.noop", serde_json::to_value(t).unwrap_or_default()))
            .collect();
        q.enqueue_many(&account, jobs).await?;
    }
    let enqueue = started.elapsed().as_secs_f64();
    sqlx::query("analyze job").execute(&pool).await?;
    sqlx::query("checkpoint").execute(&pool).await?;

    let config = apalis_ordo::Config::new("bench.noop")
        .held(args.batch)
        .poll(Duration::from_millis(100));
    let backend: apalis_ordo::OrdoBackend<Noop> = apalis_ordo::OrdoBackend::new(pool.clone(), config);
    let ctx = WorkerContext::new("bench");
    let builder = WorkerBuilder::new(&ctx).backend(backend);
    let handle = if args.parallel {
        tokio::spawn(builder.parallelize(tokio::spawn).build(noop).run())
    } else {
        tokio::spawn(builder.build(noop).run())
    };
    while queue::live_workers(&pool, Duration::from_secs(30)).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queue::resume(&pool, &account, "default").await?;
    let resumed = now(&pool).await?;
    wait_until_drained(&pool, "select exists (select 1 from job where queue = 'default')").await?;
    let last: DateTime<Utc> = sqlx::query_scalar("select max(finished_at) from job_history")
        .fetch_one(&pool)
        .await?;
    finish(&ctx, handle).await?;
    pool.close().await;
    Ok((enqueue, seconds(resumed, last)))
}

/// Enqueue and drain seconds on apalis-postgres.
async fn postgres_run(url: &str, args: &Args) -> Result<(f64, f64), BoxDynError> {
    use apalis_postgres::{Config, PostgresStorage};
    let apalis_pool = apalis_postgres::PgPool::connect(url).await?;
    PostgresStorage::setup(&apalis_pool).await?;
    let config = Config::default().queue("bench").batch_size(args.batch);
    let mut storage: PostgresStorage<Noop> = PostgresStorage::new(&apalis_pool).with_config(config);
    let started = Instant::now();
    for from in (0..args.jobs).step_by(1000) {
        storage.push_bulk(tasks(from, (from + 1000).min(args.jobs))).await?;
    }
    let enqueue = started.elapsed().as_secs_f64();
    // The timing queries go through ordo's sqlx (0.8): apalis-postgres brings its own (0.9).
    let pool = sqlx::PgPool::connect(url).await?;
    sqlx::query("analyze apalis.jobs").execute(&pool).await?;
    sqlx::query("checkpoint").execute(&pool).await?;

    let ctx = WorkerContext::new("bench");
    let worker = WorkerBuilder::new(&ctx).backend(storage).build(noop);
    // No pause in apalis-postgres: the clock starts as the worker does, so its start-up counts (a few ms).
    let resumed = now(&pool).await?;
    let handle = tokio::spawn(worker.run());
    wait_until_drained(
        &pool,
        "select exists (select 1 from apalis.jobs where job_type = 'bench' and status <> 'Done')",
    )
    .await?;
    let last: DateTime<Utc> = sqlx::query_scalar("select max(done_at) from apalis.jobs where job_type = 'bench'")
        .fetch_one(&pool)
        .await?;
    finish(&ctx, handle).await?;
    pool.close().await;
    apalis_pool.close().await;
    Ok((enqueue, seconds(resumed, last)))
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let args = Args::parse();
    let admin = sqlx::PgPool::connect(&args.database_url).await?;
    let scratch = format!("apalis_drain_{}", std::process::id());
    sqlx::query(&format!("create database \"{scratch}\""))
        .execute(&admin)
        .await?;
    let url = with_database(&args.database_url, &scratch);
    let (name, out) = match args.backend {
        Which::Ordo => ("apalis-ordo", ordo_run(&url, &args).await),
        Which::Postgres => ("apalis-postgres", postgres_run(&url, &args).await),
    };
    let _ = sqlx::query(&format!("drop database if exists \"{scratch}\" with (force)"))
        .execute(&admin)
        .await;
    let (enqueue, drain) = out?;
    let jobs = args.jobs as f64;
    println!(
        "{}",
        serde_json::json!({
            "backend": name,
            "jobs": args.jobs,
            "batch": args.batch,
            "enqueue_per_s": (jobs / enqueue).round(),
            "drain_per_s": (jobs / drain).round(),
        })
    );
    Ok(())
}
