//! What a finished attempt produced, on its way from the job's task to the completer, and what the completer does
//! for this worker after settling jobs of concurrency keys.

use std::time::Duration;

use serde_json::Value;

use crate::queue::JobId;

/// What to do with a finished attempt.
#[derive(Debug, Clone)]
pub enum SettleKind {
    /// Completed with a result.
    Complete(Value),
    /// Failed; retried after `after` or the backoff, or discarded if `permanent` or out of attempts.
    Fail {
        /// Recorded in the error history.
        message: String,
        /// Discard now.
        permanent: bool,
        /// Retry delay chosen by the handler.
        after: Option<Duration>,
    },
    /// Run again after the delay, attempt not used up.
    Snooze(Duration),
    /// Cancelled by its handler.
    Cancel(String),
    /// Given back at shutdown.
    HandBack,
}

/// One outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Settle {
    /// The job.
    pub id: JobId,
    /// The attempt that ran.
    pub attempt: i32,
    /// What happened.
    pub kind: SettleKind,
    /// The job's queue when it has a concurrency key: its finish may release the next job of that key.
    pub lane: Option<String>,
}

/// What the completer does after a batch that settled jobs of concurrency keys: wake this worker's fetchers of
/// their queues (the next job of a key was released by the same statement) and have the lane marks settled.
#[derive(Clone)]
pub(crate) struct LaneHook {
    /// The worker's per-queue wake-ups.
    pub signals: crate::wake::WakeSignals,
    /// Pokes the task that runs [`queue::release_lanes`].
    pub release: std::sync::Arc<tokio::sync::Notify>,
}

impl LaneHook {
    /// After settling jobs of these queues' keys.
    pub fn settled<'a>(&self, queues: impl Iterator<Item = &'a str>) {
        if self.wake(queues) {
            self.release.notify_one();
        }
    }

    /// Wakes this worker's fetchers of each queue (once per queue); false when there was none.
    pub fn wake<'a>(&self, queues: impl Iterator<Item = &'a str>) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        for q in queues {
            if seen.insert(q) {
                if let Some(n) = self.signals.get(q) {
                    n.notify_one();
                }
            }
        }
        !seen.is_empty()
    }
}
