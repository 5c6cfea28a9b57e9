//! `/api/accounts/{id}/limits` (CONTRACT §12): set and read by the administrator, checked field by field, and
//! jobs held back by a full limit counted as `limited` in `GET /api/queues`.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, assert_problem, enqueue, ADMIN};

#[tokio::test]
async fn the_admin_sets_and_reads_an_accounts_limits() {
    let app = app().await;
    let key = app.account("acme").await;
    let path = "/api/accounts/acme/limits";
    let r = app.call(Method::GET, path, Some(ADMIN), None).await;
    assert_eq!(
        *r.expect(StatusCode::OK),
        json!({"weight": 1, "queues": {}, "kinds": {}})
    );
    let limits = json!({
        "weight": 3,
        "queues": {"default": {"max_running": 5}},
        "kinds": {"http.request": {"max_running": 20}, "webhook.deliver": {"max_per_second": 50}}
    });
    let r = app.call(Method::PUT, path, Some(ADMIN), Some(limits.clone())).await;
    assert_eq!(*r.expect(StatusCode::OK), limits);
    let r = app.call(Method::GET, path, Some(ADMIN), None).await;
    assert_eq!(*r.expect(StatusCode::OK), limits);
    // PUT replaces: what is left out goes back to its default.
    let r = app
        .call(
            Method::PUT,
            path,
            Some(ADMIN),
            Some(json!({"kinds": {"x": {"max_running": 1}}})),
        )
        .await;
    assert_eq!(
        *r.expect(StatusCode::OK),
        json!({"weight": 1, "queues": {}, "kinds": {"x": {"max_running": 1}}})
    );
    // An account's own key cannot read or change limits.
    let r = app.call(Method::GET, path, Some(&key), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = app
        .call(Method::PUT, path, Some(&key), Some(json!({"weight": 100})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
}

#[tokio::test]
async fn bad_limits_are_refused_field_by_field_and_unknown_accounts_are_404() {
    let app = app().await;
    app.account("acme").await;
    let path = "/api/accounts/acme/limits";
    let cases = [
        (json!({"weight": -1}), "/weight"),
        (json!({"weight": 1_000_000}), "/weight"),
        (
            json!({"queues": {"default": {"max_running": 0}}}),
            "/queues/default/max_running",
        ),
        (
            json!({"kinds": {"noop": {"max_per_second": -5}}}),
            "/kinds/noop/max_per_second",
        ),
        (
            json!({"kinds": {"noop": {"max_running": 99_999_999}}}),
            "/kinds/noop/max_running",
        ),
        (json!({"kinds": {"noop": {}}}), "/kinds/noop"),
        (json!({"queue": {}}), "/queue"),
    ];
    for (body, field) in cases {
        let r = app.call(Method::PUT, path, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {:?}", r.body);
        assert_problem(&r);
        assert_eq!(r.body["errors"][0]["path"], field, "{body}: {}", r.body);
    }
    // Nothing of a refused body was kept.
    let r = app.call(Method::GET, path, Some(ADMIN), None).await;
    assert_eq!(r.expect(StatusCode::OK)["weight"], 1);
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({}));
        for id in ["nobody", "NOT_AN_ID"] {
            let r = app
                .call(
                    method.clone(),
                    &format!("/api/accounts/{id}/limits"),
                    Some(ADMIN),
                    body.clone(),
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {id}: {:?}", r.body);
            assert_problem(&r);
        }
    }
}

/// With one job of three running and `max_running: 1` on the queue, the other two count as `limited`.
#[tokio::test]
async fn jobs_held_back_by_a_full_limit_count_as_limited() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app
        .call(
            Method::PUT,
            "/api/accounts/acme/limits",
            Some(ADMIN),
            Some(json!({"queues": {"default": {"max_running": 1}}})),
        )
        .await;
    r.expect(StatusCode::OK);
    for _ in 0..3 {
        enqueue(&app, &key, json!({"kind": "noop"})).await;
    }
    let claimed = crate::queue::claim_n(&app.db.pool, 10, Duration::from_secs(60)).await;
    assert_eq!(claimed.len(), 1, "the limit lets one start");
    let r = app.call(Method::GET, "/api/queues", Some(&key), None).await;
    let q = &r.expect(StatusCode::OK)["items"][0];
    assert_eq!(
        (q["running"].as_i64(), q["limited"].as_i64()),
        (Some(1), Some(2)),
        "{q}"
    );
    let r = app
        .call(Method::GET, "/api/accounts/acme/usage", Some(ADMIN), None)
        .await;
    assert_eq!(
        *r.expect(StatusCode::OK),
        json!({"weight": 1, "queues": {"default": {"max_running": 1, "running": 1}}, "kinds": {}})
    );
    let r = app
        .call(Method::GET, "/api/accounts/nobody/usage", Some(ADMIN), None)
        .await;
    r.expect(StatusCode::NOT_FOUND);
    // A second claim takes nothing more while the first job runs.
    let again = crate::queue::claim_n(&app.db.pool, 10, Duration::from_secs(60)).await;
    assert!(again.is_empty());
}
