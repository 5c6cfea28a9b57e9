//! Every error status of CONTRACT §2 is provoked and answers problem JSON (503 lives in `outage`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ordo::api::{AppState, Settings};
use ordo::testkit;
use ordo::wake::Waker;
use serde_json::json;

use super::{app, app_with, assert_problem, send, settings, ADMIN};

fn raw(path: &str, key: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

/// 400, 401, 403, 404, 405, 409, 413, 415, 421 and 422 each answer problem JSON.
#[tokio::test]
async fn error_statuses_answer_problem_json() {
    let app = app().await;
    let key = app.account("acme").await;
    let far = app.account_in("faraway", "eu-west").await;

    // 400: malformed, truncated and too deeply nested JSON.
    for body in ["{\"kind\": ", "not json", &("[".repeat(10_000) + &"]".repeat(10_000))] {
        let r = app
            .send(raw("/api/jobs", &key, "application/json", body.to_owned()))
            .await;
        r.expect(StatusCode::BAD_REQUEST);
    }
    // 401: no key, a bad key, a malformed header.
    app.call(Method::GET, "/api/jobs", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    app.call(Method::GET, "/api/jobs", Some("ordo_nope"), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let basic = Request::get("/api/jobs")
        .header("authorization", "Basic abc")
        .body(Body::empty())
        .unwrap();
    app.send(basic).await.expect(StatusCode::UNAUTHORIZED);
    app.call(Method::GET, "/api/accounts", Some("wrong-admin"), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    // 403: each credential on the other kind of route.
    app.call(Method::GET, "/api/jobs", Some(ADMIN), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    app.call(Method::GET, "/api/accounts", Some(&key), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    // 404: unknown job, unknown route; 405: wrong method.
    app.call(Method::GET, "/api/jobs/123456", Some(&key), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::GET, "/api/nothing-here", Some(&key), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, "/api/jobs", Some(&key), None)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    // 409: an account id that is taken.
    app.call(Method::POST, "/api/accounts", Some(ADMIN), Some(json!({"id": "acme"})))
        .await
        .expect(StatusCode::CONFLICT);
    // 413: a body over 1 MiB.
    let big = json!({"kind": "noop", "args": {"blob": "x".repeat(1 << 20)}});
    let r = app.call(Method::POST, "/api/jobs", Some(&key), Some(big)).await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    // 415: not JSON, or no content type at all.
    let r = app
        .send(raw("/api/jobs", &key, "text/plain", "{\"kind\":\"noop\"}"))
        .await;
    r.expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let none = Request::post("/api/jobs")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::from("{}"))
        .unwrap();
    app.send(none).await.expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 421: the account lives in another region; the region is in the detail.
    let r = app.call(Method::GET, "/api/jobs", Some(&far), None).await;
    assert!(r.expect(StatusCode::MISDIRECTED_REQUEST)["detail"]
        .as_str()
        .unwrap()
        .contains("eu-west"));
    // 422: wrong types, with one entry per field.
    let r = app
        .call(
            Method::POST,
            "/api/jobs",
            Some(&key),
            Some(json!({"kind": ["x"], "priority": "high", "run_at": 3})),
        )
        .await;
    let body = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"].as_array().unwrap().len(), 3, "{body}");
    app.call(Method::POST, "/api/jobs", Some(&key), Some(json!([1, 2])))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    app.call(
        Method::POST,
        "/api/accounts",
        Some(ADMIN),
        Some(json!({"id": "Not A Slug"})),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
}

/// Without ORDO_ADMIN_TOKEN the admin routes answer 401 "admin API disabled".
#[tokio::test]
async fn admin_routes_are_disabled_without_a_token() {
    let app = app_with(Settings {
        admin_token: None,
        ..settings()
    })
    .await;
    let r = app.call(Method::GET, "/api/accounts", Some("anything"), None).await;
    assert_eq!(r.expect(StatusCode::UNAUTHORIZED)["detail"], "admin API disabled");
}

async fn assert_rate_limited(app: &super::App, key: &str) {
    // rps 1, burst 2: two requests pass, the third is refused.
    for _ in 0..2 {
        app.call(Method::GET, "/api/jobs", Some(key), None)
            .await
            .expect(StatusCode::OK);
    }
    let r = app.call(Method::GET, "/api/jobs", Some(key), None).await;
    r.expect(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(r.headers["ratelimit-limit"], "1");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert!(r.headers.contains_key("ratelimit-reset"));
}

/// Past its rate the account gets 429 with Retry-After and RateLimit-* headers (per-node bucket).
#[tokio::test]
async fn rate_limit_without_redis_answers_429() {
    let app = app_with(Settings {
        rate_limit_rps: 1,
        ..settings()
    })
    .await;
    let key = app.account("acme").await;
    assert_rate_limited(&app, &key).await;
    // Another account has its own budget.
    let other = app.account("other").await;
    app.call(Method::GET, "/api/jobs", Some(&other), None)
        .await
        .expect(StatusCode::OK);
}

/// With Redis, two API nodes spend one shared budget per account.
#[tokio::test]
async fn rate_limit_in_redis_is_shared_by_nodes() {
    let redis = testkit::redis_url().await;
    let limited = Settings {
        rate_limit_rps: 1,
        redis_url: Some(redis),
        key_cache_ttl: Duration::ZERO,
        ..settings()
    };
    let node1 = app_with(limited.clone()).await;
    let key = node1.account("acme").await;
    let node2 = ordo::api::router(AppState::new(node1.db.pool.clone(), Waker::disabled(), limited));
    let get = || {
        Request::get("/api/jobs")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };
    send(&node1.router, get()).await.expect(StatusCode::OK);
    send(&node2, get()).await.expect(StatusCode::OK);
    let r = send(&node1.router, get()).await;
    assert_problem(&r);
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    send(&node2, get()).await.expect(StatusCode::TOO_MANY_REQUESTS);
}

/// With Redis configured but unreachable, the per-node bucket still limits (and requests are never refused
/// because Redis is gone).
#[tokio::test]
async fn rate_limit_falls_back_to_the_node_when_redis_is_down() {
    let redis = testkit::redis_url().await;
    let proxy = testkit::TcpProxy::start(testkit::server_addr(&redis).await).await;
    proxy.cut();
    let app = app_with(Settings {
        rate_limit_rps: 1,
        redis_url: Some(testkit::with_host_port(&redis, proxy.addr())),
        ..settings()
    })
    .await;
    let key = app.account("acme").await;
    assert_rate_limited(&app, &key).await;
}
