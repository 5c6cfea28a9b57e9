//! The client subcommands' flags (clap) and their parsers: bad input (malformed JSON, a time that is not RFC 3339,
//! an entity without `TYPE:REF`) is refused here, before any request.

use chrono::{DateTime, SecondsFormat};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::Conn;

/// The client commands beside the roles in `ordo`'s command list.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Jobs of the account (ORDO_API_KEY): list, get, enqueue, retry, cancel.
    Jobs {
        /// What to do.
        #[command(subcommand)]
        command: Jobs,
    },
    /// The account's queues with their counts by state (ORDO_API_KEY).
    Queues(QueuesArgs),
    /// Events of the account (ORDO_API_KEY): send, list.
    Events {
        /// What to do.
        #[command(subcommand)]
        command: Events,
    },
    /// Entities of the account (ORDO_API_KEY).
    Entities {
        /// What to do.
        #[command(subcommand)]
        command: Entities,
    },
    /// API keys of an account (ORDO_ADMIN_TOKEN): create, revoke; and the rotation of master keys.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: Keys,
    },
    /// Rollouts of worker pools (ORDO_ADMIN_TOKEN): list, start, promote, abort.
    Rollouts {
        /// What to do.
        #[command(subcommand)]
        command: Rollouts,
    },
}

/// `ordo account list|limits|delete`: the admin API's side of accounts (beside `ordo account create`, which writes to the
/// database directly).
#[derive(Debug, Subcommand)]
pub enum AccountAdmin {
    /// List accounts (ORDO_ADMIN_TOKEN).
    List {
        /// Which page.
        #[command(flatten)]
        page: Page,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an account's weight and limits with their use now, or replace them with --set (ORDO_ADMIN_TOKEN).
    Limits {
        /// Account id.
        id: String,
        /// Replace the weight and limits: `{"weight": 3, "queues": {"default": {"max_running": 50}}, "kinds":
        /// {"http.request": {"max_running": 20, "max_per_second": 50}}}`; what it leaves out goes back to its
        /// default.
        #[arg(long, value_parser = json_object)]
        set: Option<Map<String, Value>>,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an account: its keys stop working at once, its data is purged (ORDO_ADMIN_TOKEN).
    Delete {
        /// Account id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
}

/// One page of a list.
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Page size (the API's default when unset).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The `next_cursor` printed by the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `ordo jobs`.
#[derive(Debug, Subcommand)]
pub enum Jobs {
    /// List jobs, newest first; prints the next page's cursor.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state (scheduled, available, running, retryable, completed, discarded, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: Page,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one job.
    Get {
        /// Job id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Enqueue a job.
    Enqueue(EnqueueArgs),
    /// Make a discarded or cancelled job available again.
    Retry {
        /// Job id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// Job id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `ordo jobs enqueue KIND`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Handler kind, e.g. `noop`.
    pub(super) kind: String,
    /// Handler arguments, a JSON object.
    #[arg(long, value_parser = json_object)]
    pub(super) args: Option<Map<String, Value>>,
    /// Queue (the API's default `default` when unset).
    #[arg(long)]
    pub(super) queue: Option<String>,
    /// 0..9, 0 runs first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub(super) priority: Option<u8>,
    /// Earliest run time, RFC 3339 (e.g. 2026-12-24T18:00:00Z).
    #[arg(long, value_parser = rfc3339)]
    pub(super) run_at: Option<String>,
    /// Attempts allowed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) max_attempts: Option<u32>,
    /// Per-job timeout in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) timeout_ms: Option<u32>,
    /// Idempotency key: the same key and payload again returns the same job.
    #[arg(long)]
    pub(super) idempotency_key: Option<String>,
    /// Jobs with the same concurrency key run one at a time, in order.
    #[arg(long)]
    pub(super) concurrency_key: Option<String>,
    /// Where the API is, and the credential.
    #[command(flatten)]
    pub(super) conn: Conn,
}

/// `ordo queues`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Which page.
    #[command(flatten)]
    pub(super) page: Page,
    /// Where the API is, and the credential.
    #[command(flatten)]
    pub(super) conn: Conn,
}

/// `ordo events`.
#[derive(Debug, Subcommand)]
pub enum Events {
    /// Send an event to an entity; `--sync` waits for its whole inline chain and shows the outcome.
    Send {
        /// Event name.
        name: String,
        /// The entity, as TYPE:REF.
        #[arg(long, value_parser = entity)]
        entity: (String, String),
        /// Event attributes, a JSON object.
        #[arg(long, value_parser = json_object)]
        attributes: Option<Map<String, Value>>,
        /// Run it now and wait for the outcome (POST /api/events/sync).
        #[arg(long, conflicts_with = "scheduled_at")]
        sync: bool,
        /// Deadline of `--sync` in milliseconds (the API's default 10000 when unset).
        #[arg(long, requires = "sync")]
        timeout_ms: Option<u64>,
        /// Run it at this time instead of now, RFC 3339.
        #[arg(long, value_parser = rfc3339)]
        scheduled_at: Option<String>,
        /// Idempotency key: the same key again returns the same event.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// List events in acceptance order (the last 30 days unless --from).
    List {
        /// Only events of this entity, as TYPE:REF.
        #[arg(long, value_parser = entity)]
        entity: Option<(String, String)>,
        /// Only this event name.
        #[arg(long)]
        name: Option<String>,
        /// Only this kind: orchestration or audit.
        #[arg(long)]
        kind: Option<String>,
        /// Only this audit category.
        #[arg(long)]
        category: Option<String>,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// From this time, RFC 3339.
        #[arg(long, value_parser = rfc3339)]
        from: Option<String>,
        /// Until this time, RFC 3339.
        #[arg(long, value_parser = rfc3339)]
        to: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: Page,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `ordo entities`.
#[derive(Debug, Subcommand)]
pub enum Entities {
    /// Show one entity.
    Get {
        /// The entity, as TYPE:REF.
        #[arg(value_parser = entity)]
        entity: (String, String),
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `ordo keys`.
#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Create another API key for an account; prints it once.
    Create {
        /// Account id.
        account: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an API key: it answers 401 from then on.
    Revoke {
        /// Account id.
        account: String,
        /// The key's id (`key_id` from `ordo keys create`).
        key_id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-wrap every account's data key under the first of ORDO_MASTER_KEYS, online (in the database, not
    /// through the API); prints `{rewrapped, current}`. Keep the old master key listed until this has run.
    Rotate {
        /// The database, and the master keys (ORDO_MASTER_KEYS).
        #[command(flatten)]
        db: crate::config::DbConfig,
    },
}

/// `ordo rollouts`.
#[derive(Debug, Subcommand)]
pub enum Rollouts {
    /// List rollouts, newest first.
    List {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only this state: canary, promoted, completed or aborted.
        #[arg(long)]
        state: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: Page,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a canary of a new version in a pool.
    Start {
        /// The pool.
        pool: String,
        /// The new version.
        #[arg(long = "to")]
        version: String,
        /// Share of new work for the new version, 0..100 (the API's default 10 when unset).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        canary_percent: Option<u8>,
        /// Promote on its own after this many seconds.
        #[arg(long)]
        auto_promote_after_s: Option<u32>,
        /// Abort on its own above this failure rate of the canary (0..1).
        #[arg(long)]
        max_failure_rate: Option<f64>,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Route all new work to the new version.
    Promote {
        /// Rollout id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
    /// Return the canary's not-yet-started work to the stable version.
    Abort {
        /// Rollout id.
        id: String,
        /// Where the API is, and the credential.
        #[command(flatten)]
        conn: Conn,
    },
}

/// A JSON object flag (`--args`, `--attributes`).
fn json_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object, e.g. '{\"ms\": 500}'".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// An RFC 3339 time flag, sent as UTC.
fn rfc3339(s: &str) -> Result<String, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-12-24T18:00:00Z"))
}

/// An entity as `TYPE:REF` (split at the first colon; the ref may hold more).
fn entity(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((t, r)) if !t.is_empty() && !r.is_empty() => Ok((t.to_owned(), r.to_owned())),
        _ => Err("must be TYPE:REF, e.g. ORDER:A-1001".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Malformed flags are refused with a message before any request.
    #[test]
    fn flag_parsers_refuse_bad_input() {
        assert!(json_object("{\"ms\": 5}").is_ok());
        assert!(json_object("{ms: 5}").unwrap_err().contains("not valid JSON"));
        assert!(json_object("[1]").unwrap_err().contains("JSON object"));
        assert_eq!(rfc3339("2026-12-24T19:00:00+01:00").unwrap(), "2026-12-24T18:00:00Z");
        assert!(rfc3339("tomorrow").unwrap_err().contains("RFC 3339"));
        assert_eq!(entity("ORDER:A:1").unwrap(), ("ORDER".to_owned(), "A:1".to_owned()));
        assert!(entity("ORDER").is_err());
        assert!(entity(":x").is_err());
    }
}
