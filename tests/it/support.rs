//! Helpers shared by the integration tests.

use std::process::Stdio;
use std::time::Duration;

use ordo::queue::{self, JobState};
use ordo::runtime::{Worker, WorkerConfig};
use ordo::tenancy::AccountId;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The account every test uses unless it tests isolation.
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

/// Starts the real `ordo worker` binary against `db_url`.
pub fn spawn_worker_process(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
    c.arg("worker")
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("REDIS_URL")
        .env("ORDO_POLL_MS", "50")
        .env("ORDO_RETRY_BASE_MS", "50")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().expect("spawn ordo worker")
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child is running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

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

/// Counts jobs by state.
pub async fn count_state(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from job_all where state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count")
}
