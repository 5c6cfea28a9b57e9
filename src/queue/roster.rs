//! The worker roster (the `worker` table): each worker process announces its pool, version, queues and kinds, and
//! heartbeats. A worker counts as live while its heartbeat is fresh.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::Result;

/// A registered worker.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct WorkerInfo {
    /// Unique per process.
    pub id: String,
    /// Pool served.
    pub pool: String,
    /// Code version.
    pub version: String,
    /// Queues served.
    pub queues: Vec<String>,
    /// Kinds it has handlers for.
    pub kinds: Vec<String>,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Slots.
    pub concurrency: i32,
    /// Registration time.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// True once it began shutting down.
    pub stopping: bool,
}

/// Registers (or re-registers) a worker.
pub async fn register_worker<'e>(exec: impl PgExecutor<'e>, w: &WorkerInfo) -> Result<()> {
    sqlx::query(
        r#"
        insert into worker (id, pool, version, queues, kinds, host, pid, concurrency, started_at, heartbeat_at)
        values ($1, $2, $3, $4, $5, $6, $7, $8, now(), now())
        on conflict (id) do update
        set heartbeat_at = now(),
            queues = excluded.queues,
            kinds = excluded.kinds,
            stopping = false
        "#,
    )
    .bind(&w.id)
    .bind(&w.pool)
    .bind(&w.version)
    .bind(&w.queues)
    .bind(&w.kinds)
    .bind(&w.host)
    .bind(w.pid)
    .bind(w.concurrency)
    .execute(exec)
    .await?;
    Ok(())
}

/// Refreshes a worker's heartbeat; returns false when its row is gone (it was pruned as stale and must
/// re-register).
pub async fn heartbeat_worker<'e>(exec: impl PgExecutor<'e>, id: &str, stopping: bool) -> Result<bool> {
    let done = sqlx::query("update worker set heartbeat_at = now(), stopping = $2 where id = $1")
        .bind(id)
        .bind(stopping)
        .execute(exec)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a worker's row at a clean exit.
pub async fn deregister_worker<'e>(exec: impl PgExecutor<'e>, id: &str) -> Result<()> {
    sqlx::query("delete from worker where id = $1")
        .bind(id)
        .execute(exec)
        .await?;
    Ok(())
}

/// Workers whose heartbeat is younger than `fresh`; stale rows older than ten times that are deleted first.
pub async fn live_workers<'e>(exec: impl PgExecutor<'e> + Copy, fresh: Duration) -> Result<Vec<WorkerInfo>> {
    sqlx::query("delete from worker where heartbeat_at < now() - make_interval(secs => $1)")
        .bind(fresh.as_secs_f64() * 10.0)
        .execute(exec)
        .await?;
    let rows = sqlx::query_as(
        r#"
        select id, pool, version, queues, kinds, host, pid, concurrency, started_at, heartbeat_at, stopping
        from worker
        where heartbeat_at >= now() - make_interval(secs => $1)
        order by pool, version, id
        "#,
    )
    .bind(fresh.as_secs_f64())
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// Running jobs per worker (by lease owner, which is the worker's id), for the workers that hold any. Reads the
/// running jobs only (the lease index).
pub async fn running_by_worker<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        r#"
        select lease_owner, count(*)
        from job
        where leased_until is not null and state = 'running' and lease_owner is not null
        group by lease_owner
        order by lease_owner
        "#,
    )
    .fetch_all(exec)
    .await?)
}
