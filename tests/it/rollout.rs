//! Versioned pools and rollouts: routing at enqueue, promote, abort, automatic abort, and a rollout under load
//! with real `ordo worker` processes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ordo::queue::{self, JobState, NewJob};
use ordo::rollout::{self, NewRollout, Role, RolloutState};
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;

use crate::support::{
    acct, count_state, create_execution_table, fast_config, signal, spawn_worker_process, start_worker, wait_for_state,
};

fn keyed(kind: &str, args: serde_json::Value, key: &str) -> NewJob {
    let mut j = NewJob::new(kind, args);
    j.concurrency_key = Some(key.to_owned());
    j
}

async fn versions_by_key(pool: &PgPool, min_id: i64) -> HashMap<String, HashSet<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select concurrency_key, version from job_all where id > $1 and concurrency_key is not null and version is not null",
    )
    .bind(min_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (k, v) in rows {
        out.entry(k).or_default().insert(v);
    }
    out
}

async fn start_canary(pool: &PgPool, percent: i16) -> rollout::Rollout {
    rollout::announce_version(pool, "default", "v1", &["default".to_owned()])
        .await
        .unwrap();
    let mut req = NewRollout::new("default", "v2");
    req.canary_percent = Some(percent);
    rollout::start(pool, &req).await.unwrap()
}

/// Outside a rollout jobs carry no version; during a 30 % canary new jobs split about 30/70 by key, every job of
/// a key gets the same version, keyless jobs split by id; after promote all new jobs go to the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_routes_by_weight_sticky_per_key_and_promote_routes_all_new_work() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let before = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap();
    assert_eq!(before.job.version, None, "no rollout: no version");

    let r = start_canary(&db.pool, 30).await;
    assert_eq!(
        (r.from_version.as_str(), r.to_version.as_str(), r.state),
        ("v1", "v2", RolloutState::Canary)
    );
    let jobs: Vec<NewJob> = (0..2000)
        .map(|i| keyed("noop", json!({}), &format!("order-{}", i % 200)))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let by_key = versions_by_key(&db.pool, 0).await;
    assert_eq!(by_key.len(), 200);
    assert!(
        by_key.values().all(|v| v.len() == 1),
        "every job of a key has one version"
    );
    let canary_keys = by_key.values().filter(|v| v.contains("v2")).count();
    assert!(
        (40..=80).contains(&canary_keys),
        "about 30 % of 200 keys on the canary: {canary_keys}"
    );
    let canary_jobs = sqlx::query_scalar::<_, i64>("select count(*) from job_all where version = 'v2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(canary_jobs, canary_keys as i64 * 10, "jobs follow their key");

    // Keyless jobs, one by one through the single-job path: split by id.
    let mut v2 = 0;
    for _ in 0..300 {
        let e = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap();
        match e.job.version.as_deref() {
            Some("v2") => v2 += 1,
            Some("v1") => {}
            other => panic!("routed to {other:?}"),
        }
    }
    assert!(
        (50..=130).contains(&v2),
        "about 30 % of 300 keyless jobs on the canary: {v2}"
    );

    let promoted = rollout::promote(&db.pool, r.id).await.unwrap();
    assert_eq!(promoted.state, RolloutState::Promoted);
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v1").await.unwrap(),
        Some(Role::Draining)
    );
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v2").await.unwrap(),
        Some(Role::Stable)
    );
    let last = queue::last_job_id(&db.pool).await.unwrap();
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| keyed("noop", json!({}), &format!("order-{}", i % 200)))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let after: Vec<Option<String>> = sqlx::query_scalar("select distinct version from job_all where id > $1")
        .bind(last)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        after,
        vec![Some("v2".to_owned())],
        "after promote all new work goes to v2"
    );

    // Illegal transitions and a second rollout are conflicts.
    assert!(matches!(
        rollout::promote(&db.pool, r.id).await,
        Err(rollout::Error::Conflict { .. })
    ));
    assert!(matches!(
        rollout::start(&db.pool, &NewRollout::new("default", "v3")).await,
        Err(rollout::Error::Conflict { .. })
    ));
    assert!(matches!(
        rollout::get(&db.pool, 999).await,
        Err(rollout::Error::NotFound { id: 999 })
    ));
}

/// Abort moves every unstarted canary job back to the stable version in one statement; with only stable workers
/// running, all of them then complete there and nothing is lost. The canary version is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_returns_unstarted_canary_work_to_stable() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let r = start_canary(&db.pool, 50).await;
    let jobs: Vec<NewJob> = (0..1000)
        .map(|i| keyed("noop", json!({}), &format!("k{}", i % 100)))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let canary: i64 = sqlx::query_scalar("select count(*) from job_all where version = 'v2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(canary > 200, "canary got its share: {canary}");

    let aborted = rollout::abort(&db.pool, r.id, None).await.unwrap();
    assert_eq!(aborted.state, RolloutState::Aborted);
    let left: i64 = sqlx::query_scalar("select count(*) from job_all where version = 'v2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "no job waits for the aborted canary");
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v2").await.unwrap(),
        Some(Role::Retired)
    );
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v1").await.unwrap(),
        Some(Role::Stable)
    );
    assert!(matches!(
        rollout::promote(&db.pool, r.id).await,
        Err(rollout::Error::Conflict { .. })
    ));
    assert!(matches!(
        rollout::abort(&db.pool, r.id, None).await,
        Err(rollout::Error::Conflict { .. })
    ));

    // A retired version claims nothing: its worker stops on its own and every job runs on v1.
    let mut cfg2 = fast_config();
    cfg2.version = "v2".into();
    cfg2.lease = Duration::from_millis(900);
    let w2 = start_worker(&db.pool, cfg2);
    let w1 = start_worker(&db.pool, fast_config());
    eventually(Duration::from_secs(60), "all 1000 jobs to complete", || async {
        (count_state(&db.pool, "completed").await == 1000).then_some(())
    })
    .await;
    let ran: Vec<Option<String>> = sqlx::query_scalar("select distinct version from job_all")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ran, vec![Some("v1".to_owned())], "the stable version ran everything");
    tokio::time::timeout(Duration::from_secs(30), w2.handle)
        .await
        .expect("the retired worker stops by itself")
        .unwrap();
    w1.stop().await;
}

/// A canary whose jobs fail above `max_failure_rate` is rolled back by the controller, without an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_aborted_automatically() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    rollout::announce_version(&db.pool, "default", "v1", &["default".to_owned()])
        .await
        .unwrap();
    let mut req = NewRollout::new("default", "v2");
    req.canary_percent = Some(50);
    req.max_failure_rate = Some(0.2);
    let r = rollout::start(&db.pool, &req).await.unwrap();
    let mut cfg1 = fast_config();
    cfg1.lease = Duration::from_millis(900);
    let mut cfg2 = cfg1.clone();
    cfg2.version = "v2".into();
    let w1 = start_worker(&db.pool, cfg1);
    let w2 = start_worker(&db.pool, cfg2);
    // The canary's jobs fail: these permanent failures land on both versions, but only the canary is judged.
    let jobs: Vec<NewJob> = (0..200)
        .map(|_| NewJob::new("fail", json!({"permanent": true})))
        .collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let controller = rollout::Controller::new(db.pool.clone(), "test-controller".into());
    let done = eventually(
        Duration::from_secs(60),
        "the controller to abort the canary",
        || async {
            controller.round().await.unwrap();
            let r = rollout::get(&db.pool, r.id).await.unwrap();
            (r.state == RolloutState::Aborted).then_some(r)
        },
    )
    .await;
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains("failure rate"), "reason: {reason}");
    // The admin audit names the controller as the one who aborted it.
    let audit: Vec<(String, String, String)> = ordo::audit::list(&db.pool, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.target, e.actor))
        .collect();
    assert_eq!(
        audit,
        vec![("rollout.abort".to_owned(), r.id.to_string(), "controller".to_owned())]
    );
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v2").await.unwrap(),
        Some(Role::Retired)
    );
    tokio::time::timeout(Duration::from_secs(30), w2.handle)
        .await
        .expect("the aborted canary's worker stops by itself")
        .unwrap();
    // New work now goes to no version in particular, and the stable version takes it.
    let e = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap();
    assert_eq!(e.job.version, None);
    crate::support::wait_for_state(&db.pool, e.job.id, JobState::Completed, Duration::from_secs(30)).await;
    w1.stop().await;
}

/// A failed attempt during a canary is retried on the version its key is routed to, and its error records the
/// version that ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_during_a_canary_are_routed_again_and_errors_name_the_version() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    start_canary(&db.pool, 50).await;
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| keyed("fail", json!({"times": 1}), &format!("k{i}")))
        .collect();
    let ids = q.enqueue_many(&acct(), jobs).await.unwrap();
    let routed: HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>("select id, version from job_all")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut cfg1 = fast_config();
    cfg1.lease = Duration::from_millis(900);
    let mut cfg2 = cfg1.clone();
    cfg2.version = "v2".into();
    let w1 = start_worker(&db.pool, cfg1);
    let w2 = start_worker(&db.pool, cfg2);
    eventually(Duration::from_secs(60), "all 40 jobs to complete", || async {
        (count_state(&db.pool, "completed").await == 40).then_some(())
    })
    .await;
    for o in ids {
        let j = queue::get(&db.pool, &acct(), o.id).await.unwrap();
        let want = &routed[&o.id.0];
        assert_eq!(j.version.as_ref(), Some(want), "job {} ran on its routed version", o.id);
        assert_eq!(
            j.errors[0].version.as_ref(),
            Some(want),
            "the failed attempt names its version"
        );
    }
    w1.stop().await;
    w2.stop().await;
}

/// A rollout under continuous load with real worker processes: during the canary both versions run work in
/// about the configured share and no key runs on both; after promote only v2 starts new work, v1's workers exit
/// 0 once v1 is drained and retired; every job completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_under_load_with_worker_processes() {
    let db = testkit::db_with_max(20).await;
    create_execution_table(&db.pool).await;
    let env = [("ORDO_LEASE_MS", "1500")];
    let mut blue: Vec<_> = (0..2)
        .map(|_| spawn_worker_process(&db.url, &env, &["--version", "v1", "--concurrency", "16"]))
        .collect();
    eventually(Duration::from_secs(30), "v1 to be the stable version", || async {
        let role = rollout::role_of(&db.pool, "default", "v1").await.unwrap();
        (role == Some(Role::Stable)).then_some(())
    })
    .await;
    let mut req = NewRollout::new("default", "v2");
    req.canary_percent = Some(30);
    let r = rollout::start(&db.pool, &req).await.unwrap();
    let green: Vec<_> = (0..2)
        .map(|_| spawn_worker_process(&db.url, &env, &["--version", "v2", "--concurrency", "16"]))
        .collect();

    // The load: batches of 50 jobs over 300 root entities, tagged with the phase they were enqueued in.
    // The phase is held while a batch is enqueued and while promoting, so a batch's tag says exactly which routing
    // it saw.
    let phase = Arc::new(tokio::sync::Mutex::new("canary"));
    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicU64::new(0));
    let load = {
        let (pool, phase, stop, enqueued) = (db.pool.clone(), phase.clone(), stop.clone(), enqueued.clone());
        tokio::spawn(async move {
            let q = queue::Queue::new(pool, ordo::wake::Waker::disabled());
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                // Keep the backlog bounded on a loaded machine: the load goes on, the workers keep up.
                let waiting: i64 = sqlx::query_scalar(
                    "select count(*) from job_all where state in ('available', 'scheduled', 'retryable')",
                )
                .fetch_one(q.pool())
                .await
                .unwrap();
                if waiting > 1500 {
                    continue;
                }
                let phase = phase.lock().await;
                let jobs: Vec<NewJob> = (0..50)
                    .map(|i| keyed("test.record", json!({"phase": *phase}), &format!("e{}", (n + i) % 300)))
                    .collect();
                q.enqueue_many(&acct(), jobs).await.unwrap();
                drop(phase);
                n += 50;
                enqueued.store(n, Ordering::SeqCst);
            }
        })
    };
    eventually(
        Duration::from_secs(120),
        "1000 canary-phase jobs to complete",
        || async {
            let n: i64 = sqlx::query_scalar("select count(*) from job_all where state = 'completed'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            (n >= 1000).then_some(())
        },
    )
    .await;
    // Jobs claimed from here on may see the promoted routing: the canary's own figures are of jobs started before.
    let promoted_at: chrono::DateTime<chrono::Utc> = {
        let mut phase = phase.lock().await;
        let at = sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        rollout::promote(&db.pool, r.id).await.unwrap();
        *phase = "promoted";
        at
    };
    let at_promote = enqueued.load(Ordering::SeqCst);
    eventually(Duration::from_secs(120), "600 more jobs after promote", || async {
        (enqueued.load(Ordering::SeqCst) >= at_promote + 600).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let total = enqueued.load(Ordering::SeqCst) as i64;
    eventually(Duration::from_secs(180), "every job to complete", || async {
        (count_state(&db.pool, "completed").await == total).then_some(())
    })
    .await;
    eprintln!("rollout under load: {total} jobs, {at_promote} enqueued before promote");

    // Canary phase: shares and stickiness, of the jobs started before the promote. Canary-phase jobs still waiting
    // then (a loaded machine's workers lag behind the load) rightly run on v2 after it. The share is of keys, each
    // routed whole: a share of jobs started by then would also measure which version's workers lagged more.
    let (v1, v2): (i64, i64) = sqlx::query_as(
        r#"
        select count(distinct concurrency_key) filter (where version = 'v1'),
               count(distinct concurrency_key) filter (where version = 'v2')
        from job_all
        where args->>'phase' = 'canary' and started_at < $1
        "#,
    )
    .bind(promoted_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let share = v2 as f64 / (v1 + v2) as f64;
    assert!(
        (0.18..=0.42).contains(&share),
        "canary share {share:.3} of the keys (v1 {v1}, v2 {v2})"
    );
    let mixed: i64 = sqlx::query_scalar(
        r#"
        select count(*) from (
            select concurrency_key from job_all where args->>'phase' = 'canary' and started_at < $1
            group by concurrency_key having count(distinct version) > 1
        ) t
        "#,
    )
    .bind(promoted_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(mixed, 0, "no key ran on both versions during the canary");
    // After promote: only v2 starts new work.
    let old: i64 =
        sqlx::query_scalar("select count(*) from job_all where args->>'phase' = 'promoted' and version <> 'v2'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old, 0, "no job enqueued after promote ran on v1");
    let blue_pids: Vec<i32> = blue.iter().map(|c| c.id().unwrap() as i32).collect();
    let blue_runs: i64 = sqlx::query_scalar(
        r#"
        select count(*)
        from test_execution e
        join job_all j on j.id = e.job_id
        where j.args->>'phase' = 'promoted'
          and e.pid = any($1)
        "#,
    )
    .bind(&blue_pids)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(blue_runs, 0, "v1 processes started nothing enqueued after promote");
    // Exactly once.
    let (execs, distinct): (i64, i64) = sqlx::query_as("select count(*), count(distinct job_id) from test_execution")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let twice: Vec<(i64, i32, i32, String, String)> = sqlx::query_as(
        r#"
        select e.job_id, e.attempt, e.pid, e.started_at::text, coalesce(e.finished_at::text, '-')
        from test_execution e
        where e.job_id in (select job_id from test_execution group by job_id having count(*) > 1)
        order by e.job_id, e.started_at
        limit 20
        "#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (execs, distinct),
        (total, total),
        "every job ran exactly once (promoted at {promoted_at}); runs of jobs that ran twice: {twice:?}"
    );

    // The controller completes the rollout once v1 drained; v1's workers then exit 0 on their own.
    let controller = rollout::Controller::new(db.pool.clone(), "test-controller".into());
    eventually(Duration::from_secs(30), "the rollout to complete", || async {
        controller.round().await.unwrap();
        let r = rollout::get(&db.pool, r.id).await.unwrap();
        (r.state == RolloutState::Completed).then_some(())
    })
    .await;
    assert_eq!(
        rollout::role_of(&db.pool, "default", "v1").await.unwrap(),
        Some(Role::Retired)
    );
    for c in blue.iter_mut() {
        let status = tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .expect("a retired worker exits by itself")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
    }
    let pools = rollout::list_pools(&db.pool, Duration::from_secs(30)).await.unwrap();
    let default = pools.iter().find(|p| p.pool == "default").unwrap();
    let roles: Vec<(&str, Role, i16)> = default
        .versions
        .iter()
        .map(|v| (v.version.as_str(), v.role, v.weight))
        .collect();
    assert_eq!(roles, vec![("v1", Role::Retired, 0), ("v2", Role::Stable, 100)]);
    for mut c in green {
        signal(&c, "-TERM");
        assert!(c.wait().await.unwrap().success());
    }
}

/// Measurement, not a check (run with `--ignored --nocapture`): enqueue and drain rates of 20 000 no-op jobs with
/// no rollout and during a 50 % canary (two workers either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn routing_overhead_on_enqueue_and_drain() {
    for canary in [false, true, false, true] {
        let db = testkit::db_with_max(20).await;
        let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
        if canary {
            start_canary(&db.pool, 50).await;
        }
        queue::pause(&db.pool, &acct(), "default").await.unwrap();
        let n = 20_000;
        let t0 = std::time::Instant::now();
        for chunk in 0..(n / 1000) {
            let jobs: Vec<NewJob> = (0..1000)
                .map(|i| keyed("noop", json!({}), &format!("k{}", (chunk * 1000 + i) % 5000)))
                .collect();
            q.enqueue_many(&acct(), jobs).await.unwrap();
        }
        let enqueue = n as f64 / t0.elapsed().as_secs_f64();
        let mut cfg = fast_config();
        cfg.concurrency = 64;
        let w1 = start_worker(&db.pool, cfg.clone());
        if canary {
            cfg.version = "v2".into();
        }
        let w2 = start_worker(&db.pool, cfg);
        let t1 = std::time::Instant::now();
        queue::resume(&db.pool, &acct(), "default").await.unwrap();
        eventually(Duration::from_secs(300), "the backlog to drain", || async {
            (count_state(&db.pool, "completed").await == n as i64).then_some(())
        })
        .await;
        let drain = n as f64 / t1.elapsed().as_secs_f64();
        eprintln!("canary={canary} enqueue_per_s={enqueue:.0} drain_per_s={drain:.0}");
        w1.stop().await;
        w2.stop().await;
    }
}

/// Pool `default` serves every queue no other pool claims (CONTRACT §8), also one first used after its worker
/// started, and leaves queues of other pools alone; the autoscaler's depth of pool `default` counts those jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_serves_queues_no_other_pool_claims() {
    let db = testkit::db().await;
    rollout::put_pool(&db.pool, "emails", &["mail".to_owned()])
        .await
        .unwrap();
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let in_queue = |queue: &str| {
        let mut j = NewJob::new("noop", json!({}));
        j.queue = queue.to_owned();
        j
    };
    let reports = q.enqueue(&acct(), in_queue("reports")).await.unwrap().job;
    let mail = q.enqueue(&acct(), in_queue("mail")).await.unwrap().job;
    let depth = queue::pool_depth(&db.pool).await.unwrap();
    let default_available: i64 = depth.iter().filter(|d| d.pool == "default").map(|d| d.available).sum();
    assert_eq!(
        default_available, 1,
        "pool default's depth counts the unclaimed queue: {depth:?}"
    );

    let mut worker = spawn_worker_process(&db.url, &[], &["--version", "v1"]);
    wait_for_state(&db.pool, reports.id, JobState::Completed, Duration::from_secs(30)).await;
    // A queue first used now, while the worker runs.
    let late = q.enqueue(&acct(), in_queue("late")).await.unwrap().job;
    wait_for_state(&db.pool, late.id, JobState::Completed, Duration::from_secs(30)).await;
    let workers = queue::live_workers(&db.pool, Duration::from_secs(30)).await.unwrap();
    assert!(
        workers.iter().any(|w| w.queues.contains(&"late".to_owned())),
        "the worker registers the queues it took on: {workers:?}"
    );
    let mail = queue::get(&db.pool, &acct(), mail.id).await.unwrap();
    assert_eq!(
        mail.state,
        JobState::Available,
        "pool emails' queue is not served by pool default"
    );
    signal(&worker, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("worker exits")
        .unwrap();
    assert!(status.success());
}
