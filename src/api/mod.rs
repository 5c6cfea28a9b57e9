//! The HTTP API (`ordo api`): axum router, shared state, middleware and server.
//!
//! Owns no table: handlers call [`crate::queue`] and [`crate::tenancy`]. Invariants:
//! - every account-scoped handler runs its queries in a [`Tenant`](auth::Tenant) transaction that first switches to
//!   the role `ordo_api` and sets `ordo.account_id`, so row-level security hides other accounts' rows even from a
//!   query that forgets its filter;
//! - admin handlers run on the admin pool (role `ordo_admin`), and each change appends its record to the admin audit
//!   ([`crate::audit`]) in the change's own transaction;
//! - outside those two, the API's connection only authenticates and loads data keys: a least-privileged API role
//!   can read nothing else (README, "Database roles");
//! - workers are woken only after the transaction committed;
//! - concurrent single-job enqueues and sync events of one account are group-committed (`enqueuer`,
//!   [`crate::orchestration::SyncEvents`]), each still answered alone;
//! - every error is an [`ApiError`](error::ApiError) rendered as problem JSON; bad input never yields a 500.
//!
//! Routes are registered from one table ([`routes`]), which the OpenAPI coverage test reads too.

pub mod accounts;
pub mod admin_events;
pub mod auth;
pub mod body;
mod claimable;
mod drain;
mod enqueuer;
pub mod error;
pub mod extract;
pub mod health;
pub mod job_search;
pub mod jobs;
pub mod limits;
pub mod loads;
pub mod middleware;
pub mod openapi;
pub mod orchestration;
pub mod pools;
pub mod queues;
pub mod rate_limit;
pub mod schedules;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use clap::Args;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DbConfig, RedisConfig, TlsServerConfig};
use crate::wake::Waker;

pub use error::ApiError;

/// Largest body accepted on most routes.
pub const BODY_LIMIT: usize = 1 << 20;
/// Largest body accepted on batch routes.
pub const BATCH_BODY_LIMIT: usize = 16 << 20;
/// Most jobs in one batch.
pub const MAX_BATCH_JOBS: usize = 10_000;

/// `ordo api` flags (each also an environment variable).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "ORDO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Token for the admin API (accounts, pools, rollouts); unset = admin routes answer 401.
    #[arg(long, env = "ORDO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// This node's region; accounts homed elsewhere get 421.
    #[arg(long, env = "ORDO_REGION", default_value = "local")]
    pub region: String,
    /// Requests per second per account (burst 2x); 0 = off.
    #[arg(long, env = "ORDO_RATE_LIMIT_RPS", default_value_t = 1000)]
    pub rate_limit_rps: u32,
    /// Deadline of one request in milliseconds; past it the request answers 503.
    #[arg(long, env = "ORDO_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Database connections of this node.
    #[arg(long, env = "ORDO_API_DB_CONNECTIONS", default_value_t = 32)]
    pub db_connections: u32,
    /// After SIGTERM/SIGINT, how long this node keeps serving with `/readyz` at 503 before it closes its listener
    /// (time for a load balancer to stop sending it requests), in milliseconds.
    #[arg(long = "drain-ms", env = "ORDO_API_DRAIN_MS", default_value_t = 5_000)]
    pub drain_ms: u64,
    /// HTTPS: certificate and key.
    #[command(flatten)]
    pub tls: TlsServerConfig,
}

/// Settings of the API state, for embedding and tests (`ordo api` builds them from [`ApiArgs`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Admin token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// This node's region.
    pub region: String,
    /// Per-account requests per second; 0 disables the limit.
    pub rate_limit_rps: u32,
    /// Redis for shared rate limits; `None` = a per-node bucket.
    pub redis_url: Option<String>,
    /// PEM CA trusted for a `rediss://` `redis_url` instead of the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Request deadline.
    pub request_timeout: Duration,
    /// How long a resolved API key is trusted before it is looked up again (revocation on another node takes
    /// effect within this; on this node at once).
    pub key_cache_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin_token: None,
            region: "local".to_owned(),
            rate_limit_rps: 1000,
            redis_url: None,
            redis_ca_file: None,
            request_timeout: REQUEST_TIMEOUT,
            key_cache_ttl: KEY_CACHE_TTL,
        }
    }
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    admin_pool: PgPool,
    waker: Waker,
    settings: Settings,
    limiter: rate_limit::RateLimiter,
    keys: auth::KeyCache,
    metrics: PrometheusHandle,
    enqueuer: enqueuer::Enqueuer,
    sync_events: crate::orchestration::SyncEvents,
    live_kinds: claimable::LiveKinds,
    draining: drain::Draining,
}

impl AppState {
    /// Builds the state; `waker` wakes workers after enqueues (may be [`Waker::disabled`]). Call inside a Tokio
    /// runtime: it starts the group-commit dispatchers of enqueues and sync events, which stop when the last
    /// clone is dropped.
    pub fn new(pool: PgPool, waker: Waker, settings: Settings) -> Self {
        let namespace = pool.connect_options().get_database().unwrap_or("ordo").to_owned();
        let redis = settings.redis_url.as_deref().and_then(|url| {
            crate::wake::client(url, settings.redis_ca_file.as_deref())
                .inspect_err(|e| tracing::warn!(error = %e, "invalid Redis settings; rate limits are per node"))
                .ok()
        });
        let limiter = rate_limit::RateLimiter::new(settings.rate_limit_rps, redis, &namespace);
        // Group-committed enqueues and sync events use at most a quarter of the pool each; the rest serves
        // everything else.
        let flushes = enqueuer::FLUSHES
            .min(pool.options().get_max_connections() as usize / 4)
            .max(1);
        let enqueuer = enqueuer::Enqueuer::start(pool.clone(), waker.clone(), flushes);
        let sync_flushes = crate::orchestration::sync::FLUSHES.min(flushes);
        let sync_events = crate::orchestration::SyncEvents::start(
            crate::queue::Queue::for_accounts(pool.clone(), waker.clone()),
            sync_flushes,
        );
        AppState {
            inner: Arc::new(Inner {
                enqueuer,
                sync_events,
                live_kinds: claimable::LiveKinds::default(),
                draining: drain::Draining::default(),
                keys: auth::KeyCache::new(settings.key_cache_ttl),
                admin_pool: admin_pool(&pool),
                pool,
                waker,
                settings,
                limiter,
                metrics: crate::telemetry::metrics::install(),
            }),
        }
    }

    /// The pool of account work: its transactions switch to the account ([`auth::Tenant::begin`]); outside them a
    /// least-privileged API role reads only what authentication needs (see the README's "Database roles").
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The pool of admin work: every connection runs as [`tenancy::ADMIN_ROLE`](crate::tenancy::ADMIN_ROLE).
    pub fn admin_pool(&self) -> &PgPool {
        &self.inner.admin_pool
    }

    /// The waker.
    pub fn waker(&self) -> &Waker {
        &self.inner.waker
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn limiter(&self) -> &rate_limit::RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn keys(&self) -> &auth::KeyCache {
        &self.inner.keys
    }

    pub(crate) fn enqueuer(&self) -> &enqueuer::Enqueuer {
        &self.inner.enqueuer
    }

    pub(crate) fn sync_events(&self) -> &crate::orchestration::SyncEvents {
        &self.inner.sync_events
    }

    pub(crate) fn live_kinds(&self) -> &claimable::LiveKinds {
        &self.inner.live_kinds
    }

    pub(crate) fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    /// Marks this node as shutting down: `/readyz` answers 503 and every response asks its client to close the
    /// connection, while requests are still served.
    pub fn start_draining(&self) {
        self.inner.draining.start();
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_draining()
    }
}

/// Connections of the admin pool at most: admin requests are few.
const ADMIN_CONNECTIONS: u32 = 4;

/// A request's deadline: above any list or bulk call's time on a loaded database, below a client's patience.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a verified API key is trusted without reading it again: a revoked key stops working within this.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// A request waits at most this for a connection: while the database is away, requests answer 503 quickly.
const REQUEST_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool on the same server and database as `pool` whose connections switch to the admin role for their whole
/// life, so admin handlers and what they call run as that role without a role switch in every transaction.
fn admin_pool(pool: &PgPool) -> PgPool {
    let opts = (*pool.connect_options()).clone();
    PgPoolOptions::new()
        .max_connections(ADMIN_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(crate::db::ACQUIRE_TIMEOUT)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query(&format!("set role {}", crate::tenancy::ADMIN_ROLE))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(opts)
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("region", &self.settings().region)
            .finish_non_exhaustive()
    }
}

/// One registered route: method, path template and handler.
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template in axum and OpenAPI syntax (`/api/jobs/{id}`).
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route(method: &'static str, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route { method, path, handler }
}

/// Every route the router serves; the router is built from this table.
pub fn routes() -> Vec<Route> {
    vec![
        route("GET", "/healthz", get(health::healthz)),
        route("GET", "/readyz", get(health::readyz)),
        route("GET", "/metrics", get(health::metrics)),
        route("GET", "/openapi.json", get(openapi::document)),
        route("POST", "/api/jobs", post(jobs::create)),
        route("GET", "/api/jobs", get(job_search::list)),
        route("POST", "/api/jobs/bulk", post(job_search::bulk)),
        route("GET", "/api/admin/jobs", get(job_search::admin_list)),
        route(
            "POST",
            "/api/jobs/batch",
            post(jobs::create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        ),
        route("GET", "/api/jobs/{id}", get(jobs::get)),
        route("POST", "/api/jobs/{id}/cancel", post(jobs::cancel)),
        route("POST", "/api/jobs/{id}/retry", post(jobs::retry)),
        route("GET", "/api/queues", get(queues::list)),
        route("GET", "/api/queues/history", get(queues::history)),
        route("POST", "/api/queues/{queue}/pause", post(queues::pause)),
        route("POST", "/api/queues/{queue}/resume", post(queues::resume)),
        route("PUT", "/api/workflows/{ref}", put(orchestration::put_workflow)),
        route("GET", "/api/workflows", get(orchestration::list_workflows)),
        route("GET", "/api/workflows/{ref}", get(orchestration::get_workflow)),
        route(
            "GET",
            "/api/workflows/{ref}/versions/{version}",
            get(orchestration::get_workflow_version),
        ),
        route("GET", "/api/rules", get(orchestration::rules)),
        route("POST", "/api/entities", post(orchestration::create_entity)),
        route("GET", "/api/entities", get(orchestration::list_entities)),
        route("GET", "/api/entities/{type}/{ref}", get(orchestration::get_entity)),
        route("POST", "/api/events", post(orchestration::send_event)),
        route("GET", "/api/events", get(orchestration::list_events)),
        route("POST", "/api/events/sync", post(orchestration::send_event_sync)),
        route("GET", "/api/events/{id}", get(orchestration::get_event)),
        route("DELETE", "/api/events/{id}", delete(orchestration::cancel_event)),
        route("POST", "/api/events/{id}/replay", post(orchestration::replay_event)),
        route("POST", "/api/schedules", post(schedules::create)),
        route("GET", "/api/schedules", get(schedules::list)),
        route("GET", "/api/schedules/{name}", get(schedules::get)),
        route("PATCH", "/api/schedules/{name}", patch(schedules::update)),
        route("DELETE", "/api/schedules/{name}", delete(schedules::delete)),
        route("POST", "/api/loads", post(loads::create)),
        route("GET", "/api/loads", get(loads::list)),
        route("GET", "/api/loads/{id}", get(loads::get)),
        route(
            "POST",
            "/api/loads/{id}/batches",
            post(loads::create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        ),
        route("GET", "/api/loads/{id}/batches/{batch_id}", get(loads::get_batch)),
        route("GET", "/api/loads/{id}/batches/{batch_id}/results", get(loads::results)),
        route("GET", "/api/inventory/{sku_ref}/{location_ref}", get(loads::inventory)),
        route("GET", "/api/pools", get(pools::list)),
        route("GET", "/api/workers", get(pools::workers)),
        route("PUT", "/api/pools/{pool}", put(pools::put)),
        route("PUT", "/api/pools/{pool}/scaling", put(pools::put_scaling)),
        route("POST", "/api/rollouts", post(pools::create_rollout)),
        route("GET", "/api/rollouts", get(pools::list_rollouts)),
        route("GET", "/api/rollouts/{id}", get(pools::get_rollout)),
        route("POST", "/api/rollouts/{id}/promote", post(pools::promote)),
        route("POST", "/api/rollouts/{id}/abort", post(pools::abort)),
        route("POST", "/api/accounts", post(accounts::create)),
        route("GET", "/api/accounts", get(accounts::list)),
        route("DELETE", "/api/accounts/{id}", delete(accounts::delete)),
        route("POST", "/api/accounts/{id}/keys", post(accounts::create_key)),
        route("GET", "/api/accounts/{id}/limits", get(limits::get)),
        route("PUT", "/api/accounts/{id}/limits", put(limits::put)),
        route("GET", "/api/accounts/{id}/usage", get(limits::usage)),
        route(
            "DELETE",
            "/api/accounts/{id}/keys/{key_id}",
            delete(accounts::revoke_key),
        ),
        route("GET", "/api/admin-events", get(admin_events::list)),
    ]
}

/// The API router with its middleware (request ids, tracing, metrics, deadline, body limit, panic guard), plus the
/// dashboard's `/ui` routes ([`crate::ui`]), which are not in [`routes`].
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for r in routes() {
        // Same path, several methods: axum merges the method routers.
        router = router.route(r.path, r.handler);
    }
    let api = middleware::wrap(router.fallback(middleware::not_found), state.clone());
    // The dashboard calls the API router in-process, so it is built from the router without its own routes.
    crate::ui::router(api.clone())
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(state, drain::close_connections))
}

/// Serves `router(state)` on `listener` until `shutdown`, then closes idle connections and finishes in-flight
/// requests (without the drain window of `ordo api`).
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let labels = declare_queues(&state, &shutdown);
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    labels.wait().await;
    served
}

/// Keeps the declared queues (the `queue` metric label's values) fresh until `shutdown`, on a tracker to await.
fn declare_queues(state: &AppState, shutdown: &CancellationToken) -> TaskTracker {
    let tasks = TaskTracker::new();
    tasks.spawn(crate::rollout::declare_pool_queues(
        state.pool().clone(),
        shutdown.clone(),
    ));
    tasks.close();
    tasks
}

/// Like [`serve`], over HTTPS only: `tls` from [`crate::tls::server_config`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let labels = declare_queues(&state, &shutdown);
    let app = router(state);
    let served = axum::serve(crate::tls::TlsListener::new(listener, tls)?, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    labels.wait().await;
    served
}

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Database problem.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The certificate or key cannot be used.
    #[error("ORDO_TLS_CERT/ORDO_TLS_KEY: {0}")]
    Tls(#[from] crate::tls::Error),
    /// Binding or serving failed.
    #[error("serve on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// `ordo api`: connects, checks the schema, starts wake-ups and serves until `shutdown`, then drains:
/// `/readyz` answers 503 while requests are still served for `--drain-ms`, then the listener closes
/// and requests in flight finish.
pub async fn run(
    db: &DbConfig,
    redis: &RedisConfig,
    args: &ApiArgs,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let url = db.require()?;
    // Certificate and Redis problems are reported before anything connects.
    let tls = match args.tls.files() {
        Some((cert, key)) => Some(crate::tls::server_config(crate::tls::ReloadingCert::load(cert, key)?)?),
        None => None,
    };
    let redis_client = redis.client()?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| crate::db::Error::InvalidUrl(e.to_string()))?;
    // As on every ordo connection (see db::connect): no sequential scans where an index exists, whatever stale
    // statistics say (a young event table made the planner scan it for every sync event), and no JIT.
    let opts = opts.options([("enable_seqscan", "off"), ("jit", "off")]);
    // A short acquire timeout: while the database is away, requests answer 503 quickly instead of piling up.
    let pool = PgPoolOptions::new()
        .max_connections(args.db_connections.max(2))
        .min_connections(0)
        .acquire_timeout(REQUEST_ACQUIRE_TIMEOUT)
        .connect_lazy_with(opts);
    crate::db::check_schema(&pool).await?;
    db.install_keys(&pool);
    let namespace = pool.connect_options().get_database().unwrap_or("ordo").to_owned();
    let waker = match redis_client {
        Some(client) => Waker::with_client(client, &namespace, shutdown.child_token()),
        None => Waker::disabled(),
    };
    let settings = Settings {
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
        region: args.region.clone(),
        rate_limit_rps: args.rate_limit_rps,
        redis_url: redis.redis_url.clone(),
        redis_ca_file: redis.redis_ca_file.clone(),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        ..Settings::default()
    };
    let state = AppState::new(pool, waker, settings);
    let listener = TcpListener::bind(args.listen).await.map_err(|source| StartError::Io {
        addr: args.listen,
        source,
    })?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%addr, region = %args.region, https = tls.is_some(), "api listening");
    let window = Duration::from_millis(args.drain_ms);
    let served = drain::serve_with_drain(state.clone(), window, shutdown, |close| async move {
        match tls {
            Some(tls) => serve_tls(listener, tls, state, close).await,
            None => serve(listener, state, close).await,
        }
    })
    .await;
    served.map_err(|source| StartError::Io { addr, source })?;
    tracing::info!("api stopped");
    Ok(())
}
