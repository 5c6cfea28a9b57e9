//! Loads: the account's loads (newest first, by name), a load's batches with their progress and counts, and a
//! batch's failed records (CONTRACT §6).

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::html::{badge, enc, esc, layout, pager, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

fn filter_form(name: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/ui/loads\" class=\"filters\" role=\"search\" aria-label=\"Find loads\">\
         <div><label for=\"l-name\">Name</label><input id=\"l-name\" name=\"name\" value=\"{}\"></div>\
         <div><button type=\"submit\">Filter</button> <a href=\"/ui/loads\">Clear</a></div></form>",
        esc(name)
    )
}

fn count(c: &Value, name: &str) -> i64 {
    c[name].as_i64().unwrap_or(0)
}

/// `GET /ui/loads?name=&cursor=`: one page of loads, newest first.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let name = field(&q, "name");
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let form = filter_form(name);
    let uri = format!(
        "/api/loads{}",
        query(&[("name", name), ("limit", &limit), ("cursor", cursor.unwrap_or(""))])
    );
    let answer = match ui.get(&s, &uri).await {
        Ok(v) => v,
        Err(e) if e.status() != StatusCode::UNAUTHORIZED => {
            let body = format!("{form}{}", e.message());
            return Ok(respond(e.status(), layout(Some(s.role), "loads", "Loads", &body)));
        }
        Err(e) => return Err(e),
    };
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for l in items {
        let id = l["id"].as_str().unwrap_or("");
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/loads/{}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            enc(id),
            esc(id),
            t(&l["name"]),
            badge(l["status"].as_str().unwrap_or("")),
            time(&l["created_at"]),
            time(&l["closes_at"]),
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"5\">No loads.</td></tr>");
    }
    let base = format!("/ui/loads{}", query(&[("name", name)]));
    let base = if base.contains('?') {
        format!("{base}&")
    } else {
        format!("{base}?")
    };
    let body = format!(
        "{form}<div class=\"scroll\"><table class=\"data\" id=\"loads\"><caption>Loads, newest first</caption>\
         <thead><tr><th scope=\"col\">Id</th><th scope=\"col\">Name</th><th scope=\"col\">Status</th>\
         <th scope=\"col\">Opened</th><th scope=\"col\">Closes</th></tr></thead><tbody>{rows}</tbody></table></div>{}",
        pager(&base, cursor, &answer["next_cursor"])
    );
    Ok(respond(StatusCode::OK, layout(Some(s.role), "loads", "Loads", &body)))
}

/// `GET /ui/loads/{id}`: the load's batches, their progress and counts.
pub async fn detail(State(ui): State<Ui>, s: Session, Path(id): Path<String>) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let load = ui.get(&s, &format!("/api/loads/{}", enc(&id))).await?;
    let id = id.as_str();
    let batches = load["batches"].as_array().map(Vec::as_slice).unwrap_or_default();
    let complete = batches.iter().filter(|b| b["status"] == "complete").count();
    let mut rows = String::new();
    let mut totals = [0i64; 4];
    for b in batches {
        let bid = b["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| b["id"].to_string());
        let c = &b["counts"];
        for (i, name) in ["total", "unchanged", "changed", "failed"].iter().enumerate() {
            totals[i] += count(c, name);
        }
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/loads/{}/batches/{}\">{}</a></th><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            enc(id),
            enc(&bid),
            esc(&bid),
            badge(b["status"].as_str().unwrap_or("")),
            count(c, "total"),
            count(c, "unchanged"),
            count(c, "changed"),
            count(c, "failed"),
        );
    }
    if batches.is_empty() {
        rows.push_str("<tr><td colspan=\"6\">No batches yet.</td></tr>");
    }
    let body = format!(
        "<p><a href=\"/ui/loads\">« Loads</a></p><h2>{} <small>({})</small></h2><p><label for=\"progress\">Batches complete: {complete} of {}</label> \
         <progress id=\"progress\" max=\"{}\" value=\"{complete}\">{complete} of {}</progress></p>\
         <p>Records: {} total, {} unchanged, {} changed, <strong>{} failed</strong>.</p>\
         <div class=\"scroll\"><table class=\"data\" id=\"batches\"><caption>Batches</caption><thead><tr><th scope=\"col\">Batch</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Total</th><th scope=\"col\">Unchanged</th>\
         <th scope=\"col\">Changed</th><th scope=\"col\">Failed</th></tr></thead><tbody>{rows}</tbody></table></div>",
        t(&load["name"]),
        t(&load["status"]),
        batches.len(),
        batches.len().max(1),
        batches.len(),
        totals[0],
        totals[1],
        totals[2],
        totals[3],
    );
    let title = format!("Load {id}");
    Ok(respond(StatusCode::OK, layout(Some(s.role), "loads", &title, &body)))
}

/// `GET /ui/loads/{id}/batches/{batch}?cursor=`: the batch's counts and one page of its failed records.
pub async fn batch(
    State(ui): State<Ui>,
    s: Session,
    Path((id, batch)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let base = format!("/api/loads/{}/batches/{}", enc(&id), enc(&batch));
    let b = ui.get(&s, &base).await?;
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let limit = PAGE_SIZE.to_string();
    let results = ui
        .get(
            &s,
            &format!(
                "{base}/results{}",
                query(&[
                    ("outcome", "failed"),
                    ("limit", &limit),
                    ("cursor", cursor.unwrap_or(""))
                ])
            ),
        )
        .await?;
    let items = results["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for r in items {
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
            t(&r["index"]),
            t(&r["sku_ref"]),
            t(&r["location_ref"]),
            t(&r["message"])
        );
    }
    if items.is_empty() {
        rows.push_str("<tr><td colspan=\"4\">No failed records.</td></tr>");
    }
    let c = &b["counts"];
    let title = format!("Load {id}, batch {batch}");
    let body = format!(
        "<p><a href=\"/ui/loads/{}\">« Load {}</a></p><dl class=\"facts\"><dt>Status</dt><dd>{}</dd>\
         <dt>Records</dt><dd>{} total, {} unchanged, {} changed, {} failed</dd></dl>\
         <div class=\"scroll\"><table class=\"data\" id=\"failed\"><caption>Failed records</caption><thead><tr>\
         <th scope=\"col\">Index</th><th scope=\"col\">SKU</th><th scope=\"col\">Location</th>\
         <th scope=\"col\">Message</th></tr></thead><tbody>{rows}</tbody></table></div>{}",
        enc(&id),
        esc(&id),
        badge(b["status"].as_str().unwrap_or("")),
        count(c, "total"),
        count(c, "unchanged"),
        count(c, "changed"),
        count(c, "failed"),
        pager(
            &format!("/ui/loads/{}/batches/{}?", enc(&id), enc(&batch)),
            cursor,
            &results["next_cursor"]
        ),
    );
    Ok(respond(StatusCode::OK, layout(Some(s.role), "loads", &title, &body)))
}
