//! The queue library against a real database: claim, fencing, idempotency, ordering, retries, maintenance.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ordo::queue::{self, ClaimRequest, Completion, Failure, JobFilter, JobId, JobState, NewJob, RetryPolicy, Snooze};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Barrier;

use crate::support::{acct, JOB_READS};

fn kinds() -> Vec<String> {
    vec!["noop".to_owned(), "sleep".to_owned(), "fail".to_owned()]
}

pub(crate) async fn claim_n(pool: &PgPool, n: i64, lease: Duration) -> Vec<queue::Job> {
    let kinds = kinds();
    queue::claim(
        &mut pool.acquire().await.expect("conn"),
        &ClaimRequest {
            queue: "default",
            kinds: &kinds,
            pool: "default",
            version: "v1",
            worker_id: "test-worker",
            lease,
            limit: n,
        },
        &mut queue::FairShare::new(),
    )
    .await
    .expect("claim")
}

async fn enqueue(pool: &PgPool, job: NewJob) -> queue::Job {
    let mut conn = pool.acquire().await.expect("conn");
    queue::enqueue(&mut conn, &acct(), job).await.expect("enqueue").job
}

/// A worker `w1` of pool `default` that serves `default` and knows `noop`.
fn worker_info(concurrency: i32) -> queue::WorkerInfo {
    queue::WorkerInfo {
        id: "w1".into(),
        pool: "default".into(),
        version: "v1".into(),
        queues: vec!["default".into()],
        kinds: vec!["noop".into()],
        host: "h".into(),
        pid: 1,
        concurrency,
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
        stopping: false,
    }
}

fn ok(id: JobId, attempt: i32) -> Completion {
    Completion {
        id,
        attempt,
        result: json!({"ok": true}),
    }
}

/// A claimed job is running, its attempt bumped, leased, and a second claim does not see it.
#[tokio::test]
async fn claim_leases_job_and_hides_it_from_other_claims() {
    let db = testkit::db().await;
    let j = enqueue(&db.pool, NewJob::new("noop", json!({"a": 1}))).await;
    assert_eq!(j.state, JobState::Available);
    assert_eq!(j.attempt, 0);
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, j.id);
    assert_eq!(got[0].state, JobState::Running);
    assert_eq!(got[0].attempt, 1);
    assert_eq!(got[0].version.as_deref(), Some("v1"));
    assert!(got[0].leased_until.is_some());
    assert!(claim_n(&db.pool, 10, Duration::from_secs(30)).await.is_empty());
    let done = queue::complete_many(&db.pool, &[ok(j.id, 1)]).await.unwrap();
    assert_eq!(done, vec![j.id]);
    let j = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(j.result, Some(json!({"ok": true})));
    assert!(j.finished_at.is_some());
}

/// `lock_ids` takes exactly the jobs asked for, once, and only when a worker could take them: not while an earlier
/// job of their concurrency key is unfinished (asked for together, only the first of a key), not before their
/// time, not while their queue is paused, not for another account; while one transaction holds them, no one else
/// gets them.
#[tokio::test]
async fn lock_ids_takes_those_jobs_only_when_their_turn_has_come() {
    let db = testkit::db().await;
    let lease = Duration::from_secs(30);
    let first = enqueue(&db.pool, NewJob::new("noop", json!({"n": 1})).concurrency_key("K")).await;
    let second = enqueue(&db.pool, NewJob::new("noop", json!({"n": 2})).concurrency_key("K")).await;
    let loose = enqueue(&db.pool, NewJob::new("noop", json!({"n": 3}))).await;
    let other = AccountId::parse("other").unwrap();
    let lock = |account: AccountId, ids: Vec<JobId>| {
        let pool = db.pool.clone();
        async move { queue::lock_ids(&pool, &account, &ids).await.unwrap() }
    };
    assert!(lock(other, vec![first.id]).await.is_empty());
    assert!(
        lock(acct(), vec![second.id]).await.is_empty(),
        "an earlier job of the key waits"
    );

    let mut tx = db.pool.begin().await.unwrap();
    let got = queue::lock_ids(&mut *tx, &acct(), &[second.id, loose.id, first.id])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![first.id, loose.id],
        "the first of the key, not the second"
    );
    assert_eq!((got[0].state, got[0].attempt), (JobState::Available, 0));
    assert!(lock(acct(), vec![first.id]).await.is_empty(), "held by the transaction");
    assert!(
        claim_n(&db.pool, 10, lease).await.is_empty(),
        "workers see neither while the transaction holds them"
    );
    let settled = [ok(first.id, 0), ok(loose.id, 0)];
    queue::complete_locked(&mut *tx, &settled, "api").await.unwrap();
    tx.commit().await.unwrap();
    let done = queue::get(&db.pool, &acct(), first.id).await.unwrap();
    assert_eq!(
        (done.state, done.attempt, done.lease_owner.as_deref()),
        (JobState::Completed, 1, Some("api"))
    );
    assert!(lock(acct(), vec![first.id]).await.is_empty(), "only once");
    assert_eq!(lock(acct(), vec![second.id]).await.len(), 1);

    let later = enqueue(
        &db.pool,
        NewJob::new("noop", json!({})).run_at(Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    assert!(lock(acct(), vec![later.id]).await.is_empty(), "not yet due");
    queue::pause(&db.pool, &acct(), "default").await.unwrap();
    let paused = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    assert!(lock(acct(), vec![paused.id]).await.is_empty(), "paused");
    queue::resume(&db.pool, &acct(), "default").await.unwrap();
    assert_eq!(lock(acct(), vec![paused.id]).await.len(), 1);
}

/// `lock_following` locks, per key, the run of jobs behind a running one, in id order: a future scheduled job is
/// passed over, the run stops at the first job of another kind (or not due), `per_key` bounds it, and a paused
/// queue gives nothing. `complete_locked` then completes them with their attempt taken, in the owner's name.
#[tokio::test]
async fn lock_following_takes_the_run_behind_a_job_and_complete_locked_settles_it() {
    let db = testkit::db().await;
    let lease = Duration::from_secs(30);
    let keyed = |k: &str| NewJob::new("noop", json!({})).concurrency_key(k);
    let a = enqueue(&db.pool, keyed("K")).await;
    let l1 = enqueue(&db.pool, keyed("L")).await;
    let b = enqueue(&db.pool, keyed("K")).await;
    let c = enqueue(&db.pool, keyed("K")).await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let _future = enqueue(&db.pool, keyed("K").run_at(later)).await;
    let e = enqueue(&db.pool, keyed("K")).await;
    let _other_kind = enqueue(&db.pool, NewJob::new("sleep", json!({})).concurrency_key("K")).await;
    let _after_it = enqueue(&db.pool, keyed("K")).await;
    let l2 = enqueue(&db.pool, keyed("L")).await;

    let first = claim_n(&db.pool, 10, lease).await;
    let mut ids: Vec<JobId> = first.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, vec![a.id, l1.id], "one job per key for a worker's claim");

    let mut tx = db.pool.begin().await.unwrap();
    let run = queue::lock_following(&mut *tx, &first, Some("v1"), 10).await.unwrap();
    assert_eq!(
        run.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![b.id, c.id, e.id, l2.id],
        "the runs behind a and l1, in id order"
    );
    assert!(run.iter().all(|j| j.state == JobState::Available && j.attempt == 0));
    let claimed_meanwhile = claim_n(&db.pool, 10, lease).await;
    assert!(claimed_meanwhile.is_empty(), "{claimed_meanwhile:?}");
    let settled: Vec<Completion> = run.iter().map(|j| ok(j.id, j.attempt)).collect();
    let mut done = queue::complete_locked(&mut *tx, &settled, "chain").await.unwrap();
    done.sort();
    assert_eq!(done, vec![b.id, c.id, e.id, l2.id]);
    tx.commit().await.unwrap();
    let b = queue::get(&db.pool, &acct(), b.id).await.unwrap();
    assert_eq!(
        (b.state, b.attempt, b.lease_owner.as_deref()),
        (JobState::Completed, 1, Some("chain"))
    );
    assert!(b.started_at.is_some() && b.finished_at.is_some());

    let mut tx = db.pool.begin().await.unwrap();
    let l3 = enqueue(&db.pool, keyed("L")).await;
    let run = queue::lock_following(&mut *tx, &first, Some("v1"), 1).await.unwrap();
    assert_eq!(run.iter().map(|j| j.id).collect::<Vec<_>>(), vec![l3.id], "one per key");
    tx.rollback().await.unwrap();

    queue::pause(&db.pool, &acct(), "default").await.unwrap();
    let run = queue::lock_following(&db.pool, &first, Some("v1"), 10).await.unwrap();
    assert!(run.is_empty(), "a paused queue: {run:?}");
}

/// A claim only takes kinds the worker knows; the others wait.
#[tokio::test]
async fn claim_skips_unknown_kinds() {
    let db = testkit::db().await;
    let unknown = enqueue(&db.pool, NewJob::new("mystery", json!({}))).await;
    let known = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![known.id]);
    let u = queue::get(&db.pool, &acct(), unknown.id).await.unwrap();
    assert_eq!(u.state, JobState::Available);
}

/// After a lease expires and another worker takes the job over, the first worker can no longer complete, fail
/// or heartbeat it.
#[tokio::test]
async fn stale_attempt_cannot_complete_fail_or_heartbeat_after_lease_reclaimed() {
    let db = testkit::db().await;
    let j = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    let first = claim_n(&db.pool, 1, Duration::from_millis(200)).await;
    assert_eq!(first[0].attempt, 1);
    // Wait for the lease to run out, then rescue (as maintenance would) with no backoff.
    let instant = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
    };
    eventually(Duration::from_secs(10), "lease to expire and be rescued", || async {
        let r = queue::rescue_expired(&db.pool, instant, 100).await.unwrap();
        (!r.is_empty()).then_some(())
    })
    .await;
    let rescued = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!(rescued.state, JobState::Retryable);
    assert!(rescued.errors[0].message.contains("lease expired"));
    let second = eventually(Duration::from_secs(10), "re-claim", || async {
        let c = claim_n(&db.pool, 1, Duration::from_secs(30)).await;
        c.into_iter().next()
    })
    .await;
    assert_eq!(second.attempt, 2);

    // The stale owner (attempt 1) is fenced off everywhere.
    assert!(queue::complete_many(&db.pool, &[ok(j.id, 1)]).await.unwrap().is_empty());
    let stale_fail = Failure {
        id: j.id,
        attempt: 1,
        message: "x".into(),
        permanent: true,
        retry_at: Utc::now(),
    };
    assert!(queue::fail_many(&db.pool, &[stale_fail]).await.unwrap().is_empty());
    assert!(queue::heartbeat(&db.pool, &[(j.id, 1)], Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert!(queue::snooze_many(
        &db.pool,
        &[Snooze {
            id: j.id,
            attempt: 1,
            delay: Duration::ZERO
        }]
    )
    .await
    .unwrap()
    .is_empty());
    assert!(queue::hand_back(&db.pool, &[(j.id, 1)]).await.unwrap().is_empty());
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(matches!(
        queue::complete_in(&mut conn, j.id, 1, json!(null)).await,
        Err(queue::Error::LeaseLost { attempt: 1, .. })
    ));

    // The new owner still can.
    assert_eq!(
        queue::heartbeat(&db.pool, &[(j.id, 2)], Duration::from_secs(30))
            .await
            .unwrap(),
        vec![j.id]
    );
    assert_eq!(
        queue::complete_many(&db.pool, &[ok(j.id, 2)]).await.unwrap(),
        vec![j.id]
    );
}

/// 50 concurrent enqueues with one idempotency key create exactly one job; all callers get it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_enqueues_with_one_key_create_one_job() {
    let db = testkit::db_with_max(60).await;
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let pool = db.pool.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            barrier.wait().await;
            queue::enqueue(
                &mut conn,
                &acct(),
                NewJob::new("noop", json!({"n": 1})).idempotency_key("order-1"),
            )
            .await
            .unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let e = t.await.unwrap();
        ids.push(e.job.id);
        if !e.replayed {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let n: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Same key, different payload: a conflict.
    let mut conn = db.pool.acquire().await.unwrap();
    let r = queue::enqueue(
        &mut conn,
        &acct(),
        NewJob::new("noop", json!({"n": 2})).idempotency_key("order-1"),
    )
    .await;
    assert!(matches!(r, Err(queue::Error::IdempotencyConflict { .. })), "{r:?}");
}

/// Idempotency keys are per account: another account may reuse one.
#[tokio::test]
async fn idempotency_keys_are_per_account() {
    let db = testkit::db().await;
    sqlx::query("insert into account (id) values ('other')")
        .execute(&db.pool)
        .await
        .unwrap();
    let other = AccountId::parse("other").unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let a = queue::enqueue(&mut conn, &acct(), NewJob::new("noop", json!({})).idempotency_key("k"))
        .await
        .unwrap();
    let b = queue::enqueue(&mut conn, &other, NewJob::new("noop", json!({})).idempotency_key("k"))
        .await
        .unwrap();
    assert!(!a.replayed && !b.replayed);
    assert_ne!(a.job.id, b.job.id);
}

/// A batch gets ids in batch order; a replayed key returns the existing job; a conflicting key fails the whole
/// batch, naming its index.
#[tokio::test]
async fn batch_enqueue_orders_ids_replays_and_rejects_conflicts_whole() {
    let db = testkit::db().await;
    let first = enqueue(&db.pool, NewJob::new("noop", json!({"x": 1})).idempotency_key("dup")).await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..100)
        .map(|i| NewJob::new("noop", json!({"i": i})))
        .chain([NewJob::new("noop", json!({"x": 1})).idempotency_key("dup")])
        .collect();
    let out = q.enqueue_many(&acct(), jobs).await.unwrap();
    assert_eq!(out.len(), 101);
    assert!(
        out.windows(2).take(99).all(|w| w[0].id < w[1].id),
        "ids follow batch order"
    );
    assert!(out[..100].iter().all(|o| !o.replayed));
    assert_eq!(out[100].id, first.id);
    assert!(out[100].replayed);

    let before: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let bad: Vec<NewJob> = (0..5)
        .map(|i| NewJob::new("noop", json!({"i": i})))
        .chain([NewJob::new("noop", json!({"x": 2})).idempotency_key("dup")])
        .collect();
    match q.enqueue_many(&acct(), bad).await {
        Err(queue::Error::IdempotencyConflict { index: Some(5), .. }) => {}
        other => panic!("expected a conflict at index 5, got {other:?}"),
    }
    let after: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "nothing of a failed batch is kept");

    let invalid = vec![
        NewJob::new("noop", json!({})),
        NewJob::new("noop", json!({})).priority(11),
    ];
    match q.enqueue_many(&acct(), invalid).await {
        Err(queue::Error::Invalid(errs)) => assert_eq!(errs[0].path, "/jobs/1/priority"),
        other => panic!("expected invalid, got {other:?}"),
    }
}

/// Claims follow priority (0 first), then run_at, then enqueue order.
#[tokio::test]
async fn claims_follow_priority_then_age() {
    let db = testkit::db().await;
    let low = enqueue(&db.pool, NewJob::new("noop", json!({})).priority(9)).await;
    let mid1 = enqueue(&db.pool, NewJob::new("noop", json!({})).priority(5)).await;
    let high = enqueue(&db.pool, NewJob::new("noop", json!({})).priority(0)).await;
    let mid2 = enqueue(&db.pool, NewJob::new("noop", json!({})).priority(5)).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let c = claim_n(&db.pool, 1, Duration::from_secs(30)).await;
        order.push(c[0].id);
    }
    assert_eq!(order, vec![high.id, mid1.id, mid2.id, low.id]);
}

/// A job with a future run_at is not claimed before it, and is claimed once it passes.
#[tokio::test]
async fn run_at_in_the_future_waits() {
    let db = testkit::db().await;
    let at = Utc::now() + chrono::Duration::milliseconds(700);
    let j = enqueue(&db.pool, NewJob::new("noop", json!({})).run_at(at)).await;
    assert_eq!(j.state, JobState::Scheduled);
    assert!(claim_n(&db.pool, 10, Duration::from_secs(30)).await.is_empty());
    let got = eventually(Duration::from_secs(10), "scheduled job to be claimable", || async {
        claim_n(&db.pool, 10, Duration::from_secs(30)).await.into_iter().next()
    })
    .await;
    assert_eq!(got.id, j.id);
    assert!(got.started_at.unwrap() >= at);
}

/// A paused queue yields nothing for that account; other accounts and the resumed queue proceed.
#[tokio::test]
async fn pause_stops_claims_for_that_account_only() {
    let db = testkit::db().await;
    sqlx::query("insert into account (id) values ('other')")
        .execute(&db.pool)
        .await
        .unwrap();
    let other = AccountId::parse("other").unwrap();
    let mine = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let theirs = queue::enqueue(&mut conn, &other, NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job;
    queue::pause(&db.pool, &acct(), "default").await.unwrap();
    queue::pause(&db.pool, &acct(), "default").await.unwrap();
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![theirs.id]);
    let stats = queue::queue_stats(&db.pool, &acct(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(stats[0].paused);
    queue::resume(&db.pool, &acct(), "default").await.unwrap();
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![mine.id]);
}

/// Jobs of one concurrency key never run together and start in enqueue order, even when enqueued by 8
/// concurrent clients; other keys are not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_key_runs_one_at_a_time_in_enqueue_order() {
    let db = testkit::db_with_max(20).await;
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let pool = db.pool.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            barrier.wait().await;
            for i in 0..10 {
                queue::enqueue(
                    &mut conn,
                    &acct(),
                    NewJob::new("noop", json!({"c": c, "i": i})).concurrency_key("K"),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let other = enqueue(&db.pool, NewJob::new("noop", json!({})).concurrency_key("L")).await;
    let mut started = Vec::new();
    let mut saw_other = false;
    loop {
        let got = claim_n(&db.pool, 50, Duration::from_secs(30)).await;
        let of_k: Vec<_> = got
            .iter()
            .filter(|j| j.concurrency_key.as_deref() == Some("K"))
            .collect();
        assert!(of_k.len() <= 1, "two jobs of one key claimed together");
        saw_other |= got.iter().any(|j| j.id == other.id);
        if got.is_empty() {
            break;
        }
        for j in &got {
            if j.concurrency_key.as_deref() == Some("K") {
                started.push(j.id);
            }
        }
        let done: Vec<Completion> = got.iter().map(|j| ok(j.id, j.attempt)).collect();
        queue::complete_many(&db.pool, &done).await.unwrap();
    }
    assert!(saw_other, "another key is not blocked");
    assert_eq!(started.len(), 80);
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "a key's jobs start in enqueue order");
}

/// A retryable job blocks later jobs of its key; a job scheduled in the future does not, until it is due.
#[tokio::test]
async fn concurrency_key_blocking_rules() {
    let db = testkit::db().await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let future = enqueue(
        &db.pool,
        NewJob::new("noop", json!({})).concurrency_key("K").run_at(later),
    )
    .await;
    let a = enqueue(&db.pool, NewJob::new("noop", json!({})).concurrency_key("K")).await;
    let b = enqueue(&db.pool, NewJob::new("noop", json!({})).concurrency_key("K")).await;
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a.id],
        "future job does not block"
    );
    let f = Failure {
        id: a.id,
        attempt: 1,
        message: "boom".into(),
        permanent: false,
        retry_at: later,
    };
    queue::fail_many(&db.pool, &[f]).await.unwrap();
    assert!(
        claim_n(&db.pool, 10, Duration::from_secs(30)).await.is_empty(),
        "retryable job blocks b"
    );
    let _ = (future, b);
}

/// Failures back off as retryable with the error recorded, and are discarded once attempts run out; a permanent
/// failure discards at once.
#[tokio::test]
async fn failures_retry_then_discard() {
    let db = testkit::db().await;
    let j = enqueue(&db.pool, NewJob::new("fail", json!({})).max_attempts(2)).await;
    let perm = enqueue(&db.pool, NewJob::new("fail", json!({}))).await;
    let got = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    let soon = Utc::now() + chrono::Duration::milliseconds(50);
    queue::fail_many(
        &db.pool,
        &[
            Failure {
                id: j.id,
                attempt: 1,
                message: "first".into(),
                permanent: false,
                retry_at: soon,
            },
            Failure {
                id: perm.id,
                attempt: 1,
                message: "bad args".into(),
                permanent: true,
                retry_at: soon,
            },
        ],
    )
    .await
    .unwrap();
    let r = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!(r.state, JobState::Retryable);
    assert_eq!((r.errors[0].attempt, r.errors[0].message.as_str()), (1, "first"));
    let at = serde_json::to_value(&r.errors[0]).unwrap()["at"].clone();
    assert!(at.as_str().unwrap().ends_with('Z'), "{at}");
    let p = queue::get(&db.pool, &acct(), perm.id).await.unwrap();
    assert_eq!(p.state, JobState::Discarded);
    assert!(p.finished_at.is_some());

    let again = eventually(Duration::from_secs(10), "retry to be due", || async {
        claim_n(&db.pool, 10, Duration::from_secs(30)).await.into_iter().next()
    })
    .await;
    assert_eq!((again.id, again.attempt), (j.id, 2));
    let f = Failure {
        id: j.id,
        attempt: 2,
        message: "second".into(),
        permanent: false,
        retry_at: soon,
    };
    queue::fail_many(&db.pool, &[f]).await.unwrap();
    let r = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!(r.state, JobState::Discarded, "attempts exhausted");
    assert_eq!(r.errors.len(), 2);

    // Retrying a discarded job with no attempts left grants one more.
    let mut conn = db.pool.acquire().await.unwrap();
    let r = queue::retry(&mut conn, &acct(), j.id).await.unwrap();
    assert_eq!((r.state, r.max_attempts), (JobState::Available, 3));
    let c = claim_n(&db.pool, 10, Duration::from_secs(30)).await;
    assert_eq!((c[0].id, c[0].attempt), (j.id, 3));
}

/// A snooze puts the job back without using up the attempt.
#[tokio::test]
async fn snooze_does_not_use_an_attempt() {
    let db = testkit::db().await;
    let j = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    claim_n(&db.pool, 1, Duration::from_secs(30)).await;
    let s = Snooze {
        id: j.id,
        attempt: 1,
        delay: Duration::from_secs(60),
    };
    assert_eq!(queue::snooze_many(&db.pool, &[s]).await.unwrap(), vec![j.id]);
    let r = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!((r.state, r.attempt), (JobState::Scheduled, 0));
    assert!(r.run_at > Utc::now() + chrono::Duration::seconds(50));
}

/// Hand-back at shutdown makes a job available at once and returns its attempt.
#[tokio::test]
async fn hand_back_returns_the_attempt() {
    let db = testkit::db().await;
    let j = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    claim_n(&db.pool, 1, Duration::from_secs(30)).await;
    assert_eq!(queue::hand_back(&db.pool, &[(j.id, 1)]).await.unwrap(), vec![j.id]);
    let r = queue::get(&db.pool, &acct(), j.id).await.unwrap();
    assert_eq!((r.state, r.attempt), (JobState::Available, 0));
    assert_eq!(claim_n(&db.pool, 1, Duration::from_secs(30)).await[0].attempt, 1);
}

/// Cancelling a waiting job finishes it; cancelling a running one fences its worker; a finished job cannot be
/// cancelled.
#[tokio::test]
async fn cancel_waiting_and_running_jobs() {
    let db = testkit::db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let w = enqueue(
        &db.pool,
        NewJob::new("noop", json!({})).run_at(Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    let c = queue::cancel(&mut conn, &acct(), w.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert!(matches!(
        queue::cancel(&mut conn, &acct(), w.id).await,
        Err(queue::Error::InvalidState {
            state: JobState::Cancelled,
            ..
        })
    ));
    let r = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    claim_n(&db.pool, 1, Duration::from_secs(30)).await;
    queue::cancel(&mut conn, &acct(), r.id).await.unwrap();
    assert!(queue::complete_many(&db.pool, &[ok(r.id, 1)]).await.unwrap().is_empty());
    assert!(matches!(
        queue::cancel(&mut conn, &acct(), JobId(999_999)).await,
        Err(queue::Error::NotFound { .. })
    ));
    // A handler may cancel its own running job too.
    let h = enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    claim_n(&db.pool, 1, Duration::from_secs(30)).await;
    assert_eq!(
        queue::cancel_running(&db.pool, &[(h.id, 1, "not needed".into())])
            .await
            .unwrap(),
        vec![h.id]
    );
    let h = queue::get(&db.pool, &acct(), h.id).await.unwrap();
    assert_eq!(h.state, JobState::Cancelled);
    assert!(h.errors[0].message.contains("not needed"));
}

/// Listing is newest first, filtered, and paged by cursor; another account's jobs never appear.
#[tokio::test]
async fn list_pages_newest_first() {
    let db = testkit::db().await;
    sqlx::query("insert into account (id) values ('other')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue(
        &mut conn,
        &AccountId::parse("other").unwrap(),
        NewJob::new("noop", json!({})),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            enqueue(
                &db.pool,
                NewJob::new(if i % 2 == 0 { "noop" } else { "sleep" }, json!({})),
            )
            .await
            .id,
        );
    }
    let (page, next) = queue::list(
        &db.pool,
        &acct(),
        &JobFilter {
            limit: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[4], ids[3]]);
    let (page2, next2) = queue::list(
        &db.pool,
        &acct(),
        &JobFilter {
            limit: 10,
            before: next,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    assert_eq!(next2, None);
    let f = JobFilter {
        kind: Some("sleep".into()),
        state: Some(JobState::Available),
        limit: 10,
        ..Default::default()
    };
    let (sleeps, _) = queue::list(&db.pool, &acct(), &f).await.unwrap();
    assert_eq!(sleeps.len(), 2);
}

/// Queue statistics count by state, count kinds no live worker knows as unclaimable, and age the oldest job.
#[tokio::test]
async fn queue_stats_count_states_and_unclaimable() {
    let db = testkit::db().await;
    enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    enqueue(&db.pool, NewJob::new("mystery", json!({}))).await;
    enqueue(
        &db.pool,
        NewJob::new("noop", json!({})).run_at(Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    let done = enqueue(&db.pool, NewJob::new("noop", json!({})).queue("other")).await;
    // Completed through the queue, whose statements keep the finished counts.
    let kinds = kinds();
    let claimed = queue::claim(
        &mut db.pool.acquire().await.unwrap(),
        &ClaimRequest {
            queue: "other",
            kinds: &kinds,
            pool: "default",
            version: "v1",
            worker_id: "test-worker",
            lease: Duration::from_secs(30),
            limit: 1,
        },
        &mut queue::FairShare::new(),
    )
    .await
    .unwrap();
    assert_eq!(claimed[0].id, done.id);
    queue::complete_many(&db.pool, &[ok(done.id, claimed[0].attempt)])
        .await
        .unwrap();
    let w = worker_info(1);
    queue::register_worker(&db.pool, &w).await.unwrap();
    let active = queue::queue_stats(&db.pool, &acct(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        active.iter().all(|s| s.queue != "other"),
        "a queue with only history has no live figures"
    );
    let finished = queue::finished_counts(&db.pool, &acct()).await.unwrap();
    let stats = queue::with_finished(active, &finished);
    let d = stats.iter().find(|s| s.queue == "default").unwrap();
    assert_eq!((d.available, d.scheduled, d.unclaimable, d.completed), (2, 1, 1, 0));
    let o = stats.iter().find(|s| s.queue == "other").unwrap();
    assert_eq!((o.completed, o.available, o.unclaimable), (1, 0, 0));
    assert_eq!(
        stats.iter().map(|s| s.queue.as_str()).collect::<Vec<_>>(),
        ["default", "other"]
    );
}

/// Due scheduled and retryable jobs are promoted to available.
#[tokio::test]
async fn promote_due_moves_due_jobs_to_available() {
    let db = testkit::db().await;
    let j = enqueue(
        &db.pool,
        NewJob::new("noop", json!({})).run_at(Utc::now() + chrono::Duration::milliseconds(100)),
    )
    .await;
    eventually(Duration::from_secs(10), "promotion", || async {
        queue::promote_due(&db.pool, 100).await.unwrap();
        let s = queue::get(&db.pool, &acct(), j.id).await.unwrap().state;
        (s == JobState::Available).then_some(())
    })
    .await;
}

/// The claim uses the partial claim index on a large backlog with finished history, never a sequential scan.
#[tokio::test]
async fn claim_plan_uses_the_claim_index_on_a_large_table() {
    let db = testkit::db().await;
    sqlx::query(
        r#"
        insert into job (kind, args, state, finished_at)
        select 'noop', '{}', case when g % 2 = 0 then 'completed' else 'available' end,
               case when g % 2 = 0 then now() end
        from generate_series(1, 100000) g
        "#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("analyze job").execute(&db.pool).await.unwrap();
    let sql = r#"
        explain
        select j.id from job j
        where j.state in ('available', 'scheduled', 'retryable') and j.queue = 'default' and j.run_at <= now()
          and j.kind = any('{noop}') and (j.version is null or j.version = 'v1')
          and not exists (select 1 from queue_pause p where p.account_id = j.account_id and p.queue = j.queue)
        order by j.priority, j.run_at, j.id
        limit 500
        for update skip locked
    "#;
    let plan: Vec<String> = sqlx::query_scalar(sql).fetch_all(&db.pool).await.unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("job_queue_priority_run_at_id_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan on job"), "{plan}");
    assert!(!plan.contains("Sort"), "the index provides the order: {plan}");
}

/// One holder at a time for a named lease; it passes on after release or expiry.
#[tokio::test]
async fn leader_lease_has_one_holder() {
    let db = testkit::db().await;
    let ttl = Duration::from_secs(30);
    assert!(ordo::leader::acquire(&db.pool, "x", "a", ttl).await.unwrap());
    assert!(ordo::leader::acquire(&db.pool, "x", "a", ttl).await.unwrap(), "renewal");
    assert!(!ordo::leader::acquire(&db.pool, "x", "b", ttl).await.unwrap());
    assert_eq!(ordo::leader::holder(&db.pool, "x").await.unwrap().as_deref(), Some("a"));
    ordo::leader::release(&db.pool, "x", "a").await.unwrap();
    assert!(ordo::leader::acquire(&db.pool, "x", "b", Duration::from_millis(100))
        .await
        .unwrap());
    eventually(Duration::from_secs(5), "short lease to expire", || async {
        ordo::leader::acquire(&db.pool, "x", "c", ttl)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
}

/// Workers register, heartbeat, show up as live, and disappear when deregistered.
#[tokio::test]
async fn worker_registry_tracks_live_workers() {
    let db = testkit::db().await;
    let w = worker_info(4);
    queue::register_worker(&db.pool, &w).await.unwrap();
    assert!(queue::heartbeat_worker(&db.pool, "w1", true).await.unwrap());
    let live = queue::live_workers(&db.pool, Duration::from_secs(30)).await.unwrap();
    assert_eq!(live.len(), 1);
    assert!(live[0].stopping);
    queue::deregister_worker(&db.pool, "w1").await.unwrap();
    assert!(!queue::heartbeat_worker(&db.pool, "w1", false).await.unwrap());
    assert!(queue::live_workers(&db.pool, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

/// Invalid jobs are refused before reaching the database, naming each field.
#[tokio::test]
async fn enqueue_rejects_invalid_jobs() {
    let db = testkit::db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let r = queue::enqueue(&mut conn, &acct(), NewJob::new("noop", json!({})).max_attempts(0)).await;
    match r {
        Err(queue::Error::Invalid(e)) => assert_eq!(e[0].path, "/max_attempts"),
        other => panic!("{other:?}"),
    }
}

/// Fenced batch writes probe the primary key whatever the statistics say: with stats taken while nothing ran,
/// the planner thinks `state = 'running'` matches one row and would test 1 000 pairs against every row of a
/// small table (quadratic). Checked on the statement `complete_many` sends, at two table sizes.
#[tokio::test]
async fn fenced_writes_probe_the_primary_key() {
    for rows in [5_000, 50_000] {
        let db = testkit::db().await;
        sqlx::query("insert into job (kind, args) select 'noop', '{}' from generate_series(1, $1)")
            .bind(rows)
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("analyze job").execute(&db.pool).await.unwrap();
        let claimed = claim_n(&db.pool, 1000, Duration::from_secs(30)).await;
        let ids: Vec<i64> = claimed.iter().map(|j| j.id.0).collect();
        let attempts: Vec<i32> = claimed.iter().map(|j| j.attempt).collect();
        // A connection as ordo's roles open them.
        let pool = ordo::db::connect(&db.url, 1).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(
            r#"
            explain
            update job
            set state = 'completed', finished_at = now(), leased_until = null
            from job_leases($1, $2) as r
            where job.id = r.id and job.attempt = r.attempt and job.state = 'running'
            returning job.id
            "#,
        )
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&pool)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan using job_pkey"), "{rows} rows: {plan}");
        assert!(!plan.contains("Seq Scan"), "{rows} rows: {plan}");
        let done = queue::complete_many(&pool, &claimed.iter().map(|j| ok(j.id, j.attempt)).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(done.len(), 1000);
    }
}

/// A job enqueued inside the caller's transaction commits with it or not at all, concurrency key included.
#[tokio::test]
async fn enqueue_inside_a_callers_transaction_commits_or_rolls_back_with_it() {
    let db = testkit::db().await;
    let mut tx = db.pool.begin().await.unwrap();
    let gone = queue::enqueue(&mut tx, &acct(), NewJob::new("noop", json!({})).concurrency_key("K"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(queue::get(&db.pool, &acct(), gone.job.id).await.is_err());

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("create table app_order (id int primary key)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("insert into app_order values (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = queue::enqueue(&mut tx, &acct(), NewJob::new("noop", json!({"order": 1})))
        .await
        .unwrap();
    let keyed = queue::enqueue(&mut tx, &acct(), NewJob::new("noop", json!({})).concurrency_key("K"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        queue::get(&db.pool, &acct(), kept.job.id).await.unwrap().state,
        JobState::Available
    );
    assert_eq!(
        queue::get(&db.pool, &acct(), keyed.job.id).await.unwrap().state,
        JobState::Available
    );
}

/// Several jobs read in one round trip come back in the order asked, without other accounts' jobs.
#[tokio::test]
async fn get_many_reads_in_the_order_asked() {
    let db = testkit::db().await;
    sqlx::query("insert into account (id) values ('other')")
        .execute(&db.pool)
        .await
        .unwrap();
    let a = enqueue(&db.pool, NewJob::new("noop", json!({"n": 1}))).await;
    let b = enqueue(&db.pool, NewJob::new("noop", json!({"n": 2}))).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let theirs = queue::enqueue(
        &mut conn,
        &AccountId::parse("other").unwrap(),
        NewJob::new("noop", json!({})),
    )
    .await
    .unwrap()
    .job;
    let got = queue::get_many(&db.pool, &acct(), &[b.id, theirs.id, a.id])
        .await
        .unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id, a.id]);
}

/// The maintainer's autovacuum check reads the server's setting.
#[tokio::test]
async fn autovacuum_check_reads_the_server_setting() {
    let db = testkit::db().await;
    let shown: String = sqlx::query_scalar("show autovacuum").fetch_one(&db.pool).await.unwrap();
    assert_eq!(queue::autovacuum_on(&db.pool).await.unwrap(), shown == "on");
}

/// A job must belong to an existing account: enqueue checks once per statement (no foreign-key trigger per row),
/// for one job and for a batch, and writes nothing.
#[tokio::test]
async fn enqueue_for_an_unknown_account_is_refused() {
    let db = testkit::db().await;
    let ghost = AccountId::parse("ghost").unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let one = queue::enqueue(&mut conn, &ghost, NewJob::new("noop", json!({}))).await;
    assert!(matches!(one, Err(queue::Error::UnknownAccount { .. })), "{one:?}");
    let mut tx = db.pool.begin().await.unwrap();
    let many = queue::enqueue_many(
        &mut tx,
        &ghost,
        &[NewJob::new("noop", json!({})), NewJob::new("noop", json!({}))],
    )
    .await;
    assert!(matches!(many, Err(queue::Error::UnknownAccount { .. })), "{many:?}");
    drop(tx);
    let n: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &acct(), NewJob::new("noop", json!({})))
        .await
        .unwrap();
}

/// A large batch of plain jobs goes in by binary COPY: ids in batch order, every field as given, jobs without a
/// run_at due by the server's clock, future ones scheduled, counted as enqueued, and claimable like any other.
#[tokio::test]
async fn a_plain_batch_is_copied_in_with_every_field() {
    let db = testkit::db().await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| {
            let job = NewJob::new("noop", json!({"i": i, "text": "naïve \"quoted\" \\ line\nbreak"}))
                .priority((i % 10) as i16)
                .max_attempts(3 + i % 2)
                .timeout_ms(1000 + i);
            match i % 3 {
                0 => job.run_at(later),
                1 => job.queue("other"),
                _ => job,
            }
        })
        .collect();
    let before: chrono::DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(&db.pool).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let out = queue::enqueue_many(&mut tx, &acct(), &jobs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(out.len(), 500);
    assert!(out.windows(2).all(|w| w[0].id < w[1].id), "ids in batch order");
    assert!(out.iter().all(|o| !o.replayed));
    let ids: Vec<JobId> = out.iter().map(|o| o.id).collect();
    let stored = queue::get_many(&db.pool, &acct(), &ids).await.unwrap();
    assert_eq!(stored.len(), 500);
    for (i, (job, want)) in stored.iter().zip(&jobs).enumerate() {
        assert_eq!(job.args, want.args, "job {i}");
        assert_eq!(
            (job.kind.as_str(), job.queue.as_str()),
            (want.kind.as_str(), want.queue.as_str())
        );
        assert_eq!(job.priority, want.priority);
        assert_eq!(job.max_attempts, want.max_attempts);
        assert_eq!(job.timeout_ms, want.timeout_ms);
        assert_eq!(job.attempt, 0);
        match want.run_at {
            Some(at) => {
                assert_eq!(job.state, JobState::Scheduled);
                assert_eq!(job.run_at.timestamp_micros(), at.timestamp_micros());
            }
            None => {
                assert_eq!(job.state, JobState::Available);
                assert!(job.run_at >= before, "due by the server's clock");
            }
        }
    }
    let counted: i64 = queue::throughput(&db.pool, &acct(), None, before - chrono::Duration::minutes(1))
        .await
        .unwrap()
        .iter()
        .map(|t| t.enqueued)
        .sum();
    assert_eq!(counted, 500);
    let due_default = jobs
        .iter()
        .filter(|j| j.run_at.is_none() && j.queue == "default")
        .count();
    let claimed = claim_n(&db.pool, 1000, Duration::from_secs(30)).await;
    assert_eq!(
        claimed.len(),
        due_default,
        "the due jobs of `default`, none of the future ones"
    );
    assert!(
        claimed.windows(2).all(|w| w[0].priority <= w[1].priority),
        "in priority order"
    );
}

/// A copied batch for an unknown account is refused, and while a rollout routes work a plain batch takes the
/// statement path, so every job gets its version.
#[tokio::test]
async fn a_copied_batch_checks_the_account_and_yields_to_routing() {
    let db = testkit::db().await;
    let jobs: Vec<NewJob> = (0..100).map(|i| NewJob::new("noop", json!({"i": i}))).collect();
    let mut tx = db.pool.begin().await.unwrap();
    let err = queue::enqueue_many(&mut tx, &AccountId::parse("nobody").unwrap(), &jobs)
        .await
        .unwrap_err();
    assert!(matches!(err, queue::Error::UnknownAccount { .. }), "{err}");
    drop(tx);
    sqlx::query(
        "insert into rollout (pool, from_version, to_version, state, canary_percent) values ('default', 'v1', 'v2', 'canary', 50)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let out = queue::enqueue_many(&mut tx, &acct(), &jobs).await.unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<JobId> = out.iter().map(|o| o.id).collect();
    let versions: std::collections::BTreeSet<Option<String>> = queue::get_many(&db.pool, &acct(), &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.version)
        .collect();
    assert_eq!(
        versions,
        [Some("v1".to_owned()), Some("v2".to_owned())].into_iter().collect(),
        "routed half and half by the canary"
    );
}

/// Under the API's role, where row-level security keeps COPY out of `job`, a plain batch goes through a temporary
/// table: two batches in one transaction each insert their own jobs once, under the account's policy.
#[tokio::test]
async fn copied_batches_under_the_api_role_insert_each_job_once() {
    let db = testkit::db().await;
    let mut tx = testkit::api_transaction(&db.pool, &acct()).await;
    let mut ids = Vec::new();
    for b in 0..2 {
        let jobs: Vec<NewJob> = (0..100).map(|i| NewJob::new("noop", json!({"b": b, "i": i}))).collect();
        let out = queue::enqueue_many(&mut tx, &acct(), &jobs).await.unwrap();
        ids.extend(out.into_iter().map(|o| o.id.0));
    }
    tx.commit().await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("select id from job order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, ids, "200 jobs, each once, in batch order");
}

/// A transaction whose planner may not use nested loops, hash joins or sequential scans, with the reads of `job`
/// so far: any plan that walks an index of `job` for a join is now the cheapest it has.
async fn walk_preferring_tx(pool: &PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, i64) {
    let mut tx = pool.begin().await.expect("begin");
    for off in ["enable_nestloop", "enable_hashjoin", "enable_seqscan"] {
        sqlx::query(&format!("set local {off} = off"))
            .execute(&mut *tx)
            .await
            .expect("set");
    }
    let before: i64 = sqlx::query_scalar(JOB_READS).fetch_one(&mut *tx).await.expect("reads");
    (tx, before)
}

/// Commits `tx` and asserts that `what` read few rows of `job` since `before`.
async fn assert_probed(mut tx: sqlx::Transaction<'static, sqlx::Postgres>, before: i64, what: &str) {
    let after: i64 = sqlx::query_scalar(JOB_READS).fetch_one(&mut *tx).await.expect("reads");
    tx.commit().await.expect("commit");
    assert!(
        after - before < 1_000,
        "{what} read {} rows of job: a walk past the dead versions, not a probe by id",
        after - before
    );
}

/// Every statement that settles leased jobs, rescues them or releases their lanes finds them by probing `job`'s
/// key, whatever plan looks cheaper: with 20 000 dead row versions kept by a snapshot held open and the planner
/// denied nested loops, hash joins and sequential scans (which leaves a merge join walking `job_pkey` wherever a
/// statement joins `job` by `=`), each reads a few rows, not the dead versions. A soak under a held snapshot
/// stalled on such a walk, chosen on statistics that called `job` empty.
#[tokio::test]
async fn settling_probes_each_job_by_id_whatever_plan_looks_cheaper() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let mut pin = pool.begin().await.expect("begin");
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *pin)
        .await
        .expect("isolation");
    sqlx::query("select 1").execute(&mut *pin).await.expect("snapshot");
    sqlx::query(
        "insert into job (account_id, queue, kind, args, state) \
         select 'filler', 'default', 'noop', '{}', 'completed' from generate_series(1, 20000)",
    )
    .execute(pool)
    .await
    .expect("fill");
    sqlx::query("delete from job where account_id = 'filler'")
        .execute(pool)
        .await
        .expect("delete");
    sqlx::query("analyze job").execute(pool).await.expect("analyze");

    let names = [
        "complete",
        "fail",
        "discard",
        "snooze",
        "cancel",
        "hand_back",
        "heartbeat",
        "rescue",
    ];
    for n in names {
        enqueue(pool, NewJob::new("noop", json!({ "n": n }))).await;
    }
    // Lanes with a parked job behind their heads: released by a completion, handed over, and released by
    // `release_lanes` once its head is gone.
    let lanes = [
        ("k1", "lane"),
        ("k1", "parked1"),
        ("k2", "hand_off"),
        ("k2", "parked2"),
        ("k3", "marked"),
        ("k3", "parked3"),
    ];
    for (key, n) in lanes {
        enqueue(pool, NewJob::new("noop", json!({ "n": n })).concurrency_key(key)).await;
    }
    let claimed = claim_n(pool, 20, Duration::from_secs(30)).await;
    assert_eq!(
        claimed.len(),
        names.len() + 3,
        "every head claimed, the parked jobs not"
    );
    let job = |n: &str| {
        claimed
            .iter()
            .find(|j| j.args["n"] == n)
            .unwrap_or_else(|| panic!("{n} claimed"))
            .clone()
    };

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("complete");
    assert_eq!(
        queue::complete_many(&mut *tx, &[ok(j.id, j.attempt)]).await.unwrap(),
        vec![j.id]
    );
    assert_probed(tx, before, "complete_many").await;

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("lane");
    assert_eq!(
        queue::complete_many(&mut *tx, &[ok(j.id, j.attempt)]).await.unwrap(),
        vec![j.id]
    );
    assert_probed(tx, before, "complete_many releasing a lane").await;

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("hand_off");
    let kinds = kinds();
    let offer = queue::HandOff {
        worker_id: "test-worker",
        lease: Duration::from_secs(30),
        kinds: &kinds,
        queues: &["default".to_owned()],
        pool: "default",
        version: "v1",
        limit: 1,
    };
    let (done, handed) = queue::complete_handing_off(&mut tx, &[ok(j.id, j.attempt)], &offer)
        .await
        .unwrap();
    assert_eq!((done, handed.len()), (vec![j.id], 1));
    assert_probed(tx, before, "complete_handing_off").await;

    for (n, permanent) in [("fail", false), ("discard", true)] {
        let (mut tx, before) = walk_preferring_tx(pool).await;
        let j = job(n);
        let failure = Failure {
            id: j.id,
            attempt: j.attempt,
            message: "boom".into(),
            permanent,
            retry_at: Utc::now(),
        };
        assert_eq!(queue::fail_many(&mut *tx, &[failure]).await.unwrap(), vec![j.id]);
        assert_probed(tx, before, n).await;
    }

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("snooze");
    let snooze = Snooze {
        id: j.id,
        attempt: j.attempt,
        delay: Duration::from_secs(60),
    };
    assert_eq!(queue::snooze_many(&mut *tx, &[snooze]).await.unwrap(), vec![j.id]);
    assert_probed(tx, before, "snooze_many").await;

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("cancel");
    let cancelled = queue::cancel_running(&mut *tx, &[(j.id, j.attempt, "no".into())])
        .await
        .unwrap();
    assert_eq!(cancelled, vec![j.id]);
    assert_probed(tx, before, "cancel_running").await;

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("hand_back");
    assert_eq!(
        queue::hand_back(&mut *tx, &[(j.id, j.attempt)]).await.unwrap(),
        vec![j.id]
    );
    assert_probed(tx, before, "hand_back").await;

    let (mut tx, before) = walk_preferring_tx(pool).await;
    let j = job("heartbeat");
    let held = queue::heartbeat(&mut *tx, &[(j.id, j.attempt)], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(held, vec![j.id]);
    assert_probed(tx, before, "heartbeat").await;

    let j = job("rescue");
    sqlx::query("update job set leased_until = now() - interval '1 minute' where id = $1")
        .bind(j.id)
        .execute(pool)
        .await
        .expect("expire");
    let (mut tx, before) = walk_preferring_tx(pool).await;
    let rescued = queue::rescue_expired(&mut *tx, RetryPolicy::default(), 100)
        .await
        .unwrap();
    assert_eq!(rescued, vec![j.id]);
    assert_probed(tx, before, "rescue_expired").await;

    // A head gone without releasing its lane (as when a finish raced a parked enqueue), and the lane marked.
    sqlx::query("delete from job where id = $1")
        .bind(job("marked").id)
        .execute(pool)
        .await
        .expect("delete head");
    sqlx::query("insert into job_lane_mark (account_id, concurrency_key) values ($1, 'k3')")
        .bind(acct().as_str())
        .execute(pool)
        .await
        .expect("mark");
    let (mut tx, before) = walk_preferring_tx(pool).await;
    assert_eq!(
        queue::release_lanes(&mut *tx, 100).await.unwrap(),
        vec!["default".to_owned()]
    );
    assert_probed(tx, before, "release_lanes").await;

    pin.rollback().await.expect("rollback");
}
