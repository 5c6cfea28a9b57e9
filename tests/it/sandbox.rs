//! The real `ordo sandbox`, with no DATABASE_URL or REDIS_URL: it starts its own PostgreSQL and the cluster.

use std::process::Stdio;
use std::time::Duration;

use ordo::testkit::{self, eventually};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::signal;

struct Sandbox {
    child: Child,
    url: String,
    api_key: String,
    admin_token: String,
    /// What it printed after the ready line, up to its "Ctrl-C" hint.
    said: Vec<String>,
    /// Its stderr (the roles' logs), collected as it comes.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the sandbox on `dir` and waits for its ready line (at most 30 s).
async fn start(dir: &std::path::Path, port: u16, extra: &[&str]) -> Sandbox {
    start_logging(dir, port, extra, "warn").await
}

/// [`start`] with the roles logging at `level`.
async fn start_logging(dir: &std::path::Path, port: u16, extra: &[&str], level: &str) -> Sandbox {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["sandbox", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("ORDO_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ordo sandbox");
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("ordo sandbox ready: ") {
                return rest.to_owned();
            }
        }
        panic!("sandbox exited before it was ready");
    })
    .await
    .expect("sandbox ready within 30 s");
    let mut said = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let last = line.starts_with("Ctrl-C");
        said.push(line);
        if last {
            break;
        }
    }
    // Keep draining stdout so the sandbox never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {ready:?}"))
            .to_owned()
    };
    Sandbox {
        url: field("url"),
        api_key: field("api_key"),
        admin_token: field("admin_token"),
        said,
        logs,
        child,
    }
}

impl Sandbox {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn stop(mut self) {
        signal(&self.child, "-INT");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("stops")
            .unwrap();
        assert!(status.success(), "sandbox exit status {status:?}");
    }
}

/// `ordo sandbox` with no servers configured starts its own PostgreSQL, runs jobs through its API and workers,
/// stops cleanly on Ctrl-C, and keeps its data for the next start on the same directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_starts_runs_jobs_stops_and_keeps_its_data() {
    let dir = std::env::temp_dir().join(format!("ordo-sandbox-test-{}", rand_suffix()));
    let port = testkit::free_port();
    let sb = start(&dir, port, &[]).await;
    let (status, job) = sb.post("/api/jobs", json!({"kind": "sleep", "args": {"ms": 50}})).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        "the job to complete on a sandbox worker",
        || async {
            let (_, j) = sb.get(&format!("/api/jobs/{id}")).await;
            (j["state"] == "completed").then_some(())
        },
    )
    .await;
    let (_, j) = sb.get(&format!("/api/jobs/{id}")).await;
    assert!(["blue", "green"].contains(&j["version"].as_str().unwrap()), "{j}");

    // The demo order flow: the example workflows and a stocked catalogue are there, so an order books.
    let (status, w) = sb.get("/api/workflows/ORDER::HD").await;
    assert_eq!(status, 200, "{w}");
    let order = json!({"type": "ORDER", "subtype": "HD", "ref": "demo-1",
                       "attributes": {"sku": "SKU-1", "location": "DC1", "qty": 2}});
    let (status, e) = sb.post("/api/entities", order).await;
    assert_eq!(status, 201, "{e}");
    eventually(Duration::from_secs(30), "the demo order to be booked", || async {
        let (_, e) = sb.get("/api/entities/ORDER/demo-1").await;
        (e["status"] == "BOOKED").then_some(())
    })
    .await;
    sb.stop().await;

    // Same directory: the job is still there. With --demo-load, orders flow on their own to SHIPPED.
    let sb = start(&dir, port, &["--demo-load"]).await;
    let (status, j) = sb.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["state"], "completed");
    let shipped = eventually(Duration::from_secs(60), "a demo-load order to ship", || async {
        let (_, page) = sb.get("/api/events?kind=orchestration&name=Ship&status=success").await;
        page["items"].as_array().filter(|items| !items.is_empty()).cloned()
    })
    .await;
    let order = shipped[0]["entity"]["ref"].as_str().unwrap().to_owned();
    assert!(order.starts_with("demo-"), "{order}");
    let (_, e) = sb.get(&format!("/api/entities/ORDER/{order}")).await;
    assert_eq!(e["status"], "SHIPPED", "{e}");
    // Its webhooks to the ERP (on BOOKED and on SHIPPED) reached the sandbox's receiver, signatures verified.
    let needle = format!("ORDER {order} (");
    eventually(
        Duration::from_secs(30),
        "the order's two webhooks to be verified",
        || async {
            let logs = sb.logs.lock().unwrap();
            let verified = logs
                .iter()
                .filter(|l| l.contains("erp | verified delivery") && l.contains(&needle))
                .count();
            (verified >= 2).then_some(())
        },
    )
    .await;
    let refused: Vec<String> = sb
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("refused delivery"))
        .cloned()
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let (_, failed) = sb.get("/api/jobs?kind=webhook.deliver&state=discarded").await;
    assert_eq!(failed["items"], json!([]), "no delivery failed for good");
    // ... and inventory batches go into today's demo load and are applied.
    let load = eventually(
        Duration::from_secs(60),
        "a demo inventory batch to complete",
        || async {
            let (_, page) = sb.get("/api/loads?name=demo-inventory").await;
            let id = page["items"][0]["id"].as_str()?.to_owned();
            let (_, load) = sb.get(&format!("/api/loads/{id}")).await;
            let done = load["batches"].as_array()?.iter().any(|b| b["status"] == "complete");
            done.then_some(load)
        },
    )
    .await;
    assert_eq!(load["status"], "open", "{load}");
    let (status, p) = sb.get("/api/inventory/SKU-1/DC2").await;
    assert_eq!(status, 200, "{p}");
    assert!(p["on_hand"].as_i64().is_some_and(|q| (100..=102).contains(&q)), "{p}");
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> String {
    format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Given a certificate and key, the sandbox's API serves HTTPS: the ready line names an `https://` URL, the
/// sandbox's own readiness check trusts the CA from `--ca-file`, and a client trusting that CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_serves_https_with_a_certificate() {
    let pki = crate::tls::Pki::new("sandbox");
    let issued = pki.issue("api", &["127.0.0.1"]);
    let port = testkit::free_port();
    let files = [&issued.cert, &issued.key, &pki.ca_file].map(|p| p.display().to_string());
    let tls = ["--tls-cert", &files[0], "--tls-key", &files[1], "--ca-file", &files[2]];
    let sb = start(&pki.dir.join("sandbox"), port, &tls).await;
    assert_eq!(sb.url, format!("https://127.0.0.1:{port}"));
    let r = crate::tls::client_trusting(&pki.ca_file)
        .get(format!("{}/api/queues", sb.url))
        .bearer_auth(&sb.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sb.stop().await;
}

/// As root in a directory only root may enter, the sandbox starts (its PostgreSQL runs as `postgres`); it names
/// the dashboard and the exports for the CLI, `/` leads to `/ui`, the roles' logs carry their role, and the admin
/// token and demo key stay the same across a restart of the same directory (the old ones keep working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_in_a_root_only_directory_keeps_its_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let parent = std::env::temp_dir().join(format!("ordo-sandbox-private-{}", rand_suffix()));
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = parent.join("project").join(".ordo");
    let port = testkit::free_port();
    let sb = start_logging(&dir, port, &[], "info").await;
    let said = sb.said.join("\n");
    assert!(said.contains(&format!("{}/ui", sb.url)), "{said}");
    assert!(
        said.contains(&format!("export ORDO_URL={} ORDO_API_KEY={}", sb.url, sb.api_key)),
        "{said}"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(format!("{}/", sb.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let (status, job) = sb.post("/api/jobs", json!({"kind": "noop"})).await;
    assert_eq!(status, 201, "{job}");
    let (first_key, first_token) = (sb.api_key.clone(), sb.admin_token.clone());
    let logs = sb.logs.clone();
    sb.stop().await;
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l.trim_start().starts_with("api |") || l.trim_start().starts_with("worker blue |")),
        "the roles' logs carry their role: {logs:?}"
    );

    let sb = start(&dir, port, &[]).await;
    assert_eq!(sb.api_key, first_key, "the demo key is kept");
    assert_eq!(sb.admin_token, first_token, "the admin token is kept");
    let r = reqwest::Client::new()
        .get(format!("{}/api/accounts", sb.url))
        .bearer_auth(&first_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the stored admin token signs in after a restart");
    let (status, _) = sb.get(&format!("/api/jobs/{}", job["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "the data is kept");
    sb.stop().await;
    // As root the server's data lives outside the root-only directory, behind a link; remove both.
    if let Ok(data) = std::fs::read_link(dir.join("postgres")) {
        let _ = std::fs::remove_dir_all(data);
    }
    let _ = std::fs::remove_dir_all(&parent);
}
