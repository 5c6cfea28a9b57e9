//! Encryption at rest with real processes: sealed values never reach the database in plain text yet every API
//! read returns them; a rotation re-wraps every data key online; a ciphertext moved to another row does not open.

use std::time::Duration;

use base64::Engine;
use ordo::queue::{self, JobId};
use ordo::tenancy::AccountId;
use ordo::testkit::{self, eventually};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::process::Child;

use crate::support::{spawn_api_process, spawn_worker_process, stop_all};

const ADMIN: &str = "admin-token-crypt";
const MARKER: &str = "MARKER-7f3a9c-Zanzibar";

fn master_key(id: &str, byte: u8) -> String {
    format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode([byte; 32]))
}

struct Cluster {
    http: Client,
    url: String,
    children: Vec<Child>,
}

impl Cluster {
    async fn start(db_url: &str, keys: &str, worker: bool) -> Cluster {
        let http = Client::new();
        let env = [("ORDO_MASTER_KEYS", keys), ("ORDO_ADMIN_TOKEN", ADMIN)];
        let (api, url) = spawn_api_process(db_url, &env, "http://127.0.0.1", &http).await;
        let mut children = vec![api];
        if worker {
            children.push(spawn_worker_process(db_url, &env, &[]));
        }
        Cluster { http, url, children }
    }

    async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, key, body).await;
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn account(&self, id: &str) -> String {
        let created = self
            .ok(Method::POST, "/api/accounts", ADMIN, Some(json!({"id": id})))
            .await;
        created["api_key"].as_str().unwrap().to_owned()
    }

    /// Polls `path` until `done` holds for its body.
    async fn until(&self, path: &str, key: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(30), what, || async {
            let (status, v) = self.call(Method::GET, path, key, None).await;
            (status == StatusCode::OK && done(&v)).then_some(v)
        })
        .await
    }
}

fn pg_dump(db_url: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .arg(db_url)
        .output()
        .expect("run pg_dump (Debian: postgresql-client)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// With master keys, a marker sent in job args, entity and event attributes and load records is nowhere in a
/// dump of the database (nor are the results, audit records and webhook secret that carry it), while every API
/// read returns it.
#[tokio::test]
async fn sealed_values_are_absent_from_a_dump_yet_every_read_returns_them() {
    let db = testkit::db().await;
    let c = Cluster::start(&db.url, &master_key("k1", 1), true).await;
    let key = c.account("acme").await;

    // A job whose args carry the marker, and one that fails with it in its error message.
    let job = enqueue_marked(&c, &key).await;
    let failing = c
        .ok(
            Method::POST,
            "/api/jobs",
            &key,
            Some(json!({"kind": "http.request", "max_attempts": 1,
                        "args": {"method": "GET", "url": format!("not-a-url-{MARKER}")}})),
        )
        .await;
    assert_eq!(job["args"]["note"], MARKER, "{job}");

    // An entity whose attributes carry it, and an event that copies it into the entity through a rule.
    let wf = json!({
        "statuses": [{"name": "CREATED"}, {"name": "NOTED"}],
        "rulesets": [{"name": "Note", "entity_type": "ORDER",
                      "rules": [{"name": "core.SetState", "props": {"status": "NOTED"}},
                                {"name": "core.SetAttribute", "props": {"name": "copied", "value": "{{event.attributes.note}}"}}]}]
    });
    c.ok(Method::PUT, "/api/workflows/ORDER::STD", &key, Some(wf)).await;
    c.ok(
        Method::POST,
        "/api/entities",
        &key,
        Some(json!({"type": "ORDER", "subtype": "STD", "ref": "A-1", "attributes": {"customer": MARKER}})),
    )
    .await;
    let event = c
        .ok(
            Method::POST,
            "/api/events",
            &key,
            Some(json!({"name": "Note", "entity": {"type": "ORDER", "ref": "A-1"}, "attributes": {"note": MARKER}})),
        )
        .await;
    assert_eq!(event["attributes"]["note"], MARKER, "{event}");

    // A load whose refused record carries it (accepted records' refs become inventory keys, which stay plain).
    let load = c
        .ok(Method::POST, "/api/loads", &key, Some(json!({"name": "stock"})))
        .await;
    let load_id = load["id"].as_str().unwrap().to_owned();
    let batch = c
        .ok(
            Method::POST,
            &format!("/api/loads/{load_id}/batches"),
            &key,
            Some(json!({"action": "upsert", "entity_type": "inventory", "records": [
                {"sku_ref": "S-1", "location_ref": "L-1", "qty": 3},
                {"sku_ref": MARKER, "location_ref": "L-1", "qty": -1},
            ]})),
        )
        .await;
    let batch_path = format!("/api/loads/{load_id}/batches/{}", batch["id"].as_str().unwrap());

    // Every read returns the plain values once the work is done.
    let id = job["id"].as_str().unwrap();
    let done = c
        .until(&format!("/api/jobs/{id}"), &key, "the job to complete", |j| {
            j["state"] == "completed"
        })
        .await;
    assert_eq!(done["args"]["note"], MARKER, "{done}");
    let fid = failing["id"].as_str().unwrap();
    let failed = c
        .until(
            &format!("/api/jobs/{fid}"),
            &key,
            "the failing job to be discarded",
            |j| j["state"] == "discarded",
        )
        .await;
    assert!(
        failed["errors"][0]["message"].as_str().unwrap().contains(MARKER),
        "{failed}"
    );
    let listed = c.ok(Method::GET, "/api/jobs?kind=noop", &key, None).await;
    assert_eq!(listed["items"][0]["args"]["note"], MARKER, "{listed}");
    let entity = c
        .until("/api/entities/ORDER/A-1", &key, "the event to run", |e| {
            e["status"] == "NOTED"
        })
        .await;
    assert_eq!(entity["attributes"]["customer"], MARKER, "{entity}");
    assert_eq!(entity["attributes"]["copied"], MARKER, "{entity}");
    let seq = event["id"].as_str().unwrap();
    let read = c.ok(Method::GET, &format!("/api/events/{seq}"), &key, None).await;
    assert_eq!(read["attributes"]["note"], MARKER, "{read}");
    let audits = c
        .ok(
            Method::GET,
            &format!("/api/events?source_event_id={seq}&kind=audit"),
            &key,
            None,
        )
        .await;
    assert!(
        audits.to_string().contains(MARKER),
        "audit records read back plain: {audits}"
    );
    c.until(&batch_path, &key, "the batch to complete", |b| {
        b["status"] == "complete"
    })
    .await;
    let results = c
        .ok(Method::GET, &format!("{batch_path}/results?outcome=failed"), &key, None)
        .await;
    assert_eq!(results["items"][0]["sku_ref"], MARKER, "{results}");

    let dump = pg_dump(&db.url);
    assert!(dump.contains("ordo:enc:v1"), "the dump holds sealed values");
    assert!(!dump.contains(MARKER), "the marker is in the dump:\n{}", {
        dump.lines()
            .filter(|l| l.contains(MARKER))
            .collect::<Vec<_>>()
            .join("\n")
    });
    stop_all(c.children).await;
}

/// `ordo keys rotate` re-wraps every data key under the new first master key while the API runs; afterwards the
/// old key can go and nothing has become unreadable.
#[tokio::test]
async fn rotation_rewraps_every_data_key_and_nothing_becomes_unreadable() {
    let db = testkit::db().await;
    let (old, new) = (master_key("old", 1), master_key("new", 2));
    let c = Cluster::start(&db.url, &old, false).await;
    let mut ids = Vec::new();
    for account in ["acme", "globex", "initech"] {
        let key = c.account(account).await;
        let job = enqueue_marked(&c, &key).await;
        ids.push((key, job["id"].as_str().unwrap().to_owned()));
    }

    // Online: the API keeps running (and keeps its cached keys) during the rotation.
    let summary = rotate(&db.url, &format!("{new},{old}"));
    assert_eq!(summary["rewrapped"], 3, "{summary}");
    let wrapped_by: Vec<String> = sqlx::query_scalar("select master_key_id from account_key order by account_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(wrapped_by, ["new"; 3]);
    for (key, id) in &ids {
        let job = c.ok(Method::GET, &format!("/api/jobs/{id}"), key, None).await;
        assert_eq!(job["args"]["note"], MARKER);
    }
    stop_all(c.children).await;

    // Without the old key: every value still opens.
    let c = Cluster::start(&db.url, &new, false).await;
    for (key, id) in &ids {
        let job = c.ok(Method::GET, &format!("/api/jobs/{id}"), key, None).await;
        assert_eq!(job["args"]["note"], MARKER);
    }
    // A second rotation has nothing left to do.
    let summary = rotate(&db.url, &new);
    assert_eq!(
        (summary["rewrapped"].as_u64(), summary["current"].as_u64()),
        (Some(0), Some(3))
    );
    stop_all(c.children).await;
}

/// Runs `ordo keys rotate` with `keys`; returns its summary.
fn rotate(db_url: &str, keys: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["keys", "rotate"])
        .env("DATABASE_URL", db_url)
        .env("ORDO_MASTER_KEYS", keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A sealed value copied into another job of the same account, or of another account, fails to open with an
/// error naming the row (the API answers 500 problem JSON), while the original still opens.
#[tokio::test]
async fn ciphertext_moved_to_another_row_fails_to_decrypt() {
    let db = testkit::db().await;
    let c = Cluster::start(&db.url, &master_key("k1", 1), false).await;
    let acme = c.account("acme").await;
    let globex = c.account("globex").await;
    let (a, b, g) = (
        enqueue(&c, &acme).await,
        enqueue(&c, &acme).await,
        enqueue(&c, &globex).await,
    );
    for target in [b, g] {
        sqlx::query("update job set args = (select args from job where id = $1) where id = $2")
            .bind(a)
            .bind(target)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let (status, problem) = c.call(Method::GET, &format!("/api/jobs/{b}"), &acme, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    assert_eq!(problem["status"], 500, "problem JSON: {problem}");
    let (status, _) = c.call(Method::GET, &format!("/api/jobs/{g}"), &globex, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let job = c.ok(Method::GET, &format!("/api/jobs/{a}"), &acme, None).await;
    assert_eq!(job["args"]["note"], MARKER);
    stop_all(c.children).await;

    // The error itself, as the library returns it: it names the job and the field, not a panic.
    ordo::crypt::install(Some(master_key("k1", 1).parse().unwrap()), &db.pool);
    let err = queue::get(&db.pool, &AccountId::parse("acme").unwrap(), JobId(b))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, queue::Error::Crypt(ordo::crypt::Error::Undecryptable { .. })),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("args of job {b}")) && msg.contains("another row"),
        "{msg}"
    );
}

/// Enqueues a no-op job whose args carry the marker; returns the job as created.
async fn enqueue_marked(c: &Cluster, key: &str) -> Value {
    let body = json!({"kind": "noop", "args": {"note": MARKER}});
    c.ok(Method::POST, "/api/jobs", key, Some(body)).await
}

async fn enqueue(c: &Cluster, key: &str) -> i64 {
    enqueue_marked(c, key).await["id"].as_str().unwrap().parse().unwrap()
}

/// Deleting an account destroys its data key at once (its sealed values can no longer be opened, by this or any
/// process), its key answers 401, and a worker's maintenance purges its rows while another account keeps working.
#[tokio::test]
async fn deleting_an_account_destroys_its_data_key_and_maintenance_purges_it() {
    let db = testkit::db().await;
    let c = Cluster::start(&db.url, &master_key("k1", 1), true).await;
    let (acme, globex) = (c.account("acme").await, c.account("globex").await);
    let (a, g) = (enqueue(&c, &acme).await, enqueue(&c, &globex).await);

    let (status, _) = c.call(Method::DELETE, "/api/accounts/acme", ADMIN, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let keys: Vec<String> = sqlx::query_scalar("select account_id from account_key order by 1")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["globex"], "acme's data key is gone at once");
    let (status, _) = c.call(Method::GET, &format!("/api/jobs/{a}"), &acme, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    eventually(Duration::from_secs(30), "the worker to purge acme", || async {
        let left: i64 = sqlx::query_scalar(
            "select (select count(*) from job_all where account_id = 'acme') \
                  + (select count(*) from account where id = 'acme')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let job = c.ok(Method::GET, &format!("/api/jobs/{g}"), &globex, None).await;
    assert_eq!(job["args"]["note"], MARKER);
    let (status, problem) = c.call(Method::DELETE, "/api/accounts/acme", ADMIN, None).await;
    assert_eq!((status, problem["status"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));
    stop_all(c.children).await;
}
