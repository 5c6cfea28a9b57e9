//! Overview: per queue (account key) or per pool version (admin token) the depth, running jobs and the age of the
//! oldest waiting job, refreshed live by `ui.js`, which also draws depth, throughput and failure sparklines.
//!
//! The sparklines come from a short rolling history the browser keeps from successive polls (throughput and
//! failures are the change in `completed` and `discarded` per second); below the table, an account's history over
//! a chosen range comes from the server ([`super::history`]) and survives a reload.

use std::fmt::Write as _;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::html::{age, badge, enc, esc, labelled_button_form, layout, respond};
use super::{field, Error, Role, Session, Ui};

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

const SPARKS: &str = "<td class=\"spark\" data-series=\"depth\">—</td>\
    <td class=\"spark\" data-series=\"done\">—</td><td class=\"spark\" data-series=\"failed\">—</td>";

fn queue_rows(body: &Value) -> String {
    let mut out = String::new();
    let items = body["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        out.push_str("<tr><td colspan=\"12\">No jobs yet.</td></tr>");
    }
    for q in items {
        let name = q["queue"].as_str().unwrap_or("");
        let paused = q["paused"].as_bool().unwrap_or(false);
        let available = num(&q["available"]);
        let action = if paused { "resume" } else { "pause" };
        let _ = write!(
            out,
            "<tr data-key=\"{key}\" data-depth=\"{available}\" data-done=\"{done}\" data-failed=\"{failed}\">\
             <th scope=\"row\"><a href=\"/ui/jobs?queue={q_enc}\">{key}</a></th><td>{state}</td>\
             <td class=\"num available\">{available}</td><td class=\"num\">{scheduled}</td>\
             <td class=\"num running\">{running}</td><td class=\"num\">{retryable}</td>\
             <td class=\"num\">{unclaimable}</td><td class=\"num oldest\">{oldest}</td>{SPARKS}<td>{button}</td></tr>",
            key = esc(name),
            q_enc = enc(name),
            done = num(&q["completed"]),
            failed = num(&q["discarded"]),
            state = badge(if paused { "paused" } else { "active" }),
            scheduled = num(&q["scheduled"]),
            running = num(&q["running"]),
            retryable = num(&q["retryable"]),
            unclaimable = num(&q["unclaimable"]),
            oldest = if available > 0 {
                age(num(&q["oldest_available_ms"]))
            } else {
                "—".to_owned()
            },
            button = labelled_button_form(
                &format!("/ui/queues/{}/{action}", enc(name)),
                if paused { "Resume" } else { "Pause" },
                &format!("{} queue {name}", if paused { "Resume" } else { "Pause" }),
                "small"
            ),
        );
    }
    out
}

fn pool_rows(body: &Value) -> String {
    let mut out = String::new();
    let pools = body["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    for p in pools {
        let pool = p["pool"].as_str().unwrap_or("");
        let versions = p["versions"].as_array().map(Vec::as_slice).unwrap_or_default();
        if versions.is_empty() {
            let _ = write!(
                out,
                "<tr><th scope=\"row\">{}</th><td colspan=\"9\">No worker has run yet.</td></tr>",
                esc(pool)
            );
        }
        for v in versions {
            let version = v["version"].as_str().unwrap_or("");
            let _ = write!(
                out,
                "<tr data-key=\"{key}\" data-depth=\"{available}\"><th scope=\"row\">{pool}</th><td>{version}</td>\
                 <td>{role}</td><td class=\"num\">{weight}%</td><td class=\"num workers\">{workers}</td>\
                 <td class=\"num available\">{available}</td><td class=\"num running\">{running}</td>{SPARKS}</tr>",
                key = esc(&format!("{pool}/{version}")),
                pool = esc(pool),
                version = esc(version),
                role = badge(v["role"].as_str().unwrap_or("")),
                weight = num(&v["weight"]),
                workers = num(&v["workers"]),
                available = num(&v["available"]),
                running = num(&v["running"]),
            );
        }
    }
    if pools.is_empty() {
        out.push_str("<tr><td colspan=\"10\">No pools yet.</td></tr>");
    }
    out
}

async fn rows(ui: &Ui, s: &Session) -> Result<String, Error> {
    Ok(match s.role {
        Role::Account => queue_rows(&ui.get(s, "/api/queues?limit=1000").await?),
        Role::Admin => pool_rows(&ui.get(s, "/api/pools?limit=1000").await?),
    })
}

const SPARK_HEADERS: &str = "<th scope=\"col\">Depth trend</th><th scope=\"col\">Completed/s</th>\
    <th scope=\"col\">Failed/s</th>";

/// `GET /ui/overview?range=`: the live table, and for an account key the history over `range` (15m, 1h, 6h, 24h).
pub async fn page(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    let rows = rows(&ui, &s).await?;
    let history = match s.role {
        Role::Account => super::history::section(&ui, &s, field(&q, "range")).await?,
        Role::Admin => String::new(),
    };
    let (caption, head) = match s.role {
        Role::Account => (
            "Queues",
            format!(
                "<th scope=\"col\">Queue</th><th scope=\"col\">State</th><th scope=\"col\">Available</th>\
                 <th scope=\"col\">Scheduled</th><th scope=\"col\">Running</th><th scope=\"col\">Retryable</th>\
                 <th scope=\"col\">Unclaimable</th><th scope=\"col\">Oldest waiting</th>{SPARK_HEADERS}\
                 <th scope=\"col\"><span class=\"sr-only\">Actions</span></th>"
            ),
        ),
        Role::Admin => (
            "Pool versions",
            format!(
                "<th scope=\"col\">Pool</th><th scope=\"col\">Version</th><th scope=\"col\">Role</th>\
                 <th scope=\"col\">Weight</th><th scope=\"col\">Workers</th><th scope=\"col\">Available</th>\
                 <th scope=\"col\">Running</th>{SPARK_HEADERS}"
            ),
        ),
    };
    let body = format!(
        "<p class=\"hint\"><span id=\"live-status\">Live: refreshed every 2 seconds.</span> \
         Trends cover this visit (the browser keeps the last 60 readings).</p>\
         <noscript><p class=\"hint\">Without JavaScript this page does not refresh by itself: reload it.</p>\
         </noscript><div class=\"scroll\"><table class=\"data\" id=\"overview\"><caption>{caption}</caption>\
         <thead><tr>{head}</tr></thead><tbody id=\"live\" data-src=\"/ui/fragments/overview\">{rows}</tbody>\
         </table></div>{history}"
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "overview", "Overview", &body),
    ))
}

/// `GET /ui/fragments/overview`: the overview's rows alone, for the live refresh.
pub async fn fragment(State(ui): State<Ui>, s: Session) -> Result<Response, Error> {
    let rows = rows(&ui, &s).await?;
    Ok(respond(StatusCode::OK, rows))
}

/// `POST /ui/queues/{queue}/{pause|resume}`.
pub async fn queue_action(
    State(ui): State<Ui>,
    s: Session,
    Path((queue, action)): Path<(String, String)>,
) -> Result<Response, Error> {
    if action != "pause" && action != "resume" {
        return Err(Error::Api {
            status: StatusCode::NOT_FOUND,
            detail: format!("no action {action}"),
            errors: Vec::new(),
        });
    }
    ui.send(&s, Method::POST, &format!("/api/queues/{}/{action}", enc(&queue)), None)
        .await?
        .ok()?;
    Ok(Redirect::to("/ui/overview").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Queue names are escaped in text, attributes and links.
    #[test]
    fn queue_rows_escape_names() {
        let rows = queue_rows(&json!({"items": [{"queue": "<b>q&a</b>", "paused": false, "available": 3}]}));
        assert!(!rows.contains("<b>"), "{rows}");
        assert!(rows.contains("&lt;b&gt;q&amp;a&lt;/b&gt;"), "{rows}");
        assert!(rows.contains("/ui/jobs?queue=%3Cb%3Eq%26a%3C%2Fb%3E"), "{rows}");
    }
}
