//! Middleware around every route: request ids, a tracing span per request, per-route metrics, the request
//! deadline and a panic guard that still answers problem JSON.

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Response};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::telemetry::metrics::{HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: 128 random bits in hex, unless the client sent one.
#[derive(Clone, Copy, Debug)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:032x}", rand::random::<u128>());
        axum::http::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// Counts and times each request by route template, and enforces the request deadline.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    // The handler runs as a task of its own, so neither a client that hangs up nor the deadline cuts it off in the
    // middle of a transaction: it finishes (or rolls back) on its own, and its connection goes back to the pool
    // clean. Dropped mid-statement, a connection can go back with a transaction still open on the server.
    let handler = tokio::spawn(next.run(req).in_current_span());
    let res = match tokio::time::timeout(state.settings().request_timeout, handler).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) if e.is_panic() => panic_response(e.into_panic()),
        Ok(Err(e)) => ApiError::Internal(format!("handler task failed: {e}")).into_response(),
        Err(_) => ApiError::Unavailable("the request did not complete in time; retry later".to_owned()).into_response(),
    };
    let status = res.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    res
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

/// Unknown path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Adds the fallbacks and the middleware stack to the routes.
pub(super) fn wrap(router: Router<AppState>, state: AppState) -> Router {
    // Failures are logged by `ApiError` (once, with the cause); the trace layer would log every 5xx again.
    let trace = TraceLayer::new_for_http()
        .on_failure(())
        .make_span_with(|req: &axum::http::Request<Body>| {
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            tracing::info_span!(
                "request",
                method = %req.method(),
                route,
                request_id,
                account = tracing::field::Empty,
            )
        });
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(from_fn_with_state(state.clone(), observe)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(super::BODY_LIMIT))
        .with_state(state)
}
