//! Least privilege (README, "Database roles"): the API connected as a login role that owns no table and bypasses
//! nothing serves every route, with a worker connected as a role of its own; and an account transaction sees only
//! its own rows even where a query forgets its `account_id` filter.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use ordo::api::{self, AppState};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually, LoginRole};
use ordo::wake::Waker;
use serde_json::{json, Value};
use sqlx::PgPool;

use super::{settings, App, ADMIN};
use crate::support::{fast_config, start_worker};

/// A master key for the test that turns encryption at rest on.
const MASTER_KEYS: &str = "k1:cm9sZXMtdGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODk=";

/// An app whose API connects as a new member of `ordo_api_node`, on a fresh database; the role and its pool too.
async fn least_privileged_app() -> (App, LoginRole, PgPool) {
    let db = testkit::db().await;
    let role = testkit::login_role("ordo_api_node").await;
    let pool = role.pool(&db, 10).await;
    let state = AppState::new(pool.clone(), Waker::disabled(), settings());
    let router = api::router(state.clone());
    (App { db, state, router }, role, pool)
}

/// Creates an account through the admin API (so through the admin path) and returns its key.
async fn account(app: &App, id: &str) -> String {
    let r = app
        .call(Method::POST, "/api/accounts", Some(ADMIN), Some(json!({"id": id})))
        .await;
    r.expect(StatusCode::CREATED)["api_key"].as_str().unwrap().to_owned()
}

fn workflow() -> Value {
    json!({
        "statuses": [{"name": "CREATED"}, {"name": "DONE"}],
        "rulesets": [
            {"name": "Finish", "entity_type": "ORDER", "triggers": ["CREATED"],
             "rules": [{"name": "core.SetState", "props": {"status": "DONE"}}]}
        ]
    })
}

/// Rows of `account`'s in every kind of tenant table: jobs (one with an idempotency key, one cancelled, one
/// waiting), a paused queue, a workflow, an entity with its events, a schedule and a load with a batch. Returns the
/// load's and the batch's ids.
async fn populate(app: &App, key: &str) -> (String, String) {
    let later = json!({"kind": "noop", "queue": "later", "run_at": "2099-01-01T00:00:00Z", "idempotency_key": "k"});
    let r = app.call(Method::POST, "/api/jobs", Some(key), Some(later)).await;
    let id = r.expect(StatusCode::CREATED)["id"].as_str().unwrap().to_owned();
    app.call(Method::POST, &format!("/api/jobs/{id}/cancel"), Some(key), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::POST, "/api/jobs", Some(key), Some(json!({"kind": "noop"})))
        .await
        .expect(StatusCode::CREATED);
    // One that stays waiting whatever the worker does.
    let waits = json!({"kind": "noop", "queue": "later", "run_at": "2099-01-01T00:00:00Z"});
    app.call(Method::POST, "/api/jobs", Some(key), Some(waits))
        .await
        .expect(StatusCode::CREATED);
    app.call(Method::POST, "/api/queues/later/pause", Some(key), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::PUT, "/api/workflows/ORDER::A", Some(key), Some(workflow()))
        .await
        .expect(StatusCode::CREATED);
    let entity = json!({"type": "ORDER", "subtype": "A", "ref": "o-1", "attributes": {"n": 1}});
    app.call(Method::POST, "/api/entities", Some(key), Some(entity))
        .await
        .expect(StatusCode::CREATED);
    let schedule = json!({"name": "nightly", "cron": "0 30 2 * * *", "job": {"kind": "noop"}});
    app.call(Method::POST, "/api/schedules", Some(key), Some(schedule))
        .await
        .expect(StatusCode::CREATED);
    let r = app
        .call(Method::POST, "/api/loads", Some(key), Some(json!({"name": "stock"})))
        .await;
    let load = r.expect(StatusCode::CREATED)["id"].as_str().unwrap().to_owned();
    let batch = json!({"action": "upsert", "entity_type": "inventory",
                       "records": [{"sku_ref": "s-1", "location_ref": "l-1", "qty": 3}]});
    let r = app
        .call(
            Method::POST,
            &format!("/api/loads/{load}/batches"),
            Some(key),
            Some(batch),
        )
        .await;
    let batch = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    (load, batch)
}

/// The API's login role owns no table and has neither superuser nor BYPASSRLS; a query that names no role reads no
/// tenant table at all; and every account route and every admin route works through it, with a worker connected as
/// a member of `ordo_worker` running what they queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_as_least_privileged_role_serves_every_route() {
    let (app, role, pool) = least_privileged_app().await;
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((superuser, bypass), (false, false));
    let owned: i64 = sqlx::query_scalar("select count(*) from pg_tables where tableowner = $1")
        .bind(&role.name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owned, 0);
    // (Its own rights are the narrow path: keys, accounts, wrapped data keys, live workers; see the migration.)
    for table in [
        "job",
        "job_history",
        "event",
        "entity",
        "schedule",
        "load",
        "admin_event",
        "rollout",
    ] {
        let bare = sqlx::query(&format!("select * from {table} limit 1"))
            .execute(&pool)
            .await;
        let code = bare
            .err()
            .and_then(|e| e.as_database_error().and_then(|d| d.code().map(|c| c.into_owned())));
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{table} is unreadable outside a scoped transaction"
        );
    }

    let worker_role = testkit::login_role("ordo_worker").await;
    let worker = start_worker(&worker_role.pool(&app.db, 10).await, fast_config());
    let a = account(&app, "acme").await;
    let b = account(&app, "other").await;
    // Encryption on from here: the accounts have no data key yet, so the API creates and reads them through its
    // own narrow path.
    ordo::crypt::install(Some(MASTER_KEYS.parse().unwrap()), &pool);
    let (load, batch) = populate(&app, &a).await;

    // Jobs, batches (100 jobs: the COPY path), queues.
    let r = app
        .call(
            Method::POST,
            "/api/jobs",
            Some(&a),
            Some(json!({"kind": "noop", "args": {"n": 1}})),
        )
        .await;
    let id = r.expect(StatusCode::CREATED)["id"].as_str().unwrap().to_owned();
    let r = app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&a), None).await;
    assert_eq!(r.expect(StatusCode::OK)["args"], json!({"n": 1}));
    let stored: String = sqlx::query_scalar("select args::text from job_all where id = $1")
        .bind(id.parse::<i64>().unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(stored.contains("ordo:enc:v1"), "sealed at rest: {stored}");
    app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&b), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let jobs: Vec<Value> = (0..100).map(|i| json!({"kind": "noop", "args": {"i": i}})).collect();
    let r = app
        .call(Method::POST, "/api/jobs/batch", Some(&a), Some(json!({"jobs": jobs})))
        .await;
    r.expect(StatusCode::CREATED);
    let cancelled = app
        .call(Method::GET, "/api/jobs?queue=later&state=cancelled", Some(&a), None)
        .await;
    let cancelled = cancelled.expect(StatusCode::OK)["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "/api/jobs?kind_prefix=no".to_owned(),
        format!("/api/jobs?id={cancelled}"),
        "/api/queues/history?minutes=60".to_owned(),
    ] {
        app.call(Method::GET, &path, Some(&a), None)
            .await
            .expect(StatusCode::OK);
    }
    let bulk = json!({"action": "cancel", "queue": "nowhere"});
    app.call(Method::POST, "/api/jobs/bulk", Some(&a), Some(bulk))
        .await
        .expect(StatusCode::OK);
    app.call(Method::POST, &format!("/api/jobs/{cancelled}/retry"), Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::GET, "/api/queues", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::POST, "/api/queues/later/resume", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    eventually(Duration::from_secs(30), "the worker to finish the jobs", || async {
        let r = app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&a), None).await;
        (r.body["state"] == "completed").then_some(())
    })
    .await;

    // Workflows, rules, entities, events (queued, sync, scheduled, cancelled, replayed).
    for path in [
        "/api/workflows",
        "/api/workflows/ORDER::A",
        "/api/workflows/ORDER::A/versions/1.0",
        "/api/rules",
        "/api/entities?type=ORDER",
        "/api/entities/ORDER/o-1",
        "/api/events?entity_type=ORDER&entity_ref=o-1",
    ] {
        app.call(Method::GET, path, Some(&a), None).await.expect(StatusCode::OK);
    }
    let entity = json!({"type": "ORDER", "subtype": "A", "ref": "o-2"});
    app.call(Method::POST, "/api/entities", Some(&a), Some(entity))
        .await
        .expect(StatusCode::CREATED);
    let finish = json!({"name": "Finish", "entity": {"type": "ORDER", "ref": "o-2"}});
    let r = app
        .call(
            Method::POST,
            "/api/events/sync?timeout_ms=20000",
            Some(&a),
            Some(finish.clone()),
        )
        .await;
    let out = r.expect(StatusCode::OK);
    assert_eq!(out["entity"]["status"], "DONE", "{out}");
    let r = app.call(Method::POST, "/api/events", Some(&a), Some(finish)).await;
    let sent = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    app.call(Method::GET, &format!("/api/events/{sent}"), Some(&a), None)
        .await
        .expect(StatusCode::OK);
    let no_match = eventually(
        Duration::from_secs(30),
        "the second Finish to find no match",
        || async {
            let r = app
                .call(Method::GET, &format!("/api/events/{sent}"), Some(&a), None)
                .await;
            (r.body["status"] == "no_match").then_some(())
        },
    );
    no_match.await;
    app.call(Method::POST, &format!("/api/events/{sent}/replay"), Some(&a), None)
        .await
        .expect(StatusCode::ACCEPTED);
    let later =
        json!({"name": "Finish", "entity": {"type": "ORDER", "ref": "o-1"}, "scheduled_at": "2099-01-01T00:00:00Z"});
    let r = app.call(Method::POST, "/api/events", Some(&a), Some(later)).await;
    let scheduled = r.expect(StatusCode::ACCEPTED)["id"].as_str().unwrap().to_owned();
    app.call(Method::DELETE, &format!("/api/events/{scheduled}"), Some(&a), None)
        .await
        .expect(StatusCode::NO_CONTENT);

    // Schedules.
    app.call(Method::GET, "/api/schedules", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::GET, "/api/schedules/nightly", Some(&a), None)
        .await
        .expect(StatusCode::OK);
    app.call(
        Method::PATCH,
        "/api/schedules/nightly",
        Some(&a),
        Some(json!({"paused": true})),
    )
    .await
    .expect(StatusCode::OK);
    app.call(Method::DELETE, "/api/schedules/nightly", Some(&a), None)
        .await
        .expect(StatusCode::NO_CONTENT);

    // Loads and inventory.
    for path in [
        "/api/loads".to_owned(),
        format!("/api/loads/{load}"),
        format!("/api/loads/{load}/batches/{batch}"),
        format!("/api/loads/{load}/batches/{batch}/results"),
    ] {
        app.call(Method::GET, &path, Some(&a), None)
            .await
            .expect(StatusCode::OK);
    }
    eventually(Duration::from_secs(30), "the load's position", || async {
        let r = app.call(Method::GET, "/api/inventory/s-1/l-1", Some(&a), None).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;

    // Admin routes, through the admin pool.
    let r = app
        .call(Method::POST, "/api/accounts/other/keys", Some(ADMIN), None)
        .await;
    let key_id = r.expect(StatusCode::CREATED)["key_id"].as_str().unwrap().to_owned();
    app.call(
        Method::DELETE,
        &format!("/api/accounts/other/keys/{key_id}"),
        Some(ADMIN),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let limits = json!({"weight": 2, "queues": {"default": {"max_running": 5}}});
    app.call(Method::PUT, "/api/accounts/acme/limits", Some(ADMIN), Some(limits))
        .await
        .expect(StatusCode::OK);
    app.call(
        Method::PUT,
        "/api/pools/batch",
        Some(ADMIN),
        Some(json!({"queues": ["bulk"]})),
    )
    .await
    .expect(StatusCode::OK);
    let scaling = json!({"min": 0, "max": 2, "target_per_worker": 10, "scale_down_delay_s": 30});
    app.call(Method::PUT, "/api/pools/batch/scaling", Some(ADMIN), Some(scaling))
        .await
        .expect(StatusCode::OK);
    for path in [
        "/api/accounts",
        "/api/accounts/acme/limits",
        "/api/accounts/acme/usage",
        "/api/pools",
        "/api/rollouts",
        "/api/admin-events",
        "/api/workers",
        "/api/admin/jobs",
        "/api/admin/jobs?account=acme",
    ] {
        app.call(Method::GET, path, Some(ADMIN), None)
            .await
            .expect(StatusCode::OK);
    }
    app.call(Method::DELETE, "/api/accounts/other", Some(ADMIN), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::GET, "/api/jobs", Some(&b), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    worker.stop().await;
}

/// Every table under row-level security, and the column naming its account.
async fn tenant_tables(owner: &PgPool) -> Vec<(String, &'static str)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select relname::text from pg_class where relnamespace = 'public'::regnamespace and relrowsecurity \
         order by relname",
    )
    .fetch_all(owner)
    .await
    .unwrap();
    assert!(tables.len() >= 20, "{tables:?}");
    tables
        .into_iter()
        .map(|t| {
            let column = if t == "account" { "id" } else { "account_id" };
            (t, column)
        })
        .collect()
}

/// In an account transaction of the least-privileged API role, a query without any `account_id` filter sees
/// exactly the account's own rows of every tenant table, while the other account's rows exist; data keys and the
/// admin audit are not readable at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_transaction_without_filter_sees_only_its_rows() {
    let (app, _role, pool) = least_privileged_app().await;
    let worker_role = testkit::login_role("ordo_worker").await;
    let worker = start_worker(&worker_role.pool(&app.db, 10).await, fast_config());
    let a = account(&app, "alpha").await;
    let b = account(&app, "beta").await;
    populate(&app, &a).await;
    populate(&app, &b).await;
    // The entities' CREATE events ran, so the event log holds audit records of both too.
    eventually(Duration::from_secs(30), "both entities to be processed", || async {
        let done: i64 = sqlx::query_scalar("select count(*) from event where status = 'success'")
            .fetch_one(&app.db.pool)
            .await
            .ok()?;
        (done >= 2).then_some(())
    })
    .await;
    worker.stop().await;

    let alpha = AccountId::parse("alpha").unwrap();
    for (table, column) in tenant_tables(&app.db.pool).await {
        let own_sql = format!("select count(*) from {table} where {column} = 'alpha'");
        let own: i64 = sqlx::query_scalar(&own_sql).fetch_one(&app.db.pool).await.unwrap();
        let mut tx = testkit::api_transaction(&pool, &alpha).await;
        // No filter at all, and a filter asking for the other accounts' rows only.
        let all_sql = format!("select count(*) from {table}");
        let seen: i64 = sqlx::query_scalar(&all_sql).fetch_one(&mut *tx).await.unwrap();
        let foreign_sql = format!("select count(*) from {table} where {column} <> 'alpha'");
        let foreign: i64 = sqlx::query_scalar(&foreign_sql).fetch_one(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            (seen, foreign),
            (own, 0),
            "{table}: all of alpha's rows and none of beta's"
        );
    }
    // The populated tables really hold both accounts' rows.
    for table in [
        "job",
        "job_history",
        "queue_pause",
        "workflow",
        "entity",
        "event",
        "schedule",
        "load",
    ] {
        let beta: i64 = sqlx::query_scalar(&format!("select count(*) from {table} where account_id = 'beta'"))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert!(beta > 0, "{table} holds beta's rows");
    }
    drop(b);
    for table in ["account_key", "admin_event"] {
        let mut tx = testkit::api_transaction(&pool, &alpha).await;
        let read = sqlx::query(&format!("select * from {table} limit 1"))
            .execute(&mut *tx)
            .await;
        assert!(read.is_err(), "{table} is unreadable in an account transaction");
    }
}

/// Every table under row-level security admits the admin and worker roles (the policies a new tenant table's
/// migration must add), and the API's own role may only look keys up.
#[tokio::test]
async fn every_tenant_table_has_policies_for_each_role() {
    let db = testkit::db().await;
    for (table, _) in tenant_tables(&db.pool).await {
        let roles: Vec<String> = sqlx::query_scalar(
            "select distinct unnest(roles)::text from pg_policies where schemaname = 'public' and tablename = $1 \
             order by 1",
        )
        .bind(&table)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        for role in ["ordo_admin", "ordo_api", "ordo_worker"] {
            assert!(
                roles.iter().any(|r| r == role),
                "{table} has no policy for {role}: {roles:?}"
            );
        }
        let node = roles.iter().any(|r| r == "ordo_api_node");
        assert_eq!(node, table == "account" || table == "api_key", "{table}: {roles:?}");
    }
}

/// The real binaries as their own login roles: `ordo api` as a member of `ordo_api_node` (it checks the schema,
/// authenticates and serves admin and account routes) and `ordo worker` as one of `ordo_worker`, with encryption
/// on; a job goes from the API through the worker to completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_processes_run_as_their_roles() {
    let db = testkit::db().await;
    let api_role = testkit::login_role("ordo_api_node").await;
    let worker_role = testkit::login_role("ordo_worker").await;
    let http = reqwest::Client::new();
    let env = [("ORDO_ADMIN_TOKEN", ADMIN), ("ORDO_MASTER_KEYS", MASTER_KEYS)];
    let (_api, url) = crate::support::spawn_api_process(&api_role.url(&db), &env, "http://127.0.0.1", &http).await;
    let _worker = crate::support::spawn_worker_process(&worker_role.url(&db), &env[1..], &[]);
    let created: Value = http
        .post(format!("{url}/api/accounts"))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let job: Value = http
        .post(format!("{url}/api/jobs"))
        .bearer_auth(&key)
        .json(&json!({"kind": "noop", "args": {"secret": "s3"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap_or_else(|| panic!("{job}")).to_owned();
    let done = eventually(Duration::from_secs(60), "the job to complete", || async {
        let j: Value = http
            .get(format!("{url}/api/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (j["state"] == "completed").then_some(j)
    })
    .await;
    assert_eq!(done["args"], json!({"secret": "s3"}));
}

/// Maintenance's DDL works for a worker that owns no table: it attaches history days and drops one past retention
/// through the owner's functions, and those functions drop nothing but history days.
#[tokio::test]
async fn worker_role_attaches_and_drops_history_days() {
    let db = testkit::db().await;
    let role = testkit::login_role("ordo_worker").await;
    let pool = role.pool(&db, 2).await;
    let old = (chrono::Utc::now() - chrono::Duration::days(30)).date_naive();
    let attached: bool = sqlx::query_scalar("select job_history_add_day('unkeyed', $1)")
        .bind(old)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(attached);
    let part = format!("job_history_unkeyed_{}", old.format("%Y%m%d"));
    let exists = |name: String| {
        let owner = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select to_regclass($1) is not null")
                .bind(name)
                .fetch_one(&owner)
                .await
                .unwrap()
        }
    };
    assert!(exists(part.clone()).await);
    ordo::queue::add_history_days(&pool).await.unwrap();
    let retention = ordo::queue::Retention {
        finished: Duration::from_secs(24 * 3600),
        keyed: Duration::from_secs(7 * 24 * 3600),
    };
    let mut cursor = None;
    let retired = ordo::queue::retire_history(&pool, retention, &mut cursor, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(retired.partitions_dropped >= 1, "{retired:?}");
    assert!(!exists(part).await, "the old day is dropped");
    // Nothing but a history day: the function ignores any other table.
    sqlx::query("select job_history_drop_day('job')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(exists("job".to_owned()).await);
    let denied = sqlx::query("drop table job_history_unkeyed_default")
        .execute(&pool)
        .await;
    assert!(denied.is_err(), "the worker role cannot drop tables itself");
}
