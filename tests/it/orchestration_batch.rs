//! What one execution transaction of orchestration events leaves: the `processed_at` stamps it writes (in `seq`
//! order).

use ordo::orchestration::{
    create_entity, list_events, put_workflow, send_event, EventFilter, EventKind, EventStatus, NewEntity, NewEvent,
};
use ordo::queue::Queue;
use ordo::testkit;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::orchestration::{queue, wait_final};
use crate::support::{acct, fast_config, start_worker};

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
        let (e, _) = send_event(&q, &acct(), NewEvent::new("Tick", "C", "c").attributes(json!({"n": n})))
            .await
            .unwrap();
        ticks.push(e.id);
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
