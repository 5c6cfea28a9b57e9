//! `ordo bench`: enqueue N no-op jobs, drain them with W worker processes, then measure enqueue→start latency at
//! low load. Never touches real jobs: it works in a scratch database (dropped after) or a private server.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod scrape;
mod steady;
mod tenants;
mod upgrade;
mod workers;

pub use steady::{Relation, SteadySample};
pub use upgrade::{AppliedMigration, UpgradeFigures};

use crate::queue::{self, NewJob, Queue};
use crate::tenancy::AccountId;
use crate::wake::Waker;
use workers::{max_rss_mib, spawn_workers, stop_workers, wait_for_workers};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Database set-up or query failure.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// Queue failure.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// SQL failure.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// Private server failure.
    #[error(transparent)]
    Server(#[from] crate::pgserver::Error),
    /// Spawning workers failed.
    #[error("failed to start worker processes: {0}")]
    Spawn(std::io::Error),
    /// Workers did not drain the queue in time.
    #[error("the queue was not drained within {0:?}")]
    Stalled(Duration),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// Writing the CSV output failed.
    #[error("failed to write the CSV output: {0}")]
    Output(std::io::Error),
    /// Stopped by SIGTERM or SIGINT (workers, scratch database and private server cleaned up).
    #[error("interrupted")]
    Interrupted,
}

/// `ordo bench` flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Jobs to enqueue and drain.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Jobs each worker claims ahead of its free slots (default: the worker's, its concurrency).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Jobs per enqueue transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Latency samples (one job at a time on an idle worker); 0 skips the latency run.
    #[arg(long, default_value_t = 1000)]
    pub latency_samples: usize,
    /// Finished jobs to churn through before the measured run (table growth scenario).
    #[arg(long, default_value_t = 0)]
    pub preload_finished: usize,
    /// Waiting jobs behind the measured ones (backlog scenario): the drain is timed until the measured jobs are
    /// done, with this many still queued behind them.
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// Spread the measured jobs over this many concurrency keys (job i gets key `k<i mod K>`); 0 = no keys.
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Enqueue this many jobs of one concurrency key (`hot`) before the measured ones, at the same priority: the
    /// drain of the other jobs is timed as usual, and the hot key's serial rate is reported.
    #[arg(long, default_value_t = 0)]
    pub hot_key: usize,
    /// Steady load instead of a drain: enqueue this many jobs per second (in batches every 100 ms) while the workers
    /// run them, for `--steady-secs`, sampling throughput, start delay, claim time, dead tuples and sizes every `--sample-secs`; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub steady_rate: usize,
    /// Length of the steady load in seconds.
    #[arg(long, default_value_t = 600)]
    pub steady_secs: u64,
    /// Seconds between two samples of the steady load.
    #[arg(long, default_value_t = 60)]
    pub sample_secs: u64,
    /// Write the steady load's samples to this CSV file as they are taken, and every queue table's and index's
    /// dead tuples and size to a sibling `*-relations.csv`.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// During the steady load, hold a transaction with a snapshot open (pinning the xmin horizon, as a long report
    /// or a forgotten session does): vacuum can then remove none of the row versions the load leaves behind.
    #[arg(long)]
    pub pin_xmin: bool,
    /// Fair share under a backlog: `--jobs` becomes the default account's backlog, and this many other accounts
    /// enqueue `--tenant-jobs` jobs each, evenly over `--tenant-secs`, while the workers drain; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub tenants: usize,
    /// Jobs each of the `--tenants` accounts enqueues.
    #[arg(long, default_value_t = 1000)]
    pub tenant_jobs: usize,
    /// Seconds over which the `--tenants` accounts enqueue.
    #[arg(long, default_value_t = 10)]
    pub tenant_secs: u64,
    /// Upgrade under load: this previous release of ordo creates the schema and its workers drain `--backlog`
    /// jobs while this binary's migrations are applied; reports the longest pause of the drain.
    #[arg(long)]
    pub upgrade_from: Option<std::path::PathBuf>,
    /// Print one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// PostgreSQL server to create the scratch database on; a private server when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis for wake-ups; workers poll when unset.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Master keys: with them the benchmark's jobs are sealed at rest (enqueue here, workers open and seal).
    #[arg(long, env = "ORDO_MASTER_KEYS", hide_env_values = true)]
    pub master_keys: Option<crate::crypt::MasterKeys>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Jobs drained.
    pub jobs: usize,
    /// Enqueue rate (one client, `batch` jobs per transaction).
    pub enqueue_per_s: f64,
    /// Drain rate from a full queue until the last completion committed.
    pub drain_per_s: f64,
    /// Enqueue commit → handler start at low load.
    pub latency_ms: Option<Latency>,
    /// The busiest statements of the latency run, planning time included: what one wake-up costs the database.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_statements: Vec<StatementStat>,
    /// Mean time of one claim statement during the drain, in milliseconds.
    pub claim_ms: Option<f64>,
    /// The busiest statements of the drain (calls, rows, total and mean ms), when pg_stat_statements is loaded.
    pub statements: Vec<StatementStat>,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency per worker.
    pub concurrency: usize,
    /// Jobs each worker claims ahead of its free slots (`None`: the worker's default, its concurrency).
    pub prefetch: Option<usize>,
    /// Jobs per enqueue transaction.
    pub batch: usize,
    /// Finished jobs in the table before the run.
    pub preloaded_finished: usize,
    /// Jobs still waiting behind the measured ones.
    pub backlog: usize,
    /// Concurrency keys the measured jobs were spread over (0 = none).
    pub keys: usize,
    /// Jobs of the hot key enqueued alongside (0 = none).
    pub hot_key: usize,
    /// The hot key's serial rate: its jobs completed per second from the start of the drain to its last
    /// completion (at most 60 s are waited for).
    pub hot_key_per_s: Option<f64>,
    /// Peak resident memory of the largest worker process, in MiB.
    pub worker_max_rss_mib: f64,
    /// `redis` or `poll`.
    pub wakeups: &'static str,
    /// Dead tuples in `job` after the drain.
    pub dead_tuples: i64,
    /// Size of the table's indexes after the drain, in bytes.
    pub index_bytes: i64,
    /// Size of the table itself (heap) after the run, in bytes.
    pub table_bytes: i64,
    /// The samples of a steady load (`--steady-rate`), empty otherwise.
    pub steady: Vec<SteadySample>,
    /// Figures of the fair-share scenario (`--tenants`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<tenants::TenantFigures>,
    /// Figures of the upgrade scenario (`--upgrade-from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeFigures>,
}

impl Summary {
    /// The run's settings as `args` gave them, and no figures yet: each scenario fills in its own.
    fn of(args: &BenchArgs) -> Summary {
        Summary {
            jobs: args.jobs,
            enqueue_per_s: 0.0,
            drain_per_s: 0.0,
            latency_ms: None,
            latency_statements: Vec::new(),
            claim_ms: None,
            statements: Vec::new(),
            workers: args.workers,
            concurrency: args.concurrency,
            prefetch: args.prefetch,
            batch: args.batch,
            preloaded_finished: args.preload_finished,
            backlog: args.backlog,
            keys: args.keys,
            hot_key: args.hot_key,
            hot_key_per_s: None,
            worker_max_rss_mib: 0.0,
            wakeups: if args.redis_url.is_some() { "redis" } else { "poll" },
            dead_tuples: 0,
            index_bytes: 0,
            table_bytes: 0,
            steady: Vec::new(),
            tenants: None,
            upgrade: None,
        }
    }
}

/// Settings of the private benchmark server (BENCH.md): durable defaults, a larger cache and WAL.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "15min"),
    ("max_connections", "200"),
    ("autovacuum", "on"),
    // Per-statement timings (claim and settle times in the summary); its overhead is a few percent at most.
    ("shared_preload_libraries", "pg_stat_statements"),
];

/// Runs the benchmark.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> Result<Summary, Error> {
    if args.jobs == 0 || args.batch == 0 || args.workers == 0 || args.concurrency == 0 {
        return Err(Error::Invalid(
            "--jobs, --batch, --workers and --concurrency must be positive".into(),
        ));
    }
    let mut private = None;
    let admin_url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("ordo-bench-{}", std::process::id()));
            let port = crate::pgserver::free_port()?;
            let server = crate::pgserver::PgServer::start(&dir, port, SERVER_SETTINGS)?;
            let url = server.url("postgres");
            private = Some((server, dir));
            url
        }
    };
    let scratch = format!("ordo_bench_{:08x}", rand::random::<u32>());
    let admin = crate::db::connect(&admin_url, 2).await?;
    sqlx::query(&format!("create database \"{scratch}\""))
        .execute(&admin)
        .await?;
    let url = replace_database(&admin_url, &scratch);
    // Interrupted, the measurement is dropped: its worker processes are killed with it (kill_on_drop), and the
    // scratch database and private server go below as after any run.
    let result = tokio::select! {
        r = measure(&args, &url, private.is_some()) => r,
        _ = shutdown.cancelled() => Err(Error::Interrupted),
    };
    let _ = sqlx::query(&format!("drop database if exists \"{scratch}\" with (force)"))
        .execute(&admin)
        .await;
    admin.close().await;
    if let Some((server, dir)) = private {
        let _ = server.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// `private`: the server is the benchmark's own, so its settings may be changed for a phase.
async fn measure(args: &BenchArgs, url: &str, private: bool) -> Result<Summary, Error> {
    // The `--tenants` accounts enqueue all at once, a connection each would be too many: 16 share the work.
    let pool = crate::db::connect(url, if args.tenants > 0 { 16 } else { 4 }).await?;
    if let Some(old) = &args.upgrade_from {
        let out = upgrade::run(args, old, url, &pool).await;
        pool.close().await;
        return out;
    }
    crate::db::migrate(&pool).await?;
    if args.master_keys.is_some() {
        crate::crypt::install(args.master_keys.clone(), &pool);
    }
    let account = AccountId::default_account();
    let shutdown = CancellationToken::new();
    let waker = match &args.redis_url {
        Some(r) => Waker::start(r, &scratch_name(&pool).await?, shutdown.clone()).unwrap_or_else(|_| Waker::disabled()),
        None => Waker::disabled(),
    };
    let q = Queue::new(pool.clone(), waker.clone());

    if args.preload_finished > 0 {
        preload_finished(&pool, args.preload_finished).await?;
    }
    if args.tenants > 0 {
        let out = tenants::run(args, url, &pool, &account).await;
        shutdown.cancel();
        pool.close().await;
        return out;
    }
    if args.steady_rate > 0 {
        let out = steady::run(args, url, &pool, &q, &account).await;
        shutdown.cancel();
        pool.close().await;
        return out;
    }

    // Workers start against a paused queue, so the drain is timed from a full queue, not from process start-up.
    queue::pause(&pool, &account, "default").await?;
    let mut children = spawn_workers(args, url)?;
    wait_for_workers(&pool, args.workers).await?;

    let pad = "x".repeat(40);
    if args.backlog > 0 {
        enqueue_backlog(&pool, args.backlog).await?;
    }
    let mut i = 0usize;
    while i < args.hot_key {
        let n = args.batch.min(args.hot_key - i);
        let jobs: Vec<NewJob> = (i..i + n)
            .map(|k| {
                NewJob::new("noop", serde_json::json!({"id": k, "pad": pad}))
                    .priority(0)
                    .concurrency_key(HOT_KEY)
            })
            .collect();
        q.enqueue_many(&account, jobs).await?;
        i += n;
    }
    let started = Instant::now();
    let mut i = 0usize;
    while i < args.jobs {
        let n = args.batch.min(args.jobs - i);
        let jobs: Vec<NewJob> = (i..i + n)
            .map(|k| {
                let job = NewJob::new("noop", serde_json::json!({"id": k, "pad": pad})).priority(0);
                if args.keys > 0 {
                    job.concurrency_key(format!("k{}", k % args.keys))
                } else {
                    job
                }
            })
            .collect();
        q.enqueue_many(&account, jobs).await?;
        i += n;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    sqlx::query("analyze job").execute(&pool).await?;
    sqlx::query("checkpoint").execute(&pool).await?;

    // Statement timings when the server has pg_stat_statements loaded (the private server does).
    let _ = sqlx::query("create extension if not exists pg_stat_statements")
        .execute(&pool)
        .await;
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(&pool).await;
    let calls_before = claim_stats(&pool).await;
    queue::resume(&pool, &account, "default").await?;
    waker.wake("default");
    // Timed by the database's own clock: from just after the resume committed to the last completion. The poll
    // that notices the end is slow on purpose, so it takes no CPU from the drain.
    let resumed: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()").fetch_one(&pool).await?;
    let started = Instant::now();
    let limit = Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The measured jobs have priority 0; the backlog (if any) waits behind them at priority 5, and the hot
        // key's jobs are timed on their own.
        let left: bool = sqlx::query_scalar(
            r#"
            select exists (select 1 from job
                           where (state in ('available', 'scheduled', 'retryable')
                                  or (state = 'parked' and concurrency_key is not null))
                             and queue = 'default'
                             and priority = 0
                             and concurrency_key is distinct from $1)
                or exists (select 1 from job where leased_until is not null and priority = 0
                                                 and concurrency_key is distinct from $1)
            "#,
        )
        .bind(HOT_KEY)
        .fetch_one(&pool)
        .await?;
        if !left {
            break;
        }
        if started.elapsed() > limit {
            stop_workers(&mut children).await;
            return Err(Error::Stalled(limit));
        }
    }
    let last: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select max(finished_at) from job_history where concurrency_key is distinct from $1")
            .bind(HOT_KEY)
            .fetch_one(&pool)
            .await?;
    let drain_secs = ((last - resumed).num_microseconds().unwrap_or(1) as f64 / 1e6).max(1e-6);
    let hot_key_per_s = if args.hot_key > 0 {
        Some(hot_key_rate(&pool, resumed, args.hot_key).await?)
    } else {
        None
    };
    let claim_ms = match (calls_before, claim_stats(&pool).await) {
        (Some((c0, t0)), Some((c1, t1))) if c1 > c0 => Some((t1 - t0) / (c1 - c0) as f64),
        _ => None,
    };
    let statements = statement_stats(&pool).await;
    let (dead_tuples, index_bytes, table_bytes): (i64, i64, i64) = sqlx::query_as(
        "select n_dead_tup, pg_indexes_size('job'), pg_table_size('job') from pg_stat_user_tables where relname = 'job'",
    )
    .fetch_one(&pool)
    .await?;

    // A backlog keeps the workers busy, so enqueue→start latency is only measured without one.
    let (latency, latency_statements) = if args.latency_samples > 0 && args.backlog == 0 {
        // Planning counts on this path: every claim statement is planned anew (see queue::claim). A server of
        // the user's keeps its settings.
        if private {
            track_planning(&pool, true).await;
        }
        let _ = sqlx::query("select pg_stat_statements_reset()").execute(&pool).await;
        let latency = measure_latency(&q, &account, args.latency_samples).await?;
        let statements = statement_stats(&pool).await;
        if private {
            track_planning(&pool, false).await;
        }
        (Some(latency), statements)
    } else {
        (None, Vec::new())
    };
    let worker_max_rss_mib = max_rss_mib(&children);
    stop_workers(&mut children).await;
    shutdown.cancel();
    pool.close().await;
    Ok(Summary {
        enqueue_per_s: round(args.jobs as f64 / enqueue_secs),
        drain_per_s: round(args.jobs as f64 / drain_secs),
        latency_ms: latency,
        latency_statements,
        claim_ms: claim_ms.map(|m| (m * 1000.0).round() / 1000.0),
        statements,
        hot_key_per_s,
        worker_max_rss_mib,
        dead_tuples,
        index_bytes,
        table_bytes,
        ..Summary::of(args)
    })
}

/// The concurrency key of `--hot-key`.
const HOT_KEY: &str = "hot";

/// Waits (up to 60 s after the drain started) for the hot key's jobs, then returns how many completed per second
/// from `resumed` to the last of them.
async fn hot_key_rate(pool: &PgPool, resumed: chrono::DateTime<chrono::Utc>, n: usize) -> Result<f64, Error> {
    let deadline = resumed + chrono::Duration::seconds(60);
    loop {
        let (done, last, now): (
            i64,
            Option<chrono::DateTime<chrono::Utc>>,
            chrono::DateTime<chrono::Utc>,
        ) = sqlx::query_as(
            "select count(*), max(finished_at), now() from job_history where concurrency_key = $1 and state = 'completed'",
        )
        .bind(HOT_KEY)
        .fetch_one(pool)
        .await?;
        if done as usize >= n || now > deadline {
            let secs = last
                .map(|l| (l - resumed).num_microseconds().unwrap_or(1) as f64 / 1e6)
                .unwrap_or(1.0)
                .max(1e-6);
            return Ok(round(done as f64 / secs));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn round(x: f64) -> f64 {
    x.round()
}

async fn scratch_name(pool: &PgPool) -> Result<String, Error> {
    Ok(sqlx::query_scalar("select current_database()").fetch_one(pool).await?)
}

/// Claim statement count and total time (ms), when pg_stat_statements is available; otherwise none.
async fn claim_stats(pool: &PgPool) -> Option<(i64, f64)> {
    sqlx::query_as::<_, (i64, f64)>(
        "select coalesce(sum(calls), 0)::bigint, coalesce(sum(total_exec_time), 0)::float8 from pg_stat_statements where query like '%with unit as%'",
    )
    .fetch_one(pool)
    .await
    .ok()
}

/// One statement's figures from pg_stat_statements.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatementStat {
    /// The statement's first words.
    pub query: String,
    /// Executions.
    pub calls: i64,
    /// Rows touched.
    pub rows: i64,
    /// Total execution time.
    pub total_ms: f64,
    /// Mean execution time.
    pub mean_ms: f64,
    /// Mean planning time (0 unless `pg_stat_statements.track_planning` was on).
    pub mean_plan_ms: f64,
}

/// Turns pg_stat_statements' planning times on or off for the whole server (every session after its next
/// statement); without the extension nothing changes.
async fn track_planning(pool: &PgPool, on: bool) {
    let _ = sqlx::query(&format!("alter system set pg_stat_statements.track_planning = {on}"))
        .execute(pool)
        .await;
    let _ = sqlx::query("select pg_reload_conf()").execute(pool).await;
}

async fn statement_stats(pool: &PgPool) -> Vec<StatementStat> {
    sqlx::query_as(
        r#"
        select left(regexp_replace(query, '\s+', ' ', 'g'), 60) as query, calls, rows,
               round(total_exec_time::numeric, 1)::float8 as total_ms,
               round(mean_exec_time::numeric, 3)::float8 as mean_ms,
               round(mean_plan_time::numeric, 3)::float8 as mean_plan_ms
        from pg_stat_statements
        where dbid = (select oid from pg_database where datname = current_database())
        order by total_exec_time + total_plan_time desc
        limit 8
        "#,
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// Queues `n` waiting jobs at priority 5 (behind the measured ones), in bulk.
async fn enqueue_backlog(pool: &PgPool, n: usize) -> Result<(), Error> {
    sqlx::query(
        r#"
        insert into job (kind, args, priority)
        select 'noop', jsonb_build_object('id', g, 'pad', repeat('x', 40)), 5
        from generate_series(1, $1) g
        "#,
    )
    .bind(n as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Churns finished jobs through the tables (insert, then finish into history) so the drain runs beside history and
/// the dead row versions it left.
async fn preload_finished(pool: &PgPool, n: usize) -> Result<(), Error> {
    let mut done = 0;
    while done < n {
        let k = 10_000.min(n - done);
        sqlx::query(
            r#"
            insert into job (kind, args, state, attempt, started_at, finished_at)
            select 'noop', jsonb_build_object('id', g, 'pad', repeat('x', 40)), 'available', 0, null, null
            from generate_series(1, $1) g
            "#,
        )
        .bind(k as i64)
        .execute(pool)
        .await?;
        sqlx::query(
            r#"
            with done as (delete from job where state = 'available' returning *)
            insert into job_history (id, account_id, queue, kind, args, state, priority, attempt, max_attempts,
                                     run_at, created_at, started_at, finished_at, errors)
            select id, account_id, queue, kind, args, 'completed', priority, 1, max_attempts,
                   run_at, created_at, now(), now(), errors
            from done
            "#,
        )
        .execute(pool)
        .await?;
        done += k;
    }
    sqlx::query("vacuum analyze job").execute(pool).await?;
    sqlx::query("vacuum analyze job_history").execute(pool).await?;
    Ok(())
}

/// One job at a time on idle workers: the time from the enqueue's commit (as the client saw it) to the claim
/// that started the handler.
async fn measure_latency(q: &Queue, account: &AccountId, samples: usize) -> Result<Latency, Error> {
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let job = q
            .enqueue(account, NewJob::new("noop", serde_json::json!({})))
            .await?
            .job;
        let committed = chrono::Utc::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                "select started_at from job where id = $1 union all select started_at from job_history where id = $1",
            )
            .bind(job.id)
            .fetch_one(q.pool())
            .await?;
            if let Some(s) = started {
                let ms = (s - committed).num_microseconds().unwrap_or(0).max(0) as f64 / 1000.0;
                lat.push(ms);
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Stalled(Duration::from_secs(10)));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok(Latency {
        p50: (pick(0.50) * 1000.0).round() / 1000.0,
        p99: (pick(0.99) * 1000.0).round() / 1000.0,
    })
}

/// Points a postgres URL at another database, keeping credentials, host and query.
fn replace_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scratch database replaces only the path of the URL.
    #[test]
    fn replace_database_keeps_everything_else() {
        let cases = [
            ("postgres://u:p@h:5/db", "postgres://u:p@h:5/x"),
            ("postgres://h/db?sslmode=disable", "postgres://h/x?sslmode=disable"),
            ("postgres://h:5", "postgres://h:5/x"),
        ];
        for (from, to) in cases {
            assert_eq!(replace_database(from, "x"), to);
        }
    }
}
