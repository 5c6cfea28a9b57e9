//! Fair share between accounts and limits per account (CONTRACT §12): a small account's jobs start promptly
//! behind another's backlog, weights share the claims, and limits hold across worker processes.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordo::queue::{self, ClaimRequest, FairShare, Limits, NewJob};
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::PgPool;

use crate::support::{fast_config, spawn_worker_process, start_worker, stop_all};

async fn account(pool: &PgPool, id: &str) -> AccountId {
    let id = AccountId::parse(id).unwrap();
    tenancy::create_account(pool, &id, id.as_str(), "local").await.unwrap();
    id
}

async fn enqueue(pool: &PgPool, account: &AccountId, n: usize, kind: &str, args: serde_json::Value) {
    let jobs: Vec<NewJob> = (0..n).map(|_| NewJob::new(kind, args.clone())).collect();
    let mut tx = pool.begin().await.unwrap();
    queue::enqueue_many(&mut tx, account, &jobs).await.unwrap();
    tx.commit().await.unwrap();
}

async fn set_limits(pool: &PgPool, account: &AccountId, limits: serde_json::Value) {
    let limits = Limits::from_json(&limits).unwrap();
    let mut tx = pool.begin().await.unwrap();
    queue::put_limits(&mut tx, account, &limits).await.unwrap();
    tx.commit().await.unwrap();
}

fn kinds() -> Vec<String> {
    vec!["noop".to_owned(), "sleep".to_owned()]
}

/// One claim of `limit` jobs of the default queue with `share`; the claimed jobs per account.
async fn claim(pool: &PgPool, share: &mut FairShare, limit: i64) -> HashMap<String, usize> {
    let kinds = kinds();
    let req = ClaimRequest {
        queue: "default",
        kinds: &kinds,
        pool: "default",
        version: "v1",
        worker_id: "test",
        lease: Duration::from_secs(60),
        limit,
    };
    let mut got = HashMap::new();
    for job in queue::claim(&mut pool.acquire().await.unwrap(), &req, share)
        .await
        .unwrap()
    {
        *got.entry(job.account_id).or_default() += 1;
    }
    got
}

/// The scenario of the issue, at the claim: account A has 5 000 jobs waiting when B enqueues 20. B's jobs are all
/// claimed within three claims of 16 (A takes what B leaves of the third), whatever A's backlog; once B has
/// nothing, A gets every claim whole.
#[tokio::test]
async fn a_small_account_is_served_in_turn_behind_a_large_backlog() {
    let db = testkit::db().await;
    let a = account(&db.pool, "big").await;
    let b = account(&db.pool, "small").await;
    enqueue(&db.pool, &a, 5000, "noop", json!({})).await;
    let mut share = FairShare::new();
    let first = claim(&db.pool, &mut share, 16).await;
    assert_eq!(first.get("big"), Some(&16), "A alone gets the whole claim: {first:?}");
    enqueue(&db.pool, &b, 20, "noop", json!({})).await;
    // A new account is found when the share's list is read again.
    share.invalidate();
    let (mut a_claimed, mut b_claimed) = (0, 0);
    while b_claimed < 20 {
        let got = claim(&db.pool, &mut share, 16).await;
        assert_eq!(got.values().sum::<usize>(), 16, "every claim is whole: {got:?}");
        a_claimed += got.get("big").copied().unwrap_or(0);
        b_claimed += got.get("small").copied().unwrap_or(0);
    }
    assert_eq!(b_claimed, 20);
    assert!(a_claimed <= 32, "A took {a_claimed} jobs while B's 20 waited");
    for _ in 0..5 {
        let got = claim(&db.pool, &mut share, 16).await;
        assert_eq!(
            got.get("big"),
            Some(&16),
            "A drains at full speed when B has nothing: {got:?}"
        );
    }
}

/// Two accounts with weights 3 and 1 and equal backlogs get 3:1 of the claimed jobs.
#[tokio::test]
async fn weights_share_the_claims_three_to_one() {
    let db = testkit::db().await;
    let a = account(&db.pool, "heavy").await;
    let b = account(&db.pool, "light").await;
    set_limits(&db.pool, &a, json!({"weight": 3})).await;
    enqueue(&db.pool, &a, 2000, "noop", json!({})).await;
    enqueue(&db.pool, &b, 2000, "noop", json!({})).await;
    let mut share = FairShare::new();
    let mut total: HashMap<String, usize> = HashMap::new();
    for _ in 0..25 {
        for (acct, n) in claim(&db.pool, &mut share, 40).await {
            *total.entry(acct).or_default() += n;
        }
    }
    assert_eq!(total.values().sum::<usize>(), 1000);
    let heavy = total["heavy"];
    assert!((720..=780).contains(&heavy), "3:1 expected, got {total:?}");
}

/// A real worker (concurrency 16) runs A's 2 000 `sleep` jobs when B enqueues 20: between B's enqueue and the
/// start of B's last job, A starts a bounded number of jobs (the claims of about one list refresh and the
/// worker's prefetch), far fewer than its backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starts_a_small_accounts_jobs_promptly() {
    let db = testkit::db().await;
    let a = account(&db.pool, "big").await;
    let b = account(&db.pool, "small").await;
    enqueue(&db.pool, &a, 2000, "sleep", json!({"ms": 20})).await;
    let mut cfg = fast_config();
    cfg.concurrency = 16;
    let w = start_worker(&db.pool, cfg);
    eventually(Duration::from_secs(30), "A's jobs to run", || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from job_all where account_id = 'big' and started_at is not null")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (n >= 50).then_some(())
    })
    .await;
    enqueue(&db.pool, &b, 20, "sleep", json!({"ms": 20})).await;
    eventually(Duration::from_secs(60), "B's jobs to start", || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from job_all where account_id = 'small' and started_at is not null")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (n == 20).then_some(())
    })
    .await;
    let (enqueued, last_start): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("select min(created_at), max(started_at) from job_all where account_id = 'small'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let (a_started, a_left): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where started_at > $1 and started_at <= $2),
                count(*) filter (where started_at is null)
         from job_all where account_id = 'big'",
    )
    .bind(enqueued)
    .bind(last_start)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    w.stop().await;
    assert!(a_left >= 1000, "A still had a backlog while B ran ({a_left} left)");
    assert!(
        a_started <= 400,
        "{a_started} of A's jobs started between B's enqueue and B's last start"
    );
}

/// Limits hold across 4 worker processes: an account limited to 5 running jobs of its queue never has more than
/// 5 leased, one limited to 3 running `sleep` jobs never more than 3, one limited to 50 `noop` starts a second
/// never starts more than 50 in any one-second window; every job completes in its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_worker_processes() {
    let db = testkit::db().await;
    let by_queue = account(&db.pool, "by-queue").await;
    let by_kind = account(&db.pool, "by-kind").await;
    let by_rate = account(&db.pool, "by-rate").await;
    let free = account(&db.pool, "free").await;
    set_limits(&db.pool, &by_queue, json!({"queues": {"default": {"max_running": 5}}})).await;
    set_limits(&db.pool, &by_kind, json!({"kinds": {"sleep": {"max_running": 3}}})).await;
    set_limits(&db.pool, &by_rate, json!({"kinds": {"noop": {"max_per_second": 50}}})).await;
    enqueue(&db.pool, &by_queue, 60, "sleep", json!({"ms": 30})).await;
    enqueue(&db.pool, &by_kind, 30, "sleep", json!({"ms": 30})).await;
    enqueue(&db.pool, &by_kind, 100, "noop", json!({})).await;
    enqueue(&db.pool, &by_rate, 200, "noop", json!({})).await;
    enqueue(&db.pool, &free, 300, "sleep", json!({"ms": 5})).await;
    let workers: Vec<_> = (0..4)
        .map(|_| spawn_worker_process(&db.url, &[], &["--concurrency", "8"]))
        .collect();
    let (mut max_queue, mut max_kind) = (0i64, 0i64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        let (queue_running, kind_running, left): (i64, i64, i64) = sqlx::query_as(
            "select count(*) filter (where account_id = 'by-queue' and leased_until is not null),
                    count(*) filter (where account_id = 'by-kind' and kind = 'sleep' and leased_until is not null),
                    count(*)
             from job",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        max_queue = max_queue.max(queue_running);
        max_kind = max_kind.max(kind_running);
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} jobs still waiting or running"
        );
    }
    stop_all(workers).await;
    assert!(max_queue <= 5, "by-queue had {max_queue} jobs running at once");
    assert!(max_kind <= 3, "by-kind had {max_kind} sleep jobs running at once");
    assert!(
        max_queue >= 1 && max_kind >= 1,
        "the samples saw the limited accounts run"
    );
    let (done, retried): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where state = 'completed'), count(*) filter (where attempt <> 1) from job_history",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((done, retried), (690, 0), "every job completed in its first attempt");
    let starts: Vec<DateTime<Utc>> =
        sqlx::query_scalar("select started_at from job_history where account_id = 'by-rate' order by started_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(starts.len(), 200);
    for (i, t) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s - *t <= chrono::TimeDelta::seconds(1))
            .count();
        assert!(within <= 50, "{within} starts in the second from {t}");
    }
}

/// A claimer whose last claim found nothing (a worker waiting for a wake-up) claims an unlimited account's new
/// jobs in one statement, without reading the list of accounts first; a limited account's jobs are left to the
/// planned claim, which counts its limit, so they start too and never beyond the limit.
#[tokio::test]
async fn an_idle_claimer_claims_in_one_statement_and_counts_limits() {
    let db = testkit::db().await;
    let open = account(&db.pool, "open").await;
    let capped = account(&db.pool, "capped").await;
    set_limits(&db.pool, &capped, json!({"queues": {"default": {"max_running": 2}}})).await;
    let mut share = FairShare::new();
    assert!(claim(&db.pool, &mut share, 16).await.is_empty(), "nothing waits yet");

    // Only the limited account has work: the one-statement claim leaves it, the planned claim takes its limit.
    enqueue(&db.pool, &capped, 5, "noop", json!({})).await;
    let got = claim(&db.pool, &mut share, 16).await;
    assert_eq!(got, HashMap::from([("capped".to_owned(), 2)]));
    assert!(claim(&db.pool, &mut share, 16).await.is_empty(), "the limit holds");

    // An unlimited account's jobs after an empty claim: taken without the list being read.
    enqueue(&db.pool, &open, 3, "noop", json!({})).await;
    let got = claim(&db.pool, &mut share, 16).await;
    assert_eq!(got, HashMap::from([("open".to_owned(), 3)]));
    assert!(share.active().is_empty(), "the list was not read: {:?}", share.active());
    // The claim after it reads the list again, and the limit still holds.
    enqueue(&db.pool, &open, 1, "noop", json!({})).await;
    let got = claim(&db.pool, &mut share, 16).await;
    assert_eq!(got, HashMap::from([("open".to_owned(), 1)]));
    assert_eq!(share.active().len(), 2, "{:?}", share.active());
}

/// A paused queue stays paused for a claimer without a list too.
#[tokio::test]
async fn an_idle_claimer_respects_a_pause() {
    let db = testkit::db().await;
    let open = account(&db.pool, "open").await;
    let mut share = FairShare::new();
    assert!(claim(&db.pool, &mut share, 16).await.is_empty());
    sqlx::query("insert into queue_pause (account_id, queue) values ('open', 'default')")
        .execute(&db.pool)
        .await
        .unwrap();
    enqueue(&db.pool, &open, 3, "noop", json!({})).await;
    assert!(claim(&db.pool, &mut share, 16).await.is_empty(), "paused");
}

/// Starts older than any rate window still counted are pruned; recent ones stay.
#[tokio::test]
async fn old_starts_are_pruned() {
    let db = testkit::db().await;
    sqlx::query(
        "insert into account_kind_start (account_id, kind, at, n)
         values ('a', 'k', now() - interval '1 minute', 3), ('a', 'k', now(), 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(queue::share::prune_starts(&db.pool).await.unwrap(), 1);
    let left: i64 = sqlx::query_scalar("select sum(n) from account_kind_start")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
}

/// An upgrade from the schema before fair share, holding live jobs of two accounts (waiting, running, and a lane
/// with a parked job behind its head): the claim index is built concurrently and valid, and the fair claim then
/// serves both accounts and every waiting job, keeping the lane's order.
#[tokio::test]
async fn an_upgrade_with_live_jobs_serves_every_account() {
    let db = testkit::db_before_migration(20261208000001).await;
    let a = account(&db.pool, "big").await;
    let b = account(&db.pool, "small").await;
    // As the older ordo left them (its statements, not this one's: the schema is the older one).
    sqlx::query(
        "insert into job (account_id, kind, args, state, concurrency_key)
         select $1, 'noop', '{}'::jsonb, 'available', null::text from generate_series(1, 300)
         union all
         select $2, 'noop', '{}', 'available', null from generate_series(1, 5)
         union all
         select $2, 'noop', '{}', s, 'lane' from unnest(array['available', 'parked']) as s",
    )
    .bind(a.as_str())
    .bind(b.as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    // One job of each account running when the upgrade starts.
    sqlx::query(
        "update job set state = 'running', attempt = 1, started_at = now(), lease_owner = 'old',
                        leased_until = now() + interval '1 minute'
         where id in (select min(id) from job where concurrency_key is null group by account_id)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    ordo::db::migrate(&db.pool).await.unwrap();
    let valid: bool =
        sqlx::query_scalar("select indisvalid from pg_index where indexrelid = 'job_claim_idx'::regclass")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(valid, "the claim index is built and valid");
    let mut share = FairShare::new();
    let first = claim(&db.pool, &mut share, 16).await;
    assert_eq!(
        first.get("small"),
        Some(&5),
        "the small account's waiting jobs in the first claim: {first:?}"
    );
    let mut total = first.values().sum::<usize>();
    loop {
        let got = claim(&db.pool, &mut share, 100).await.values().sum::<usize>();
        if got == 0 {
            break;
        }
        total += got;
    }
    // 299 + 4 waiting unkeyed jobs, and the lane's head; its second job stays parked behind the running head.
    assert_eq!(total, 304);
    let parked: i64 = sqlx::query_scalar("select count(*) from job where state = 'parked'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 1);
}

/// `job_claim_walk` takes jobs only from its ranges, in claim order: each range's priorities from its time on.
#[tokio::test]
async fn a_claim_walk_takes_its_ranges_in_claim_order() {
    let db = testkit::db().await;
    let a = account(&db.pool, "walker").await;
    let mut jobs = Vec::new();
    for (priority, secs_ago) in [(5, 30), (5, 20), (5, 5), (2, 40), (7, 50), (7, 1)] {
        let mut job = NewJob::new("noop", json!({}));
        job.priority = priority;
        job.run_at = Some(Utc::now() - chrono::Duration::seconds(secs_ago));
        jobs.push(job);
    }
    let mut tx = db.pool.begin().await.unwrap();
    let ids: Vec<i64> = queue::enqueue_many(&mut tx, &a, &jobs)
        .await
        .unwrap()
        .iter()
        .map(|o| o.id.0)
        .collect();
    tx.commit().await.unwrap();
    let walk = |lo: Vec<i16>, hi: Vec<i16>, from: Vec<String>, limit: i64| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let got: Vec<i64> = sqlx::query_scalar(
                "select job_claim_walk('default', 'walker', '{noop}', 'v1', $1, '{}', $2, $3, $4::text[]::timestamptz[])",
            )
            .bind(limit)
            .bind(lo)
            .bind(hi)
            .bind(from)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            tx.rollback().await.unwrap();
            got
        }
    };
    let t = |secs_ago: i64| (Utc::now() - chrono::Duration::seconds(secs_ago)).to_rfc3339();
    let inf = || "-infinity".to_owned();
    // Everything, from the start: priority 2, then 5 by run_at, then 7.
    let all = walk(vec![i16::MIN], vec![i16::MAX], vec![inf()], 10).await;
    assert_eq!(all, vec![ids[3], ids[0], ids[1], ids[2], ids[4], ids[5]]);
    // Priority 5 from 25 s ago, the others whole.
    let got = walk(
        vec![i16::MIN, 5, 6],
        vec![4, 5, i16::MAX],
        vec![inf(), t(25), inf()],
        10,
    )
    .await;
    assert_eq!(got, vec![ids[3], ids[1], ids[2], ids[4], ids[5]]);
    // The limit counts across ranges.
    let got = walk(vec![i16::MIN, 5, 6], vec![4, 5, i16::MAX], vec![inf(), t(25), inf()], 3).await;
    assert_eq!(got, vec![ids[3], ids[1], ids[2]]);
    // Only priority 7 from 10 s ago.
    assert_eq!(walk(vec![7], vec![7], vec![t(10)], 10).await, vec![ids[5]]);
}

/// A claimer walking from floors takes new jobs beyond them at once; a job that becomes waiting behind its floor
/// (here: enqueued for a time long past) waits for the next walk from the start, which takes it.
#[tokio::test]
async fn a_claimer_walking_from_floors_finds_a_job_behind_them_at_its_next_walk_from_the_start() {
    let db = testkit::db().await;
    let a = account(&db.pool, "floored").await;
    let mut share = FairShare::new();
    enqueue(&db.pool, &a, 3, "noop", json!({})).await;
    assert_eq!(
        claim(&db.pool, &mut share, 16).await,
        HashMap::from([("floored".to_owned(), 3)])
    );
    let until = std::time::Instant::now() + Duration::from_secs(3600);
    share.walk_from_floors_until(until);

    let mut late = NewJob::new("noop", json!({"late": true}));
    late.run_at = Some(Utc::now() - chrono::Duration::minutes(10));
    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue_many(&mut tx, &a, &[late]).await.unwrap();
    tx.commit().await.unwrap();
    enqueue(&db.pool, &a, 2, "noop", json!({})).await;
    assert_eq!(
        claim(&db.pool, &mut share, 16).await,
        HashMap::from([("floored".to_owned(), 2)]),
        "the new jobs, not the one behind the floor"
    );
    assert!(
        claim(&db.pool, &mut share, 16).await.is_empty(),
        "still walking from the floors"
    );
    // The list of accounts stays while walking from floors, even with no work found.
    assert_eq!(share.active().len(), 1);

    // The next walk from the start finds it.
    share.walk_from_floors_until(std::time::Instant::now());
    assert_eq!(
        claim(&db.pool, &mut share, 16).await,
        HashMap::from([("floored".to_owned(), 1)])
    );
}

/// The scout walks from the start beside the claims: it reads the accounts with work and sees a job waiting behind
/// a claimer's floor (not one of a kind the claimer does not run), and once it reports that, the next claim walks
/// from the start and takes the job.
#[tokio::test]
async fn the_scout_sees_a_job_behind_the_floors_and_the_next_claim_takes_it() {
    let db = testkit::db().await;
    let a = account(&db.pool, "scouted").await;
    let mut share = FairShare::new();
    assert!(
        share.scout_floors().is_none(),
        "nothing to scout while claims walk from the start"
    );
    enqueue(&db.pool, &a, 3, "noop", json!({})).await;
    assert_eq!(
        claim(&db.pool, &mut share, 16).await,
        HashMap::from([("scouted".to_owned(), 3)])
    );
    share.walk_from_floors_until(std::time::Instant::now() + Duration::from_secs(3600));
    let floors = share.scout_floors().expect("claims walk from floors");
    assert_eq!(floors.len(), 1, "{floors:?}");
    assert_eq!((floors[0].account_id.as_str(), floors[0].priority), ("scouted", 5));
    let scout = |floors: Vec<queue::Floor>| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            queue::scout(&mut conn, "default", &kinds(), "v1", &floors)
                .await
                .unwrap()
        }
    };
    let report = scout(floors.clone()).await;
    assert!(!report.behind && report.active.is_empty(), "{report:?}");

    let late = |kind: &str| {
        let mut job = NewJob::new(kind, json!({"late": true}));
        job.run_at = Some(Utc::now() - chrono::Duration::minutes(10));
        job
    };
    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue_many(&mut tx, &a, &[late("unknown.kind")]).await.unwrap();
    tx.commit().await.unwrap();
    let report = scout(floors.clone()).await;
    assert!(!report.behind, "a kind this claimer does not run is not its business");
    assert_eq!(report.active.len(), 1, "the account has work: {report:?}");

    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue_many(&mut tx, &a, &[late("noop")]).await.unwrap();
    tx.commit().await.unwrap();
    let report = scout(floors).await;
    assert!(report.behind, "{report:?}");
    assert!(
        claim(&db.pool, &mut share, 16).await.is_empty(),
        "the claims still walk from the floors"
    );
    // As under a snapshot held open: the walk was slow and passed dead entries.
    share.scouted(
        std::time::Instant::now(),
        queue::Scouted {
            took: Duration::from_millis(200),
            reads: 1_000_000,
            ..report
        },
    );
    assert_eq!(
        claim(&db.pool, &mut share, 16).await,
        HashMap::from([("scouted".to_owned(), 1)]),
        "the claim after the report walks from the start"
    );
}
