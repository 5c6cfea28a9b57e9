//! Finding jobs: one page of an account's jobs (or every account's, for the admin) by id, idempotency key, queue,
//! state, kind or kind prefix and creation time, newest first; and retry or cancel of every job a filter matches,
//! bounded, one job at a time through [`super::retry`] and [`super::cancel`].
//!
//! Both tables are read newest first along an index: `job` (live work only, small) by its primary key, history by
//! `(account_id, id)`; for every account at once, history is read per account (a lateral walk of each account's
//! range), so no query sorts the whole history. An idempotency key is looked up in `job_key`; a time range also
//! bounds history's `finished_at` (a job finishes after it is created), so whole day partitions are skipped.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::types::{open_jobs, JOB_COLUMNS};
use super::{Error, Job, JobId, JobState, Result};
use crate::tenancy::AccountId;

/// Filters of a job listing; all optional but `limit`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only kinds starting with this.
    pub kind_prefix: Option<String>,
    /// Only the job with this id.
    pub id: Option<JobId>,
    /// Only the job enqueued with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only jobs created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_to: Option<DateTime<Utc>>,
    /// Only ids below this one (the cursor of the previous page).
    pub before: Option<JobId>,
    /// Page size.
    pub limit: i64,
}

/// The filters of both tables, over the parameters `list_sql` binds (`$1` is the account, or null for all).
const FILTERS: &str = r#"($2::text is null or queue = $2)
              and ($3::text is null or state = $3 or ($3 = 'available' and state = 'parked'))
              and ($4::text is null or kind = $4)
              and ($5::bigint is null or id < $5)
              and ($9::bigint is null or id = $9)
              and ($10::text is null or id = any(array(
                  select k.job_id from job_key k
                  where k.idempotency_key = $10 and ($1::text is null or k.account_id = $1))))
              and ($11::text is null or starts_with(kind, $11))
              and ($12::timestamptz is null or created_at >= $12)
              and ($13::timestamptz is null or created_at < $13)"#;

/// The listing of `columns`: each table is read only when the state asked for can be in it ($7: live, $8:
/// finished); with the custom plans `list` asks for, a branch whose flag is false reads nothing, and so does the
/// branch of the other scope (`$1` null or not).
fn list_sql(columns: &str) -> String {
    format!(
        r#"
        select {columns}
        from (
            (select {JOB_COLUMNS}
             from job
             where $7 and ($1::text is null or account_id = $1) and {FILTERS}
             order by id desc
             limit $6)
            union all
            (select {JOB_COLUMNS}
             from job_history
             where $8 and $1::text is not null and account_id = $1 and {FILTERS}
               and ($12::timestamptz is null or finished_at >= $12)
             order by id desc
             limit $6)
            union all
            (select h.*
             from account a
             cross join lateral (
                 select {JOB_COLUMNS}
                 from job_history
                 where account_id = a.id and {FILTERS}
                   and ($12::timestamptz is null or finished_at >= $12)
                 order by id desc
                 limit $6
             ) h
             where $8 and $1::text is null)
        ) j
        order by id desc
        limit $6
        "#
    )
}

static LIST_SQL: LazyLock<String> = LazyLock::new(|| list_sql(JOB_COLUMNS));
static IDS_SQL: LazyLock<String> = LazyLock::new(|| list_sql("id"));

fn bind<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    account: Option<&'q AccountId>,
    f: &'q JobFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    // Custom plans (not persistent): the optional filters change which index, and which branch, is right.
    q.persistent(false)
        .bind(account.map(AccountId::as_str))
        .bind(&f.queue)
        .bind(f.state)
        .bind(&f.kind)
        .bind(f.before)
        .bind(f.limit + 1)
        .bind(f.state.is_none_or(|s| !s.is_finished()))
        .bind(f.state.is_none_or(|s| s.is_finished()))
        .bind(f.id)
        .bind(&f.idempotency_key)
        .bind(&f.kind_prefix)
        .bind(f.created_from)
        .bind(f.created_to)
}

/// Lists the account's jobs newest first (every account's when `account` is `None`); returns the page and the
/// cursor of the next one.
pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    account: &AccountId,
    f: &JobFilter,
) -> Result<(Vec<Job>, Option<JobId>)> {
    list_in(exec, Some(account), f).await
}

/// [`list`] over every account (the admin's view; run it as the owner, which row-level security does not limit).
pub async fn list_all<'e>(exec: impl PgExecutor<'e>, f: &JobFilter) -> Result<(Vec<Job>, Option<JobId>)> {
    list_in(exec, None, f).await
}

async fn list_in<'e>(
    exec: impl PgExecutor<'e>,
    account: Option<&AccountId>,
    f: &JobFilter,
) -> Result<(Vec<Job>, Option<JobId>)> {
    let mut jobs: Vec<Job> = bind(sqlx::query_as(LIST_SQL.as_str()), account, f)
        .fetch_all(exec)
        .await?;
    let next = if jobs.len() as i64 > f.limit {
        jobs.truncate(f.limit.max(0) as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    open_jobs(&mut jobs).await?;
    Ok((jobs, next))
}

/// Most jobs one [`bulk`] call changes.
pub const MAX_BULK: i64 = 1000;

/// What [`bulk`] does to each job it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// [`super::retry`].
    Retry,
    /// [`super::cancel`].
    Cancel,
}

/// What a bulk retry or cancel did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = JobBulkOutcome)]
pub struct BulkOutcome {
    /// Jobs the filter matched (at most the limit).
    pub matched: u64,
    /// Jobs retried or cancelled.
    pub changed: u64,
    /// Jobs whose state does not allow the action (finished, or changed since they were matched).
    pub skipped: u64,
    /// More jobs match than the limit: send the request again for the next ones.
    pub more: bool,
}

/// Retries or cancels the account's jobs the filter matches, newest first, at most `f.limit` (capped at
/// [`MAX_BULK`]), each as [`super::retry`] or [`super::cancel`] would alone (so a job of a concurrency key keeps
/// its lane's order). Run it in one transaction to make it all or nothing on a database error; a job whose state
/// does not allow the action is skipped, not an error.
pub async fn bulk(
    conn: &mut PgConnection,
    account: &AccountId,
    f: &JobFilter,
    action: BulkAction,
) -> Result<BulkOutcome> {
    let f = JobFilter {
        limit: f.limit.clamp(1, MAX_BULK),
        ..f.clone()
    };
    let mut ids: Vec<(JobId,)> = bind(sqlx::query_as(IDS_SQL.as_str()), Some(account), &f)
        .fetch_all(&mut *conn)
        .await?;
    let more = ids.len() as i64 > f.limit;
    ids.truncate(f.limit as usize);
    let mut out = BulkOutcome {
        matched: ids.len() as u64,
        more,
        ..BulkOutcome::default()
    };
    for (id,) in ids {
        let done = match action {
            BulkAction::Retry => super::retry(conn, account, id).await,
            BulkAction::Cancel => super::cancel(conn, account, id).await,
        };
        match done {
            Ok(_) => out.changed += 1,
            Err(Error::InvalidState { .. } | Error::NotFound { .. }) => out.skipped += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
