//! Rolling restarts of the singleton roles under load (real processes): two `ordo scheduler` processes while
//! schedules fire every second, and two `ordo autoscaler` processes while the backlog rises and falls. The leader
//! is stopped again and again, by SIGTERM (it must exit 0) and by SIGKILL, and a replacement started; no tick is
//! lost or fired twice, and every scaling decision is still taken and applied once.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ordo::autoscale::{self, ScaleTarget, AUTOSCALER_LEASE};
use ordo::queue::{self, NewJob};
use ordo::scheduler::store::{self, JobSpec, NewSchedule, Target};
use ordo::scheduler::SCHEDULER_LEASE;
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::autoscale::{live_pids_within, TermOnDrop};
use crate::scheduler::spawn_scheduler_process;
use crate::support::{acct, count_state, create_execution_table, signal, stop_all};

/// Deadline of each wait: generous, the test asserts that things happen, not how fast.
const WAIT: Duration = Duration::from_secs(60);
/// Restarts of the leader in each test: SIGTERM and SIGKILL in turn.
const RESTARTS: usize = 6;
/// Schedules firing every second during the scheduler restarts.
const SCHEDULES: usize = 4;

/// The process that holds lease `name`: its index among `children` (holder ids carry the pid).
async fn leader(db: &PgPool, name: &str, children: &[Child]) -> usize {
    eventually(
        WAIT,
        &format!("one of the processes to hold the {name} lease"),
        || async {
            let holder = ordo::leader::holder(db, name).await.ok()??;
            children
                .iter()
                .position(|c| c.id().is_some_and(|pid| holder.contains(&format!("-{pid}-"))))
        },
    )
    .await
}

/// Stops `child` by SIGKILL, or by SIGTERM asserting that it exits 0.
async fn stop_leader(child: &mut Child, kill: bool) -> &'static str {
    if !kill {
        signal(child, "-TERM");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("the leader exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "the leader exited with {status} after SIGTERM");
        "SIGTERM"
    } else {
        signal(child, "-KILL");
        let _ = child.wait().await;
        "SIGKILL"
    }
}

/// An `ordo scheduler` whose lease lasts 1.5 s, so a killed leader is replaced soon.
fn spawn_scheduler(db_url: &str) -> Child {
    spawn_scheduler_process(db_url, 1500)
}

/// Jobs fired by schedule `name`: (tick of the key, jobs with that key), in tick order.
async fn ticks(db: &PgPool, name: &str) -> Vec<(DateTime<Utc>, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select idempotency_key, count(*) from job_all where idempotency_key like $1 group by 1 order by 1",
    )
    .bind(format!("schedule:{name}:%"))
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(key, n)| {
            let tick = key.rsplit_once(&format!("{name}:")).unwrap().1;
            (DateTime::parse_from_rfc3339(tick).unwrap().with_timezone(&Utc), n)
        })
        .collect()
}

/// Two `ordo scheduler` processes and four schedules firing every second: the leader is stopped six times (SIGTERM,
/// exit 0, and SIGKILL in turn) and a replacement started each time. Every tick from the first after the
/// schedules were created to the last fired is fired exactly once, by every schedule; stopped cleanly, the last
/// schedulers give the lease up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_rolling_restarts_fire_every_tick_once() {
    let db = testkit::db().await;
    let created_at = Utc::now();
    let names: Vec<String> = (0..SCHEDULES).map(|i| format!("every-second-{i}")).collect();
    for name in &names {
        let target = Target::Job(JobSpec::new("noop", json!({"from": name})));
        store::create(
            &db.pool,
            &acct(),
            &NewSchedule::new(name, "* * * * * *", target),
            created_at,
        )
        .await
        .unwrap();
    }
    let mut children = vec![spawn_scheduler(&db.url), spawn_scheduler(&db.url)];
    let fired = || async { ticks(&db.pool, &names[0]).await.len() };
    let mut log = Vec::new();
    for round in 0..RESTARTS {
        // A few ticks under each leader before it goes.
        let before = fired().await;
        eventually(WAIT, "ticks under the current leader", || async {
            (fired().await >= before + 2).then_some(())
        })
        .await;
        let i = leader(&db.pool, SCHEDULER_LEASE, &children).await;
        let how = stop_leader(&mut children[i], round % 2 == 1).await;
        log.push(format!("{how} the leader at {}", Utc::now()));
        children[i] = spawn_scheduler(&db.url);
    }
    let before = fired().await;
    eventually(WAIT, "ticks after the last restart", || async {
        (fired().await >= before + 2).then_some(())
    })
    .await;
    stop_all(children).await;
    assert_eq!(
        ordo::leader::holder(&db.pool, SCHEDULER_LEASE).await.unwrap(),
        None,
        "a clean stop gives the lease up"
    );

    for name in &names {
        let fired = ticks(&db.pool, name).await;
        let doubled: Vec<_> = fired.iter().filter(|(_, n)| *n != 1).collect();
        assert!(doubled.is_empty(), "{name}: ticks fired twice: {doubled:?}; {log:?}");
        let first = fired[0].0;
        assert!(
            first > created_at && first - created_at <= TimeDelta::seconds(1),
            "{name}: the first tick {first} is the first after {created_at}"
        );
        let gaps: Vec<_> = fired
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 != TimeDelta::seconds(1))
            .map(|w| (w[0].0, w[1].0))
            .collect();
        assert!(gaps.is_empty(), "{name}: ticks lost between {gaps:?}; {log:?}");
        assert!(fired.len() >= 2 * (RESTARTS + 1), "{name}: {} ticks", fired.len());
    }
}

/// An `ordo autoscaler` deciding every 300 ms; its workers run two jobs at once, so a backlog lasts a while, and
/// hold 6 s leases: no worker is killed here, and a short lease would expire on a loaded machine and run a job
/// again, which is the queue's promise after a lease is lost but not what this test is about.
fn spawn_autoscaler(db_url: &str) -> Child {
    crate::autoscale::spawn_autoscaler(
        db_url,
        300,
        &["--concurrency=2", &format!("--lease-ms={WORKER_LEASE_MS}")],
    )
}

/// The lease of the autoscaler's workers; they heartbeat every third of it.
const WORKER_LEASE_MS: u64 = 6_000;

/// Pids of live worker processes: not stopping, heartbeating within the last lease, still running.
async fn live_pids(db: &PgPool) -> HashSet<i32> {
    live_pids_within(db, Duration::from_millis(WORKER_LEASE_MS)).await
}

/// The most live workers seen at once while `stop` is not cancelled, looking every 50 ms.
fn watch_pool_size(db: PgPool, most: Arc<AtomicUsize>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let live = live_pids(&db).await.len();
            most.fetch_max(live, Ordering::SeqCst);
            tokio::select! {
                () = stop.cancelled() => {}
                // The watcher's sampling period, not a wait for a condition.
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

/// Waits until exactly `n` workers live, none of them one of `gone`.
async fn pool_size(db: &PgPool, n: usize, gone: &[i32], what: &str) -> Vec<i32> {
    eventually(WAIT, what, || async {
        let pids = live_pids(db).await;
        (pids.len() == n && pids.iter().all(|p| !gone.contains(p))).then(|| pids.into_iter().collect())
    })
    .await
}

/// Two `ordo autoscaler` processes (process driver, min 1, max 3) while a backlog comes and goes: the leader is
/// stopped by SIGKILL and by SIGTERM (exit 0), three times each, and a replacement started. After each restart the
/// new leader brings the pool to the size the moment asks for (three under the backlog, one after it); the pool
/// never holds more workers than decided (a killed leader's workers stop with it, so none runs beside the new
/// leader's); every job runs to completion exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_rolling_restarts_keep_deciding_and_apply_each_decision_once() {
    let db = testkit::db().await;
    create_execution_table(&db.pool).await;
    let policy = ScaleTarget {
        min: 1,
        max: 3,
        target_per_worker: 10,
        scale_down_delay_s: 2,
    };
    autoscale::put_target(&db.pool, "default", &policy).await.unwrap();
    let mut children = vec![spawn_autoscaler(&db.url), spawn_autoscaler(&db.url)];
    let mut guards: Vec<TermOnDrop> = children.iter().map(|c| TermOnDrop(c.id().unwrap())).collect();
    let most = Arc::new(AtomicUsize::new(0));
    let stop_watching = CancellationToken::new();
    let watcher = watch_pool_size(db.pool.clone(), Arc::clone(&most), stop_watching.clone());
    let mut workers = pool_size(&db.pool, 1, &[], "the minimum of one worker").await;

    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let mut enqueued = 0i64;
    let mut log = Vec::new();
    for round in 0..RESTARTS {
        // Odd rounds restart the leader under a backlog (the pool must be, and stay, at its maximum), even rounds
        // once the backlog is gone (the pool must come back to its minimum).
        let under_load = round % 2 == 1;
        if under_load {
            let jobs: Vec<NewJob> = (0..60)
                .map(|_| NewJob::new("test.record", json!({"ms": 500})))
                .collect();
            q.enqueue_many(&acct(), jobs).await.unwrap();
            enqueued += 60;
            workers = pool_size(&db.pool, 3, &[], "three workers for the backlog").await;
        }
        let i = leader(&db.pool, AUTOSCALER_LEASE, &children).await;
        // SIGKILL, SIGTERM, SIGTERM, SIGKILL, …: each way both with and without a backlog.
        let how = stop_leader(&mut children[i], (round + round / 2) % 2 == 0).await;
        log.push(format!("{how} the leader (under load: {under_load})"));
        children[i] = spawn_autoscaler(&db.url);
        // The old guard's process is gone and its pid may be reused: forget it rather than signal it.
        std::mem::forget(std::mem::replace(&mut guards[i], TermOnDrop(children[i].id().unwrap())));
        // The old leader's workers are gone (stopped with it); the new leader's run in their place.
        let expected = if under_load { 3 } else { 1 };
        let what = format!("{expected} workers of the new leader after {how}");
        workers = pool_size(&db.pool, expected, &workers, &what).await;
        if under_load {
            eventually(WAIT, "the backlog to drain", || async {
                (count_state(&db.pool, "completed").await == enqueued).then_some(())
            })
            .await;
            workers = pool_size(&db.pool, 1, &[], "back to the minimum after the backlog").await;
        }
    }
    stop_watching.cancel();
    watcher.await.unwrap();
    assert!(
        most.load(Ordering::SeqCst) <= 3,
        "{} workers at once, more than the maximum of 3: a decision applied twice; {log:?}",
        most.load(Ordering::SeqCst)
    );

    let runs: BTreeMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "select job_id, count(*) filter (where finished_at is not null) from test_execution group by 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(runs.len() as i64, enqueued, "every job ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "every job completed exactly once: {runs:?}"
    );
    assert_eq!(count_state(&db.pool, "running").await, 0);

    stop_all(children).await;
    // Exited: their pids may be reused, so the guards must not signal them.
    std::mem::forget(guards);
    pool_size(&db.pool, 0, &[], "no worker left").await;
}
