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

/// Deleting an account answers 204 and its keys 401 at once; it is no longer listed; the purge then removes every
/// row of it in bounded passes and leaves another account untouched; an unknown or deleted account is 404.
#[tokio::test]
async fn deleting_an_account_revokes_its_keys_and_the_purge_removes_only_its_rows() {
    let app = app().await;
    let mut keys = Vec::new();
    for id in ["acme", "globex"] {
        let r = app
            .call(Method::POST, "/api/accounts", Some(ADMIN), Some(json!({"id": id})))
            .await;
        let key = r.expect(StatusCode::CREATED)["api_key"].as_str().unwrap().to_owned();
        for n in 0..5 {
            app.call(
                Method::POST,
                "/api/jobs",
                Some(&key),
                Some(json!({"kind": "noop", "args": {"n": n}})),
            )
            .await
            .expect(StatusCode::CREATED);
        }
        app.call(Method::POST, "/api/queues/default/pause", Some(&key), None)
            .await
            .expect(StatusCode::OK);
        let limits =
            json!({"weight": 2, "queues": {"default": {"max_running": 3}}, "kinds": {"noop": {"max_per_second": 9}}});
        app.call(
            Method::PUT,
            &format!("/api/accounts/{id}/limits"),
            Some(ADMIN),
            Some(limits),
        )
        .await
        .expect(StatusCode::OK);
        keys.push(key);
    }
    let (acme, globex) = (&keys[0], &keys[1]);

    app.call(Method::DELETE, "/api/accounts/acme", Some(ADMIN), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::GET, "/api/jobs", Some(acme), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let listed = app.call(Method::GET, "/api/accounts", Some(ADMIN), None).await;
    assert!(
        !listed.expect(StatusCode::OK).to_string().contains("\"acme\""),
        "{}",
        listed.body
    );
    for path in ["/api/accounts/acme", "/api/accounts/nobody", "/api/accounts/NOT_A_SLUG"] {
        app.call(Method::DELETE, path, Some(ADMIN), None)
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    app.call(Method::GET, "/api/accounts/acme/limits", Some(ADMIN), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, "/api/accounts/globex", Some(acme), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);

    // Bounded passes: two rows at most each, until nothing is left.
    let mut passes = 0;
    while ordo::tenancy::purge_deleted(&app.db.pool, 2).await.unwrap() > 0 {
        passes += 1;
        assert!(passes < 100, "the purge never ends");
    }
    assert!(passes > 5, "{passes} passes");
    for (what, sql) in [
        ("jobs", "select count(*) from job_all where account_id = $1"),
        (
            "paused queues",
            "select count(*) from queue_pause where account_id = $1",
        ),
        ("api keys", "select count(*) from api_key where account_id = $1"),
        ("weights", "select count(*) from account_share where account_id = $1"),
        (
            "queue limits",
            "select count(*) from account_queue_limit where account_id = $1",
        ),
        (
            "kind limits",
            "select count(*) from account_kind_limit where account_id = $1",
        ),
        ("account", "select count(*) from account where id = $1"),
    ] {
        for (account, kept) in [("acme", false), ("globex", true)] {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(account)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            assert_eq!(n > 0, kept, "{what} of {account}: {n}");
        }
    }
    let jobs = app.call(Method::GET, "/api/jobs", Some(globex), None).await;
    assert_eq!(jobs.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 5);
}
