//! Connection pools and the embedded migrations. Every role connects through here.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The schema migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors from connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL could not be parsed.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// The server did not answer within the connect timeout.
    #[error("could not connect to postgres at {target}: {source}")]
    Connect {
        /// Host and port tried, without credentials.
        target: String,
        /// The underlying error.
        source: sqlx::Error,
    },
    /// Applying or checking migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The schema is older than this binary needs.
    #[error("database schema is at version {found}, this binary needs {needed}: run `ordo migrate`")]
    SchemaTooOld {
        /// Latest applied migration.
        found: i64,
        /// Latest migration this binary knows.
        needed: i64,
    },
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Connects a pool of at most `max` connections; fails fast (5 s) when nothing answers.
pub async fn connect(url: &str, max: u32) -> Result<PgPool> {
    let opts: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::InvalidUrl(e.to_string()))?;
    // Every statement ordo issues is an index probe or an ordered index scan. With statistics taken while no
    // job ran, the planner believes `state = 'running'` matches one row and joins a batch of 1 000 ids against
    // a sequential scan: quadratic, seconds per batch. Ruling out sequential scans keeps batch writes on the
    // primary key whatever the statistics say.
    // JIT compilation pays off for long analytical queries, not for ordo's short ones: it added ~100 ms to the
    // first count over a large table.
    let opts = opts.options([("enable_seqscan", "off"), ("jit", "off")]);
    let target = format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    );
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(|source| Error::Connect { target, source })
}

/// How long a caller waits for a pooled connection before failing: a database that does not hand one out within
/// 5 s is down or saturated, and failing lets a retry loop or an HTTP 503 take over.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the database `url` names when it does not exist (`ordo migrate` on a fresh server), connecting to the
/// server's `postgres` database to do so. Returns whether it created it.
pub async fn create_database_if_missing(url: &str) -> Result<bool> {
    let opts: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::InvalidUrl(e.to_string()))?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(false);
    };
    let target = format!("{}:{}/postgres", opts.get_host(), opts.get_port());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts.database("postgres"))
        .await
        .map_err(|source| Error::Connect { target, source })?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&admin)
        .await?;
    if exists {
        admin.close().await;
        return Ok(false);
    }
    // An identifier cannot be a bind parameter; quoting doubles embedded quotes, as Postgres's quote_ident does.
    let created = sqlx::query(&format!("create database \"{}\"", name.replace('"', "\"\"")))
        .execute(&admin)
        .await;
    admin.close().await;
    match created {
        Ok(_) => Ok(true),
        // Another `ordo migrate` created it meanwhile (duplicate_database): the goal is met.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Applies every embedded migration not yet applied. Newer migrations unknown to this binary are ignored, so an
/// older binary keeps running against a newer schema during a rollout.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let migrator = Migrator {
        migrations: MIGRATOR.migrations.clone(),
        ignore_missing: true,
        ..Migrator::DEFAULT
    };
    migrator.run(pool).await?;
    Ok(())
}

/// Checks at start that every migration this binary knows has been applied.
pub async fn check_schema(pool: &PgPool) -> Result<()> {
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let found: Option<i64> = sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await
        .unwrap_or(None);
    let found = found.unwrap_or(0);
    if found < needed {
        return Err(Error::SchemaTooOld { found, needed });
    }
    Ok(())
}
