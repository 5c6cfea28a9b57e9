//! The backend's background work: ordo's embedded runtime (registration, heartbeats, completer, maintenance) and
//! the claim loop that feeds the worker.

use std::sync::Arc;
use std::time::Duration;

use apalis_core::worker::context::WorkerContext;
use ordo::queue::{self, ClaimRequest, Job, WorkerInfo};
use ordo::runtime::embed::{gather_permits, EmbedConfig, Embedded, Holder};
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// A claimed job on its way to the worker, with the token that fires if its lease is lost meanwhile.
pub(crate) type Claimed = (Job, CancellationToken);

/// Everything the background work needs.
pub(crate) struct Engine {
    pub pool: PgPool,
    pub config: Config,
    pub embedded: Embedded,
    pub info: WorkerInfo,
    pub tx: mpsc::UnboundedSender<Claimed>,
    pub permits: Arc<Semaphore>,
    /// Poked by pushes through any clone of the backend in this process.
    pub pushed: Arc<Notify>,
    pub worker: WorkerContext,
    /// Fired by the backend's close, once the jobs it had buffered were handed back.
    pub stop: CancellationToken,
}

impl Engine {
    /// Claims until the backend closes (or the worker stops, or its version is retired), then keeps settling
    /// until the close, flushes every outcome and deregisters.
    pub async fn run(self) {
        let Engine {
            pool,
            config,
            embedded,
            info,
            tx,
            permits,
            pushed,
            worker,
            stop,
        } = self;
        let holder = embedded.holder();
        let signals = embedded.signals();
        let runtime_stop = CancellationToken::new();
        let retired = CancellationToken::new();
        let embed = EmbedConfig {
            lease: config.lease,
            retry: config.retry,
            maintenance: config.maintenance,
            ..EmbedConfig::default()
        };
        let runtime =
            tokio::spawn(embedded.run(pool.clone(), info.clone(), embed, runtime_stop.clone(), retired.clone()));
        if let Some(url) = config.redis_url.as_deref() {
            match ordo::wake::client(url, None) {
                Ok(client) => {
                    let ns = ordo::wake::namespace(&pool).await;
                    tokio::spawn(ordo::wake::subscribe(client, ns, signals.clone(), runtime_stop.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "invalid Redis settings; wake-ups off, polling only"),
            }
        }
        let woken = signals.get(&config.queue).unwrap_or_default();
        let claimer = Claimer {
            pool,
            config,
            worker_id: info.id,
            holder,
            permits,
            tx,
            woken,
            pushed,
        };
        claimer.run(&stop, &retired, &worker).await;
        if retired.is_cancelled() {
            tracing::info!("this worker's pool version was retired; no more claims");
        }
        // Tasks still running settle through the runtime until the worker has drained them and closes.
        stop.cancelled().await;
        runtime_stop.cancel();
        if let Err(e) = runtime.await {
            tracing::error!(error = %e, "the embedded ordo runtime failed");
        }
    }
}

/// The claim loop of one queue.
struct Claimer {
    pool: PgPool,
    config: Config,
    worker_id: String,
    holder: Holder,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Claimed>,
    woken: Arc<Notify>,
    pushed: Arc<Notify>,
}

impl Claimer {
    async fn run(self, stop: &CancellationToken, retired: &CancellationToken, worker: &WorkerContext) {
        let kinds = vec![self.config.kind.clone()];
        let mut error_delay = Duration::from_millis(50);
        // Poll fast right after finding work; back off towards the configured interval while idle.
        let mut idle = Duration::from_millis(10);
        // The turn and the credits of the accounts sharing the queue, kept between claims.
        let mut share = queue::FairShare::new();
        let stopped = || stop.is_cancelled() || retired.is_cancelled() || worker.is_shutting_down();
        while !stopped() {
            // Permits before the claim: never hold more than `held` jobs.
            let want = (self.config.held / 4).max(1);
            let gathered = tokio::select! {
                _ = stop.cancelled() => return,
                _ = retired.cancelled() => return,
                p = gather_permits(&self.permits, want, self.config.max_claim) => p,
            };
            let Some(mut permits) = gathered else {
                return;
            };
            let wanted = permits.len();
            let req = ClaimRequest {
                queue: &self.config.queue,
                kinds: &kinds,
                pool: &self.config.pool,
                version: &self.config.version,
                worker_id: &self.worker_id,
                lease: self.config.lease,
                limit: wanted as i64,
            };
            let claimed = match self.pool.acquire().await {
                Ok(mut conn) => queue::claim(&mut conn, &req, &mut share).await,
                Err(e) => Err(e.into()),
            };
            let jobs = match claimed {
                Ok(jobs) => jobs,
                Err(e) => {
                    drop(permits);
                    tracing::warn!(queue = %self.config.queue, error = %e, retry_in = ?error_delay, "claim failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(error_delay) => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            error_delay = Duration::from_millis(50);
            let got = jobs.len();
            for job in jobs {
                // Its permit now travels with the job and comes back when the job is settled.
                if let Some(p) = permits.pop() {
                    p.forget();
                }
                let lease = self.holder.hold(&job);
                let (id, attempt) = (job.id, job.attempt);
                if self.tx.send((job, lease)).is_err() {
                    // The backend closed while this claim ran: the job never reaches the worker.
                    self.holder.hand_back(id, attempt);
                }
            }
            drop(permits);
            if got > 0 {
                idle = Duration::from_millis(10);
                // A full claim: more is likely waiting.
                if got == wanted {
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = retired.cancelled() => return,
                _ = self.woken.notified() => {}
                _ = self.pushed.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
            idle = (idle * 2).min(self.config.poll);
        }
    }
}
