//! Sign-in: the session cookie, who it belongs to, and the cross-site request check of every form post.
//!
//! The cookie holds the API key itself (HttpOnly, Secure, SameSite=Strict, Path=/ui): the server keeps no session
//! table, so a revoked key ends its sessions at the next request (the API answers 401 and the page sends the user
//! back to sign-in). The role prefix only picks the navigation; the API decides what the key may do.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use std::collections::HashMap;

use super::html::{dec, enc, layout, problems, respond};
use super::{Error, Role, Ui};

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "ordo_session";
/// How long a session lasts without signing in again (8 hours): a forgotten browser does not stay signed in.
const MAX_AGE_S: u32 = 8 * 3600;

/// A signed-in user: the credential sent to the API as `Authorization: Bearer`, and its role.
#[derive(Clone)]
pub struct Session {
    /// The API key or admin token.
    pub key: String,
    /// What it is.
    pub role: Role,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

impl Session {
    fn from_cookie(value: &str) -> Option<Session> {
        let (role, key) = value.split_once('.')?;
        let role = match role {
            "k" => Role::Account,
            "a" => Role::Admin,
            _ => return None,
        };
        let key = dec(key)?;
        (!key.is_empty()).then_some(Session { key, role })
    }

    fn cookie(&self) -> String {
        let role = match self.role {
            Role::Account => "k",
            Role::Admin => "a",
        };
        // The key is percent-encoded: an admin token may hold characters a cookie value cannot.
        format!(
            "{COOKIE_NAME}={role}.{}; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age={MAX_AGE_S}",
            enc(&self.key)
        )
    }
}

/// The `Set-Cookie` value that ends the session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("ordo_session=; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age=0")
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = cookie_value(&parts.headers)
            .and_then(Session::from_cookie)
            .ok_or(Error::NoSession)?;
        if parts.method == Method::POST {
            same_origin(&parts.headers)?;
        }
        Ok(session)
    }
}

/// Refuses a cross-site form post. The SameSite=Strict cookie already keeps other sites' posts unauthenticated;
/// this second check (Origin must name this host, Sec-Fetch-Site must not say cross-site) also covers the sign-in
/// form, which has no session yet, and browsers that ignore SameSite. Clients without these headers (scripts)
/// cannot be tricked into a request, so their absence is accepted.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Error> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = site {
        if site != "same-origin" && site != "none" {
            return Err(Error::CrossSite);
        }
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    // Under the dashboard's `Referrer-Policy: no-referrer` a browser sends `Origin: null` with its own form posts
    // (Fetch standard, "serialize a request origin"); it then vouches for the post by Sec-Fetch-Site alone. A null
    // origin without that header (a sandboxed frame, an old browser) stays refused.
    if origin.as_bytes() == b"null" {
        return if site == Some("same-origin") {
            Ok(())
        } else {
            Err(Error::CrossSite)
        };
    }
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || authority != host {
        return Err(Error::CrossSite);
    }
    Ok(())
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "{message}<form method=\"post\" action=\"/ui/login\" class=\"card narrow\">\
         <label for=\"key\">API key or admin token</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <p class=\"hint\">An account's API key shows that account's queues, jobs, entities, workflows, schedules \
         and loads. The admin token shows accounts, pools and rollouts. The key is kept in an HTTP-only cookie \
         for 8 hours.</p>\
         <button type=\"submit\">Sign in</button></form>"
    );
    respond(status, layout(None, "", "Sign in", &body))
}

/// `GET /ui/login`: the sign-in form.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

/// `POST /ui/login`: checks the key against the API (an account route, then an admin one), then sets the cookie.
pub async fn login(State(ui): State<Ui>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    let key = form.get("key").map(|k| k.trim()).unwrap_or("");
    if key.is_empty() {
        return login_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &problems("Enter an API key or the admin token.", &[]),
        );
    }
    let role = match identify(&ui, key).await {
        Ok(role) => role,
        Err((status, message)) => return login_page(status, &problems(&message, &[])),
    };
    let session = Session {
        key: key.to_owned(),
        role,
    };
    let mut res = (StatusCode::SEE_OTHER, [(LOCATION, "/ui/overview")]).into_response();
    match HeaderValue::from_str(&session.cookie()) {
        Ok(v) => {
            res.headers_mut().insert(SET_COOKIE, v);
            res
        }
        Err(_) => login_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &problems("That key contains characters no API key has.", &[]),
        ),
    }
}

/// Which role `key` has, asking the API as any script would; an error status and message when it has none.
async fn identify(ui: &Ui, key: &str) -> Result<Role, (StatusCode, String)> {
    let reject = |e: Error| match e {
        Error::Api { status, detail, .. } if status == StatusCode::UNAUTHORIZED => {
            (StatusCode::UNAUTHORIZED, format!("Unknown or revoked key ({detail})."))
        }
        Error::Api { status, detail, .. } => (status, detail),
        other => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    };
    let account = ui.call(key, Method::GET, "/api/queues", None).await.map_err(reject)?;
    if account.status.is_success() {
        return Ok(Role::Account);
    }
    if account.status == StatusCode::FORBIDDEN {
        let admin = ui
            .call(key, Method::GET, "/api/accounts?limit=1", None)
            .await
            .map_err(reject)?;
        if admin.status.is_success() {
            return Ok(Role::Admin);
        }
        return Err(reject(admin.into_error()));
    }
    Err(reject(account.into_error()))
}

/// `POST /ui/logout`: ends the session.
pub async fn logout(headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    let mut res = (StatusCode::SEE_OTHER, [(LOCATION, "/ui/login")]).into_response();
    res.headers_mut().insert(SET_COOKIE, clear_cookie());
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cookie round-trips any token, and carries every protective attribute.
    #[test]
    fn cookie_round_trip() {
        for (key, role) in [("abc123", Role::Account), ("we;ird =tok,en", Role::Admin)] {
            let s = Session {
                key: key.to_owned(),
                role,
            };
            let cookie = s.cookie();
            for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
                assert!(cookie.contains(attr), "{cookie}");
            }
            let value = cookie.split(';').next().unwrap().trim_start_matches("ordo_session=");
            let back = Session::from_cookie(value).unwrap();
            assert_eq!((back.key.as_str(), back.role), (key, role));
        }
        assert!(Session::from_cookie("x.abc").is_none());
        assert!(Session::from_cookie("k.").is_none());
    }

    /// A post from another origin, or flagged cross-site by the browser, is refused; same origin and scripts pass.
    #[test]
    fn cross_site_posts_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[("host", "a:1"), ("origin", "http://a:1")])).is_ok());
        assert!(same_origin(&h(&[("host", "a:1")])).is_ok());
        assert!(same_origin(&h(&[("host", "a:1"), ("origin", "http://evil")])).is_err());
        assert!(same_origin(&h(&[("host", "a:1"), ("origin", "null")])).is_err());
        assert!(same_origin(&h(&[("host", "a:1"), ("sec-fetch-site", "cross-site")])).is_err());
        // A browser's own post under `Referrer-Policy: no-referrer`: origin null, vouched for by Sec-Fetch-Site.
        let null = |site: &'static str| h(&[("host", "a:1"), ("origin", "null"), ("sec-fetch-site", site)]);
        assert!(same_origin(&null("same-origin")).is_ok());
        for site in ["same-site", "cross-site", "none"] {
            assert!(same_origin(&null(site)).is_err(), "{site}");
        }
    }
}
