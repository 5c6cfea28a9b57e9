//! Group commit for single-job enqueues: concurrent `POST /api/jobs` requests of one account share a transaction.
//!
//! Every transaction costs PostgreSQL several round trips and a WAL flush; under load most of them are the same
//! shape (one insert). Requests queue here; a dispatcher takes everything waiting whenever a flush slot is free
//! and writes each account's share in one account-scoped transaction: one commit (one WAL flush, one BEGIN and
//! COMMIT round trip) for many jobs. At low load a batch is a single job, so latency does not change.
//!
//! Semantics are those of one transaction per request as far as a client can tell: each request gets its own job,
//! replay or 409, and only after the commit. A job whose idempotency key conflicts is answered alone and the rest
//! are written again without it. Jobs are validated before they are queued here, so the only way one request
//! fails its neighbours is the database failing the whole transaction (then every one gets 503 or 500).

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::error::ApiError;
use crate::group_commit::{split_by, GroupCommit, Limits};
use crate::queue::{self, Enqueued, NewJob};
use crate::tenancy::AccountId;
use crate::wake::Waker;

/// Most jobs written by one flush.
const MAX_BATCH: usize = 256;
/// Flushes in flight at once. Few on purpose: while they are busy, requests gather into bigger batches; on two
/// cores four concurrent transactions measured best (about 6 000-7 600 requests/s against 4 000 with sixteen).
pub(crate) const FLUSHES: usize = 4;
/// Requests that may wait before senders feel back-pressure.
const QUEUE_DEPTH: usize = 4096;

struct Pending {
    account: AccountId,
    job: NewJob,
    reply: oneshot::Sender<Result<Enqueued, ApiError>>,
}

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub(crate) struct Enqueuer {
    commits: GroupCommit<Pending>,
}

impl Enqueuer {
    /// Starts the dispatcher with at most `flushes` transactions in flight. It stops when every handle is dropped.
    pub(crate) fn start(pool: PgPool, waker: Waker, flushes: usize) -> Self {
        let target = Target { pool, waker };
        let limits = Limits {
            max_batch: MAX_BATCH,
            flushes,
            depth: QUEUE_DEPTH,
        };
        let commits = GroupCommit::start(limits, move |batch: Vec<Pending>| {
            let target = target.clone();
            async move {
                for (account, pending) in split_by(batch, |p| p.account.clone()) {
                    flush(&target, &account, pending).await;
                }
            }
        });
        Enqueuer { commits }
    }

    /// Enqueues `job` for `account`, committed (and its queue woken) when this returns `Ok`.
    pub(crate) async fn enqueue(&self, account: AccountId, job: NewJob) -> Result<Enqueued, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.commits
            .submit(Pending { account, job, reply })
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".to_owned()))?;
        rx.await
            .map_err(|_| ApiError::Internal("enqueue dispatcher dropped a request".to_owned()))?
    }
}

/// Where flushes write.
#[derive(Clone)]
struct Target {
    pool: PgPool,
    waker: Waker,
}

/// Writes one account's pending jobs in one transaction, answering each request after the commit.
async fn flush(target: &Target, account: &AccountId, pending: Vec<Pending>) {
    let (mut replies, mut jobs): (Vec<_>, Vec<_>) = pending.into_iter().map(|p| (p.reply, p.job)).unzip();
    loop {
        let written = match jobs.len() {
            0 => return,
            1 => write_one(target, account, jobs[0].clone()).await.map(|e| vec![e]),
            _ => write_many(target, account, &jobs).await,
        };
        match written {
            Ok(done) => {
                for (reply, e) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(e));
                }
                return;
            }
            Err(queue::Error::IdempotencyConflict { key, index }) => {
                // The transaction rolled back. Answer the conflicting request alone, write the others again.
                let i = index.unwrap_or(0).min(jobs.len() - 1);
                jobs.remove(i);
                let conflict = queue::Error::IdempotencyConflict { key, index: None };
                let _ = replies.remove(i).send(Err(conflict.into()));
            }
            Err(e) => {
                fail_all(replies, e);
                return;
            }
        }
    }
}

/// Answers every request of a failed transaction: the first with the error itself (which logs it when it is
/// internal), the others with an equivalent answer, so the cause is logged once.
fn fail_all(replies: Vec<oneshot::Sender<Result<Enqueued, ApiError>>>, e: queue::Error) {
    let unavailable = matches!(&e, queue::Error::Database(db) if super::error::is_unavailable(db));
    let detail = e.to_string();
    let mut replies = replies.into_iter();
    if let Some(first) = replies.next() {
        let _ = first.send(Err(e.into()));
    }
    for reply in replies {
        let err = if unavailable {
            ApiError::Unavailable("database unavailable; retry later".to_owned())
        } else {
            ApiError::Internal(format!("shared enqueue transaction failed: {detail}"))
        };
        let _ = reply.send(Err(err));
    }
}

async fn write_one(target: &Target, account: &AccountId, job: NewJob) -> Result<Enqueued, queue::Error> {
    let queue_name = job.queue.clone();
    let mut tx = super::auth::begin_tenant(&target.pool, account).await?;
    let out = queue::enqueue(&mut tx, account, job).await?;
    tx.commit().await?;
    if !out.replayed {
        target.waker.wake(&queue_name);
    }
    Ok(out)
}

/// One multi-row insert, then the jobs read back by primary key in one statement of the same transaction: on two
/// cores this beat one insert per job by about 30 % (measured with `benches/http_enqueue.lua`).
async fn write_many(target: &Target, account: &AccountId, jobs: &[NewJob]) -> Result<Vec<Enqueued>, queue::Error> {
    let mut tx = super::auth::begin_tenant(&target.pool, account).await?;
    let outcomes = queue::enqueue_many(&mut tx, account, jobs).await?;
    // Replays in one batch share an id (50 requests with one key), so read each id once and hand out copies.
    let mut ids: Vec<_> = outcomes.iter().map(|o| o.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let read: std::collections::HashMap<_, _> = queue::get_many(&mut *tx, account, &ids)
        .await?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    tx.commit().await?;
    let mut out = Vec::with_capacity(outcomes.len());
    for o in &outcomes {
        let job = read.get(&o.id).cloned().ok_or(queue::Error::NotFound { id: o.id })?;
        out.push(Enqueued {
            job,
            replayed: o.replayed,
        });
    }
    let mut queues: Vec<&str> = jobs
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| !o.replayed)
        .map(|(j, _)| j.queue.as_str())
        .collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        target.waker.wake(q);
    }
    Ok(out)
}
