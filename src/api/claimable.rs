//! Whether a live worker would claim a job: the hint `POST /api/jobs` adds when none would (CONTRACT §4 lets such
//! a job wait, so the enqueue still succeeds; the answer says why it will not start).

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

/// How long one read of the live workers answers for: enqueues are hot, workers change rarely.
const REFRESH: Duration = Duration::from_secs(2);

/// A worker counts as live while its heartbeat is this fresh (as in `/api/queues`).
const LIVE_WORKER: Duration = Duration::from_secs(30);

/// One live worker's queues and kinds.
type Served = (Vec<String>, Vec<String>);

/// The live workers' queues and kinds, read at most every [`REFRESH`].
#[derive(Debug, Default)]
pub(crate) struct LiveKinds {
    seen: Mutex<Option<(Instant, Vec<Served>)>>,
}

impl LiveKinds {
    /// A warning when no live worker serves `queue` with a handler for `kind`; None when one does, or when the
    /// workers cannot be read (the hint is best effort, never a reason to fail an enqueue).
    pub(crate) async fn warning(&self, pool: &PgPool, queue: &str, kind: &str) -> Option<String> {
        let mut seen = self.seen.lock().await;
        let stale = seen.as_ref().is_none_or(|(at, _)| at.elapsed() >= REFRESH);
        if stale {
            match crate::queue::live_workers(pool, LIVE_WORKER).await {
                Ok(workers) => {
                    *seen = Some((
                        Instant::now(),
                        workers.into_iter().map(|w| (w.queues, w.kinds)).collect(),
                    ));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "failed to read live workers for the unknown-kind hint");
                    return None;
                }
            }
        }
        let workers = seen.as_ref().map(|(_, w)| w.as_slice()).unwrap_or_default();
        let served = workers
            .iter()
            .any(|(queues, kinds)| queues.iter().any(|q| q == queue) && kinds.iter().any(|k| k == kind));
        (!served).then(|| {
            format!(
                "no live worker serving queue {queue:?} knows kind {kind:?}; the job waits until one does \
                 (it counts as unclaimable in GET /api/queues)"
            )
        })
    }
}
