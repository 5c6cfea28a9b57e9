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

/// The most outcomes a worker lets wait for their write before it claims again: a few of the completer's largest
/// batches, far above what a busy worker has in flight when the database keeps up.
pub(crate) const MAX_UNWRITTEN: usize = 4_000;

/// Where a worker's finished attempts go: the completer's channel, counted until written. While the completer is
/// behind (the database writes slowly), claims wait: otherwise every job claimed meanwhile would run and pile up
/// unwritten, each holding a lease that nothing renews, and each batch would be larger and slower than the last.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<Settle>,
    unwritten: std::sync::Arc<Unwritten>,
}

/// The count of an [`Outbox`]'s outcomes not yet written; the completer takes off what it wrote.
#[derive(Debug, Default)]
pub(crate) struct Unwritten {
    n: std::sync::atomic::AtomicUsize,
    written: tokio::sync::Notify,
}

impl Outbox {
    /// An outbox sending to `tx`, counted in `unwritten`.
    pub fn new(tx: tokio::sync::mpsc::UnboundedSender<Settle>, unwritten: std::sync::Arc<Unwritten>) -> Self {
        Outbox { tx, unwritten }
    }

    /// Sends `s` to the completer; false when it has stopped.
    pub fn send(&self, s: Settle) -> bool {
        use std::sync::atomic::Ordering;
        self.unwritten.n.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(s).is_err() {
            self.unwritten.n.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Waits until fewer than `max` outcomes wait for their write.
    pub async fn room(&self, max: usize) {
        self.unwritten.room(max).await;
    }
}

impl Unwritten {
    /// `n` outcomes were written (or given up on).
    pub fn written(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| Some(x.saturating_sub(n)));
        self.written.notify_waiters();
    }

    /// How many wait for their write.
    pub fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn room(&self, max: usize) {
        loop {
            // Registered before the check: a write between the two still wakes it.
            let written = self.written.notified();
            if self.count() < max {
                return;
            }
            written.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn settle() -> Settle {
        Settle {
            id: JobId(1),
            attempt: 1,
            kind: SettleKind::HandBack,
            lane: None,
        }
    }

    /// Claims wait while `max` outcomes are unwritten and go on once the completer wrote some; a send to a
    /// stopped completer is not counted.
    #[tokio::test]
    async fn room_waits_for_writes() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let unwritten = Arc::new(Unwritten::default());
        let outbox = Outbox::new(tx, unwritten.clone());
        assert!(outbox.send(settle()) && outbox.send(settle()));
        assert_eq!(unwritten.count(), 2);
        tokio::time::timeout(Duration::from_secs(5), outbox.room(3))
            .await
            .expect("below the bound");
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "at the bound");
        unwritten.written(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room after a write")
            .unwrap();
        rx.close();
        while rx.try_recv().is_ok() {}
        drop(rx);
        assert!(!outbox.send(settle()));
        assert_eq!(unwritten.count(), 1);
    }
}
