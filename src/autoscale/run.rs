//! The autoscaler loop (`ordo autoscaler`): under the lease [`AUTOSCALER_LEASE`], every interval observe →
//! decide → act. The same process runs the rollout controller under its own lease.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::driver::{Desired, NoneDriver, PoolDriver, ProcessDriver};
use super::kubernetes::{KubeConfig, KubernetesDriver};
use super::{decide, store, Memory, Result};
use crate::config::DbConfig;

/// The lease that elects the one autoscaler that acts.
pub const AUTOSCALER_LEASE: &str = "autoscaler";

/// How decisions are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// Local `ordo worker` child processes.
    Process,
    /// The scale subresource of one Deployment per pool version.
    Kubernetes,
    /// Only publish the desired counts.
    None,
}

/// `ordo autoscaler`.
#[derive(Debug, Clone, Args)]
pub struct AutoscalerArgs {
    /// How decisions are applied.
    #[arg(long, env = "ORDO_AUTOSCALER_DRIVER", value_enum, default_value = "none")]
    pub driver: DriverKind,
    /// Pause between two rounds, in milliseconds.
    #[arg(long, env = "ORDO_AUTOSCALER_INTERVAL_MS", default_value_t = 2_000)]
    pub interval_ms: u64,
    /// The version recorded as stable for a pool that has a scaling policy but has never run a worker.
    #[arg(long, env = "ORDO_VERSION", default_value = "v1")]
    pub default_version: String,
    /// Extra arguments for worker processes started by the process driver (e.g. `--concurrency=4`).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// Kubernetes API settings (driver `kubernetes`).
    #[command(flatten)]
    pub kube: KubeConfig,
}

/// The autoscaler: decisions per pool version, applied through `D`.
pub struct Autoscaler<D> {
    db: PgPool,
    holder: String,
    driver: D,
    memory: HashMap<(String, String), Memory>,
    /// Pause between rounds.
    pub interval: Duration,
    /// The lease's time to live.
    pub lease: Duration,
    /// Stable version for a pool that never ran one.
    pub default_version: String,
}

/// A scaling decision every 2 s: queue depth changes faster than workers start, so more often gains nothing.
const INTERVAL: Duration = Duration::from_secs(2);
/// The shortest leader lease, however short the interval: a lease must outlast a slow round.
const MIN_LEASE: Duration = Duration::from_secs(2);
/// The autoscaler's lease: five rounds, so one slow round does not hand leadership over.
const LEASE: Duration = Duration::from_secs(10);
/// Workers heartbeating within this count as running: a worker heartbeats every 10 s with the default lease.
const WORKER_FRESH: Duration = Duration::from_secs(30);

impl<D: PoolDriver> Autoscaler<D> {
    /// An autoscaler identified as `holder`.
    pub fn new(db: PgPool, holder: String, driver: D) -> Self {
        Autoscaler {
            db,
            holder,
            driver,
            memory: HashMap::new(),
            interval: INTERVAL,
            lease: LEASE,
            default_version: "v1".to_owned(),
        }
    }

    /// One round; returns the desired counts when this process leads (None when it does not).
    #[tracing::instrument(skip_all, err)]
    pub async fn round(&mut self) -> Result<Option<Vec<Desired>>> {
        if !crate::leader::acquire(&self.db, AUTOSCALER_LEASE, &self.holder, self.lease).await? {
            // A follower runs nothing: forget decisions so a later leadership starts from what it observes.
            self.memory.clear();
            self.driver.apply(&[]).await?;
            return Ok(None);
        }
        let fresh = self.lease.max(WORKER_FRESH);
        let observed = store::observe(&self.db, &self.default_version, fresh).await?;
        let now = Instant::now();
        let mut desired = Vec::with_capacity(observed.len());
        for s in &observed {
            let key = (s.pool.clone(), s.version.clone());
            let mem = self.memory.get(&key).copied().unwrap_or_default();
            let d = decide(&s.observed, &s.policy, now, &mem);
            if mem.desired != Some(d.desired) {
                tracing::info!(pool = %s.pool, pool.version = %s.version, depth = s.observed.depth,
                    from = mem.desired.unwrap_or(0), to = d.desired, "scaling decision");
                metrics::counter!(crate::telemetry::metrics::AUTOSCALER_DECISIONS_TOTAL,
                    "pool" => s.pool.clone(), "pool.version" => s.version.clone())
                .increment(1);
            }
            let labels = [("pool", s.pool.clone()), ("pool.version", s.version.clone())];
            metrics::gauge!(crate::telemetry::metrics::POOL_DEPTH, &labels).set(s.observed.depth as f64);
            metrics::gauge!(crate::telemetry::metrics::POOL_WORKERS_DESIRED, &labels).set(f64::from(d.desired));
            metrics::gauge!(crate::telemetry::metrics::POOL_WORKERS, &labels).set(s.workers as f64);
            self.memory.insert(key, d.memory);
            desired.push(Desired {
                pool: s.pool.clone(),
                version: s.version.clone(),
                workers: d.desired,
            });
        }
        self.memory
            .retain(|k, _| observed.iter().any(|s| s.pool == k.0 && s.version == k.1));
        self.driver.apply(&desired).await?;
        Ok(Some(desired))
    }

    /// Runs rounds until `shutdown`, then stops what the driver started and gives the lease up.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(driver = self.driver.name(), holder = %self.holder, "autoscaler started");
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "autoscaler round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.driver.shutdown().await;
        let _ = crate::leader::release(&self.db, AUTOSCALER_LEASE, &self.holder).await;
        tracing::info!("autoscaler stopped");
    }
}

/// Why `ordo autoscaler` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is missing or out of range.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Connecting, or the schema check, failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The driver could not be set up.
    #[error(transparent)]
    Driver(#[from] super::Error),
}

/// `ordo autoscaler`: the autoscaler and the rollout controller until `shutdown`.
pub async fn serve(db: &DbConfig, args: &AutoscalerArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let url = db.require()?;
    let pool = crate::db::connect(url, 4).await?;
    crate::db::check_schema(&pool).await?;
    // Configure the driver before taking any lease, so a bad setting fails at start.
    let kube = match args.driver {
        DriverKind::Kubernetes => Some(KubernetesDriver::from_config(&args.kube)?),
        _ => None,
    };
    let holder = format!("autoscaler-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let controller = crate::rollout::Controller::new(pool.clone(), holder.clone());
    let rollouts = tokio::spawn(controller.run(shutdown.clone()));
    let interval = Duration::from_millis(args.interval_ms.max(50));
    let lease = (interval * 5).max(MIN_LEASE);
    match (args.driver, kube) {
        (DriverKind::Kubernetes, Some(driver)) => run_with(pool, holder, driver, args, interval, lease, shutdown).await,
        (DriverKind::Process, _) => {
            let exe = std::env::current_exe().map_err(super::Error::Process)?;
            let driver = ProcessDriver::new(exe, args.worker_args.clone()).with_env("DATABASE_URL", url);
            run_with(pool, holder, driver, args, interval, lease, shutdown).await;
        }
        _ => run_with(pool, holder, NoneDriver, args, interval, lease, shutdown).await,
    }
    let _ = rollouts.await;
    Ok(())
}

async fn run_with<D: PoolDriver>(
    pool: PgPool,
    holder: String,
    driver: D,
    args: &AutoscalerArgs,
    interval: Duration,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut a = Autoscaler::new(pool, holder, driver);
    a.interval = interval;
    a.lease = lease;
    a.default_version = args.default_version.clone();
    a.run(shutdown).await;
}
