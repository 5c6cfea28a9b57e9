//! History off the hot table: finished jobs move to `job_history` in the statement that finishes them, reads look
//! in both tables, and retention drops whole partitions after releasing their idempotency keys.

use std::time::Duration;

use ordo::queue::{self, Completion, Failure, JobFilter, JobId, JobState, NewJob, Retention};
use ordo::testkit;
use serde_json::json;
use sqlx::PgPool;

use crate::support::acct;

async fn enqueue(pool: &PgPool, job: NewJob) -> queue::Enqueued {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &acct(), job).await.unwrap()
}

async fn claim(pool: &PgPool, n: i64) -> Vec<queue::Job> {
    crate::queue::claim_n(pool, n, Duration::from_secs(60)).await
}

/// Runs every waiting job to completion.
async fn complete_all(pool: &PgPool) {
    let jobs = claim(pool, 1000).await;
    let done: Vec<Completion> = jobs
        .iter()
        .map(|j| Completion {
            id: j.id,
            attempt: j.attempt,
            result: json!({"ok": j.id.0}),
        })
        .collect();
    assert_eq!(queue::complete_many(pool, &done).await.unwrap().len(), jobs.len());
}

/// Where a job is stored: `job`, `job_history`, or nowhere.
async fn table_of(pool: &PgPool, id: JobId) -> &'static str {
    let live: bool = sqlx::query_scalar("select exists (select 1 from job where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    let finished: bool = sqlx::query_scalar("select exists (select 1 from job_history where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    match (live, finished) {
        (true, false) => "job",
        (false, true) => "job_history",
        (false, false) => "nowhere",
        (true, true) => panic!("job {id} is in both tables"),
    }
}

/// Moves a finished job's finish time back by `days` (the row moves to that day's partition, or the default one).
async fn age(pool: &PgPool, id: JobId, days: i32) {
    let n = sqlx::query("update job_history set finished_at = now() - make_interval(days => $2) where id = $1")
        .bind(id)
        .bind(days)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
}

/// Drops every day partition, as if the database had been migrated on a day long past: what a test attaches is
/// then all there is, whenever its template was built.
async fn drop_day_partitions(pool: &PgPool) {
    let parts: Vec<String> = sqlx::query_scalar(
        r#"
        select c.relname::text
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent in ('job_history_keyed'::regclass, 'job_history_unkeyed'::regclass)
          and c.relname not like '%default'
        "#,
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for p in &parts {
        sqlx::query(&format!("drop table {p}")).execute(pool).await.unwrap();
    }
}

fn retention() -> Retention {
    Retention {
        finished: Duration::from_secs(24 * 3600),
        keyed: Duration::from_secs(7 * 24 * 3600),
    }
}

async fn retire(pool: &PgPool) -> queue::Retired {
    let mut cursor = None;
    let r = queue::retire_history(pool, retention(), &mut cursor, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(cursor, None, "a call with time to spare finishes what it started");
    r
}

/// Every way a job finishes moves it out of the hot table in the same statement; everything that leaves it
/// waiting or running keeps it there; reads by id and listings find both.
#[tokio::test]
async fn finishing_moves_jobs_to_history_and_reads_find_them() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let ids: Vec<JobId> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(
                enqueue(pool, NewJob::new("noop", json!({"i": i})).max_attempts(2))
                    .await
                    .job
                    .id,
            );
        }
        v
    };
    let jobs = claim(pool, 4).await;
    assert_eq!(jobs.len(), 4);
    let attempt = |id: JobId| jobs.iter().find(|j| j.id == id).unwrap().attempt;
    // completed
    queue::complete_many(
        pool,
        &[Completion {
            id: ids[0],
            attempt: attempt(ids[0]),
            result: json!({"r": 1}),
        }],
    )
    .await
    .unwrap();
    // discarded (permanent) and retryable (attempts left)
    let failure = |id: JobId, permanent: bool| Failure {
        id,
        attempt: attempt(id),
        message: "boom".into(),
        permanent,
        retry_at: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    queue::fail_many(pool, &[failure(ids[1], true), failure(ids[2], false)])
        .await
        .unwrap();
    // cancelled by its handler, and one cancelled while waiting
    queue::cancel_running(pool, &[(ids[3], attempt(ids[3]), "enough".into())])
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    queue::cancel(&mut conn, &acct(), ids[4]).await.unwrap();

    let expect = [
        (JobState::Completed, "job_history"),
        (JobState::Discarded, "job_history"),
        (JobState::Retryable, "job"),
        (JobState::Cancelled, "job_history"),
        (JobState::Cancelled, "job_history"),
    ];
    for (id, (state, table)) in ids.iter().zip(expect) {
        let j = queue::get(pool, &acct(), *id).await.unwrap();
        assert_eq!(j.state, state, "job {id}");
        assert_eq!(table_of(pool, *id).await, table, "job {id}");
    }
    let done = queue::get(pool, &acct(), ids[0]).await.unwrap();
    assert_eq!(done.result, Some(json!({"r": 1})));
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    assert_eq!(done.attempt, 1);
    let discarded = queue::get(pool, &acct(), ids[1]).await.unwrap();
    assert_eq!(discarded.errors.len(), 1);
    assert_eq!(discarded.errors[0].message, "boom");

    // get_many and listings cover both tables, newest first, filtered by state to one table or the other
    let many = queue::get_many(pool, &acct(), &ids).await.unwrap();
    assert_eq!(many.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    let list = |state: Option<JobState>, limit: i64, before: Option<JobId>| {
        let f = JobFilter {
            state,
            limit,
            before,
            ..JobFilter::default()
        };
        async move { queue::list(pool, &acct(), &f).await.unwrap() }
    };
    let (all, next) = list(None, 10, None).await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), newest_first);
    assert_eq!(next, None);
    // pages across the two tables
    let (page1, next) = list(None, 2, None).await;
    let (page2, _) = list(None, 2, next).await;
    assert_eq!(
        page1.iter().chain(&page2).map(|j| j.id).collect::<Vec<_>>(),
        newest_first[..4]
    );
    let (cancelled, _) = list(Some(JobState::Cancelled), 10, None).await;
    assert_eq!(cancelled.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[4], ids[3]]);
    let (retryable, _) = list(Some(JobState::Retryable), 10, None).await;
    assert_eq!(retryable.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[2]]);

    // finishing a finished job is refused, by what it is now
    let err = queue::cancel(&mut conn, &acct(), ids[0]).await.unwrap_err();
    assert!(
        matches!(
            err,
            queue::Error::InvalidState {
                state: JobState::Completed,
                ..
            }
        ),
        "{err}"
    );
}

/// Retrying a discarded or cancelled job brings it back from history as the same job, with its history of errors.
#[tokio::test]
async fn retry_brings_a_job_back_from_history() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let job = enqueue(pool, NewJob::new("noop", json!({})).max_attempts(1)).await.job;
    let claimed = claim(pool, 1).await;
    queue::fail_many(
        pool,
        &[Failure {
            id: job.id,
            attempt: claimed[0].attempt,
            message: "nope".into(),
            permanent: false,
            retry_at: chrono::Utc::now(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(table_of(pool, job.id).await, "job_history");
    let mut conn = pool.acquire().await.unwrap();
    let retried = queue::retry(&mut conn, &acct(), job.id).await.unwrap();
    assert_eq!((retried.id, retried.state), (job.id, JobState::Available));
    assert_eq!(retried.max_attempts, 2, "one more attempt than it used");
    assert_eq!(retried.errors.len(), 1);
    assert_eq!(table_of(pool, job.id).await, "job");
    // it runs again and finishes into history once more
    complete_all(pool).await;
    let j = queue::get(pool, &acct(), job.id).await.unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Completed, 2));
    assert_eq!(table_of(pool, job.id).await, "job_history");
}

/// An idempotency key replays its job after the job finished (it is in history by then), and a different payload
/// under it is still a conflict; in a batch as well as alone.
#[tokio::test]
async fn idempotency_keys_span_finished_jobs() {
    let db = testkit::db().await;
    let pool = &db.pool;
    let first = enqueue(pool, NewJob::new("noop", json!({"a": 1})).idempotency_key("k1")).await;
    assert!(!first.replayed);
    complete_all(pool).await;
    assert_eq!(table_of(pool, first.job.id).await, "job_history");

    let again = enqueue(pool, NewJob::new("noop", json!({"a": 1})).idempotency_key("k1")).await;
    assert!(again.replayed);
    assert_eq!(again.job.id, first.job.id);
    assert_eq!(again.job.state, JobState::Completed);
    let mut conn = pool.acquire().await.unwrap();
    let err = queue::enqueue(
        &mut conn,
        &acct(),
        NewJob::new("noop", json!({"a": 2})).idempotency_key("k1"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, queue::Error::IdempotencyConflict { .. }), "{err}");

    let mut tx = pool.begin().await.unwrap();
    let out = queue::enqueue_many(
        &mut tx,
        &acct(),
        &[
            NewJob::new("noop", json!({"a": 1})).idempotency_key("k1"),
            NewJob::new("noop", json!({"b": 1})).idempotency_key("k2"),
            NewJob::new("noop", json!({"b": 1})).idempotency_key("k2"),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((out[0].id, out[0].replayed), (first.job.id, true));
    assert!(!out[1].replayed);
    assert_eq!(
        (out[2].id, out[2].replayed),
        (out[1].id, true),
        "the batch's second use of k2 replays its first"
    );
}

/// Retention: rows past it leave the default partitions, keyed jobs stay for the longer window (and their key
/// replays meanwhile), and day partitions past it are dropped whole after their keys are released.
#[tokio::test]
async fn retention_prunes_defaults_and_drops_day_partitions() {
    let db = testkit::db().await;
    let pool = &db.pool;
    drop_day_partitions(pool).await;
    let plain = enqueue(pool, NewJob::new("noop", json!({"p": 1}))).await.job.id;
    let keyed = enqueue(pool, NewJob::new("noop", json!({"k": 1})).idempotency_key("kept"))
        .await
        .job
        .id;
    let waiting = enqueue(
        pool,
        NewJob::new("noop", json!({"w": 1})).run_at(chrono::Utc::now() + chrono::Duration::days(1)),
    )
    .await
    .job
    .id;
    complete_all(pool).await;

    // Two days old, no partition for that day: both land in their class's default partition.
    age(pool, plain, 2).await;
    age(pool, keyed, 2).await;
    let r = retire(pool).await;
    assert_eq!((r.rows_pruned, r.keys_released, r.partitions_dropped), (1, 0, 0));
    assert!(matches!(
        queue::get(pool, &acct(), plain).await,
        Err(queue::Error::NotFound { .. })
    ));
    assert!(
        queue::get(pool, &acct(), keyed).await.is_ok(),
        "a keyed job is kept 7 days"
    );
    assert!(
        queue::get(pool, &acct(), waiting).await.is_ok(),
        "waiting jobs are never retired"
    );
    let replay = enqueue(pool, NewJob::new("noop", json!({"k": 1})).idempotency_key("kept")).await;
    assert!(replay.replayed);

    // Past the keyed window: the job goes, and so does its key (a new job may take it).
    age(pool, keyed, 8).await;
    let r = retire(pool).await;
    assert_eq!((r.rows_pruned, r.keys_released), (1, 1));
    let reused = enqueue(pool, NewJob::new("noop", json!({"k": 2})).idempotency_key("kept")).await;
    assert!(!reused.replayed, "the key was released with its job");
    complete_all(pool).await;

    // Day partitions ten days back, one per class, each holding a finished job: dropped whole.
    for class in ["keyed", "unkeyed"] {
        let attached: bool =
            sqlx::query_scalar("select job_history_add_day($1, (now() at time zone 'UTC')::date - 10)")
                .bind(class)
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(attached, "{class}");
    }
    let old_plain = enqueue(pool, NewJob::new("noop", json!({"p": 2}))).await.job.id;
    let old_keyed = enqueue(pool, NewJob::new("noop", json!({"k": 3})).idempotency_key("old"))
        .await
        .job
        .id;
    complete_all(pool).await;
    age(pool, old_plain, 10).await;
    age(pool, old_keyed, 10).await;
    let in_day_partitions: i64 = sqlx::query_scalar(
        "select count(*) from job_history where id = any($1) and tableoid::regclass::text not like '%default'",
    )
    .bind(vec![old_plain.0, old_keyed.0])
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(in_day_partitions, 2);
    let r = retire(pool).await;
    assert_eq!((r.partitions_dropped, r.keys_released, r.rows_pruned), (2, 1, 0));
    for id in [old_plain, old_keyed] {
        assert!(matches!(
            queue::get(pool, &acct(), id).await,
            Err(queue::Error::NotFound { .. })
        ));
    }
    let reused = enqueue(pool, NewJob::new("noop", json!({"k": 4})).idempotency_key("old")).await;
    assert!(!reused.replayed, "the dropped partition's key was released first");
    // the recent history is untouched
    assert!(queue::get(pool, &acct(), reused.job.id).await.is_ok());
    assert_eq!(retire(pool).await, queue::Retired::default());
}

/// Maintenance attaches today's and tomorrow's partitions where they are missing, and a second call has nothing
/// to do; a completion then lands in today's partition, not the default one.
#[tokio::test]
async fn coming_days_get_their_partitions() {
    let db = testkit::db().await;
    let pool = &db.pool;
    drop_day_partitions(pool).await;
    assert_eq!(queue::add_history_days(pool).await.unwrap(), 4);
    assert_eq!(queue::add_history_days(pool).await.unwrap(), 0);
    let id = enqueue(pool, NewJob::new("noop", json!({}))).await.job.id;
    complete_all(pool).await;
    let table: String = sqlx::query_scalar("select tableoid::regclass::text from job_history where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    let today: String = sqlx::query_scalar("select to_char(now() at time zone 'UTC', 'YYYYMMDD')")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(table, format!("job_history_unkeyed_{today}"));
}

/// The API's role reads history only through `job_history`, under its row-level security: another account's
/// finished jobs are invisible, and the partitions themselves are not readable at all.
#[tokio::test]
async fn history_is_isolated_per_account() {
    let db = testkit::db().await;
    let pool = &db.pool;
    sqlx::query("insert into account (id) values ('other')")
        .execute(pool)
        .await
        .unwrap();
    let mine = enqueue(pool, NewJob::new("noop", json!({}))).await.job.id;
    let mut conn = pool.acquire().await.unwrap();
    let theirs = queue::enqueue(
        &mut conn,
        &ordo::tenancy::AccountId::parse("other").unwrap(),
        NewJob::new("noop", json!({})),
    )
    .await
    .unwrap()
    .job
    .id;
    drop(conn);
    complete_all(pool).await;
    let mut tx = testkit::api_transaction(pool, &acct()).await;
    let seen: Vec<i64> = sqlx::query_scalar("select id from job_history order by id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, [mine.0]);
    assert!(!seen.contains(&theirs.0));
    let err = sqlx::query("select count(*) from job_history_unkeyed_default")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}
