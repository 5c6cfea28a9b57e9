//! Claim loops and the start of held jobs: a fetcher claims a queue's jobs while the worker has permits, and
//! [`Dispatch`] starts each job the worker holds (claimed, or handed over by a completion) as a slot frees.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settle::MAX_UNWRITTEN;
use super::{attempt, Running, WorkerConfig};
use crate::queue::{self, ClaimRequest, FairShare};
use crate::retry::{self, Backoff};
use crate::telemetry::metrics as m;

/// A failed claim (the database gone or overloaded) is retried sooner than a reconnect: claiming is the worker's
/// work, and the backoff still reaches [`retry::MAX_DELAY`] within a few attempts.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The poll right after a claim found work: more is likely waiting, and a wake-up can arrive mid-claim and be lost.
const BUSY_POLL: Duration = Duration::from_millis(10);
/// How long a claim waits for more slots to free up, so one statement claims for several of them.
pub(super) const GATHER: Duration = Duration::from_millis(2);

/// How often a fetcher whose claims walk from floors tells its scout where they start.
const PUBLISH: Duration = Duration::from_millis(100);

/// What a fetcher and its scout share: where the claims walk from, and the scout's latest report.
#[derive(Default)]
struct Board {
    /// `None` while claims walk from the start: the scout then waits.
    floors: Option<Vec<queue::Floor>>,
    report: Option<queue::Scouted>,
}

/// A fetcher's scout (see [`queue::scout`]): while its claims walk from floors, it walks the queue from the start
/// on a connection of its own, as often as a claim would have, and leaves its report on the board.
struct Scout {
    pool: PgPool,
    queue: String,
    kinds: Vec<String>,
    version: String,
    board: Arc<Mutex<Board>>,
}

impl Scout {
    async fn run(self, stop: CancellationToken) {
        let mut every = queue::FULL_WALK_EVERY;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            every = queue::FULL_WALK_EVERY;
            let Some(floors) = self.board.lock().ok().and_then(|b| b.floors.clone()) else {
                continue;
            };
            let scouted = match self.pool.acquire().await {
                Ok(mut conn) => queue::scout(&mut conn, &self.queue, &self.kinds, &self.version, &floors).await,
                Err(e) => Err(e.into()),
            };
            match scouted {
                Ok(report) => {
                    tracing::debug!(
                        queue = %self.queue, took_ms = report.took.as_millis() as u64, reads = report.reads,
                        behind = report.behind, "scouted behind the claim floors"
                    );
                    every = queue::scout_every(report.took);
                    if let Ok(mut b) = self.board.lock() {
                        b.report = Some(report);
                    }
                }
                // The claims walk from the start again once the floors' time is up without a report.
                Err(e) if !stop.is_cancelled() => {
                    tracing::warn!(queue = %self.queue, error = %e, "scouting behind the claim floors failed");
                }
                Err(_) => return,
            }
        }
    }
}

/// Claims jobs of one queue while there are free slots, waking on a Redis publish or polling.
pub(super) struct Fetcher {
    pub(super) pool: PgPool,
    pub(super) queue: String,
    pub(super) kinds: Vec<String>,
    pub(super) cfg: WorkerConfig,
    pub(super) worker_id: String,
    /// Jobs held, running or waiting for a slot (`concurrency + prefetch`).
    pub(super) held: Arc<Semaphore>,
    /// The prefetch right now (it changes when automatic).
    pub(super) prefetch: Arc<AtomicUsize>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) dispatch: Dispatch,
}

/// Starts jobs this worker holds (claimed, or handed over by a completion): each waits for a slot, then runs; at
/// shutdown one still waiting is handed back at once.
#[derive(Clone)]
pub(crate) struct Dispatch {
    pub(super) exec: Arc<attempt::AttemptRunner>,
    /// Slots to run in (`concurrency`).
    pub(super) slots: Arc<Semaphore>,
    pub(super) running: Running,
    /// Jobs this worker finished, for an automatic prefetch's rate.
    pub(super) finished: Arc<AtomicU64>,
    pub(super) jobs: TaskTracker,
}

impl Dispatch {
    /// Starts `job`, which holds `permit` (one of `concurrency + prefetch`) until it is done.
    pub(crate) fn start(&self, job: queue::Job, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        let exec = self.exec.clone();
        let slots = self.slots.clone();
        let finished = self.finished.clone();
        // Held from the claim on: the heartbeat keeps its lease, and a lost lease stops it.
        let cancel = CancellationToken::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(job.id, (job.attempt, cancel.clone()));
        }
        self.jobs.spawn(async move {
            let slot = tokio::select! {
                biased;
                _ = exec.stopping.cancelled() => None,
                _ = cancel.cancelled() => None,
                s = slots.acquire_owned() => s.ok(),
            };
            let Some(slot) = slot else {
                // Stopping: give the waiting job back at once (its attempt not used up). Lease lost: the job is
                // someone else's now.
                exec.release_unstarted(job, !cancel.is_cancelled());
                drop(permit);
                return;
            };
            exec.execute(job, cancel).await;
            finished.fetch_add(1, Ordering::Relaxed);
            drop(slot);
            drop(permit);
        });
    }
}

impl Fetcher {
    /// Claims until `shutdown`.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let mut errors = Backoff::new(CLAIM_RETRY_FIRST, retry::MAX_DELAY);
        // Poll fast right after finding work; back off towards the configured interval while idle.
        let mut idle = BUSY_POLL;
        let mut share = FairShare::new();
        let board = Arc::new(Mutex::new(Board::default()));
        let scouting = shutdown.child_token();
        // Ends the scout with this loop, whichever way it returns.
        let _scouting = scouting.clone().drop_guard();
        tokio::spawn(
            Scout {
                pool: self.pool.clone(),
                queue: self.queue.clone(),
                kinds: self.kinds.clone(),
                version: self.cfg.version.clone(),
                board: board.clone(),
            }
            .run(scouting),
        );
        let mut published = None::<std::time::Instant>;
        loop {
            // No claim while the completer is behind: what the worker holds must not outgrow what it can settle.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.dispatch.exec.settle.room(MAX_UNWRITTEN) => {}
            }
            // A permit before the claim: never hold more than concurrency + prefetch jobs.
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = self.held.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            // Under load, permits come back one by one as handlers finish; claiming each at once would mean many
            // tiny claims. Gather a quarter of them (briefly) first; when idle they are all free anyway.
            let mut permits = vec![first];
            let want =
                ((self.cfg.concurrency + self.prefetch.load(Ordering::Relaxed)) / 4).clamp(1, self.cfg.max_claim);
            let gather_until = tokio::time::Instant::now() + GATHER;
            while permits.len() < want {
                match tokio::time::timeout_at(gather_until, self.held.clone().acquire_owned()).await {
                    Ok(Ok(p)) => permits.push(p),
                    _ => break,
                }
            }
            while permits.len() < self.cfg.max_claim {
                match self.held.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let req = ClaimRequest {
                queue: &self.queue,
                kinds: &self.kinds,
                pool: &self.cfg.pool,
                version: &self.cfg.version,
                worker_id: &self.worker_id,
                lease: self.cfg.lease,
                limit: permits.len() as i64,
            };
            let wanted = permits.len();
            let started = std::time::Instant::now();
            // Only while the scout has floors is there a report to take: no lock on the board otherwise.
            if published.is_some() {
                if let Some(report) = board.lock().ok().and_then(|mut b| b.report.take()) {
                    share.scouted(started, report);
                }
            }
            let claimed = match self.pool.acquire().await {
                Ok(mut conn) => queue::claim(&mut conn, &req, &mut share).await,
                Err(e) => Err(e.into()),
            };
            // The scout reads the floors at most every PUBLISH (its walks come a second or more apart), and the board
            // is touched only while claims walk from floors or just stopped to.
            if published.is_none_or(|at| at.elapsed() >= PUBLISH) {
                let floors = share.scout_floors();
                let on = floors.is_some();
                if on || published.is_some() {
                    if let Ok(mut b) = board.lock() {
                        // A report of a walk made for floors that ended since would be taken for the next ones.
                        if !on {
                            b.report = None;
                        }
                        b.floors = floors;
                    }
                }
                published = on.then(std::time::Instant::now);
            }
            match claimed {
                Ok(jobs) => {
                    let took = started.elapsed().as_secs_f64();
                    let label = m::queue_label(&self.queue);
                    if !jobs.is_empty() {
                        metrics::counter!(m::JOBS_CLAIMED_TOTAL, "queue" => label.clone()).increment(jobs.len() as u64);
                    }
                    metrics::histogram!(m::CLAIM_DURATION_SECONDS, "queue" => label).record(took);
                    errors.reset();
                    let got = jobs.len();
                    for job in jobs {
                        self.dispatch.start(job, permits.pop());
                    }
                    drop(permits);
                    if got == wanted {
                        idle = BUSY_POLL;
                        continue;
                    }
                    if got > 0 {
                        idle = BUSY_POLL;
                    }
                }
                Err(e) => {
                    drop(permits);
                    tracing::warn!(queue = %self.queue, error = %e, retry_in = ?errors.delay(), "claim failed");
                    if !errors.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
            idle = (idle * 2).min(self.cfg.poll);
        }
    }
}
