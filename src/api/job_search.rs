//! Finding jobs (CONTRACT §4): `GET /api/jobs` with its filters, `POST /api/jobs/bulk` (retry or cancel what a
//! filter matches, bounded), and `GET /api/admin/jobs`, the admin's listing across accounts.
//!
//! The filters are read the same way from a query string and from the bulk body, so they mean the same in both.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, Tenant};
use super::body::{self, field, Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::{id_cursor, numeric_id, IdPage, Limit, QueryParams};
use super::jobs::JobPage;
use super::AppState;
use crate::queue::{self, BulkAction, BulkOutcome, FieldError, Job, JobFilter, JobId, JobState};
use crate::tenancy::AccountId;

/// The filters whose values have a type or a set of values: given empty, they are as wrong as any other value.
const TYPED: [&str; 4] = ["state", "id", "from", "to"];

/// The filters of a job listing, as [`JobSearch::read`] reads them from a query string or a bulk body; the OpenAPI
/// document describes the same fields.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobSearch {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only kinds starting with this.
    pub kind_prefix: Option<String>,
    /// Only the job with this id.
    #[param(value_type = Option<String>, pattern = "^[1-9][0-9]{0,17}$")]
    pub id: Option<JobId>,
    /// Only the job enqueued with this key.
    pub idempotency_key: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Only jobs created before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
}

impl JobSearch {
    /// Reads the filters through `get` (`prefix` + name is each field's error path); every invalid one is
    /// reported.
    fn read(get: impl Fn(&str) -> Option<String>, prefix: &str, errs: &mut Vec<FieldError>) -> JobSearch {
        let nonempty = |name: &str| get(name).filter(|v| !v.is_empty() || TYPED.contains(&name));
        let state = nonempty("state").and_then(|s| match s.parse::<JobState>() {
            Ok(s) => Some(s),
            Err(_) => {
                let valid: Vec<&str> = queue::ACTIVE_STATES
                    .iter()
                    .chain(queue::FINISHED_STATES.iter())
                    .map(|s| s.as_str())
                    .collect();
                errs.push(FieldError::new(
                    format!("{prefix}state"),
                    format!("unknown state {s:?}: must be one of {}", valid.join(", ")),
                ));
                None
            }
        });
        let id = nonempty("id").and_then(|id| match numeric_id(&id) {
            Some(id) => Some(JobId(id)),
            None => {
                errs.push(FieldError::new(format!("{prefix}id"), "must be a job id (a number)"));
                None
            }
        });
        let mut time = |name: &str| {
            let v = nonempty(name)?;
            match DateTime::parse_from_rfc3339(&v) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    errs.push(FieldError::new(
                        format!("{prefix}{name}"),
                        "must be an RFC 3339 time, e.g. 2026-12-01T12:00:00Z",
                    ));
                    None
                }
            }
        };
        let (from, to) = (time("from"), time("to"));
        JobSearch {
            queue: nonempty("queue"),
            state,
            kind: nonempty("kind"),
            kind_prefix: nonempty("kind_prefix"),
            id,
            idempotency_key: nonempty("idempotency_key"),
            from,
            to,
        }
    }

    /// The queue's filter for these filters, `limit` jobs below `before`.
    fn filter(self, limit: i64, before: Option<JobId>) -> JobFilter {
        JobFilter {
            queue: self.queue,
            state: self.state,
            kind: self.kind,
            kind_prefix: self.kind_prefix,
            id: self.id,
            idempotency_key: self.idempotency_key,
            created_from: self.from,
            created_to: self.to,
            before,
            limit,
        }
    }
}

/// The filter, page size and cursor of a listing's query string ([`JobSearch`] and [`IdPage`]); every invalid
/// parameter is reported.
fn listing(q: &QueryParams) -> Result<JobFilter, ApiError> {
    /// A parameter's value, or `None` with its field errors added to the others.
    fn named<T>(r: Result<T, ApiError>, errs: &mut Vec<FieldError>) -> Result<Option<T>, ApiError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::Invalid(mut v)) => {
                errs.append(&mut v);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
    let mut errs = Vec::new();
    let limit = named(Limit::read(q).map(|l| l.limit), &mut errs)?;
    let search = JobSearch::read(|n| q.given(n).map(str::to_owned), "/query/", &mut errs);
    let cursor = named(id_cursor(q, "cursor"), &mut errs)?.flatten();
    match limit {
        Some(limit) if errs.is_empty() => Ok(search.filter(limit, cursor.map(JobId))),
        _ => Err(ApiError::Invalid(errs)),
    }
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "jobs",
    params(
        JobSearch,
        IdPage,
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 422, description = "Invalid filter", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list(tenant: Tenant, q: QueryParams) -> Result<Json<JobPage>, ApiError> {
    let filter = listing(&q)?;
    let mut tx = tenant.begin().await?;
    let (items, next) = queue::list(&mut *tx, &tenant.account, &filter).await?;
    tx.commit().await?;
    Ok(Json(JobPage {
        items,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

// The filters are strings (or numbers) read by `JobSearch::read`, as the query string's.
/// `POST /api/jobs/bulk` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = JobBulk)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// `retry` or `cancel`.
    #[serde(deserialize_with = "bulk_action")]
    #[schema(value_type = String)]
    action: BulkAction,
    /// Only this queue.
    #[serde(default, deserialize_with = "filter")]
    queue: Option<String>,
    /// Only this state.
    #[serde(default, deserialize_with = "filter")]
    #[schema(value_type = Option<JobState>)]
    state: Option<String>,
    /// Only this kind.
    #[serde(default, deserialize_with = "filter")]
    kind: Option<String>,
    /// Only kinds starting with this.
    #[serde(default, deserialize_with = "filter")]
    kind_prefix: Option<String>,
    /// Only the job with this id.
    #[serde(default, deserialize_with = "filter")]
    id: Option<String>,
    /// Only the job enqueued with this key.
    #[serde(default, deserialize_with = "filter")]
    idempotency_key: Option<String>,
    /// Only jobs created at or after this time.
    #[serde(default, deserialize_with = "filter")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    from: Option<String>,
    /// Only jobs created before this time.
    #[serde(default, deserialize_with = "filter")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    to: Option<String>,
    /// Only jobs with an id below this one (the list's cursor: what a confirmation showed, not what came since).
    #[serde(default, deserialize_with = "filter")]
    before: Option<String>,
    /// At most this many jobs, newest first, 1..1000 (default 1000).
    #[serde(default, deserialize_with = "field::opt_int::<_, _, 1, 1000>")]
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl RequestBody for BulkBody {
    /// When a field is wrong, the filters' own errors (an unknown state, a malformed time) are named beside it,
    /// as the handler would name them.
    fn read(json: &Value, at: &str) -> Result<Self, Vec<FieldError>> {
        let mut errs = match body::read::<Self>(json, at) {
            Ok(bulk) => return Ok(bulk),
            Err(errs) => errs,
        };
        let text = |name: &str| match json.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut more = Vec::new();
        JobSearch::read(text, &format!("{at}/"), &mut more);
        more.retain(|e| !errs.iter().any(|x| x.path == e.path));
        errs.append(&mut more);
        Err(errs)
    }
}

impl BulkBody {
    /// A filter by its name in the query string.
    fn filter(&self, name: &str) -> Option<String> {
        let v = match name {
            "queue" => &self.queue,
            "state" => &self.state,
            "kind" => &self.kind,
            "kind_prefix" => &self.kind_prefix,
            "id" => &self.id,
            "idempotency_key" => &self.idempotency_key,
            "from" => &self.from,
            "to" => &self.to,
            _ => &None,
        };
        v.clone()
    }
}

/// `retry` or `cancel`.
fn bulk_action<'de, D: Deserializer<'de>>(d: D) -> Result<BulkAction, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == "retry" => Ok(BulkAction::Retry),
        Value::String(s) if s == "cancel" => Ok(BulkAction::Cancel),
        _ => Err(D::Error::custom("must be retry or cancel")),
    }
}

/// A filter's value as the query string would carry it: a string, or a number written out.
fn filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// Retry or cancel every job a filter matches (at most `limit`, newest first), each as its own action would.
#[utoipa::path(
    post,
    path = "/api/jobs/bulk",
    tag = "jobs",
    request_body = BulkBody,
    responses(
        (status = 200, description = "What was done", body = BulkOutcome),
        (status = 422, description = "Invalid action or filter", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn bulk(tenant: Tenant, Body(body): Body<BulkBody>) -> Result<Json<BulkOutcome>, ApiError> {
    let mut errs = Vec::new();
    let search = JobSearch::read(|name| body.filter(name), "/", &mut errs);
    let before = body.before.as_ref().and_then(|b| match b.parse::<JobId>() {
        Ok(id) => Some(id),
        Err(_) => {
            errs.push(FieldError::new("/before", "must be a job id (a number)"));
            None
        }
    });
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let f = search.filter(body.limit.unwrap_or(queue::MAX_BULK), before);
    let action = body.action;
    let mut tx = tenant.begin().await?;
    let out = queue::bulk(&mut tx, &tenant.account, &f, action).await?;
    tx.commit().await?;
    tracing::info!(?action, matched = out.matched, changed = out.changed, "bulk job action");
    Ok(Json(out))
}

/// A job with its account, as the admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountJob {
    /// The account the job belongs to.
    account: String,
    /// The job's own fields, as `GET /api/jobs/{id}` shows them, beside `account`.
    #[serde(flatten)]
    job: Job,
}

impl From<Job> for AccountJob {
    fn from(job: Job) -> Self {
        AccountJob {
            account: job.account_id.clone(),
            job,
        }
    }
}

/// A page of jobs of any account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountJobPage {
    /// Jobs, newest first, each with an `account` field beside the job's own.
    pub items: Vec<AccountJob>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// List the jobs of every account (or of one), newest first: the same filters as `GET /api/jobs`.
#[utoipa::path(
    get,
    path = "/api/admin/jobs",
    tag = "accounts",
    params(
        ("account" = Option<String>, Query, description = "Only this account's jobs"),
        JobSearch,
        IdPage,
    ),
    responses(
        (status = 200, description = "A page of jobs with their accounts", body = AccountJobPage),
        (status = 404, description = "`account` is not an account id", body = Problem),
        (status = 422, description = "Invalid filter", body = Problem),
    ),
    security(("admin" = []))
)]
pub async fn admin_list(
    _: Admin,
    State(state): State<AppState>,
    q: QueryParams,
) -> Result<Json<AccountJobPage>, ApiError> {
    let filter = listing(&q)?;
    let account = match q.get("account").filter(|a| !a.is_empty()) {
        None => None,
        // No account has an id that is not a slug: nothing to list.
        Some(a) => Some(AccountId::parse(a).map_err(|_| ApiError::NotFound(format!("account {a} not found")))?),
    };
    let (items, next) = match &account {
        Some(a) => queue::list(state.admin_pool(), a, &filter).await?,
        None => queue::list_all(state.admin_pool(), &filter).await?,
    };
    Ok(Json(AccountJobPage {
        items: items.into_iter().map(AccountJob::from).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}
