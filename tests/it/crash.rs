//! Real `ordo worker` processes: SIGKILL, SIGTERM, and many processes on one queue.

use std::time::Duration;

use ordo::queue::{self, JobState, NewJob};
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;

use crate::support::{acct, count_state, create_execution_table, signal, spawn_worker_process};

async fn started_executions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from test_execution")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// No two executions of one job ever overlapped in time.
async fn assert_no_overlap(pool: &PgPool) {
    let overlaps: i64 = sqlx::query_scalar(
        r#"
        select count(*)
        from test_execution a
        join test_execution b on a.job_id = b.job_id and a.id < b.id
        where tstzrange(a.started_at, coalesce(a.finished_at, 'infinity'))
           && tstzrange(b.started_at, coalesce(b.finished_at, 'infinity'))
          and a.finished_at is not null
        "#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(overlaps, 0, "a job ran twice at the same time");
}

/// SIGKILL a worker holding running jobs: after the lease expires another worker completes every one of them;
/// nothing is lost and nothing completes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_jobs_are_completed_by_another_worker() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..8)
        .map(|_| NewJob::new("test.record", json!({"ms": 1500})))
        .collect();
    let ids = q.enqueue_many(&acct(), jobs).await.unwrap();
    let env = [("ORDO_LEASE_MS", "1000")];
    let mut first = spawn_worker_process(&db.url, &env, &["--concurrency", "8"]);
    eventually(
        Duration::from_secs(30),
        "all 8 jobs to start on the first worker",
        || async { (started_executions(&db.pool).await == 8).then_some(()) },
    )
    .await;
    signal(&first, "-KILL");
    let _ = first.wait().await;
    assert_eq!(
        count_state(&db.pool, "running").await,
        8,
        "killed worker still holds its leases"
    );

    let mut second = spawn_worker_process(&db.url, &env, &["--concurrency", "8"]);
    eventually(
        Duration::from_secs(60),
        "every job to complete on the second worker",
        || async { (count_state(&db.pool, "completed").await == 8).then_some(()) },
    )
    .await;
    for o in &ids {
        let j = queue::get(&db.pool, &acct(), o.id).await.unwrap();
        assert_eq!(j.state, JobState::Completed);
        assert!(j.attempt >= 2, "the first attempt died with the worker");
        assert!(j.errors.iter().any(|e| e.message.contains("lease expired")));
    }
    let finished_per_job: Vec<i64> = sqlx::query_scalar(
        "select count(*) filter (where finished_at is not null) from test_execution group by job_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(finished_per_job.len(), 8);
    assert!(
        finished_per_job.iter().all(|&n| n == 1),
        "each job completed exactly once: {finished_per_job:?}"
    );
    assert_no_overlap(&db.pool).await;
    signal(&second, "-TERM");
    let status = second.wait().await.unwrap();
    assert!(status.success());
}

/// SIGTERM lets running jobs finish, exits 0, and leaves nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_and_exits_zero() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..4)
        .map(|_| NewJob::new("test.record", json!({"ms": 1000})))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let mut w = spawn_worker_process(&db.url, &[], &["--concurrency", "4"]);
    eventually(Duration::from_secs(30), "4 jobs to start", || async {
        (started_executions(&db.pool).await == 4).then_some(())
    })
    .await;
    signal(&w, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), w.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(count_state(&db.pool, "completed").await, 4);
    assert_eq!(count_state(&db.pool, "running").await, 0);
    let workers: i64 = sqlx::query_scalar("select count(*) from worker")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "the worker deregistered");
}

/// Past the drain deadline, SIGTERM hands unfinished jobs back: available at once, attempt not used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_drain_deadline_hands_jobs_back() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..3)
        .map(|_| NewJob::new("test.record", json!({"ms": 600_000})))
        .collect();
    let ids = q.enqueue_many(&acct(), jobs).await.unwrap();
    let mut w = spawn_worker_process(&db.url, &[("ORDO_DRAIN_MS", "300")], &["--concurrency", "4"]);
    eventually(Duration::from_secs(30), "3 jobs to start", || async {
        (started_executions(&db.pool).await == 3).then_some(())
    })
    .await;
    signal(&w, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), w.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    for o in ids {
        let j = queue::get(&db.pool, &acct(), o.id).await.unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Available, 0), "handed back");
    }
}

/// Four worker processes at concurrency 64 on one queue never execute a job twice, concurrently or at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_never_run_a_job_twice() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let n = 3000;
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new("test.record", json!({"ms": i % 4})))
        .collect();
    // Workers first, so they compete for the queue from the start.
    queue::pause(&db.pool, &acct(), "default").await.unwrap();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let mut workers: Vec<_> = (0..4)
        .map(|_| spawn_worker_process(&db.url, &[], &["--concurrency", "64"]))
        .collect();
    eventually(Duration::from_secs(30), "4 workers registered", || async {
        let live = queue::live_workers(&db.pool, Duration::from_secs(30)).await.unwrap();
        (live.len() == 4).then_some(())
    })
    .await;
    queue::resume(&db.pool, &acct(), "default").await.unwrap();
    eventually(Duration::from_secs(120), "all jobs to complete", || async {
        (count_state(&db.pool, "completed").await == n as i64).then_some(())
    })
    .await;
    let (execs, distinct, pids): (i64, i64, i64) =
        sqlx::query_as("select count(*), count(distinct job_id), count(distinct pid) from test_execution")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(execs, n as i64, "every job executed exactly once");
    assert_eq!(distinct, n as i64);
    assert!(pids >= 2, "work was shared between processes ({pids})");
    // No process ever ran more jobs at once than its 64 slots.
    let most_at_once: i64 = sqlx::query_scalar(
        r#"
        select coalesce(max(n), 0)
        from (
            select (select count(*) from test_execution b
                    where b.pid = a.pid and b.started_at <= a.started_at
                      and coalesce(b.finished_at, 'infinity') > a.started_at) as n
            from test_execution a
        ) t
        "#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        (1..=64).contains(&most_at_once),
        "{most_at_once} jobs at once in one process"
    );
    assert_no_overlap(&db.pool).await;
    for w in &workers {
        signal(w, "-TERM");
    }
    for w in workers.iter_mut() {
        assert!(w.wait().await.unwrap().success());
    }
}

/// Jobs a worker claimed ahead of its free slots (prefetched: `running`, leased, not started).
async fn prefetched(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        r#"
        select count(*) from job_all j
        where j.state = 'running'
          and not exists (select 1 from test_execution t where t.job_id = j.id and t.attempt = j.attempt)
        "#,
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// SIGKILL a worker holding prefetched jobs as well as running ones: once their leases expire another worker runs
/// every job; none is lost, none completes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_loses_and_doubles_none_of_its_prefetched_jobs() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..24)
        .map(|_| NewJob::new("test.record", json!({"ms": 300})))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let env = [("ORDO_LEASE_MS", "1000")];
    let mut first = spawn_worker_process(&db.url, &env, &["--concurrency", "2", "--prefetch", "10"]);
    eventually(Duration::from_secs(30), "jobs running and prefetched", || async {
        (started_executions(&db.pool).await >= 2 && prefetched(&db.pool).await >= 5).then_some(())
    })
    .await;
    signal(&first, "-KILL");
    let _ = first.wait().await;
    assert!(
        prefetched(&db.pool).await >= 5,
        "the killed worker held prefetched jobs"
    );

    let mut second = spawn_worker_process(&db.url, &env, &["--concurrency", "8"]);
    eventually(Duration::from_secs(60), "every job to complete", || async {
        (count_state(&db.pool, "completed").await == 24).then_some(())
    })
    .await;
    let finished_per_job: Vec<i64> = sqlx::query_scalar(
        "select count(*) filter (where finished_at is not null) from test_execution group by job_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(finished_per_job.len(), 24, "every job ran");
    assert!(
        finished_per_job.iter().all(|&n| n == 1),
        "each job completed exactly once: {finished_per_job:?}"
    );
    assert_no_overlap(&db.pool).await;
    signal(&second, "-TERM");
    assert!(second.wait().await.unwrap().success());
}

/// SIGTERM hands prefetched jobs back at once (available again, attempt not used up) while the running job
/// finishes within the drain deadline; the worker then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_prefetched_jobs_at_once() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..12)
        .map(|_| NewJob::new("test.record", json!({"ms": 4000})))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let mut w = spawn_worker_process(
        &db.url,
        &[("ORDO_DRAIN_MS", "30000")],
        &["--concurrency", "1", "--prefetch", "8"],
    );
    eventually(Duration::from_secs(30), "one job running, eight prefetched", || async {
        (started_executions(&db.pool).await == 1 && prefetched(&db.pool).await == 8).then_some(())
    })
    .await;
    signal(&w, "-TERM");
    eventually(Duration::from_secs(30), "the prefetched jobs handed back", || async {
        let back: i64 = sqlx::query_scalar("select count(*) from job_all where state = 'available' and attempt = 0")
            .fetch_one(&db.pool)
            .await
            .ok()?;
        (back == 11).then_some(())
    })
    .await;
    let unfinished: i64 = sqlx::query_scalar("select count(*) from test_execution where finished_at is null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(unfinished, 1, "handed back while the running job still runs");
    let status = tokio::time::timeout(Duration::from_secs(60), w.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(count_state(&db.pool, "completed").await, 1, "the running job finished");
    assert_eq!(count_state(&db.pool, "running").await, 0);
}
