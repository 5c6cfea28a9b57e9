//! apalis on ordo, both ways round.
//!
//! `apalis-ordo-example worker` runs an apalis worker (`WorkerBuilder`) for ordo jobs of kind `example.work`,
//! whoever enqueued them (ordo's HTTP API, `ordo::queue`, or an apalis `TaskSink`), until SIGINT or SIGTERM:
//!
//! ```sh
//! curl -s -X POST localhost:8080/api/jobs -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
//!      -d '{"kind": "example.work", "args": {"ms": 100}}'
//! ```
//!
//! `apalis-ordo-example push N` pushes N tasks through apalis's `TaskSink`; each is an ordo job that
//! `GET /api/jobs/{id}` shows, run by any worker of the kind.

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_ordo::{Config, OrdoBackend, OrdoJob};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The example's job kind.
const KIND: &str = "example.work";

/// apalis on ordo: run a worker, or push tasks.
#[derive(Parser)]
struct Cli {
    /// The ordo database (migrated by `ordo migrate`).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Lease of a claimed job, in milliseconds.
    #[arg(long, env = "APALIS_ORDO_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// Longest idle wait between claims, in milliseconds.
    #[arg(long, env = "APALIS_ORDO_POLL_MS", default_value_t = 1_000)]
    poll_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs an apalis worker for `example.work` jobs until SIGINT or SIGTERM.
    Worker,
    /// Pushes N `example.work` tasks through apalis's `TaskSink`.
    Push {
        /// How many.
        n: u64,
        /// How long each sleeps, in milliseconds.
        #[arg(long, default_value_t = 0)]
        ms: u64,
    },
}

/// The task: sleep a while, then fail if asked to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fail: bool,
}

/// The handler: its result names the process and attempt that ran it.
async fn work(task: Work, job: Data<OrdoJob>) -> Result<Value, BoxDynError> {
    tokio::time::sleep(Duration::from_millis(task.ms)).await;
    if task.fail {
        return Err("asked to fail".into());
    }
    Ok(json!({"pid": std::process::id(), "attempt": job.attempt}))
}

async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let cli = Cli::parse();
    ordo::telemetry::init(ordo::config::LogFormat::Text);
    // ordo's own pool settings (see `ordo::db::connect`): its statements rely on them.
    let pool = ordo::db::connect(&cli.database_url, 20).await?;
    let config = Config::new(KIND)
        .lease(Duration::from_millis(cli.lease_ms))
        .poll(Duration::from_millis(cli.poll_ms));
    let mut backend: OrdoBackend<Work> = OrdoBackend::new(pool, config);
    match cli.command {
        Command::Worker => {
            let worker = WorkerBuilder::new("apalis-ordo-example").backend(backend).build(work);
            worker.run_until(stop_signal()).await?;
        }
        Command::Push { n, ms } => {
            let tasks = (0..n).map(|_| Work { ms, fail: false }).collect();
            backend.push_bulk(tasks).await?;
            tracing::info!(tasks = n, "pushed");
        }
    }
    Ok(())
}
