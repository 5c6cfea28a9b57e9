//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at `/openapi.json`.
//!
//! The committed `openapi.json` at the repository root is this document; a test fails when a change removes or
//! alters anything it lists (additions pass), so clients built against it keep working.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    accounts, admin_events, error, health, job_search, jobs, limits, loads, orchestration, pools, queues, schedules,
};

mod problems;

use problems::Problems;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "ordo", description = "Durable jobs and orchestration on PostgreSQL."),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        document,
        jobs::create,
        jobs::create_batch,
        jobs::get,
        job_search::list,
        job_search::bulk,
        job_search::admin_list,
        jobs::cancel,
        jobs::retry,
        queues::list,
        queues::history,
        queues::pause,
        queues::resume,
        orchestration::put_workflow,
        orchestration::list_workflows,
        orchestration::get_workflow,
        orchestration::get_workflow_version,
        orchestration::rules,
        orchestration::create_entity,
        orchestration::list_entities,
        orchestration::get_entity,
        orchestration::send_event,
        orchestration::send_event_sync,
        orchestration::get_event,
        orchestration::list_events,
        orchestration::replay_event,
        orchestration::cancel_event,
        schedules::create,
        schedules::list,
        schedules::get,
        schedules::update,
        schedules::delete,
        loads::create,
        loads::list,
        loads::get,
        loads::create_batch,
        loads::get_batch,
        loads::results,
        loads::inventory,
        pools::list,
        pools::workers,
        pools::put,
        pools::put_scaling,
        pools::create_rollout,
        pools::list_rollouts,
        pools::get_rollout,
        pools::promote,
        pools::abort,
        accounts::create,
        accounts::list,
        accounts::delete,
        accounts::create_key,
        accounts::revoke_key,
        limits::get,
        limits::put,
        limits::usage,
        admin_events::list,
    ),
    components(schemas(
        error::Problem,
        error::ProblemField,
        crate::orchestration::EventKind,
        crate::orchestration::EventStatus,
        crate::load::Outcome,
        limits::QueueLimitBody,
        limits::KindLimitBody,
    )),
    modifiers(&Security, &Problems),
    tags(
        (name = "jobs", description = "The durable queue"),
        (name = "queues", description = "Queue figures, pause and resume"),
        (name = "orchestration", description = "Workflows, rules, entities and events"),
        (name = "schedules", description = "Cron schedules"),
        (name = "loads", description = "Loads of batch data and inventory positions"),
        (name = "pools", description = "Worker pools, rollouts and scaling (admin token)"),
        (name = "accounts", description = "Accounts and API keys (admin token)"),
        (name = "health", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = || {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An account's API key"))
                    .build(),
            )
        };
        components.add_security_scheme("bearer", bearer());
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ORDO_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON (what `openapi.json` holds).
pub fn json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".to_owned())
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], json())
}
