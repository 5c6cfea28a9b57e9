//! Durable retries and per-key order of tasks pushed through apalis's `TaskSink`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_ordo::{ConcurrencyKey, OrdoBackend, OrdoJob};
use ordo::queue::{self, JobState};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually};
use serde::{Deserialize, Serialize};

use crate::support::{context, count_state, fast, stop};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    name: String,
}

/// The attempts each handler run saw.
type Seen = Arc<Mutex<Vec<i32>>>;

async fn always_fails(task: Flaky, job: Data<OrdoJob>, seen: Data<Seen>) -> Result<(), BoxDynError> {
    seen.lock().map_err(|_| "poisoned")?.push(job.attempt);
    Err(format!("{} failed on attempt {}", task.name, job.attempt).into())
}

/// A handler that always fails is retried by ordo (durably, after its backoff) until `max_attempts` are used up,
/// then discarded, with each attempt's error recorded; it runs once per attempt, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_task_is_retried_by_ordo_then_discarded_with_every_error() {
    let db = testkit::db().await;
    let mut backend: OrdoBackend<Flaky> = OrdoBackend::new(db.pool.clone(), fast("test.flaky"));
    let task = TaskBuilder::new(Flaky { name: "flaky".into() })
        .max_attempts(3)
        .idempotency_key("flaky-1")
        .build();
    backend.push_task(task).await.unwrap();

    let seen: Seen = Arc::default();
    let ctx = context("retry-worker");
    let worker = WorkerBuilder::new(&ctx)
        .backend(backend.clone())
        .data(seen.clone())
        .build(always_fails);
    let handle = tokio::spawn(async move { worker.run().await.expect("the worker runs") });
    eventually(Duration::from_secs(30), "the task to be discarded", || async {
        (count_state(&db.pool, "discarded").await == 1).then_some(())
    })
    .await;
    stop(&ctx, handle).await;

    assert_eq!(*seen.lock().unwrap(), [1, 2, 3], "one run per ordo attempt");
    let id: i64 = sqlx::query_scalar("select id from job_all where idempotency_key = 'flaky-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let job = queue::get(&db.pool, &AccountId::default_account(), queue::JobId(id))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Discarded);
    assert_eq!((job.attempt, job.max_attempts), (3, 3));
    let attempts: Vec<i32> = job.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    for (n, e) in job.errors.iter().enumerate() {
        assert_eq!(e.message, format!("flaky failed on attempt {}", n + 1));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u32,
}

/// Start and end of each run: key, seq, started, finished.
type Runs = Arc<Mutex<Vec<(String, u32, Instant, Instant)>>>;

async fn step(task: Step, runs: Data<Runs>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(u64::from(task.seq % 3))).await;
    runs.lock()
        .map_err(|_| "poisoned")?
        .push((task.key, task.seq, started, Instant::now()));
    Ok(())
}

/// Tasks pushed with one concurrency key run one at a time and in push order, across two apalis workers
/// claiming the same queue, while the tasks of different keys run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_two_apalis_workers() {
    const KEYS: usize = 4;
    const PER_KEY: u32 = 25;
    let db = testkit::db().await;
    let mut pusher: OrdoBackend<Step> = OrdoBackend::new(db.pool.clone(), fast("test.step"));
    // Interleaved keys: each key's tasks are spread over the whole batch.
    let tasks = (0..PER_KEY).flat_map(|seq| {
        (0..KEYS).map(move |k| {
            let key = format!("key-{k}");
            TaskBuilder::new(Step { key: key.clone(), seq })
                .metadata(&ConcurrencyKey(key))
                .build()
        })
    });
    let tasks: Vec<_> = tasks.collect();
    pusher.push_all(futures_util::stream::iter(tasks)).await.unwrap();

    let runs: Runs = Arc::default();
    let mut workers = Vec::new();
    for name in ["order-a", "order-b"] {
        let ctx = context(name);
        let backend: OrdoBackend<Step> = OrdoBackend::new(db.pool.clone(), fast("test.step"));
        let worker = WorkerBuilder::new(&ctx).backend(backend).data(runs.clone()).build(step);
        workers.push((
            ctx,
            tokio::spawn(async move { worker.run().await.expect("the worker runs") }),
        ));
    }
    let total = (KEYS as i64) * i64::from(PER_KEY);
    eventually(Duration::from_secs(60), "every task to complete", || async {
        (count_state(&db.pool, "completed").await == total).then_some(())
    })
    .await;
    for (ctx, handle) in workers {
        stop(&ctx, handle).await;
    }

    let mut runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len() as i64, total, "each task ran once");
    runs.sort_by_key(|r| r.2);
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let of_key: Vec<_> = runs.iter().filter(|r| r.0 == key).collect();
        let order: Vec<u32> = of_key.iter().map(|r| r.1).collect();
        assert_eq!(order, (0..PER_KEY).collect::<Vec<_>>(), "{key} started in push order");
        for pair in of_key.windows(2) {
            assert!(
                pair[0].3 <= pair[1].2,
                "{key}: seq {} started before seq {} ended",
                pair[1].1,
                pair[0].1
            );
        }
    }
}
