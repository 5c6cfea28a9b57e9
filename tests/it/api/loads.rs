//! `/api/loads` and `/api/inventory` (CONTRACT §6): batches are processed by a real worker with correct counts,
//! a repeated batch is all unchanged, bad records fail with reasons, limits and closed loads answer 413/409,
//! accounts never see each other's loads, and changed positions fire their workflow.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{TimeDelta, Utc};
use ordo::tenancy::AccountId;
use ordo::testkit::eventually;
use serde_json::{json, Value};

use super::{app, App, Resp};
use crate::support::{fast_config, start_worker};

fn records(n: usize, qty: impl Fn(usize) -> i64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"sku_ref": format!("sku-{i}"), "location_ref": format!("loc-{}", i % 7), "qty": qty(i)}))
        .collect()
}

fn batch(records: Vec<Value>) -> Value {
    json!({"action": "upsert", "entity_type": "inventory", "records": records})
}

async fn open_load(app: &App, key: &str, name: &str) -> String {
    let r = app
        .call(Method::POST, "/api/loads", Some(key), Some(json!({"name": name})))
        .await;
    let l = r.expect(StatusCode::CREATED);
    assert_eq!(l["status"], "open");
    assert_eq!(l["name"], name);
    l["id"].as_str().unwrap().to_owned()
}

async fn post_batch(app: &App, key: &str, load: &str, body: Value, idem: Option<&str>) -> Resp {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/loads/{load}/batches"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    app.send(req.body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap())
        .await
}

/// Polls the batch until it is complete and returns it.
async fn complete(app: &App, key: &str, load: &str, batch: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("batch {batch} to complete"),
        || async {
            let r = app
                .call(
                    Method::GET,
                    &format!("/api/loads/{load}/batches/{batch}"),
                    Some(key),
                    None,
                )
                .await;
            let b = r.expect(StatusCode::OK).clone();
            (b["status"] == "complete").then_some(b)
        },
    )
    .await
}

fn counts(b: &Value) -> [i64; 4] {
    let c = &b["counts"];
    ["total", "unchanged", "changed", "failed"].map(|k| c[k].as_i64().unwrap())
}

/// A 5 000-record batch completes with every record changed; the identical batch again is all unchanged; the
/// Idempotency-Key replays the same batch (200 + header) and refuses a different body; results page by index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_processed_counted_and_replayed() {
    let app = app().await;
    let a = app.account("acme").await;
    let worker = start_worker(&app.db.pool, fast_config());
    let load = open_load(&app, &a, "stock").await;
    // The same name again today: a conflict naming the open load; the listing by name finds it.
    let r = app
        .call(Method::POST, "/api/loads", Some(&a), Some(json!({"name": "stock"})))
        .await;
    assert!(r.expect(StatusCode::CONFLICT)["detail"]
        .as_str()
        .unwrap()
        .contains(&load));
    let list = app.call(Method::GET, "/api/loads?name=stock", Some(&a), None).await;
    let items = list.expect(StatusCode::OK)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], load.as_str());

    let first = batch(records(5000, |i| (i % 50) as i64));
    let r = post_batch(&app, &a, &load, first.clone(), Some("k-1")).await;
    let b = r.expect(StatusCode::ACCEPTED).clone();
    assert_eq!(b["status"], "pending");
    let id = b["id"].as_str().unwrap().to_owned();
    let replay = post_batch(&app, &a, &load, first.clone(), Some("k-1")).await;
    assert_eq!(replay.expect(StatusCode::OK)["id"], id.as_str());
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    post_batch(&app, &a, &load, batch(records(10, |_| 1)), Some("k-1"))
        .await
        .expect(StatusCode::CONFLICT);

    let done = complete(&app, &a, &load, &id).await;
    assert_eq!(counts(&done), [5000, 0, 5000, 0]);
    let p = app
        .call(Method::GET, "/api/inventory/sku-57/loc-1", Some(&a), None)
        .await;
    let p = p.expect(StatusCode::OK);
    assert_eq!(
        (p["on_hand"].as_i64(), p["reserved"].as_i64(), p["available"].as_i64()),
        (Some(7), Some(0), Some(7))
    );
    app.call(Method::GET, "/api/inventory/sku-57/nowhere", Some(&a), None)
        .await
        .expect(StatusCode::NOT_FOUND);

    // The same records again (a new batch, no key): nothing changes.
    let again = post_batch(&app, &a, &load, first, None).await;
    let again_id = again.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    assert_ne!(again_id, id);
    let done = complete(&app, &a, &load, &again_id).await;
    assert_eq!(counts(&done), [5000, 5000, 0, 0]);

    // Results page by index, filtered by outcome.
    let base = format!("/api/loads/{load}/batches/{again_id}/results");
    let page = app
        .call(
            Method::GET,
            &format!("{base}?outcome=unchanged&limit=1000"),
            Some(&a),
            None,
        )
        .await;
    let page = page.expect(StatusCode::OK).clone();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    assert_eq!(items[0]["index"], 0);
    assert_eq!(items[0]["sku_ref"], "sku-0");
    assert_eq!(items[0]["outcome"], "unchanged");
    assert_eq!(page["next_cursor"], "999");
    let next = app
        .call(
            Method::GET,
            &format!("{base}?outcome=unchanged&limit=1000&after=999"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(next.expect(StatusCode::OK)["items"][0]["index"], 1000);
    let changed = app
        .call(Method::GET, &format!("{base}?outcome=changed"), Some(&a), None)
        .await;
    assert!(changed.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty());
    app.call(Method::GET, &format!("{base}?outcome=maybe"), Some(&a), None)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);

    let detail = app
        .call(Method::GET, &format!("/api/loads/{load}"), Some(&a), None)
        .await;
    let detail = detail.expect(StatusCode::OK);
    assert_eq!(detail["batches"].as_array().unwrap().len(), 2);
    assert_eq!(detail["batches"][0]["counts"]["changed"], 5000);
    worker.stop().await;
}

/// Invalid records (negative, fractional or textual qty, a missing key, not an object) fail with their reasons
/// while the rest of the batch is applied; the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_fail_with_reasons_and_the_rest_proceed() {
    let app = app().await;
    let a = app.account("acme").await;
    let worker = start_worker(&app.db.pool, fast_config());
    let load = open_load(&app, &a, "mixed").await;
    let mut recs = records(20, |i| i as i64);
    recs[3] = json!({"sku_ref": "bad", "location_ref": "x", "qty": -1});
    recs[5] = json!({"location_ref": "x", "qty": 1});
    recs[8] = json!({"sku_ref": "bad", "location_ref": "x", "qty": 2.5});
    recs[9] = json!({"sku_ref": "bad", "location_ref": "x", "qty": "ten"});
    recs[12] = json!({"sku_ref": "bad", "qty": 1});
    recs[13] = json!(["not", "an", "object"]);
    let r = post_batch(&app, &a, &load, batch(recs), None).await;
    let id = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    let done = complete(&app, &a, &load, &id).await;
    assert_eq!(counts(&done), [20, 0, 14, 6]);
    let failed = app
        .call(
            Method::GET,
            &format!("/api/loads/{load}/batches/{id}/results?outcome=failed"),
            Some(&a),
            None,
        )
        .await;
    let items = failed.expect(StatusCode::OK)["items"].as_array().unwrap().clone();
    let got: Vec<(i64, &str)> = items
        .iter()
        .map(|r| (r["index"].as_i64().unwrap(), r["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (3, "qty must be a non-negative integer, got -1"),
            (5, "sku_ref is required"),
            (8, "qty must be a non-negative integer, got 2.5"),
            (9, "qty must be a non-negative integer, got \"ten\""),
            (12, "location_ref is required"),
            (13, "record must be an object {sku_ref, location_ref, qty}"),
        ]
    );
    assert_eq!(items[0]["sku_ref"], "bad");
    assert!(items[1]["sku_ref"].is_null());
    // A valid neighbour was applied.
    app.call(Method::GET, "/api/inventory/sku-4/loc-4", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    worker.stop().await;
}

/// 5 001 records → 413, a closed load → 409, bad envelopes → 422, unknown ids → 404, all problem JSON; another
/// account can neither see nor use a load, its batches or its positions.
#[tokio::test]
async fn limits_closed_loads_and_isolation() {
    let app = app().await;
    let a = app.account("acme").await;
    let b = app.account("other").await;
    let load = open_load(&app, &a, "limits").await;
    let r = post_batch(&app, &a, &load, batch(records(5001, |_| 1)), None).await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    for (body, path) in [
        (
            json!({"action": "delete", "entity_type": "inventory", "records": [{}]}),
            "/action",
        ),
        (
            json!({"action": "upsert", "entity_type": "orders", "records": [{}]}),
            "/entity_type",
        ),
        (
            json!({"action": "upsert", "entity_type": "inventory", "records": []}),
            "/records",
        ),
        (json!({"action": "upsert", "entity_type": "inventory"}), "/records"),
    ] {
        let r = post_batch(&app, &a, &load, body, None).await;
        let p = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["errors"][0]["path"], path, "{p}");
    }
    app.call(Method::POST, "/api/loads", Some(&a), Some(json!({"name": ""})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    post_batch(&app, &a, "999999", batch(records(1, |_| 1)), None)
        .await
        .expect(StatusCode::NOT_FOUND);

    // A load of yesterday is closed: it takes no batch, but a replay of a key it already has still answers.
    let acme = AccountId::parse("acme").unwrap();
    let yesterday = Utc::now() - TimeDelta::days(1);
    let old = ordo::load::store::create_load(&app.db.pool, &acme, "limits", yesterday)
        .await
        .unwrap();
    let r = app
        .call(Method::GET, &format!("/api/loads/{}", old.id), Some(&a), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["status"], "closed");
    let r = post_batch(&app, &a, &old.id, batch(records(3, |_| 1)), None).await;
    assert!(r.expect(StatusCode::CONFLICT)["detail"]
        .as_str()
        .unwrap()
        .contains("closed"));
    // Today's and yesterday's load share the name; the listing shows both, latest created first, in pages.
    let list = app
        .call(Method::GET, "/api/loads?name=limits&limit=1", Some(&a), None)
        .await;
    let list = list.expect(StatusCode::OK);
    assert_eq!(list["items"][0]["status"], "closed");
    let cursor = list["next_cursor"].as_str().unwrap();
    let rest = app
        .call(
            Method::GET,
            &format!("/api/loads?name=limits&cursor={cursor}"),
            Some(&a),
            None,
        )
        .await;
    let rest = rest.expect(StatusCode::OK);
    assert_eq!(
        (rest["items"][0]["id"].as_str(), rest["items"][0]["status"].as_str()),
        (Some(load.as_str()), Some("open"))
    );
    assert!(rest["next_cursor"].is_null());

    let sent = post_batch(&app, &a, &load, batch(records(3, |_| 1)), Some("iso")).await;
    let batch_id = sent.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/loads/{load}"),
        format!("/api/loads/{load}/batches/{batch_id}"),
        format!("/api/loads/{load}/batches/{batch_id}/results"),
    ] {
        app.call(Method::GET, &path, Some(&b), None)
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    post_batch(&app, &b, &load, batch(records(3, |_| 1)), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    // B may reuse A's idempotency key: keys are per account.
    let theirs = open_load(&app, &b, "limits").await;
    post_batch(&app, &b, &theirs, batch(records(3, |_| 2)), Some("iso"))
        .await
        .expect(StatusCode::ACCEPTED);
    let list = app.call(Method::GET, "/api/loads", Some(&b), None).await;
    assert_eq!(list.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 1);
    app.call(Method::GET, "/api/loads", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

/// With the workflow INVENTORY_POSITION::DEFAULT, every changed record fires InventoryChanged on its position's
/// entity (created on the fly), and the workflow runs; unchanged records fire nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_positions_fire_inventory_changed() {
    let app = app().await;
    let a = app.account("acme").await;
    let workflow = json!({
        "statuses": [{"name": "CREATED"}, {"name": "SEEN"}],
        "rulesets": [{"name": "InventoryChanged", "entity_type": "INVENTORY_POSITION",
                      "rules": [{"name": "core.SetState", "props": {"status": "SEEN"}},
                                {"name": "core.SetAttribute",
                                 "props": {"name": "on_hand", "value": "{{event.attributes.on_hand}}"}}]}]
    });
    app.call(
        Method::PUT,
        "/api/workflows/INVENTORY_POSITION::DEFAULT",
        Some(&a),
        Some(workflow),
    )
    .await
    .expect(StatusCode::CREATED);
    let worker = start_worker(&app.db.pool, fast_config());
    let load = open_load(&app, &a, "events").await;
    let r = post_batch(&app, &a, &load, batch(records(40, |i| i as i64 + 1)), None).await;
    let id = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    complete(&app, &a, &load, &id).await;
    // Half the records change the second time.
    let r = post_batch(
        &app,
        &a,
        &load,
        batch(records(40, |i| if i % 2 == 0 { 100 } else { i as i64 + 1 })),
        None,
    )
    .await;
    let id = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    let done = complete(&app, &a, &load, &id).await;
    assert_eq!(counts(&done), [40, 20, 20, 0]);

    let events = |pool: sqlx::PgPool| async move {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select entity_ref, status from event where account_id = 'acme' and name = 'InventoryChanged' \
             and kind = 'orchestration'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let fired = eventually(Duration::from_secs(60), "60 InventoryChanged events to succeed", || {
        let pool = app.db.pool.clone();
        async move {
            let rows = events(pool).await;
            (rows.len() == 60 && rows.iter().all(|(_, s)| s == "success")).then_some(rows)
        }
    })
    .await;
    assert_eq!(fired.iter().filter(|(r, _)| r == "sku-0@loc-0").count(), 2);
    assert_eq!(fired.iter().filter(|(r, _)| r == "sku-1@loc-1").count(), 1);
    let e = app
        .call(
            Method::GET,
            "/api/entities/INVENTORY_POSITION/sku-2@loc-2",
            Some(&a),
            None,
        )
        .await;
    let e = e.expect(StatusCode::OK);
    assert_eq!(e["status"], "SEEN");
    // The template yields the event's value (a number, or its text).
    assert!(
        e["attributes"]["on_hand"] == json!(100) || e["attributes"]["on_hand"] == "100",
        "{e}"
    );
    worker.stop().await;
}

/// A position sent in several batches ends with the value of the last batch accepted, even when the batches are
/// all waiting when the worker starts (a partition's chunks run one at a time, in batch order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_batch_wins_for_a_position() {
    let app = app().await;
    let a = app.account("acme").await;
    let load = open_load(&app, &a, "ordered").await;
    let mut ids = Vec::new();
    for round in 0..8i64 {
        let mut recs = records(300, move |i| i as i64 + round);
        recs.push(json!({"sku_ref": "hot", "location_ref": "dc", "qty": round}));
        let r = post_batch(&app, &a, &load, batch(recs), None).await;
        ids.push(r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned());
    }
    let worker = start_worker(&app.db.pool, fast_config());
    for id in &ids {
        complete(&app, &a, &load, id).await;
    }
    let p = app.call(Method::GET, "/api/inventory/hot/dc", Some(&a), None).await;
    assert_eq!(p.expect(StatusCode::OK)["on_hand"], 7);
    let p = app
        .call(Method::GET, "/api/inventory/sku-10/loc-3", Some(&a), None)
        .await;
    assert_eq!(p.expect(StatusCode::OK)["on_hand"], 17);
    worker.stop().await;
}
