//! Helpers shared by the integration tests.

use std::process::Stdio;
use std::time::Duration;

use ordo::queue::{self, JobState};
use ordo::runtime::{Worker, WorkerConfig};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The account every test uses unless it tests isolation.
/// Index entries and heap rows of `job` the current transaction has read so far: its own statistics, exact and
/// immediate. The backend's pending counters may still hold earlier transactions' reads: take a difference.
pub const JOB_READS: &str = r#"
    select (select coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)
            from pg_index where indrelid = 'job'::regclass)::bigint
         + pg_stat_get_xact_tuples_fetched('job'::regclass)
         + pg_stat_get_xact_tuples_returned('job'::regclass)
    "#;

pub fn acct() -> AccountId {
    AccountId::default_account()
}

/// A worker config for fast tests: short poll, tiny backoff.
pub fn fast_config() -> WorkerConfig {
    let mut cfg = WorkerConfig::new("default", "v1");
    cfg.poll = Duration::from_millis(50);
    cfg.retry = queue::RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
    };
    cfg.drain = Duration::from_secs(10);
    cfg
}

/// A worker running in this process; cancel the token to stop it.
pub struct InProcessWorker {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl InProcessWorker {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task did not panic");
    }
}

/// Starts an in-process worker with the built-in kinds and the probe kinds.
pub fn start_worker(pool: &PgPool, cfg: WorkerConfig) -> InProcessWorker {
    let stop = CancellationToken::new();
    let w = Worker::new(
        cfg,
        pool.clone(),
        ordo_workers::registry(),
        ordo::cli::engine_handlers(),
    );
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        w.run(token).await.expect("worker runs");
    });
    InProcessWorker { stop, handle }
}

/// `ordo <args>` against `db_url`, without Redis, logging warnings only, killed on drop; the environment lists
/// are applied in order, so a later one overrides an earlier one.
pub fn ordo_command(args: &[&str], db_url: &str, envs: &[&[(&str, &str)]]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
    c.args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs.iter().copied().flatten() {
        c.env(k, v);
    }
    c
}

/// Starts the real `ordo worker` binary against `db_url`.
pub fn spawn_worker_process(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Child {
    let fast = [("ORDO_POLL_MS", "50"), ("ORDO_RETRY_BASE_MS", "50")];
    ordo_command(&[&["worker"], args].concat(), db_url, &[&fast, extra_env])
        .spawn()
        .expect("spawn ordo worker")
}

/// Starts the real `ordo api` on a free port of 127.0.0.1 with `extra_env` (no drain window on SIGTERM unless it
/// sets `ORDO_API_DRAIN_MS`), and waits until `client` gets 200 from `/readyz` at `<origin>:<port>` (`origin` like
/// `http://127.0.0.1`); returns it and its base URL.
pub async fn spawn_api_process(
    db_url: &str,
    extra_env: &[(&str, &str)],
    origin: &str,
    client: &reqwest::Client,
) -> (Child, String) {
    let port = testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let api = [
        ("ORDO_LISTEN", listen.as_str()),
        ("ORDO_RATE_LIMIT_RPS", "0"),
        ("ORDO_API_DRAIN_MS", "0"),
    ];
    let child = ordo_command(&["api"], db_url, &[&api, extra_env])
        .spawn()
        .expect("spawn ordo api");
    let url = format!("{origin}:{port}");
    eventually(Duration::from_secs(30), "ordo api to be ready", || {
        let req = client.get(format!("{url}/readyz"));
        async move { req.send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    (child, url)
}

/// With Redis at `redis_url` (trusting `ca_file` for `rediss://`), an idle worker whose poll interval is an hour
/// starts each new job at once, on the wake-up.
pub async fn wake_ups_start_jobs_at_once(redis_url: &str, ca_file: Option<&std::path::Path>) {
    let db = testkit::db().await;
    let mut cfg = fast_config();
    cfg.poll = Duration::from_secs(3600);
    cfg.redis_url = Some(redis_url.to_owned());
    cfg.redis_ca_file = ca_file.map(ToOwned::to_owned);
    let w = start_worker(&db.pool, cfg);
    let stop = CancellationToken::new();
    let client = ordo::wake::client(redis_url, ca_file).unwrap();
    let waker = ordo::wake::Waker::with_client(client, &db.name, stop.clone());
    let q = queue::Queue::new(db.pool.clone(), waker);
    // The worker pokes itself once when its subscription is up; wait until it is idle.
    eventually(Duration::from_secs(10), "worker registered", || async {
        (!queue::live_workers(&db.pool, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .await;
    for _ in 0..3 {
        let j = q
            .enqueue(&acct(), queue::NewJob::new("noop", serde_json::json!({})))
            .await
            .unwrap()
            .job;
        wait_for_state(&db.pool, j.id, JobState::Completed, Duration::from_secs(20)).await;
    }
    stop.cancel();
    w.stop().await;
}

pub use ordo::testkit::{count_state, signal};

/// Creates the table the `test.record` probe writes.
pub async fn create_execution_table(pool: &PgPool) {
    sqlx::query(
        r#"
        create table test_execution (
            id bigserial primary key,
            job_id bigint not null,
            attempt int not null,
            pid int not null,
            started_at timestamptz not null,
            finished_at timestamptz
        )
        "#,
    )
    .execute(pool)
    .await
    .expect("create test_execution");
}

/// Polls until the job reaches `state`.
pub async fn wait_for_state(pool: &PgPool, id: queue::JobId, state: JobState, timeout: Duration) -> queue::Job {
    ordo::testkit::eventually(timeout, &format!("job {id} to be {state}"), || async {
        let j = queue::get(pool, &acct(), id).await.ok()?;
        (j.state == state).then_some(j)
    })
    .await
}

/// Sends SIGTERM to each child and asserts that it exits 0 within 30 s.
pub async fn stop_all(children: impl IntoIterator<Item = Child>) {
    for child in children {
        testkit::terminate(child).await;
    }
}

/// Registers a live worker of `pool`/`version` serving `queue` with the kind `kind`, as a worker process would.
pub async fn register_worker(db: &PgPool, id: &str, (pool, version): (&str, &str), queue: &str, kind: &str) {
    let now = chrono::Utc::now();
    let worker = queue::WorkerInfo {
        id: id.to_owned(),
        pool: pool.to_owned(),
        version: version.to_owned(),
        queues: vec![queue.to_owned()],
        kinds: vec![kind.to_owned()],
        host: "test".to_owned(),
        pid: 1,
        concurrency: 1,
        started_at: now,
        heartbeat_at: now,
        stopping: false,
    };
    queue::register_worker(db, &worker).await.unwrap();
}
