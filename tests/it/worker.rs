//! The worker runtime in process: handlers, retries, timeouts, wake-ups and database outages.

use std::time::Duration;

use ordo::queue::{self, JobState, NewJob};
use ordo::testkit::{self, eventually, TcpProxy};
use serde_json::json;

use crate::support::{acct, count_state, fast_config, start_worker, wait_for_state, wake_ups_start_jobs_at_once};

/// Built-in kinds run to their outcomes: success, retry then success, permanent failure, malformed args.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_kinds_to_their_outcomes() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let noop = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    let flaky = q
        .enqueue(&acct(), NewJob::new("fail", json!({"times": 2})))
        .await
        .unwrap()
        .job;
    let perm = q
        .enqueue(&acct(), NewJob::new("fail", json!({"permanent": true})))
        .await
        .unwrap()
        .job;
    let bad = q
        .enqueue(&acct(), NewJob::new("sleep", json!({"msec": 5})))
        .await
        .unwrap()
        .job;
    let w = start_worker(&db.pool, fast_config());

    wait_for_state(&db.pool, noop.id, JobState::Completed, Duration::from_secs(10)).await;
    let f = wait_for_state(&db.pool, flaky.id, JobState::Completed, Duration::from_secs(20)).await;
    assert_eq!(f.attempt, 3);
    assert_eq!(f.errors.len(), 2);
    let p = wait_for_state(&db.pool, perm.id, JobState::Discarded, Duration::from_secs(10)).await;
    assert_eq!(p.attempt, 1);
    let b = wait_for_state(&db.pool, bad.id, JobState::Discarded, Duration::from_secs(10)).await;
    assert!(b.errors[0].message.contains("invalid args for sleep"), "{:?}", b.errors);
    assert_eq!(b.attempt, 1, "malformed args are not retried");
    w.stop().await;
}

/// A job of a kind no worker knows waits (it is not lost or discarded) and is counted as unclaimable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kind_waits_and_is_counted_unclaimable() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let mystery = q.enqueue(&acct(), NewJob::new("mystery", json!({}))).await.unwrap().job;
    let marker = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    let w = start_worker(&db.pool, fast_config());
    wait_for_state(&db.pool, marker.id, JobState::Completed, Duration::from_secs(10)).await;
    let m = queue::get(&db.pool, &acct(), mystery.id).await.unwrap();
    assert_eq!(m.state, JobState::Available);
    let stats = queue::queue_stats(&db.pool, &acct(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stats[0].unclaimable, 1);
    w.stop().await;
}

/// A job past its timeout is stopped and its attempt fails with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_fails_the_attempt() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let j = q
        .enqueue(
            &acct(),
            NewJob::new("sleep", json!({"ms": 60_000}))
                .timeout_ms(100)
                .max_attempts(1),
        )
        .await
        .unwrap()
        .job;
    let w = start_worker(&db.pool, fast_config());
    let d = wait_for_state(&db.pool, j.id, JobState::Discarded, Duration::from_secs(10)).await;
    assert!(d.errors[0].message.contains("timed out after 100 ms"), "{:?}", d.errors);
    w.stop().await;
}

/// With Redis, an idle worker starts a new job on the wake-up, long before its (here very long) poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wake_up_starts_jobs_without_waiting_for_the_poll() {
    let redis = testkit::redis_url().await;
    wake_ups_start_jobs_at_once(&redis, None).await;
}

/// The database going away mid-run and coming back loses nothing: the worker reconnects, and every job
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_mid_run_loses_nothing() {
    let db = testkit::db().await;
    let proxy = TcpProxy::start(testkit::server_addr(&db.url).await).await;
    let proxied = ordo::db::connect(&testkit::with_host_port(&db.url, proxy.addr()), 8)
        .await
        .unwrap();
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let jobs: Vec<NewJob> = (0..50).map(|i| NewJob::new("sleep", json!({"ms": 20 + i}))).collect();
    q.enqueue_many(&acct(), jobs).await.unwrap();
    let w = start_worker(&proxied, fast_config());
    eventually(Duration::from_secs(20), "some jobs to complete", || async {
        (count_state(&db.pool, "completed").await > 0).then_some(())
    })
    .await;
    proxy.cut();
    let more: Vec<NewJob> = (0..50).map(|_| NewJob::new("noop", json!({}))).collect();
    q.enqueue_many(&acct(), more).await.unwrap();
    // Let the worker hit the outage before restoring.
    eventually(Duration::from_secs(10), "the outage to be noticed", || async {
        let active: i64 =
            sqlx::query_scalar("select count(*) from pg_stat_activity where datname = current_database()")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (active <= 2).then_some(())
    })
    .await;
    proxy.restore();
    eventually(Duration::from_secs(60), "all 100 jobs to complete", || async {
        (count_state(&db.pool, "completed").await == 100).then_some(())
    })
    .await;
    w.stop().await;
    assert_eq!(count_state(&db.pool, "running").await, 0);
}

/// A job running longer than its lease keeps it through heartbeats: it completes on its first attempt and is
/// never rescued, while maintenance runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_long_jobs_leased() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let j = q
        .enqueue(&acct(), NewJob::new("sleep", json!({"ms": 2500})))
        .await
        .unwrap()
        .job;
    let mut cfg = fast_config();
    cfg.lease = Duration::from_millis(600);
    let w = start_worker(&db.pool, cfg);
    let done = wait_for_state(&db.pool, j.id, JobState::Completed, Duration::from_secs(20)).await;
    assert_eq!(done.attempt, 1);
    assert_eq!(done.errors, [], "never rescued");
    w.stop().await;
}

/// Redis going away does not stop work (workers fall back to polling) and wake-ups resume once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_polling() {
    let db = testkit::db().await;
    let redis = testkit::redis_url().await;
    let proxy = TcpProxy::start(testkit::server_addr(&redis).await).await;
    let via_proxy = testkit::with_host_port(&redis, proxy.addr());
    let mut cfg = fast_config();
    cfg.poll = Duration::from_millis(200);
    cfg.redis_url = Some(via_proxy.clone());
    let w = start_worker(&db.pool, cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let q = queue::Queue::new(
        db.pool.clone(),
        ordo::wake::Waker::start(&via_proxy, &db.name, stop.clone()).unwrap(),
    );
    let first = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    wait_for_state(&db.pool, first.id, JobState::Completed, Duration::from_secs(10)).await;
    proxy.cut();
    let during = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    wait_for_state(&db.pool, during.id, JobState::Completed, Duration::from_secs(10)).await;
    proxy.restore();
    let after = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    wait_for_state(&db.pool, after.id, JobState::Completed, Duration::from_secs(10)).await;
    stop.cancel();
    w.stop().await;
}

/// A worker process with ORDO_METRICS_LISTEN serves Prometheus metrics of what it claimed and settled, and, as
/// maintenance holder, the queue gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_serves_metrics() {
    let db = testkit::db().await;
    let q = queue::Queue::new(db.pool.clone(), ordo::wake::Waker::disabled());
    let j = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    // A job no worker knows stays waiting, so the queue always has a gauge to publish.
    q.enqueue(&acct(), NewJob::new("mystery", json!({}))).await.unwrap();
    let port = testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut w = crate::support::spawn_worker_process(&db.url, &[("ORDO_METRICS_LISTEN", listen.as_str())], &[]);
    wait_for_state(&db.pool, j.id, JobState::Completed, Duration::from_secs(20)).await;
    let body = eventually(
        Duration::from_secs(20),
        "metrics with the settled job and queue gauges",
        || async {
            let body = reqwest::get(format!("http://{listen}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (body.contains("ordo_jobs_settled_total{outcome=\"completed\"} 1") && body.contains("ordo_queue_jobs{"))
                .then_some(body)
        },
    )
    .await;
    assert!(body.contains("ordo_jobs_claimed_total{queue=\"default\"} 1"), "{body}");
    assert!(
        body.contains("ordo_job_duration_seconds_bucket{kind=\"noop\""),
        "{body}"
    );
    assert!(
        body.contains("ordo_workers_live{pool=\"default\",version=\"v1\"} 1"),
        "{body}"
    );
    crate::support::signal(&w, "-TERM");
    assert!(w.wait().await.unwrap().success());
}

/// The maintenance holder prunes the event log and loads past their retention, and keeps pending events, loads
/// with unfinished batches and recent rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_and_loads_are_pruned_past_their_retention() {
    let db = testkit::db().await;
    sqlx::query(
        r#"
        insert into event (account_id, seq, name, kind, status, entity_type, entity_ref, created_at)
        values ('default', 1, 'Old', 'orchestration', 'success', 'T', 'r', now() - interval '40 days'),
               ('default', 2, 'OldPending', 'orchestration', 'pending', 'T', 'r', now() - interval '40 days'),
               ('default', 3, 'New', 'orchestration', 'success', 'T', 'r', now())
        "#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Loads too: an old one with a complete batch (and its chunk) goes; an old one with a batch still running,
    // and today's, stay.
    sqlx::raw_sql(
        r#"
        insert into load (account_id, name, day)
        values ('default', 'old', current_date - 40), ('default', 'stuck', current_date - 40),
               ('default', 'today', current_date);
        insert into load_batch (account_id, load_id, status, fingerprint, total, chunks)
        select 'default', id, case name when 'stuck' then 'running' else 'complete' end, '\x00', 1, 1 from load;
        insert into load_chunk (account_id, batch_id, chunk, idx, sku_ref, location_ref, qty)
        select 'default', id, 0, '{0}', '{S}', '{L}', '{1}' from load_batch;
        "#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let w = start_worker(&db.pool, fast_config());
    let loads: Vec<String> = eventually(Duration::from_secs(30), "the old load to be pruned", || async {
        let names: Vec<String> = sqlx::query_scalar("select name from load order by name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(loads, ["stuck", "today"]);
    let chunks: i64 = sqlx::query_scalar("select count(*) from load_chunk")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(chunks, 2, "the pruned load's chunk went with its batch");
    let left: Vec<String> = eventually(Duration::from_secs(30), "the old event to be pruned", || async {
        let names: Vec<String> = sqlx::query_scalar("select name from event order by seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(left, ["OldPending", "New"]);
    w.stop().await;
}

/// The automatic prefetch (the default) deepens the buffer while short jobs stream through: a worker of
/// concurrency 1 comes to hold more jobs than the two a fixed prefetch of its concurrency would allow, and every job
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_prefetch_grows_with_short_jobs() {
    let db = testkit::db().await;
    let jobs: Vec<NewJob> = (0..20_000).map(|i| NewJob::new("noop", json!({"i": i}))).collect();
    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue_many(&mut tx, &acct(), &jobs).await.unwrap();
    tx.commit().await.unwrap();
    let mut cfg = fast_config();
    cfg.concurrency = 1;
    assert_eq!(cfg.prefetch, ordo::runtime::Prefetch::Auto);
    let w = start_worker(&db.pool, cfg);
    let most = eventually(
        Duration::from_secs(60),
        "the worker to hold more than 2 jobs",
        || async {
            let held: i64 = sqlx::query_scalar("select count(*) from job where state = 'running'")
                .fetch_one(&db.pool)
                .await
                .ok()?;
            (held > 2).then_some(held)
        },
    )
    .await;
    assert!(most > 2);
    eventually(Duration::from_secs(120), "every job to complete", || async {
        let done = count_state(&db.pool, "completed").await;
        (done == 20_000).then_some(())
    })
    .await;
    w.stop().await;
}

/// `ordo bench` stopped by SIGTERM mid-run takes its worker processes and its scratch database with it, and exits
/// with an error saying it was interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bench_leaves_no_workers_behind() {
    let url = testkit::postgres_url().await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let scratch = || async {
        sqlx::query_scalar::<_, String>("select datname::text from pg_database where datname like 'ordo_bench_%'")
            .fetch_all(&admin)
            .await
            .unwrap()
    };
    let before = scratch().await;
    let bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args([
            "bench",
            "--jobs",
            "2000000",
            "--workers",
            "2",
            "--json",
            "--database-url",
            &url,
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = bench.id().unwrap();
    let children = eventually(Duration::from_secs(60), "the bench to start two workers", || async {
        // Children of any of its threads (a process is the child of the thread that spawned it).
        let mut kids: Vec<u32> = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let list = std::fs::read_to_string(task.ok()?.path().join("children")).unwrap_or_default();
            kids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        (kids.len() >= 2).then_some(kids)
    })
    .await;
    crate::support::signal(&bench, "-TERM");
    let out = tokio::time::timeout(Duration::from_secs(60), bench.wait_with_output())
        .await
        .expect("the bench exits")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    for child in children {
        let alive = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "worker {child} outlived the bench");
    }
    let left: Vec<String> = scratch().await.into_iter().filter(|d| !before.contains(d)).collect();
    assert!(left.is_empty(), "the scratch database is dropped: {left:?}");
}

/// `ordo bench --steady-rate … --csv`: the soak benchmark's samples, one line per sample with throughput, start
/// delays and claim figures, and every queue table and index per sample in the sibling relations file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_bench_writes_its_samples_as_csv() {
    let url = testkit::postgres_url().await;
    let dir = std::env::temp_dir().join(format!("ordo-soak-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("soak.csv");
    let csv_arg = csv.to_string_lossy();
    let summary = bench_json(&[
        "--steady-rate",
        "200",
        "--steady-secs",
        "6",
        "--sample-secs",
        "2",
        "--concurrency",
        "8",
        "--latency-samples",
        "0",
        "--pin-xmin",
        "--csv",
        &csv_arg,
        "--database-url",
        &url,
    ])
    .await;
    let samples = std::fs::read_to_string(&csv).unwrap();
    let relations = std::fs::read_to_string(dir.join("soak-relations.csv")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let mut lines = samples.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for column in [
        "secs",
        "throughput_per_s",
        "start_p50_ms",
        "start_p99_ms",
        "claim_p99_ms",
        "dead_tuples",
    ] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "one line per 2 s of a 6 s load:\n{samples}");
    assert_eq!(summary["steady"].as_array().unwrap().len(), 3);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let enqueued: usize = rows.iter().map(|r| r[col("enqueued")].parse::<usize>().unwrap()).sum();
    assert_eq!(enqueued, summary["jobs"].as_u64().unwrap() as usize);
    // Each sample after the first measures the previous one's jobs, started or still waiting.
    for r in &rows[1..] {
        assert!(r[col("start_p50_ms")].parse::<f64>().unwrap() >= 0.0, "{r:?}");
        assert!(r[col("start_p99_ms")].parse::<f64>().unwrap() >= r[col("start_p50_ms")].parse::<f64>().unwrap());
    }
    // The snapshot held open keeps every claimed and finished job's old row version.
    assert!(rows[2][col("dead_tuples")].parse::<i64>().unwrap() > 0, "{samples}");
    for name in [
        ",job,table,job,",
        ",job_claim_idx,index,job,",
        ",job_history_unkeyed_default,table,",
    ] {
        assert!(relations.contains(name), "{name} in\n{relations}");
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

/// `ordo bench --upgrade-from`: the previous release's binary (here this one) creates the schema and drains a
/// backlog while this binary's migrations run; the figures name each migration applied and the drain around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_bench_measures_the_drain_around_the_migrations() {
    let url = testkit::postgres_url().await;
    let summary = bench_json(&[
        "--backlog",
        "50000",
        "--workers",
        "1",
        "--concurrency",
        "16",
        "--upgrade-from",
        env!("CARGO_BIN_EXE_ordo"),
        "--database-url",
        &url,
    ])
    .await;
    let upgrade = &summary["upgrade"];
    // The same release on both sides: nothing left to apply, and its workers ran through.
    assert_eq!(upgrade["migrations"], serde_json::json!([]), "{summary}");
    assert_eq!(upgrade["workers_survived"], true, "{summary}");
    assert!(upgrade["drain_before_per_s"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(summary["jobs"].as_u64().unwrap() > 0, "{summary}");
    // A drain that made progress more than once had gaps between its reads of progress.
    assert!(upgrade["longest_pause_before_ms"].as_f64().unwrap() > 0.0, "{summary}");
    for field in [
        "migrate_secs",
        "longest_pause_during_ms",
        "drain_during_per_s",
        "drain_after_per_s",
    ] {
        assert!(upgrade[field].is_number(), "{field}: {summary}");
    }
}

/// Runs `ordo bench --json ARGS` without Redis and returns its summary; fails the test when the bench fails.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["bench", "--json"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
