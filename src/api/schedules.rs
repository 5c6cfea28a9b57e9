//! `/api/schedules`: cron schedules of the account (CONTRACT §7). The scheduler role fires them; this module only
//! manages them through `scheduler::store`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::body::{field, Body, RequestBody};
use super::error::{ApiError, Problem};
use super::extract::{next_page, ApiPath, Page};
use crate::queue::FieldError;
use crate::scheduler::store::{self, EventSpec, JobSpec, NewSchedule, Schedule, ScheduleUpdate, Target};

/// `POST /api/schedules` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewScheduleBody {
    /// Unique per account.
    #[serde(deserialize_with = "field::nonempty")]
    #[schema(min_length = 1)]
    name: String,
    /// 5 fields, or 6 with leading seconds.
    #[serde(deserialize_with = "field::nonempty")]
    #[schema(min_length = 1)]
    cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default, deserialize_with = "field::opt_nonempty")]
    #[schema(min_length = 1)]
    timezone: Option<String>,
    /// The job each tick enqueues (give `job` or `event`).
    #[serde(default)]
    #[schema(value_type = Option<crate::scheduler::JobSpec>)]
    job: Option<Value>,
    /// The event each tick sends, `{name, entity: {type, ref}, attributes?}` (give `job` or `event`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
    /// Create it paused.
    #[serde(default, deserialize_with = "field::opt_bool")]
    paused: Option<bool>,
}

impl RequestBody for NewScheduleBody {}

/// `PATCH /api/schedules/{name}` body: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChangeBody {
    /// New expression.
    #[serde(default, deserialize_with = "field::opt_nonempty")]
    #[schema(min_length = 1)]
    cron: Option<String>,
    /// New time zone.
    #[serde(default, deserialize_with = "field::opt_nonempty")]
    #[schema(min_length = 1)]
    timezone: Option<String>,
    /// New job (replaces the target).
    #[serde(default)]
    #[schema(value_type = Option<crate::scheduler::JobSpec>)]
    job: Option<Value>,
    /// New event (replaces the target).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
    /// Pause (`true`) or resume (`false`).
    #[serde(default, deserialize_with = "field::opt_bool")]
    paused: Option<bool>,
}

impl RequestBody for ScheduleChangeBody {}

/// A page of schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulePage {
    /// Schedules in name order.
    pub items: Vec<Schedule>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// The event target: `name` and `entity` must be given (422 naming the missing one); the rest is checked by the
/// store.
fn event_target(v: &Value, errs: &mut Vec<FieldError>) -> Option<Target> {
    let Some(obj) = v.as_object() else {
        errs.push(FieldError::new(
            "/event",
            "must be an object {name, entity: {type, ref}, attributes?}",
        ));
        return None;
    };
    let before = errs.len();
    if !obj.get("name").is_some_and(Value::is_string) {
        errs.push(FieldError::new("/event/name", "is required (a string)"));
    }
    match obj.get("entity") {
        Some(Value::Object(e)) => {
            for field in ["type", "ref"] {
                if !e.get(field).is_some_and(Value::is_string) {
                    errs.push(FieldError::new(
                        format!("/event/entity/{field}"),
                        "is required (a string)",
                    ));
                }
            }
        }
        _ => errs.push(FieldError::new("/event/entity", "is required: {type, ref}")),
    }
    if field::has_nul(v) {
        errs.push(FieldError::new("/event", "strings must not contain NUL characters"));
    }
    if errs.len() > before {
        return None;
    }
    match serde_json::from_value::<EventSpec>(v.clone()) {
        Ok(spec) => Some(Target::Event(spec)),
        Err(e) => {
            errs.push(FieldError::new("/event", e.to_string()));
            None
        }
    }
}

/// The target of a body's `job` or `event` (a null one is absent); `required` when the body must have one.
fn target(job: Option<&Value>, event: Option<&Value>, required: bool, errs: &mut Vec<FieldError>) -> Option<Target> {
    if let Some(event) = event {
        if job.is_some() {
            errs.push(FieldError::new("/event", "give either job or event, not both"));
            return None;
        }
        return event_target(event, errs);
    }
    match job {
        None => {
            if required {
                errs.push(FieldError::new("/job", "is required (or event)"));
            }
            None
        }
        Some(v) if field::has_nul(v) => {
            errs.push(FieldError::new("/job", "strings must not contain NUL characters"));
            None
        }
        Some(v) => match serde_json::from_value::<JobSpec>(v.clone()) {
            Ok(spec) => Some(Target::Job(spec)),
            Err(e) => {
                errs.push(FieldError::new("/job", e.to_string()));
                None
            }
        },
    }
}

/// Create a schedule.
#[utoipa::path(
    post,
    path = "/api/schedules",
    tag = "schedules",
    request_body = NewScheduleBody,
    responses(
        (status = 201, description = "Created, with its next tick", body = Schedule),
        (status = 409, description = "A schedule of that name exists", body = Problem),
        (status = 422, description = "Invalid fields (cron, timezone, job, event, …)", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn create(tenant: Tenant, Body(body): Body<NewScheduleBody>) -> Result<Response, ApiError> {
    let mut errs = Vec::new();
    let Some(target) = target(body.job.as_ref(), body.event.as_ref(), true, &mut errs) else {
        return Err(ApiError::Invalid(errs));
    };
    let mut new = NewSchedule::new(body.name, body.cron, target).paused(body.paused.unwrap_or(false));
    if let Some(tz) = body.timezone {
        new = new.timezone(tz);
    }
    let mut tx = tenant.begin().await?;
    let created = store::create(&mut *tx, &tenant.account, &new, Utc::now()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// List the account's schedules in name order.
#[utoipa::path(
    get,
    path = "/api/schedules",
    tag = "schedules",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "A page of schedules", body = SchedulePage),
        (status = 422, description = "Invalid limit", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn list(tenant: Tenant, page: Page) -> Result<Json<SchedulePage>, ApiError> {
    let mut tx = tenant.begin().await?;
    let mut items = store::list(&mut *tx, &tenant.account, page.cursor.as_deref(), page.limit + 1).await?;
    tx.commit().await?;
    let next_cursor = next_page(&mut items, page.limit, |s| s.name.clone());
    Ok(Json(SchedulePage { items, next_cursor }))
}

/// Read one schedule.
#[utoipa::path(
    get,
    path = "/api/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, description = "No such schedule in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn get(tenant: Tenant, ApiPath(name): ApiPath<String>) -> Result<Json<Schedule>, ApiError> {
    let mut tx = tenant.begin().await?;
    let s = store::get(&mut *tx, &tenant.account, &name).await?;
    tx.commit().await?;
    Ok(Json(s))
}

/// Change a schedule's expression, time zone, job or pause state; a resume or a new expression computes the next
/// tick from now (no burst of missed ticks).
#[utoipa::path(
    patch,
    path = "/api/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    request_body = ScheduleChangeBody,
    responses(
        (status = 200, description = "The changed schedule", body = Schedule),
        (status = 404, description = "No such schedule in this account", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn update(
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
    Body(body): Body<ScheduleChangeBody>,
) -> Result<Json<Schedule>, ApiError> {
    let mut errs = Vec::new();
    let change = ScheduleUpdate {
        cron: body.cron,
        timezone: body.timezone,
        target: target(body.job.as_ref(), body.event.as_ref(), false, &mut errs),
        paused: body.paused,
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let mut tx = tenant.begin().await?;
    let s = store::update(&mut tx, &tenant.account, &name, &change, Utc::now()).await?;
    tx.commit().await?;
    Ok(Json(s))
}

/// Delete a schedule; ticks already fired keep their jobs.
#[utoipa::path(
    delete,
    path = "/api/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule in this account", body = Problem),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(account = %tenant.account))]
pub async fn delete(tenant: Tenant, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    let mut tx = tenant.begin().await?;
    store::delete(&mut *tx, &tenant.account, &name).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
