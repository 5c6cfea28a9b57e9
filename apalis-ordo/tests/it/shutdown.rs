//! A worker's stop: tasks fetched but never started go back to the queue without using up an attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_ordo::OrdoBackend;
use ordo::testkit::{self, eventually};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::support::{context, count_state, fast, join};

/// One task at a time: the service is not ready while one runs, so apalis asks the backend for no more.
#[derive(Clone, Default)]
struct OneAtATime {
    running: Arc<AtomicUsize>,
    waiting: Arc<Mutex<Option<Waker>>>,
}

impl<S> tower_layer::Layer<S> for OneAtATime {
    type Service = OneAtATimeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OneAtATimeService {
            inner,
            gate: self.clone(),
        }
    }
}

#[derive(Clone)]
struct OneAtATimeService<S> {
    inner: S,
    gate: OneAtATime,
}

impl<S, R> tower_service::Service<R> for OneAtATimeService<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.gate.running.load(Ordering::SeqCst) > 0 {
            *self.gate.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.gate.running.fetch_add(1, Ordering::SeqCst);
        let fut = self.inner.call(req);
        let gate = self.gate.clone();
        Box::pin(async move {
            let out = fut.await;
            gate.running.fetch_sub(1, Ordering::SeqCst);
            if let Some(w) = gate.waiting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
            out
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    n: u32,
}

/// Started handlers, and the gate they wait at.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

async fn wait_at_gate(_: Held, gate: Data<Gate>) -> Result<(), BoxDynError> {
    gate.started.fetch_add(1, Ordering::SeqCst);
    gate.release.notified().await;
    Ok(())
}

/// A worker stopped while it holds ten tasks, one running and nine fetched but not started: the running one
/// completes, the nine are available again at once with their attempt not used up and no error recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hands_back_fetched_tasks_without_using_an_attempt() {
    let db = testkit::db().await;
    let mut backend: OrdoBackend<Held> = OrdoBackend::new(db.pool.clone(), fast("test.held").held(10));
    backend.push_bulk((0..10).map(|n| Held { n }).collect()).await.unwrap();

    let gate = Gate::default();
    let ctx = context("shutdown-worker");
    let worker = WorkerBuilder::new(&ctx)
        .backend(backend)
        .data(gate.clone())
        .layer(OneAtATime::default())
        .build(wait_at_gate);
    let handle = tokio::spawn(async move { worker.run().await.expect("the worker runs") });
    eventually(Duration::from_secs(30), "all ten claimed, one started", || async {
        (count_state(&db.pool, "running").await == 10 && gate.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    ctx.stop().expect("the worker is running");
    gate.release.notify_one();
    join(handle).await;

    assert_eq!(gate.started.load(Ordering::SeqCst), 1, "no task started after the stop");
    assert_eq!(count_state(&db.pool, "completed").await, 1);
    let back: Vec<(String, i32, String)> =
        sqlx::query_as("select state, attempt, errors::text from job where kind = 'test.held'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(back.len(), 9);
    for (state, attempt, errors) in back {
        assert_eq!((state.as_str(), attempt, errors.as_str()), ("available", 0, "[]"));
    }
}
