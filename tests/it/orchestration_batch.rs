//! What one execution transaction of orchestration events takes and leaves: the inventory positions it locks
//! (all at once, in one global order) and the `processed_at` stamps it writes (in `seq` order).

use std::time::Duration;

use ordo::orchestration::{
    create_entity, get_position, list_events, put_workflow, send_event, EventFilter, EventKind, EventStatus, NewEntity,
    NewEvent, SyncEvents,
};
use ordo::queue::Queue;
use ordo::testkit::{self, eventually};
use serde_json::{json, Value};
use sqlx::PgPool;

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
    sqlx::query(
        "insert into inventory_position (account_id, sku_ref, location_ref, on_hand) \
         values ($1, 'SKU-A', 'L', 10), ($1, 'SKU-B', 'L', 10)",
    )
    .bind(acct().as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    created(&db.pool, &q, "L", &["x", "y"]).await;

    // Hold the position both executions lock first, in the global order, so that both queue up behind it.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from inventory_position where account_id = $1 and sku_ref = 'SKU-A' for update")
        .bind(acct().as_str())
        .execute(&mut *hold)
        .await
        .unwrap();
    // Two API nodes' group commits: two transactions, whatever arrives when.
    let (one, two) = (SyncEvents::start(q.clone(), 1), SyncEvents::start(q.clone(), 1));
    let ab = {
        let q = q.clone();
        tokio::spawn(async move { one.send(&q, &acct(), NewEvent::new("AB", "L", "x"), WAIT).await })
    };
    let ba = {
        let q = q.clone();
        tokio::spawn(async move { two.send(&q, &acct(), NewEvent::new("BA", "L", "y"), WAIT).await })
    };
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    eventually(WAIT, "both executions to wait for a row lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = $1 and wait_event_type = 'Lock' and wait_event in ('transactionid', 'tuple')",
        )
        .bind(&database)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (waiting == 2).then_some(())
    })
    .await;

    // Neither waiting execution holds the other position: taking it does not wait.
    let mut probe = db.pool.begin().await.unwrap();
    let free =
        sqlx::query("select 1 from inventory_position where account_id = $1 and sku_ref = 'SKU-B' for update nowait")
            .bind(acct().as_str())
            .execute(&mut *probe)
            .await;
    assert!(
        free.is_ok(),
        "a waiting execution holds SKU-B while it waits for SKU-A: {free:?}"
    );
    probe.rollback().await.unwrap();
    hold.rollback().await.unwrap();

    for (call, name) in [(ab, "AB"), (ba, "BA")] {
        let out = call.await.unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.status, EventStatus::Success, "{name}: {:?}", out.error);
    }
    for sku in ["SKU-A", "SKU-B"] {
        let p = get_position(&db.pool, &acct(), sku, "L").await.unwrap().unwrap();
        assert_eq!((p.on_hand, p.reserved), (10, 2), "{sku}");
    }
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
