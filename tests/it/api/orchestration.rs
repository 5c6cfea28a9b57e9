//! Workflows, rules, entities and events over HTTP: every route answers, errors are problem JSON, and another
//! account sees nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use ordo::testkit::eventually;
use serde_json::json;

use super::app;
use crate::orchestration::Delivery;
use crate::support::{fast_config, start_worker};

fn workflow() -> serde_json::Value {
    json!({
        "statuses": [{"name": "CREATED"}, {"name": "DONE"}],
        "rulesets": [
            {"name": "CREATE", "entity_type": "TEST", "triggers": ["CREATED"],
             "rules": [{"name": "core.Log", "props": {"message": "created {{entity.ref}}"}}]},
            {"name": "Finish", "entity_type": "TEST", "triggers": ["CREATED"],
             "rules": [{"name": "core.SetState", "props": {"status": "DONE"}},
                       {"name": "core.SetAttribute", "props": {"name": "by", "value": "{{event.attributes.who}}"}}]}
        ]
    })
}

/// The orchestration routes end to end: upload a workflow (and see every problem of a bad one), create an entity,
/// run a sync event on a worker, read the event log, and get 404/409/422 where the contract says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_routes_end_to_end() {
    let app = app().await;
    let a = app.account("acme").await;
    let b = app.account("other").await;
    let worker = start_worker(&app.db.pool, fast_config());

    let bad = json!({"statuses": [{"name": "CREATED"}],
                     "rulesets": [{"name": "X", "entity_type": "TEST", "triggers": ["NOPE"],
                                   "rules": [{"name": "core.Nope", "props": {}}]}]});
    let r = app
        .call(Method::PUT, "/api/workflows/TEST::A", Some(&a), Some(bad))
        .await;
    let p = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p["errors"].as_array().unwrap().len() >= 2, "every problem listed: {p}");
    let r = app
        .call(Method::PUT, "/api/workflows/TEST::A", Some(&a), Some(workflow()))
        .await;
    assert_eq!(r.expect(StatusCode::CREATED)["version"], "1.0");
    app.call(Method::GET, "/api/workflows/TEST::A", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::GET, "/api/workflows/TEST::A/versions/1.0", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::GET, "/api/workflows/TEST::A/versions/9.9", Some(&a), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::GET, "/api/workflows/TEST::A", Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let list = app.call(Method::GET, "/api/workflows", Some(&a), None).await;
    assert_eq!(list.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 1);
    let rules = app.call(Method::GET, "/api/rules", Some(&a), None).await;
    assert!(rules.expect(StatusCode::OK)["items"].as_array().unwrap().len() >= 12);

    let entity = json!({"type": "TEST", "subtype": "A", "ref": "t-1", "attributes": {"n": 1}});
    let r = app
        .call(Method::POST, "/api/entities", Some(&a), Some(entity.clone()))
        .await;
    assert_eq!(r.expect(StatusCode::CREATED)["status"], "CREATED");
    app.call(Method::POST, "/api/entities", Some(&a), Some(entity))
        .await
        .expect(StatusCode::CONFLICT);
    app.call(Method::POST, "/api/entities", Some(&a), Some(json!({"type": "TEST"})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    app.call(Method::GET, "/api/entities/TEST/t-1", Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);

    let finish = json!({"name": "Finish", "entity": {"type": "TEST", "ref": "t-1"}, "attributes": {"who": "api"}});
    let r = app
        .call(
            Method::POST,
            "/api/events/sync?timeout_ms=20000",
            Some(&a),
            Some(finish),
        )
        .await;
    let out = r.expect(StatusCode::OK);
    assert_eq!(out["status"], "success", "{out}");
    let e = app.call(Method::GET, "/api/entities/TEST/t-1", Some(&a), None).await;
    let e = e.expect(StatusCode::OK);
    assert_eq!(
        (e["status"].as_str(), e["attributes"]["by"].as_str()),
        (Some("DONE"), Some("api"))
    );

    let unknown = json!({"name": "Finish", "entity": {"type": "TEST", "ref": "missing"}});
    app.call(Method::POST, "/api/events", Some(&a), Some(unknown))
        .await
        .expect(StatusCode::NOT_FOUND);
    let other = json!({"name": "Finish", "entity": {"type": "TEST", "ref": "t-1"}});
    app.call(Method::POST, "/api/events", Some(&b), Some(other))
        .await
        .expect(StatusCode::NOT_FOUND);

    let later =
        json!({"name": "Finish", "entity": {"type": "TEST", "ref": "t-1"}, "scheduled_at": "2099-01-01T00:00:00Z"});
    let r = app.call(Method::POST, "/api/events", Some(&a), Some(later)).await;
    let scheduled = r.expect(StatusCode::ACCEPTED).clone();
    assert_eq!(scheduled["status"], "scheduled");
    let id = scheduled["id"].as_str().unwrap();
    app.call(Method::DELETE, &format!("/api/events/{id}"), Some(&a), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::DELETE, &format!("/api/events/{id}"), Some(&a), None)
        .await
        .expect(StatusCode::CONFLICT);
    app.call(Method::GET, &format!("/api/events/{id}"), Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);

    let log = eventually(Duration::from_secs(20), "the event log of t-1", || async {
        let r = app
            .call(
                Method::GET,
                "/api/events?entity_type=TEST&entity_ref=t-1&kind=orchestration",
                Some(&a),
                None,
            )
            .await;
        let items = r.body["items"].as_array()?.clone();
        (items.len() >= 3).then_some(items)
    })
    .await;
    let seqs: Vec<i64> = log.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ascending seq: {seqs:?}");
    let done = log
        .iter()
        .find(|e| e["name"] == "Finish" && e["status"] == "success")
        .unwrap();
    let replay = format!("/api/events/{}/replay", done["id"].as_str().unwrap());
    app.call(Method::POST, &replay, Some(&a), None)
        .await
        .expect(StatusCode::CONFLICT);
    app.call(Method::GET, "/api/events?kind=bogus", Some(&a), None)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    worker.stop().await;
}

/// `/metrics` counts the transactions of events and the events in them, by path: a worker's batch (the entity's
/// CREATE) and the API node's shared transaction (a sync event run inline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_batches_are_counted_by_path() {
    let app = app().await;
    let a = app.account("acme").await;
    app.call(Method::PUT, "/api/workflows/TEST::A", Some(&a), Some(workflow()))
        .await
        .expect(StatusCode::CREATED);
    let worker = start_worker(&app.db.pool, fast_config());
    let entity = json!({"type": "TEST", "subtype": "A", "ref": "m-1"});
    app.call(Method::POST, "/api/entities", Some(&a), Some(entity))
        .await
        .expect(StatusCode::CREATED);
    eventually(Duration::from_secs(20), "the CREATE event to run", || async {
        let r = app
            .call(
                Method::GET,
                "/api/events?entity_ref=m-1&name=CREATE&kind=orchestration&status=success",
                Some(&a),
                None,
            )
            .await;
        (r.body["items"].as_array()?.len() == 1).then_some(())
    })
    .await;
    worker.stop().await;
    // No worker runs now: the sync event runs on the API node or not at all.
    let finish = json!({"name": "Finish", "entity": {"type": "TEST", "ref": "m-1"}, "attributes": {"who": "api"}});
    let out = app
        .call(
            Method::POST,
            "/api/events/sync?timeout_ms=20000",
            Some(&a),
            Some(finish),
        )
        .await;
    assert_eq!(out.expect(StatusCode::OK)["status"], "success");
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap_or_default();
    for line in [
        "ordo_event_batches_total{path=\"worker\"} 1",
        "ordo_event_batch_events_total{path=\"worker\"} 1",
        "ordo_event_batches_total{path=\"sync\"} 1",
        "ordo_event_batch_events_total{path=\"sync\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
}

/// Row-level security covers the orchestration and schedule tables: as the API's role, another account's
/// workflows, entities, events and schedules are invisible even to a query without an account filter.
#[tokio::test]
async fn row_level_security_covers_orchestration_tables() {
    use sqlx::{Connection, Row};
    let app = app().await;
    let a = app.account("alpha").await;
    app.account("beta").await;
    app.call(Method::PUT, "/api/workflows/TEST::A", Some(&a), Some(workflow()))
        .await
        .expect(StatusCode::CREATED);
    let entity = json!({"type": "TEST", "subtype": "A", "ref": "t-1"});
    app.call(Method::POST, "/api/entities", Some(&a), Some(entity))
        .await
        .expect(StatusCode::CREATED);
    let schedule = json!({"name": "s", "cron": "* * * * *", "job": {"kind": "noop"}});
    app.call(Method::POST, "/api/schedules", Some(&a), Some(schedule))
        .await
        .expect(StatusCode::CREATED);
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    for (account, visible) in [("beta", false), ("alpha", true)] {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("set local role ordo_api").execute(&mut *tx).await.unwrap();
        sqlx::query("select set_config('ordo.account_id', $1, true)")
            .bind(account)
            .execute(&mut *tx)
            .await
            .unwrap();
        let row = sqlx::query(
            "select (select count(*) from workflow), (select count(*) from entity), (select count(*) from event), \
             (select count(*) from schedule)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        for i in 0..4 {
            let n: i64 = row.get(i);
            assert_eq!(n > 0, visible, "as {account}, table #{i} has {n} rows");
        }
        tx.rollback().await.unwrap();
    }
}

/// The example order flow end to end through the HTTP API: workflows uploaded, stock loaded, an order booked,
/// picked and shipped by events, with a real local receiver that checks each webhook's signature with its own
/// HMAC over the raw body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_order_flow_over_http_with_verified_webhooks() {
    let (app, key, deliveries) = example_shop().await;
    let worker = start_worker(&app.db.pool, fast_config());

    let restock = json!({"name": "Restock", "entity": {"type": "INVENTORY_CATALOGUE", "ref": "MAIN"},
                         "attributes": {"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": 5}});
    let r = app
        .call(
            Method::POST,
            "/api/events/sync?timeout_ms=20000",
            Some(&key),
            Some(restock),
        )
        .await;
    assert_eq!(r.expect(StatusCode::OK)["status"], "success");

    let o1 = json!({"type": "ORDER", "subtype": "HD", "ref": "O-1",
                    "attributes": {"sku": "SKU-1", "location": "DC1", "qty": 3}});
    app.call(Method::POST, "/api/entities", Some(&key), Some(o1))
        .await
        .expect(StatusCode::CREATED);
    let status = |want: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            eventually(Duration::from_secs(30), &format!("O-1 to be {want}"), || async {
                let r = app.call(Method::GET, "/api/entities/ORDER/O-1", Some(&key), None).await;
                (r.body["status"] == want).then_some(r.body)
            })
            .await
        }
    };
    let booked = status("BOOKED").await;
    assert_eq!(booked["attributes"]["reserved_qty"], 3);
    for name in ["Pick", "Ship"] {
        let e = json!({"name": name, "entity": {"type": "ORDER", "ref": "O-1"}});
        app.call(Method::POST, "/api/events", Some(&key), Some(e))
            .await
            .expect(StatusCode::ACCEPTED);
    }
    status("SHIPPED").await;

    let got = eventually(Duration::from_secs(30), "webhooks for BOOKED and SHIPPED", || async {
        let d = deliveries.lock().unwrap().clone();
        (d.len() >= 2).then_some(d)
    })
    .await;
    assert!(got.iter().all(|d| d.signature_ok), "{got:#?}");
    let mut statuses: Vec<&str> = got.iter().map(|d| d.body["entity_status"].as_str().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, ["BOOKED", "SHIPPED"]);
    let keys: std::collections::BTreeSet<&str> = got.iter().map(|d| d.idempotency_key.as_str()).collect();
    assert_eq!(keys.len(), 2, "each delivery has its own idempotency key");
    let log = app
        .call(
            Method::GET,
            "/api/events?entity_type=ORDER&entity_ref=O-1&kind=audit&category=webhook",
            Some(&key),
            None,
        )
        .await;
    assert!(
        !log.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty(),
        "webhook attempts are audited"
    );
    worker.stop().await;
}

/// A `traceparent` sent with the request that creates an order is continued by its `CREATE` event's job, by the
/// event it emits to the catalogue (and that event's job), and by the webhook the ERP receives: same trace id,
/// a new span id per hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_follows_an_order_into_emitted_events_and_webhooks() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let sent = format!("00-{TRACE}-b7ad6b7169203331-01");
    let (app, key, deliveries) = example_shop().await;
    let restock = json!({"name": "Restock", "entity": {"type": "INVENTORY_CATALOGUE", "ref": "MAIN"},
                         "attributes": {"sku_ref": "SKU-1", "location_ref": "DC1", "on_hand": 5}});
    app.call(Method::POST, "/api/events", Some(&key), Some(restock))
        .await
        .expect(StatusCode::ACCEPTED);

    let o1 = json!({"type": "ORDER", "subtype": "HD", "ref": "O-T",
                    "attributes": {"sku": "SKU-1", "location": "DC1", "qty": 1}});
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/entities")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("traceparent", &sent)
        .body(axum::body::Body::from(serde_json::to_vec(&o1).unwrap()))
        .unwrap();
    app.send(req).await.expect(StatusCode::CREATED);
    let worker = start_worker(&app.db.pool, fast_config());

    let got = eventually(Duration::from_secs(30), "the BOOKED webhook", || async {
        let d = deliveries.lock().unwrap().clone();
        d.into_iter().next()
    })
    .await;
    assert!(got.signature_ok);
    let hook_trace = ordo::telemetry::trace::TraceParent::parse(&got.traceparent)
        .unwrap_or_else(|| panic!("webhook traceparent {:?} is valid", got.traceparent));
    assert_eq!(hook_trace.trace_id(), TRACE);
    assert_ne!(got.traceparent, sent, "the webhook is a hop of its own");

    // The order's CREATE event carries the request's context as sent; the Reserve event it emitted to the
    // catalogue continues the same trace.
    let events = |q: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            let r = app.call(Method::GET, q, Some(&key), None).await;
            r.expect(StatusCode::OK)["items"].as_array().unwrap().clone()
        }
    };
    let create = events("/api/events?entity_type=ORDER&entity_ref=O-T&kind=orchestration&name=CREATE").await;
    assert_eq!(create[0]["traceparent"], sent.as_str());
    let reserve = events("/api/events?entity_type=INVENTORY_CATALOGUE&entity_ref=MAIN&name=Reserve").await;
    let emitted = reserve[0]["traceparent"]
        .as_str()
        .expect("the emitted event has a traceparent");
    assert!(emitted.contains(TRACE) && emitted != sent, "{emitted}");
    assert_eq!(reserve[0]["source_event_id"], create[0]["id"]);
    // And so do the queued jobs that ran them.
    let jobs: Vec<Option<String>> = sqlx::query_scalar(
        "select traceparent from job_all where account_id = 'shop' and kind = 'orchestration.event'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let traced = jobs.iter().flatten().filter(|t| t.contains(TRACE)).count();
    assert!(
        traced >= 3,
        "CREATE, Reserve and Reserved jobs carry the trace: {jobs:?}"
    );
    let untraced = jobs.iter().filter(|t| t.is_none()).count();
    assert_eq!(
        untraced, 2,
        "the catalogue's CREATE and Restock were sent untraced: {jobs:?}"
    );
    worker.stop().await;
}

/// An invalid `traceparent` is ignored (W3C), never stored or an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_is_ignored() {
    let app = app().await;
    let key = app.account("shop").await;
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/jobs")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("traceparent", "00-not-a-trace-01")
        .body(axum::body::Body::from(r#"{"kind": "noop"}"#))
        .unwrap();
    let r = app.send(req).await;
    assert!(
        r.expect(StatusCode::CREATED)
            .get("traceparent")
            .is_none_or(|t| t.is_null()),
        "{:?}",
        r.body
    );
}

/// An API with the account `shop`, the example workflows uploaded over HTTP, the (empty) catalogue `MAIN`, and a
/// local ERP receiver (its URL in the order workflow's settings) that records each delivery and checks its
/// signature.
async fn example_shop() -> (super::App, String, Arc<Mutex<Vec<Delivery>>>) {
    let app = app().await;
    let key = app.account("shop").await;
    let account = ordo::tenancy::AccountId::parse("shop").unwrap();
    let secret = ordo::tenancy::webhook_secret(&app.db.pool, &account).await.unwrap();
    let (erp_url, deliveries) = crate::orchestration::start_receiver(secret, 0).await;
    let mut order = crate::orchestration::example("ORDER-HD.json");
    order["settings"]["erp_url"] = json!(erp_url);
    let catalogue = crate::orchestration::example("INVENTORY_CATALOGUE-DEFAULT.json");
    for (reference, body) in [("ORDER::HD", order), ("INVENTORY_CATALOGUE::DEFAULT", catalogue)] {
        app.call(
            Method::PUT,
            &format!("/api/workflows/{reference}"),
            Some(&key),
            Some(body),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let main = json!({"type": "INVENTORY_CATALOGUE", "subtype": "DEFAULT", "ref": "MAIN"});
    app.call(Method::POST, "/api/entities", Some(&key), Some(main))
        .await
        .expect(StatusCode::CREATED);
    (app, key, deliveries)
}

/// `GET /api/entities` lists an account's entities in (type, ref) order, by type, ref prefix and status, paged by
/// cursor; another account sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_listed_by_type_prefix_and_status() {
    let app = app().await;
    let key = app.account("shop").await;
    let other = app.account("other").await;
    app.call(Method::PUT, "/api/workflows/TEST::A", Some(&key), Some(workflow()))
        .await
        .expect(StatusCode::CREATED);
    for (r, status) in [("o-2", "CREATED"), ("o-1", "DONE"), ("x-1", "CREATED")] {
        let body = json!({"type": "TEST", "subtype": "A", "ref": r, "status": status});
        app.call(Method::POST, "/api/entities", Some(&key), Some(body))
            .await
            .expect(StatusCode::CREATED);
    }
    let refs = |r: &super::Resp| -> Vec<String> {
        r.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ref"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app.call(Method::GET, "/api/entities", Some(&key), None).await;
    assert_eq!(refs(&all), ["o-1", "o-2", "x-1"]);
    assert_eq!(all.body["items"][0]["workflow"]["version"], "1.0");
    let o = app
        .call(Method::GET, "/api/entities?type=TEST&ref_prefix=o-", Some(&key), None)
        .await;
    assert_eq!(refs(&o), ["o-1", "o-2"]);
    let created = app
        .call(Method::GET, "/api/entities?status=CREATED", Some(&key), None)
        .await;
    assert_eq!(refs(&created), ["o-2", "x-1"]);
    let first = app.call(Method::GET, "/api/entities?limit=2", Some(&key), None).await;
    assert_eq!(refs(&first), ["o-1", "o-2"]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let next = app
        .call(
            Method::GET,
            &format!("/api/entities?limit=2&cursor={cursor}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(refs(&next), ["x-1"]);
    assert_eq!(next.body["next_cursor"], serde_json::Value::Null);
    let theirs = app.call(Method::GET, "/api/entities", Some(&other), None).await;
    assert!(refs(&theirs).is_empty());
    for q in ["/api/entities?cursor=nonsense", "/api/entities?limit=0"] {
        let r = app.call(Method::GET, q, Some(&key), None).await;
        r.expect(StatusCode::UNPROCESSABLE_ENTITY);
        super::assert_problem(&r);
    }
}
