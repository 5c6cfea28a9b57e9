//! Accounts cannot see each other: through the API, and in the database itself (row-level security).

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use super::{app, enqueue};

/// B can neither read, cancel, retry, list nor count A's jobs, not even by id.
#[tokio::test]
async fn account_b_cannot_touch_account_a_jobs() {
    let app = app().await;
    let a = app.account("alpha").await;
    let b = app.account("beta").await;
    let id = enqueue(
        &app,
        &a,
        json!({"kind": "noop", "queue": "secret", "idempotency_key": "k"}),
    )
    .await;

    app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::POST, &format!("/api/jobs/{id}/cancel"), Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(Method::POST, &format!("/api/jobs/{id}/retry"), Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    for path in ["/api/jobs", "/api/jobs?queue=secret", "/api/queues"] {
        let r = app.call(Method::GET, path, Some(&b), None).await;
        assert_eq!(r.expect(StatusCode::OK)["items"], json!([]), "{path}");
    }
    // B may reuse A's idempotency key: keys are per account.
    let own = enqueue(&app, &b, json!({"kind": "noop", "idempotency_key": "k"})).await;
    assert_ne!(own, id);
    // A still sees its job, untouched.
    let r = app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&a), None).await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "available");
}

/// Under B's setting and the API role, raw SQL without any account filter sees none of A's rows.
#[tokio::test]
async fn row_level_security_hides_other_accounts_from_raw_sql() {
    let app = app().await;
    let a = app.account("alpha").await;
    let b = app.account("beta").await;
    enqueue(&app, &a, json!({"kind": "noop"})).await;
    app.call(Method::POST, "/api/queues/q/pause", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    drop(b);

    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let as_account = |account: &'static str| format!("select set_config('ordo.account_id', '{account}', true)");
    for (account, expect) in [("beta", 0i64), ("alpha", 1)] {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("set local role ordo_api").execute(&mut *tx).await.unwrap();
        sqlx::query(&as_account(account)).execute(&mut *tx).await.unwrap();
        let user: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(user, "ordo_api");
        let jobs: i64 = sqlx::query_scalar("select count(*) from job_all")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let pauses: i64 = sqlx::query_scalar("select count(*) from queue_pause")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let accounts: i64 = sqlx::query_scalar("select count(*) from account")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let keys: i64 = sqlx::query_scalar("select count(*) from api_key")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!((jobs, pauses, accounts, keys), (expect, expect, 1, 1), "as {account}");
        // Writing a row of another account is refused too.
        let insert = sqlx::query("insert into job (account_id, kind) values ('alpha', 'noop')")
            .execute(&mut *tx)
            .await;
        assert_eq!(insert.is_ok(), account == "alpha", "insert as {account}: {insert:?}");
        tx.rollback().await.unwrap();
    }
    // Without any setting the API role sees nothing at all.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("set local role ordo_api").execute(&mut *tx).await.unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    tx.rollback().await.unwrap();
}
