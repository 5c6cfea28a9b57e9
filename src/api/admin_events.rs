//! The admin audit trail over HTTP (CONTRACT §11): `GET /api/admin-events`, newest first, admin only.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::{ApiError, Problem};
use super::extract::{next_page, IdPage};
use super::AppState;
use crate::audit::{self, AdminEvent};

/// `GET /api/admin-events` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminEventPage {
    /// Admin changes, newest first.
    pub items: Vec<AdminEvent>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List admin changes (accounts, keys, limits, pools, scaling, rollouts), newest first.
#[utoipa::path(
    get,
    path = "/api/admin-events",
    tag = "accounts",
    params(
        IdPage,
    ),
    responses(
        (status = 200, description = "A page of admin changes", body = AdminEventPage),
        (status = 422, description = "Invalid limit or cursor", body = Problem),
    ),
    security(("admin" = []))
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    _: Admin,
    state: axum::extract::State<AppState>,
    page: IdPage,
) -> Result<Json<AdminEventPage>, ApiError> {
    let mut items = audit::list(state.admin_pool(), page.cursor, page.limit + 1).await?;
    let next_cursor = next_page(&mut items, page.limit, |e| e.id.clone());
    Ok(Json(AdminEventPage { items, next_cursor }))
}
