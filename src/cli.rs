//! The command line: one subcommand per role (CONTRACT §1). The only place `anyhow` and printing to stdout are
//! welcome.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{DbConfig, RedisConfig, TelemetryConfig, WorkerArgs};
use crate::runtime::{EngineHandlers, Worker};

/// ordo: a durable orchestration engine on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "ordo", version, about)]
pub struct Cli {
    #[command(flatten)]
    telemetry: TelemetryConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply migrations (idempotent).
    Migrate {
        #[command(flatten)]
        db: DbConfig,
    },
    /// Run a stateless worker of a pool at a version.
    Worker {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        args: WorkerArgs,
    },
    /// Queue benchmark; prints a JSON summary.
    Bench(crate::bench::BenchArgs),
}

/// Parses the command line and runs the chosen role; exit code 0 on success.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init(cli.telemetry.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("failed to {e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Migrate { db } => {
            let pool = crate::db::connect(db.require()?, 2)
                .await
                .context("connect to postgres")?;
            crate::db::migrate(&pool).await.context("apply migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Worker { db, redis, args } => {
            let cfg = args.to_config(&redis)?;
            let pool = crate::db::connect(db.require()?, (cfg.queues.len() as u32 + 4).max(6))
                .await
                .context("connect to postgres")?;
            crate::db::check_schema(&pool)
                .await
                .context("check the schema version")?;
            let shutdown = crate::supervisor::shutdown_on_signals();
            let worker = Worker::new(cfg, pool, ordo_workers::registry(), engine_handlers());
            worker.run(shutdown).await.context("run worker")?;
            Ok(())
        }
        Command::Bench(args) => {
            let summary = crate::bench::run(args.clone(), CancellationToken::new())
                .await
                .context("run benchmark")?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
    }
}

/// The engine's own job kinds (those that need the database).
pub fn engine_handlers() -> EngineHandlers {
    #[allow(unused_mut)]
    let mut h = EngineHandlers::new();
    #[cfg(feature = "testkit")]
    crate::probe::register(&mut h);
    h
}
