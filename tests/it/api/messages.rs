//! Messages of issue #19: errors and answers that say what is wrong and what to do.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, error_paths};

/// An unknown `state=` filter is a 422 that lists the valid states; an unknown event `status=` likewise.
#[tokio::test]
async fn unknown_state_filter_lists_the_valid_states() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app.call(Method::GET, "/api/jobs?state=done", Some(&key), None).await;
    let body = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["path"], "/query/state");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    for s in [
        "scheduled",
        "available",
        "running",
        "retryable",
        "completed",
        "discarded",
        "cancelled",
    ] {
        assert!(msg.contains(s), "{msg} lacks {s}");
    }
    let r = app.call(Method::GET, "/api/events?status=done", Some(&key), None).await;
    let msg = r.expect(StatusCode::UNPROCESSABLE_ENTITY)["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("no_match") && msg.contains("success"), "{msg}");
}

/// A job of a kind no live worker knows is still accepted (201), and the answer says it will wait in `warnings`;
/// a job a live worker serves has no `warnings`.
#[tokio::test]
async fn enqueue_of_a_kind_no_worker_knows_says_so() {
    let app = app().await;
    let key = app.account("acme").await;
    super::register_worker(&app, "w-1", ("default", "v1"), "default", "noop").await;
    let r = app
        .call(Method::POST, "/api/jobs", Some(&key), Some(json!({"kind": "noop"})))
        .await;
    assert!(r.expect(StatusCode::CREATED).get("warnings").is_none(), "{}", r.body);
    let r = app
        .call(Method::POST, "/api/jobs", Some(&key), Some(json!({"kind": "mystery"})))
        .await;
    let body = r.expect(StatusCode::CREATED);
    assert_eq!(body["state"], "available");
    let w = body["warnings"][0].as_str().unwrap();
    assert!(w.contains("mystery") && w.contains("waits"), "{w}");
    let r = app
        .call(
            Method::POST,
            "/api/jobs",
            Some(&key),
            Some(json!({"kind": "noop", "queue": "elsewhere"})),
        )
        .await;
    let w = r.expect(StatusCode::CREATED)["warnings"][0].as_str().unwrap();
    assert!(w.contains("elsewhere"), "{w}");

    // A batch says it once per queue and kind that nothing serves.
    let batch = json!({"jobs": [{"kind": "noop"}, {"kind": "mystery"}, {"kind": "mystery"}]});
    let r = app.call(Method::POST, "/api/jobs/batch", Some(&key), Some(batch)).await;
    let body = r.expect(StatusCode::CREATED);
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    let warnings = body["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().contains("mystery"));
    let r = app
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(&key),
            Some(json!({"jobs": [{"kind": "noop"}]})),
        )
        .await;
    assert!(r.expect(StatusCode::CREATED).get("warnings").is_none(), "{}", r.body);
}

/// Cron errors over HTTP quote the user's expression with the right bounds; the cron macros are accepted.
#[tokio::test]
async fn cron_errors_name_the_users_field_and_macros_work() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app
        .call(
            Method::POST,
            "/api/schedules",
            Some(&key),
            Some(json!({"name": "x", "cron": "60 * * * *", "job": {"kind": "noop"}})),
        )
        .await;
    let body = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["path"], "/cron");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"60 * * * *\"") && msg.contains("minute") && msg.contains("0-59"),
        "{msg}"
    );
    assert!(!msg.contains("less than") && !msg.contains('^'), "{msg}");
    for (name, cron) in [
        ("d", "@daily"),
        ("h", "@hourly"),
        ("w", "@weekly"),
        ("m", "@monthly"),
        ("y", "@yearly"),
    ] {
        let r = app
            .call(
                Method::POST,
                "/api/schedules",
                Some(&key),
                Some(json!({"name": name, "cron": cron, "job": {"kind": "noop"}})),
            )
            .await;
        assert_eq!(r.expect(StatusCode::CREATED)["cron"], cron);
    }
}

/// A listing names its bad parameters as it always has: the job list every one of them, limit, filters and
/// cursor in that order; the event list its limit first, then its filters, then its cursor.
#[tokio::test]
async fn listings_name_bad_page_parameters_in_their_order() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app
        .call(Method::GET, "/api/jobs?limit=0&state=done&cursor=x", Some(&key), None)
        .await;
    assert_eq!(
        error_paths(r.expect(StatusCode::UNPROCESSABLE_ENTITY)),
        ["/query/limit", "/query/state", "/query/cursor"]
    );
    for (query, path) in [
        ("limit=0&kind=x&cursor=x", "/query/limit"),
        ("kind=x&cursor=x", "/query/kind"),
        ("cursor=x", "/query/cursor"),
    ] {
        let r = app
            .call(Method::GET, &format!("/api/events?{query}"), Some(&key), None)
            .await;
        assert_eq!(
            error_paths(r.expect(StatusCode::UNPROCESSABLE_ENTITY)),
            [path],
            "{query}"
        );
    }
    let r = app.call(Method::GET, "/api/queues?limit=1001", Some(&key), None).await;
    assert_eq!(
        error_paths(r.expect(StatusCode::UNPROCESSABLE_ENTITY)),
        ["/query/limit"]
    );
}
