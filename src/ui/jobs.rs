//! A job's detail with args, result and the error of every failed attempt, and the retry and cancel actions (the
//! list and search are in `job_list`). The admin token sees any account's job, read-only.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use crate::queue::JobState;

use super::html::{badge, button_form, enc, esc, flash, json_block, layout, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui};

fn detail_body(job: &Value, message: &str) -> String {
    let id = job["id"].as_str().unwrap_or("");
    let state: Option<JobState> = job["state"].as_str().and_then(|s| s.parse().ok());
    let admin = job.get("account").is_some();
    let mut actions = String::new();
    if admin {
        actions.push_str("<p class=\"hint\">Read-only: retry or cancel it signed in with its account's key.</p>");
    } else if matches!(state, Some(JobState::Discarded | JobState::Cancelled)) {
        actions.push_str(&button_form(&format!("/ui/jobs/{}/retry", enc(id)), "Retry", ""));
    }
    if !admin && state.is_some_and(|s| !s.is_finished()) {
        actions.push_str(&button_form(
            &format!("/ui/jobs/{}/cancel", enc(id)),
            "Cancel job",
            "danger",
        ));
    }
    let mut errors = String::new();
    let errs = job["errors"].as_array().map(Vec::as_slice).unwrap_or_default();
    for e in errs {
        let _ = write!(
            errors,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"message\">{}</td></tr>",
            t(&e["attempt"]),
            time(&e["at"]),
            t(&e["message"])
        );
    }
    if errs.is_empty() {
        errors.push_str("<tr><td colspan=\"3\">No failed attempts.</td></tr>");
    }
    let queue = job["queue"].as_str().unwrap_or("");
    let account = match job["account"].as_str() {
        Some(a) => format!("<dt>Account</dt><dd id=\"job-account\">{}</dd>", esc(a)),
        None => String::new(),
    };
    format!(
        "{message}<p><a href=\"/ui/jobs?queue={}\">« Jobs of queue {}</a></p>\
         <dl class=\"facts\">{account}<dt>State</dt><dd id=\"job-state\">{}</dd><dt>Queue</dt><dd>{}</dd>\
         <dt>Kind</dt><dd>{}</dd><dt>Attempt</dt><dd>{} of {}</dd><dt>Priority</dt><dd>{}</dd>\
         <dt>Run at</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
         <dt>Finished</dt><dd>{}</dd><dt>Pool / version</dt><dd>{} / {}</dd>\
         <dt>Idempotency key</dt><dd>{}</dd><dt>Concurrency key</dt><dd>{}</dd></dl>\
         <div class=\"actions\">{actions}</div>\
         <h2>Arguments</h2>{}<h2>Result</h2>{}\
         <table class=\"data\" id=\"errors\"><caption>Errors by attempt</caption><thead><tr>\
         <th scope=\"col\">Attempt</th><th scope=\"col\">At</th><th scope=\"col\">Message</th></tr></thead>\
         <tbody>{errors}</tbody></table>",
        enc(queue),
        esc(queue),
        badge(job["state"].as_str().unwrap_or("")),
        esc(queue),
        t(&job["kind"]),
        t(&job["attempt"]),
        t(&job["max_attempts"]),
        t(&job["priority"]),
        time(&job["run_at"]),
        time(&job["created_at"]),
        time(&job["started_at"]),
        time(&job["finished_at"]),
        t(&job["pool"]),
        t(&job["version"]),
        t(&job["idempotency_key"]),
        t(&job["concurrency_key"]),
        json_block(&job["args"]),
        json_block(&job["result"]),
    )
}

/// The job as the session may see it: the account's own, or (admin token) any account's with its account.
async fn read(ui: &Ui, s: &Session, id: &str) -> Result<Value, Error> {
    if s.role == Role::Account {
        return ui.get(s, &format!("/api/jobs/{}", enc(id))).await;
    }
    let page = ui
        .get(s, &format!("/api/admin/jobs{}", query(&[("id", id), ("limit", "1")])))
        .await
        .map_err(|e| match e.status() {
            // A malformed id names no job.
            StatusCode::UNPROCESSABLE_ENTITY => not_found(id),
            _ => e,
        })?;
    page["items"].get(0).cloned().ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> Error {
    Error::Api {
        status: StatusCode::NOT_FOUND,
        detail: format!("job {id} not found"),
        errors: Vec::new(),
    }
}

/// `GET /ui/jobs/{id}`.
pub async fn detail(
    State(ui): State<Ui>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    let job = read(&ui, &s, &id).await?;
    let message = match field(&q, "done") {
        "retry" => flash("ok", "Retried: the job is available again."),
        "cancel" => flash("ok", "Cancelled."),
        _ => String::new(),
    };
    let title = format!("Job {id}");
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "jobs", &title, &detail_body(&job, &message)),
    ))
}

/// `POST /ui/jobs/{id}/{retry|cancel}`: on success back to the job; a refusal (409) is shown on the job's page.
pub async fn action(
    State(ui): State<Ui>,
    s: Session,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    if action != "retry" && action != "cancel" {
        return Err(Error::Api {
            status: StatusCode::NOT_FOUND,
            detail: format!("no action {action}"),
            errors: Vec::new(),
        });
    }
    let uri = format!("/api/jobs/{}/{action}", enc(&id));
    let reply = ui.send(&s, Method::POST, &uri, None).await?;
    if reply.status.is_success() {
        return Ok(Redirect::to(&format!("/ui/jobs/{}?done={action}", enc(&id))).into_response());
    }
    let err = reply.into_error();
    if err.status() == StatusCode::UNAUTHORIZED || err.status() == StatusCode::NOT_FOUND {
        return Err(err);
    }
    let job = ui.get(&s, &format!("/api/jobs/{}", enc(&id))).await?;
    let title = format!("Job {id}");
    Ok(respond(
        err.status(),
        layout(Some(s.role), "jobs", &title, &detail_body(&job, &err.message())),
    ))
}
