//! The page layout and the few helpers every page uses to turn API JSON into HTML.
//!
//! Every string that comes from the API or the request goes through [`esc`] (element text and quoted attribute
//! values alike) or [`enc`] (URL components) before it reaches the page; literals in the page modules are trusted.

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Role;

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL component (path segment or query value): everything but RFC 3986 unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes what [`enc`] produced (and any other percent-encoding); `None` when it is not valid UTF-8.
pub fn dec(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query string from the non-empty pairs, each value encoded (`?a=1&b=2`, or empty).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A JSON field as display text: strings as they are, null/absent as an em dash, anything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON field as escaped display text.
pub fn t(v: &Value) -> String {
    esc(&text(v))
}

/// A JSON value pretty-printed in a `<pre>`, escaped.
pub fn json_block(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\">{}</pre>", esc(&pretty))
}

/// An RFC 3339 time as a `<time>` element showing `YYYY-MM-DD HH:MM:SS` UTC; null as an em dash.
pub fn time(v: &Value) -> String {
    match v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
        Some(at) => {
            let at = at.with_timezone(&Utc);
            format!(
                "<time datetime=\"{}\">{}</time>",
                esc(&at.to_rfc3339()),
                at.format("%Y-%m-%d %H:%M:%S")
            )
        }
        None => t(v),
    }
}

/// A duration in milliseconds as a short human figure (`850 ms`, `12 s`, `3 min`, `5 h`, `2 d`).
pub fn age(ms: i64) -> String {
    let s = ms / 1000;
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        _ if s < 120 => format!("{s} s"),
        _ if s < 7200 => format!("{} min", s / 60),
        _ if s < 172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// A state or status as a labelled badge (its colour comes from the CSS class, its meaning from the text).
pub fn badge(state: &str) -> String {
    let class: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("<span class=\"badge s-{class}\">{}</span>", esc(state))
}

/// A message box: `error` (role alert) or `ok` (role status).
pub fn flash(kind: &str, message: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!("<p class=\"flash {kind}\" role=\"{role}\">{}</p>", esc(message))
}

/// The problems of an API error as a message box: the detail, then each field error.
pub fn problems(detail: &str, errors: &[(String, String)]) -> String {
    let mut out = format!("<div class=\"flash error\" role=\"alert\"><p>{}</p>", esc(detail));
    if !errors.is_empty() {
        out.push_str("<ul>");
        for (path, message) in errors {
            let field = path.rsplit('/').next().unwrap_or(path);
            let _ = write!(out, "<li><strong>{}</strong>: {}</li>", esc(field), esc(message));
        }
        out.push_str("</ul>");
    }
    out.push_str("</div>");
    out
}

/// "Next page" and "First page" links of a paged list; `base` already carries the filters (and ends in `?` or `&`).
pub fn pager(base: &str, cursor: Option<&str>, next: &Value) -> String {
    let mut out = String::from("<nav class=\"pager\" aria-label=\"Pages\">");
    if cursor.is_some() {
        let first = base.trim_end_matches(['?', '&']);
        let _ = write!(out, "<a href=\"{}\">« First page</a>", esc(first));
    }
    if let Some(c) = next.as_str() {
        let _ = write!(
            out,
            "<a href=\"{}cursor={}\" rel=\"next\">Next page »</a>",
            esc(base),
            enc(c)
        );
    }
    out.push_str("</nav>");
    out
}

/// A POST form with one button (`class` styles it: `danger` for destructive actions).
pub fn button_form(action: &str, label: &str, class: &str) -> String {
    labelled_button_form(action, label, label, class)
}

/// A POST form with one button showing `label` and announcing `aria` (a short label in a row of many says which
/// row it acts on to screen-reader users).
pub fn labelled_button_form(action: &str, label: &str, aria: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><button type=\"submit\" class=\"{class}\" \
         aria-label=\"{}\">{}</button></form>",
        esc(action),
        esc(aria),
        esc(label)
    )
}

const NAV_ACCOUNT: [(&str, &str); 6] = [
    ("overview", "Overview"),
    ("jobs", "Jobs"),
    ("entities", "Entities"),
    ("workflows", "Workflows"),
    ("schedules", "Schedules"),
    ("loads", "Loads"),
];

const NAV_ADMIN: [(&str, &str); 7] = [
    ("overview", "Overview"),
    ("jobs", "Jobs"),
    ("workers", "Workers"),
    ("pools", "Pools"),
    ("rollouts", "Rollouts"),
    ("accounts", "Accounts"),
    ("audit", "Audit"),
];

/// A whole page: head, skip link, navigation for the signed-in role (none before sign-in), sign-out button, and
/// `body` in `<main>`.
pub fn layout(role: Option<Role>, active: &str, title: &str, body: &str) -> String {
    let mut nav = String::new();
    if let Some(role) = role {
        let items: &[(&str, &str)] = match role {
            Role::Account => &NAV_ACCOUNT,
            Role::Admin => &NAV_ADMIN,
        };
        nav.push_str("<nav class=\"top\" aria-label=\"Main\"><ul>");
        for (slug, label) in items {
            let current = if *slug == active { " aria-current=\"page\"" } else { "" };
            let _ = write!(nav, "<li><a href=\"/ui/{slug}\"{current}>{label}</a></li>");
        }
        nav.push_str("</ul>");
        let who = match role {
            Role::Account => "account key",
            Role::Admin => "admin",
        };
        let _ = write!(
            nav,
            "<span class=\"who\">Signed in ({who})</span>{}</nav>",
            button_form("/ui/logout", "Sign out", "link")
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ordo</title><link rel=\"stylesheet\" href=\"/ui/assets/ui.css\">\
         <script src=\"/ui/assets/ui.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a class=\"brand\" href=\"/ui\">ordo</a>{nav}</header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

/// An HTML response: no caching (pages show live, per-key data). The security headers are added to every
/// dashboard response by the router's layer (`ui::secure`).
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Markup characters never survive escaping, in text or in attributes.
    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    /// URL components round-trip through enc/dec, and reserved characters are encoded.
    #[test]
    fn url_components_round_trip() {
        for s in ["ORDER::HD", "a b&c=d/é", "", "plain-1.2_~"] {
            assert_eq!(dec(&enc(s)).as_deref(), Some(s));
        }
        assert_eq!(enc("a b&c"), "a%20b%26c");
        assert_eq!(
            query(&[("queue", "a b"), ("state", ""), ("kind", "x")]),
            "?queue=a%20b&kind=x"
        );
    }

    /// Ages read naturally at every scale.
    #[test]
    fn ages() {
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(12_000), "12 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(3 * 86_400_000), "3 d");
    }
}
