//! The admin audit trail (admin token): every admin change, newest first, one API page at a time.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::html::{layout, pager, respond, t, time};
use super::{require, Error, Role, Session, Ui};

/// `GET /ui/audit?cursor=`: one page of `GET /api/admin-events`.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Admin)?;
    let (cursor, answer) = ui.page(&s, "/api/admin-events", &q).await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for e in items {
        let _ = write!(
            rows,
            "<tr><td>{}</td><th scope=\"row\">{}</th><td>{}</td><td>{}</td></tr>",
            time(&e["at"]),
            t(&e["action"]),
            t(&e["target"]),
            t(&e["actor"]),
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"4\">No admin change yet.</td></tr>");
    }
    let body = format!(
        "<p>Every change made with admin rights (accounts, keys, limits, pools, scaling, rollouts), newest first. \
         The actor is the kind of credential that made it, never the credential.</p>\
         <div class=\"scroll\"><table class=\"data\" id=\"admin-events\"><caption>Admin changes, newest first\
         </caption><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Action</th><th scope=\"col\">Target</th>\
         <th scope=\"col\">Actor</th></tr></thead><tbody>{rows}</tbody></table></div>{}",
        pager("/ui/audit?", cursor, &answer["next_cursor"])
    );
    Ok(respond(StatusCode::OK, layout(Some(s.role), "audit", "Audit", &body)))
}
