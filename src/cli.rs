//! The command line: one subcommand per role (CONTRACT §1). The only place `anyhow` and printing to stdout are
//! welcome.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{DbConfig, MetricsConfig, RedisConfig, TelemetryConfig, WorkerArgs};
use crate::engine::EngineHandlers;
use crate::runtime::Worker;
use crate::supervisor::Supervisor;

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
        metrics: MetricsConfig,
        #[command(flatten)]
        args: WorkerArgs,
    },
    /// Fire cron schedules; run one or many (one leads).
    Scheduler {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
        #[command(flatten)]
        args: crate::scheduler::SchedulerArgs,
    },
    /// Scale worker pools on queue depth and drive rollouts (promote, abort, complete) on their own.
    Autoscaler {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
        #[command(flatten)]
        args: crate::autoscale::AutoscalerArgs,
    },
    /// Queue benchmark; prints a JSON summary.
    Bench(crate::bench::BenchArgs),
    /// The whole cluster in one command: private PostgreSQL, API, scheduler, autoscaler, workers blue and green.
    Sandbox(crate::sandbox::SandboxArgs),
    /// HTTP API, /metrics, /healthz, /readyz.
    Api {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        args: crate::api::ApiArgs,
    },
    /// Stream a CSV/NDJSON file into today's load of a name, with progress; prints a JSON summary.
    Load(crate::load::client::LoadArgs),
    #[command(flatten)]
    Client(crate::client::Command),

    /// Accounts: create one directly in the database; list or delete them through the admin API.
    Account {
        #[command(flatten)]
        db: DbConfig,
        #[command(subcommand)]
        command: AccountCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create an account; prints `api_key=<key>` and `webhook_secret=<secret>` once.
    Create {
        /// Account id (a slug: a-z, 0-9, '-').
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Home region.
        #[arg(long, env = "ORDO_REGION", default_value = "local")]
        region: String,
    },
    #[command(flatten)]
    Admin(crate::client::AccountAdmin),
}

/// Parses the command line and runs the chosen role; exit code 0 on success.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli.telemetry.log;
    crate::telemetry::init(log);
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
            // Once: as a log line where logs are collected as JSON, else as a plain line for the person who ran it.
            let msg = describe(&e);
            match log {
                crate::config::LogFormat::Json => tracing::error!(error = %msg, "failed"),
                crate::config::LogFormat::Text => eprintln!("error: {msg}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, skipping a cause whose text an outer message already quotes (sqlx and
/// our own errors often repeat their source in their message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Migrate { db } => {
            let url = db.require()?;
            if crate::db::create_database_if_missing(url)
                .await
                .context("create the database")?
            {
                println!("database created");
            }
            let pool = crate::db::connect(url, 2).await.context("connect to postgres")?;
            crate::db::migrate(&pool).await.context("apply migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Worker {
            db,
            redis,
            metrics,
            args,
        } => {
            let mut cfg = args.to_config(&redis)?;
            let pool = crate::db::connect(db.require()?, 4)
                .await
                .context("connect to postgres")?;
            crate::db::check_schema(&pool)
                .await
                .context("check the schema version")?;
            // Without --queues a worker serves its pool's queues, and pool `default` also every queue no other
            // pool claims (CONTRACT §8).
            if args.queues.is_empty() {
                cfg.serve_unclaimed = cfg.pool == "default";
                if let Some(queues) = crate::rollout::pool_queues(&pool, &cfg.pool)
                    .await
                    .context("read the pool's queues")?
                    .filter(|q| !q.is_empty())
                {
                    cfg.queues = queues;
                }
            }
            pool.close().await;
            let spare = if cfg.serve_unclaimed { 8 } else { 4 };
            let pool = crate::db::connect(db.require()?, (cfg.queues.len() * cfg.claimers.max(1)) as u32 + spare)
                .await
                .context("connect to postgres")?;
            db.install_keys(&pool);
            let supervisor = Supervisor::on_signals();
            if args.stop_with_parent {
                supervisor.cancel_when_orphaned();
            }
            metrics.start(&supervisor);
            let engine = engine_handlers_with(args.webhook_allow_private);
            let worker = Worker::new(cfg, pool, ordo_workers::registry(), engine);
            let ran = worker.run(supervisor.token()).await;
            supervisor.stop().await;
            ran.context("run worker")?;
            Ok(())
        }
        Command::Autoscaler { db, metrics, args } => {
            let supervisor = Supervisor::on_signals();
            metrics.start(&supervisor);
            let ran = crate::autoscale::serve(&db, &args, supervisor.token()).await;
            supervisor.stop().await;
            ran.context("run autoscaler")?;
            Ok(())
        }
        Command::Scheduler {
            db,
            redis,
            metrics,
            args,
        } => {
            let supervisor = Supervisor::on_signals();
            metrics.start(&supervisor);
            let ran = crate::scheduler::serve(&db, &redis, &args, supervisor.token()).await;
            supervisor.stop().await;
            ran.context("run scheduler")?;
            Ok(())
        }
        Command::Api { db, redis, args } => {
            let supervisor = Supervisor::on_signals();
            let ran = crate::api::run(&db, &redis, &args, supervisor.token()).await;
            supervisor.stop().await;
            ran.context("run api")?;
            Ok(())
        }
        Command::Account {
            db,
            command: AccountCommand::Create { id, name, region },
        } => {
            let id = crate::tenancy::AccountId::parse(&id)?;
            let pool = crate::db::connect(db.require()?, 2)
                .await
                .context("connect to postgres")?;
            db.install_keys(&pool);
            let mut tx = pool.begin().await.context("create account")?;
            let created = crate::tenancy::create_account(&mut *tx, &id, &name, &region)
                .await
                .context("create account")?;
            crate::audit::record(&mut tx, crate::audit::Actor::Cli, "account.create", id.as_str())
                .await
                .context("record the account's creation")?;
            tx.commit().await.context("create account")?;
            println!("api_key={}", created.api_key);
            println!("webhook_secret={}", created.webhook_secret);
            Ok(())
        }
        Command::Account {
            command: AccountCommand::Admin(command),
            ..
        } => Ok(crate::client::commands::account(command).await?),
        Command::Client(command) => Ok(crate::client::commands::run(command).await?),
        Command::Sandbox(args) => {
            let supervisor = Supervisor::on_signals();
            let ran = crate::sandbox::run(args, supervisor.token(), |r| {
                println!("ordo sandbox ready: url={} api_key={} admin_token={}", r.url, r.api_key, r.admin_token);
                println!();
                println!("Dashboard: {}/ui (sign in with the api_key, or the admin_token for pools and accounts)", r.url);
                println!("For the CLI and scripts (the key and token stay the same across restarts of this directory):");
                println!("  export ORDO_URL={} ORDO_API_KEY={} ORDO_ADMIN_TOKEN={}", r.url, r.api_key, r.admin_token);
                println!();
                println!("Try (after the export above):");
                println!("  ordo jobs enqueue sleep --args '{{\"ms\": 500}}'");
                println!("  ordo jobs list");
                println!("  ordo queues");
                println!("Or with curl:");
                println!(
                    "  curl -s -X POST {}/api/jobs -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n       -d '{{\"kind\": \"sleep\", \"args\": {{\"ms\": 500}}}}'",
                    r.url, r.api_key
                );
                println!("  curl -s {}/api/queues -H 'Authorization: Bearer {}'", r.url, r.api_key);
                println!("  curl -s {}/api/accounts -H 'Authorization: Bearer {}'", r.url, r.admin_token);
                println!();
                println!("Ctrl-C stops everything.");
            })
            .await;
            supervisor.stop().await;
            ran.context("run sandbox")?;
            Ok(())
        }
        Command::Load(args) => {
            let supervisor = Supervisor::on_signals();
            let loaded = crate::load::client::run(&args, supervisor.token()).await;
            supervisor.stop().await;
            let summary = loaded.context("load the file")?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Bench(args) => {
            let supervisor = Supervisor::on_signals();
            let ran = crate::bench::run(args.clone(), supervisor.token()).await;
            supervisor.stop().await;
            let summary = ran.context("run benchmark")?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
    }
}

/// The engine's own job kinds (those that need the database) and their owners' maintenance chores.
/// `webhook_allow_private` lets webhooks reach
/// private and loopback addresses (`ORDO_WEBHOOK_ALLOW_PRIVATE`; test builds always allow them, for local
/// receivers).
pub fn engine_handlers_with(webhook_allow_private: bool) -> EngineHandlers {
    #[allow(unused_mut)]
    let mut h = EngineHandlers::new();
    #[cfg(feature = "testkit")]
    crate::probe::register(&mut h);
    crate::orchestration::register(&mut h, webhook_allow_private || cfg!(feature = "testkit"));
    crate::load::register(&mut h);
    h.chore(crate::orchestration::prune_chore());
    h.chore(crate::tenancy::purge_chore());
    h
}

/// The engine's job kinds with the contract's defaults (private webhook targets refused outside test builds).
pub fn engine_handlers() -> EngineHandlers {
    engine_handlers_with(false)
}
