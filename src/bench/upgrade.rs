//! `ordo bench --upgrade-from OLD`: the cost of an upgrade's schema change to a busy queue. The previous release's
//! binary creates its schema and its workers drain a backlog; this binary's migrations are applied in the middle of
//! the drain, as during a rollout. Reported: how long the migrations took, each one's own time, and the longest
//! pause of the drain while they ran against the longest before them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::scrape::scrape;
use super::workers::spawn_workers_with_metrics;
use super::{enqueue_backlog, max_rss_mib, stop_workers, wait_for_workers, BenchArgs, Error, Summary};

/// How long the drain runs before the migrations start, and after they finish.
const PHASE: Duration = Duration::from_secs(10);
/// Between two reads of the workers' counters: the resolution of a pause.
const SCRAPE_EVERY: Duration = Duration::from_millis(20);

/// What an upgrade under load measured.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeFigures {
    /// Migrations this binary applied.
    pub migrations: Vec<AppliedMigration>,
    /// Wall time of applying them all, in seconds.
    pub migrate_secs: f64,
    /// Longest stretch without a settled job that overlapped the migrations, in milliseconds.
    pub longest_pause_during_ms: f64,
    /// Longest such stretch in the drain before them, in milliseconds (what is normal here).
    pub longest_pause_before_ms: f64,
    /// Drain rates (jobs settled per second) before, during and after the migrations.
    pub drain_before_per_s: f64,
    /// See `drain_before_per_s`.
    pub drain_during_per_s: f64,
    /// See `drain_before_per_s`.
    pub drain_after_per_s: f64,
    /// Whether every worker of the previous release was still running at the end.
    pub workers_survived: bool,
}

/// One migration and the time PostgreSQL took to apply it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AppliedMigration {
    /// Its version (timestamp).
    pub version: i64,
    /// Its description.
    pub description: String,
    /// Its execution time, in milliseconds.
    pub ms: f64,
}

/// Runs the upgrade scenario against the empty scratch database at `url`.
pub(super) async fn run(args: &BenchArgs, old: &Path, url: &str, pool: &PgPool) -> Result<Summary, Error> {
    if args.backlog == 0 {
        return Err(Error::Invalid("--upgrade-from needs a --backlog to drain".into()));
    }
    let status = tokio::process::Command::new(old)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(Error::Spawn)?;
    if !status.success() {
        return Err(Error::Invalid(format!("{} migrate failed: {status}", old.display())));
    }
    let applied_before: i64 = sqlx::query_scalar("select coalesce(max(version), 0) from _sqlx_migrations")
        .fetch_one(pool)
        .await?;
    enqueue_backlog(pool, args.backlog).await?;
    sqlx::query("analyze").execute(pool).await?;
    sqlx::query("checkpoint").execute(pool).await?;

    let (mut children, metrics) = spawn_workers_with_metrics(args, url, Some(old))?;
    wait_for_workers(pool, args.workers).await?;
    let client = reqwest::Client::new();
    let mut progress: Vec<(Instant, f64)> = Vec::new();
    let started = Instant::now();
    watch(&client, &metrics, &mut progress, || started.elapsed() < PHASE).await;
    let migrate_started = Instant::now();
    let migrate = {
        let pool = pool.clone();
        tokio::spawn(async move { crate::db::migrate(&pool).await })
    };
    watch(&client, &metrics, &mut progress, || !migrate.is_finished()).await;
    let migrate_finished = Instant::now();
    migrate
        .await
        .map_err(|e| Error::Invalid(format!("the migrations panicked: {e}")))??;
    watch(&client, &metrics, &mut progress, || migrate_finished.elapsed() < PHASE).await;
    let workers_survived = children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)));
    let worker_max_rss_mib = max_rss_mib(&children);
    stop_workers(&mut children).await;

    let migrations: Vec<AppliedMigration> = sqlx::query_as(
        r#"
        select version, description, (execution_time / 1e6)::float8 as ms
        from _sqlx_migrations where version > $1 order by version
        "#,
    )
    .bind(applied_before)
    .fetch_all(pool)
    .await?;
    let window = |from: Instant, to: Instant| Window::of(&progress, from, to);
    let (before, during, after) = (
        window(started, migrate_started),
        window(migrate_started, migrate_finished),
        window(migrate_finished, Instant::now()),
    );
    let settled = progress.last().map_or(0.0, |p| p.1);
    Ok(Summary {
        jobs: settled as usize,
        drain_per_s: super::round(settled / started.elapsed().as_secs_f64()),
        worker_max_rss_mib,
        upgrade: Some(UpgradeFigures {
            migrations,
            migrate_secs: (migrate_finished - migrate_started).as_secs_f64(),
            longest_pause_during_ms: during.longest_pause_ms,
            longest_pause_before_ms: before.longest_pause_ms,
            drain_before_per_s: before.rate,
            drain_during_per_s: during.rate,
            drain_after_per_s: after.rate,
            workers_survived,
        }),
        ..Summary::of(args)
    })
}

/// Reads the workers' settled count every [`SCRAPE_EVERY`] into `progress` while `more()` holds.
async fn watch(
    client: &reqwest::Client,
    metrics: &[std::net::SocketAddr],
    progress: &mut Vec<(Instant, f64)>,
    mut more: impl FnMut() -> bool,
) {
    while more() {
        progress.push((Instant::now(), scrape(client, metrics).await.settled));
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
}

/// The drain over one stretch of time.
#[derive(Debug, PartialEq)]
struct Window {
    /// Jobs settled per second.
    rate: f64,
    /// The longest time between two reads that saw progress, of the gaps that overlap the stretch.
    longest_pause_ms: f64,
}

impl Window {
    fn of(progress: &[(Instant, f64)], from: Instant, to: Instant) -> Window {
        // The times at which the counter had moved since the read before: a pause is the gap between two of them.
        let moved: Vec<Instant> = progress
            .windows(2)
            .filter(|w| w[1].1 > w[0].1)
            .map(|w| w[1].0)
            .collect();
        let longest = moved
            .windows(2)
            .filter(|g| g[1] > from && g[0] < to)
            .map(|g| (g[1] - g[0]).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        let at = |t: Instant| {
            progress
                .iter()
                .take_while(|p| p.0 <= t)
                .last()
                .or(progress.first())
                .map_or(0.0, |p| p.1)
        };
        let secs = (to - from).as_secs_f64().max(0.001);
        Window {
            rate: ((at(to) - at(from)) / secs).round(),
            longest_pause_ms: longest.round(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_the_longest_gap_between_reads_that_saw_progress() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Progress every 20 ms, then none from 100 to 400 ms, then again.
        let progress = [
            (0, 0.0),
            (20, 5.0),
            (40, 10.0),
            (60, 15.0),
            (100, 20.0),
            (200, 20.0),
            (400, 25.0),
            (420, 30.0),
        ]
        .map(|(t, n)| (ms(t), n));
        let during = Window::of(&progress, ms(150), ms(300));
        assert_eq!(during.longest_pause_ms, 300.0);
        assert_eq!(during.rate, 0.0);
        let before = Window::of(&progress, ms(0), ms(60));
        assert_eq!(before.longest_pause_ms, 20.0);
        assert_eq!(before.rate, 250.0);
    }
}
