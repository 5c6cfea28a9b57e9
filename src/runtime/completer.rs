//! Settles job outcomes in batches. Whatever arrived while the previous write was in flight goes out together,
//! so a lone job is settled at once and a busy worker writes hundreds per statement. Outcomes are never
//! dropped on a database error: the batch is retried until it lands (a lease that expires meanwhile fences it).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settle::{LaneHook, Settle, SettleKind, Unwritten};
use crate::queue::{self, Completion, Failure, RetryPolicy, Snooze};
use crate::retry::{self, Backoff};
use crate::telemetry::metrics as m;

const MAX_BATCH: usize = 2000;
/// A settle write is on the critical path of every job: retry it sooner than a reconnect.
const SETTLE_RETRY_FIRST: Duration = Duration::from_millis(50);

/// The worker's offer to run the next job of each lane its completions release (see
/// [`queue::complete_handing_off`]), so a busy key's jobs follow each other on this worker without a claim.
pub(crate) struct Offer {
    pub worker_id: String,
    pub lease: Duration,
    pub kinds: Vec<String>,
    pub queues: Vec<String>,
    pub pool: String,
    pub version: String,
    /// The worker's `concurrency + prefetch` permits: a job is handed over only with one of them.
    pub held: std::sync::Arc<tokio::sync::Semaphore>,
    pub dispatch: super::Dispatch,
    /// Once the worker stops, nothing more is handed over (and the offer, which holds a sender of this
    /// completer's channel through the attempt runner, is dropped so the channel can close).
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Completes jobs, handing the worker the next job of each lane they release when it has permits for them.
/// Returns how many were completed.
async fn complete_and_hand_off(
    pool: &PgPool,
    complete: &[Completion],
    keyed: usize,
    offer: Option<&Offer>,
) -> queue::Result<usize> {
    let Some(offer) = offer.filter(|o| keyed > 0 && !o.stopping.is_cancelled()) else {
        return Ok(queue::complete_many(pool, complete).await?.len());
    };
    let mut permits = Vec::new();
    while permits.len() < keyed {
        match offer.held.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    if permits.is_empty() {
        return Ok(queue::complete_many(pool, complete).await?.len());
    }
    // One transaction: the jobs handed over are read back before it commits, so none can be leased to this
    // worker without reaching it (on an error the batch is written again, and the completions are fenced).
    let mut tx = pool.begin().await?;
    let (done, handed) = queue::complete_handing_off(
        &mut tx,
        complete,
        &queue::HandOff {
            worker_id: &offer.worker_id,
            lease: offer.lease,
            kinds: &offer.kinds,
            queues: &offer.queues,
            pool: &offer.pool,
            version: &offer.version,
            limit: permits.len() as i64,
        },
    )
    .await?;
    tx.commit().await?;
    for job in handed {
        metrics::counter!(m::JOBS_CLAIMED_TOTAL, "queue" => m::queue_label(&job.queue)).increment(1);
        offer.dispatch.start(job, permits.pop());
    }
    Ok(done.len())
}

/// The completer's end of the channel, and the count its writes take off.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Settle>,
    unwritten: Option<Arc<Unwritten>>,
}

impl Inbox {
    fn written(&self, n: usize) {
        if let Some(u) = &self.unwritten {
            u.written(n);
        }
    }
}

/// A running completer, owned by the worker that started it.
pub(crate) struct Completer {
    task: TaskTracker,
    give_up: CancellationToken,
}

impl Completer {
    /// Starts settling what arrives on `rx` (see [`run`]), taking what it writes off `unwritten`'s count.
    pub(crate) fn start(
        pool: PgPool,
        rx: mpsc::UnboundedReceiver<Settle>,
        unwritten: Option<Arc<Unwritten>>,
        retry: RetryPolicy,
        lanes: LaneHook,
        offer: Option<Offer>,
    ) -> Self {
        let give_up = CancellationToken::new();
        let task = TaskTracker::new();
        task.spawn(run(pool, Inbox { rx, unwritten }, retry, lanes, offer, give_up.clone()));
        task.close();
        Completer { task, give_up }
    }

    /// Waits until every outcome sent is written (the senders are gone), for at most `deadline`; what is left then
    /// is dropped, and its leases expire and are rescued.
    pub(crate) async fn finish(self, deadline: Duration) {
        if tokio::time::timeout(deadline, self.task.wait()).await.is_err() {
            tracing::error!("could not flush job outcomes before exit; their leases will expire and be rescued");
            self.give_up.cancel();
            self.task.wait().await;
        }
    }
}

/// Settles what arrives on `rx` until every sender is gone. A failed write is retried until it lands or `give_up`
/// fires (the worker's flush deadline passed: the leases of what is left expire and maintenance rescues them).
async fn run(
    pool: PgPool,
    mut inbox: Inbox,
    retry: RetryPolicy,
    lanes: LaneHook,
    mut offer: Option<Offer>,
    give_up: CancellationToken,
) {
    let mut batch: Vec<Settle> = Vec::with_capacity(MAX_BATCH);
    loop {
        let stopping = offer.as_ref().map(|o| o.stopping.clone());
        let next = tokio::select! {
            s = inbox.rx.recv() => s,
            _ = async { if let Some(t) = &stopping { t.cancelled().await } else { std::future::pending().await } } => {
                offer = None;
                continue;
            }
        };
        match next {
            Some(s) => batch.push(s),
            None => return,
        }
        while batch.len() < MAX_BATCH {
            match inbox.rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let mut backoff = Backoff::new(SETTLE_RETRY_FIRST, retry::MAX_DELAY);
        loop {
            match write(&pool, &batch, retry, offer.as_ref()).await {
                Ok(()) => {
                    lanes.settled(batch.iter().filter_map(|s| s.lane.as_deref()));
                    inbox.written(batch.len());
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), retry_in = ?backoff.delay(), "failed to settle jobs; retrying");
                    if !backoff.wait(&give_up).await {
                        return;
                    }
                }
            }
        }
        batch.clear();
    }
}

async fn write(pool: &PgPool, batch: &[Settle], retry: RetryPolicy, offer: Option<&Offer>) -> queue::Result<()> {
    let mut complete = Vec::new();
    let mut keyed_completions = 0;
    let mut fail = Vec::new();
    let mut snooze = Vec::new();
    let mut cancel = Vec::new();
    let mut back = Vec::new();
    let now = Utc::now();
    for s in batch {
        match &s.kind {
            SettleKind::Complete(v) => {
                keyed_completions += usize::from(s.lane.is_some());
                complete.push(Completion {
                    id: s.id,
                    attempt: s.attempt,
                    result: v.clone(),
                })
            }
            SettleKind::Fail {
                message,
                permanent,
                after,
            } => {
                let delay = after.unwrap_or_else(|| queue::backoff(retry, s.attempt));
                fail.push(Failure {
                    id: s.id,
                    attempt: s.attempt,
                    message: message.clone(),
                    permanent: *permanent,
                    retry_at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1)),
                })
            }
            SettleKind::Snooze(d) => snooze.push(Snooze {
                id: s.id,
                attempt: s.attempt,
                delay: *d,
            }),
            SettleKind::Cancel(r) => cancel.push((s.id, s.attempt, r.clone())),
            SettleKind::HandBack => back.push((s.id, s.attempt)),
        }
    }
    let mut settled = 0;
    settled += complete_and_hand_off(pool, &complete, keyed_completions, offer).await?;
    settled += queue::fail_many(pool, &fail).await?.len();
    settled += queue::snooze_many(pool, &snooze).await?.len();
    settled += queue::cancel_running(pool, &cancel).await?.len();
    settled += queue::hand_back(pool, &back).await?.len();
    if settled < batch.len() {
        // Fenced off: the lease was taken over (or the job cancelled); the new owner decides.
        tracing::info!(
            refused = batch.len() - settled,
            "outcomes refused: lease no longer held"
        );
    }
    // Counted once the writes landed: a retried batch is not counted twice.
    for (outcome, n) in [
        ("completed", complete.len()),
        ("failed", fail.len()),
        ("snoozed", snooze.len()),
        ("cancelled", cancel.len()),
        ("handed_back", back.len()),
    ] {
        if n > 0 {
            metrics::counter!(crate::telemetry::metrics::JOBS_SETTLED_TOTAL, "outcome" => outcome).increment(n as u64);
        }
    }
    Ok(())
}
