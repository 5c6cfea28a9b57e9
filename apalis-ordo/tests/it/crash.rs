//! Real apalis worker processes (the example binary), SIGKILLed while they hold tasks.

use std::process::Stdio;
use std::time::Duration;

use ordo::queue::{self, JobState, NewJob};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually, signal};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::count_state;

/// The example's apalis worker against `db_url`, with a one-second lease, killed on drop.
fn spawn_apalis_worker(db_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_apalis-ordo-example"))
        .arg("worker")
        .env("DATABASE_URL", db_url)
        .env("APALIS_ORDO_LEASE_MS", "1000")
        .env("APALIS_ORDO_POLL_MS", "50")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the apalis worker example")
}

/// An apalis worker process SIGKILLed while running tasks: once their leases expire, ordo's maintenance rescues
/// them and another apalis worker process completes every one; none is lost, none completes on the dead worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_apalis_worker_tasks_are_completed_by_another() {
    let db = testkit::db().await;
    let account = AccountId::default_account();
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..8)
        .map(|_| NewJob::new("example.work", json!({"ms": 3000})))
        .collect();
    let ids: Vec<_> = q
        .enqueue_many(&account, jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();

    let mut first = spawn_apalis_worker(&db.url);
    let first_pid = first.id().expect("running");
    eventually(
        Duration::from_secs(30),
        "all 8 tasks to run on the first worker",
        || async { (count_state(&db.pool, "running").await == 8).then_some(()) },
    )
    .await;
    signal(&first, "-KILL");
    let _ = first.wait().await;
    assert_eq!(
        count_state(&db.pool, "running").await,
        8,
        "the killed worker's leases are still held"
    );

    let second = spawn_apalis_worker(&db.url);
    let second_pid = second.id().expect("running");
    eventually(
        Duration::from_secs(60),
        "every task to complete on the second worker",
        || async { (count_state(&db.pool, "completed").await == 8).then_some(()) },
    )
    .await;
    for id in &ids {
        let job = queue::get(&db.pool, &account, *id).await.unwrap();
        assert_eq!(job.state, JobState::Completed);
        assert!(job.attempt >= 2, "the first attempt died with its worker");
        assert!(
            job.errors.iter().any(|e| e.message.contains("lease expired")),
            "{:?}",
            job.errors
        );
        let result = job.result.expect("a result");
        assert_eq!(
            result["pid"],
            json!(second_pid),
            "completed by the second worker, not {first_pid}"
        );
        assert_eq!(result["attempt"], json!(job.attempt));
    }
    assert_eq!(count_state(&db.pool, "completed").await, 8, "nothing completed twice");

    testkit::terminate(second).await;
}
