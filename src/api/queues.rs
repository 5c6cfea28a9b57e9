//! `/api/queues`: per-queue figures, pause and resume (CONTRACT §4).

use std::time::Duration;

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, Problem};
use super::extract::{ApiPath, Limit, Page, QueryParams};
use crate::queue::{self, QueueStats};

/// A worker counts as live (its kinds claimable) while its heartbeat is this fresh: three heartbeat intervals of
/// the default 30 s lease.
const LIVE_WORKER: Duration = Duration::from_secs(30);

/// Waiting and running counts read from the live jobs, finished counts from the counters: both exact now.
async fn stats(tenant: &Tenant, tx: &mut sqlx::PgConnection) -> Result<Vec<QueueStats>, ApiError> {
    let active = queue::queue_stats(&mut *tx, &tenant.account, LIVE_WORKER).await?;
    let finished = queue::finished_counts(&mut *tx, &tenant.account).await?;
    Ok(queue::with_finished(active, &finished))
}

/// `GET /api/queues` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuePage {
    /// Every queue the account has jobs in or has paused.
    pub items: Vec<QueueStats>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Figures of every queue of the account.
#[utoipa::path(
    get,
    path = "/api/queues",
    tag = "queues",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "Queues in name order", body = QueuePage),
        (status = 422, description = "Invalid limit", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list(tenant: Tenant, page: Page) -> Result<Json<QueuePage>, ApiError> {
    let mut tx = tenant.begin().await?;
    let all = stats(&tenant, &mut tx).await?;
    tx.commit().await?;
    let (items, next_cursor) = page.of(all, |s| &s.queue);
    Ok(Json(QueuePage { items, next_cursor }))
}

fn check_queue(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::invalid("/path/queue", "must be 1 to 255 characters"));
    }
    Ok(())
}

async fn set_paused(tenant: &Tenant, name: &str, paused: bool) -> Result<QueueStats, ApiError> {
    check_queue(name)?;
    let mut tx = tenant.begin().await?;
    if paused {
        queue::pause(&mut *tx, &tenant.account, name).await?;
    } else {
        queue::resume(&mut *tx, &tenant.account, name).await?;
    }
    let stats = stats(tenant, &mut tx).await?;
    tx.commit().await?;
    if !paused {
        tenant.state().waker().wake(name);
    }
    Ok(stats.into_iter().find(|s| s.queue == name).unwrap_or(QueueStats {
        queue: name.to_owned(),
        paused,
        available: 0,
        scheduled: 0,
        running: 0,
        retryable: 0,
        completed: 0,
        discarded: 0,
        cancelled: 0,
        unclaimable: 0,
        limited: 0,
        oldest_available_ms: 0,
    }))
}

/// Pause a queue for the account: its jobs wait, running ones finish.
#[utoipa::path(
    post,
    path = "/api/queues/{queue}/pause",
    tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue", body = QueueStats),
        (status = 422, description = "Invalid queue name", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account, queue = %name))]
pub async fn pause(tenant: Tenant, ApiPath(name): ApiPath<String>) -> Result<Json<QueueStats>, ApiError> {
    set_paused(&tenant, &name, true).await.map(Json)
}

/// Resume a paused queue.
#[utoipa::path(
    post,
    path = "/api/queues/{queue}/resume",
    tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue", body = QueueStats),
        (status = 422, description = "Invalid queue name", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account, queue = %name))]
pub async fn resume(tenant: Tenant, ApiPath(name): ApiPath<String>) -> Result<Json<QueueStats>, ApiError> {
    set_paused(&tenant, &name, false).await.map(Json)
}

/// The longest history asked for at once: the counters and samples are kept for the finished-job retention
/// (24 h by default).
const MAX_HISTORY_MINUTES: i64 = 1440;

/// Sums over the window.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct HistoryTotals {
    /// Jobs enqueued.
    pub enqueued: i64,
    /// Jobs completed.
    pub completed: i64,
    /// Failed attempts.
    pub failed: i64,
    /// Jobs discarded.
    pub discarded: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
}

/// `GET /api/queues/history` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The window's start: the minute `minutes` ago.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Minutes with a count or a sample, oldest first (minutes with neither are left out).
    pub items: Vec<queue::Minute>,
    /// Always null: the window is one page.
    pub next_cursor: Option<String>,
    /// Sums of the counts over the window.
    pub totals: HistoryTotals,
}

/// Per-minute history of the account's queues: throughput and failures (counted), depth and start delay
/// (sampled once a minute), kept on the server for the finished-job retention.
#[utoipa::path(
    get,
    path = "/api/queues/history",
    tag = "queues",
    params(
        ("minutes" = Option<i64>, Query, minimum = 1, maximum = 1440, description = "The window, 1..1440 minutes back from now (default 60)"),
        ("queue" = Option<String>, Query, description = "Only this queue (default: all, summed)"),
    ),
    responses(
        (status = 200, description = "The window's minutes and totals", body = HistoryPage),
        (status = 422, description = "Invalid window", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn history(tenant: Tenant, q: QueryParams) -> Result<Json<HistoryPage>, ApiError> {
    // One page whatever the limit; a bad one is still refused as on every list.
    Limit::read(&q)?;
    let minutes = match q.get("minutes") {
        None => 60,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_HISTORY_MINUTES).contains(&n) => n,
            _ => return Err(ApiError::invalid("/query/minutes", "must be an integer from 1 to 1440")),
        },
    };
    let since = chrono::Utc::now() - chrono::Duration::minutes(minutes - 1);
    let mut tx = tenant.begin().await?;
    let items = queue::minutes(&mut tx, &tenant.account, q.get("queue"), since).await?;
    tx.commit().await?;
    let mut totals = HistoryTotals::default();
    for m in &items {
        totals.enqueued += m.enqueued;
        totals.completed += m.completed;
        totals.failed += m.failed;
        totals.discarded += m.discarded;
        totals.cancelled += m.cancelled;
    }
    Ok(Json(HistoryPage {
        since,
        items,
        next_cursor: None,
        totals,
    }))
}
