//! Workflows: the account's workflows (latest version of each), and one version with its rulesets drawn as a
//! status → event diagram.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::html::{enc, esc, json_block, layout, pager, respond, t, time};
use super::{field, require, Error, Role, Session, Ui};

/// `GET /ui/workflows?cursor=`.
pub async fn list(
    State(ui): State<Ui>,
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let (cursor, answer) = ui.page(&s, "/api/workflows", &q).await?;
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut rows = String::new();
    for w in items {
        let r = w["ref"].as_str().unwrap_or("");
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/ui/workflows/{}\">{}</a></th><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            enc(r),
            esc(r),
            t(&w["version"]),
            w["statuses"].as_array().map_or(0, Vec::len),
            w["rulesets"].as_array().map_or(0, Vec::len),
            time(&w["created_at"]),
        );
    }
    if items.is_empty() {
        rows.push_str(
            "<tr><td colspan=\"5\">No workflows yet (upload one with PUT /api/workflows/TYPE::SUBTYPE).</td></tr>",
        );
    }
    let body = format!(
        "<div class=\"scroll\"><table class=\"data\"><caption>Workflows (latest version of each)</caption><thead>\
         <tr><th scope=\"col\">Ref</th><th scope=\"col\">Latest version</th><th scope=\"col\">Statuses</th>\
         <th scope=\"col\">Rulesets</th><th scope=\"col\">Uploaded</th></tr></thead><tbody>{rows}</tbody></table>\
         </div>{}",
        pager("/ui/workflows?", cursor, &answer["next_cursor"])
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "workflows", "Workflows", &body),
    ))
}

/// The statuses a ruleset moves its entity to (its `core.SetState` rules).
fn targets(ruleset: &Value) -> Vec<String> {
    ruleset["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|r| r["name"] == "core.SetState")
        .filter_map(|r| r["props"]["status"].as_str().map(str::to_owned))
        .collect()
}

/// A ruleset as an edge of the diagram: event name, entity type, kind, target statuses.
type Edge = (String, String, String, Vec<String>);

/// The rulesets as a diagram: one box per status listing the events it handles and where each leads.
fn diagram(w: &Value) -> String {
    let statuses: Vec<&str> = w["statuses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    // status (or "" for rulesets without triggers) -> the rulesets it runs
    let mut edges: BTreeMap<&str, Vec<Edge>> = BTreeMap::new();
    for r in w["rulesets"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let edge = (
            r["name"].as_str().unwrap_or("").to_owned(),
            r["entity_type"].as_str().unwrap_or("").to_owned(),
            r["kind"].as_str().unwrap_or("normal").to_owned(),
            targets(r),
        );
        let triggers: Vec<&str> = r["triggers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if triggers.is_empty() {
            edges.entry("").or_default().push(edge.clone());
        }
        for tr in triggers {
            edges.entry(tr).or_default().push(edge.clone());
        }
    }
    let mut out = String::from("<ul class=\"diagram\" aria-label=\"Statuses and the events that move them\">");
    let mut boxes: Vec<&str> = statuses.clone();
    if edges.contains_key("") {
        boxes.insert(0, "");
    }
    for status in boxes {
        let title = if status.is_empty() {
            "In any status".to_owned()
        } else {
            esc(status)
        };
        let _ = write!(
            out,
            "<li class=\"node\" id=\"status-{}\"><h3>{title}</h3><ul>",
            enc(status)
        );
        let list = edges.get(status).map(Vec::as_slice).unwrap_or_default();
        if list.is_empty() {
            out.push_str("<li class=\"muted\">no event handled</li>");
        }
        for (event, entity_type, kind, to) in list {
            let to = if to.is_empty() {
                "stays".to_owned()
            } else {
                to.iter()
                    .map(|s| format!("<a href=\"#status-{}\">{}</a>", enc(s), esc(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let exception = if kind == "exception" {
                " <em>(exception)</em>"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<li><span class=\"event-name\">{}</span>{exception} <span class=\"muted\">on {}</span> \
                 <span aria-hidden=\"true\">→</span><span class=\"sr-only\">leads to</span> {to}</li>",
                esc(event),
                esc(entity_type)
            );
        }
        out.push_str("</ul></li>");
    }
    out.push_str("</ul>");
    out
}

/// `GET /ui/workflows/{ref}?version=`.
pub async fn detail(
    State(ui): State<Ui>,
    s: Session,
    Path(reference): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    require(&s, Role::Account)?;
    let latest = ui.get(&s, &format!("/api/workflows/{}", enc(&reference))).await?;
    let version = field(&q, "version");
    let w = if version.is_empty() || Some(version) == latest["version"].as_str() {
        latest.clone()
    } else {
        ui.get(
            &s,
            &format!("/api/workflows/{}/versions/{}", enc(&reference), enc(version)),
        )
        .await?
    };
    // Versions are MAJOR.MINOR, numbered without gaps: every minor of the latest major, and each earlier major's
    // first version, are known to exist without a listing.
    let mut versions = String::new();
    let latest_v = latest["version"].as_str().unwrap_or("1.0");
    let (major, minor) = latest_v.split_once('.').unwrap_or(("1", "0"));
    let (major, minor): (u32, u32) = (major.parse().unwrap_or(1), minor.parse().unwrap_or(0));
    let shown = w["version"].as_str().unwrap_or("");
    let mut links: Vec<String> = (1..major).map(|m| format!("{m}.0")).collect();
    links.extend((0..=minor).map(|n| format!("{major}.{n}")));
    for v in links {
        let current = if v == shown { " aria-current=\"page\"" } else { "" };
        let _ = write!(
            versions,
            "<li><a href=\"/ui/workflows/{}?version={v}\"{current}>{v}</a></li>",
            enc(&reference)
        );
    }
    let mut settings = String::new();
    if let Some(map) = w["settings"].as_object().filter(|m| !m.is_empty()) {
        settings.push_str("<h2>Settings</h2><dl class=\"facts\">");
        for (k, v) in map {
            let _ = write!(settings, "<dt>{}</dt><dd>{}</dd>", esc(k), t(v));
        }
        settings.push_str("</dl>");
    }
    let title = format!("Workflow {reference}");
    let body = format!(
        "<p><a href=\"/ui/workflows\">« Workflows</a></p><dl class=\"facts\"><dt>Version shown</dt>\
         <dd id=\"wf-version\">{}</dd><dt>Uploaded</dt><dd>{}</dd></dl>\
         <nav aria-label=\"Versions\"><h2>Versions</h2><ul class=\"versions\">{versions}</ul></nav>\
         <h2>Rulesets</h2>{}{settings}<details><summary>Definition (JSON)</summary>{}</details>",
        esc(shown),
        time(&w["created_at"]),
        diagram(&w),
        json_block(&w),
    );
    Ok(respond(
        StatusCode::OK,
        layout(Some(s.role), "workflows", &title, &body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each triggered status lists its events and their target statuses; untriggered rulesets go to "any status".
    #[test]
    fn diagram_lists_transitions() {
        let w = json!({
            "statuses": [{"name": "CREATED"}, {"name": "DONE"}],
            "rulesets": [
                {"name": "Finish", "entity_type": "T", "triggers": ["CREATED"],
                 "rules": [{"name": "core.SetState", "props": {"status": "DONE"}}]},
                {"name": "Log", "entity_type": "T", "rules": [{"name": "core.Log", "props": {"message": "x"}}]}
            ]
        });
        let d = diagram(&w);
        assert!(d.contains("In any status"), "{d}");
        let created = &d[d.find("id=\"status-CREATED").unwrap()..d.find("id=\"status-DONE").unwrap()];
        assert!(
            created.contains("Finish") && created.contains("#status-DONE"),
            "{created}"
        );
    }
}
