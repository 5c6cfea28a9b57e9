//! Helpers shared by the tests.

use std::time::Duration;

use apalis_core::worker::context::WorkerContext;
use apalis_ordo::Config;
use ordo::queue::RetryPolicy;

/// A backend config for fast tests: short poll and lease, tiny backoff.
pub fn fast(kind: &str) -> Config {
    Config::new(kind)
        .poll(Duration::from_millis(50))
        .lease(Duration::from_secs(5))
        .retry(RetryPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        })
}

pub use ordo::testkit::count_state;

/// A worker context to stop an in-process worker with.
pub fn context(name: &str) -> WorkerContext {
    WorkerContext::new(name)
}

/// Stops an in-process apalis worker and waits for it (its held jobs settled or handed back) within 30 s.
pub async fn stop(ctx: &WorkerContext, handle: tokio::task::JoinHandle<()>) {
    ctx.stop().expect("the worker is running");
    join(handle).await;
}

/// Waits for an in-process apalis worker that was told to stop, within 30 s.
pub async fn join(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the worker stops within 30 s")
        .expect("the worker task did not panic");
}
