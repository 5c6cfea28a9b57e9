//! Entities: list them by type, ref prefix and status (refs in natural order: `A2` before `A10`); look one up by
//! type and ref; see its status, attributes and workflow version, and its event log as a timeline in which the
//! audit records of an event are folded under it.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::html::{badge, enc, esc, json_block, layout, pager, problems, query, respond, t, time};
use super::{field, require, Error, Role, Session, Ui, PAGE_SIZE};

fn search_form(entity_type: &str, entity_ref: &str, status: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/ui/entities\" class=\"filters\" role=\"search\" aria-label=\"Find an entity\">\
         <div><label for=\"e-type\">Type</label><input id=\"e-type\" name=\"type\" value=\"{}\" \
         placeholder=\"ORDER\"></div>\
         <div><label for=\"e-ref\">Ref or its start</label><input id=\"e-ref\" name=\"ref\" value=\"{}\" \
         placeholder=\"o-1\"></div>\
         <div><label for=\"e-status\">Status</label><input id=\"e-status\" name=\"status\" value=\"{}\" \
         placeholder=\"SHIPPED\"></div>\
         <div><button type=\"submit\">Find</button></div></form>",
        esc(entity_type),
        esc(entity_ref),
        esc(status)
    )
}

fn event_item(e: &Value, audits: &[&Value]) -> String {
    let id = e["id"].as_str().unwrap_or("");
    let audit = e["kind"].as_str() == Some("audit");
    let mut out = format!(
        "<li id=\"ev-{}\" class=\"{}\"><div class=\"ev-head\"><span class=\"seq\">#{}</span> ",
        esc(id),
        if audit { "audit" } else { "event" },
        esc(id)
    );
    if audit {
        let _ = write!(
            out,
            "<span class=\"kind\">audit · {}</span> <strong>{}</strong>",
            t(&e["category"]),
            t(&e["name"])
        );
    } else {
        let _ = write!(
            out,
            "<span class=\"kind\">event</span> <strong>{}</strong> {}",
            t(&e["name"]),
            badge(e["status"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(out, " {}", time(&e["created_at"]));
    if let Some(source) = e["source_event_id"].as_str() {
        let label = if audit { "about event" } else { "from event" };
        let _ = write!(out, " <a href=\"#ev-{0}\">{label} #{0}</a>", esc(source));
    }
    out.push_str("</div>");
    // A logged message (core.Log, webhook outcomes) is the point of its record: show it without a click.
    if let Some(message) = e["attributes"]["message"].as_str() {
        let _ = write!(out, "<p class=\"summary\">{}</p>", esc(message));
    }
    if let Some(err) = e["error"].as_str() {
        let _ = write!(out, "<p class=\"error-text\">Error: {}</p>", esc(err));
    }
    if e["attributes"].as_object().is_some_and(|a| !a.is_empty()) {
        let _ = write!(
            out,
            "<details><summary>{}</summary>{}</details>",
            if audit { "Details" } else { "Attributes" },
            json_block(&e["attributes"])
        );
    }
    if !audits.is_empty() {
        let _ = write!(
            out,
            "<details class=\"audits\"><summary>{} audit record{} of this event</summary><ol>",
            audits.len(),
            if audits.len() == 1 { "" } else { "s" }
        );
        for a in audits {
            out.push_str(&event_item(a, &[]));
        }
        out.push_str("</ol></details>");
    }
    out.push_str("</li>");
    out
}

/// The timeline's items: each event with the audit records about it folded under it; an audit record whose event
/// is not on this page stands alone, in its place.
fn timeline_items(items: &[Value]) -> String {
    let on_page: std::collections::HashSet<&str> = items
        .iter()
        .filter(|e| e["kind"].as_str() != Some("audit"))
        .filter_map(|e| e["id"].as_str())
        .collect();
    let mut under: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in items.iter().filter(|e| e["kind"].as_str() == Some("audit")) {
        if let Some(src) = e["source_event_id"].as_str().filter(|s| on_page.contains(s)) {
            under.entry(src).or_default().push(e);
        }
    }
    let mut out = String::new();
    for e in items {
        let id = e["id"].as_str().unwrap_or("");
        let folded =
            e["kind"].as_str() == Some("audit") && e["source_event_id"].as_str().is_some_and(|s| on_page.contains(s));
        if !folded {
            out.push_str(&event_item(e, under.get(id).map(Vec::as_slice).unwrap_or_default()));
        }
    }
    out
}

/// A page of entities from `GET /api/entities` (by type and ref prefix), each linked to its own page.
async fn list_view(
    ui: &Ui,
    s: &Session,
    entity_type: &str,
    ref_prefix: &str,
    status: &str,
    cursor: Option<&str>,
) -> Result<String, Error> {
    let limit = PAGE_SIZE.to_string();
    let page = ui
        .get(
            s,
            &format!(
                "/api/entities{}",
                query(&[
                    ("type", entity_type),
                    ("ref_prefix", ref_prefix),
                    ("status", status),
                    ("limit", &limit),
                    ("cursor", cursor.unwrap_or("")),
                ])
            ),
        )
        .await?;
    let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return Ok("<p id=\"entity-list\">No entities match.</p>".to_owned());
    }
    let mut rows = String::new();
    for e in items {
        let (et, er) = (e["type"].as_str().unwrap_or(""), e["ref"].as_str().unwrap_or(""));
        let _ = write!(
            rows,
            "<tr><td>{}</td><td><a href=\"/ui/entities{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(et),
            query(&[("type", et), ("ref", er)]),
            esc(er),
            badge(e["status"].as_str().unwrap_or("")),
            t(&e["workflow"]["ref"]),
            time(&e["updated_at"]),
        );
    }
    let filters = query(&[("type", entity_type), ("ref", ref_prefix), ("status", status)]);
    let base = if filters.is_empty() {
        "/ui/entities?".to_owned()
    } else {
        format!("/ui/entities{filters}&")
    };
    Ok(format!(
        "<table id=\"entity-list\"><caption>Entities</caption><thead><tr><th scope=\"col\">Type</th>\
         <th scope=\"col\">Ref</th><th scope=\"col\">Status</th><th scope=\"col\">Workflow</th>\
         <th scope=\"col\">Updated</th></tr></thead><tbody>{rows}</tbody></table>{}",
        pager(&base, cursor, &page["next_cursor"])
    ))
}

/// `GET /ui/entities?type=&ref=&status=&cursor=`: one entity with its timeline, or a list when the key is partial
/// or a status is asked for.
pub async fn page(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let (entity_type, entity_ref, status) = (field(&q, "type"), field(&q, "ref"), field(&q, "status"));
    let cursor = Some(field(&q, "cursor")).filter(|c| !c.is_empty());
    let form = search_form(entity_type, entity_ref, status);
    let show = |status: StatusCode, body: String| respond(status, layout(Some(s.role), "entities", "Entities", &body));
    if entity_type.is_empty() || entity_ref.is_empty() || !status.is_empty() {
        // No exact key: list what matches, a page at a time (all entities, or one type's, by ref prefix and status).
        let list = list_view(&ui, &s, entity_type, entity_ref, status, cursor).await?;
        let hint = "<p class=\"hint\">Entities in type order, refs in natural order (A2 before A10). Enter a type and a ref (for an order: type \
                    <code>ORDER</code> and its order number) to see one with its timeline; a partial ref lists the \
                    refs that start with it.</p>";
        return Ok(show(StatusCode::OK, format!("{form}{hint}{list}")));
    }
    let entity = match ui
        .get(&s, &format!("/api/entities/{}/{}", enc(entity_type), enc(entity_ref)))
        .await
    {
        Ok(v) => v,
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            let msg = problems(&format!("No entity {entity_type} {entity_ref}."), &[]);
            let list = list_view(&ui, &s, entity_type, entity_ref, "", None).await?;
            let similar = format!("<h2>Refs starting with {}</h2>{list}", esc(entity_ref));
            return Ok(show(StatusCode::NOT_FOUND, format!("{form}{msg}{similar}")));
        }
        Err(e) => return Err(e),
    };
    let limit = PAGE_SIZE.to_string();
    let events = ui
        .get(
            &s,
            &format!(
                "/api/events{}",
                query(&[
                    ("entity_type", entity_type),
                    ("entity_ref", entity_ref),
                    ("limit", &limit),
                    ("cursor", cursor.unwrap_or("")),
                ])
            ),
        )
        .await?;
    let items = events["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut timeline = timeline_items(items);
    if items.is_empty() {
        timeline.push_str("<li>No events in the last 30 days.</li>");
    }
    let wf = &entity["workflow"];
    let wf_ref = wf["ref"].as_str().unwrap_or("");
    let wf_version = wf["version"].as_str().unwrap_or("");
    let base = format!("/ui/entities{}&", query(&[("type", entity_type), ("ref", entity_ref)]));
    let body = format!(
        "{form}<h2>{} {}</h2><dl class=\"facts\"><dt>Status</dt><dd id=\"entity-status\">{}</dd>\
         <dt>Subtype</dt><dd>{}</dd><dt>Workflow</dt><dd><a href=\"/ui/workflows/{}?version={}\">{} {}</a></dd>\
         <dt>Created</dt><dd>{}</dd><dt>Updated</dt><dd>{}</dd></dl><h2>Attributes</h2>{}\
         <h2 id=\"timeline-title\">Timeline</h2><p class=\"hint\">Events and the audit records of their execution, \
         oldest first; the audit records of an event are folded under it.</p>\
         <ol class=\"timeline\" id=\"timeline\" aria-labelledby=\"timeline-title\">{timeline}</ol>{}",
        t(&entity["type"]),
        t(&entity["ref"]),
        badge(entity["status"].as_str().unwrap_or("")),
        t(&entity["subtype"]),
        enc(wf_ref),
        enc(wf_version),
        esc(wf_ref),
        esc(wf_version),
        time(&entity["created_at"]),
        time(&entity["updated_at"]),
        json_block(&entity["attributes"]),
        pager(&base, cursor, &events["next_cursor"]),
    );
    Ok(show(StatusCode::OK, body))
}
