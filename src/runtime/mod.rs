//! The worker process: claim what free slots allow, run handlers with a timeout, settle outcomes in batches,
//! heartbeat leases, and stop in two phases.
//!
//! Invariants: a permit of `concurrency + prefetch` is taken *before* a claim, so a worker never holds more jobs
//! than that, and a job runs only with one of `concurrency` slots; the jobs waiting for a slot are leased and
//! heartbeated like running ones, and handed back at once when the worker stops; every write goes through `queue`
//! and is fenced by attempt; the runtime writes no SQL itself.

mod attempt;
mod completer;
pub mod embed;
mod fetcher;
mod prefetch;
mod settle;

use completer::{Completer, Offer};
pub(crate) use fetcher::Dispatch;
use fetcher::Fetcher;
use prefetch::{auto_prefetch, size_prefetch};
pub use prefetch::{Prefetch, AUTO_PREFETCH_MAX, AUTO_PREFETCH_WINDOW};
pub use settle::{Settle, SettleKind};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordo_workers::StepHandlers;
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chore::ChoreContext;
use crate::engine::EngineHandlers;
use crate::queue::{self, JobId, RetryPolicy, WorkerInfo};
use crate::retry::{self, Backoff};
use crate::wake::{self, WakeSignals};

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The worker was configured without any kind to run.
    #[error("no job kinds registered")]
    NoKinds,
    /// A queue operation failed where no retry makes sense (start-up).
    #[error(transparent)]
    Queue(#[from] queue::Error),
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Pool served.
    pub pool: String,
    /// Code version of this worker.
    pub version: String,
    /// Queues served.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Lease length; heartbeats come every third of it.
    pub lease: Duration,
    /// Idle poll interval when no wake-up arrives.
    pub poll: Duration,
    /// Timeout of a job that sets none.
    pub default_timeout: Duration,
    /// How long running jobs may finish after a stop request before they are handed back.
    pub drain: Duration,
    /// Retry backoff.
    pub retry: RetryPolicy,
    /// Redis for wake-ups; `None` = poll only.
    pub redis_url: Option<String>,
    /// PEM CA trusted for a `rediss://` Redis instead of the system's roots.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Take part in the election for queue maintenance.
    pub maintenance: bool,
    /// Jobs claimed ahead of free slots: they wait in this worker (leased, kept alive by its heartbeats) for a
    /// slot, so a claim can bring many jobs whatever the concurrency. Handed back at once when the worker stops.
    pub prefetch: Prefetch,
    /// Most jobs claimed by one statement.
    pub max_claim: usize,
    /// Claim loops per queue: while one claim statement runs, another can, so the database's cores overlap.
    pub claimers: usize,
    /// Retention applied by queue maintenance.
    pub retention: queue::Retention,
    /// Also serve every queue no other pool claims, as they appear (pool `default` without `--queues`).
    pub serve_unclaimed: bool,
    /// How long the event log is kept; pruned by whichever worker holds the maintenance lease.
    pub event_retention: Duration,
}

/// The defaults of a worker, which `ordo worker`'s flags show and apply (CONTRACT §8): one place for each.
pub mod defaults {
    use std::time::Duration;

    /// The queue a worker serves when given none and its pool names none.
    pub const QUEUE: &str = "default";
    /// Jobs run at once.
    pub const CONCURRENCY: usize = 16;
    /// Lease length: long enough that a database pause of a few seconds loses no lease, short enough that a dead
    /// worker's jobs run again within half a minute.
    pub const LEASE: Duration = Duration::from_secs(30);
    /// Idle poll: the fallback when no wake-up comes (Redis off or a publish lost); a second of delay at most.
    pub const POLL: Duration = Duration::from_secs(1);
    /// Timeout of a job that sets none.
    pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);
    /// Drain after SIGTERM: inside Kubernetes' default 30 s grace period, with time left to hand back and flush.
    pub const DRAIN: Duration = Duration::from_secs(25);
    /// Most jobs one claim statement takes.
    pub const MAX_CLAIM: usize = 2000;
    /// Claim loops per queue.
    pub const CLAIMERS: usize = 1;
    /// Days the event log (and loads) are kept.
    pub const EVENT_RETENTION_DAYS: u64 = 30;
}

impl WorkerConfig {
    /// The defaults of [`defaults`] for pool `pool`, version `version`, queue [`defaults::QUEUE`].
    pub fn new(pool: &str, version: &str) -> Self {
        WorkerConfig {
            pool: pool.to_owned(),
            version: version.to_owned(),
            queues: vec![defaults::QUEUE.to_owned()],
            concurrency: defaults::CONCURRENCY,
            lease: defaults::LEASE,
            poll: defaults::POLL,
            default_timeout: defaults::JOB_TIMEOUT,
            drain: defaults::DRAIN,
            retry: RetryPolicy::default(),
            redis_url: None,
            redis_ca_file: None,
            maintenance: true,
            prefetch: Prefetch::Auto,
            max_claim: defaults::MAX_CLAIM,
            claimers: defaults::CLAIMERS,
            retention: queue::Retention::default(),
            serve_unclaimed: false,
            event_retention: days(defaults::EVENT_RETENTION_DAYS),
        }
    }
}

/// `n` days.
pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

/// A new queue is rare: looking for queues no pool claims every second at most is soon enough, even with a very
/// short poll.
const UNCLAIMED_EVERY: Duration = Duration::from_secs(1);
/// How long the outcomes still queued at shutdown may take to be written before the worker exits without them.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How long handlers get to stop after their cancel token fired at the drain deadline, before their jobs are
/// handed back without them: a handler that honours cancellation returns within moments.
const HANDLER_STOP_GRACE: Duration = Duration::from_secs(2);
/// The least time between two rounds of lane marks. A lane's next job is released by the statement that finishes
/// its head; a round only settles marks (a lane left empty, or an enqueue that raced the finish), and each costs
/// a walk of the marks whatever their number: after every completion batch of a busy worker, those rounds were
/// the largest single cost of running keyed events.
const LANE_ROUND_GAP: Duration = Duration::from_millis(25);

/// Jobs this worker holds right now: attempt and the token that stops the handler.
pub(crate) type Running = Arc<Mutex<HashMap<JobId, (i32, CancellationToken)>>>;

/// A worker process's runtime.
pub struct Worker {
    cfg: WorkerConfig,
    pool: PgPool,
    steps: StepHandlers,
    engine: EngineHandlers,
    id: String,
}

impl Worker {
    /// A worker running the step handlers of `steps` and the engine handlers of `engine`.
    pub fn new(cfg: WorkerConfig, pool: PgPool, steps: StepHandlers, engine: EngineHandlers) -> Self {
        let id = new_worker_id();
        Worker {
            cfg,
            pool,
            steps,
            engine,
            id,
        }
    }

    /// This worker's id (also its lease owner name).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn kinds(&self) -> Vec<String> {
        let mut kinds = self.steps.kinds();
        kinds.extend(self.engine.kinds());
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// Runs until `shutdown` fires, then stops claiming, lets running jobs finish until the drain deadline, hands
    /// back what is left, flushes outcomes and deregisters.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let kinds = self.kinds();
        if kinds.is_empty() {
            return Err(Error::NoKinds);
        }
        // A retired version stops on its own (its rollout moved on): a child token, so the caller's stays as it is.
        let shutdown = shutdown.child_token();
        let info = self.info(kinds);
        self.join(&info, &shutdown).await;
        let shared = Shared::new(&self.cfg);
        // Heartbeats, wake-ups and maintenance: they outlive the claim loops and stop after the flush.
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        self.start_background(&info, &shared, &tasks, &background, &shutdown)
            .await;
        let (settle_tx, settle_rx) = mpsc::unbounded_channel::<Settle>();
        let unwritten = Arc::new(settle::Unwritten::default());
        let outbox = settle::Outbox::new(settle_tx, unwritten.clone());
        let exec = Arc::new(attempt::AttemptRunner {
            pool: self.pool.clone(),
            steps: self.steps.clone(),
            engine: self.engine.clone(),
            default_timeout: self.cfg.default_timeout,
            running: shared.running.clone(),
            settle: outbox.clone(),
            stopping: shutdown.clone(),
            lanes: shared.lanes.clone(),
        });
        let jobs = TaskTracker::new();
        let dispatch = Dispatch {
            exec,
            slots: Arc::new(Semaphore::new(self.cfg.concurrency)),
            running: shared.running.clone(),
            finished: shared.finished.clone(),
            jobs: jobs.clone(),
        };
        let completer = Completer::start(
            self.pool.clone(),
            settle_rx,
            Some(unwritten),
            self.cfg.retry,
            shared.lanes.clone(),
            Some(self.offer(&info, &shared, &dispatch, &shutdown)),
        );
        let claimers = self.start_claiming(&info, &shared, &dispatch, &shutdown);

        shutdown.cancelled().await;
        tracing::info!(worker.id = %self.id, held = shared.running.lock().map(|r| r.len()).unwrap_or(0), "stopping: no new claims; draining");
        let _ = queue::heartbeat_worker(&self.pool, &self.id, true).await;
        claimers.close();
        claimers.wait().await;
        drop(dispatch);
        self.drain(&jobs, &shared.running, &outbox).await;
        drop(outbox);
        completer.finish(FLUSH_DEADLINE).await;
        leave(&self.pool, &self.id, &background, &tasks).await;
        tracing::info!(worker.id = %self.id, "worker stopped");
        Ok(())
    }

    /// This worker's row in the worker registry.
    fn info(&self, kinds: Vec<String>) -> WorkerInfo {
        let now = chrono::Utc::now();
        WorkerInfo {
            id: self.id.clone(),
            pool: self.cfg.pool.clone(),
            version: self.cfg.version.clone(),
            queues: self.cfg.queues.clone(),
            kinds,
            host: hostname(),
            pid: std::process::id() as i32,
            concurrency: self.cfg.concurrency as i32,
            started_at: now,
            heartbeat_at: now,
            stopping: false,
        }
    }

    /// Registers the worker and announces its pool version; cancels `shutdown` when that version is retired.
    async fn join(&self, info: &WorkerInfo, shutdown: &CancellationToken) {
        let cfg = &self.cfg;
        register_with_retry(&self.pool, info, shutdown).await;
        match crate::rollout::announce_version(&self.pool, &cfg.pool, &cfg.version, &cfg.queues).await {
            Ok(Some(crate::rollout::Role::Retired)) => {
                tracing::info!(pool = %cfg.pool, pool.version = %cfg.version, "this version is retired; exiting");
                shutdown.cancel();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "failed to announce the worker's pool version"),
        }
        tracing::info!(worker.id = %self.id, pool = %cfg.pool, pool.version = %cfg.version, queues = ?cfg.queues,
            concurrency = cfg.concurrency, "worker started");
    }

    /// Starts on `tasks` what runs beside the claim loops until `background` fires: Redis wake-ups, lane release,
    /// heartbeats, the automatic prefetch and, when configured, queue maintenance and the registered chores.
    async fn start_background(
        &self,
        info: &WorkerInfo,
        shared: &Shared,
        tasks: &TaskTracker,
        background: &CancellationToken,
        shutdown: &CancellationToken,
    ) {
        let cfg = &self.cfg;
        let redis = match cfg.redis_url.as_deref() {
            Some(url) => match wake::client(url, cfg.redis_ca_file.as_deref()) {
                Ok(client) => Some(client),
                Err(e) => {
                    tracing::warn!(error = %e, "invalid Redis settings; wake-ups off, polling only");
                    None
                }
            },
            None => None,
        };
        if let Some(client) = redis.clone() {
            let ns = wake::namespace(&self.pool).await;
            tasks.spawn(wake::subscribe(client, ns, shared.signals.clone(), background.clone()));
        }
        tasks.spawn(crate::rollout::declare_pool_queues(
            self.pool.clone(),
            background.clone(),
        ));
        tasks.spawn(release_lanes(
            self.pool.clone(),
            shared.lanes.clone(),
            background.clone(),
        ));
        tasks.spawn(heartbeat_loop(
            self.pool.clone(),
            info.clone(),
            shared.running.clone(),
            cfg.lease,
            background.clone(),
            shutdown.clone(),
        ));
        if cfg.prefetch == Prefetch::Auto {
            tasks.spawn(size_prefetch(
                shared.held.clone(),
                shared.prefetch.clone(),
                shared.finished.clone(),
                cfg.concurrency,
                background.clone(),
            ));
        }
        if !cfg.maintenance {
            return;
        }
        let mut m = queue::Maintainer::new(self.pool.clone(), self.id.clone(), cfg.retry);
        m.retention = cfg.retention;
        // Jobs it releases or promotes: this worker's fetchers at once, every worker through Redis.
        let waker = match redis {
            Some(client) => Some(wake::Waker::with_client(
                client,
                &wake::namespace(&self.pool).await,
                background.clone(),
            )),
            None => None,
        };
        let local = shared.lanes.clone();
        m.on_ready = Some(Arc::new(move |q: &str| {
            local.wake(std::iter::once(q));
            if let Some(w) = &waker {
                w.wake(q);
            }
        }));
        tasks.spawn(m.run(background.clone()));
        let ctx = ChoreContext {
            pool: self.pool.clone(),
            retention: cfg.event_retention,
            stop: background.clone(),
        };
        for chore in self.engine.chores() {
            tasks.spawn(
                chore
                    .clone()
                    .run(ctx.clone(), queue::MAINTENANCE_LEASE, self.id.clone()),
            );
        }
    }

    /// The offer the completer makes to run the next job of each lane its completions release.
    fn offer(&self, info: &WorkerInfo, shared: &Shared, dispatch: &Dispatch, shutdown: &CancellationToken) -> Offer {
        completer::Offer {
            worker_id: self.id.clone(),
            lease: self.cfg.lease,
            kinds: info.kinds.clone(),
            queues: self.cfg.queues.clone(),
            pool: self.cfg.pool.clone(),
            version: self.cfg.version.clone(),
            held: shared.held.clone(),
            dispatch: dispatch.clone(),
            stopping: shutdown.clone(),
        }
    }

    /// Starts the claim loops (`claimers` per queue) and, for pool `default`, the search for queues no other pool
    /// claims; all of them end when `shutdown` fires.
    fn start_claiming(
        &self,
        info: &WorkerInfo,
        shared: &Shared,
        dispatch: &Dispatch,
        shutdown: &CancellationToken,
    ) -> TaskTracker {
        let claimers = TaskTracker::new();
        let fetcher = {
            let (pool, kinds, cfg, id) = (self.pool.clone(), info.kinds.clone(), self.cfg.clone(), self.id.clone());
            let (held, prefetch, signals, dispatch) = (
                shared.held.clone(),
                shared.prefetch.clone(),
                shared.signals.clone(),
                dispatch.clone(),
            );
            move |q: &str| Fetcher {
                pool: pool.clone(),
                queue: q.to_owned(),
                kinds: kinds.clone(),
                cfg: cfg.clone(),
                worker_id: id.clone(),
                held: held.clone(),
                prefetch: prefetch.clone(),
                wake: signals.get(q).unwrap_or_default(),
                dispatch: dispatch.clone(),
            }
        };
        for q in &self.cfg.queues {
            for _ in 0..self.cfg.claimers.max(1) {
                claimers.spawn(fetcher(q).run(shutdown.clone()));
            }
        }
        if self.cfg.serve_unclaimed {
            claimers.spawn(serve_unclaimed(
                self.pool.clone(),
                info.clone(),
                fetcher,
                self.cfg.claimers.max(1),
                self.cfg.poll.max(UNCLAIMED_EVERY),
                claimers.clone(),
                shutdown.clone(),
            ));
        }
        claimers
    }

    /// Lets running jobs finish until the drain deadline; then stops their handlers, and hands back directly the
    /// jobs of handlers that ignore that.
    async fn drain(&self, jobs: &TaskTracker, running: &Running, settle: &settle::Outbox) {
        jobs.close();
        if tokio::time::timeout(self.cfg.drain, jobs.wait()).await.is_ok() {
            return;
        }
        // Phase two: stop the handlers; each one that stops hands its job back through the completer.
        let held: Vec<CancellationToken> = running
            .lock()
            .map(|r| r.values().map(|(_, t)| t.clone()).collect())
            .unwrap_or_default();
        tracing::warn!(jobs = held.len(), "drain deadline passed; handing back unfinished jobs");
        for t in held {
            t.cancel();
        }
        if tokio::time::timeout(HANDLER_STOP_GRACE, jobs.wait()).await.is_ok() {
            return;
        }
        // Handlers that ignore cancellation: hand their jobs back directly; their late outcomes are fenced.
        let left: Vec<(JobId, i32)> = running
            .lock()
            .map(|r| r.iter().map(|(id, (a, _))| (*id, *a)).collect())
            .unwrap_or_default();
        for (id, attempt) in left {
            settle.send(Settle {
                id,
                attempt,
                kind: SettleKind::HandBack,
                lane: None,
            });
        }
    }
}

/// What the parts of a running worker share.
struct Shared {
    /// Jobs held, with their attempt and cancel token.
    running: Running,
    /// Per-queue wake-ups of the claim loops.
    signals: WakeSignals,
    /// What the completer does after settling jobs of concurrency keys.
    lanes: settle::LaneHook,
    /// Jobs held at most (`concurrency + prefetch`).
    held: Arc<Semaphore>,
    /// The prefetch now (changes when automatic).
    prefetch: Arc<AtomicUsize>,
    /// Jobs finished so far, for the automatic prefetch's rate.
    finished: Arc<AtomicU64>,
}

impl Shared {
    fn new(cfg: &WorkerConfig) -> Self {
        let prefetch = match cfg.prefetch {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto => auto_prefetch(0.0, cfg.concurrency),
        };
        let signals = WakeSignals::new(&cfg.queues);
        Shared {
            running: Arc::default(),
            lanes: settle::LaneHook {
                signals: signals.clone(),
                release: Arc::new(tokio::sync::Notify::new()),
            },
            signals,
            held: Arc::new(Semaphore::new(cfg.concurrency + prefetch)),
            prefetch: Arc::new(AtomicUsize::new(prefetch)),
            finished: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The last step of a stop, once outcomes are flushed: stops the background tasks, waits for them and
/// deregisters the worker.
async fn leave(pool: &PgPool, worker_id: &str, background: &CancellationToken, tasks: &TaskTracker) {
    background.cancel();
    tasks.close();
    tasks.wait().await;
    let _ = queue::deregister_worker(pool, worker_id).await;
}

/// Settles lane marks when poked after this worker finished jobs of concurrency keys, and wakes its fetchers of
/// the queues whose jobs that released. Pokes arriving meanwhile coalesce into one more round, and rounds are at
/// least [`LANE_ROUND_GAP`] apart.
async fn release_lanes(pool: PgPool, lanes: settle::LaneHook, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lanes.release.notified() => {}
        }
        let next_round = tokio::time::Instant::now() + LANE_ROUND_GAP;
        match queue::release_lanes(&pool, 500).await {
            Ok(queues) => {
                lanes.wake(queues.iter().map(String::as_str));
            }
            Err(e) => tracing::warn!(error = %e, "failed to settle lane marks"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_round) => {}
        }
    }
}

/// Pool `default` serves every queue no other pool claims (CONTRACT §8), including queues first used after this
/// worker started: looks for them every poll interval, starts claim loops for new ones on `claimers` and
/// re-registers with them, so `/api/queues` no longer counts their jobs as unclaimable.
async fn serve_unclaimed(
    pool: PgPool,
    mut info: WorkerInfo,
    fetcher: impl Fn(&str) -> Fetcher,
    per_queue: usize,
    every: Duration,
    claimers: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        match crate::rollout::unclaimed_queues(&pool).await {
            Ok(found) => {
                let new: Vec<String> = found.into_iter().filter(|q| !info.queues.contains(q)).collect();
                if !new.is_empty() {
                    tracing::info!(queues = ?new, "serving queues no other pool claims");
                    for q in &new {
                        for _ in 0..per_queue {
                            claimers.spawn(fetcher(q).run(shutdown.clone()));
                        }
                    }
                    info.queues.extend(new);
                    // Re-registering clears `stopping`: never once the worker began to stop.
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if let Err(e) = queue::register_worker(&pool, &info).await {
                        tracing::warn!(error = %e, "failed to re-register the worker with its new queues");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to look for queues no other pool claims"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn register_with_retry(pool: &PgPool, info: &WorkerInfo, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new(retry::FIRST_DELAY, retry::MAX_DELAY);
    loop {
        match queue::register_worker(pool, info).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff.delay(), "failed to register worker"),
        }
        if !backoff.wait(shutdown).await {
            return;
        }
    }
}

/// Every third of the lease: refresh the worker row and extend the leases of held jobs; a job whose lease was
/// lost has its handler stopped (its outcome would be refused anyway). When this worker's version has been
/// retired (its rollout moved on), `retire` is cancelled: the worker stops claiming, drains and exits 0.
async fn heartbeat_loop(
    pool: PgPool,
    info: WorkerInfo,
    running: Running,
    lease: Duration,
    stop: CancellationToken,
    retire: CancellationToken,
) {
    let every = lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match queue::heartbeat_worker(&pool, &info.id, retire.is_cancelled()).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = queue::register_worker(&pool, &info).await;
            }
            Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
        }
        if !retire.is_cancelled() {
            match crate::rollout::role_of(&pool, &info.pool, &info.version).await {
                Ok(Some(crate::rollout::Role::Retired)) => {
                    tracing::info!(pool = %info.pool, pool.version = %info.version,
                        "this version was retired; stopping");
                    retire.cancel();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "failed to read the worker's pool version role"),
            }
        }
        let held: Vec<(JobId, i32)> = running
            .lock()
            .map(|r| r.iter().map(|(id, (a, _))| (*id, *a)).collect())
            .unwrap_or_default();
        if held.is_empty() {
            continue;
        }
        match queue::heartbeat(&pool, &held, lease).await {
            Ok(kept) => {
                if kept.len() < held.len() {
                    let kept: std::collections::HashSet<JobId> = kept.into_iter().collect();
                    if let Ok(r) = running.lock() {
                        for (id, (attempt, token)) in r.iter() {
                            if held.iter().any(|(h, a)| h == id && a == attempt) && !kept.contains(id) {
                                tracing::warn!(job.id = %id, attempt, "lease lost; stopping the handler");
                                token.cancel();
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
        }
    }
}

/// A worker id unique per process: host, process id and a random suffix (also its lease owner name).
fn new_worker_id() -> String {
    format!("{}-{}-{:08x}", hostname(), std::process::id(), rand::random::<u32>())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
