//! Accounts and keys through the admin API.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{app, ADMIN};

/// An admin creates an account whose key works at once; keys can be added and revoked, and a revoked key is 401.
#[tokio::test]
async fn admin_creates_accounts_and_manages_keys() {
    let app = app().await;
    let r = app
        .call(
            Method::POST,
            "/api/accounts",
            Some(ADMIN),
            Some(json!({"id": "acme", "name": "Acme"})),
        )
        .await;
    let created = r.expect(StatusCode::CREATED).clone();
    assert_eq!(created["id"], "acme");
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["region"], "local", "region defaults to the node's");
    assert!(created["webhook_secret"].as_str().unwrap().len() >= 64);
    let first = created["api_key"].as_str().unwrap().to_owned();
    app.call(Method::GET, "/api/jobs", Some(&first), None)
        .await
        .expect(StatusCode::OK);

    // Only the hash is stored.
    let stored: i64 = sqlx::query_scalar("select count(*) from api_key where key_hash = sha256($1::text::bytea)")
        .bind(&first)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    let r = app
        .call(Method::POST, "/api/accounts/acme/keys", Some(ADMIN), None)
        .await;
    let key = r.expect(StatusCode::CREATED).clone();
    let second = key["api_key"].as_str().unwrap();
    let key_id = key["key_id"].as_str().unwrap();
    app.call(Method::GET, "/api/jobs", Some(second), None)
        .await
        .expect(StatusCode::OK);

    app.call(
        Method::DELETE,
        &format!("/api/accounts/acme/keys/{key_id}"),
        Some(ADMIN),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(Method::GET, "/api/jobs", Some(second), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    app.call(Method::GET, "/api/jobs", Some(&first), None)
        .await
        .expect(StatusCode::OK);
    app.call(
        Method::DELETE,
        &format!("/api/accounts/acme/keys/{key_id}"),
        Some(ADMIN),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    app.call(Method::POST, "/api/accounts/nobody/keys", Some(ADMIN), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::POST, "/api/accounts/NOT_A_SLUG/keys", Some(ADMIN), None)
        .await
        .expect(StatusCode::NOT_FOUND);
}

/// Accounts list by id with a cursor, secrets never included.
#[tokio::test]
async fn admin_lists_accounts_by_page() {
    let app = app().await;
    for id in ["b", "c", "d"] {
        app.call(
            Method::POST,
            "/api/accounts",
            Some(ADMIN),
            Some(json!({"id": id, "region": "eu"})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let r = app.call(Method::GET, "/api/accounts?limit=2", Some(ADMIN), None).await;
    let page = r.expect(StatusCode::OK).clone();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(page["items"][0].get("api_key").is_none() && page["items"][0].get("webhook_secret").is_none());
    assert_eq!(page["items"][0]["region"], "eu");
    let cursor = page["next_cursor"].as_str().unwrap();
    let r = app
        .call(
            Method::GET,
            &format!("/api/accounts?cursor={cursor}"),
            Some(ADMIN),
            None,
        )
        .await;
    let ids: Vec<String> = r.expect(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["d", "default"]);
}

/// `ordo account create` prints the key and secret once, and the key authenticates.
#[tokio::test]
async fn cli_account_create_prints_working_key() {
    let app = app().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["account", "create", "cli-acct", "--name", "From CLI"])
        .env("DATABASE_URL", &app.db.url)
        .env_remove("ORDO_REGION")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().find_map(|l| l.strip_prefix("api_key=")).unwrap();
    assert!(
        stdout.lines().any(|l| l.starts_with("webhook_secret=whsec_")),
        "{stdout}"
    );
    app.call(Method::GET, "/api/jobs", Some(key), None)
        .await
        .expect(StatusCode::OK);
}
