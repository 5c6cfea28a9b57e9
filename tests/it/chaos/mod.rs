//! Chaos: the whole cluster as real processes (`ordo api`, `ordo scheduler`, `ordo worker` of two pool versions)
//! on a private PostgreSQL and Redis, under a load of jobs and orders sent over HTTP, while the test SIGKILLs
//! workers, crash-restarts PostgreSQL, stops and restarts Redis, restarts the API, and rolls the worker pool from
//! v1 to v2. Afterwards nothing accepted is lost or doubled and every role that was not meant to stop still runs.

mod cluster;
mod load;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ordo::orchestration::{self, NewEntity, NewEvent};
use ordo::queue::Queue;
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use self::cluster::{ChaosPostgres, ChaosRedis, RoleProcess, BACK_WITHIN};
use self::load::{Client, Seen};
use crate::orchestration::{example, start_receiver, Delivery};

/// What the webhook receiver saw.
type Deliveries = Arc<std::sync::Mutex<Vec<Delivery>>>;

/// Job producers, each sending `BATCHES` batches of [`load::BATCH`] jobs: 20 000 jobs.
const PRODUCERS: usize = 4;
/// Batches of each producer.
const BATCHES: usize = 50;
/// The most one producer sends per batch: the load spreads over about a minute, so every fault meets it.
const BATCH_EVERY: Duration = Duration::from_millis(1_200);
/// Orders through the example workflow, one per `ORDER_EVERY` at most.
const ORDERS: usize = 150;
/// The shortest time between two orders.
const ORDER_EVERY: Duration = Duration::from_millis(400);
/// Stock of the one SKU the orders take: more than they need, so no order goes on hold.
const STOCK: i64 = 1_000_000;
/// The admin token of the API (rollouts are admin routes).
const ADMIN_TOKEN: &str = "chaos-admin";
/// How long the whole backlog may take to settle after the load on a loaded machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(240);

/// The cluster's processes, as the test has to restart them.
struct Roles {
    api: RoleProcess,
    scheduler: RoleProcess,
    blue: Vec<RoleProcess>,
    green: Vec<RoleProcess>,
}

/// The base environment of every role: the private Redis, short leases (a killed worker's jobs come back soon),
/// and webhooks to the local receiver.
fn role_env(redis_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis_url.to_owned()),
        ("ORDO_LEASE_MS", "2000".to_owned()),
        ("ORDO_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
    ]
}

/// `env` as `Command` takes it.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Starts an `ordo worker` of `version` that polls often and retries soon, so the run settles fast after a fault.
fn worker(name: &str, version: &str, db_url: &str, env: &[(&'static str, String)]) -> RoleProcess {
    let mut env = borrowed(env);
    env.extend([("ORDO_POLL_MS", "100"), ("ORDO_RETRY_BASE_MS", "50")]);
    RoleProcess::start(
        name,
        &["worker", "--version", version, "--concurrency", "32"],
        db_url,
        &env,
    )
}

/// Polls `/readyz` until it answers 200.
async fn ready(http: &reqwest::Client, base: &str) {
    eventually(BACK_WITHIN, "/readyz to answer 200", || {
        let req = http.get(format!("{base}/readyz"));
        async move { req.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
}

/// Waits until the clients had `at_least` jobs accepted.
async fn load_reaches(seen: &Seen, at_least: usize) {
    eventually(BACK_WITHIN, &format!("{at_least} jobs accepted"), || async {
        (seen.jobs_accepted.load(Ordering::Relaxed) >= at_least).then_some(())
    })
    .await;
}

/// Crashes PostgreSQL (immediate stop), starts it again on the same data directory and port, and waits until the
/// API is ready again.
async fn crash_restart(pg: &mut ChaosPostgres, http: &reqwest::Client, base: &str) {
    pg.crash_restart();
    ready(http, base).await;
}

/// Stops the API (SIGTERM, which must end in exit 0), starts it again on its address, and waits until it is ready.
async fn restart_api(api: &mut RoleProcess, http: &reqwest::Client, base: &str) {
    api.stop_and_restart().await;
    ready(http, base).await;
}

/// Waits until every process of `workers` (all of `version`) is registered and heartbeating.
async fn workers_live(db: &PgPool, version: &str, workers: &[RoleProcess]) {
    let pids = roles_pids(workers);
    eventually(BACK_WITHIN, &format!("the {version} workers to heartbeat"), || async {
        (live_of(db, version, &pids).await == Some(pids.len())).then_some(())
    })
    .await;
}

/// Live workers of `version` (fresh heartbeat, not stopping) whose pid is one of `pids`.
async fn live_of(db: &PgPool, version: &str, pids: &[u32]) -> Option<usize> {
    let pids: Vec<i32> = pids.iter().map(|&p| p as i32).collect();
    sqlx::query_scalar::<_, i64>(
        "select count(*) from worker where version = $1 and pid = any($2) and not stopping \
         and heartbeat_at > now() - interval '5 seconds'",
    )
    .bind(version)
    .bind(&pids)
    .fetch_one(db)
    .await
    .ok()
    .map(|n| n as usize)
}

/// Starts a rollout to v2 over HTTP; a retried start that answers 409 found the rollout its earlier attempt
/// started. Returns the rollout's id.
async fn start_rollout(admin: &Client, db: &PgPool) -> i64 {
    let body = json!({"pool": "default", "version": "v2", "canary_percent": 50});
    let (status, answer, retried) = admin.post("/api/rollouts", &body, None).await;
    if status == StatusCode::CREATED {
        return answer["id"].as_str().unwrap().parse().unwrap();
    }
    assert!(
        retried && status == StatusCode::CONFLICT,
        "start the rollout: {status} {answer}"
    );
    eventually(BACK_WITHIN, "the rollout an earlier attempt started", || async {
        sqlx::query_scalar("select id from rollout where to_version = 'v2'")
            .fetch_one(db)
            .await
            .ok()
    })
    .await
}

/// Promotes the rollout over HTTP; a retried promote that answers 409 found it promoted by its earlier attempt.
async fn promote(admin: &Client, db: &PgPool, id: i64) {
    let (status, answer, retried) = admin
        .post(&format!("/api/rollouts/{id}/promote"), &json!({}), None)
        .await;
    if status == StatusCode::OK {
        return;
    }
    assert!(retried && status == StatusCode::CONFLICT, "promote: {status} {answer}");
    let state: String = eventually(BACK_WITHIN, "the rollout's state", || async {
        sqlx::query_scalar("select state from rollout where id = $1")
            .bind(id)
            .fetch_one(db)
            .await
            .ok()
    })
    .await;
    assert!(state == "promoted" || state == "completed", "rollout {id} is {state}");
}

/// The account, a receiver for its webhooks (checking their signatures), its workflows (the example's, with the
/// ERP pointed at the receiver), and a stocked catalogue.
async fn set_up_account(db: &PgPool) -> (AccountId, String, Deliveries) {
    let account = AccountId::parse("acme").unwrap();
    let created = tenancy::create_account(db, &account, "Acme", "local").await.unwrap();
    let (erp_url, deliveries) = start_receiver(created.webhook_secret, 0).await;
    let mut order = example("ORDER-HD.json");
    order["settings"]["erp_url"] = json!(erp_url);
    let rules = ordo_workers::rules::registry();
    let mut conn = db.acquire().await.unwrap();
    for (reference, body) in [
        ("ORDER::HD", order),
        (
            "INVENTORY_CATALOGUE::DEFAULT",
            example("INVENTORY_CATALOGUE-DEFAULT.json"),
        ),
    ] {
        orchestration::put_workflow(&mut conn, &account, reference, &body, false, &rules)
            .await
            .unwrap();
    }
    drop(conn);
    let q = Queue::new(db.clone(), ordo::wake::Waker::disabled());
    orchestration::create_entity(&q, &account, NewEntity::new("INVENTORY_CATALOGUE", "DEFAULT", "MAIN"))
        .await
        .unwrap();
    let mut restock = NewEvent::new("Restock", "INVENTORY_CATALOGUE", "MAIN");
    restock.attributes = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": STOCK});
    orchestration::send_event(&q, &account, restock).await.unwrap();
    (account, created.api_key, deliveries)
}

/// Under a load of 20 000 jobs and 150 orders sent over HTTP (retrying transport errors and 503 with the same
/// idempotency key), SIGKILL workers again and again, crash-restart PostgreSQL twice, stop and restart Redis twice,
/// restart the API twice, and roll the pool from v1 to v2 (canary, promote): every accepted job exists once and
/// completed, every order ran each of its events exactly once in `seq` order (one snapshot audit record each),
/// the stock adds up, no request was answered 500, and every role not meant to stop is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_survives_crashes_restarts_and_a_rollout_under_load() {
    let run_started = Instant::now();
    let mut pg = ChaosPostgres::start();
    let mut redis = ChaosRedis::start().await;
    let db_url = pg.url("ordo");
    let migrated = crate::support::ordo_command(&["migrate"], &db_url, &[])
        .status()
        .await
        .unwrap();
    assert!(migrated.success(), "ordo migrate: {migrated}");
    let db = pg.pool("ordo").await;
    let (account, key, deliveries) = set_up_account(&db).await;

    let env = role_env(&redis.url());
    let api_port = testkit::free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let base = format!("http://{listen}");
    let mut api_env = borrowed(&env);
    api_env.extend([
        ("ORDO_LISTEN", listen.as_str()),
        ("ORDO_RATE_LIMIT_RPS", "0"),
        ("ORDO_API_DRAIN_MS", "0"),
        ("ORDO_ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let mut roles = Roles {
        api: RoleProcess::start("api", &["api"], &db_url, &api_env),
        scheduler: RoleProcess::start("scheduler", &["scheduler"], &db_url, &borrowed(&env)),
        blue: (0..2)
            .map(|i| worker(&format!("worker v1 #{i}"), "v1", &db_url, &env))
            .collect(),
        green: Vec::new(),
    };
    let http = reqwest::Client::new();
    ready(&http, &base).await;
    workers_live(&db, "v1", &roles.blue).await;

    let seen = Arc::new(Seen::default());
    let client = Client::new(&base, &key, Arc::clone(&seen));
    let admin = Client::new(&base, ADMIN_TOKEN, Arc::clone(&seen));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(load::produce_jobs(client.clone(), p, BATCHES, BATCH_EVERY)))
        .collect();
    let orders = tokio::spawn(load::produce_orders(client.clone(), ORDERS, ORDER_EVERY));
    let stop_shipping = CancellationToken::new();
    let shipping = tokio::spawn(load::pick_and_ship(client.clone(), db.clone(), stop_shipping.clone()));

    let total = PRODUCERS * BATCHES * load::BATCH;
    let at = |percent: usize| total * percent / 100;
    let mut faults: Vec<String> = Vec::new();
    let mut note = |what: &str| faults.push(format!("{:>5.1}s {what}", run_started.elapsed().as_secs_f64()));

    load_reaches(&seen, at(5)).await;
    roles.blue[0].kill_and_restart().await;
    note("SIGKILL worker v1 #0, started again");

    load_reaches(&seen, at(12)).await;
    crash_restart(&mut pg, &http, &base).await;
    note("PostgreSQL crashed (immediate stop) and started again");

    load_reaches(&seen, at(20)).await;
    redis.down().await;
    note("Redis stopped");
    load_reaches(&seen, at(26)).await;
    redis.up().await;
    note("Redis started again");

    load_reaches(&seen, at(30)).await;
    restart_api(&mut roles.api, &http, &base).await;
    note("API stopped (SIGTERM, exit 0) and started again");

    load_reaches(&seen, at(36)).await;
    roles.blue[1].kill_and_restart().await;
    note("SIGKILL worker v1 #1, started again");

    // Blue-green: v2 workers first (the API refuses a rollout that nothing would run), then a 50 % canary.
    load_reaches(&seen, at(40)).await;
    roles.green = (0..2)
        .map(|i| worker(&format!("worker v2 #{i}"), "v2", &db_url, &env))
        .collect();
    workers_live(&db, "v2", &roles.green).await;
    let rollout = start_rollout(&admin, &db).await;
    note("rollout to v2 started (canary 50 %)");

    load_reaches(&seen, at(48)).await;
    crash_restart(&mut pg, &http, &base).await;
    note("PostgreSQL crashed (immediate stop) and started again");

    load_reaches(&seen, at(56)).await;
    roles.blue[0].kill_and_restart().await;
    roles.green[0].kill_and_restart().await;
    note("SIGKILL worker v1 #0 and worker v2 #0, started again");

    load_reaches(&seen, at(64)).await;
    promote(&admin, &db, rollout).await;
    note("rollout promoted");

    load_reaches(&seen, at(70)).await;
    restart_api(&mut roles.api, &http, &base).await;
    note("API stopped (SIGTERM, exit 0) and started again");

    load_reaches(&seen, at(78)).await;
    redis.down().await;
    roles.green[1].kill_and_restart().await;
    note("Redis stopped; SIGKILL worker v2 #1, started again");
    load_reaches(&seen, at(84)).await;
    redis.up().await;
    note("Redis started again");

    load_reaches(&seen, at(90)).await;
    crash_restart(&mut pg, &http, &base).await;
    note("PostgreSQL crashed (immediate stop) and started again");

    for p in producers {
        p.await.unwrap();
    }
    orders.await.unwrap();
    let accepted_orders: Vec<String> = seen.orders.lock().unwrap_or_else(PoisonError::into_inner).clone();
    eventually(SETTLE_WITHIN, "every order to ship", || async {
        let shipped: i64 =
            sqlx::query_scalar("select count(*) from entity where type = 'ORDER' and status = 'SHIPPED'")
                .fetch_one(&db)
                .await
                .ok()?;
        (shipped as usize == accepted_orders.len()).then_some(())
    })
    .await;
    stop_shipping.cancel();
    shipping.await.unwrap();
    eventually(SETTLE_WITHIN, "every job to finish", || async {
        let open: i64 = sqlx::query_scalar("select count(*) from job")
            .fetch_one(&db)
            .await
            .ok()?;
        (open == 0).then_some(())
    })
    .await;

    // The rollout completes once v1 drained (the scheduler runs the controller); v1's workers then exit 0.
    eventually(SETTLE_WITHIN, "the rollout to complete", || async {
        let state: String = sqlx::query_scalar("select state from rollout where id = $1")
            .bind(rollout)
            .fetch_one(&db)
            .await
            .ok()?;
        (state == "completed").then_some(())
    })
    .await;
    for w in roles.blue.iter_mut() {
        w.exits_zero().await;
    }
    // Every other role rode out every fault, and is connected again.
    roles.api.assert_running();
    roles.scheduler.assert_running();
    for w in roles.green.iter_mut() {
        w.assert_running();
    }
    ready(&http, &base).await;
    workers_live(&db, "v2", &roles.green).await;
    eventually(BACK_WITHIN, "the scheduler to hold its lease", || async {
        ordo::leader::holder(&db, ordo::scheduler::SCHEDULER_LEASE)
            .await
            .ok()
            .flatten()
            .filter(|h| h.contains(&format!("-{}-", roles.scheduler.pid())))
    })
    .await;

    let wrong = seen.wrong.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(wrong.is_empty(), "answers no client should get: {wrong:#?}");
    let accepted_jobs = seen.jobs.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(accepted_jobs.len(), total, "every batch was accepted in the end");
    check_jobs(&db, &accepted_jobs).await;
    check_orders(&db, &account, &accepted_orders).await;
    assert_eq!(accepted_orders.len(), ORDERS, "every order was accepted in the end");
    let deliveries = deliveries.lock().unwrap().clone();
    assert!(
        deliveries.iter().all(|d| d.signature_ok),
        "every webhook is signed with the account's secret"
    );
    let delivered: HashSet<(String, String)> = deliveries
        .iter()
        .map(|d| {
            let e = &d.body["entity"];
            (
                e["ref"].as_str().unwrap_or("").to_owned(),
                d.body["entity_status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for o in &accepted_orders {
        for status in ["BOOKED", "SHIPPED"] {
            assert!(
                delivered.contains(&(o.clone(), status.to_owned())),
                "no {status} webhook for {o}"
            );
        }
    }

    roles.api.stop_and_wait().await;
    roles.scheduler.stop_and_wait().await;
    for w in roles.green.iter_mut() {
        w.stop_and_wait().await;
    }
    eprintln!(
        "chaos: {} jobs and {} orders in {:.1}s; {} answers 503 and {} transport errors retried; faults:\n{}",
        accepted_jobs.len(),
        accepted_orders.len(),
        run_started.elapsed().as_secs_f64(),
        seen.unavailable.load(Ordering::Relaxed),
        seen.transport.load(Ordering::Relaxed),
        faults.join("\n")
    );
}

/// An orchestration event of an order, with the snapshot audit records of its executions.
#[derive(Debug, sqlx::FromRow)]
struct OrderEvent {
    entity_ref: String,
    name: String,
    status: String,
    /// Snapshot records of its executions: exactly one when it ran exactly once.
    snapshots: i64,
    /// The first of them: their order is the order the events ran in.
    snapshot_seq: Option<i64>,
}

/// The pids of `roles`.
fn roles_pids(roles: &[RoleProcess]) -> Vec<u32> {
    roles.iter().map(RoleProcess::pid).collect()
}

/// Every accepted key names exactly one job, and it completed; no other job of the load exists.
async fn check_jobs(db: &PgPool, accepted: &[String]) {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select idempotency_key, count(*), count(*) filter (where state = 'completed') from job_all \
         where idempotency_key like 'chaos-%' group by 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let per_key: HashMap<String, (i64, i64)> = rows.into_iter().map(|(k, n, done)| (k, (n, done))).collect();
    for key in accepted {
        assert_eq!(per_key.get(key), Some(&(1, 1)), "key {key}: (jobs, completed)");
    }
    assert_eq!(
        per_key.len(),
        accepted.len(),
        "a job of the load that no client was told about"
    );
    let states: Vec<(String, i64)> = sqlx::query_as("select state, count(*) from job_all group by 1 order by 1")
        .fetch_all(db)
        .await
        .unwrap();
    assert!(
        states.iter().all(|(s, _)| s == "completed"),
        "every job of the run completed: {states:?}"
    );
}

/// Each order ran CREATE, Reserved, Pick and Ship exactly once each, in that (`seq`) order, each with exactly one
/// snapshot audit record written in the same order; the catalogue ran each reservation and sale once; the stock
/// adds up.
async fn check_orders(db: &PgPool, account: &AccountId, accepted: &[String]) {
    let rows: Vec<OrderEvent> = sqlx::query_as(
        r#"
        select e.entity_ref, e.name, e.status,
               (select count(*) from event s
                where s.account_id = e.account_id and s.source_event_id = e.seq and s.category = 'snapshot')
                 as snapshots,
               (select min(s.seq) from event s
                where s.account_id = e.account_id and s.source_event_id = e.seq and s.category = 'snapshot')
                 as snapshot_seq
        from event e
        where e.account_id = $1 and e.kind = 'orchestration' and e.entity_type = 'ORDER'
        order by e.entity_ref, e.seq
        "#,
    )
    .bind(account.as_str())
    .fetch_all(db)
    .await
    .unwrap();
    let mut per_order: BTreeMap<String, Vec<OrderEvent>> = BTreeMap::new();
    for e in rows {
        per_order.entry(e.entity_ref.clone()).or_default().push(e);
    }
    assert_eq!(per_order.len(), accepted.len(), "orders with events");
    for o in accepted {
        let events = per_order.get(o).unwrap_or_else(|| panic!("no events for {o}"));
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["CREATE", "Reserved", "Pick", "Ship"], "{o}: {events:?}");
        assert!(
            events.iter().all(|e| e.status == "success" && e.snapshots == 1),
            "{o}: every event succeeded with exactly one snapshot: {events:?}"
        );
        assert!(
            events.windows(2).all(|w| w[0].snapshot_seq < w[1].snapshot_seq),
            "{o}: executed out of seq order: {events:?}"
        );
    }
    let catalogue: Vec<(String, i64, i64)> = sqlx::query_as(
        r#"
        select e.name, count(*),
               count(*) filter (where e.status = 'success' and (select count(*) from event s
                   where s.account_id = e.account_id and s.source_event_id = e.seq and s.category = 'snapshot') = 1)
        from event e
        where e.account_id = $1 and e.kind = 'orchestration' and e.entity_type = 'INVENTORY_CATALOGUE'
          and e.name in ('Reserve', 'ConfirmSale', 'Restock')
        group by 1 order by 1
        "#,
    )
    .bind(account.as_str())
    .fetch_all(db)
    .await
    .unwrap();
    let n = accepted.len() as i64;
    assert_eq!(
        catalogue,
        [
            ("ConfirmSale".to_owned(), n, n),
            ("Reserve".to_owned(), n, n),
            ("Restock".to_owned(), 1, 1)
        ],
        "catalogue events (name, sent, ran once)"
    );
    let p = orchestration::get_position(db, account, "SKU-1", "DC1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.on_hand, p.reserved), (STOCK - n, 0), "each sale taken once");
}
