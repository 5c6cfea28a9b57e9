//! `/api/pools` and `/api/rollouts` (admin): pools, scaling policies, and the rollout state machine over HTTP,
//! with 409 for illegal transitions.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, assert_problem, error_paths, ADMIN};

/// Pools and rollouts are admin resources; the state machine answers 409 for illegal transitions, 404 for
/// unknown rollouts and 422 for invalid fields.
#[tokio::test]
async fn pools_and_rollouts_over_http() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app.call(Method::GET, "/api/pools", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.call(Method::GET, "/api/pools", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = app
        .call(
            Method::PUT,
            "/api/pools/emails",
            Some(ADMIN),
            Some(json!({"queues": ["mail", "sms"]})),
        )
        .await;
    assert_eq!(r.expect(StatusCode::OK)["queues"], json!(["mail", "sms"]));
    let r = app
        .call(
            Method::PUT,
            "/api/pools/other",
            Some(ADMIN),
            Some(json!({"queues": ["mail"]})),
        )
        .await;
    r.expect(StatusCode::CONFLICT);
    assert_problem(&r);
    let r = app
        .call(
            Method::PUT,
            "/api/pools/emails",
            Some(ADMIN),
            Some(json!({"queues": "mail"})),
        )
        .await;
    r.expect(StatusCode::UNPROCESSABLE_ENTITY);

    let policy = json!({"min": 1, "max": 4, "target_per_worker": 50, "scale_down_delay_s": 30});
    let r = app
        .call(
            Method::PUT,
            "/api/pools/emails/scaling",
            Some(ADMIN),
            Some(policy.clone()),
        )
        .await;
    assert_eq!(*r.expect(StatusCode::OK), policy);
    let r = app
        .call(
            Method::PUT,
            "/api/pools/emails/scaling",
            Some(ADMIN),
            Some(json!({"min": 5, "max": 4, "target_per_worker": 0, "scale_down_delay_s": 30})),
        )
        .await;
    let body = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_paths(body), vec!["/max", "/target_per_worker"]);
    app.call(Method::PUT, "/api/pools/nope/scaling", Some(ADMIN), Some(policy))
        .await
        .expect(StatusCode::NOT_FOUND);

    // No worker has run: nothing to roll out from.
    let start = json!({"pool": "emails", "version": "v2", "canary_percent": 25});
    app.call(Method::POST, "/api/rollouts", Some(ADMIN), Some(start.clone()))
        .await
        .expect(StatusCode::CONFLICT);
    ordo::rollout::announce_version(&app.db.pool, "emails", "v1", &[])
        .await
        .unwrap();
    app.call(
        Method::POST,
        "/api/rollouts",
        Some(ADMIN),
        Some(json!({"pool": "emails", "version": "v2", "canary_percent": 101})),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .call(Method::POST, "/api/rollouts", Some(ADMIN), Some(start.clone()))
        .await;
    let created = r.expect(StatusCode::CREATED).clone();
    assert_eq!(created["state"], "canary");
    assert_eq!(created["from_version"], "v1");
    assert_eq!(created["canary_percent"], 25);
    let id = created["id"].as_str().unwrap().to_owned();
    app.call(Method::POST, "/api/rollouts", Some(ADMIN), Some(start))
        .await
        .expect(StatusCode::CONFLICT);

    let r = app.call(Method::GET, "/api/pools", Some(ADMIN), None).await;
    let pools = r.expect(StatusCode::OK)["items"].as_array().unwrap().clone();
    let emails = pools.iter().find(|p| p["pool"] == "emails").unwrap();
    assert_eq!(
        emails["versions"],
        json!([
            {"version": "v1", "role": "stable", "weight": 75, "workers": 0, "available": 0, "running": 0},
            {"version": "v2", "role": "canary", "weight": 25, "workers": 0, "available": 0, "running": 0},
        ])
    );

    let r = app
        .call(Method::POST, &format!("/api/rollouts/{id}/promote"), Some(ADMIN), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "promoted");
    let r = app
        .call(Method::POST, &format!("/api/rollouts/{id}/promote"), Some(ADMIN), None)
        .await;
    r.expect(StatusCode::CONFLICT);
    assert_problem(&r);
    let r = app
        .call(Method::POST, &format!("/api/rollouts/{id}/abort"), Some(ADMIN), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "aborted");
    app.call(Method::POST, &format!("/api/rollouts/{id}/abort"), Some(ADMIN), None)
        .await
        .expect(StatusCode::CONFLICT);
    let r = app
        .call(Method::GET, &format!("/api/rollouts/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "aborted");
    for path in ["/api/rollouts/999", "/api/rollouts/abc"] {
        let r = app.call(Method::GET, path, Some(ADMIN), None).await;
        r.expect(StatusCode::NOT_FOUND);
        assert_problem(&r);
    }

    // The list: newest first, filtered by pool and state, paged by cursor; bad parameters are 422.
    let list = |q: &'static str| {
        let app = &app;
        async move { app.call(Method::GET, q, Some(ADMIN), None).await }
    };
    let all = list("/api/rollouts").await;
    let items = all.expect(StatusCode::OK)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0]["id"].as_str(), items[0]["state"].as_str()),
        (Some(id.as_str()), Some("aborted"))
    );
    assert_eq!(all.body["next_cursor"], serde_json::Value::Null);
    let r = list("/api/rollouts?pool=emails&state=aborted&limit=1").await;
    assert_eq!(r.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 1);
    // nothing is older than the first rollout: `cursor` (and its earlier name `after`) pages past it
    for q in [
        "/api/rollouts?pool=nope",
        "/api/rollouts?state=canary",
        "/api/rollouts?cursor=1",
        "/api/rollouts?after=1",
    ] {
        let r = list(q).await;
        assert!(r.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty(), "{q}");
    }
    for q in [
        "/api/rollouts?state=bogus",
        "/api/rollouts?limit=0",
        "/api/rollouts?limit=1001",
        "/api/rollouts?cursor=x",
        "/api/rollouts?after=x",
    ] {
        let r = list(q).await;
        r.expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_problem(&r);
    }
    app.call(Method::GET, "/api/rollouts", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}
