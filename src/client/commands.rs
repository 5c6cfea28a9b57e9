//! The client subcommands: their flags (clap), the request each one sends, and how its answer is shown.
//! Bad input (malformed JSON, a time that is not RFC 3339, an entity without `TYPE:REF`) is refused by the flag
//! parsers, before any request.

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::render::{self, Column};
use super::{encode, Answer, Api, ClientError, Conn, Credential, Request};

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
    /// API keys of an account (ORDO_ADMIN_TOKEN): create, revoke.
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

/// `ordo account list|delete`: the admin API's side of accounts (beside `ordo account create`, which writes to the
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
    kind: String,
    /// Handler arguments, a JSON object.
    #[arg(long, value_parser = json_object)]
    args: Option<Map<String, Value>>,
    /// Queue (the API's default `default` when unset).
    #[arg(long)]
    queue: Option<String>,
    /// 0..9, 0 runs first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Earliest run time, RFC 3339 (e.g. 2026-12-24T18:00:00Z).
    #[arg(long, value_parser = rfc3339)]
    run_at: Option<String>,
    /// Attempts allowed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// Per-job timeout in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    timeout_ms: Option<u32>,
    /// Idempotency key: the same key and payload again returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Jobs with the same concurrency key run one at a time, in order.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Where the API is, and the credential.
    #[command(flatten)]
    conn: Conn,
}

/// `ordo queues`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Which page.
    #[command(flatten)]
    page: Page,
    /// Where the API is, and the credential.
    #[command(flatten)]
    conn: Conn,
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

/// The page flags as query parameters.
fn page_query(page: &Page) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(l) = page.limit {
        q.push(("limit", l.to_string()));
    }
    if let Some(c) = &page.cursor {
        q.push(("cursor", c.clone()));
    }
    q
}

/// Adds `name=value` when the value is set.
fn push(q: &mut Vec<(&'static str, String)>, name: &'static str, value: Option<&String>) {
    if let Some(v) = value {
        q.push((name, v.clone()));
    }
}

/// Adds `name` to a request body when the value is set.
fn put(body: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(v) = value {
        body.insert(name.to_owned(), v);
    }
}

const JOB_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("QUEUE", "/queue"),
    ("KIND", "/kind"),
    ("STATE", "/state"),
    ("ATTEMPT", "/attempt"),
    ("MAX", "/max_attempts"),
    ("PRIORITY", "/priority"),
    ("RUN AT", "/run_at"),
    ("CREATED", "/created_at"),
];
const JOB_FIELDS: &[&str] = &[
    "id",
    "queue",
    "kind",
    "state",
    "args",
    "attempt",
    "max_attempts",
    "priority",
];
const QUEUE_COLUMNS: &[Column] = &[
    ("QUEUE", "/queue"),
    ("PAUSED", "/paused"),
    ("AVAILABLE", "/available"),
    ("SCHEDULED", "/scheduled"),
    ("RUNNING", "/running"),
    ("RETRYABLE", "/retryable"),
    ("COMPLETED", "/completed"),
    ("DISCARDED", "/discarded"),
    ("CANCELLED", "/cancelled"),
    ("UNCLAIMABLE", "/unclaimable"),
    ("OLDEST AVAILABLE MS", "/oldest_available_ms"),
];
const EVENT_COLUMNS: &[Column] = &[
    ("SEQ", "/seq"),
    ("ID", "/id"),
    ("NAME", "/name"),
    ("KIND", "/kind"),
    ("CATEGORY", "/category"),
    ("STATUS", "/status"),
    ("ENTITY TYPE", "/entity/type"),
    ("ENTITY REF", "/entity/ref"),
    ("CREATED", "/created_at"),
    ("ERROR", "/error"),
];
const EVENT_FIELDS: &[&str] = &["id", "seq", "name", "kind", "status", "entity", "attributes"];
const ACCOUNT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("REGION", "/region"),
    ("CREATED", "/created_at"),
];
const ROLLOUT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("POOL", "/pool"),
    ("FROM", "/from_version"),
    ("TO", "/to_version"),
    ("STATE", "/state"),
    ("CANARY %", "/canary_percent"),
    ("CREATED", "/created_at"),
    ("REASON", "/reason"),
];
const ROLLOUT_FIELDS: &[&str] = &["id", "pool", "from_version", "to_version", "state", "canary_percent"];

/// How an answer is shown to people.
enum View {
    /// `{items, next_cursor}` as a table, then the cursor of the next page.
    List(&'static [Column]),
    /// One resource as field lines, these fields first.
    One(&'static [&'static str]),
    /// The outcome of a synchronous event, then the events it emitted.
    SyncOutcome,
    /// A line of text (for 204 answers).
    Done(String),
}

/// Prints an answer: the API's JSON document as is with `--json`, else the view.
fn show(conn: &Conn, answer: &Answer, view: View) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    if conn.json {
        // The API's own bytes, so a script sees exactly what the API sent (field order included).
        if !answer.raw.is_empty() {
            writeln!(out, "{}", answer.raw.trim_end())?;
        }
        return Ok(());
    }
    // A warning of the API (e.g. no live worker knows the kind) goes to stderr, where a person sees it.
    for w in answer.body["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", render::cell(w));
    }
    match view {
        View::List(columns) => {
            let items = answer.body["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            write!(out, "{}", render::table(items, columns))?;
            if let Some(c) = answer.body["next_cursor"].as_str() {
                writeln!(out, "next_cursor: {c}  (more with --cursor {c})")?;
            }
        }
        View::One(first) => {
            // Warnings went to stderr above; the field list shows the resource.
            let mut resource = answer.body.clone();
            if let Some(o) = resource.as_object_mut() {
                o.remove("warnings");
            }
            write!(out, "{}", render::fields(&resource, first))?
        }
        View::SyncOutcome => {
            let mut outcome = answer.body.clone();
            let emitted = outcome
                .as_object_mut()
                .and_then(|o| o.remove("emitted"))
                .unwrap_or(Value::Null);
            write!(
                out,
                "{}",
                render::fields(&outcome, &["id", "status", "entity", "duration_ms", "error"])
            )?;
            let emitted = emitted.as_array().map(Vec::as_slice).unwrap_or_default();
            writeln!(out, "\nemitted:")?;
            write!(out, "{}", render::table(emitted, EVENT_COLUMNS))?;
        }
        View::Done(text) => writeln!(out, "{text}")?,
    }
    Ok(())
}

/// Sends one request with the credential and shows its answer.
async fn call(conn: &Conn, cred: Credential, req: Request<'_>, view: View) -> Result<(), ClientError> {
    let api = Api::new(conn, cred)?;
    let answer = api.call(req).await?;
    show(conn, &answer, view)
}

/// A GET of a list with its filters, shown as a table.
async fn list(
    conn: &Conn,
    cred: Credential,
    path: &str,
    query: &[(&str, String)],
    columns: &'static [Column],
) -> Result<(), ClientError> {
    let req = Request {
        query,
        ..Request::new(&Method::GET, path)
    };
    call(conn, cred, req, View::List(columns)).await
}

/// Runs a client command.
pub async fn run(cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Jobs { command } => jobs(command).await,
        Command::Queues(QueuesArgs { page, conn }) => {
            list(&conn, KEY, "/api/queues", &page_query(&page), QUEUE_COLUMNS).await
        }
        Command::Events { command } => events(command).await,
        Command::Entities {
            command: Entities::Get { entity: (t, r), conn },
        } => {
            let path = format!("/api/entities/{}/{}", encode(&t), encode(&r));
            let first = &["type", "subtype", "ref", "status", "attributes", "workflow"];
            call(&conn, KEY, Request::new(&Method::GET, &path), View::One(first)).await
        }
        Command::Keys { command } => keys(command).await,
        Command::Rollouts { command } => rollouts(command).await,
    }
}

const KEY: Credential = Credential::ApiKey;
const ADMIN: Credential = Credential::Admin;

async fn jobs(command: Jobs) -> Result<(), ClientError> {
    let (method, path, conn) = match command {
        Jobs::List {
            queue,
            state,
            kind,
            page,
            conn,
        } => {
            let mut q = page_query(&page);
            push(&mut q, "queue", queue.as_ref());
            push(&mut q, "state", state.as_ref());
            push(&mut q, "kind", kind.as_ref());
            return list(&conn, KEY, "/api/jobs", &q, JOB_COLUMNS).await;
        }
        Jobs::Enqueue(a) => {
            let mut body = Map::new();
            body.insert("kind".to_owned(), Value::from(a.kind));
            put(&mut body, "args", a.args.map(Value::Object));
            put(&mut body, "queue", a.queue.map(Value::from));
            put(&mut body, "priority", a.priority.map(Value::from));
            put(&mut body, "run_at", a.run_at.map(Value::from));
            put(&mut body, "max_attempts", a.max_attempts.map(Value::from));
            put(&mut body, "timeout_ms", a.timeout_ms.map(Value::from));
            put(&mut body, "idempotency_key", a.idempotency_key.map(Value::from));
            put(&mut body, "concurrency_key", a.concurrency_key.map(Value::from));
            let body = Value::Object(body);
            let req = Request {
                body: Some(&body),
                ..Request::new(&Method::POST, "/api/jobs")
            };
            return call(&a.conn, KEY, req, View::One(JOB_FIELDS)).await;
        }
        Jobs::Get { id, conn } => (Method::GET, format!("/api/jobs/{}", encode(&id)), conn),
        Jobs::Retry { id, conn } => (Method::POST, format!("/api/jobs/{}/retry", encode(&id)), conn),
        Jobs::Cancel { id, conn } => (Method::POST, format!("/api/jobs/{}/cancel", encode(&id)), conn),
    };
    call(&conn, KEY, Request::new(&method, &path), View::One(JOB_FIELDS)).await
}

async fn events(command: Events) -> Result<(), ClientError> {
    match command {
        Events::Send {
            name,
            entity: (t, r),
            attributes,
            sync,
            timeout_ms,
            scheduled_at,
            idempotency_key,
            conn,
        } => {
            let mut body = Map::new();
            body.insert("name".to_owned(), Value::from(name));
            body.insert("entity".to_owned(), json!({"type": t, "ref": r}));
            put(&mut body, "attributes", attributes.map(Value::Object));
            put(&mut body, "scheduled_at", scheduled_at.map(Value::from));
            let body = Value::Object(body);
            let query: Vec<(&str, String)> = timeout_ms.map(|t| ("timeout_ms", t.to_string())).into_iter().collect();
            let (path, view) = if sync {
                ("/api/events/sync", View::SyncOutcome)
            } else {
                ("/api/events", View::One(EVENT_FIELDS))
            };
            let req = Request {
                query: &query,
                body: Some(&body),
                key: idempotency_key.as_deref(),
                ..Request::new(&Method::POST, path)
            };
            call(&conn, KEY, req, view).await
        }
        Events::List {
            entity,
            name,
            kind,
            category,
            status,
            from,
            to,
            page,
            conn,
        } => {
            let mut q = page_query(&page);
            if let Some((t, r)) = &entity {
                q.push(("entity_type", t.clone()));
                q.push(("entity_ref", r.clone()));
            }
            push(&mut q, "name", name.as_ref());
            push(&mut q, "kind", kind.as_ref());
            push(&mut q, "category", category.as_ref());
            push(&mut q, "status", status.as_ref());
            push(&mut q, "from", from.as_ref());
            push(&mut q, "to", to.as_ref());
            list(&conn, KEY, "/api/events", &q, EVENT_COLUMNS).await
        }
    }
}

/// Runs `ordo account list|delete`.
pub async fn account(command: AccountAdmin) -> Result<(), ClientError> {
    match command {
        AccountAdmin::List { page, conn } => {
            list(&conn, ADMIN, "/api/accounts", &page_query(&page), ACCOUNT_COLUMNS).await
        }
        AccountAdmin::Delete { id, conn } => {
            let path = format!("/api/accounts/{}", encode(&id));
            let done = View::Done(format!("account {id} deleted"));
            call(&conn, ADMIN, Request::new(&Method::DELETE, &path), done).await
        }
    }
}

async fn keys(command: Keys) -> Result<(), ClientError> {
    match command {
        Keys::Create { account, conn } => {
            let path = format!("/api/accounts/{}/keys", encode(&account));
            let view = View::One(&["key_id", "api_key"]);
            call(&conn, ADMIN, Request::new(&Method::POST, &path), view).await
        }
        Keys::Revoke { account, key_id, conn } => {
            let path = format!("/api/accounts/{}/keys/{}", encode(&account), encode(&key_id));
            let done = View::Done(format!("key {key_id} of account {account} revoked"));
            call(&conn, ADMIN, Request::new(&Method::DELETE, &path), done).await
        }
    }
}

async fn rollouts(command: Rollouts) -> Result<(), ClientError> {
    let (id, verb, conn) = match command {
        Rollouts::List {
            pool,
            state,
            page,
            conn,
        } => {
            let mut q = Vec::new();
            push(&mut q, "pool", pool.as_ref());
            push(&mut q, "state", state.as_ref());
            if let Some(l) = page.limit {
                q.push(("limit", l.to_string()));
            }
            push(&mut q, "cursor", page.cursor.as_ref());
            return list(&conn, ADMIN, "/api/rollouts", &q, ROLLOUT_COLUMNS).await;
        }
        Rollouts::Start {
            pool,
            version,
            canary_percent,
            auto_promote_after_s,
            max_failure_rate,
            conn,
        } => {
            let mut body = Map::new();
            body.insert("pool".to_owned(), Value::from(pool));
            body.insert("version".to_owned(), Value::from(version));
            put(&mut body, "canary_percent", canary_percent.map(Value::from));
            put(&mut body, "auto_promote_after_s", auto_promote_after_s.map(Value::from));
            put(&mut body, "max_failure_rate", max_failure_rate.map(Value::from));
            let body = Value::Object(body);
            let req = Request {
                body: Some(&body),
                ..Request::new(&Method::POST, "/api/rollouts")
            };
            return call(&conn, ADMIN, req, View::One(ROLLOUT_FIELDS)).await;
        }
        Rollouts::Promote { id, conn } => (id, "promote", conn),
        Rollouts::Abort { id, conn } => (id, "abort", conn),
    };
    let path = format!("/api/rollouts/{}/{verb}", encode(&id));
    call(
        &conn,
        ADMIN,
        Request::new(&Method::POST, &path),
        View::One(ROLLOUT_FIELDS),
    )
    .await
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
