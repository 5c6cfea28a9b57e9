//! Jobs enqueued through ordo's HTTP API, run by an apalis worker, results read back over HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_ordo::OrdoBackend;
use ordo::api::{self, AppState, Settings};
use ordo::engine::EngineHandlers;
use ordo::queue::{self, JobId, JobState};
use ordo::runtime::{Worker, WorkerConfig};
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use ordo::wake::Waker;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{context, count_state, fast, stop};

const JOBS: usize = 10_000;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
struct Count {
    i: u64,
}

/// Runs of each `i`, shared with the handler.
type Runs = Arc<Mutex<HashMap<u64, u32>>>;

async fn count(task: Count, runs: Data<Runs>) -> Result<Value, BoxDynError> {
    *runs.lock().map_err(|_| "poisoned")?.entry(task.i).or_default() += 1;
    Ok(json!({"double": task.i * 2}))
}

/// `ordo worker`'s runtime in this process, with the built-in kinds: its stop token, task and worker id.
fn start_ordo_worker(pool: &sqlx::PgPool) -> (CancellationToken, tokio::task::JoinHandle<()>, String) {
    let mut cfg = WorkerConfig::new("default", "v1");
    cfg.poll = Duration::from_millis(50);
    let worker = Worker::new(cfg, pool.clone(), ordo_workers::registry(), EngineHandlers::new());
    let id = worker.id().to_owned();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move { worker.run(token).await.expect("the ordo worker runs") });
    (stop, handle, id)
}

/// 10 000 jobs posted to `POST /api/jobs/batch` run exactly once each on an apalis worker built with
/// `WorkerBuilder`, and each one's result is what `GET /api/jobs/{id}` shows; an `ordo worker` on the same queue
/// runs its own kinds beside it and none of the apalis worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_from_the_http_api_run_exactly_once() {
    let db = testkit::db_with_max(20).await;
    let key = tenancy::create_key(&db.pool, &AccountId::default_account())
        .await
        .unwrap()
        .api_key;
    let settings = Settings {
        rate_limit_rps: 0,
        ..Settings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api_stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(
        listener,
        AppState::new(db.pool.clone(), Waker::disabled(), settings),
        api_stop.clone(),
    ));
    let http = reqwest::Client::new();

    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| {
            // Every tenth job a built-in kind, for the ordo worker.
            if i % 10 == 0 {
                json!({"kind": "noop", "args": {}})
            } else {
                json!({"kind": "test.count", "args": {"i": i}})
            }
        })
        .collect();
    let res = http
        .post(format!("{base}/api/jobs/batch"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(json!({ "jobs": jobs }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap_or_default());
    let created: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let ids: Vec<JobId> = created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), JOBS);
    let ordo_worker = start_ordo_worker(&db.pool);

    let runs: Runs = Arc::default();
    let backend: OrdoBackend<Count> = OrdoBackend::new(db.pool.clone(), fast("test.count").held(1000));
    let ctx = context("api-worker");
    let worker = WorkerBuilder::new(&ctx)
        .backend(backend)
        .data(runs.clone())
        .build(count);
    let handle = tokio::spawn(async move { worker.run().await.expect("the worker runs") });

    eventually(Duration::from_secs(120), "every job to complete", || async {
        (count_state(&db.pool, "completed").await == JOBS as i64).then_some(())
    })
    .await;
    stop(&ctx, handle).await;
    let (ordo_stop, ordo_handle, ordo_id) = ordo_worker;
    ordo_stop.cancel();
    ordo_handle.await.unwrap();

    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), JOBS - JOBS / 10, "every apalis job ran, and no other");
    assert!(runs.values().all(|&n| n == 1), "a job ran more than once");
    let jobs = queue::get_many(&db.pool, &AccountId::default_account(), &ids)
        .await
        .unwrap();
    for job in &jobs {
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.attempt, 1);
        if job.kind == "noop" {
            assert_eq!(
                job.lease_owner.as_deref(),
                Some(ordo_id.as_str()),
                "the ordo worker ran the noop"
            );
            continue;
        }
        let i = job.args["i"].as_u64().unwrap();
        assert_eq!(job.result, Some(json!({"double": i * 2})));
        assert_ne!(
            job.lease_owner.as_deref(),
            Some(ordo_id.as_str()),
            "the ordo worker ran an apalis job"
        );
    }
    // The same results over HTTP, for a spread of the jobs.
    for id in ids.iter().skip(1).step_by(JOBS / 100) {
        let res = http
            .get(format!("{base}/api/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let job: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        let i = job["args"]["i"].as_u64().unwrap();
        assert_eq!(job["state"], "completed");
        assert_eq!(job["result"], json!({"double": i * 2}));
        assert_eq!(job["kind"], "test.count");
    }
    api_stop.cancel();
    server.await.unwrap().unwrap();
}
