//! Jobs and queues over HTTP: enqueue, idempotency, batches, listing, actions.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Barrier;

use super::{app, enqueue, error_paths, send};

async fn count_jobs(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from job_all")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A created job answers 201 with the contract's job shape and defaults filled in.
#[tokio::test]
async fn enqueue_returns_the_job_with_defaults() {
    let app = app().await;
    let key = app.account("acme").await;
    let r = app
        .call(Method::POST, "/api/jobs", Some(&key), Some(json!({"kind": "noop"})))
        .await;
    let job = r.expect(StatusCode::CREATED);
    assert!(job["id"].is_string());
    assert_eq!(job["queue"], "default");
    assert_eq!(job["priority"], 5);
    assert_eq!(job["max_attempts"], 20);
    assert_eq!(job["state"], "available");
    assert_eq!(job["args"], json!({}));
    assert_eq!(job["errors"], json!([]));
    for field in [
        "kind",
        "run_at",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "attempt",
        "idempotency_key",
        "concurrency_key",
        "pool",
        "version",
    ] {
        assert!(job.get(field).is_some(), "job lacks {field}: {job}");
    }
    let id = job["id"].as_str().unwrap();
    let got = app
        .call(Method::GET, &format!("/api/jobs/{id}"), Some(&key), None)
        .await;
    assert_eq!(got.expect(StatusCode::OK)["id"], id);
}

/// A key in the body replays the same job with 200 and `Idempotent-Replayed: true`; another payload is a 409.
#[tokio::test]
async fn idempotency_key_field_replays_and_detects_mismatch() {
    let app = app().await;
    let key = app.account("acme").await;
    let body = json!({"kind": "noop", "args": {"n": 1}, "idempotency_key": "order-1"});
    let first = app
        .call(Method::POST, "/api/jobs", Some(&key), Some(body.clone()))
        .await;
    first.expect(StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = app.call(Method::POST, "/api/jobs", Some(&key), Some(body)).await;
    again.expect(StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    let other = app
        .call(
            Method::POST,
            "/api/jobs",
            Some(&key),
            Some(json!({"kind": "noop", "args": {"n": 2}, "idempotency_key": "order-1"})),
        )
        .await;
    other.expect(StatusCode::CONFLICT);
    // Defaults are not filled in before comparing: spelling out the default is a different request.
    let explicit = app
        .call(
            Method::POST,
            "/api/jobs",
            Some(&key),
            Some(json!({"kind": "noop", "args": {"n": 1}, "priority": 5, "idempotency_key": "order-1"})),
        )
        .await;
    explicit.expect(StatusCode::CONFLICT);
    assert_eq!(count_jobs(&app.db.pool).await, 1);
}

fn with_header_key(key: &str, idem: &str, body: &Value) -> Request<Body> {
    Request::post("/api/jobs")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// The `Idempotency-Key` header works like the field; a header that contradicts the field is a 422.
#[tokio::test]
async fn idempotency_key_header_replays_and_detects_mismatch() {
    let app = app().await;
    let key = app.account("acme").await;
    let body = json!({"kind": "noop"});
    let first = app.send(with_header_key(&key, "h-1", &body)).await;
    first.expect(StatusCode::CREATED);
    assert_eq!(first.body["idempotency_key"], "h-1");
    let again = app.send(with_header_key(&key, "h-1", &body)).await;
    again.expect(StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    app.send(with_header_key(&key, "h-1", &json!({"kind": "sleep"})))
        .await
        .expect(StatusCode::CONFLICT);
    app.send(with_header_key(
        &key,
        "h-2",
        &json!({"kind": "noop", "idempotency_key": "other"}),
    ))
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count_jobs(&app.db.pool).await, 1);
}

/// Fifty concurrent requests with one key create exactly one job, and all of them answer with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_requests_with_one_key_create_one_job() {
    let app = super::app_on(ordo::testkit::db_with_max(16).await, super::settings());
    let key = app.account("acme").await;
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let router = app.router.clone();
        let barrier = Arc::clone(&barrier);
        let req = with_header_key(&key, "race", &json!({"kind": "noop", "args": {"x": 1}}));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            send(&router, req).await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{r:?}");
        if r.status == StatusCode::CREATED {
            created += 1;
        }
        ids.insert(r.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(count_jobs(&app.db.pool).await, 1);
}

fn batch(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"kind": "noop", "args": {"i": i}})).collect()
}

/// A 10 000-job batch is enqueued whole; one invalid job anywhere rejects all of it, naming its index.
#[tokio::test]
async fn batch_of_ten_thousand_is_all_or_nothing() {
    let app = app().await;
    let key = app.account("acme").await;

    let mut jobs = batch(10_000);
    jobs[7777]["priority"] = json!(42);
    jobs[9999]["kind"] = json!(null);
    let r = app
        .call(Method::POST, "/api/jobs/batch", Some(&key), Some(json!({"jobs": jobs})))
        .await;
    let body = r.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_paths(body), ["/jobs/7777/priority", "/jobs/9999/kind"]);
    assert_eq!(count_jobs(&app.db.pool).await, 0);

    let r = app
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(&key),
            Some(json!({"jobs": batch(10_000)})),
        )
        .await;
    let items = r.expect(StatusCode::CREATED)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 10_000);
    assert!(items.iter().all(|i| i["replayed"] == false && i["id"].is_string()));
    assert_eq!(count_jobs(&app.db.pool).await, 10_000);

    let r = app
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(&key),
            Some(json!({"jobs": batch(10_001)})),
        )
        .await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(count_jobs(&app.db.pool).await, 10_000);
}

/// A batch whose idempotency key conflicts commits nothing; a replayed batch reports `replayed`.
#[tokio::test]
async fn batch_idempotency_conflict_rolls_back_everything() {
    let app = app().await;
    let key = app.account("acme").await;
    let first = json!({"jobs": [{"kind": "noop", "idempotency_key": "a"}, {"kind": "noop"}]});
    app.call(Method::POST, "/api/jobs/batch", Some(&key), Some(first.clone()))
        .await
        .expect(StatusCode::CREATED);
    let replay = app
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(&key),
            Some(json!({"jobs": [{"kind": "noop", "idempotency_key": "a"}]})),
        )
        .await;
    assert_eq!(replay.expect(StatusCode::CREATED)["items"][0]["replayed"], true);
    let clash = json!({"jobs": [{"kind": "noop"}, {"kind": "other", "idempotency_key": "a"}]});
    let r = app.call(Method::POST, "/api/jobs/batch", Some(&key), Some(clash)).await;
    r.expect(StatusCode::CONFLICT);
    assert_eq!(r.body["errors"][0]["path"], "/jobs/1/idempotency_key");
    assert_eq!(count_jobs(&app.db.pool).await, 2);
}

/// Listing is newest first, paginated by cursor, and filters by queue, state and kind.
#[tokio::test]
async fn list_pages_newest_first_with_filters() {
    let app = app().await;
    let key = app.account("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let q = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(enqueue(&app, &key, json!({"kind": "noop", "queue": q})).await);
    }
    let page1 = app.call(Method::GET, "/api/jobs?limit=2", Some(&key), None).await;
    let body = page1.expect(StatusCode::OK).clone();
    let got: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = body["next_cursor"].as_str().unwrap();
    let page2 = app
        .call(
            Method::GET,
            &format!("/api/jobs?limit=2&cursor={cursor}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(page2.expect(StatusCode::OK)["items"][0]["id"], ids[2].as_str());
    let last = app.call(Method::GET, "/api/jobs?limit=5", Some(&key), None).await;
    assert!(last.expect(StatusCode::OK)["next_cursor"].is_null());
    let even = app.call(Method::GET, "/api/jobs?queue=even", Some(&key), None).await;
    assert_eq!(even.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 3);
    let none = app
        .call(Method::GET, "/api/jobs?state=completed&kind=noop", Some(&key), None)
        .await;
    assert!(none.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty());
    for bad in [
        "/api/jobs?limit=0",
        "/api/jobs?limit=1001",
        "/api/jobs?state=dead",
        "/api/jobs?cursor=zz",
    ] {
        app.call(Method::GET, bad, Some(&key), None)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
}

/// Cancel finishes a waiting job and refuses a finished one with 409; retry makes it available again.
#[tokio::test]
async fn cancel_and_retry_follow_the_state_machine() {
    let app = app().await;
    let key = app.account("acme").await;
    let id = enqueue(&app, &key, json!({"kind": "noop"})).await;
    let r = app
        .call(Method::POST, &format!("/api/jobs/{id}/cancel"), Some(&key), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "cancelled");
    app.call(Method::POST, &format!("/api/jobs/{id}/cancel"), Some(&key), None)
        .await
        .expect(StatusCode::CONFLICT);
    let r = app
        .call(Method::POST, &format!("/api/jobs/{id}/retry"), Some(&key), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "available");
    for path in [
        "/api/jobs/999999",
        "/api/jobs/999999/cancel",
        "/api/jobs/not-a-number/retry",
    ] {
        let m = if path.ends_with("999999") {
            Method::GET
        } else {
            Method::POST
        };
        app.call(m, path, Some(&key), None).await.expect(StatusCode::NOT_FOUND);
    }
}

/// Queue figures count the account's jobs; pause and resume answer the queue.
#[tokio::test]
async fn queues_list_pause_and_resume() {
    let app = app().await;
    let key = app.account("acme").await;
    enqueue(&app, &key, json!({"kind": "noop", "queue": "mail"})).await;
    let r = app.call(Method::GET, "/api/queues", Some(&key), None).await;
    let body = r.expect(StatusCode::OK);
    assert_eq!(body["items"][0]["queue"], "mail");
    assert_eq!(body["items"][0]["available"], 1);
    assert_eq!(body["items"][0]["paused"], false);
    let r = app.call(Method::POST, "/api/queues/mail/pause", Some(&key), None).await;
    assert_eq!(r.expect(StatusCode::OK)["paused"], true);
    let r = app
        .call(Method::POST, "/api/queues/empty/pause", Some(&key), None)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["paused"], true);
    let r = app
        .call(Method::POST, "/api/queues/mail/resume", Some(&key), None)
        .await;
    let body = r.expect(StatusCode::OK);
    assert_eq!(body["paused"], false);
    assert_eq!(body["available"], 1);
}

/// Probes answer without a key, and /metrics exposes request and enqueue counters by route template.
#[tokio::test]
async fn health_ready_and_metrics() {
    let app = app().await;
    let key = app.account("acme").await;
    app.call(Method::GET, "/healthz", None, None)
        .await
        .expect(StatusCode::OK);
    app.call(Method::GET, "/readyz", None, None)
        .await
        .expect(StatusCode::OK);
    let id = enqueue(&app, &key, json!({"kind": "noop"})).await;
    app.call(Method::GET, &format!("/api/jobs/{id}"), Some(&key), None)
        .await
        .expect(StatusCode::OK);
    let r = app.call(Method::GET, "/metrics", None, None).await;
    let text = r.body.as_str().unwrap().to_owned();
    assert!(
        text.contains("ordo_http_requests_total{route=\"/api/jobs/{id}\",method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("ordo_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("ordo_jobs_enqueued_total"), "{text}");
    assert!(
        !text.contains(&format!("/api/jobs/{id}\"")),
        "job ids never become labels"
    );
}

/// Queue names are tenant input: /metrics labels a queue by its name only when a worker pool declares it (or it is
/// `default`); every other queue counts as `other`, so tenants cannot add series.
#[tokio::test]
async fn metrics_label_only_declared_queues() {
    let app = app().await;
    let key = app.account("acme").await;
    sqlx::query("insert into worker_pool (name, queues) values ('orders', array['orders'])")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    ordo::rollout::declare_pool_queues(app.db.pool.clone(), stop).await;
    for queue in ["orders", "default", "tenant-chosen-name"] {
        enqueue(&app, &key, json!({"kind": "noop", "queue": queue})).await;
    }
    let r = app.call(Method::GET, "/metrics", None, None).await;
    let text = r.body.as_str().unwrap().to_owned();
    for label in ["orders", "default", "other"] {
        assert!(
            text.contains(&format!("ordo_jobs_enqueued_total{{queue=\"{label}\"}} 1")),
            "{label}: {text}"
        );
    }
    assert!(!text.contains("tenant-chosen-name"), "{text}");
}

/// Batches may carry up to 16 MiB (single requests only 1 MiB).
#[tokio::test]
async fn batch_body_limit_is_sixteen_mebibytes() {
    let app = app().await;
    let key = app.account("acme").await;
    let pad = "x".repeat(1000);
    let jobs: Vec<Value> = (0..3000)
        .map(|i| json!({"kind": "noop", "args": {"i": i, "pad": pad}}))
        .collect();
    let r = app
        .call(Method::POST, "/api/jobs/batch", Some(&key), Some(json!({"jobs": jobs})))
        .await;
    assert_eq!(r.expect(StatusCode::CREATED)["items"].as_array().unwrap().len(), 3000);
    let huge = "x".repeat(17 << 20);
    let r = app
        .call(
            Method::POST,
            "/api/jobs/batch",
            Some(&key),
            Some(json!({"jobs": [{"kind": "noop", "args": {"pad": huge}}]})),
        )
        .await;
    r.expect(StatusCode::PAYLOAD_TOO_LARGE);
}

/// Concurrent enqueues of several accounts share transactions (group commit) without mixing them up: each request
/// gets its own job in its own account, and an idempotency conflict fails only its own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_enqueues_of_two_accounts_get_their_own_answers() {
    let app = super::app_on(ordo::testkit::db_with_max(16).await, super::settings());
    let a = app.account("alpha").await;
    let b = app.account("beta").await;
    enqueue(&app, &a, json!({"kind": "noop", "idempotency_key": "taken"})).await;
    let barrier = Arc::new(Barrier::new(60));
    let mut tasks = Vec::new();
    for i in 0..60usize {
        let router = app.router.clone();
        let barrier = Arc::clone(&barrier);
        let key = if i % 2 == 0 { a.clone() } else { b.clone() };
        // Request 10 (account alpha) reuses a key with another payload; beta may use the same key freely.
        let body = if i == 10 || i == 11 {
            json!({"kind": "other", "idempotency_key": "taken"})
        } else {
            json!({"kind": "noop", "args": {"i": i}})
        };
        let req = Request::post("/api/jobs")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (i, send(&router, req).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i == 10 {
            r.expect(StatusCode::CONFLICT);
            continue;
        }
        let job = r.expect(StatusCode::CREATED);
        if i != 11 {
            assert_eq!(job["args"]["i"], i, "request {i} got another request's job");
        }
        let owner: String = sqlx::query_scalar("select account_id from job_all where id = $1::text::bigint")
            .bind(job["id"].as_str().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(owner, if i % 2 == 0 { "alpha" } else { "beta" }, "request {i}");
    }
    assert_eq!(count_jobs(&app.db.pool).await, 60);
}

/// `GET /api/queues` is exact right after the last job of a queue finishes: the queue stays listed with its
/// finished counts (kept by the statements that finish jobs, no cache), and a retried discarded job leaves them.
#[tokio::test]
async fn queue_counts_are_exact_right_after_the_last_job_finishes() {
    use ordo::queue::{self, ClaimRequest, Completion, Failure};
    let app = app().await;
    let key = app.account("acme").await;
    let account = ordo::tenancy::AccountId::parse("acme").unwrap();
    for i in 0..5 {
        enqueue(
            &app,
            &key,
            json!({"kind": "noop", "queue": "fresh", "args": {"i": i}, "max_attempts": 1}),
        )
        .await;
    }
    let kinds = vec!["noop".to_owned()];
    let jobs = queue::claim(
        &mut app.db.pool.acquire().await.unwrap(),
        &ClaimRequest {
            queue: "fresh",
            kinds: &kinds,
            pool: "default",
            version: "v1",
            worker_id: "w",
            lease: std::time::Duration::from_secs(30),
            limit: 10,
        },
        &mut queue::FairShare::new(),
    )
    .await
    .unwrap();
    assert_eq!(jobs.len(), 5);
    let done: Vec<Completion> = jobs[..4]
        .iter()
        .map(|j| Completion {
            id: j.id,
            attempt: j.attempt,
            result: json!(null),
        })
        .collect();
    queue::complete_many(&app.db.pool, &done).await.unwrap();
    let failed = Failure {
        id: jobs[4].id,
        attempt: jobs[4].attempt,
        message: "boom".into(),
        permanent: false,
        retry_at: chrono::Utc::now(),
    };
    queue::fail_many(&app.db.pool, &[failed]).await.unwrap();

    let r = app.call(Method::GET, "/api/queues", Some(&key), None).await;
    let body = r.expect(StatusCode::OK).clone();
    let q = &body["items"][0];
    assert_eq!(q["queue"], "fresh", "listed while it has history: {body}");
    assert_eq!(
        (q["completed"].as_i64(), q["discarded"].as_i64()),
        (Some(4), Some(1)),
        "{body}"
    );
    assert_eq!(q["available"], 0);
    assert_eq!(q["running"], 0);

    // Folding the counters changes no figure; a retried discarded job is no longer counted as discarded.
    queue::fold_stats(&app.db.pool).await.unwrap();
    app.call(
        Method::POST,
        &format!("/api/jobs/{}/retry", jobs[4].id),
        Some(&key),
        None,
    )
    .await
    .expect(StatusCode::OK);
    let r = app.call(Method::GET, "/api/queues", Some(&key), None).await;
    let body = r.expect(StatusCode::OK).clone();
    let q = &body["items"][0];
    assert_eq!(
        (q["completed"].as_i64(), q["discarded"].as_i64()),
        (Some(4), Some(0)),
        "{body}"
    );
    assert_eq!(q["available"], 1);

    // Per-minute history for the dashboard: 5 enqueued, 4 completed, 1 failed attempt, and the discard undone.
    let minutes = queue::throughput(
        &app.db.pool,
        &account,
        Some("fresh"),
        chrono::Utc::now() - chrono::Duration::minutes(5),
    )
    .await
    .unwrap();
    let sum = |f: fn(&queue::Throughput) -> i64| minutes.iter().map(f).sum::<i64>();
    assert_eq!(sum(|m| m.enqueued), 5);
    assert_eq!(sum(|m| m.completed), 4);
    assert_eq!(sum(|m| m.failed), 1);
    assert_eq!(sum(|m| m.discarded), 0);
    // Another account sees none of it.
    let other = ordo::tenancy::AccountId::default_account();
    let none = queue::throughput(
        &app.db.pool,
        &other,
        None,
        chrono::Utc::now() - chrono::Duration::minutes(5),
    )
    .await
    .unwrap();
    assert!(none.is_empty());
}
