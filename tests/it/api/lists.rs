//! Contract deviations of issue #19, fixed: every list honours `?limit=`, a canary that nothing would run is
//! refused, and an unchanged workflow upload makes no new version.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, assert_problem, ADMIN};

/// `GET /api/queues`, `/api/rules` and `/api/pools` take `?limit=` (1..1000, else 422) and `?cursor=` like every
/// list, in name order.
#[tokio::test]
async fn queues_rules_and_pools_honour_limit_and_cursor() {
    let app = app().await;
    let key = app.account("acme").await;
    for q in ["a", "b", "c"] {
        super::enqueue(&app, &key, json!({"kind": "noop", "queue": q})).await;
    }
    for p in ["p1", "p2"] {
        app.call(
            Method::PUT,
            &format!("/api/pools/{p}"),
            Some(ADMIN),
            Some(json!({"queues": [p]})),
        )
        .await
        .expect(StatusCode::OK);
    }
    let lists = [
        ("/api/queues", key.as_str(), "queue"),
        ("/api/rules", key.as_str(), "name"),
        ("/api/pools", ADMIN, "pool"),
    ];
    for (list, cred, name) in lists {
        for bad in ["0", "1001", "x"] {
            let r = app
                .call(Method::GET, &format!("{list}?limit={bad}"), Some(cred), None)
                .await;
            r.expect(StatusCode::UNPROCESSABLE_ENTITY);
            assert_problem(&r);
            assert_eq!(r.body["errors"][0]["path"], "/query/limit", "{list}: {}", r.body);
        }
        let all = app.call(Method::GET, list, Some(cred), None).await;
        let names = |items: &[serde_json::Value]| -> Vec<String> {
            items.iter().map(|i| i[name].as_str().unwrap().to_owned()).collect()
        };
        let all = names(all.expect(StatusCode::OK)["items"].as_array().unwrap());
        assert!(all.len() >= 2, "{list}: {all:?}");
        // Walk the list one item per page: every item once, in the same order, then a null cursor.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("{list}?limit=1"),
                Some(c) => format!("{list}?limit=1&cursor={c}"),
            };
            let r = app.call(Method::GET, &path, Some(cred), None).await;
            let body = r.expect(StatusCode::OK);
            let items = body["items"].as_array().unwrap();
            assert!(items.len() <= 1, "{path}: {body}");
            seen.extend(names(items));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(seen.len() <= all.len(), "{list} pages past its end");
        }
        assert_eq!(seen, all, "{list}");
    }
}

/// A canary to a version that no live worker runs, in a pool without a scaling policy, is refused with 409 (its
/// share of new work would wait for nobody); once a worker of that version is live it is accepted.
#[tokio::test]
async fn canary_without_workers_is_refused() {
    let app = app().await;
    ordo::rollout::announce_version(&app.db.pool, "default", "v1", &["default".to_owned()])
        .await
        .unwrap();
    let start = json!({"pool": "default", "version": "v2", "canary_percent": 50});
    let r = app
        .call(Method::POST, "/api/rollouts", Some(ADMIN), Some(start.clone()))
        .await;
    r.expect(StatusCode::CONFLICT);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("no live worker") && detail.contains("v2"), "{detail}");
    assert_eq!(r.body["errors"][0]["path"], "/version");
    let r = app.call(Method::GET, "/api/pools", Some(ADMIN), None).await;
    let versions = &r.expect(StatusCode::OK)["items"][0]["versions"];
    assert_eq!(versions.as_array().unwrap().len(), 1, "nothing changed: {versions}");

    super::register_worker(&app, "w-v2", ("default", "v2"), "default", "noop").await;
    let r = app.call(Method::POST, "/api/rollouts", Some(ADMIN), Some(start)).await;
    assert_eq!(r.expect(StatusCode::CREATED)["to_version"], "v2");
}

/// `PUT` of a workflow equal to its latest version answers 200 with that version instead of making a new one;
/// a changed one, or `?major=true`, makes a new version (201).
#[tokio::test]
async fn unchanged_workflow_put_keeps_its_version() {
    let app = app().await;
    let key = app.account("acme").await;
    let wf = json!({"statuses": [{"name": "CREATED"}], "rulesets": []});
    let put = |body: serde_json::Value, q: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            app.call(Method::PUT, &format!("/api/workflows/T::X{q}"), Some(key), Some(body))
                .await
        }
    };
    assert_eq!(put(wf.clone(), "").await.expect(StatusCode::CREATED)["version"], "1.0");
    let again = put(wf.clone(), "").await;
    assert_eq!(again.expect(StatusCode::OK)["version"], "1.0", "{}", again.body);
    let changed = json!({"statuses": [{"name": "CREATED"}, {"name": "DONE"}], "rulesets": []});
    assert_eq!(
        put(changed.clone(), "").await.expect(StatusCode::CREATED)["version"],
        "1.1"
    );
    assert_eq!(
        put(changed, "?major=true").await.expect(StatusCode::CREATED)["version"],
        "2.0"
    );
}
