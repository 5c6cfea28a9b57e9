//! Pools and rollouts (admin token): each pool's versions with role, weight and workers; a rollout's detail with
//! promote and abort behind a confirmation page; starting a rollout; and the accounts list.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde_json::{json, Map, Value};

use super::html::{badge, button_form, enc, esc, flash, layout, pager, problems, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

fn start_form(form: &HashMap<String, String>) -> String {
    let v = |k: &str| esc(field(form, k));
    format!(
        "<form method=\"post\" action=\"/ui/rollouts\" class=\"card\" aria-labelledby=\"start-title\">\
         <h2 id=\"start-title\">Start a rollout</h2><div class=\"filters\">\
         <div><label for=\"r-pool\">Pool</label><input id=\"r-pool\" name=\"pool\" required value=\"{}\"></div>\
         <div><label for=\"r-version\">New version</label><input id=\"r-version\" name=\"version\" required \
         value=\"{}\"></div>\
         <div><label for=\"r-canary\">Canary share (%)</label><input id=\"r-canary\" name=\"canary_percent\" \
         inputmode=\"numeric\" value=\"{}\" placeholder=\"10\"></div>\
         <div><button type=\"submit\">Start canary</button></div></div></form>",
        v("pool"),
        v("version"),
        v("canary_percent"),
    )
}

const OPEN_FORM: &str = "<form method=\"get\" action=\"/ui/pools\" class=\"filters\" role=\"search\" \
    aria-label=\"Open a rollout\"><div><label for=\"r-id\">Rollout id</label><input id=\"r-id\" name=\"rollout\" \
    inputmode=\"numeric\"></div><div><button type=\"submit\">Open rollout</button></div></form>";

async fn render_pools(
    ui: &Ui,
    s: &Session,
    status: StatusCode,
    message: &str,
    form: &HashMap<String, String>,
) -> Result<Response, Error> {
    let pools = ui.get(s, "/api/pools?limit=1000").await?;
    let mut out = String::new();
    for p in pools["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = p["pool"].as_str().unwrap_or("");
        let queues: Vec<String> = p["queues"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|q| esc(&super::html::text(q)))
            .collect();
        let mut rows = String::new();
        let versions = p["versions"].as_array().map(Vec::as_slice).unwrap_or_default();
        for v in versions {
            let _ = write!(
                rows,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"num\">{}%</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                t(&v["version"]),
                badge(v["role"].as_str().unwrap_or("")),
                t(&v["weight"]),
                t(&v["workers"]),
                t(&v["available"]),
                t(&v["running"]),
            );
        }
        if versions.is_empty() {
            rows.push_str("<tr><td colspan=\"6\">No worker has run yet.</td></tr>");
        }
        let _ = write!(
            out,
            "<section class=\"card\"><h2>Pool {}</h2><p>Queues: {}</p><div class=\"scroll\"><table class=\"data\">\
             <caption>Versions of pool {}</caption><thead><tr><th scope=\"col\">Version</th>\
             <th scope=\"col\">Role</th><th scope=\"col\">Weight</th><th scope=\"col\">Workers</th>\
             <th scope=\"col\">Available</th><th scope=\"col\">Running</th></tr></thead><tbody>{rows}</tbody>\
             </table></div></section>",
            esc(name),
            if queues.is_empty() {
                "default and every unclaimed queue".to_owned()
            } else {
                queues.join(", ")
            },
            esc(name),
        );
    }
    let rollouts = ui.get(s, "/api/rollouts?limit=20").await?;
    let body = format!(
        "{message}{OPEN_FORM}{out}{}{}",
        rollout_list(&rollouts["items"]),
        start_form(form)
    );
    Ok(respond(
        status,
        layout(Some(s.role), "pools", "Pools & rollouts", &body),
    ))
}

/// The latest rollouts, newest first, each linking to its page.
fn rollout_list(items: &Value) -> String {
    format!(
        "<section class=\"card\" id=\"rollouts\"><h2>Rollouts</h2>{}<p><a href=\"/ui/rollouts\">All rollouts</a>\
         </p></section>",
        rollout_table(items, "The latest 20 rollouts, newest first")
    )
}

/// Rollouts as a table, each linking to its page.
fn rollout_table(items: &Value, caption: &str) -> String {
    let mut rows = String::new();
    for r in items.as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = r["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| r["id"].to_string());
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/rollouts/{}\">#{}</a></th><td>{}</td><td>{} → {}</td><td>{}</td>\
             <td class=\"num\">{}%</td><td>{}</td></tr>",
            enc(&id),
            esc(&id),
            t(&r["pool"]),
            t(&r["from_version"]),
            t(&r["to_version"]),
            badge(r["state"].as_str().unwrap_or("")),
            t(&r["canary_percent"]),
            time(&r["created_at"]),
        );
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"6\">No rollout yet.</td></tr>");
    }
    format!(
        "<div class=\"scroll\"><table class=\"data\" id=\"rollout-list\"><caption>{}</caption><thead><tr>\
         <th scope=\"col\">Rollout</th><th scope=\"col\">Pool</th><th scope=\"col\">Versions</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Canary share</th><th scope=\"col\">Started</th></tr></thead>\
         <tbody>{rows}</tbody></table></div>",
        esc(caption)
    )
}

/// Rollout states, for the filter.
const ROLLOUT_STATES: [&str; 4] = ["canary", "promoted", "completed", "aborted"];

/// `GET /ui/rollouts?pool=&state=&cursor=`: every rollout, newest first, a page at a time.
pub async fn rollouts(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let (pool, state) = (field(&q, "pool"), field(&q, "state"));
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let filters = [("pool", pool), ("state", state)];
    let mut api = vec![("limit", limit.as_str()), ("cursor", cursor.unwrap_or(""))];
    api.extend(filters);
    let mut options = String::from("<option value=\"\">any</option>");
    for st in ROLLOUT_STATES {
        let selected = if st == state { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{st}\"{selected}>{st}</option>");
    }
    let form = format!(
        "<form method=\"get\" action=\"/ui/rollouts\" class=\"filters\" role=\"search\" \
         aria-label=\"Filter rollouts\"><div><label for=\"ro-pool\">Pool</label><input id=\"ro-pool\" name=\"pool\" \
         value=\"{}\"></div><div><label for=\"ro-state\">State</label><select id=\"ro-state\" name=\"state\">\
         {options}</select></div><div><button type=\"submit\">Filter</button> <a href=\"/ui/rollouts\">Clear</a></div>\
         </form>",
        esc(pool)
    );
    let answer = match ui.get(&s, &format!("/api/rollouts{}", query(&api))).await {
        Ok(v) => v,
        Err(e @ Error::Api { .. }) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => {
            let body = format!("{form}{}", e.message());
            return Ok(respond(e.status(), layout(Some(s.role), "rollouts", "Rollouts", &body)));
        }
        Err(e) => return Err(e),
    };
    let filtered = query(&filters);
    let base = if filtered.is_empty() {
        "/ui/rollouts?".to_owned()
    } else {
        format!("/ui/rollouts{filtered}&")
    };
    let body = format!(
        "{form}{}{}<p><a href=\"/ui/pools#start-title\">Start a rollout</a> on the pools page.</p>",
        rollout_table(&answer["items"], "Rollouts, newest first"),
        pager(&base, cursor, &answer["next_cursor"]),
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "rollouts", "Rollouts", &body),
    ))
}

/// `GET /ui/pools?rollout=`: every pool; `rollout` opens that rollout.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let id = field(&q, "rollout");
    if !id.is_empty() {
        if id.bytes().all(|b| b.is_ascii_digit()) && id.len() <= 18 {
            return Ok(Redirect::to(&format!("/ui/rollouts/{id}")).into_response());
        }
        let msg = problems(
            "A rollout id is a number.",
            &[("/rollout".to_owned(), "must be a number".to_owned())],
        );
        return render_pools(&ui, &s, StatusCode::UNPROCESSABLE_ENTITY, &msg, &HashMap::new()).await;
    }
    render_pools(&ui, &s, StatusCode::OK, "", &HashMap::new()).await
}

/// `POST /ui/rollouts`: starts a canary; bad input is shown next to the form.
pub async fn start(
    State(ui): State<Ui>,
    s: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let mut body = Map::new();
    body.insert("pool".to_owned(), json!(field(&form, "pool")));
    body.insert("version".to_owned(), json!(field(&form, "version")));
    let canary = field(&form, "canary_percent");
    if !canary.is_empty() {
        match canary.parse::<i64>() {
            Ok(n) => {
                body.insert("canary_percent".to_owned(), json!(n));
            }
            Err(_) => {
                let msg = problems(
                    "Check the rollout's fields.",
                    &[(
                        "/canary_percent".to_owned(),
                        "must be a whole number from 0 to 100".to_owned(),
                    )],
                );
                return render_pools(&ui, &s, StatusCode::UNPROCESSABLE_ENTITY, &msg, &form).await;
            }
        }
    }
    let reply = ui
        .send(&s, Method::POST, "/api/rollouts", Some(Value::Object(body)))
        .await?;
    if reply.status.is_success() {
        let id = reply.body["id"].as_str().unwrap_or("").to_owned();
        return Ok(Redirect::to(&format!("/ui/rollouts/{}?done=start", enc(&id))).into_response());
    }
    let err = reply.into_error();
    if err.status() == StatusCode::UNAUTHORIZED {
        return Err(err);
    }
    render_pools(&ui, &s, err.status(), &err.message(), &form).await
}

fn rollout_body(r: &Value, message: &str) -> String {
    let id = r["id"].as_str().unwrap_or("");
    let state = r["state"].as_str().unwrap_or("");
    let mut actions = String::new();
    if state == "canary" {
        let _ = write!(
            actions,
            "<a class=\"button\" href=\"/ui/rollouts/{}/promote\">Promote…</a> ",
            enc(id)
        );
    }
    if state == "canary" || state == "promoted" {
        let _ = write!(
            actions,
            "<a class=\"button danger\" href=\"/ui/rollouts/{}/abort\">Abort…</a>",
            enc(id)
        );
    }
    format!(
        "{message}<p><a href=\"/ui/pools\">« Pools</a></p><dl class=\"facts\"><dt>State</dt>\
         <dd id=\"rollout-state\">{}</dd><dt>Pool</dt><dd>{}</dd><dt>From version</dt><dd>{}</dd>\
         <dt>To version</dt><dd>{}</dd><dt>Canary share</dt><dd>{}%</dd><dt>Auto-promote after</dt><dd>{} s</dd>\
         <dt>Max failure rate</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
         <dt>Promoted</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl><div class=\"actions\">{actions}</div>",
        badge(state),
        t(&r["pool"]),
        t(&r["from_version"]),
        t(&r["to_version"]),
        t(&r["canary_percent"]),
        t(&r["auto_promote_after_s"]),
        t(&r["max_failure_rate"]),
        t(&r["reason"]),
        time(&r["created_at"]),
        time(&r["promoted_at"]),
        time(&r["finished_at"]),
    )
}

fn rollout_id(id: &str) -> Result<(), Error> {
    if !id.is_empty() && id.len() <= 18 && id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    Err(Error::Api {
        status: StatusCode::NOT_FOUND,
        detail: format!("rollout {id} not found"),
        errors: Vec::new(),
    })
}

/// `GET /ui/rollouts/{id}`.
pub async fn rollout(
    State(ui): State<Ui>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    rollout_id(&id)?;
    let r = ui.get(&s, &format!("/api/rollouts/{id}")).await?;
    let message = match field(&q, "done") {
        "start" => flash("ok", "Canary started."),
        "promote" => flash(
            "ok",
            "Promoted: all new work goes to the new version; the old one drains.",
        ),
        "abort" => flash(
            "ok",
            "Aborted: the canary's unstarted work went back to the stable version.",
        ),
        _ => String::new(),
    };
    let title = format!("Rollout {id}");
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "pools", &title, &rollout_body(&r, &message)),
    ))
}

fn check_action(action: &str) -> Result<(), Error> {
    if action == "promote" || action == "abort" {
        return Ok(());
    }
    Err(Error::Api {
        status: StatusCode::NOT_FOUND,
        detail: format!("no action {action}"),
        errors: Vec::new(),
    })
}

/// `GET /ui/rollouts/{id}/{promote|abort}`: asks for confirmation (a page, so it works without JavaScript).
pub async fn confirm(
    State(ui): State<Ui>,
    s: Session,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    rollout_id(&id)?;
    check_action(&action)?;
    let r = ui.get(&s, &format!("/api/rollouts/{id}")).await?;
    let (from, to, pool) = (t(&r["from_version"]), t(&r["to_version"]), t(&r["pool"]));
    let (question, consequence, label, class) = if action == "promote" {
        (
            format!("Promote {to} in pool {pool}?"),
            format!("All new work will go to {to}; {from} drains its routed work and is then retired."),
            "Yes, promote",
            "",
        )
    } else {
        (
            format!("Abort the rollout of {to} in pool {pool}?"),
            format!("Work not yet started on {to} goes back to {from}."),
            "Yes, abort",
            "danger",
        )
    };
    let body = format!(
        "<section class=\"card narrow\" role=\"alertdialog\" aria-labelledby=\"q\" aria-describedby=\"c\">\
         <h2 id=\"q\">{question}</h2><p id=\"c\">{consequence}</p><div class=\"actions\">{}\
         <a href=\"/ui/rollouts/{}\">No, go back</a></div></section>",
        button_form(&format!("/ui/rollouts/{id}/{action}"), label, class),
        enc(&id),
    );
    let title = format!("Rollout {id}: confirm");
    Ok(respond(StatusCode::OK, layout(Some(s.role), "pools", &title, &body)))
}

/// `POST /ui/rollouts/{id}/{promote|abort}`: does it; a refusal (409) is shown on the rollout's page.
pub async fn act(
    State(ui): State<Ui>,
    s: Session,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    rollout_id(&id)?;
    check_action(&action)?;
    let reply = ui
        .send(&s, Method::POST, &format!("/api/rollouts/{id}/{action}"), None)
        .await?;
    if reply.status.is_success() {
        return Ok(Redirect::to(&format!("/ui/rollouts/{id}?done={action}")).into_response());
    }
    let err = reply.into_error();
    if err.status() == StatusCode::UNAUTHORIZED || err.status() == StatusCode::NOT_FOUND {
        return Err(err);
    }
    let r = ui.get(&s, &format!("/api/rollouts/{id}")).await?;
    let title = format!("Rollout {id}");
    Ok(respond(
        err.status(),
        layout(Some(s.role), "pools", &title, &rollout_body(&r, &err.message())),
    ))
}

/// `GET /ui/accounts?cursor=`: every account, one page at a time.
pub async fn accounts(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let (cursor, answer) = ui.page(&s, "/api/accounts", &q).await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for a in items {
        let id = a["id"].as_str().unwrap_or_default();
        let usage = ui.get(&s, &format!("/api/accounts/{}/usage", enc(id))).await?;
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            t(&a["id"]),
            t(&a["name"]),
            t(&a["region"]),
            t(&usage["weight"]),
            limits_in_use(&usage),
            time(&a["created_at"])
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"6\">No accounts.</td></tr>");
    }
    let body = format!(
        "<div class=\"scroll\"><table class=\"data\" id=\"accounts\"><caption>Accounts</caption><thead><tr>\
         <th scope=\"col\">Id</th><th scope=\"col\">Name</th><th scope=\"col\">Region</th>\
         <th scope=\"col\">Weight</th><th scope=\"col\">Limits (in use / limit)</th>\
         <th scope=\"col\">Created</th></tr></thead><tbody>{rows}</tbody></table></div>{}",
        pager("/ui/accounts?", cursor, &answer["next_cursor"])
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "accounts", "Accounts", &body),
    ))
}

/// An account's limits with their use (`GET /api/accounts/{id}/usage`) as a list: `queue default: 3 / 5 running`,
/// `kind http.request: 2 / 20 running, 14 / 50 a second`; an em dash when it has none.
fn limits_in_use(usage: &Value) -> String {
    let mut items = String::new();
    let empty = Map::new();
    for (queue, u) in usage["queues"].as_object().unwrap_or(&empty) {
        let _ = write!(
            items,
            "<li>queue {}: <span class=\"num\">{} / {}</span> running</li>",
            esc(queue),
            t(&u["running"]),
            t(&u["max_running"])
        );
    }
    for (kind, u) in usage["kinds"].as_object().unwrap_or(&empty) {
        let mut parts = Vec::new();
        if !u["max_running"].is_null() {
            parts.push(format!(
                "<span class=\"num\">{} / {}</span> running",
                t(&u["running"]),
                t(&u["max_running"])
            ));
        }
        if !u["max_per_second"].is_null() {
            parts.push(format!(
                "<span class=\"num\">{} / {}</span> a second",
                t(&u["started_last_second"]),
                t(&u["max_per_second"])
            ));
        }
        let _ = write!(items, "<li>kind {}: {}</li>", esc(kind), parts.join(", "));
    }
    if items.is_empty() {
        "—".to_owned()
    } else {
        format!("<ul class=\"limits\">{items}</ul>")
    }
}
