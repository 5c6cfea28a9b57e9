//! The jobs list and search: by id, idempotency key, queue, state, kind or kind prefix and creation time, with each
//! job's last error and next run; for the admin token across accounts (`GET /api/admin/jobs`, with an account
//! column and filter). An account may retry or cancel every job a search matches, after a confirmation page that
//! says how many (at most 1000 per run, `POST /api/jobs/bulk`).

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::NaiveDateTime;
use serde_json::{json, Map, Value};

use crate::queue::JobState;

use super::html::{badge, enc, esc, flash, layout, pager, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

/// The search fields: (query name, label, placeholder); `state` is a select, the rest are text inputs.
const TEXT_FIELDS: [(&str, &str, &str); 7] = [
    ("id", "Job id", "12345"),
    ("idempotency_key", "Idempotency key", ""),
    ("queue", "Queue", "default"),
    ("kind", "Kind (exact)", ""),
    ("kind_prefix", "Kind starts with", "mail."),
    ("from", "Created from (UTC)", "2026-12-01T10:00"),
    ("to", "Created before (UTC)", "2026-12-01T12:00"),
];

/// The filters of the request that are set, as (name, value) pairs for the API (times as RFC 3339).
fn filters(q: &HashMap<String, String>, admin: bool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let names = TEXT_FIELDS.iter().map(|(n, _, _)| *n).chain(["state"]);
    for name in names.chain(admin.then_some("account")) {
        let v = field(q, name);
        if v.is_empty() {
            continue;
        }
        let v = if name == "from" || name == "to" {
            rfc3339(v)
        } else {
            v.to_owned()
        };
        out.push((name, v));
    }
    out
}

/// A time as typed into a `datetime-local` field (no zone: UTC) or as RFC 3339; anything else is passed on for the
/// API to refuse with a message.
fn rfc3339(v: &str) -> String {
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return t.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        }
    }
    v.to_owned()
}

fn pairs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn search_form(q: &HashMap<String, String>, admin: bool) -> String {
    let mut out = String::from(
        "<form method=\"get\" action=\"/ui/jobs\" class=\"filters\" role=\"search\" aria-label=\"Search jobs\">",
    );
    if admin {
        let _ = write!(
            out,
            "<div><label for=\"f-account\">Account</label><input id=\"f-account\" name=\"account\" value=\"{}\" \
             placeholder=\"all\"></div>",
            esc(field(q, "account"))
        );
    }
    for (name, label, placeholder) in TEXT_FIELDS {
        let _ = write!(
            out,
            "<div><label for=\"f-{name}\">{label}</label><input id=\"f-{name}\" name=\"{name}\" value=\"{}\" \
             placeholder=\"{placeholder}\"></div>",
            esc(field(q, name))
        );
        if name == "queue" {
            let state = field(q, "state");
            let mut options = String::from("<option value=\"\">any</option>");
            for s in JobState::ALL.iter().map(|s| s.as_str()) {
                let selected = if s == state { " selected" } else { "" };
                let _ = write!(options, "<option value=\"{s}\"{selected}>{s}</option>");
            }
            let _ = write!(
                out,
                "<div><label for=\"f-state\">State</label><select id=\"f-state\" name=\"state\">{options}</select></div>"
            );
        }
    }
    out.push_str("<div><button type=\"submit\">Search</button> <a href=\"/ui/jobs\">Clear</a></div></form>");
    out
}

/// The message of a job's latest failed attempt, shortened.
fn last_error(job: &Value) -> String {
    let Some(message) = job["errors"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["message"].as_str())
    else {
        return "—".to_owned();
    };
    let short: String = message.chars().take(120).collect();
    let more = if short.len() < message.len() { "…" } else { "" };
    format!("<span title=\"{}\">{}{more}</span>", esc(message), esc(&short))
}

/// When a waiting job runs next: its `run_at` while it waits, nothing once it runs or finished.
fn next_run(job: &Value) -> String {
    match job["state"].as_str().and_then(|s| s.parse().ok()) {
        Some(JobState::Scheduled | JobState::Available | JobState::Retryable) => time(&job["run_at"]),
        _ => "—".to_owned(),
    }
}

fn rows(items: &[Value], admin: bool) -> String {
    let mut rows = String::new();
    for j in items {
        let id = j["id"].as_str().unwrap_or("");
        let account = if admin {
            format!("<td>{}</td>", t(&j["account"]))
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/jobs/{}\">{}</a></th>{account}<td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}/{}</td><td>{}</td><td>{}</td><td class=\"message\">{}</td></tr>",
            enc(id),
            esc(id),
            t(&j["queue"]),
            t(&j["kind"]),
            badge(j["state"].as_str().unwrap_or("")),
            t(&j["attempt"]),
            t(&j["max_attempts"]),
            time(&j["created_at"]),
            next_run(j),
            last_error(j),
        );
    }
    if items.is_empty() {
        let _ = write!(
            rows,
            "<tr><td colspan=\"{}\">No jobs match.</td></tr>",
            if admin { 9 } else { 8 }
        );
    }
    rows
}

/// The API listing for the session: an account's own jobs, or every account's for the admin token.
fn api_path(s: &Session) -> &'static str {
    match s.role {
        Role::Account => "/api/jobs",
        Role::Admin => "/api/admin/jobs",
    }
}

/// `GET /ui/jobs?…&cursor=`: one page of the jobs the search matches, newest first.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    let admin = s.role == Role::Admin;
    let f = filters(&q, admin);
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let mut api_query = vec![("limit", limit.as_str())];
    api_query.extend(pairs(&f));
    api_query.push(("cursor", cursor.unwrap_or("")));
    let form = search_form(&q, admin);
    let answer = match ui.get(&s, &format!("{}{}", api_path(&s), query(&api_query))).await {
        Ok(v) => v,
        // Bad filter values come back as a 422 naming the field: show them next to the form.
        Err(e @ Error::Api { .. }) if e.status() != StatusCode::UNAUTHORIZED => {
            let body = format!("{form}{}", e.message());
            return Ok(respond(e.status(), layout(Some(s.role), "jobs", "Jobs", &body)));
        }
        Err(e) => return Err(e),
    };
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let filtered = query(&pairs(&f));
    let base = if filtered.is_empty() {
        "/ui/jobs?".to_owned()
    } else {
        format!("/ui/jobs{filtered}&")
    };
    let message = match field(&q, "bulk") {
        "retry" | "cancel" => flash(
            "ok",
            &format!(
                "{}: {} jobs changed, {} skipped (their state did not allow it).",
                if field(&q, "bulk") == "retry" {
                    "Retried"
                } else {
                    "Cancelled"
                },
                field(&q, "changed"),
                field(&q, "skipped")
            ),
        ),
        _ => String::new(),
    };
    let bulk = if admin || items.is_empty() {
        String::new()
    } else {
        let sep = if filtered.is_empty() { "?" } else { "&" };
        format!(
            "<div class=\"actions\"><a class=\"button\" id=\"bulk-retry\" href=\"/ui/jobs/bulk{filtered}{sep}\
             action=retry\">Retry all matching…</a><a class=\"button danger\" id=\"bulk-cancel\" \
             href=\"/ui/jobs/bulk{filtered}{sep}action=cancel\">Cancel all matching…</a></div>"
        )
    };
    let account_head = if admin { "<th scope=\"col\">Account</th>" } else { "" };
    let body = format!(
        "{message}{form}{bulk}<div class=\"scroll\"><table class=\"data\" id=\"jobs\"><caption>Jobs, newest first \
         ({} on this page)</caption><thead><tr><th scope=\"col\">Id</th>{account_head}<th scope=\"col\">Queue</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">State</th><th scope=\"col\">Attempt</th>\
         <th scope=\"col\">Created</th><th scope=\"col\">Next run</th><th scope=\"col\">Last error</th></tr>\
         </thead><tbody>{}</tbody></table></div>{}",
        items.len(),
        rows(items, admin),
        pager(&base, cursor, &answer["next_cursor"]),
    );
    Ok(respond(StatusCode::OK, layout(Some(s.role), "jobs", "Jobs", &body)))
}

fn action_of(q: &HashMap<String, String>) -> Result<&'static str, Error> {
    match field(q, "action") {
        "retry" => Ok("retry"),
        "cancel" => Ok("cancel"),
        other => Err(Error::Api {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("no bulk action {other:?}: retry or cancel"),
            errors: Vec::new(),
        }),
    }
}

/// `GET /ui/jobs/bulk?action=&…filters`: how many jobs the action would change, and a button to go ahead. The
/// confirmation pins the newest matching job, so jobs enqueued after it are left alone.
pub async fn confirm(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let action = action_of(&q)?;
    let f = filters(&q, false);
    let mut api_query = vec![("limit", "1000")];
    api_query.extend(pairs(&f));
    let answer = ui.get(&s, &format!("/api/jobs{}", query(&api_query))).await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let more = answer["next_cursor"].is_string();
    let newest = items
        .first()
        .and_then(|j| j["id"].as_str())
        .and_then(|id| id.parse::<i64>().ok());
    let back = format!("/ui/jobs{}", query(&pairs(&f)));
    let Some(newest) = newest else {
        let body = format!(
            "<p>No jobs match.</p><p><a href=\"{}\">Back to the jobs</a></p>",
            esc(&back)
        );
        return Ok(respond(
            StatusCode::OK,
            layout(Some(s.role), "jobs", "Nothing to do", &body),
        ));
    };
    let mut hidden = String::new();
    for (k, v) in f.iter().map(|(k, v)| (*k, v.as_str())).chain([("action", action)]) {
        let _ = write!(hidden, "<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v));
    }
    let _ = write!(
        hidden,
        "<input type=\"hidden\" name=\"before\" value=\"{}\">",
        newest + 1
    );
    let mut summary = String::new();
    for (k, v) in &f {
        let _ = write!(summary, "<dt>{k}</dt><dd>{}</dd>", esc(v));
    }
    if summary.is_empty() {
        summary.push_str("<dt>Filter</dt><dd>none: every job</dd>");
    }
    let count = if more {
        "More than 1000".to_owned()
    } else {
        items.len().to_string()
    };
    let verb = if action == "retry" { "Retry" } else { "Cancel" };
    let body =
        format!(
        "<div class=\"card narrow\" id=\"bulk-confirm\"><p><strong id=\"bulk-count\">{count}</strong> jobs match:</p>\
         <dl class=\"facts\">{summary}</dl><p>{verb} them? Each job whose state allows it is {}; the others are \
         skipped. At most 1000 jobs change per run{}; jobs enqueued from now on are left alone.</p>\
         <form method=\"post\" action=\"/ui/jobs/bulk\">{hidden}<div class=\"actions\">\
         <button type=\"submit\" class=\"{}\">{verb} {} jobs</button><a href=\"{}\">No, go back</a></div></form></div>",
        if action == "retry" { "made available now" } else { "cancelled" },
        if more { " (run it again for the rest)" } else { "" },
        if action == "cancel" { "danger" } else { "" },
        if more { "1000".to_owned() } else { items.len().to_string() },
        esc(&back),
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "jobs", &format!("{verb} matching jobs"), &body),
    ))
}

/// `POST /ui/jobs/bulk`: does what the confirmation page showed, then lists the jobs again with the outcome.
pub async fn run(
    State(ui): State<Ui>,
    s: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let action = action_of(&form)?;
    let f = filters(&form, false);
    let mut body = Map::new();
    body.insert("action".to_owned(), json!(action));
    for (k, v) in &f {
        body.insert((*k).to_owned(), json!(v));
    }
    let before = field(&form, "before");
    if !before.is_empty() {
        body.insert("before".to_owned(), json!(before));
    }
    let out = ui
        .send(&s, Method::POST, "/api/jobs/bulk", Some(Value::Object(body)))
        .await?
        .ok()?;
    let mut back = pairs(&f);
    let (changed, skipped) = (out["changed"].to_string(), out["skipped"].to_string());
    back.extend([
        ("bulk", action),
        ("changed", changed.as_str()),
        ("skipped", skipped.as_str()),
    ]);
    Ok(Redirect::to(&format!("/ui/jobs{}", query(&back))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `datetime-local` value is read as UTC; RFC 3339 and nonsense pass through unchanged.
    #[test]
    fn times_become_rfc3339() {
        assert_eq!(rfc3339("2026-12-01T10:05"), "2026-12-01T10:05:00Z");
        assert_eq!(rfc3339("2026-12-01T10:05:00Z"), "2026-12-01T10:05:00Z");
        assert_eq!(rfc3339("soon"), "soon");
    }

    /// The last error is the latest attempt's, escaped and shortened; only waiting jobs have a next run.
    #[test]
    fn last_error_and_next_run() {
        let job = json!({"state": "completed", "run_at": "2026-12-01T10:00:00Z",
                         "errors": [{"message": "first"}, {"message": "<boom>"}]});
        assert!(last_error(&job).contains("&lt;boom&gt;"));
        assert_eq!(next_run(&job), "—");
        let waiting = json!({"state": "retryable", "run_at": "2026-12-01T10:00:00Z", "errors": []});
        assert!(next_run(&waiting).contains("2026-12-01 10:00:00"));
        assert_eq!(last_error(&waiting), "—");
    }
}
