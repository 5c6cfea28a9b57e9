//! [`OrdoBackend`]: apalis's `Backend` over ordo's queue.

use std::future::Future as _;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Durable;
use apalis_core::backend::queue::Queue as TaskQueue;
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use ordo::queue::{Job, JobId};
use ordo::runtime::embed::{self, Embedded, Holder};
use ordo::runtime::SettleKind;
use ordo::wake::Waker;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fetch::{Claimed, Engine};
use crate::settle::{OrdoJob, SettleLayer, Shared};
use crate::sink::PushState;
use crate::{Config, Error, JsonCodec, CONCURRENCY_KEY};

/// An apalis backend whose tasks of type `Args` are ordo jobs of [`Config::kind`] (see the crate docs).
///
/// Clones share the pool and configuration; each clone given to a `WorkerBuilder` runs its own claim loop, lease
/// keeping and completer, started when the worker first polls it. A clone kept for pushing runs nothing.
pub struct OrdoBackend<Args> {
    pub(crate) pool: PgPool,
    pub(crate) config: Config,
    pub(crate) waker: Waker,
    /// Poked by pushes of every clone, so this process's claim loops look at once.
    pub(crate) pushed: Arc<Notify>,
    pub(crate) push: PushState,
    worker: Option<WorkerState>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> Clone for OrdoBackend<Args> {
    fn clone(&self) -> Self {
        OrdoBackend {
            pool: self.pool.clone(),
            config: self.config.clone(),
            waker: self.waker.clone(),
            pushed: self.pushed.clone(),
            push: PushState::default(),
            worker: None,
            _args: PhantomData,
        }
    }
}

impl<Args> std::fmt::Debug for OrdoBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdoBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a worker's backend holds: made with the worker's middleware, started at its first poll.
struct WorkerState {
    holder: Holder,
    permits: Arc<Semaphore>,
    /// Taken when the background work starts.
    start: Option<(Embedded, mpsc::UnboundedSender<Claimed>)>,
    rx: mpsc::UnboundedReceiver<Claimed>,
    stop: CancellationToken,
    engine: Option<JoinHandle<()>>,
    closing: bool,
    info: ordo::queue::WorkerInfo,
}

impl<Args> OrdoBackend<Args> {
    /// A backend on `pool` (an ordo database, migrated by `ordo migrate`).
    pub fn new(pool: PgPool, config: Config) -> Self {
        OrdoBackend {
            pool,
            config,
            waker: Waker::disabled(),
            pushed: Arc::new(Notify::new()),
            push: PushState::default(),
            worker: None,
            _args: PhantomData,
        }
    }

    /// Publishes a wake-up with every push, so idle workers elsewhere start the jobs at once (see
    /// [`ordo::wake::Waker`]); by default only this process's workers are told.
    pub fn with_waker(mut self, waker: Waker) -> Self {
        self.waker = waker;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The worker id this backend's claims are leased to, once a worker uses it (ordo's lease owner).
    pub fn worker_id(&self) -> Option<&str> {
        self.worker.as_ref().map(|w| w.info.id.as_str())
    }

    fn start(&mut self, worker: &WorkerContext) {
        let Some(state) = self.worker.as_mut() else {
            return;
        };
        let Some((embedded, tx)) = state.start.take() else {
            return;
        };
        let engine = Engine {
            pool: self.pool.clone(),
            config: self.config.clone(),
            embedded,
            info: state.info.clone(),
            tx,
            permits: state.permits.clone(),
            pushed: self.pushed.clone(),
            worker: worker.clone(),
            stop: state.stop.clone(),
        };
        state.engine = Some(tokio::spawn(engine.run()));
    }
}

/// The task a claimed job becomes: its args, ordo's id as the task id, ordo's attempt (apalis counts the run
/// that is starting, so the counter starts one lower), its limits and keys, and [`OrdoJob`] in its data.
fn task_of(job: Job, worker_id: &str) -> Task<Value> {
    let mut metadata = MetadataStore::new();
    if let Some(k) = &job.concurrency_key {
        let _ = metadata.insert(CONCURRENCY_KEY, k.clone());
    }
    let info = OrdoJob {
        id: job.id,
        attempt: job.attempt,
        account: job.account_id,
        queue: job.queue.clone(),
        concurrency_key: job.concurrency_key,
    };
    let mut task = TaskBuilder::new(job.args)
        .task_id(TaskId::from_int(u64::try_from(job.id.0).unwrap_or_default()))
        .attempt(usize::try_from(job.attempt - 1).unwrap_or_default())
        .max_attempts(usize::try_from(job.max_attempts).unwrap_or_default())
        .priority(usize::try_from(job.priority).unwrap_or_default())
        .queue(TaskQueue::from(job.queue))
        .run_at_timestamp(u64::try_from(job.run_at.timestamp()).unwrap_or_default())
        .lock_by(Some(worker_id.to_owned()))
        .lock_at(job.started_at.and_then(|t| u64::try_from(t.timestamp()).ok()))
        .with_metadata(metadata)
        .data(info);
    if let Some(k) = job.idempotency_key {
        task = task.idempotency_key(k);
    }
    task.build()
}

impl<Args> Backend for OrdoBackend<Args>
where
    Args: DeserializeOwned,
{
    type Task = Task<Value>;
    type Error = Error;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Error>> {
        self.start(worker);
        Poll::Ready(Ok(()))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Option<Result<Task<Value>, Error>>> {
        self.start(worker);
        let Some(state) = self.worker.as_mut() else {
            // Not given to a worker (no middleware was asked for): nothing to fetch.
            return Poll::Ready(None);
        };
        loop {
            let Some((job, lease)) = std::task::ready!(state.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            if lease.is_cancelled() {
                // Lost while waiting here: maintenance gave it to someone else.
                state.holder.forget(job.id);
                state.permits.add_permits(1);
                continue;
            }
            if let Err(e) = Args::deserialize(&job.args) {
                // Malformed args fail the job for good instead of stopping the worker with a decoding error.
                let message = format!("args are not a valid {}: {e}", std::any::type_name::<Args>());
                tracing::info!(job.id = %job.id, error = %message, "attempt failed permanently");
                let lane = job.concurrency_key.as_ref().map(|_| job.queue.clone());
                let kind = SettleKind::Fail {
                    message,
                    permanent: true,
                    after: None,
                };
                state.holder.settle(job.id, job.attempt, kind, lane);
                state.permits.add_permits(1);
                continue;
            }
            return Poll::Ready(Some(Ok(task_of(job, &state.info.id))));
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Error>> {
        let Some(state) = self.worker.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if !state.closing {
            state.closing = true;
            // Fetched but never started: back to the queue at once, the attempt not used up. The claim loop hands
            // back what a claim in flight brings, as the channel is closed now.
            state.rx.close();
            let mut back: Vec<(JobId, i32)> = Vec::new();
            while let Ok((job, _)) = state.rx.try_recv() {
                back.push((job.id, job.attempt));
            }
            if !back.is_empty() {
                tracing::info!(jobs = back.len(), "handing back jobs fetched but not started");
            }
            for (id, attempt) in back {
                state.holder.hand_back(id, attempt);
            }
            state.stop.cancel();
        }
        let Some(engine) = state.engine.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let done = std::task::ready!(std::pin::Pin::new(engine).poll(cx));
        state.engine = None;
        Poll::Ready(done.map_err(|e| Error::Runtime(e.to_string())))
    }
}

impl<Args> BackendConfig for OrdoBackend<Args> {
    type Args = Args;
    type Id = JobId;
    type Kind = Durable;
    type Config = Config;
    type Layer = SettleLayer;

    fn config(&self) -> &Config {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> SettleLayer {
        let queues = vec![self.config.queue.clone()];
        let embedded = Embedded::new(&queues);
        let holder = embedded.holder();
        let permits = Arc::new(Semaphore::new(self.config.held));
        let (tx, rx) = mpsc::unbounded_channel();
        let info = embed::worker_info(
            &self.config.pool,
            &self.config.version,
            queues,
            vec![self.config.kind.clone()],
            self.config.held,
        );
        let shared = Arc::new(Shared {
            holder: holder.clone(),
            permits: permits.clone(),
            warned: AtomicBool::new(false),
        });
        self.worker = Some(WorkerState {
            holder,
            permits,
            start: Some((embedded, tx)),
            rx,
            stop: CancellationToken::new(),
            engine: None,
            closing: false,
            info,
        });
        SettleLayer { shared }
    }
}

impl<Args> WireFormatBackend for OrdoBackend<Args> {
    type Codec = JsonCodec;
    type Compact = Value;

    fn codec(&self) -> &JsonCodec {
        &JsonCodec
    }
}
