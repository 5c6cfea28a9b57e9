//! The HTTP API driven in-process through `tower::ServiceExt::oneshot` (no socket), against real PostgreSQL.

mod accounts;
mod audit;
mod errors;
mod fuzz;
mod isolation;
mod jobs;
mod limits;
mod lists;
mod loads;
mod messages;
mod openapi;
mod orchestration;
mod outage;
mod pools;
mod roles;
mod schedules;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use ordo::api::{self, AppState, Settings};
use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, TestDb};
use ordo::wake::Waker;
use serde_json::Value;
use tower::ServiceExt;

/// The admin token of test apps.
pub const ADMIN: &str = "test-admin-token";

/// A router on a fresh database, with the state behind it.
pub struct App {
    pub db: TestDb,
    pub state: AppState,
    pub router: Router,
}

/// Settings of test apps: admin API on, rate limit off, key cache off (so revocation is visible at once).
pub fn settings() -> Settings {
    Settings {
        admin_token: Some(ADMIN.to_owned()),
        rate_limit_rps: 0,
        key_cache_ttl: Duration::ZERO,
        ..Settings::default()
    }
}

pub async fn app() -> App {
    app_with(settings()).await
}

pub async fn app_with(settings: Settings) -> App {
    let db = testkit::db().await;
    app_on(db, settings)
}

pub fn app_on(db: TestDb, settings: Settings) -> App {
    let state = AppState::new(db.pool.clone(), Waker::disabled(), settings);
    let router = api::router(state.clone());
    App { db, state, router }
}

impl App {
    /// Creates an account homed in `region` and returns its API key.
    pub async fn account_in(&self, id: &str, region: &str) -> String {
        let id = AccountId::parse(id).unwrap();
        tenancy::create_account(&self.db.pool, &id, id.as_str(), region)
            .await
            .unwrap()
            .api_key
    }

    /// Creates an account in this node's region and returns its API key.
    pub async fn account(&self, id: &str) -> String {
        let region = self.state.settings().region.clone();
        self.account_in(id, &region).await
    }

    /// Sends a request; a `Value` body goes out as JSON.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(v) => req
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    /// Sends a prepared request.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        send(&self.router, req).await
    }
}

/// A response with its body parsed (JSON, or a string when it is not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts the status and that an error is problem JSON with matching `status`.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        if !status.is_success() {
            assert_problem(self);
        }
        &self.body
    }
}

/// The `path` of every field error of a problem body, in order.
pub fn error_paths(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .expect("a problem with field errors")
        .iter()
        .map(|e| e["path"].as_str().expect("a field error's path"))
        .collect()
}

/// Asserts that an error response is RFC 9457 problem JSON.
#[track_caller]
pub fn assert_problem(r: &Resp) {
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert_eq!(ct, "application/problem+json", "status {} body {}", r.status, r.body);
    assert_eq!(
        r.body["status"].as_u64(),
        Some(u64::from(r.status.as_u16())),
        "{}",
        r.body
    );
    for field in ["type", "title", "detail"] {
        assert!(r.body[field].is_string(), "problem without {field}: {}", r.body);
    }
}

pub async fn send(router: &Router, req: Request<Body>) -> Resp {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Resp { status, headers, body }
}

/// Enqueues a `noop` job for the key and returns its id.
pub async fn enqueue(app: &App, key: &str, body: Value) -> String {
    let r = app.call(Method::POST, "/api/jobs", Some(key), Some(body)).await;
    r.expect(StatusCode::CREATED)["id"].as_str().unwrap().to_owned()
}

/// Registers a live worker of `pool`/`version` serving `queue` with the kind `kind`, as a worker process would.
pub async fn register_worker(app: &App, id: &str, version: (&str, &str), queue: &str, kind: &str) {
    crate::support::register_worker(&app.db.pool, id, version, queue, kind).await;
}
