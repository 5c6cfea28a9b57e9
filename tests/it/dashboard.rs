//! What the dashboard reads, below the browser: the per-minute history (counters and samples), job search and bulk
//! actions, workers with their running jobs, the admin's listing across accounts, and entities in natural ref
//! order by status; through the queue's functions and through the HTTP API.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::Utc;
use ordo::queue::{self, BulkAction, JobFilter, JobState, NewJob};
use ordo::tenancy::{self, AccountId};
use ordo::testkit;
use serde_json::json;
use sqlx::PgPool;

use crate::api::{app, ADMIN};
use crate::queue::claim_n;
use crate::support::acct;

async fn enqueue_in(pool: &PgPool, account: &AccountId, job: NewJob) -> queue::Job {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, account, job).await.unwrap().job
}

async fn enqueue(pool: &PgPool, job: NewJob) -> queue::Job {
    enqueue_in(pool, &acct(), job).await
}

fn ids(jobs: &[queue::Job]) -> Vec<i64> {
    jobs.iter().map(|j| j.id.0).collect()
}

/// Maintenance samples the queues: a minute's sample holds the depth, running jobs and the oldest wait, once per
/// queue and minute (sampling again never doubles a minute); the minutes combine it with the counters, per queue or
/// summed; pruning drops old samples.
#[tokio::test]
async fn history_minutes_combine_counters_and_samples() {
    let db = testkit::db().await;
    for _ in 0..3 {
        enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    }
    enqueue(&db.pool, NewJob::new("noop", json!({})).queue("mail")).await;
    let running = claim_n(&db.pool, 1, Duration::from_secs(60)).await;
    assert_eq!(running.len(), 1);

    let maintainer = queue::Maintainer::new(db.pool.clone(), "m".into(), queue::RetryPolicy::default());
    assert!(maintainer.tick().await.unwrap(), "holds the maintenance lease");
    let per_minute: Vec<i64> = sqlx::query_scalar("select count(*) from queue_sample group by minute")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(per_minute, [2], "one row per queue");
    // Again: nothing in the same minute; a minute that began meanwhile gets its own rows.
    let again = queue::sample_queues(&db.pool).await.unwrap();
    assert!(again == 0 || again == 2, "{again}");

    let since = Utc::now() - chrono::Duration::minutes(5);
    let mut conn = db.pool.acquire().await.unwrap();
    let all = queue::minutes(&mut conn, &acct(), None, since).await.unwrap();
    let last = all.last().expect("this minute");
    assert_eq!(all.iter().map(|m| m.enqueued).sum::<i64>(), 4);
    assert_eq!(last.available, Some(3), "{all:?}");
    assert_eq!(last.running, Some(1));
    assert!(last.oldest_wait_ms.is_some_and(|ms| ms >= 0));

    let mail = queue::minutes(&mut conn, &acct(), Some("mail"), since).await.unwrap();
    assert_eq!(mail.iter().map(|m| m.enqueued).sum::<i64>(), 1);
    assert_eq!(mail.last().unwrap().available, Some(1));

    // Another account sees none of it.
    let other = AccountId::parse("other").unwrap();
    tenancy::create_account(&db.pool, &other, "other", "local")
        .await
        .unwrap();
    assert!(queue::minutes(&mut conn, &other, None, since).await.unwrap().is_empty());

    sqlx::query("update queue_sample set minute = minute - interval '2 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::prune_samples(&db.pool, Duration::from_secs(86_400))
            .await
            .unwrap(),
        2
    );
}

/// The search finds jobs by id, idempotency key (live or finished), kind prefix, state and creation time, in both
/// tables; the admin's listing spans accounts and filters by one.
#[tokio::test]
async fn job_search_filters_both_tables_and_accounts() {
    let db = testkit::db().await;
    let other = AccountId::parse("other").unwrap();
    tenancy::create_account(&db.pool, &other, "other", "local")
        .await
        .unwrap();
    let a = enqueue(&db.pool, NewJob::new("mail.send", json!({})).idempotency_key("k-a")).await;
    let b = enqueue(&db.pool, NewJob::new("mail.bounce", json!({})).idempotency_key("k-b")).await;
    let c = enqueue(&db.pool, NewJob::new("report", json!({}))).await;
    let theirs = enqueue_in(
        &db.pool,
        &other,
        NewJob::new("mail.send", json!({})).idempotency_key("k-a"),
    )
    .await;
    // b finishes: history.
    let mut conn = db.pool.acquire().await.unwrap();
    queue::cancel(&mut conn, &acct(), b.id).await.unwrap();

    let find = |f: JobFilter| {
        let pool = db.pool.clone();
        // A page of 10 unless the filter asks for another size.
        let limit = if f.limit == 0 { 10 } else { f.limit };
        async move { queue::list(&pool, &acct(), &JobFilter { limit, ..f }).await.unwrap() }
    };
    let (page, _) = find(JobFilter {
        id: Some(c.id),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![c.id.0]);
    let (page, _) = find(JobFilter {
        id: Some(theirs.id),
        ..Default::default()
    })
    .await;
    assert!(page.is_empty(), "another account's job by id");
    let (page, _) = find(JobFilter {
        idempotency_key: Some("k-b".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![b.id.0], "a finished job by its key");
    let (page, _) = find(JobFilter {
        idempotency_key: Some("k-a".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![a.id.0], "only this account's job of the key");
    let (page, _) = find(JobFilter {
        kind_prefix: Some("mail.".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![b.id.0, a.id.0]);
    let (page, _) = find(JobFilter {
        kind_prefix: Some("mail.".into()),
        state: Some(JobState::Cancelled),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![b.id.0]);
    let (page, _) = find(JobFilter {
        created_from: Some(Utc::now() - chrono::Duration::hours(1)),
        created_to: Some(Utc::now() + chrono::Duration::minutes(1)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![c.id.0, b.id.0, a.id.0]);
    let (page, _) = find(JobFilter {
        created_to: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    })
    .await;
    assert!(page.is_empty());
    // Paging: one at a time, newest first.
    let (page, next) = find(JobFilter {
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![c.id.0]);
    let (page, _) = find(JobFilter {
        before: next,
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![b.id.0]);

    let everyone = |f: JobFilter| {
        let pool = db.pool.clone();
        async move { queue::list_all(&pool, &JobFilter { limit: 10, ..f }).await.unwrap() }
    };
    let (page, _) = everyone(JobFilter::default()).await;
    assert_eq!(ids(&page), vec![theirs.id.0, c.id.0, b.id.0, a.id.0]);
    assert_eq!(page[0].account_id, "other");
    let (page, _) = everyone(JobFilter {
        idempotency_key: Some("k-a".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![theirs.id.0, a.id.0]);
    let (page, _) = everyone(JobFilter {
        state: Some(JobState::Cancelled),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&page), vec![b.id.0], "history of every account");
}

/// A bulk action changes at most its limit, newest first, says when more match, skips jobs whose state does not
/// allow it, and leaves jobs above `before` alone.
#[tokio::test]
async fn bulk_cancel_and_retry_are_bounded() {
    let db = testkit::db().await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(enqueue(&db.pool, NewJob::new("noop", json!({})).queue("bulk")).await);
    }
    let mut conn = db.pool.acquire().await.unwrap();
    let f = JobFilter {
        queue: Some("bulk".into()),
        limit: 3,
        ..Default::default()
    };
    let out = queue::bulk(&mut conn, &acct(), &f, BulkAction::Cancel).await.unwrap();
    assert_eq!((out.matched, out.changed, out.skipped, out.more), (3, 3, 0, true));
    // Cancelling everything again: the three are finished (skipped), two change.
    let all = JobFilter {
        limit: 1000,
        ..f.clone()
    };
    let out = queue::bulk(&mut conn, &acct(), &all, BulkAction::Cancel).await.unwrap();
    assert_eq!((out.matched, out.changed, out.skipped, out.more), (5, 2, 3, false));
    // Retry the cancelled ones below the newest: the newest stays cancelled.
    let older = JobFilter {
        state: Some(JobState::Cancelled),
        before: Some(jobs[4].id),
        ..all.clone()
    };
    let out = queue::bulk(&mut conn, &acct(), &older, BulkAction::Retry)
        .await
        .unwrap();
    assert_eq!((out.matched, out.changed), (4, 4));
    assert_eq!(
        queue::get(&db.pool, &acct(), jobs[4].id).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        queue::get(&db.pool, &acct(), jobs[0].id).await.unwrap().state,
        JobState::Available
    );
}

/// Running jobs are counted per worker (their lease owner).
#[tokio::test]
async fn running_jobs_are_counted_per_worker() {
    let db = testkit::db().await;
    for _ in 0..3 {
        enqueue(&db.pool, NewJob::new("noop", json!({}))).await;
    }
    assert!(queue::running_by_worker(&db.pool).await.unwrap().is_empty());
    claim_n(&db.pool, 2, Duration::from_secs(60)).await;
    assert_eq!(
        queue::running_by_worker(&db.pool).await.unwrap(),
        vec![("test-worker".to_owned(), 2)]
    );
}

/// The API: the history's window and totals, and 422 for a bad window; workers with their running jobs (admin
/// only); bulk and the admin listing validate their input; the admin listing shows accounts.
#[tokio::test]
async fn dashboard_api_routes() {
    let app = app().await;
    let key = app.account("acme").await;
    for _ in 0..2 {
        app.call(Method::POST, "/api/jobs", Some(&key), Some(json!({"kind": "noop"})))
            .await
            .expect(StatusCode::CREATED);
    }
    queue::sample_queues(&app.db.pool).await.unwrap();
    let h = app
        .call(Method::GET, "/api/queues/history?minutes=15", Some(&key), None)
        .await;
    let body = h.expect(StatusCode::OK);
    assert_eq!(body["totals"]["enqueued"], 2, "{body}");
    assert_eq!(
        body["items"].as_array().unwrap().last().unwrap()["available"],
        2,
        "{body}"
    );
    assert!(body["next_cursor"].is_null());
    for bad in ["0", "1441", "x"] {
        app.call(
            Method::GET,
            &format!("/api/queues/history?minutes={bad}"),
            Some(&key),
            None,
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }

    crate::support::register_worker(&app.db.pool, "w-1", ("default", "v1"), "default", "noop").await;
    let w = app.call(Method::GET, "/api/workers", Some(ADMIN), None).await;
    let body = w.expect(StatusCode::OK);
    assert_eq!(body["items"][0]["id"], "w-1", "{body}");
    assert_eq!(body["items"][0]["host"], "test");
    assert_eq!(body["items"][0]["running"], 0);
    app.call(Method::GET, "/api/workers", Some(&key), None)
        .await
        .expect(StatusCode::FORBIDDEN);

    let bad = app
        .call(
            Method::POST,
            "/api/jobs/bulk",
            Some(&key),
            Some(json!({"action": "explode", "state": "nope", "limit": 5000, "extra": 1})),
        )
        .await;
    let errs = bad.expect(StatusCode::UNPROCESSABLE_ENTITY)["errors"].to_string();
    for path in ["/action", "/state", "/limit", "/extra"] {
        assert!(errs.contains(path), "{errs}");
    }
    let done = app
        .call(
            Method::POST,
            "/api/jobs/bulk",
            Some(&key),
            Some(json!({"action": "cancel", "kind": "noop"})),
        )
        .await;
    assert_eq!(done.expect(StatusCode::OK)["changed"], 2);

    let all = app
        .call(Method::GET, "/api/admin/jobs?state=cancelled", Some(ADMIN), None)
        .await;
    let body = all.expect(StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["items"][0]["account"], "acme");
    let none = app
        .call(Method::GET, "/api/admin/jobs?account=nobody", Some(ADMIN), None)
        .await;
    assert!(none.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty());
    app.call(Method::GET, "/api/admin/jobs?from=yesterday", Some(ADMIN), None)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    app.call(Method::GET, "/api/admin/jobs", Some(&key), None)
        .await
        .expect(StatusCode::FORBIDDEN);
}

/// Entities list in natural ref order (A2 before A10), filtered by status, and page on in that order.
#[tokio::test]
async fn entities_list_in_natural_order_by_status() {
    let app = app().await;
    let key = app.account("acme").await;
    let workflow = json!({"statuses": [{"name": "OPEN"}, {"name": "DONE"}], "rulesets": []});
    app.call(Method::PUT, "/api/workflows/ORDER::HD", Some(&key), Some(workflow))
        .await
        .expect(StatusCode::CREATED);
    for (r, status) in [
        ("A10", "OPEN"),
        ("A2", "OPEN"),
        ("A1", "DONE"),
        ("B1", "OPEN"),
        ("A3", "OPEN"),
    ] {
        app.call(
            Method::POST,
            "/api/entities",
            Some(&key),
            Some(json!({"type": "ORDER", "subtype": "HD", "ref": r, "status": status})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let refs = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ref"].as_str().unwrap().to_owned())
            .collect()
    };
    let page = app
        .call(
            Method::GET,
            "/api/entities?type=ORDER&status=OPEN&limit=2",
            Some(&key),
            None,
        )
        .await;
    let body = page.expect(StatusCode::OK).clone();
    assert_eq!(refs(&body), ["A2", "A3"]);
    let cursor = body["next_cursor"].as_str().unwrap();
    let next = app
        .call(
            Method::GET,
            &format!("/api/entities?type=ORDER&status=OPEN&limit=2&cursor={cursor}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(refs(next.expect(StatusCode::OK)), ["A10", "B1"]);
}
