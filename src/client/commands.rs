//! What each client subcommand (see [`super::args`]) sends, and how its answer is shown.

use std::io::Write;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::args::{AccountAdmin, Command, Entities, Events, Jobs, Keys, Page, QueuesArgs, Rollouts};
use super::render::{self, Column};
use super::{encode, Answer, Api, ClientError, Conn, Credential, Request};

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
        AccountAdmin::Limits { id, set, conn } => {
            let view = View::One(&["weight", "queues", "kinds"]);
            let Some(limits) = set else {
                let path = format!("/api/accounts/{}/usage", encode(&id));
                return call(&conn, ADMIN, Request::new(&Method::GET, &path), view).await;
            };
            let path = format!("/api/accounts/{}/limits", encode(&id));
            let body = Value::Object(limits);
            let req = Request {
                body: Some(&body),
                ..Request::new(&Method::PUT, &path)
            };
            call(&conn, ADMIN, req, view).await
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
        Keys::Rotate { db } => {
            let masters = db.master_keys.clone().ok_or_else(|| {
                ClientError::Rotate("ORDO_MASTER_KEYS must be set: the first key wraps, the others unwrap".into())
            })?;
            let pool = crate::db::connect(db.require()?, 2)
                .await
                .map_err(|e| ClientError::Rotate(e.to_string()))?;
            let rotated = crate::crypt::rotate(&pool, &masters)
                .await
                .map_err(|e| ClientError::Rotate(e.to_string()))?;
            // The rotation runs in batches, not one transaction: it is recorded once it is done.
            let mut conn = pool.acquire().await.map_err(|e| ClientError::Rotate(e.to_string()))?;
            crate::audit::record(&mut conn, crate::audit::Actor::Cli, "keys.rotate", masters.current_id())
                .await
                .map_err(|e| ClientError::Rotate(e.to_string()))?;
            drop(conn);
            pool.close().await;
            let summary = serde_json::to_string(&rotated).map_err(|e| ClientError::Rotate(e.to_string()))?;
            writeln!(std::io::stdout().lock(), "{summary}")?;
            Ok(())
        }
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
