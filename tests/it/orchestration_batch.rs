//! What one execution transaction of orchestration events takes and leaves: the inventory positions it locks
//! (all at once, in one global order) and the `processed_at` stamps it writes (in `seq` order).

use std::time::Duration;

use ordo::orchestration::{
    create_entity, get_position, list_events, put_workflow, send_event, EventFilter, EventKind, EventStatus, NewEntity,
    NewEvent, SyncEvents, SyncOutcome,
};
use ordo::queue::Queue;
use ordo::testkit::{self, eventually};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::orchestration::{queue, wait_final};
use crate::support::{acct, fast_config, start_worker};

const WAIT: Duration = Duration::from_secs(30);

async fn put(pool: &PgPool, reference: &str, body: Value) {
    let mut conn = pool.acquire().await.unwrap();
    put_workflow(
        &mut conn,
        &acct(),
        reference,
        &body,
        false,
        &ordo_workers::rules::registry(),
    )
    .await
    .unwrap();
}

/// Creates the entities and runs their CREATE events, so that later events are their entities' turn at once.
async fn created(pool: &PgPool, q: &Queue, entity_type: &str, refs: &[&str]) {
    let w = start_worker(pool, fast_config());
    for r in refs {
        let (_, create) = create_entity(q, &acct(), NewEntity::new(entity_type, "X", *r))
            .await
            .unwrap();
        wait_final(pool, &create.id).await;
    }
    w.stop().await;
}

fn reserve(sku: &str) -> Value {
    json!({"name": "inventory.Reserve", "props": {"sku_ref": sku, "location_ref": "L", "qty": 1}})
}

/// Positions SKU-A and SKU-B at location L, 10 on hand each.
async fn stock_a_and_b(pool: &PgPool) {
    sqlx::query(
        "insert into inventory_position (account_id, sku_ref, location_ref, on_hand) \
         values ($1, 'SKU-A', 'L', 10), ($1, 'SKU-B', 'L', 10)",
    )
    .bind(acct().as_str())
    .execute(pool)
    .await
    .unwrap();
}

/// Locks position `sku` in a transaction of the test's own (`nowait`: an error if another holds it).
async fn lock_position(
    pool: &PgPool,
    sku: &str,
    nowait: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "select 1 from inventory_position where account_id = $1 and sku_ref = $2 for update{}",
        if nowait { " nowait" } else { "" }
    );
    sqlx::query(&sql)
        .bind(acct().as_str())
        .bind(sku)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Waits until `n` sessions of the test's database wait for a row lock.
async fn row_lock_waiters(pool: &PgPool, n: i64) {
    eventually(WAIT, "executions to wait for a row lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and wait_event_type = 'Lock' and wait_event in ('transactionid', 'tuple')",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (waiting == n).then_some(())
    })
    .await;
}

/// Sends event `name` to an entity as a sync call, through a group commit of its own (an API node of its own: a
/// transaction of its own, whatever else arrives).
fn send_alone(
    q: &Queue,
    entity_type: &str,
    entity: &str,
    name: &str,
) -> JoinHandle<ordo::orchestration::Result<SyncOutcome>> {
    let (q, event) = (q.clone(), NewEvent::new(name, entity_type, entity));
    let node = SyncEvents::start(q.clone(), 1);
    tokio::spawn(async move { node.send(&q, &acct(), event, WAIT).await })
}

/// Each call succeeded, and each of SKU-A and SKU-B has 2 reserved of its 10.
async fn both_reserved_twice(pool: &PgPool, calls: [(JoinHandle<ordo::orchestration::Result<SyncOutcome>>, &str); 2]) {
    for (call, name) in calls {
        let out = call.await.unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.status, EventStatus::Success, "{name}: {:?}", out.error);
    }
    for sku in ["SKU-A", "SKU-B"] {
        let p = get_position(pool, &acct(), sku, "L").await.unwrap().unwrap();
        assert_eq!((p.on_hand, p.reserved), (10, 2), "{sku}");
    }
}

/// Two executions that reserve the same two positions in opposite rule orders lock them in one order, all at
/// once: while the first position is held elsewhere, both wait for it and neither holds the second, so they can
/// never wait on each other (a deadlock that PostgreSQL would break after a second by failing one of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executions_reserving_positions_in_opposite_orders_never_wait_on_each_other() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(
        &db.pool,
        "L::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [
                {"name": "AB", "entity_type": "L", "rules": [reserve("SKU-A"), reserve("SKU-B")]},
                {"name": "BA", "entity_type": "L", "rules": [reserve("SKU-B"), reserve("SKU-A")]},
            ]
        }),
    )
    .await;
    stock_a_and_b(&db.pool).await;
    created(&db.pool, &q, "L", &["x", "y"]).await;

    // Hold the position both executions lock first, in the global order, so that both queue up behind it.
    let hold = lock_position(&db.pool, "SKU-A", false).await.unwrap();
    let ab = send_alone(&q, "L", "x", "AB");
    let ba = send_alone(&q, "L", "y", "BA");
    row_lock_waiters(&db.pool, 2).await;

    // Neither waiting execution holds the other position: taking it does not wait.
    let free = lock_position(&db.pool, "SKU-B", true).await;
    assert!(
        free.is_ok(),
        "a waiting execution holds SKU-B while it waits for SKU-A: {:?}",
        free.as_ref().err()
    );
    free.unwrap().rollback().await.unwrap();
    hold.rollback().await.unwrap();
    both_reserved_twice(&db.pool, [(ab, "AB"), (ba, "BA")]).await;
}

/// Reserves the position the entity's `sku` attribute names once `SetAttribute` has set it to `to`: a position no
/// prediction can name, since predictions read the entity as it was before the event.
fn found_late(first: &str, to: &str) -> Value {
    json!([
        reserve(first),
        {"name": "core.SetAttribute", "props": {"name": "sku", "value": to}},
        {"name": "inventory.Reserve", "props": {"sku_ref": "{{entity.attributes.sku}}", "location_ref": "L", "qty": 1}},
    ])
}

/// Two lone executions, each holding one position and finding the other only while interpreting, never wait on
/// each other: the one whose find sorts before what it holds lets go of it and takes both in order. Here `y`
/// waits for SKU-A (held by the test) and will want SKU-B next; `x` holds SKU-B and finds SKU-A. Had `x` waited for
/// SKU-A holding SKU-B, `y` would have taken SKU-A and waited for SKU-B: a deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lone_executions_finding_positions_late_never_wait_on_each_other() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(
        &db.pool,
        "M::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [
                {"name": "BthenA", "entity_type": "M", "rules": found_late("SKU-B", "SKU-A")},
                {"name": "AthenB", "entity_type": "M", "rules": found_late("SKU-A", "SKU-B")},
            ]
        }),
    )
    .await;
    stock_a_and_b(&db.pool).await;
    let w = start_worker(&db.pool, fast_config());
    for r in ["x", "y"] {
        // `sku` names no position before the event sets it.
        let entity = NewEntity::new("M", "X", r).attributes(json!({"sku": "none"}));
        let (_, create) = create_entity(&q, &acct(), entity).await.unwrap();
        wait_final(&db.pool, &create.id).await;
    }
    w.stop().await;

    let hold = lock_position(&db.pool, "SKU-A", false).await.unwrap();
    let y = send_alone(&q, "M", "y", "AthenB");
    row_lock_waiters(&db.pool, 1).await;
    let x = send_alone(&q, "M", "x", "BthenA");
    row_lock_waiters(&db.pool, 2).await;

    // `x` waits for SKU-A without holding SKU-B: taking it does not wait.
    let free = lock_position(&db.pool, "SKU-B", true).await;
    assert!(
        free.is_ok(),
        "x holds SKU-B while it waits for SKU-A: {:?}",
        free.as_ref().err()
    );
    free.unwrap().rollback().await.unwrap();
    hold.rollback().await.unwrap();
    both_reserved_twice(&db.pool, [(y, "AthenB"), (x, "BthenA")]).await;
}

/// A worker's batch that runs an entity's waiting events one after another, each with an inline event, stamps
/// `processed_at` so that it never decreases along `seq` within the entity: the event log reads in the order it
/// lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processed_at_never_decreases_along_seq_within_an_entity() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(
        &db.pool,
        "C::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [
                {"name": "Tick", "entity_type": "C", "rules": [
                    {"name": "core.SetAttribute", "props": {"name": "tick", "value": "{{event.attributes.n}}"}},
                    {"name": "core.SendEvent", "props": {"event_name": "Tock"}},
                ]},
                {"name": "Tock", "entity_type": "C", "rules": [
                    {"name": "core.SetAttribute", "props": {"name": "tock", "value": true}},
                ]},
            ]
        }),
    )
    .await;
    created(&db.pool, &q, "C", &["c"]).await;
    // Queued while no worker runs: the worker's batch runs them as one chain, in one transaction.
    let mut ticks = Vec::new();
    for n in 0..20 {
        let e = send_event(&q, &acct(), NewEvent::new("Tick", "C", "c").attributes(json!({"n": n})))
            .await
            .unwrap();
        ticks.push(e.event.id);
    }
    let w = start_worker(&db.pool, fast_config());
    for id in &ticks {
        assert_eq!(wait_final(&db.pool, id).await.status, EventStatus::Success);
    }
    w.stop().await;

    let mut conn = db.pool.acquire().await.unwrap();
    let filter = EventFilter {
        entity_type: Some("C".into()),
        entity_ref: Some("c".into()),
        kind: Some(EventKind::Orchestration),
        ..EventFilter::default()
    };
    let log = list_events(&mut conn, &acct(), &filter, 1000, None)
        .await
        .unwrap()
        .items;
    assert_eq!(log.len(), 1 + 2 * ticks.len(), "CREATE, each Tick and its Tock");
    for pair in log.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.processed_at <= b.processed_at,
            "{} (seq {}) processed at {:?}, after {} (seq {}) at {:?}",
            a.name,
            a.seq,
            a.processed_at,
            b.name,
            b.seq,
            b.processed_at
        );
    }
}
