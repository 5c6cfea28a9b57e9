//! Zero-downtime restarts of an API node: what happens between SIGTERM and exit.
//!
//! On the shutdown signal the node starts *draining*: `/readyz` answers 503 at once, so a load balancer that polls
//! it stops sending new connections here, while the listener keeps accepting and serving for the drain window
//! (`ORDO_API_DRAIN_MS`), long enough for the balancer to notice. Every response served while draining carries
//! `Connection: close`, so a client's kept-alive connection is not reused and its next request opens a new one,
//! which the balancer sends to another node. When the window ends the listener closes, idle connections are closed
//! and in-flight requests finish; waiting for them is bounded by the request deadline plus a margin, after which
//! the node exits anyway.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Response};
use axum::middleware::Next;
use tokio_util::sync::CancellationToken;

use super::AppState;

/// Extra time, beyond the request deadline, that requests in flight when the listener closes may take.
const FINISH_MARGIN: Duration = Duration::from_secs(5);

/// Whether a node is draining; shared by every clone of the state.
#[derive(Debug, Clone, Default)]
pub(super) struct Draining(CancellationToken);

impl Draining {
    pub(super) fn start(&self) {
        self.0.cancel();
    }

    pub(super) fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Middleware: while the node drains, tells every client to close its connection after the response.
pub(super) async fn close_connections(State(state): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let mut res = next.run(req).await;
    if state.is_draining() {
        res.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// Runs `serve` (which stops accepting when its token is cancelled, then waits for its connections) through a
/// drain: once `shutdown` is cancelled, marks `state` as draining, keeps serving for `window`, then closes the
/// listener and waits for requests in flight at most the request deadline plus a margin.
pub(super) async fn serve_with_drain<F>(
    state: AppState,
    window: Duration,
    shutdown: CancellationToken,
    serve: impl FnOnce(CancellationToken) -> F,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<()>>,
{
    let close = CancellationToken::new();
    let finish = state.settings().request_timeout + FINISH_MARGIN;
    let served = serve(close.clone());
    let sequence = async {
        shutdown.cancelled().await;
        state.start_draining();
        tracing::info!(
            drain_ms = window.as_millis() as u64,
            "draining: /readyz answers 503, still serving"
        );
        tokio::time::sleep(window).await;
        tracing::info!("drain window over: closing the listener, finishing requests in flight");
        close.cancel();
        tokio::time::sleep(finish).await;
    };
    tokio::select! {
        served = served => served,
        () = sequence => {
            tracing::warn!(
                after_s = finish.as_secs(),
                "requests still in flight after the deadline; closing their connections"
            );
            Ok(())
        }
    }
}
