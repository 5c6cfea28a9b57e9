//! The web dashboard at `/ui`: server-rendered HTML pages over the public HTTP API, embedded in the binary.
//!
//! Owns nothing persistent and runs no SQL. Invariants:
//! - every page gets its data by calling the API router in-process with the signed-in credential as
//!   `Authorization: Bearer`, so the dashboard can do exactly what a script with that key can do, and the API's
//!   tenancy, validation and rate limits apply unchanged;
//! - every list asks the API for one page (`limit` + `cursor`) and shows what it got, so no page loads more than it
//!   shows whatever the size of the tables;
//! - every dynamic string is escaped ([`html::esc`], [`html::enc`]);
//! - every change is a POST form, refused from other sites ([`session::same_origin`], SameSite=Strict cookie);
//! - no page needs JavaScript: the one small script adds live refresh and sparklines to the overview (the history
//!   charts are SVG drawn on the server);
//! - every response under `/ui` (pages, redirects, errors, assets) carries the security headers (`secure`, [`CSP`]):
//!   the content security policy allows no inline script or style, so markup that slipped past escaping cannot run.
//!
//! One file per page family; `html` holds the layout and helpers, `session` the sign-in.

mod audit;
mod chart;
mod entities;
mod history;
pub mod html;
mod job_list;
mod jobs;
mod loads;
mod overview;
mod pools;
mod schedules;
pub mod session;
mod workers;
mod workflows;

use axum::body::Body;
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use html::{layout, problems, respond};
pub use session::Session;

/// What the signed-in credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An account's API key: the account's jobs, entities, workflows, schedules and loads.
    Account,
    /// `ORDO_ADMIN_TOKEN`: accounts, pools and rollouts.
    Admin,
}

/// Largest API answer the dashboard reads (the API's own batch limit; pages ask for far less).
const MAX_ANSWER: usize = 16 << 20;
/// Rows per page of every list.
pub const PAGE_SIZE: u32 = 50;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The dashboard's state: the API router it calls in-process.
#[derive(Clone)]
pub struct Ui {
    api: Router,
}

/// Everything that can stop a page from rendering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No (valid) session cookie: answered with a redirect to sign-in.
    #[error("sign in first")]
    NoSession,
    /// A form post from another site: 403.
    #[error("cross-site form posts are refused")]
    CrossSite,
    /// The API answered an error: shown with its status and problem detail (401 ends the session).
    #[error("{detail}")]
    Api {
        /// The API's status.
        status: StatusCode,
        /// The problem's `detail` (or `title`).
        detail: String,
        /// The problem's field errors as (path, message).
        errors: Vec<(String, String)>,
    },
    /// The dashboard could not talk to the API (a bug, not bad input): 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The error as a message box, for pages that show it next to their form.
    pub fn message(&self) -> String {
        match self {
            Error::Api { detail, errors, .. } => problems(detail, errors),
            other => problems(&other.to_string(), &[]),
        }
    }

    /// The HTTP status of the page showing this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoSession => StatusCode::SEE_OTHER,
            Error::CrossSite => StatusCode::FORBIDDEN,
            Error::Api { status, .. } => *status,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::NoSession => return Redirect::to("/ui/login").into_response(),
            Error::Api { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                // The key was revoked (or the admin API switched off) since sign-in: end the session.
                let mut res = Redirect::to("/ui/login").into_response();
                res.headers_mut().insert(SET_COOKIE, session::clear_cookie());
                return res;
            }
            Error::Internal(e) => tracing::error!(error = %e, "dashboard page failed"),
            _ => {}
        }
        let body = format!("{}<p><a href=\"/ui\">Back to the overview</a></p>", self.message());
        respond(self.status(), layout(None, "", "Something went wrong", &body))
    }
}

/// An API answer: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Parsed body.
    pub body: Value,
}

impl Reply {
    /// The answer as an [`Error::Api`] (meant for non-2xx answers).
    pub fn into_error(self) -> Error {
        let detail = self.body["detail"]
            .as_str()
            .or_else(|| self.body["title"].as_str())
            .unwrap_or("the API refused the request")
            .to_owned();
        let errors = self.body["errors"]
            .as_array()
            .map(|errs| {
                errs.iter()
                    .map(|e| {
                        (
                            e["path"].as_str().unwrap_or("").to_owned(),
                            e["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Error::Api {
            status: self.status,
            detail,
            errors,
        }
    }

    /// The body of a 2xx answer, else the answer as an error.
    pub fn ok(self) -> Result<Value, Error> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.into_error())
        }
    }
}

impl Ui {
    /// Sends one request to the API router in-process with `key` as the bearer credential.
    pub async fn call(&self, key: &str, method: Method, uri: &str, body: Option<Value>) -> Result<Reply, Error> {
        // A key typed into the sign-in form may hold characters no header can carry; no such key exists.
        let bearer = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::Api {
            status: StatusCode::UNAUTHORIZED,
            detail: "unknown or revoked API key".to_owned(),
            errors: Vec::new(),
        })?;
        let mut req = Request::builder().method(method).uri(uri).header(AUTHORIZATION, bearer);
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))?)
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| Error::Internal(format!("build {uri}: {e}")))?;
        let res = match self.api.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| Error::Internal(format!("read the answer of {uri}: {e}")))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Reply { status, body })
    }

    /// `GET uri` as the session's credential; the JSON body of a 2xx answer, else the error.
    pub async fn get(&self, s: &Session, uri: &str) -> Result<Value, Error> {
        self.call(&s.key, Method::GET, uri, None).await?.ok()
    }

    /// One page ([`PAGE_SIZE`] items) of the plain API list `path` from the dashboard page's `?cursor=`: the
    /// cursor given (none when empty) and the API's answer.
    pub async fn page<'q>(
        &self,
        s: &Session,
        path: &str,
        q: &'q std::collections::HashMap<String, String>,
    ) -> Result<(Option<&'q str>, Value), Error> {
        let cursor = Some(field(q, "cursor")).filter(|c| !c.is_empty());
        let limit = PAGE_SIZE.to_string();
        let uri = format!(
            "{path}{}",
            html::query(&[("limit", &limit), ("cursor", cursor.unwrap_or(""))])
        );
        Ok((cursor, self.get(s, &uri).await?))
    }

    /// A state-changing request as the session's credential; the answer, whatever its status.
    pub async fn send(&self, s: &Session, method: Method, uri: &str, body: Option<Value>) -> Result<Reply, Error> {
        self.call(&s.key, method, uri, body).await
    }
}

/// A page that needs the account role, or the admin role: anything else is told where to go instead.
pub fn require(s: &Session, role: Role) -> Result<(), Error> {
    if s.role == role {
        return Ok(());
    }
    let detail = match role {
        Role::Account => "This page shows an account's data: sign in with that account's API key.",
        Role::Admin => "This page is for administrators: sign in with the admin token.",
    };
    Err(Error::Api {
        status: StatusCode::FORBIDDEN,
        detail: detail.to_owned(),
        errors: Vec::new(),
    })
}

/// The value of a form field or query parameter, trimmed; empty when absent.
pub fn field<'a>(map: &'a std::collections::HashMap<String, String>, name: &str) -> &'a str {
    map.get(name).map(|v| v.trim()).unwrap_or("")
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's content security policy: only its own script, stylesheet and fetches; no inline script, style
/// or event handler, no plugins, no `<base>` rewriting, forms post only back here, and no site may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every dashboard response, whatever produced it (page, redirect, error, asset,
/// 404). `X-Frame-Options` repeats `frame-ancestors` for browsers without CSP level 2; `no-referrer` keeps job
/// ids and entity refs in dashboard URLs out of other sites' logs.
async fn secure(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

/// Any other path under `/ui`: a dashboard page saying so (with the headers), not the API's JSON problem.
async fn not_found() -> Response {
    let body = "<p>There is no such page in the dashboard.</p><p><a href=\"/ui\">Back to the overview</a></p>";
    respond(StatusCode::NOT_FOUND, layout(None, "", "Page not found", body))
}

async fn home() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/ui/overview")]).into_response()
}

/// The dashboard's routes (all under `/ui`), calling `api` in-process. `api` must not contain these routes.
pub fn router(api: Router) -> Router {
    Router::new()
        // The root of the API's address is where a browser lands first: send it to the dashboard.
        .route(
            "/",
            get(|| async { (StatusCode::SEE_OTHER, [(LOCATION, "/ui")]).into_response() }),
        )
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/assets/ui.css", get(|| asset("text/css; charset=utf-8", CSS)))
        .route("/ui/assets/ui.js", get(|| asset("text/javascript; charset=utf-8", JS)))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/overview", get(overview::page))
        .route("/ui/fragments/overview", get(overview::fragment))
        .route("/ui/queues/{queue}/{action}", post(overview::queue_action))
        .route("/ui/jobs", get(job_list::list))
        .route("/ui/jobs/bulk", get(job_list::confirm).post(job_list::run))
        .route("/ui/jobs/{id}", get(jobs::detail))
        .route("/ui/jobs/{id}/{action}", post(jobs::action))
        .route("/ui/entities", get(entities::page))
        .route("/ui/workflows", get(workflows::list))
        .route("/ui/workflows/{ref}", get(workflows::detail))
        .route("/ui/schedules", get(schedules::list))
        .route("/ui/schedules/{name}/{action}", post(schedules::action))
        .route("/ui/loads", get(loads::list))
        .route("/ui/loads/{id}", get(loads::detail))
        .route("/ui/loads/{id}/batches/{batch}", get(loads::batch))
        .route("/ui/pools", get(pools::list))
        .route("/ui/workers", get(workers::list))
        .route("/ui/rollouts", get(pools::rollouts).post(pools::start))
        .route("/ui/rollouts/{id}", get(pools::rollout))
        .route("/ui/rollouts/{id}/{action}", get(pools::confirm).post(pools::act))
        .route("/ui/accounts", get(pools::accounts))
        .route("/ui/audit", get(audit::list))
        .route("/ui/{*rest}", get(not_found))
        .with_state(Ui { api })
        .layer(map_response(secure))
}
