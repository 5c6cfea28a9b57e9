//! The worker runtime's lease keeping and settling, for handlers that another framework runs (the `apalis-ordo`
//! backend): jobs held are heartbeated as `ordo worker` heartbeats its own, their outcomes go through the same
//! batched, fenced completer, and jobs that never started are handed back without using up an attempt.
//!
//! The caller claims (see [`crate::queue::claim`]), calls [`Holder::hold`] for each job, runs it, and settles it
//! with [`Holder::settle`]; [`Embedded::run`] does the rest until its shutdown token fires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::completer::Completer;
use super::settle::{LaneHook, Settle, SettleKind};
use super::{heartbeat_loop, register_with_retry, release_lanes, Running};
use crate::queue::{self, Job, JobId, RetryPolicy, WorkerInfo};
use crate::wake::WakeSignals;

/// How an embedded runtime keeps leases and settles outcomes.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// Lease length; heartbeats come every third of it.
    pub lease: Duration,
    /// Backoff of failed attempts that name no delay.
    pub retry: RetryPolicy,
    /// Take part in the election for queue maintenance (rescue of expired leases, promotion, retention).
    pub maintenance: bool,
    /// Retention applied by queue maintenance.
    pub retention: queue::Retention,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            lease: super::defaults::LEASE,
            retry: RetryPolicy::default(),
            maintenance: true,
            retention: queue::Retention::default(),
        }
    }
}

/// The jobs a process holds and the way to settle them; cheap to clone.
#[derive(Clone)]
pub struct Holder {
    running: Running,
    /// Taken when the runtime stops, so the completer sees its channel close once what was sent is written, even
    /// while clones of this holder live on.
    settle: Arc<Mutex<Option<mpsc::UnboundedSender<Settle>>>>,
}

impl Holder {
    /// Holds a claimed job: its lease is heartbeated until it is settled. The token fires when the lease is lost
    /// (another worker may run the job now; its outcome here would be refused).
    pub fn hold(&self, job: &Job) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(job.id, (job.attempt, token.clone()));
        }
        token
    }

    /// Settles an attempt: stops heartbeating it and sends the outcome to the batched completer. `lane` is the
    /// job's queue when it has a concurrency key (its finish may release the key's next job). Returns false when
    /// the runtime has stopped (the lease then expires and maintenance rescues the job).
    pub fn settle(&self, id: JobId, attempt: i32, kind: SettleKind, lane: Option<String>) -> bool {
        self.forget(id);
        let Ok(tx) = self.settle.lock() else {
            return false;
        };
        tx.as_ref().is_some_and(|tx| {
            tx.send(Settle {
                id,
                attempt,
                kind,
                lane,
            })
            .is_ok()
        })
    }

    /// Hands back a held job that never started: available again at once, its attempt not used up.
    pub fn hand_back(&self, id: JobId, attempt: i32) -> bool {
        self.settle(id, attempt, SettleKind::HandBack, None)
    }

    /// Stops heartbeating a job without settling it (its lease was lost).
    pub fn forget(&self, id: JobId) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
    }

    /// How many jobs are held.
    pub fn held(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// An embedded runtime not yet running: make it, hand out its [`Holder`], then [`Embedded::run`] it.
pub struct Embedded {
    holder: Holder,
    rx: mpsc::UnboundedReceiver<Settle>,
    signals: WakeSignals,
}

impl Embedded {
    /// A runtime for jobs of `queues`.
    pub fn new(queues: &[String]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Embedded {
            holder: Holder {
                running: Arc::new(Mutex::new(HashMap::new())),
                settle: Arc::new(Mutex::new(Some(tx))),
            },
            rx,
            signals: WakeSignals::new(queues),
        }
    }

    /// The handle to hold and settle jobs with.
    pub fn holder(&self) -> Holder {
        self.holder.clone()
    }

    /// Per-queue notifiers poked when a settled job released the next job of its concurrency key (or maintenance
    /// made jobs claimable): claim again then instead of waiting for the next poll.
    pub fn signals(&self) -> WakeSignals {
        self.signals.clone()
    }

    /// Registers `info` as a worker and keeps it and its held jobs' leases alive, settles outcomes in batches and,
    /// when `cfg.maintenance`, takes part in queue maintenance, until `shutdown`. Then it writes every outcome sent
    /// so far and deregisters. `retired` is cancelled when the worker's pool version has been retired (stop
    /// claiming then).
    pub async fn run(
        self,
        pool: PgPool,
        info: WorkerInfo,
        cfg: EmbedConfig,
        shutdown: CancellationToken,
        retired: CancellationToken,
    ) {
        let Embedded { holder, rx, signals } = self;
        register_with_retry(&pool, &info, &shutdown).await;
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        let lanes = LaneHook {
            signals: signals.clone(),
            release: Arc::new(tokio::sync::Notify::new()),
        };
        tasks.spawn(release_lanes(pool.clone(), lanes.clone(), background.clone()));
        tasks.spawn(heartbeat_loop(
            pool.clone(),
            info.clone(),
            holder.running.clone(),
            cfg.lease,
            background.clone(),
            retired,
        ));
        if cfg.maintenance {
            let mut m = queue::Maintainer::new(pool.clone(), info.id.clone(), cfg.retry);
            m.retention = cfg.retention;
            let local = lanes.clone();
            m.on_ready = Some(Arc::new(move |q: &str| {
                local.wake(std::iter::once(q));
            }));
            tasks.spawn(m.run(background.clone()));
        }
        let completer = Completer::start(pool.clone(), rx, None, cfg.retry, lanes, None);

        shutdown.cancelled().await;
        let _ = queue::heartbeat_worker(&pool, &info.id, true).await;
        // The completer ends once its channel closes, after writing what was sent before.
        if let Ok(mut tx) = holder.settle.lock() {
            tx.take();
        }
        completer.finish(super::FLUSH_DEADLINE).await;
        super::leave(&pool, &info.id, &background, &tasks).await;
    }
}

/// The registration of an embedded worker, as `ordo worker` makes its own: a new unique id (also the lease owner
/// name its claims must use), this host and process, started now.
pub fn worker_info(
    pool: &str,
    version: &str,
    queues: Vec<String>,
    kinds: Vec<String>,
    concurrency: usize,
) -> WorkerInfo {
    let now = chrono::Utc::now();
    WorkerInfo {
        id: super::new_worker_id(),
        pool: pool.to_owned(),
        version: version.to_owned(),
        queues,
        kinds,
        host: super::hostname(),
        pid: std::process::id() as i32,
        concurrency: i32::try_from(concurrency).unwrap_or(i32::MAX),
        started_at: now,
        heartbeat_at: now,
        stopping: false,
    }
}

/// Permits for the next claim: waits for one, gathers up to `want` for at most 2 ms, then takes any free ones up
/// to `max`. Under load permits come back one by one as jobs finish; claiming each at once would mean many tiny
/// claims, so a claim waits briefly for a quarter of the worker's capacity (when idle they are all free anyway).
/// `None` once the semaphore is closed.
pub async fn gather_permits(
    permits: &Arc<tokio::sync::Semaphore>,
    want: usize,
    max: usize,
) -> Option<Vec<tokio::sync::OwnedSemaphorePermit>> {
    let first = permits.clone().acquire_owned().await.ok()?;
    let mut got = vec![first];
    let until = tokio::time::Instant::now() + super::fetcher::GATHER;
    while got.len() < want.min(max) {
        match tokio::time::timeout_at(until, permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => got.push(p),
            _ => break,
        }
    }
    while got.len() < max {
        match permits.clone().try_acquire_owned() {
            Ok(p) => got.push(p),
            Err(_) => break,
        }
    }
    Some(got)
}
