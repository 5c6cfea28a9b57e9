//! Group commit: concurrent callers' writes share one transaction.
//!
//! Every transaction costs PostgreSQL several round trips and a WAL flush, and under load most of them have the
//! same shape. Callers hand their items to a dispatcher, which takes everything waiting whenever one of its flush
//! slots is free and hands it to the flush function as one batch. At low load a batch is a single item, so latency
//! does not change; under load items pile up while every slot is busy, and the batches grow with the load. Each
//! item carries its own reply channel: the flush answers every item of its batch.
//!
//! The handles own the dispatcher, and the dispatcher owns its flushes: when the last handle is dropped it batches
//! what is still queued, and ends once every flush it started has answered.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Handle to a dispatcher; cheap to clone. The dispatcher stops when every handle is dropped.
pub(crate) struct GroupCommit<T> {
    tx: mpsc::Sender<T>,
    dispatcher: Arc<JoinHandle<()>>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        GroupCommit {
            tx: self.tx.clone(),
            dispatcher: Arc::clone(&self.dispatcher),
        }
    }
}

/// How a dispatcher batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most items in one batch.
    pub max_batch: usize,
    /// Batches flushed at once. Few on purpose: while they are busy, items gather into bigger batches.
    pub flushes: usize,
    /// Items that may wait before callers feel back-pressure.
    pub depth: usize,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts a dispatcher on the current Tokio runtime that hands batches to `flush`.
    pub(crate) fn start<F, Fut>(limits: Limits, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(limits.depth.max(1));
        let dispatcher = Arc::new(tokio::spawn(dispatch(rx, limits, flush)));
        GroupCommit { tx, dispatcher }
    }

    /// Hands `item` to the dispatcher; gives it back when the dispatcher has stopped (its runtime shut down).
    pub(crate) async fn submit(&self, item: T) -> Result<(), T> {
        self.tx.send(item).await.map_err(|e| e.0)
    }

    /// Whether the dispatcher has stopped (its runtime shut down).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.dispatcher.is_finished()
    }
}

/// A batch split by `key`, in order within each share: the flushes give each account's share a transaction of its
/// own (row-level security and every statement are per account).
pub(crate) fn split_by<K: Eq + Hash, T>(batch: Vec<T>, key: impl Fn(&T) -> K) -> HashMap<K, Vec<T>> {
    let mut shares: HashMap<K, Vec<T>> = HashMap::new();
    for item in batch {
        shares.entry(key(&item)).or_default().push(item);
    }
    shares
}

async fn dispatch<T, F, Fut>(mut rx: mpsc::Receiver<T>, limits: Limits, flush: F)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.flushes.max(1)));
    let flushes = TaskTracker::new();
    loop {
        // A free slot first: while every slot is busy, items pile up and the next batch is bigger.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        while batch.len() < limits.max_batch {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let flushing = flush(batch);
        flushes.spawn(async move {
            flushing.await;
            drop(permit);
        });
    }
    flushes.close();
    flushes.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// A batch splits into one share per key, each in the batch's order.
    #[test]
    fn split_by_keeps_each_shares_order() {
        let shares = split_by(vec![("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)], |(k, _)| *k);
        assert_eq!(shares.len(), 2);
        assert_eq!(shares["a"], vec![("a", 1), ("a", 3), ("a", 5)]);
        assert_eq!(shares["b"], vec![("b", 2), ("b", 4)]);
    }

    /// Items sent while every slot is busy are flushed together, each answered, none lost.
    #[tokio::test]
    async fn items_waiting_for_a_slot_share_a_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let seen = sizes.clone();
        let limits = Limits {
            max_batch: 64,
            flushes: 1,
            depth: 128,
        };
        let gc = GroupCommit::start(limits, move |batch: Vec<(u32, oneshot::Sender<u32>)>| {
            seen.lock().unwrap().push(batch.len());
            let mut release = release_rx.clone();
            async move {
                // The first batch holds the only slot until released, so the rest pile up behind it.
                let _ = release.wait_for(|r| *r).await;
                for (n, reply) in batch {
                    let _ = reply.send(n * 2);
                }
            }
        });
        let mut answers = Vec::new();
        for n in 0..10 {
            let (tx, rx) = oneshot::channel();
            gc.submit((n, tx)).await.unwrap();
            answers.push(rx);
            if n == 0 {
                // The dispatcher has taken the first item alone once its batch is recorded.
                crate::testkit::eventually(std::time::Duration::from_secs(10), "the first batch", || {
                    let taken = !sizes.lock().unwrap().is_empty();
                    async move { taken.then_some(()) }
                })
                .await;
            }
        }
        release_tx.send(true).unwrap();
        for (n, rx) in answers.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), n as u32 * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 9]);
    }
}
