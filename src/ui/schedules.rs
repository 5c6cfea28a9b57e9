//! Schedules: the account's cron schedules with their next fire times, paused or resumed from the list.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use super::html::{badge, enc, esc, flash, labelled_button_form, layout, pager, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

fn target(s: &Value) -> String {
    if let Some(job) = s["job"].as_object() {
        let queue = job.get("queue").and_then(Value::as_str).unwrap_or("default");
        format!(
            "job <strong>{}</strong> on {}",
            t(job.get("kind").unwrap_or(&Value::Null)),
            esc(queue)
        )
    } else if let Some(ev) = s["event"].as_object() {
        format!(
            "event <strong>{}</strong> to {} {}",
            t(ev.get("name").unwrap_or(&Value::Null)),
            t(&ev.get("entity").cloned().unwrap_or_default()["type"]),
            t(&ev.get("entity").cloned().unwrap_or_default()["ref"]),
        )
    } else {
        "—".to_owned()
    }
}

async fn render(
    ui: &Ui,
    s: &Session,
    q: &HashMap<String, String>,
    status: StatusCode,
    message: &str,
) -> Result<Response, Error> {
    let cursor = Some(field(q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let answer = ui
        .get(
            s,
            &format!(
                "/api/schedules{}",
                query(&[("limit", &limit), ("cursor", cursor.unwrap_or(""))])
            ),
        )
        .await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for sc in items {
        let name = sc["name"].as_str().unwrap_or("");
        let paused = sc["paused"].as_bool().unwrap_or(false);
        let (action, label) = if paused {
            ("resume", "Resume")
        } else {
            ("pause", "Pause")
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(name),
            t(&sc["cron"]),
            t(&sc["timezone"]),
            target(sc),
            badge(if paused { "paused" } else { "active" }),
            time(&sc["next_fire_at"]),
            time(&sc["last_fired_at"]),
            labelled_button_form(
                &format!("/ui/schedules/{}/{action}", enc(name)),
                label,
                &format!("{label} schedule {name}"),
                "small"
            ),
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"8\">No schedules yet.</td></tr>");
    }
    let body = format!(
        "{message}<div class=\"scroll\"><table class=\"data\" id=\"schedules\"><caption>Schedules</caption><thead><tr>\
         <th scope=\"col\">Name</th><th scope=\"col\">Cron</th><th scope=\"col\">Time zone</th>\
         <th scope=\"col\">Fires</th><th scope=\"col\">State</th><th scope=\"col\">Next fire</th>\
         <th scope=\"col\">Last fired</th><th scope=\"col\"><span class=\"sr-only\">Actions</span></th></tr></thead>\
         <tbody>{rows}</tbody></table></div>{}",
        pager("/ui/schedules?", cursor, &answer["next_cursor"])
    );
    Ok(respond(status, layout(Some(s.role), "schedules", "Schedules", &body)))
}

/// `GET /ui/schedules?cursor=`.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let message = match field(&q, "done") {
        "pause" => flash("ok", "Paused."),
        "resume" => flash("ok", "Resumed."),
        _ => String::new(),
    };
    render(&ui, &s, &q, StatusCode::OK, &message).await
}

/// `POST /ui/schedules/{name}/{pause|resume}`.
pub async fn action(
    State(ui): State<Ui>,
    s: Session,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(Error::Api {
                status: StatusCode::NOT_FOUND,
                detail: format!("no action {action}"),
                errors: Vec::new(),
            })
        }
    };
    let reply = ui
        .send(
            &s,
            Method::PATCH,
            &format!("/api/schedules/{}", enc(&name)),
            Some(json!({ "paused": paused })),
        )
        .await?;
    if reply.status.is_success() {
        return Ok(Redirect::to(&format!("/ui/schedules?done={action}")).into_response());
    }
    let err = reply.into_error();
    if err.status() == StatusCode::UNAUTHORIZED {
        return Err(err);
    }
    render(&ui, &s, &HashMap::new(), err.status(), &err.message()).await
}
