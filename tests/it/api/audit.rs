//! The admin audit trail (`GET /api/admin-events`, CONTRACT §11): each admin change leaves exactly one record
//! naming the action, its target and the kind of credential, newest first, paged by cursor; admin only.

use std::collections::HashSet;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{app, App, ADMIN};

/// Every record, newest first, as (action, target, actor).
async fn records(app: &App) -> Vec<(String, String, String)> {
    let r = app
        .call(Method::GET, "/api/admin-events?limit=1000", Some(ADMIN), None)
        .await;
    let items = r.expect(StatusCode::OK)["items"].as_array().unwrap().clone();
    items
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_else(|| panic!("{k} of {e}")).to_owned();
            (s("action"), s("target"), s("actor"))
        })
        .collect()
}

/// `path` with `body` as the admin; the answer's body.
async fn admin(app: &App, method: Method, path: &str, body: Option<Value>, status: StatusCode) -> Value {
    app.call(method, path, Some(ADMIN), body).await.expect(status).clone()
}

/// Accounts, keys, limits, pools, scaling and rollouts: each change is one record with its target and the actor
/// `admin`; a refused change (409, 404, 422) and a read record nothing; the token never appears.
#[tokio::test]
async fn each_admin_change_is_recorded_once() {
    let app = app().await;
    assert!(records(&app).await.is_empty());

    admin(
        &app,
        Method::POST,
        "/api/accounts",
        Some(json!({"id": "acme"})),
        StatusCode::CREATED,
    )
    .await;
    admin(
        &app,
        Method::POST,
        "/api/accounts",
        Some(json!({"id": "acme"})),
        StatusCode::CONFLICT,
    )
    .await;
    let key = admin(&app, Method::POST, "/api/accounts/acme/keys", None, StatusCode::CREATED).await;
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    admin(
        &app,
        Method::POST,
        "/api/accounts/nope/keys",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    let revoke = format!("/api/accounts/acme/keys/{key_id}");
    admin(&app, Method::DELETE, &revoke, None, StatusCode::NO_CONTENT).await;
    admin(&app, Method::DELETE, &revoke, None, StatusCode::NOT_FOUND).await;
    let limits = json!({"weight": 3});
    admin(
        &app,
        Method::PUT,
        "/api/accounts/acme/limits",
        Some(limits),
        StatusCode::OK,
    )
    .await;
    let bad = json!({"weight": 0});
    admin(
        &app,
        Method::PUT,
        "/api/accounts/acme/limits",
        Some(bad),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    admin(&app, Method::GET, "/api/accounts/acme/limits", None, StatusCode::OK).await;
    let queues = json!({"queues": ["mail"]});
    admin(&app, Method::PUT, "/api/pools/emails", Some(queues), StatusCode::OK).await;
    let scaling = json!({"min": 0, "max": 3, "target_per_worker": 10, "scale_down_delay_s": 30});
    admin(
        &app,
        Method::PUT,
        "/api/pools/emails/scaling",
        Some(scaling),
        StatusCode::OK,
    )
    .await;
    ordo::rollout::announce_version(&app.db.pool, "emails", "v1", &[])
        .await
        .unwrap();
    let start = json!({"pool": "emails", "version": "v2"});
    let first = admin(
        &app,
        Method::POST,
        "/api/rollouts",
        Some(start.clone()),
        StatusCode::CREATED,
    )
    .await;
    let first = first["id"].as_str().unwrap().to_owned();
    let promote = format!("/api/rollouts/{first}/promote");
    admin(&app, Method::POST, &promote, None, StatusCode::OK).await;
    admin(&app, Method::POST, &promote, None, StatusCode::CONFLICT).await;
    let abort = format!("/api/rollouts/{first}/abort");
    admin(&app, Method::POST, &abort, None, StatusCode::OK).await;
    admin(&app, Method::DELETE, "/api/accounts/acme", None, StatusCode::NO_CONTENT).await;
    admin(&app, Method::DELETE, "/api/accounts/acme", None, StatusCode::NOT_FOUND).await;

    let expected: Vec<(&str, String)> = vec![
        ("account.delete", "acme".to_owned()),
        ("rollout.abort", first.clone()),
        ("rollout.promote", first.clone()),
        ("rollout.start", first.clone()),
        ("scaling.put", "emails".to_owned()),
        ("pool.put", "emails".to_owned()),
        ("limits.put", "acme".to_owned()),
        ("key.revoke", format!("acme/{key_id}")),
        ("key.create", format!("acme/{key_id}")),
        ("account.create", "acme".to_owned()),
    ];
    let got = records(&app).await;
    let got_pairs: Vec<(&str, String)> = got.iter().map(|(a, t, _)| (a.as_str(), t.clone())).collect();
    assert_eq!(got_pairs, expected, "one record per change, newest first");
    assert!(got.iter().all(|(_, _, actor)| actor == "admin"), "{got:?}");

    let raw = app
        .call(Method::GET, "/api/admin-events?limit=1000", Some(ADMIN), None)
        .await;
    let text = raw.expect(StatusCode::OK).to_string();
    assert!(!text.contains(ADMIN), "the token itself is never recorded");
    for e in raw.body["items"].as_array().unwrap() {
        assert!(e["id"].is_string() && e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
}

/// Pages of `limit` follow `next_cursor` through every record exactly once, newest first, and the last page's
/// cursor is null; bad parameters are 422, an account key 403, no token 401.
#[tokio::test]
async fn admin_events_page_by_cursor_and_are_admin_only() {
    let app = app().await;
    let key = app.account("acme").await;
    for i in 0..7 {
        let body = json!({"queues": [format!("q{i}")]});
        admin(
            &app,
            Method::PUT,
            &format!("/api/pools/p{i}"),
            Some(body),
            StatusCode::OK,
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/admin-events?limit=3".to_owned(),
            Some(c) => format!("/api/admin-events?limit=3&cursor={c}"),
        };
        let page = admin(&app, Method::GET, &path, None, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|e| e["target"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("p{i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);

    for bad in ["limit=0", "limit=1001", "limit=x", "cursor=abc"] {
        let r = app
            .call(Method::GET, &format!("/api/admin-events?{bad}"), Some(ADMIN), None)
            .await;
        r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    app.call(Method::GET, "/api/admin-events", Some(&key), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    app.call(Method::GET, "/api/admin-events", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

/// `ordo account create`, which writes to the database directly, is recorded with the actor `cli`.
#[tokio::test]
async fn cli_account_create_is_recorded() {
    let app = app().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["account", "create", "fromcli"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "warn")
        .env_remove("ORDO_MASTER_KEYS")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = records(&app).await;
    assert_eq!(
        got,
        vec![("account.create".to_owned(), "fromcli".to_owned(), "cli".to_owned())]
    );
}
