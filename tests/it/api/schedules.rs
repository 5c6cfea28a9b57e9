//! `/api/schedules`: create, read, list, change, pause, delete; invalid cron and zone name the field; accounts
//! never see each other's schedules.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, error_paths};

/// A schedule round-trips through the API with its next tick; names are per account; changes and deletion work.
#[tokio::test]
async fn schedules_are_managed_per_account() {
    let app = app().await;
    let a = app.account("acme").await;
    let b = app.account("other").await;
    let body = json!({"name": "nightly", "cron": "0 30 2 * * *", "timezone": "Europe/Berlin",
                      "job": {"kind": "noop", "args": {"sync": true}}});
    let r = app
        .call(Method::POST, "/api/schedules", Some(&a), Some(body.clone()))
        .await;
    let s = r.expect(StatusCode::CREATED);
    assert_eq!(s["name"], "nightly");
    assert_eq!(s["job"]["kind"], "noop");
    assert!(s["next_fire_at"].as_str().unwrap().ends_with('Z'), "{s}");
    app.call(Method::POST, "/api/schedules", Some(&a), Some(body.clone()))
        .await
        .expect(StatusCode::CONFLICT);
    // Another account may reuse the name, and never sees the first one.
    app.call(Method::POST, "/api/schedules", Some(&b), Some(body))
        .await
        .expect(StatusCode::CREATED);
    app.call(Method::GET, "/api/schedules/nightly", Some(&b), None)
        .await
        .expect(StatusCode::OK);
    let list = app.call(Method::GET, "/api/schedules?limit=10", Some(&a), None).await;
    assert_eq!(list.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 1);

    let paused = app
        .call(
            Method::PATCH,
            "/api/schedules/nightly",
            Some(&a),
            Some(json!({"paused": true})),
        )
        .await;
    let p = paused.expect(StatusCode::OK);
    assert_eq!((p["paused"].as_bool(), p["next_fire_at"].is_null()), (Some(true), true));
    let changed = app
        .call(
            Method::PATCH,
            "/api/schedules/nightly",
            Some(&a),
            Some(json!({"cron": "*/5 * * * *", "paused": false})),
        )
        .await;
    let c = changed.expect(StatusCode::OK);
    assert_eq!(c["cron"], "*/5 * * * *");
    assert!(c["next_fire_at"].is_string());

    app.call(Method::DELETE, "/api/schedules/nightly", Some(&a), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::GET, "/api/schedules/nightly", Some(&a), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, "/api/schedules/nightly", Some(&a), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    // B's schedule of the same name is untouched.
    app.call(Method::GET, "/api/schedules/nightly", Some(&b), None)
        .await
        .expect(StatusCode::OK);
}

/// An invalid cron expression or time zone is a 422 naming the field; so are missing and unknown fields.
#[tokio::test]
async fn invalid_schedules_name_the_field() {
    let app = app().await;
    let a = app.account("acme").await;
    let cases = [
        (
            json!({"name": "x", "cron": "61 * * * *", "job": {"kind": "noop"}}),
            "/cron",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "timezone": "Mars/Olympus", "job": {"kind": "noop"}}),
            "/timezone",
        ),
        (json!({"name": "x", "cron": "* * * * *"}), "/job"),
        (json!({"cron": "* * * * *", "job": {"kind": "noop"}}), "/name"),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop", "run_at": "2030-01-01T00:00:00Z"}}),
            "/job",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop"}, "color": "red"}),
            "/color",
        ),
        (json!({"name": "x", "cron": 5, "job": {"kind": "noop"}}), "/cron"),
    ];
    for (body, path) in cases {
        let r = app
            .call(Method::POST, "/api/schedules", Some(&a), Some(body.clone()))
            .await;
        let p = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
        let paths = error_paths(p);
        assert!(paths.contains(&path), "{body} → {paths:?}");
    }
    app.call(
        Method::POST,
        "/api/schedules",
        Some(&a),
        Some(json!({"name": "ok", "cron": "* * * * *", "job": {"kind": "noop"}})),
    )
    .await
    .expect(StatusCode::CREATED);
    let r = app
        .call(
            Method::PATCH,
            "/api/schedules/ok",
            Some(&a),
            Some(json!({"timezone": "Nowhere"})),
        )
        .await;
    r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    app.call(Method::GET, "/api/schedules", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

/// Event schedules over HTTP: created with an event target (shown back as `event`), validated at create and
/// change (a missing entity, name or entity field is a 422 naming it; job and event together are refused).
#[tokio::test]
async fn event_schedules_are_validated() {
    let app = app().await;
    let a = app.account("acme").await;
    let ok = json!({"name": "ping", "cron": "0 * * * *",
                    "event": {"name": "Ping", "entity": {"type": "T", "ref": "r"}, "attributes": {"x": 1}}});
    let r = app.call(Method::POST, "/api/schedules", Some(&a), Some(ok)).await;
    let s = r.expect(StatusCode::CREATED);
    assert_eq!(s["event"]["entity"]["ref"], "r");
    assert!(s.get("job").is_none(), "{s}");
    let cases = [
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"name": "Ping"}}),
            "/event/entity",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"entity": {"type": "T", "ref": "r"}}}),
            "/event/name",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"name": "P", "entity": {"type": "T"}}}),
            "/event/entity/ref",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"name": "", "entity": {"type": "T", "ref": "r"}}}),
            "/event/name",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"name": "P", "entity": {"type": "T", "ref": "r"}, "attributes": 3}}),
            "/event/attributes",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "event": {"name": "P", "entity": {"type": "T", "ref": "r"}, "scheduled_at": "2030-01-01T00:00:00Z"}}),
            "/event",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop"}, "event": {"name": "P", "entity": {"type": "T", "ref": "r"}}}),
            "/event",
        ),
    ];
    for (body, path) in cases {
        let r = app
            .call(Method::POST, "/api/schedules", Some(&a), Some(body.clone()))
            .await;
        let p = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
        let paths = error_paths(p);
        assert!(paths.contains(&path), "{body} → {paths:?}");
    }
    // A change to an event target is validated too, and a job schedule can become an event schedule.
    let r = app
        .call(
            Method::PATCH,
            "/api/schedules/ping",
            Some(&a),
            Some(json!({"event": {"name": "Ping"}})),
        )
        .await;
    r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    app.call(
        Method::POST,
        "/api/schedules",
        Some(&a),
        Some(json!({"name": "job", "cron": "* * * * *", "job": {"kind": "noop"}})),
    )
    .await
    .expect(StatusCode::CREATED);
    let r = app
        .call(
            Method::PATCH,
            "/api/schedules/job",
            Some(&a),
            Some(json!({"event": {"name": "Ping", "entity": {"type": "T", "ref": "r"}}})),
        )
        .await;
    let s = r.expect(StatusCode::OK);
    assert_eq!(s["event"]["name"], "Ping");
}
