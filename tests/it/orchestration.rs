//! The orchestration engine on real PostgreSQL with an in-process worker: workflows and versions, the example
//! order flow with signed webhooks, failure paths, ordering per entity, scheduled events and replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use ordo::orchestration::{
    self, cancel_event, create_entity, get_entity, get_event, get_position, list_events, put_workflow, replay_event,
    send_event, Accepted, Error, Event, EventFilter, EventKind, EventStatus, NewEntity, NewEvent, SyncEvents,
};
use ordo::queue::Queue;
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use ordo_workers::rules::RuleRegistry;
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{acct, fast_config, start_worker};

const WAIT: Duration = Duration::from_secs(30);

fn rules() -> RuleRegistry {
    ordo_workers::rules::registry()
}

pub(crate) fn queue(pool: &PgPool) -> Queue {
    Queue::new(pool.clone(), ordo::wake::Waker::disabled())
}

async fn put(pool: &PgPool, reference: &str, body: Value, major: bool) -> orchestration::Workflow {
    let mut conn = pool.acquire().await.unwrap();
    put_workflow(&mut conn, &acct(), reference, &body, major, &rules())
        .await
        .unwrap()
}

async fn send(q: &Queue, name: &str, t: &str, r: &str, attributes: Value) -> Event {
    send_event(q, &acct(), NewEvent::new(name, t, r).attributes(attributes))
        .await
        .unwrap()
        .event
}

pub(crate) async fn wait_final(pool: &PgPool, id: &str) -> Event {
    eventually(WAIT, &format!("event {id} to finish"), || async {
        let e = get_event(pool, &acct(), id).await.ok()?;
        e.status.is_final().then_some(e)
    })
    .await
}

async fn wait_status(pool: &PgPool, t: &str, r: &str, status: &str) -> orchestration::Entity {
    eventually(WAIT, &format!("{t}:{r} to be {status}"), || async {
        let e = get_entity(pool, &acct(), t, r).await.ok()?;
        (e.status == status).then_some(e)
    })
    .await
}

async fn events(pool: &PgPool, f: EventFilter) -> Vec<Event> {
    let mut conn = pool.acquire().await.unwrap();
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_events(&mut conn, &acct(), &f, 1000, cursor.as_deref())
            .await
            .unwrap();
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn count_jobs(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("select count(*) from job_all where kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Invalid workflows list every problem; versions go 1.0 → 1.1 → 2.0 on `major`; an entity stays on its major
/// and picks up newer minors; unknown entities and other accounts' entities are not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_versions_pin_entities_to_their_major() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    let mut conn = db.pool.acquire().await.unwrap();
    let bad = json!({
        "statuses": [{"name": "CREATED"}],
        "rulesets": [
            {"name": "A", "entity_type": "T", "triggers": ["NOPE"], "rules": [
                {"name": "core.Unknown"},
                {"name": "core.SetState", "props": {}},
                {"name": "core.SetState", "props": {"status": 5}},
            ]},
            {"name": "B", "entity_type": "T", "kind": "exception", "rules": []},
        ]
    });
    let Err(Error::Invalid(problems)) = put_workflow(&mut conn, &acct(), "T::X", &bad, false, &rules()).await else {
        panic!("invalid workflow accepted");
    };
    let text = format!("{problems:?}");
    for needle in [
        "undeclared status \\\"NOPE\\\"",
        "unknown rule",
        "is required",
        "must be of type string",
        "no normal ruleset",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");

    let v1 = json!({"statuses": [{"name": "CREATED"}, {"name": "DONE"}], "rulesets": []});
    assert_eq!(
        put(&db.pool, "T::X", v1.clone(), false).await.version.to_string(),
        "1.0"
    );
    let (e, _) = create_entity(&q, &acct(), NewEntity::new("T", "X", "e1"))
        .await
        .unwrap();
    assert_eq!(e.workflow.version.to_string(), "1.0");
    assert_eq!(
        put(&db.pool, "T::X", v1.clone(), false).await.version.to_string(),
        "1.0",
        "an unchanged upload makes no new version"
    );
    let v1b = json!({"statuses": [{"name": "CREATED"}, {"name": "DONE"}, {"name": "HELD"}], "rulesets": []});
    assert_eq!(
        put(&db.pool, "T::X", v1b.clone(), false).await.version.to_string(),
        "1.1"
    );
    assert_eq!(
        put(&db.pool, "T::X", v1b.clone(), true).await.version.to_string(),
        "2.0",
        "?major=true makes a version even when unchanged"
    );
    assert_eq!(
        put(&db.pool, "T::X", v1.clone(), false).await.version.to_string(),
        "2.1"
    );
    let e = get_entity(&db.pool, &acct(), "T", "e1").await.unwrap();
    assert_eq!(e.workflow.version.to_string(), "1.1", "stays on major 1, latest minor");
    let latest = orchestration::get_workflow(&db.pool, &acct(), "T::X", None)
        .await
        .unwrap();
    assert_eq!(latest.version.to_string(), "2.1");
    let old = orchestration::get_workflow(&db.pool, &acct(), "T::X", Some("1.0".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(old.version.to_string(), "1.0");
    assert!(matches!(
        orchestration::get_workflow(&db.pool, &acct(), "T::X", Some("9.9".parse().unwrap())).await,
        Err(Error::WorkflowNotFound { .. })
    ));
    put(&db.pool, "A::B", v1.clone(), false).await;
    let page = orchestration::list_workflows(&db.pool, &acct(), 1, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].reference, "A::B");
    let page = orchestration::list_workflows(&db.pool, &acct(), 1, page.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(
        (page.items[0].reference.as_str(), page.items[0].version.to_string()),
        ("T::X", "2.1".into())
    );
    assert!(page.next_cursor.is_none());
    let (e2, _) = create_entity(&q, &acct(), NewEntity::new("T", "X", "e2"))
        .await
        .unwrap();
    assert_eq!(e2.workflow.version.to_string(), "2.1");
    assert!(matches!(
        create_entity(&q, &acct(), NewEntity::new("T", "X", "e1")).await,
        Err(Error::EntityExists(_))
    ));
    assert!(matches!(
        create_entity(&q, &acct(), NewEntity::new("T", "NONE", "e9")).await,
        Err(Error::WorkflowNotFound { .. })
    ));
    assert!(matches!(
        send_event(&q, &acct(), NewEvent::new("X", "T", "missing")).await,
        Err(Error::EntityNotFound(_))
    ));
    let mut keyed = NewEvent::new("X", "T", "e1").attributes(json!({"a": 1}));
    keyed.idempotency_key = Some("k-1".into());
    let Accepted {
        event: first, replayed, ..
    } = send_event(&q, &acct(), keyed.clone()).await.unwrap();
    assert!(!replayed);
    let Accepted {
        event: again, replayed, ..
    } = send_event(&q, &acct(), keyed.clone()).await.unwrap();
    assert!(replayed);
    assert_eq!(again.id, first.id);
    keyed.attributes = json!({"a": 2});
    assert!(matches!(
        send_event(&q, &acct(), keyed).await,
        Err(Error::IdempotencyConflict { .. })
    ));
    let other = AccountId::parse("other").unwrap();
    tenancy::create_account(&db.pool, &other, "Other", "local")
        .await
        .unwrap();
    assert!(matches!(
        send_event(&q, &other, NewEvent::new("X", "T", "e1")).await,
        Err(Error::EntityNotFound(_))
    ));
    assert!(matches!(
        get_entity(&db.pool, &other, "T", "e1").await,
        Err(Error::EntityNotFound(_))
    ));
}

/// What the webhook receiver saw.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub body: Value,
    pub signature_ok: bool,
    pub idempotency_key: String,
    pub traceparent: String,
}

/// A local HTTP receiver that checks each request's signature with its own HMAC over the raw body.
pub(crate) async fn start_receiver(secret: String, fail_first: usize) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/erp/orders", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let secret = secret.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed before the headers ended");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let raw = &buf[head_end..head_end + len];
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                let sig = header("ordo-signature");
                let (t, v1) = sig
                    .split_once(",v1=")
                    .map(|(t, v)| (t.trim_start_matches("t=").to_owned(), v.to_owned()))
                    .unwrap_or_default();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(format!("{t}.").as_bytes());
                mac.update(raw);
                let expected = hex::encode(mac.finalize().into_bytes());
                let failing = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Delivery {
                        body: serde_json::from_slice(raw).unwrap(),
                        signature_ok: !t.is_empty() && expected == v1,
                        idempotency_key: header("idempotency-key"),
                        traceparent: header("traceparent"),
                    });
                    seen.len() <= fail_first
                };
                let answer: &[u8] = if failing {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = sock.write_all(answer).await;
            });
        }
    });
    (url, out)
}

pub(crate) fn example(name: &str) -> Value {
    let path = format!("{}/examples/workflows/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The example ORDER::HD and INVENTORY_CATALOGUE::DEFAULT workflows: booking with a reservation, a shortfall put
/// on hold and retried by a scheduled event, picking, shipping (the sale confirmed), a cancellation releasing
/// stock, and signed webhooks to the ERP on BOOKED and SHIPPED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_order_flow_runs_end_to_end_with_signed_webhooks() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    let secret = tenancy::webhook_secret(&db.pool, &acct()).await.unwrap();
    let (erp_url, deliveries) = start_receiver(secret, 0).await;
    let mut order = example("ORDER-HD.json");
    order["settings"]["erp_url"] = json!(erp_url);
    order["settings"]["retry_seconds"] = json!("1");
    put(&db.pool, "ORDER::HD", order, false).await;
    put(
        &db.pool,
        "INVENTORY_CATALOGUE::DEFAULT",
        example("INVENTORY_CATALOGUE-DEFAULT.json"),
        false,
    )
    .await;
    let w = start_worker(&db.pool, fast_config());

    create_entity(&q, &acct(), NewEntity::new("INVENTORY_CATALOGUE", "DEFAULT", "MAIN"))
        .await
        .unwrap();
    let restock = json!({"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": 5});
    let e = send(&q, "Restock", "INVENTORY_CATALOGUE", "MAIN", restock.clone()).await;
    assert_eq!(wait_final(&db.pool, &e.id).await.status, EventStatus::Success);

    let line = json!({"sku": "SKU-1", "location": "DC1", "qty": 3});
    create_entity(
        &q,
        &acct(),
        NewEntity::new("ORDER", "HD", "O-1").attributes(line.clone()),
    )
    .await
    .unwrap();
    let o1 = wait_status(&db.pool, "ORDER", "O-1", "BOOKED").await;
    assert_eq!(o1.attributes["reserved_qty"], 3);
    let p = get_position(&db.pool, &acct(), "SKU-1", "DC1").await.unwrap().unwrap();
    assert_eq!((p.on_hand, p.reserved, p.available), (5, 3, 2));

    // Only 2 left: the second order goes on hold and retries every second.
    create_entity(
        &q,
        &acct(),
        NewEntity::new("ORDER", "HD", "O-2").attributes(line.clone()),
    )
    .await
    .unwrap();
    let o2 = wait_status(&db.pool, "ORDER", "O-2", "ON_HOLD").await;
    assert_eq!(o2.attributes["available_at_hold"], 2);

    send(&q, "Pick", "ORDER", "O-1", json!({})).await;
    send(&q, "Ship", "ORDER", "O-1", json!({})).await;
    wait_status(&db.pool, "ORDER", "O-1", "SHIPPED").await;
    eventually(WAIT, "the sale to be confirmed", || async {
        let p = get_position(&db.pool, &acct(), "SKU-1", "DC1").await.ok()??;
        ((p.on_hand, p.reserved) == (2, 0)).then_some(())
    })
    .await;

    // Restocking lets the scheduled retry book the held order.
    send(&q, "Restock", "INVENTORY_CATALOGUE", "MAIN", restock).await;
    wait_status(&db.pool, "ORDER", "O-2", "BOOKED").await;
    let p = get_position(&db.pool, &acct(), "SKU-1", "DC1").await.unwrap().unwrap();
    assert_eq!((p.on_hand, p.reserved, p.available), (5, 3, 2));

    send(&q, "Cancel", "ORDER", "O-2", json!({})).await;
    wait_status(&db.pool, "ORDER", "O-2", "CANCELLED").await;
    eventually(WAIT, "the reservation to be released", || async {
        let p = get_position(&db.pool, &acct(), "SKU-1", "DC1").await.ok()??;
        ((p.on_hand, p.reserved, p.available) == (5, 0, 5)).then_some(())
    })
    .await;

    // Webhooks: O-1 BOOKED, O-2 BOOKED, O-1 SHIPPED — each signed, each with its own idempotency key.
    let got = eventually(WAIT, "three webhook deliveries", || async {
        let d = deliveries.lock().unwrap().clone();
        (d.len() >= 3).then_some(d)
    })
    .await;
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got.iter().all(|d| d.signature_ok), "{got:#?}");
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|d| {
            (
                d.body["entity"]["ref"].as_str().unwrap().to_owned(),
                d.body["entity_status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("O-1".to_owned(), "BOOKED".to_owned()),
            ("O-1".to_owned(), "SHIPPED".to_owned()),
            ("O-2".to_owned(), "BOOKED".to_owned())
        ]
    );
    let mut keys: Vec<&str> = got.iter().map(|d| d.idempotency_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "distinct deliveries have distinct keys");
    let hooks = events(
        &db.pool,
        EventFilter {
            category: Some("webhook".into()),
            ..EventFilter::default()
        },
    )
    .await;
    assert_eq!(hooks.len(), 3, "every attempt is an audit record");
    assert!(hooks
        .iter()
        .all(|h| h.status == EventStatus::Success && h.source_event_id.is_some()));
    w.stop().await;
}

fn test_workflow() -> Value {
    json!({
        "statuses": [{"name": "A"}, {"name": "B"}],
        "rulesets": [
            {"name": "Go", "entity_type": "T", "triggers": ["A"], "rules": [
                {"name": "core.SetState", "props": {"status": "B"}},
            ]},
            {"name": "Boom", "entity_type": "T", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "touched", "value": true}},
                {"name": "core.SetState", "props": {"status": "B"}},
                {"name": "core.SendEvent", "props": {"event_name": "Go", "entity": {"type": "T", "ref": "other"}}},
                {"name": "core.ScheduleEvent", "props": {"event_name": "Go", "delay_seconds": 60}},
                {"name": "core.SendWebhook", "props": {"url": "http://127.0.0.1:9/never"}},
                {"name": "core.Fail", "props": {"message": "boom {{entity.ref}}"}},
            ]},
            {"name": "Risky", "entity_type": "T", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "x", "value": 1}},
                {"name": "core.Fail", "props": {"message": "risky"}},
            ]},
            {"name": "Risky", "entity_type": "T", "kind": "exception", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "handled", "value": "{{event.attributes.why}}"}},
            ]},
            {"name": "Loop", "entity_type": "T", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "looped", "value": true}},
                {"name": "core.SendEvent", "props": {"event_name": "Loop"}},
            ]},
            {"name": "Chain", "entity_type": "T", "rules": [
                {"name": "core.IfAttribute", "props": {"attribute": "event.attributes.go", "equals": true,
                                                        "event_name": "Go", "else_event_name": "Nothing"}},
            ]},
        ]
    })
}

/// No ruleset for the status → `no_match`; a failing rule rolls back every change of the execution but keeps the
/// audit; the exception ruleset handles a failure; an inline loop stops at the cap and fails cleanly; replay of a
/// no_match event runs it again (on the newer minor version); replay of a success is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_roll_back_and_exception_paths_and_caps_hold() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(&db.pool, "T::X", test_workflow(), false).await;
    create_entity(&q, &acct(), NewEntity::new("T", "X", "e").status("A"))
        .await
        .unwrap();
    create_entity(&q, &acct(), NewEntity::new("T", "X", "other").status("A"))
        .await
        .unwrap();
    let w = start_worker(&db.pool, fast_config());

    // Inline chain through IfAttribute: Chain → Go (A → B).
    let chain = send(&q, "Chain", "T", "e", json!({"go": true})).await;
    assert_eq!(wait_final(&db.pool, &chain.id).await.status, EventStatus::Success);
    let inline = events(
        &db.pool,
        EventFilter {
            kind: Some(EventKind::Orchestration),
            source_event_id: Some(chain.id.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    assert_eq!(inline.len(), 1);
    assert_eq!(
        (inline[0].name.as_str(), inline[0].status),
        ("Go", EventStatus::Success)
    );
    assert_eq!(get_entity(&db.pool, &acct(), "T", "e").await.unwrap().status, "B");

    // Go only triggers in A: no match now.
    let go = send(&q, "Go", "T", "e", json!({})).await;
    assert_eq!(wait_final(&db.pool, &go.id).await.status, EventStatus::NoMatch);

    // A failure keeps nothing but the audit.
    let jobs_before = count_jobs(&db.pool, "orchestration.event").await;
    let before = get_entity(&db.pool, &acct(), "T", "e").await.unwrap();
    let boom = send(&q, "Boom", "T", "e", json!({})).await;
    let done = wait_final(&db.pool, &boom.id).await;
    assert_eq!(done.status, EventStatus::Failed);
    assert!(done.error.as_deref().unwrap().contains("boom e"), "{done:?}");
    let after = get_entity(&db.pool, &acct(), "T", "e").await.unwrap();
    assert_eq!((after.status, after.attributes), (before.status, before.attributes));
    assert_eq!(
        count_jobs(&db.pool, "orchestration.event").await,
        jobs_before + 1,
        "only Boom's own job"
    );
    assert_eq!(count_jobs(&db.pool, "webhook.deliver").await, 0);
    let audit = events(
        &db.pool,
        EventFilter {
            source_event_id: Some(boom.id.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    assert!(audit.iter().all(|e| e.kind == EventKind::Audit));
    assert!(audit
        .iter()
        .any(|e| e.category.as_deref() == Some("rule") && e.name == "core.Fail" && e.status == EventStatus::Failed));
    assert!(audit.iter().any(|e| e.category.as_deref() == Some("snapshot")));

    // The exception ruleset runs from the state before the failed pass.
    let risky = send(&q, "Risky", "T", "e", json!({"why": "tested"})).await;
    let done = wait_final(&db.pool, &risky.id).await;
    assert_eq!(done.status, EventStatus::Success);
    assert!(done.error.as_deref().unwrap().contains("risky"));
    let e = get_entity(&db.pool, &acct(), "T", "e").await.unwrap();
    assert_eq!(e.attributes, json!({"handled": "tested"}));

    // An endless inline loop stops at the cap.
    let lp = send(&q, "Loop", "T", "e", json!({})).await;
    let done = wait_final(&db.pool, &lp.id).await;
    assert_eq!(done.status, EventStatus::Failed);
    assert!(done.error.as_deref().unwrap().contains("500"), "{done:?}");
    let e = get_entity(&db.pool, &acct(), "T", "e").await.unwrap();
    assert!(e.attributes.get("looped").is_none(), "nothing of the loop is kept");

    // Replay: a no_match event after a new minor version adds its ruleset.
    let later = send(&q, "Later", "T", "e", json!({"v": 7})).await;
    assert_eq!(wait_final(&db.pool, &later.id).await.status, EventStatus::NoMatch);
    let mut v2 = test_workflow();
    v2["rulesets"].as_array_mut().unwrap().push(json!(
        {"name": "Later", "entity_type": "T", "rules": [
            {"name": "core.SetAttribute", "props": {"name": "later", "value": "{{event.attributes.v}}"}}]}
    ));
    put(&db.pool, "T::X", v2, false).await;
    let again = replay_event(&q, &acct(), &later.id).await.unwrap();
    assert_eq!(again.source_event_id.as_deref(), Some(later.id.as_str()));
    assert_eq!(wait_final(&db.pool, &again.id).await.status, EventStatus::Success);
    assert_eq!(
        get_entity(&db.pool, &acct(), "T", "e").await.unwrap().attributes["later"],
        7
    );
    assert!(matches!(
        replay_event(&q, &acct(), &again.id).await,
        Err(Error::InvalidEventState { .. })
    ));
    w.stop().await;
}

/// 200 events for one entity, sent concurrently, execute one at a time in acceptance (seq) order — each
/// execution's snapshot shows the previous event's mark — while 50 other entities' events are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_one_entity_run_in_order_while_others_run_in_parallel() {
    let db = testkit::db_with_max(30).await;
    let q = queue(&db.pool);
    put(
        &db.pool,
        "S::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [{"name": "Tick", "entity_type": "S", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "last", "value": "{{event.attributes.n}}"}}
            ]}]
        }),
        false,
    )
    .await;
    create_entity(&q, &acct(), NewEntity::new("S", "X", "hot"))
        .await
        .unwrap();
    for i in 0..50 {
        create_entity(&q, &acct(), NewEntity::new("S", "X", format!("cold-{i}")))
            .await
            .unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for t in 0..10 {
        let q = q.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut ids = Vec::new();
            for k in 0..20 {
                let n = t * 20 + k;
                ids.push(send(&q, "Tick", "S", "hot", json!({"n": n})).await.id);
                if k < 5 {
                    send(&q, "Tick", "S", &format!("cold-{}", t * 5 + k), json!({"n": n})).await;
                }
            }
            ids
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let w = start_worker(&db.pool, fast_config());
    let all = eventually(WAIT * 2, "every Tick to finish", || async {
        let all = events(
            &db.pool,
            EventFilter {
                kind: Some(EventKind::Orchestration),
                name: Some("Tick".into()),
                ..EventFilter::default()
            },
        )
        .await;
        (all.len() == 250 && all.iter().all(|e| e.status == EventStatus::Success)).then_some(all)
    })
    .await;
    w.stop().await;

    let hot: Vec<&Event> = all.iter().filter(|e| e.entity.entity_ref == "hot").collect();
    assert_eq!(hot.len(), 200);
    let snapshots = events(
        &db.pool,
        EventFilter {
            entity_type: Some("S".into()),
            entity_ref: Some("hot".into()),
            category: Some("snapshot".into()),
            ..EventFilter::default()
        },
    )
    .await;
    // Skip the CREATE event's snapshot; the rest are the Ticks', in execution order.
    let snapshots: Vec<&Event> = snapshots.iter().filter(|s| s.name == "Tick").collect();
    assert_eq!(snapshots.len(), 200);
    let executed: Vec<&str> = snapshots
        .iter()
        .map(|s| s.source_event_id.as_deref().unwrap())
        .collect();
    let accepted: Vec<&str> = hot.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(executed, accepted, "executed in acceptance order");
    for (i, s) in snapshots.iter().enumerate().skip(1) {
        assert_eq!(
            s.attributes["attributes"]["last"],
            hot[i - 1].attributes["n"],
            "execution {i} saw its predecessor's change"
        );
    }
    let last_hot = hot.iter().map(|e| e.processed_at.unwrap()).max().unwrap();
    let cold_done = all
        .iter()
        .filter(|e| e.entity.entity_ref != "hot" && e.processed_at.unwrap() < last_hot)
        .count();
    assert!(
        cold_done > 0,
        "other entities' events did not wait for the hot entity's 200"
    );
    let retried: i64 = sqlx::query_scalar("select count(*) from job_all where kind = $1 and attempt <> 1")
        .bind(orchestration::EVENT_KIND)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        retried, 0,
        "every event ran in its first attempt: no chained claim was left behind"
    );
}

/// Events of different entities executed in one batch share an inventory position: each one sees the
/// reservations of those before it, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_of_one_batch_reserving_one_position_all_count() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    let position = json!({"sku_ref": "SKU-S", "location_ref": "L"});
    let mut take = position.clone();
    take["qty"] = json!(1);
    let mut stock = position.clone();
    stock["on_hand"] = json!(30);
    put(
        &db.pool,
        "P::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [
                {"name": "Stock", "entity_type": "P", "rules": [{"name": "inventory.UpsertPosition", "props": stock}]},
                {"name": "Take", "entity_type": "P", "rules": [{"name": "inventory.Reserve", "props": take}]}
            ]
        }),
        false,
    )
    .await;
    create_entity(&q, &acct(), NewEntity::new("P", "X", "stock"))
        .await
        .unwrap();
    let stocked = send(&q, "Stock", "P", "stock", json!({})).await;
    let w = start_worker(&db.pool, fast_config());
    assert_eq!(wait_final(&db.pool, &stocked.id).await.status, EventStatus::Success);
    w.stop().await;
    // 40 takers of 30 units, queued while no worker runs, so that the worker's batches hold many of them.
    let mut takes = Vec::new();
    for i in 0..40 {
        create_entity(&q, &acct(), NewEntity::new("P", "X", format!("p-{i}")))
            .await
            .unwrap();
        takes.push(send(&q, "Take", "P", &format!("p-{i}"), json!({})).await.id);
    }
    let w = start_worker(&db.pool, fast_config());
    let mut outcomes = Vec::new();
    for id in &takes {
        outcomes.push(wait_final(&db.pool, id).await.status);
    }
    w.stop().await;
    let succeeded = outcomes.iter().filter(|s| **s == EventStatus::Success).count();
    let failed = outcomes.iter().filter(|s| **s == EventStatus::Failed).count();
    assert_eq!(
        (succeeded, failed),
        (30, 10),
        "30 units reserved once each: {outcomes:?}"
    );
    let p = get_position(&db.pool, &acct(), "SKU-S", "L").await.unwrap().unwrap();
    assert_eq!((p.on_hand, p.reserved, p.available), (30, 30, 0));
}

/// A scheduled event fires at its time (not before), a cancelled one never runs and cannot be cancelled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_events_fire_on_time_and_cancelled_ones_never_run() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(
        &db.pool,
        "S::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [{"name": "Mark", "entity_type": "S", "rules": [
                {"name": "core.SetAttribute", "props": {"name": "{{event.attributes.name}}", "value": true}}
            ]}]
        }),
        false,
    )
    .await;
    create_entity(&q, &acct(), NewEntity::new("S", "X", "s")).await.unwrap();
    let w = start_worker(&db.pool, fast_config());
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let fire = send_event(
        &q,
        &acct(),
        NewEvent::new("Mark", "S", "s")
            .attributes(json!({"name": "fired"}))
            .scheduled_at(at),
    )
    .await
    .unwrap()
    .event;
    let skip = send_event(
        &q,
        &acct(),
        NewEvent::new("Mark", "S", "s")
            .attributes(json!({"name": "skipped"}))
            .scheduled_at(at),
    )
    .await
    .unwrap()
    .event;
    assert_eq!(fire.status, EventStatus::Scheduled);
    let cancelled = cancel_event(&q, &acct(), &skip.id).await.unwrap();
    assert_eq!(cancelled.status, EventStatus::Cancelled);
    assert!(matches!(
        cancel_event(&q, &acct(), &skip.id).await,
        Err(Error::InvalidEventState { .. })
    ));
    let done = wait_final(&db.pool, &fire.id).await;
    assert_eq!(done.status, EventStatus::Success);
    assert!(done.processed_at.unwrap() >= at, "fired before its time");
    // A later event of the same entity has run once the cancelled one would have: it never will.
    let after = send(&q, "Mark", "S", "s", json!({"name": "after"})).await;
    wait_final(&db.pool, &after.id).await;
    let e = get_entity(&db.pool, &acct(), "S", "s").await.unwrap();
    assert_eq!(e.attributes, json!({"fired": true, "after": true}));
    assert_eq!(
        get_event(&db.pool, &acct(), &skip.id).await.unwrap().status,
        EventStatus::Cancelled
    );
    assert!(matches!(
        cancel_event(&q, &acct(), &fire.id).await,
        Err(Error::InvalidEventState { .. })
    ));
    w.stop().await;

    // Retention removes finished events and records, never waiting ones.
    let waiting = send_event(
        &q,
        &acct(),
        NewEvent::new("Mark", "S", "s").scheduled_at(chrono::Utc::now() + chrono::Duration::hours(1)),
    )
    .await
    .unwrap()
    .event;
    let pruned = orchestration::prune_events(&db.pool, Duration::ZERO, 10_000)
        .await
        .unwrap();
    assert!(pruned > 5, "{pruned}");
    let left = events(&db.pool, EventFilter::default()).await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].id, waiting.id);
}

/// A sync event answers with the outcome after its inline chain, including emitted events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_event_answers_with_outcome() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(&db.pool, "T::X", test_workflow(), false).await;
    create_entity(&q, &acct(), NewEntity::new("T", "X", "e").status("A"))
        .await
        .unwrap();
    let w = start_worker(&db.pool, fast_config());
    let sync = SyncEvents::start(q.clone(), 4);
    let out = sync
        .send(
            &q,
            &acct(),
            NewEvent::new("Chain", "T", "e").attributes(json!({"go": true})),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(out.status, EventStatus::Success);
    assert_eq!(out.entity.status, "B");
    assert_eq!(out.emitted.len(), 1);
    assert_eq!(out.emitted[0].name, "Go");
    w.stop().await;

    // With no worker at all, the API node runs the event itself.
    let inline = sync
        .send(&q, &acct(), NewEvent::new("Go", "T", "e"), Duration::from_secs(20))
        .await
        .unwrap();
    assert_ne!(inline.status, EventStatus::Pending);
    let owner: Option<String> =
        sqlx::query_scalar("select j.lease_owner from job_all j join event e on e.job_id = j.id where e.seq = $1")
            .bind(inline.id.parse::<i64>().unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        owner.is_some_and(|o| o.starts_with("api:")),
        "executed inline by the API node"
    );

    // Inline, a failing rule still rolls back everything of the execution (the event is accepted and failed, with
    // its audit), and an exception ruleset still handles a failure.
    let boom = sync
        .send(&q, &acct(), NewEvent::new("Boom", "T", "e"), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(boom.status, EventStatus::Failed);
    assert!(
        boom.error.as_deref().is_some_and(|e| e.contains("boom e")),
        "{:?}",
        boom.error
    );
    assert!(boom.emitted.is_empty(), "{:?}", boom.emitted);
    assert_eq!(
        boom.entity.attributes.get("touched"),
        None,
        "the failed execution left nothing"
    );
    let audit = events(
        &db.pool,
        EventFilter {
            kind: Some(EventKind::Audit),
            source_event_id: Some(boom.id.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    assert!(audit.iter().any(|a| a.status == EventStatus::Failed), "{audit:?}");
    let risky = sync
        .send(
            &q,
            &acct(),
            NewEvent::new("Risky", "T", "e").attributes(json!({"why": "inline"})),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(risky.status, EventStatus::Success);
    assert_eq!(risky.entity.attributes["handled"], "inline");
    assert_eq!(risky.entity.attributes.get("x"), None);

    // An earlier event of the entity still waits for a worker: the sync event must not overtake it, so it waits
    // too, past its deadline, and stays queued.
    let earlier = send(&q, "Go", "T", "e", json!({})).await;
    let r = sync
        .send(&q, &acct(), NewEvent::new("Go", "T", "e"), Duration::from_millis(200))
        .await;
    let Err(Error::Timeout { event_id }) = r else {
        panic!("expected a timeout, got {r:?}");
    };
    let w = start_worker(&db.pool, fast_config());
    let first = wait_final(&db.pool, &earlier.id).await;
    let second = wait_final(&db.pool, &event_id).await;
    assert!(first.processed_at <= second.processed_at, "run in acceptance order");
    w.stop().await;
}

/// Concurrent sync calls share transactions (group commit) yet answer alone: each runs on its own entity, an
/// unknown entity is a 404 and an invalid event a 422 for that call only, an idempotency key reused with another
/// event is a conflict for that call only, and an exception path still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sync_events_share_transactions_and_answer_alone() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(&db.pool, "T::X", test_workflow(), false).await;
    let w = start_worker(&db.pool, fast_config());
    for i in 0..50 {
        let (_, create) = create_entity(&q, &acct(), NewEntity::new("T", "X", format!("c-{i}")).status("A"))
            .await
            .unwrap();
        wait_final(&db.pool, &create.id).await;
    }
    w.stop().await;
    let sync = SyncEvents::start(q.clone(), 2);
    /// Sends the calls at once (released together) and returns their answers in order.
    async fn at_once(
        sync: &SyncEvents,
        q: &Queue,
        calls: Vec<NewEvent>,
    ) -> Vec<orchestration::Result<orchestration::SyncOutcome>> {
        let barrier = Arc::new(tokio::sync::Barrier::new(calls.len()));
        let tasks: Vec<_> = calls
            .into_iter()
            .map(|event| {
                let (sync, q, barrier) = (sync.clone(), q.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    sync.send(&q, &acct(), event, Duration::from_secs(20)).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    }

    // 40 calls on 40 entities, with no worker: all run on the API node, in fewer transactions than calls.
    let calls = (0..40).map(|i| NewEvent::new("Go", "T", format!("c-{i}"))).collect();
    for (i, a) in at_once(&sync, &q, calls).await.iter().enumerate() {
        let out = a.as_ref().unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(
            (out.status, out.entity.status.as_str()),
            (EventStatus::Success, "B"),
            "call {i}"
        );
        assert_eq!(out.entity.entity_ref, format!("c-{i}"));
    }
    let commits: i64 = sqlx::query_scalar("select count(distinct xmin::text) from event where name = 'Go'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        commits < 40,
        "40 calls committed in {commits} transactions: no group commit"
    );

    // Bad calls among good ones answer for themselves.
    let mut first = NewEvent::new("Go", "T", "c-40");
    first.idempotency_key = Some("k".into());
    send_event(&q, &acct(), first).await.unwrap();
    let mut conflict = NewEvent::new("Go", "T", "c-41");
    conflict.idempotency_key = Some("k".into());
    let mut calls: Vec<NewEvent> = (42..50).map(|i| NewEvent::new("Go", "T", format!("c-{i}"))).collect();
    calls.insert(2, conflict);
    calls.insert(4, NewEvent::new("Go", "T", "nobody"));
    calls.insert(6, NewEvent::new("", "T", "c-42"));
    calls.push(NewEvent::new("Risky", "T", "c-41").attributes(json!({"why": "shared"})));
    let mut answers = at_once(&sync, &q, calls).await;
    let risky = answers.pop().unwrap().unwrap();
    assert_eq!(
        (risky.status, &risky.entity.attributes["handled"]),
        (EventStatus::Success, &json!("shared"))
    );
    assert!(matches!(answers.remove(6), Err(Error::Invalid(_))));
    assert!(matches!(answers.remove(4), Err(Error::EntityNotFound(_))));
    assert!(matches!(answers.remove(2), Err(Error::IdempotencyConflict { .. })));
    for (i, a) in answers.iter().enumerate() {
        let out = a.as_ref().unwrap_or_else(|e| panic!("call on c-{}: {e}", i + 42));
        assert_eq!(
            (out.status, out.entity.entity_ref.as_str()),
            (EventStatus::Success, format!("c-{}", i + 42).as_str())
        );
    }
}

/// A failed delivery is retried with the same idempotency key and a fresh signature; every attempt is an audit
/// record of the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_keep_their_key_and_audit_every_attempt() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    let secret = tenancy::webhook_secret(&db.pool, &acct()).await.unwrap();
    let (url, deliveries) = start_receiver(secret, 1).await;
    put(
        &db.pool,
        "W::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "settings": {"hook": url},
            "rulesets": [{"name": "Hook", "entity_type": "W", "rules": [
                {"name": "core.SendWebhook", "props": {"url": "{{settings.hook}}"}}
            ]}]
        }),
        false,
    )
    .await;
    create_entity(&q, &acct(), NewEntity::new("W", "X", "w")).await.unwrap();
    let w = start_worker(&db.pool, fast_config());
    let hook = send(&q, "Hook", "W", "w", json!({"k": 1})).await;
    assert_eq!(wait_final(&db.pool, &hook.id).await.status, EventStatus::Success);
    let attempts = eventually(WAIT, "two audited attempts", || async {
        let a = events(
            &db.pool,
            EventFilter {
                category: Some("webhook".into()),
                source_event_id: Some(hook.id.clone()),
                ..EventFilter::default()
            },
        )
        .await;
        (a.len() == 2).then_some(a)
    })
    .await;
    assert_eq!(attempts[0].status, EventStatus::Failed);
    assert!(attempts[0].error.as_deref().unwrap().contains("500"), "{attempts:?}");
    assert_eq!(attempts[1].status, EventStatus::Success);
    assert_eq!(attempts[1].attributes["attempt"], 2);
    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.signature_ok));
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].body["attributes"]["k"], 1);
    w.stop().await;
}

/// A real `ordo worker` SIGKILLed in the middle of a long execution leaves no partial state (entity, inline
/// events, audit records); after its lease expires another worker executes the event once and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_leaves_no_partial_execution() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    let sends: Vec<Value> = (0..400)
        .map(|i| json!({"name": "core.SendEvent", "props": {"event_name": "Work", "attributes": {"i": i}}}))
        .collect();
    let work: Vec<Value> = (0..10)
        .map(|_| json!({"name": "core.SetAttribute", "props": {"name": "last", "value": "{{entity.attributes.blob}}"}}))
        .collect();
    put(
        &db.pool,
        "K::X",
        json!({
            "statuses": [{"name": "CREATED"}, {"name": "DONE"}],
            "rulesets": [
                {"name": "Slow", "entity_type": "K", "rules": sends},
                {"name": "Work", "entity_type": "K", "rules": work},
                {"name": "Slow", "entity_type": "K", "rules": [{"name": "core.SetState", "props": {"status": "DONE"}}]}
            ]
        }),
        false,
    )
    .await;
    let blob = "x".repeat(4096);
    create_entity(
        &q,
        &acct(),
        NewEntity::new("K", "X", "k").attributes(json!({"blob": blob})),
    )
    .await
    .unwrap();
    // The worker runs the CREATE event first. Sent after it, the slow event starts a transaction of its own
    // (sent before, it would run chained in CREATE's, never visibly `running`); the kill waits for its claim.
    let mut child = crate::support::spawn_worker_process(&db.url, &[("ORDO_LEASE_MS", "1000")], &[]);
    eventually(WAIT, "the CREATE event to run", || async {
        let created = events(
            &db.pool,
            EventFilter {
                name: Some("CREATE".into()),
                kind: Some(EventKind::Orchestration),
                ..EventFilter::default()
            },
        )
        .await;
        created.first().filter(|e| e.status.is_final()).map(|_| ())
    })
    .await;
    let slow = send(&q, "Slow", "K", "k", json!({})).await;
    let job_running = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from job_all where kind = 'orchestration.event' and state = 'running' \
             and args->>'name' = 'Slow'",
        )
        .fetch_one(&db.pool)
        .await
        .ok()
        .filter(|n| *n == 1)
    };
    eventually(WAIT, "the slow execution to start", job_running).await;
    let running = get_event(&db.pool, &acct(), &slow.id).await.unwrap();
    assert_eq!(running.status, EventStatus::Running, "a claimed event reads as running");
    let listed = events(
        &db.pool,
        EventFilter {
            status: Some(EventStatus::Running),
            ..EventFilter::default()
        },
    )
    .await;
    assert_eq!(listed.iter().map(|e| &e.id).collect::<Vec<_>>(), [&slow.id]);
    crate::support::signal(&child, "-KILL");
    let _ = child.wait().await;

    let e = get_entity(&db.pool, &acct(), "K", "k").await.unwrap();
    assert_eq!(e.status, "CREATED");
    assert!(e.attributes.get("last").is_none());
    // Still held by the dead worker's lease (running) or already rescued (pending): not executed either way.
    let status = get_event(&db.pool, &acct(), &slow.id).await.unwrap().status;
    assert!(
        matches!(status, EventStatus::Running | EventStatus::Pending),
        "{status:?}"
    );
    let partial = events(
        &db.pool,
        EventFilter {
            source_event_id: Some(slow.id.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    assert!(partial.is_empty(), "the killed execution left {} rows", partial.len());

    let w = start_worker(&db.pool, fast_config());
    assert_eq!(wait_final(&db.pool, &slow.id).await.status, EventStatus::Success);
    w.stop().await;
    let e = get_entity(&db.pool, &acct(), "K", "k").await.unwrap();
    assert_eq!(e.status, "DONE");
    assert_eq!(e.attributes["last"].as_str().map(str::len), Some(4096));
    let inline = events(
        &db.pool,
        EventFilter {
            kind: Some(EventKind::Orchestration),
            source_event_id: Some(slow.id.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    assert_eq!(inline.len(), 400, "executed exactly once");
    let job: (i32, String) = sqlx::query_as(
        "select attempt, state from job_all where kind = 'orchestration.event' and args->>'name' = 'Slow'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(job.1, "completed");
    assert!(job.0 >= 2, "the first attempt died with its worker");
}

/// A real `ordo worker` SIGKILLed while it executes batches (many entities, each with a run of waiting events
/// chained behind the first) loses nothing and doubles nothing: after another worker took over, every event ran
/// exactly once (one snapshot record each), each entity's events ran in `seq` order (its last event's attribute
/// stands), and no job is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_mid_batch_runs_every_event_once() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    // Each execution takes a while (100 inline events), so that the kill finds batches open.
    let mut rules: Vec<Value> = (0..100)
        .map(|_| json!({"name": "core.SendEvent", "props": {"event_name": "Tick"}}))
        .collect();
    rules.push(json!({"name": "core.SetAttribute", "props": {"name": "last", "value": "{{event.attributes.i}}"}}));
    put(
        &db.pool,
        "B::X",
        json!({
            "statuses": [{"name": "CREATED"}],
            "rulesets": [
                {"name": "Step", "entity_type": "B", "rules": rules},
                {"name": "Tick", "entity_type": "B", "rules": [{"name": "core.Log", "props": {"message": "tick"}}]}
            ]
        }),
        false,
    )
    .await;
    let (entities, per_entity) = (12, 8);
    for e in 0..entities {
        create_entity(&q, &acct(), NewEntity::new("B", "X", format!("b-{e}")))
            .await
            .unwrap();
    }
    let mut sent = Vec::new();
    for i in 0..per_entity {
        for e in 0..entities {
            sent.push(send(&q, "Step", "B", &format!("b-{e}"), json!({"i": i})).await.id);
        }
    }
    let mut child = crate::support::spawn_worker_process(&db.url, &[("ORDO_LEASE_MS", "1000")], &[]);
    // The first batch holds the entities' CREATE events, the Step events run chained behind them: kill it then.
    eventually(WAIT, "the worker to hold events", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from job_all where kind = 'orchestration.event' and state = 'running'",
        )
        .fetch_one(&db.pool)
        .await
        .ok()
        .filter(|n| *n > 0)
    })
    .await;
    crate::support::signal(&child, "-KILL");
    let _ = child.wait().await;
    // Whatever had committed by then is whole: per entity, a prefix of its events in `seq` order, its attribute
    // from the last of them, and their inline events; nothing of the batch the kill cut off.
    let mut ran = 0;
    for e in 0..entities {
        let steps = events(
            &db.pool,
            EventFilter {
                entity_ref: Some(format!("b-{e}")),
                name: Some("Step".into()),
                kind: Some(EventKind::Orchestration),
                ..EventFilter::default()
            },
        )
        .await;
        let done = steps.iter().take_while(|s| s.status == EventStatus::Success).count();
        assert!(
            steps[done..].iter().all(|s| !s.status.is_final()),
            "b-{e}: not a prefix: {steps:?}"
        );
        let entity = get_entity(&db.pool, &acct(), "B", &format!("b-{e}")).await.unwrap();
        let last = done.checked_sub(1).map(|d| steps[d].attributes["i"].clone());
        assert_eq!(entity.attributes.get("last").cloned(), last, "b-{e}");
        ran += done;
    }
    let ticks = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from event where kind = 'orchestration' and name = 'Tick'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(
        ticks().await,
        100 * ran as i64,
        "inline events of the committed executions only"
    );

    let w = start_worker(&db.pool, fast_config());
    for id in &sent {
        assert_eq!(
            wait_final(&db.pool, id).await.status,
            EventStatus::Success,
            "event {id}"
        );
    }
    w.stop().await;
    let snapshots: Vec<(String, i64)> = sqlx::query_as(
        "select source_event_id::text, count(*) from event where category = 'snapshot' and name = 'Step' \
         group by source_event_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(snapshots.len(), sent.len(), "every event has its snapshot");
    assert!(
        snapshots.iter().all(|(_, n)| *n == 1),
        "an event ran twice: {snapshots:?}"
    );
    assert_eq!(
        ticks().await,
        100 * sent.len() as i64,
        "inline events of exactly one execution each"
    );
    for e in 0..entities {
        let entity = get_entity(&db.pool, &acct(), "B", &format!("b-{e}")).await.unwrap();
        assert_eq!(
            entity.attributes["last"],
            json!(per_entity - 1),
            "b-{e} ran its events in order"
        );
    }
    let left: i64 = sqlx::query_scalar("select count(*) from job_all where state not in ('completed')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "every job completed");
}

/// Events of one entity that wait together run chained in one worker transaction, yet each keeps its own outcome:
/// a failure in the middle rolls back only its own execution, and the chain goes on in `seq` order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_in_a_chain_fails_alone() {
    let db = testkit::db().await;
    let q = queue(&db.pool);
    put(&db.pool, "T::X", test_workflow(), false).await;
    create_entity(&q, &acct(), NewEntity::new("T", "X", "c").status("A"))
        .await
        .unwrap();
    let risky = send(&q, "Risky", "T", "c", json!({"why": "first"})).await;
    let boom = send(&q, "Boom", "T", "c", json!({})).await;
    let go = send(&q, "Go", "T", "c", json!({})).await;
    let w = start_worker(&db.pool, fast_config());
    let go = wait_final(&db.pool, &go.id).await;
    let boom = wait_final(&db.pool, &boom.id).await;
    let risky = wait_final(&db.pool, &risky.id).await;
    w.stop().await;
    assert_eq!(
        (risky.status, boom.status, go.status),
        (EventStatus::Success, EventStatus::Failed, EventStatus::Success)
    );
    assert!(risky.processed_at < boom.processed_at && boom.processed_at < go.processed_at);
    let e = get_entity(&db.pool, &acct(), "T", "c").await.unwrap();
    assert_eq!(e.status, "B", "Go ran after Boom's rollback");
    assert_eq!(e.attributes["handled"], "first");
    assert_eq!(e.attributes.get("touched"), None, "nothing of Boom was kept");
    let emitted = events(
        &db.pool,
        EventFilter {
            source_event_id: Some(boom.id.clone()),
            kind: Some(EventKind::Orchestration),
            ..EventFilter::default()
        },
    )
    .await;
    assert!(emitted.is_empty(), "{emitted:?}");
}
