//! Workers (admin token): every live worker with its pool, version, host, kinds, running jobs and last heartbeat,
//! from `GET /api/workers`.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::html::{age, badge, esc, layout, pager, query, respond, t, text, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

fn list_of(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| esc(&text(i)))
        .collect();
    if items.is_empty() {
        "—".to_owned()
    } else {
        items.join(", ")
    }
}

fn heartbeat(v: &Value) -> String {
    let ago = v
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|at| (Utc::now() - at.with_timezone(&Utc)).num_milliseconds().max(0));
    match ago {
        Some(ms) => format!("{} ago ({})", age(ms), time(v)),
        None => time(v),
    }
}

fn rows(items: &[Value]) -> String {
    let mut rows = String::new();
    for w in items {
        let stopping = w["stopping"].as_bool().unwrap_or(false);
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{} (pid {})</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{} / {}</td><td>{}</td><td>{}</td></tr>",
            t(&w["id"]),
            t(&w["pool"]),
            t(&w["version"]),
            t(&w["host"]),
            t(&w["pid"]),
            list_of(&w["kinds"]),
            list_of(&w["queues"]),
            t(&w["running"]),
            t(&w["concurrency"]),
            heartbeat(&w["heartbeat_at"]),
            badge(if stopping { "stopping" } else { "active" }),
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"9\">No live worker.</td></tr>");
    }
    rows
}

/// `GET /ui/workers?pool=&cursor=`.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let pool = field(&q, "pool");
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let answer = ui
        .get(
            &s,
            &format!(
                "/api/workers{}",
                query(&[("pool", pool), ("limit", &limit), ("cursor", cursor.unwrap_or(""))])
            ),
        )
        .await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let base = match pool {
        "" => "/ui/workers?".to_owned(),
        p => format!("/ui/workers{}&", query(&[("pool", p)])),
    };
    let body = format!(
        "<form method=\"get\" action=\"/ui/workers\" class=\"filters\" role=\"search\" aria-label=\"Filter workers\">\
         <div><label for=\"w-pool\">Pool</label><input id=\"w-pool\" name=\"pool\" value=\"{}\"></div>\
         <div><button type=\"submit\">Filter</button> <a href=\"/ui/workers\">Clear</a></div></form>\
         <p class=\"hint\">Workers whose heartbeat is fresh (within three heartbeat intervals).</p>\
         <div class=\"scroll\"><table class=\"data\" id=\"workers\"><caption>Live workers ({} on this page)</caption>\
         <thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Pool</th><th scope=\"col\">Version</th>\
         <th scope=\"col\">Host</th><th scope=\"col\">Kinds</th><th scope=\"col\">Queues</th>\
         <th scope=\"col\">Running / slots</th><th scope=\"col\">Heartbeat</th><th scope=\"col\">State</th></tr>\
         </thead><tbody>{}</tbody></table></div>{}",
        esc(pool),
        items.len(),
        rows(items),
        pager(&base, cursor, &answer["next_cursor"]),
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "workers", "Workers", &body),
    ))
}
