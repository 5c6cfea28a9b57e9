//! Jobs: a filtered, paged list (queue, state, kind), a job's detail with args, result and the error of every
//! failed attempt, and the retry and cancel actions.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::html::{badge, button_form, enc, esc, flash, json_block, layout, pager, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

/// Every job state, in lifecycle order (CONTRACT §4).
const STATES: [&str; 7] = [
    "scheduled",
    "available",
    "running",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
];

fn filter_form(queue: &str, state: &str, kind: &str) -> String {
    let mut options = String::from("<option value=\"\">any</option>");
    for s in STATES {
        let selected = if s == state { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{s}\"{selected}>{s}</option>");
    }
    format!(
        "<form method=\"get\" action=\"/ui/jobs\" class=\"filters\" role=\"search\" aria-label=\"Filter jobs\">\
         <div><label for=\"f-queue\">Queue</label><input id=\"f-queue\" name=\"queue\" value=\"{}\"></div>\
         <div><label for=\"f-state\">State</label><select id=\"f-state\" name=\"state\">{options}</select></div>\
         <div><label for=\"f-kind\">Kind</label><input id=\"f-kind\" name=\"kind\" value=\"{}\"></div>\
         <div><button type=\"submit\">Filter</button> <a href=\"/ui/jobs\">Clear</a></div></form>",
        esc(queue),
        esc(kind)
    )
}

/// `GET /ui/jobs?queue=&state=&kind=&cursor=`: one page of jobs, newest first, filtered by the API.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let (queue, state, kind) = (field(&q, "queue"), field(&q, "state"), field(&q, "kind"));
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let filters = [("queue", queue), ("state", state), ("kind", kind)];
    let mut api_query = vec![("limit", limit.as_str())];
    api_query.extend(filters);
    api_query.push(("cursor", cursor.unwrap_or("")));
    let form = filter_form(queue, state, kind);
    let answer = match ui.get(&s, &format!("/api/jobs{}", query(&api_query))).await {
        Ok(v) => v,
        // Bad filter values come back as a 422 naming the field: show them next to the form.
        Err(e @ Error::Api { .. }) if e.status() != StatusCode::UNAUTHORIZED => {
            let body = format!("{form}{}", e.message());
            return Ok(respond(e.status(), layout(Some(&s), "jobs", "Jobs", &body)));
        }
        Err(e) => return Err(e),
    };
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for j in items {
        let id = j["id"].as_str().unwrap_or("");
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/jobs/{}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}/{}</td><td>{}</td><td>{}</td></tr>",
            enc(id),
            esc(id),
            t(&j["queue"]),
            t(&j["kind"]),
            badge(j["state"].as_str().unwrap_or("")),
            t(&j["attempt"]),
            t(&j["max_attempts"]),
            time(&j["created_at"]),
            time(&j["finished_at"]),
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">No jobs match.</td></tr>");
    }
    let base = format!("/ui/jobs{}", query(&filters));
    let base = if base.contains('?') {
        format!("{base}&")
    } else {
        format!("{base}?")
    };
    let body = format!(
        "{form}<div class=\"scroll\"><table class=\"data\" id=\"jobs\"><caption>Jobs, newest first \
         ({} on this page)</caption><thead><tr><th scope=\"col\">Id</th><th scope=\"col\">Queue</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">State</th><th scope=\"col\">Attempt</th>\
         <th scope=\"col\">Created</th><th scope=\"col\">Finished</th></tr></thead><tbody>{rows}</tbody></table>\
         </div>{}",
        items.len(),
        pager(&base, cursor, &answer["next_cursor"]),
    );
    Ok(respond(StatusCode::OK, layout(Some(&s), "jobs", "Jobs", &body)))
}

fn detail_body(job: &Value, message: &str) -> String {
    let id = job["id"].as_str().unwrap_or("");
    let state = job["state"].as_str().unwrap_or("");
    let mut actions = String::new();
    if matches!(state, "discarded" | "cancelled") {
        actions.push_str(&button_form(&format!("/ui/jobs/{}/retry", enc(id)), "Retry", ""));
    }
    if matches!(state, "scheduled" | "available" | "running" | "retryable") {
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
    format!(
        "{message}<p><a href=\"/ui/jobs?queue={}\">« Jobs of queue {}</a></p>\
         <dl class=\"facts\"><dt>State</dt><dd id=\"job-state\">{}</dd><dt>Queue</dt><dd>{}</dd>\
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
        badge(state),
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

/// `GET /ui/jobs/{id}`.
pub async fn detail(
    State(ui): State<Ui>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let job = ui.get(&s, &format!("/api/jobs/{}", enc(&id))).await?;
    let message = match field(&q, "done") {
        "retry" => flash("ok", "Retried: the job is available again."),
        "cancel" => flash("ok", "Cancelled."),
        _ => String::new(),
    };
    let title = format!("Job {id}");
    Ok(respond(
        StatusCode::OK,
        layout(Some(&s), "jobs", &title, &detail_body(&job, &message)),
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
        layout(Some(&s), "jobs", &title, &detail_body(&job, &err.message())),
    ))
}
