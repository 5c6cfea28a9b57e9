//! `ordo bench --steady-rate`: a fixed-rate load instead of a drain, sampled every `--sample-secs` (throughput,
//! enqueue→start percentiles, claim time, dead tuples and sizes), optionally with a snapshot held open for the whole
//! load, and optionally written to CSV files as it goes (`benches/soak.sh` draws them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::scrape::{scrape, Scrape};
use super::workers::spawn_workers_with_metrics;
use super::{max_rss_mib, round, statement_stats, stop_workers, wait_for_workers, BenchArgs, Error, Summary};
use crate::queue::{NewJob, Queue};
use crate::tenancy::AccountId;

/// The queue's own tables, whose dead tuples and sizes a sample records (history partitions included).
const QUEUE_TABLES: &str = "^(job|account_kind_start|account_share|queue_sample|worker$)";

/// One sample of a steady load.
#[derive(Debug, Clone, Serialize)]
pub struct SteadySample {
    /// Seconds since the load started, at the end of the sample.
    pub secs: u64,
    /// Jobs enqueued during the sample.
    pub enqueued: usize,
    /// Attempts the workers settled during the sample, per second.
    pub throughput_per_s: f64,
    /// Enqueue→start delay of the jobs enqueued during the previous sample, median, in milliseconds (a job not
    /// started yet counts with the time it has waited so far).
    pub start_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    pub start_p99_ms: Option<f64>,
    /// Claim statements run during the sample.
    pub claims: i64,
    /// Their mean execution time (pg_stat_statements), in milliseconds.
    pub claim_mean_ms: f64,
    /// The slowest of them (pg_stat_statements), in milliseconds.
    pub claim_max_ms: f64,
    /// The 99th percentile of a claim as the workers time it (a connection, the account list when due, the
    /// statement), from their histogram interpolated within its bucket, in milliseconds.
    pub claim_p99_ms: Option<f64>,
    /// Dead row versions in `job` at the end of the sample.
    pub dead_tuples: i64,
    /// Dead row versions in all queue tables.
    pub dead_tuples_all: i64,
    /// Live rows in `job` at the end of the sample.
    pub live_tuples: i64,
    /// Heap size of `job`, in bytes.
    pub table_bytes: i64,
    /// Size of its indexes, in bytes.
    pub index_bytes: i64,
    /// Every queue table and index at the end of the sample (CSV only).
    #[serde(skip)]
    pub relations: Vec<Relation>,
}

/// A queue table or index at the end of a sample.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Relation {
    /// Its name.
    pub name: String,
    /// `table` or `index`.
    pub kind: String,
    /// The table it is, or the table the index is on.
    pub table: String,
    /// Dead row versions (tables only).
    pub dead_tuples: Option<i64>,
    /// Live rows (tables only).
    pub live_tuples: Option<i64>,
    /// Size on disk in bytes (a table's heap without its indexes).
    pub bytes: i64,
}

/// The two CSV files of a steady load: samples, and one line per relation per sample.
struct Csv {
    samples: std::fs::File,
    relations: std::fs::File,
}

impl Csv {
    fn create(path: &Path) -> Result<Csv, Error> {
        let mut samples = std::fs::File::create(path).map_err(Error::Output)?;
        let mut relations = std::fs::File::create(relations_path(path)).map_err(Error::Output)?;
        writeln!(
            samples,
            "secs,enqueued,throughput_per_s,start_p50_ms,start_p99_ms,claims,claim_mean_ms,claim_max_ms,claim_p99_ms,\
             dead_tuples,dead_tuples_all,live_tuples,table_bytes,index_bytes"
        )
        .map_err(Error::Output)?;
        writeln!(relations, "secs,relation,kind,table,dead_tuples,live_tuples,bytes").map_err(Error::Output)?;
        Ok(Csv { samples, relations })
    }

    /// Appends one sample; written at once, so an interrupted soak keeps what it measured.
    fn write(&mut self, s: &SteadySample) -> Result<(), Error> {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        writeln!(
            self.samples,
            "{},{},{:.1},{},{},{},{:.3},{:.3},{},{},{},{},{},{}",
            s.secs,
            s.enqueued,
            s.throughput_per_s,
            opt(s.start_p50_ms),
            opt(s.start_p99_ms),
            s.claims,
            s.claim_mean_ms,
            s.claim_max_ms,
            opt(s.claim_p99_ms),
            s.dead_tuples,
            s.dead_tuples_all,
            s.live_tuples,
            s.table_bytes,
            s.index_bytes
        )
        .map_err(Error::Output)?;
        for r in &s.relations {
            let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            writeln!(
                self.relations,
                "{},{},{},{},{},{},{}",
                s.secs,
                r.name,
                r.kind,
                r.table,
                n(r.dead_tuples),
                n(r.live_tuples),
                r.bytes
            )
            .map_err(Error::Output)?;
        }
        Ok(())
    }
}

/// `soak.csv` → `soak-relations.csv`.
fn relations_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}-relations.csv"))
}

/// What a sample compares against: the previous sample's scrape, time and job-id marks.
struct Marks {
    scrape: Scrape,
    at: Instant,
    /// Highest job id enqueued before the previous sample ended, and before this one ended.
    ids: (i64, i64),
}

/// Takes the samples of one load: keeps the marks between them, writes each to the CSV as it is taken.
struct Sampler<'a> {
    pool: &'a PgPool,
    account: &'a AccountId,
    client: reqwest::Client,
    metrics: Vec<std::net::SocketAddr>,
    marks: Marks,
    csv: Option<Csv>,
    samples: Vec<SteadySample>,
    started: Instant,
}

impl Sampler<'_> {
    /// Samples the time since the last sample, in which `enqueued` jobs up to id `max_id` were enqueued.
    async fn take(&mut self, enqueued: usize, max_id: i64) -> Result<(), Error> {
        self.marks.ids = (self.marks.ids.1, max_id);
        let s = sample(
            self.pool,
            self.account,
            &self.client,
            &self.metrics,
            &mut self.marks,
            self.started,
            enqueued,
        )
        .await?;
        if let Some(csv) = self.csv.as_mut() {
            csv.write(&s)?;
        }
        self.samples.push(s);
        Ok(())
    }
}

/// `--steady-rate`: enqueue at a fixed rate while the workers run the jobs, sample every `--sample-secs`, then let
/// the queue drain and report.
pub(super) async fn run(
    args: &BenchArgs,
    url: &str,
    pool: &PgPool,
    q: &Queue,
    account: &AccountId,
) -> Result<Summary, Error> {
    let csv = args.csv.as_deref().map(Csv::create).transpose()?;
    let (mut children, metrics) = spawn_workers_with_metrics(args, url, None)?;
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
    let client = reqwest::Client::new();
    let pad = "x".repeat(40);
    let per_tick = (args.steady_rate / 10).max(1);
    let every = Duration::from_secs(args.sample_secs.max(1));
    let started = Instant::now();
    let run_for = Duration::from_secs(args.steady_secs.max(1));
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut total, mut this_sample, mut next_sample, mut max_id) = (0usize, 0usize, every, 0i64);
    let mut sampler = Sampler {
        pool,
        account,
        marks: Marks {
            scrape: scrape(&client, &metrics).await,
            at: Instant::now(),
            ids: (0, 0),
        },
        client,
        metrics,
        csv,
        samples: Vec::new(),
        started,
    };
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(pool).await;
    while started.elapsed() < run_for {
        ticks.tick().await;
        let jobs: Vec<NewJob> = (total..total + per_tick)
            .map(|k| NewJob::new("noop", serde_json::json!({"id": k, "pad": pad})))
            .collect();
        let out = q.enqueue_many(account, jobs).await?;
        max_id = out.iter().map(|o| o.id.0).fold(max_id, i64::max);
        total += per_tick;
        this_sample += per_tick;
        if started.elapsed() >= next_sample {
            sampler.take(this_sample, max_id).await?;
            this_sample = 0;
            next_sample += every;
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    // The figures at the end of the load, while the snapshot is still held; then let the queue drain.
    // A load whose length is a whole number of samples ended with one: that is the figure at its end.
    if this_sample > 0 || sampler.samples.is_empty() {
        sampler.take(this_sample, max_id).await?;
    }
    let samples = sampler.samples;
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
    let last = samples.last();
    let (dead_tuples, index_bytes, table_bytes) =
        last.map_or((0, 0, 0), |l| (l.dead_tuples, l.index_bytes, l.table_bytes));
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
        steady: samples,
        ..Summary::of(args)
    })
}

/// The figures of one sample; resets the statement statistics and moves the marks on for the next.
async fn sample(
    pool: &PgPool,
    account: &AccountId,
    client: &reqwest::Client,
    metrics: &[std::net::SocketAddr],
    marks: &mut Marks,
    started: Instant,
    enqueued: usize,
) -> Result<SteadySample, Error> {
    let now = scrape(client, metrics).await;
    let secs = marks.at.elapsed().as_secs_f64().max(0.001);
    let throughput_per_s = ((now.settled - marks.scrape.settled).max(0.0) / secs * 10.0).round() / 10.0;
    let claim_p99_ms = now
        .claim_quantile_ms(&marks.scrape, 0.99)
        .map(|v| (v * 1000.0).round() / 1000.0);
    marks.scrape = now;
    marks.at = Instant::now();
    let (claims, claim_mean_ms, claim_max_ms): (i64, f64, f64) = sqlx::query_as(
        r#"
        select coalesce(sum(calls), 0)::bigint,
               coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8,
               coalesce(max(max_exec_time), 0)::float8
        from pg_stat_statements
        -- every form of the claim: the planned one (walking from floors or not) and an idle claimer's blind one
        where (query like '%job_claim_pick(%' or query like '%job_claim_walk(%') and query like '%update job%'
        "#,
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0.0, 0.0));
    let _ = sqlx::query("select pg_stat_statements_reset()").execute(pool).await;
    // The previous sample's jobs, found by id in both the hot table and history: each has had a whole sample to
    // start, and one that has not counts with what it has waited so far.
    let (start_p50_ms, start_p99_ms): (Option<f64>, Option<f64>) = sqlx::query_as(
        r#"
        with waited as (
            select extract(epoch from coalesce(started_at, clock_timestamp()) - created_at) * 1000 as ms
            from job_history where account_id = $1 and id > $2 and id <= $3
            union all
            select extract(epoch from coalesce(started_at, clock_timestamp()) - created_at) * 1000
            from job where id > $2 and id <= $3
        )
        select (percentile_cont(0.5) within group (order by ms))::float8,
               (percentile_cont(0.99) within group (order by ms))::float8
        from waited
        "#,
    )
    .bind(account.as_str())
    .bind(marks.ids.0)
    .bind(marks.ids.1)
    .fetch_one(pool)
    .await?;
    let relations: Vec<Relation> = sqlx::query_as(
        r#"
        select relname::text as name, 'table' as kind, relname::text as table, n_dead_tup as dead_tuples,
               n_live_tup as live_tuples, pg_table_size(relid) as bytes
        from pg_stat_user_tables where relname ~ $1
        union all
        select indexrelname::text, 'index', relname::text, null, null, pg_relation_size(indexrelid)
        from pg_stat_user_indexes where relname ~ $1
        order by 2 desc, 1
        "#,
    )
    .bind(QUEUE_TABLES)
    .fetch_all(pool)
    .await?;
    let job = relations.iter().find(|r| r.kind == "table" && r.name == "job");
    let index_bytes = relations
        .iter()
        .filter(|r| r.kind == "index" && r.table == "job")
        .map(|r| r.bytes)
        .sum();
    let ms = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
    Ok(SteadySample {
        secs: started.elapsed().as_secs(),
        enqueued,
        throughput_per_s,
        start_p50_ms: ms(start_p50_ms),
        start_p99_ms: ms(start_p99_ms),
        claims,
        claim_mean_ms: (claim_mean_ms * 1000.0).round() / 1000.0,
        claim_max_ms: (claim_max_ms * 1000.0).round() / 1000.0,
        claim_p99_ms,
        dead_tuples: job.and_then(|j| j.dead_tuples).unwrap_or(0),
        dead_tuples_all: relations.iter().filter_map(|r| r.dead_tuples).sum(),
        live_tuples: job.and_then(|j| j.live_tuples).unwrap_or(0),
        table_bytes: job.map_or(0, |j| j.bytes),
        index_bytes,
        relations,
    })
}
