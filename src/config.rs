//! Typed configuration per role: clap flags, each also an environment variable. Defaults live here only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::queue::{Retention, RetryPolicy};
use crate::runtime::{defaults, WorkerConfig};
pub use crate::telemetry::LogFormat;

/// The CLI's HTTP connect timeout: an API that does not accept within 5 s is down, and the retry takes over.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The CLI's HTTP request timeout: above the API's own 30 s request deadline, so the API's answer arrives.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required setting is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A setting is out of range.
    #[error("{name}: {message}")]
    Invalid {
        /// The flag.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DbConfig {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/ordo.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Master keys for encryption at rest, `<id>:<base64 of 32 bytes>[,<id>:<key>…]`: the first wraps new data
    /// keys, all unwrap (keep a retired key listed until `ordo keys rotate` ran). Unset: plain text.
    #[arg(long, env = "ORDO_MASTER_KEYS", hide_env_values = true)]
    pub master_keys: Option<crate::crypt::MasterKeys>,
}

impl DbConfig {
    /// Installs this process's keyring (see [`crate::crypt`]) over `pool`; warns once when there are no master keys.
    pub fn install_keys(&self, pool: &sqlx::PgPool) {
        crate::crypt::install(self.master_keys.clone(), pool);
    }

    /// The URL, or a clear error.
    pub fn require(&self) -> Result<&str, Error> {
        self.database_url.as_deref().ok_or(Error::Missing(
            "DATABASE_URL (or --database-url), e.g. postgres://postgres@127.0.0.1:5432/ordo,",
        ))
    }
}

/// Redis, the optional fast path.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL for wake-ups and rate limits (`rediss://` for TLS); without it ordo polls.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed a `rediss://` server's certificate, trusted for Redis in place of the
    /// system's roots.
    #[arg(long, env = "ORDO_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// A client for the configured Redis, or `None` without `REDIS_URL`; a bad URL or CA file is a clear error.
    pub fn client(&self) -> Result<Option<redis::Client>, Error> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        crate::wake::client(url, self.redis_ca_file.as_deref())
            .map(Some)
            .map_err(|e| Error::Invalid {
                name: "REDIS_URL",
                message: e.to_string(),
            })
    }
}

/// HTTPS on the API.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsServerConfig {
    /// PEM certificate (chain) of the API; with --tls-key the API serves HTTPS only. A certificate rewritten in
    /// place is served to new connections without a restart.
    #[arg(long, env = "ORDO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ORDO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsServerConfig {
    /// The certificate and key files, when HTTPS is configured.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }
}

/// How the CLI's HTTP clients trust the API's certificate.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsClientConfig {
    /// PEM file of a CA trusted for `https://` API URLs, in addition to the system's roots.
    #[arg(long, env = "ORDO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl TlsClientConfig {
    /// An HTTP client builder with the extra CA; an unreadable or empty CA file is a clear error.
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, Error> {
        crate::tls::http_client(self.ca_file.as_deref()).map_err(|e| Error::Invalid {
            name: "ORDO_CA_FILE",
            message: e.to_string(),
        })
    }

    /// The HTTP client of every CLI client of the API (`ordo load`, `ordo jobs`, …): the extra CA, a 5 s connect
    /// timeout and a 60 s request timeout, so an unreachable server fails the command instead of hanging it.
    pub fn client(&self) -> Result<reqwest::Client, Error> {
        self.http_client()?
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| Error::Invalid {
                name: "ORDO_CA_FILE",
                message: format!("build the HTTP client: {}", crate::tls::error_chain(&e)),
            })
    }
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log format; levels come from RUST_LOG.
    #[arg(long = "log", env = "ORDO_LOG", value_enum, default_value = "text", global = true)]
    pub log: LogFormat,
}

/// Where a role without the HTTP API serves `/metrics`.
#[derive(Debug, Clone, Args)]
pub struct MetricsConfig {
    /// Address for `/metrics` and `/healthz` (e.g. 0.0.0.0:9090); unset = no metrics listener.
    #[arg(long, env = "ORDO_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl MetricsConfig {
    /// Starts the listener when configured, as a task of `supervisor` that ends with its token; a bind failure is
    /// logged, the role keeps running.
    pub fn start(&self, supervisor: &crate::supervisor::Supervisor) {
        if let Some(addr) = self.metrics_listen {
            let shutdown = supervisor.token();
            supervisor.spawn(async move {
                if let Err(e) = crate::telemetry::serve_metrics(addr, shutdown).await {
                    tracing::error!("failed to serve metrics on {addr}: {e}");
                }
            });
        }
    }
}

/// `ordo worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Pool this worker serves.
    #[arg(long, env = "ORDO_POOL", default_value = "default")]
    pub pool: String,
    /// Version of this worker's code (for rollouts).
    #[arg(long, env = "ORDO_VERSION", default_value = "v1")]
    pub version: String,
    /// Jobs run at once.
    #[arg(long, env = "ORDO_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Jobs claimed ahead of free slots, waiting in the worker (leased) for a slot: `auto` (about 50 ms of the
    /// worker's recent throughput, at least the concurrency, at most 2000) or a number of jobs.
    #[arg(long, env = "ORDO_PREFETCH", default_value = "auto")]
    pub prefetch: crate::runtime::Prefetch,
    /// Queues served, comma-separated (default: the pool's queues).
    #[arg(long, env = "ORDO_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Job lease in milliseconds; workers heartbeat every third of it.
    #[arg(long, env = "ORDO_LEASE_MS", default_value_t = defaults::LEASE.as_millis() as u64)]
    pub lease_ms: u64,
    /// Idle poll interval in milliseconds when no wake-up arrives.
    #[arg(long, env = "ORDO_POLL_MS", default_value_t = defaults::POLL.as_millis() as u64)]
    pub poll_ms: u64,
    /// Default per-job timeout in milliseconds (a job's `timeout_ms` overrides it).
    #[arg(long, env = "ORDO_JOB_TIMEOUT_MS", default_value_t = defaults::JOB_TIMEOUT.as_millis() as u64)]
    pub job_timeout_ms: u64,
    /// How long running jobs may finish after SIGTERM before they are handed back, in milliseconds.
    #[arg(long, env = "ORDO_DRAIN_MS", default_value_t = defaults::DRAIN.as_millis() as u64)]
    pub drain_ms: u64,
    /// Hours finished jobs are kept (jobs with an idempotency key at least 7 days).
    #[arg(long, env = "ORDO_RETAIN_FINISHED_HOURS", default_value_t = Retention::default().finished.as_secs() / 3600)]
    pub retain_finished_hours: u64,
    /// Days the event log is kept (events and audit records; pending and scheduled events are never pruned).
    #[arg(long, env = "ORDO_RETAIN_EVENTS_DAYS", default_value_t = defaults::EVENT_RETENTION_DAYS)]
    pub retain_events_days: u64,
    /// Let webhooks reach private, loopback and link-local addresses (the sandbox sets it).
    #[arg(long, env = "ORDO_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Stop as on SIGTERM when the process that started this worker exits (the autoscaler's process driver sets it,
    /// so its workers never outlive it).
    #[arg(long, env = "ORDO_STOP_WITH_PARENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub stop_with_parent: bool,
    /// Claim loops per queue: one by default (with the automatic prefetch each claim brings many jobs, and two loops
    /// per worker make several workers' claims skip over each other's locked rows); two can help a lone worker
    /// with a fixed, small prefetch.
    #[arg(long, env = "ORDO_CLAIMERS", default_value_t = defaults::CLAIMERS)]
    pub claimers: usize,
    /// Most jobs one claim statement takes (tuning).
    #[arg(long, env = "ORDO_MAX_CLAIM", default_value_t = defaults::MAX_CLAIM, hide = true)]
    pub max_claim: usize,
    /// Base of the retry backoff in milliseconds (the first retry waits up to this).
    #[arg(long, env = "ORDO_RETRY_BASE_MS", default_value_t = RetryPolicy::default().base.as_millis() as u64, hide = true)]
    pub retry_base_ms: u64,
}

impl WorkerArgs {
    /// Validates and converts into the runtime's config.
    pub fn to_config(&self, redis: &RedisConfig) -> Result<WorkerConfig, Error> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(Error::Invalid {
                name: "--concurrency",
                message: "must be 1 to 10000".into(),
            });
        }
        if self.lease_ms < 300 {
            return Err(Error::Invalid {
                name: "ORDO_LEASE_MS",
                message: "must be at least 300".into(),
            });
        }
        if self.poll_ms == 0 {
            return Err(Error::Invalid {
                name: "ORDO_POLL_MS",
                message: "must be positive".into(),
            });
        }
        let mut cfg = WorkerConfig::new(&self.pool, &self.version);
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        if !queues.is_empty() {
            cfg.queues = queues;
        }
        cfg.concurrency = self.concurrency;
        cfg.prefetch = self.prefetch;
        cfg.claimers = self.claimers.clamp(1, 16);
        cfg.max_claim = self.max_claim.clamp(1, 10_000);
        cfg.lease = Duration::from_millis(self.lease_ms);
        cfg.poll = Duration::from_millis(self.poll_ms);
        cfg.default_timeout = Duration::from_millis(self.job_timeout_ms.max(1));
        cfg.drain = Duration::from_millis(self.drain_ms);
        cfg.retry = RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms.max(1)),
            ..RetryPolicy::default()
        };
        // Checked here so a bad URL or CA file stops the worker at start instead of leaving it polling.
        redis.client()?;
        cfg.redis_url = redis.redis_url.clone();
        cfg.redis_ca_file = redis.redis_ca_file.clone();
        cfg.event_retention = crate::runtime::days(self.retain_events_days.max(1));
        cfg.retention = Retention {
            finished: Duration::from_secs(self.retain_finished_hours * 3600),
            ..Retention::default()
        };
        Ok(cfg)
    }
}
