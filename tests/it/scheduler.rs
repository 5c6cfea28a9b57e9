//! Cron schedules: the store, the firing rules against a real database, and real `ordo scheduler` processes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ordo::scheduler::store::{self, JobSpec, NewSchedule, ScheduleUpdate, Target};
use ordo::scheduler::{Error, Scheduler, SCHEDULER_LEASE};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually};
use ordo::wake::Waker;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::support::{acct, signal};

fn noop() -> Target {
    Target::Job(JobSpec::new("noop", json!({"from": "schedule"})))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Jobs fired by schedule `name`: (idempotency key, run_at, count of jobs with that key).
async fn fired(pool: &PgPool, account: &AccountId, name: &str) -> Vec<(String, DateTime<Utc>, i64)> {
    sqlx::query_as(
        r#"
        select idempotency_key, min(run_at), count(*)
        from job_all
        where account_id = $1
          and idempotency_key like $2
        group by idempotency_key
        order by min(run_at)
        "#,
    )
    .bind(account.as_str())
    .bind(format!("schedule:{name}:%"))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Starts the real `ordo scheduler` binary against `db_url`.
pub fn spawn_scheduler_process(db_url: &str, lease_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ordo"))
        .arg("scheduler")
        .args(["--lease-ms", &lease_ms.to_string()])
        .env("DATABASE_URL", db_url)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ordo scheduler")
}

async fn second_account(pool: &PgPool) -> AccountId {
    let id = AccountId::parse("other").unwrap();
    ordo::tenancy::create_account(pool, &id, "Other", "local")
        .await
        .unwrap();
    id
}

/// Create, read, list, change, pause, resume and delete; names are unique per account and free across accounts.
#[tokio::test]
async fn schedule_store_round_trip_and_name_conflicts() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let a = acct();
    let b = second_account(pool).await;
    let now = utc("2026-11-25T12:00:10Z");

    let nightly = NewSchedule::new("nightly", "30 2 * * *", noop()).timezone("Europe/Berlin");
    let created = store::create(pool, &a, &nightly, now).await.unwrap();
    assert_eq!(created.next_fire_at, Some(utc("2026-11-26T01:30:00Z")));
    assert_eq!(created.timezone, "Europe/Berlin");
    assert!(!created.paused);
    assert_eq!(store::get(pool, &a, "nightly").await.unwrap(), created);

    // Same name again in the same account: a conflict, and the original is untouched.
    let again = NewSchedule::new("nightly", "* * * * *", noop());
    let e = store::create(pool, &a, &again, now).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { ref name } if name == "nightly"), "{e:?}");
    assert_eq!(store::get(pool, &a, "nightly").await.unwrap().cron, "30 2 * * *");
    // The same name in another account is a different schedule.
    let theirs = store::create(pool, &b, &again, now).await.unwrap();
    assert_eq!(theirs.next_fire_at, Some(utc("2026-11-25T12:01:00Z")));

    // Invalid fields are refused, naming each.
    let bad = NewSchedule::new("bad", "0 99 * * *", noop()).timezone("Europe/Nowhere");
    let e = store::create(pool, &a, &bad, now).await.unwrap_err();
    assert_eq!(e.fields(), ["/cron", "/timezone"]);

    let every = NewSchedule::new("every-minute", "0 * * * * *", noop()).paused(true);
    let paused = store::create(pool, &a, &every, now).await.unwrap();
    assert!(paused.paused);
    assert_eq!(paused.next_fire_at, None);

    // Lists are per account, in name order, with a cursor.
    let names = |v: Vec<store::Schedule>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(store::list(pool, &a, None, 100).await.unwrap()),
        ["every-minute", "nightly"]
    );
    assert_eq!(names(store::list(pool, &a, None, 1).await.unwrap()), ["every-minute"]);
    assert_eq!(
        names(store::list(pool, &a, Some("every-minute"), 100).await.unwrap()),
        ["nightly"]
    );
    assert_eq!(names(store::list(pool, &b, None, 100).await.unwrap()), ["nightly"]);

    let mut conn = pool.acquire().await.unwrap();
    // Resuming computes the next tick from the present: nothing missed while paused fires.
    let later = now + TimeDelta::hours(3);
    let resumed = store::resume(&mut conn, &a, "every-minute", later).await.unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_at, Some(utc("2026-11-25T15:01:00Z")));
    let repaused = store::pause(&mut conn, &a, "every-minute", later).await.unwrap();
    assert_eq!((repaused.paused, repaused.next_fire_at), (true, None));

    // A partial update: a new expression recomputes the next tick; the rest stays.
    let change = ScheduleUpdate {
        cron: Some("0 0 6 * * *".into()),
        ..Default::default()
    };
    let updated = store::update(&mut conn, &a, "nightly", &change, now).await.unwrap();
    assert_eq!(updated.cron, "0 0 6 * * *");
    assert_eq!(updated.timezone, "Europe/Berlin");
    assert_eq!(updated.next_fire_at, Some(utc("2026-11-26T05:00:00Z")));
    assert!(updated.updated_at > created.updated_at);
    // Only the target: the next tick stays.
    let change = ScheduleUpdate {
        target: Some(Target::Job(JobSpec::new("sleep", json!({"ms": 1})))),
        ..Default::default()
    };
    let retargeted = store::update(&mut conn, &a, "nightly", &change, later).await.unwrap();
    assert_eq!(retargeted.next_fire_at, updated.next_fire_at);
    assert_eq!(retargeted.target, change.target.clone().unwrap());
    // An invalid change is refused and changes nothing.
    let change = ScheduleUpdate {
        timezone: Some("Atlantis".into()),
        ..Default::default()
    };
    let e = store::update(&mut conn, &a, "nightly", &change, now).await.unwrap_err();
    assert_eq!(e.fields(), ["/timezone"]);
    assert_eq!(store::get(pool, &a, "nightly").await.unwrap(), retargeted);
    let e = store::update(&mut conn, &a, "missing", &ScheduleUpdate::default(), now)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");

    // Deleting is per account too.
    store::delete(pool, &a, "nightly").await.unwrap();
    assert!(matches!(
        store::get(pool, &a, "nightly").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store::delete(pool, &a, "nightly").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store::get(pool, &b, "nightly").await.unwrap(), theirs);
}

/// Rounds driven with a controlled clock: recent missed ticks all fire, an outage collapses into one firing of
/// the latest old tick, and paused schedules fire nothing.
#[tokio::test]
async fn rounds_fire_due_ticks_by_the_missed_tick_policy() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let a = acct();
    let t0 = utc("2026-11-25T12:00:00.500Z");
    store::create(pool, &a, &NewSchedule::new("minutely", "0 * * * * *", noop()), t0)
        .await
        .unwrap();
    store::create(
        pool,
        &a,
        &NewSchedule::new("held", "* * * * * *", noop()).paused(true),
        t0,
    )
    .await
    .unwrap();
    let s = Scheduler::new(pool.clone(), "test-holder".into(), Waker::disabled());

    // Before the first tick nothing fires.
    let (leads, earliest) = s.round(utc("2026-11-25T12:00:59Z")).await.unwrap();
    assert!(leads);
    assert_eq!(earliest, Some(utc("2026-11-25T12:01:00Z")));
    assert!(fired(pool, &a, "minutely").await.is_empty());

    // An outage of ten minutes: one firing of the latest old tick plus the recent one, no burst.
    s.round(utc("2026-11-25T12:11:30Z")).await.unwrap();
    let jobs = fired(pool, &a, "minutely").await;
    let keys: Vec<_> = jobs.iter().map(|j| j.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "schedule:minutely:2026-11-25T12:10:00Z",
            "schedule:minutely:2026-11-25T12:11:00Z"
        ]
    );
    assert_eq!(jobs[0].1, utc("2026-11-25T12:10:00Z"), "run_at is the tick");
    let row = store::get(pool, &a, "minutely").await.unwrap();
    assert_eq!(row.next_fire_at, Some(utc("2026-11-25T12:12:00Z")));
    assert_eq!(row.last_fired_at, Some(utc("2026-11-25T12:11:00Z")));

    // A tick missed by less than 60 s (a leader change) still fires on its own.
    s.round(utc("2026-11-25T12:12:50Z")).await.unwrap();
    let keys: Vec<_> = fired(pool, &a, "minutely").await.into_iter().map(|j| j.0).collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[2], "schedule:minutely:2026-11-25T12:12:00Z");
    // The same round again fires nothing new.
    s.round(utc("2026-11-25T12:12:50Z")).await.unwrap();
    assert_eq!(fired(pool, &a, "minutely").await.len(), 3);
    assert!(fired(pool, &a, "held").await.is_empty(), "a paused schedule fired");

    // A follower does nothing while the leader's lease lives.
    let follower = Scheduler::new(pool.clone(), "other-holder".into(), Waker::disabled());
    assert_eq!(
        follower.round(utc("2026-11-25T12:20:00Z")).await.unwrap(),
        (false, None)
    );
    assert_eq!(fired(pool, &a, "minutely").await.len(), 3);
}

/// Schedulers that all believe they lead fire each tick exactly once: the tick's idempotency key and the
/// conditional advance make the racing ones back off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_schedulers_fire_each_tick_once() {
    let db = testkit::db_with_max(20).await;
    let pool = &db.pool;
    let a = acct();
    let t0 = utc("2026-11-25T12:00:00Z");
    store::create(pool, &a, &NewSchedule::new("race", "*/5 * * * * *", noop()), t0)
        .await
        .unwrap();
    let now = utc("2026-11-25T12:00:42Z");
    let seen = store::get(pool, &a, "race").await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = Scheduler::new(pool.clone(), format!("racer-{i}"), Waker::disabled());
        let seen = seen.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            // `fire` skips the lease on purpose: each racer acts as if it led.
            s.fire(&seen, now).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    let jobs = fired(pool, &a, "race").await;
    // 12:00:05 .. 12:00:40 every 5 s.
    assert_eq!(jobs.len(), 8);
    assert_eq!(created, 8, "jobs created across all racers");
    assert!(jobs.iter().all(|j| j.2 == 1));
    let total: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(total, 8);
    assert_eq!(
        store::get(pool, &a, "race").await.unwrap().next_fire_at,
        Some(utc("2026-11-25T12:00:45Z"))
    );
}

/// Three real `ordo scheduler` processes and an every-2-seconds schedule: exactly one job per tick with no gap;
/// SIGKILL the leader and another takes over within the lease time, losing and doubling no tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_fire_each_tick_once_across_a_leader_kill() {
    const LEASE_MS: u64 = 2_000;
    let db = testkit::db().await;
    let pool = &db.pool;
    let a = acct();
    let created_at = Utc::now();
    store::create(
        pool,
        &a,
        &NewSchedule::new("every2", "*/2 * * * * *", noop()),
        created_at,
    )
    .await
    .unwrap();
    let mut children: Vec<Child> = (0..3).map(|_| spawn_scheduler_process(&db.url, LEASE_MS)).collect();

    let leader_of = |holder: &str, children: &[Child]| {
        children
            .iter()
            .position(|c| c.id().is_some_and(|pid| holder.contains(&format!("-{pid}-"))))
    };
    let holder = eventually(Duration::from_secs(15), "a scheduler to lead", || async {
        ordo::leader::holder(pool, SCHEDULER_LEASE).await.unwrap()
    })
    .await;
    let leader = leader_of(&holder, &children).unwrap_or_else(|| panic!("holder {holder} is none of the children"));

    // About 8 s of ticks under the first leader.
    eventually(Duration::from_secs(20), "4 ticks under the first leader", || async {
        (fired(pool, &a, "every2").await.len() >= 4).then_some(())
    })
    .await;

    children[leader].start_kill().unwrap();
    children[leader].wait().await.unwrap();
    let killed_at = Utc::now();
    let new_holder = eventually(
        Duration::from_millis(LEASE_MS + 3_000),
        "another scheduler to take the lease",
        || async {
            ordo::leader::holder(pool, SCHEDULER_LEASE)
                .await
                .unwrap()
                .filter(|h| *h != holder)
        },
    )
    .await;
    assert!(
        leader_of(&new_holder, &children).is_some_and(|i| i != leader),
        "new holder {new_holder}"
    );

    // About 6 s of ticks after the kill.
    let until = killed_at + TimeDelta::seconds(6);
    eventually(Duration::from_secs(20), "ticks after the kill", || async {
        fired(pool, &a, "every2")
            .await
            .last()
            .is_some_and(|j| j.1 >= until)
            .then_some(())
    })
    .await;

    for (i, child) in children.iter_mut().enumerate() {
        if i != leader {
            signal(child, "-TERM");
        }
    }
    for (i, child) in children.iter_mut().enumerate() {
        if i != leader {
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("scheduler exits within 10 s of SIGTERM")
                .unwrap();
            assert!(status.success(), "scheduler exited with {status}");
        }
    }

    let jobs = fired(pool, &a, "every2").await;
    let counts: BTreeMap<&str, i64> = jobs.iter().map(|j| (j.0.as_str(), j.2)).collect();
    assert!(counts.values().all(|&n| n == 1), "a tick fired twice: {counts:?}");
    for j in &jobs {
        let key = format!(
            "schedule:every2:{}",
            j.1.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        assert_eq!(j.0, key, "run_at is the tick of the key");
    }
    // The first tick is the first after creation, and consecutive ticks are 2 s apart: none lost.
    let first = jobs[0].1;
    assert!(
        first > created_at && first - created_at <= TimeDelta::seconds(2),
        "first tick {first}"
    );
    for w in jobs.windows(2) {
        assert_eq!(
            w[1].1 - w[0].1,
            TimeDelta::seconds(2),
            "gap between {} and {}",
            w[0].0,
            w[1].0
        );
    }
    assert!(jobs.len() >= 8, "{} ticks", jobs.len());
    // Clean shutdown gave the lease up.
    assert_eq!(ordo::leader::holder(pool, SCHEDULER_LEASE).await.unwrap(), None);
}

/// An event schedule sends its event exactly once per tick, however many schedulers race to fire it, with the
/// tick's idempotency key; the event runs against its entity; a tick whose entity is gone is skipped and the
/// schedule moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_schedule_fires_each_tick_once_and_runs() {
    use ordo::orchestration::{self, NewEntity};
    use ordo::scheduler::EventSpec;

    let db = testkit::db_with_max(20).await;
    let pool = &db.pool;
    let a = acct();
    let workflow = json!({
        "statuses": [{"name": "CREATED"}],
        "rulesets": [{"name": "Tick", "entity_type": "TICKER",
                      "rules": [{"name": "core.SetAttribute", "props": {"name": "n", "value": "{{event.attributes.n}}"}}]}]
    });
    let mut conn = pool.acquire().await.unwrap();
    orchestration::put_workflow(
        &mut conn,
        &a,
        "TICKER::A",
        &workflow,
        false,
        &ordo_workers::rules::registry(),
    )
    .await
    .unwrap();
    drop(conn);
    let q = ordo::queue::Queue::new(pool.clone(), Waker::disabled());
    orchestration::create_entity(&q, &a, NewEntity::new("TICKER", "A", "t-1"))
        .await
        .unwrap();
    let mut spec = EventSpec::new("Tick", "TICKER", "t-1");
    spec.attributes = json!({"n": 7});
    let t0 = utc("2026-11-25T12:00:00Z");
    store::create(
        pool,
        &a,
        &NewSchedule::new("ticker", "*/10 * * * * *", Target::Event(spec)),
        t0,
    )
    .await
    .unwrap();
    let now = utc("2026-11-25T12:00:42Z");
    let seen = store::get(pool, &a, "ticker").await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = Scheduler::new(pool.clone(), format!("racer-{i}"), Waker::disabled());
        let seen = seen.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            s.fire(&seen, now).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    assert_eq!(created, 4, "ticks :10, :20, :30 and :40 each once");
    // Firing the same ticks again (a stale scheduler) sends nothing new.
    let s = Scheduler::new(pool.clone(), "late".into(), Waker::disabled());
    assert_eq!(s.fire(&seen, now).await.unwrap(), 0);
    let keys: Vec<(String, i64)> = sqlx::query_as(
        "select idempotency_key, count(*) from job_all where idempotency_key like 'event:schedule:ticker:%' \
         group by idempotency_key order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        ["10", "20", "30", "40"]
            .map(|s| (format!("event:schedule:ticker:2026-11-25T12:00:{s}Z"), 1))
            .to_vec()
    );
    let worker = crate::support::start_worker(pool, crate::support::fast_config());
    eventually(Duration::from_secs(30), "4 Tick events to succeed", || async {
        let ok: i64 = sqlx::query_scalar(
            "select count(*) from event where name = 'Tick' and kind = 'orchestration' and status = 'success'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (ok == 4).then_some(())
    })
    .await;
    let total: i64 = sqlx::query_scalar("select count(*) from event where name = 'Tick' and kind = 'orchestration'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(total, 4);
    let e = orchestration::get_entity(pool, &a, "TICKER", "t-1").await.unwrap();
    assert!(e.attributes["n"] == json!(7) || e.attributes["n"] == "7", "{e:?}");
    worker.stop().await;

    // An entity that does not exist: the tick is skipped, not retried forever.
    let ghost = Target::Event(EventSpec::new("Tick", "TICKER", "ghost"));
    store::create(pool, &a, &NewSchedule::new("ghost", "*/10 * * * * *", ghost), t0)
        .await
        .unwrap();
    let seen = store::get(pool, &a, "ghost").await.unwrap();
    assert_eq!(s.fire(&seen, utc("2026-11-25T12:00:12Z")).await.unwrap(), 0);
    let after = store::get(pool, &a, "ghost").await.unwrap();
    assert_eq!(after.next_fire_at, Some(utc("2026-11-25T12:00:20Z")));
}
