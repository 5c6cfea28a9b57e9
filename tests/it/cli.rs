//! The daily CLI (`ordo jobs|queues|events|entities|account|keys|rollouts`) run as a user runs it: the real
//! binary against a real `ordo api` and `ordo worker`, with ORDO_URL, ORDO_API_KEY and ORDO_ADMIN_TOKEN.

use std::process::{Output, Stdio};
use std::time::Duration;

use ordo::tenancy::{self, AccountId};
use ordo::testkit;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::support::{register_worker, spawn_api_process, spawn_worker_process, stop_all};

const ADMIN: &str = "cli-admin-token";

/// Where the CLI points and with which credentials.
struct Env {
    url: String,
    key: String,
}

impl Env {
    /// `ordo <args>` with ORDO_URL, ORDO_API_KEY and ORDO_ADMIN_TOKEN set.
    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[]).await
    }

    /// `ordo <args>` with the usual environment, then `env` on top.
    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
        c.args(args)
            .env("ORDO_URL", &self.url)
            .env("ORDO_API_KEY", &self.key)
            .env("ORDO_ADMIN_TOKEN", ADMIN)
            .env_remove("ORDO_CA_FILE")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .expect("the CLI answers")
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "ordo {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command with `--json` that must succeed; returns the one JSON document it printed.
    async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(&[args, &["--json"]].concat()).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ordo {args:?} --json printed {out:?}: {e}"))
    }
}

/// Asserts a failed run: non-zero exit, nothing on stdout, one `error: …` line on stderr containing `want`.
#[track_caller]
fn assert_error(out: &Output, want: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure: {stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "printed once: {stderr}"
    );
    assert_eq!(stderr.matches(want).count(), 1, "printed once: {stderr}");
    assert!(stderr.contains(want), "{want:?} not in {stderr}");
    stderr
}

/// A fresh database with the account `acme`, and a real `ordo api` on it with the admin token; the CLI's
/// environment points at it with acme's key.
async fn setup() -> (testkit::TestDb, Child, Env) {
    let db = testkit::db().await;
    let key = tenancy::create_account(&db.pool, &AccountId::parse("acme").unwrap(), "Acme", "local")
        .await
        .unwrap()
        .api_key;
    let http = reqwest::Client::new();
    let (api, url) = spawn_api_process(&db.url, &[("ORDO_ADMIN_TOKEN", ADMIN)], "http://127.0.0.1", &http).await;
    (db, api, Env { url, key })
}

/// The lines of a table whose first column is `first`.
fn rows<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(first))
        .collect()
}

/// Jobs, queues, events and entities through the CLI with an account key: enqueue, list (table, `--json`,
/// filters, pages), get, cancel, retry, queue counts, a synchronous and a queued event, the event list and the
/// entity; bad input is refused before any request, API errors print the problem once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_jobs_queues_events_and_entities() {
    let (db, api, cli) = setup().await;
    let worker = spawn_worker_process(&db.url, &[], &[]);
    let http = reqwest::Client::new();

    // Enqueue: a kind no worker knows waits (and the API's warning reaches stderr); the table shows the job.
    let later = "2099-01-01T00:00:00Z";
    let keyed = [
        "jobs",
        "enqueue",
        "report.build",
        "--args",
        r#"{"month": "2026-11"}"#,
        "--queue",
        "reports",
        "--priority",
        "2",
        "--idempotency-key",
        "nov",
    ];
    let out = cli.run(&keyed).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let first_id = rows(&table, "id")[0].split_whitespace().nth(1).unwrap().to_owned();
    assert!(rows(&table, "kind")[0].ends_with("report.build"), "{table}");
    assert!(rows(&table, "args")[0].contains(r#"{"month":"2026-11"}"#), "{table}");
    assert!(rows(&table, "priority")[0].ends_with('2'), "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: "),
        "the API's warning about the unknown kind: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = cli
        .json(&[
            "jobs",
            "enqueue",
            "report.build",
            "--queue",
            "reports",
            "--run-at",
            later,
        ])
        .await;
    assert_eq!(job["state"], "scheduled", "{job}");
    assert_eq!(job["run_at"], later, "{job}");
    let second_id = job["id"].as_str().unwrap().to_owned();
    // The same idempotency key and payload again: the same job.
    let replay = cli.json(&keyed).await;
    assert_eq!(replay["id"], first_id.as_str());

    // List: a table with a header and a row per job, newest first; `--json` is the API's page.
    let table = cli.ok(&["jobs", "list", "--queue", "reports"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], ["ID", "QUEUE", "KIND", "STATE"], "{table}");
    assert_eq!(rows(&table, &second_id).len(), 1, "{table}");
    assert!(rows(&table, &second_id)[0].contains("scheduled"), "{table}");
    assert!(rows(&table, &first_id)[0].contains("available"), "{table}");
    assert!(!table.contains("next_cursor"), "one page: {table}");
    let page = cli.json(&["jobs", "list", "--state", "scheduled"]).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_id.as_str()], "{page}");
    assert!(page["next_cursor"].is_null());
    let page = cli
        .json(&["jobs", "list", "--kind", "report.build", "--limit", "1"])
        .await;
    assert_eq!(page["items"][0]["id"], second_id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let table = cli
        .ok(&["jobs", "list", "--kind", "report.build", "--limit", "1"])
        .await;
    assert!(table.contains(&format!("next_cursor: {cursor}")), "{table}");
    let page = cli.json(&["jobs", "list", "--limit", "1", "--cursor", &cursor]).await;
    assert_eq!(page["items"][0]["id"], first_id.as_str(), "{page}");

    // Get, cancel, retry.
    let table = cli.ok(&["jobs", "get", &second_id]).await;
    assert!(rows(&table, "state")[0].ends_with("scheduled"), "{table}");
    let cancelled = cli.json(&["jobs", "cancel", &second_id]).await;
    assert_eq!(cancelled["state"], "cancelled");
    let table = cli.ok(&["jobs", "retry", &second_id]).await;
    assert!(rows(&table, "state")[0].ends_with("available"), "{table}");
    assert_eq!(cli.json(&["jobs", "get", &second_id]).await["state"], "available");

    // API errors: the problem's detail (and field errors) once on stderr, exit code non-zero.
    let err = assert_error(&cli.run(&["jobs", "list", "--state", "done"]).await, "unknown state");
    assert!(err.contains("/query/state") && err.contains("completed"), "{err}");
    assert_error(&cli.run(&["jobs", "get", "999999999"]).await, "not found");
    assert_error(&cli.run(&["jobs", "list", "--limit", "0"]).await, "/query/limit");
    // Bad input is refused before any request: a URL where nothing listens would answer "could not reach".
    let nowhere = format!("http://127.0.0.1:{}", testkit::free_port());
    for (args, want) in [
        (
            &["jobs", "enqueue", "noop", "--args", "{month: 1}"][..],
            "not valid JSON",
        ),
        (&["jobs", "enqueue", "noop", "--args", "[1]"][..], "JSON object"),
        (&["jobs", "enqueue", "noop", "--run-at", "tomorrow"][..], "RFC 3339"),
        (&["jobs", "enqueue", "noop", "--priority", "12"][..], "--priority"),
        (&["events", "send", "Pay", "--entity", "ORDER"][..], "TYPE:REF"),
    ] {
        let out = cli.run_with(args, &[("ORDO_URL", &nowhere)]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("could not reach"), "{args:?} sent a request: {err}");
    }
    // Connection errors name the URL that failed; a missing key is named too.
    assert_error(
        &cli.run_with(&["queues"], &[("ORDO_URL", &nowhere)]).await,
        &format!("could not reach {nowhere}/api/queues"),
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
    let out = c
        .args(["jobs", "list"])
        .env("ORDO_URL", &cli.url)
        .env_remove("ORDO_API_KEY")
        .output()
        .await
        .unwrap();
    assert_error(&out, "ORDO_API_KEY");

    // Queues: counts by state.
    let table = cli.ok(&["queues"]).await;
    let reports = rows(&table, "reports");
    assert_eq!(reports.len(), 1, "{table}");
    let queues = cli.json(&["queues"]).await;
    let q = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "reports")
        .unwrap()
        .clone();
    assert_eq!(q["available"], 2, "{queues}");

    // Events and entities: a workflow and an entity through the API, then the CLI sends, lists and reads.
    let wf = json!({
        "statuses": [{"name": "CREATED"}, {"name": "PAID"}],
        "rulesets": [{"name": "Pay", "entity_type": "ORDER", "triggers": ["CREATED"],
                      "rules": [{"name": "core.SetState", "props": {"status": "PAID"}},
                                {"name": "core.SetAttribute", "props": {"name": "paid_by", "value": "{{event.attributes.by}}"}}]}]
    });
    for (method, path, body) in [
        (reqwest::Method::PUT, "/api/workflows/ORDER::STD", wf),
        (
            reqwest::Method::POST,
            "/api/entities",
            json!({"type": "ORDER", "subtype": "STD", "ref": "A-1"}),
        ),
    ] {
        let res = http
            .request(method, format!("{}{path}", cli.url))
            .bearer_auth(&cli.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.text().await.unwrap());
    }
    let table = cli
        .ok(&[
            "events",
            "send",
            "Pay",
            "--entity",
            "ORDER:A-1",
            "--attributes",
            r#"{"by": "card"}"#,
            "--sync",
            "--timeout-ms",
            "30000",
        ])
        .await;
    assert!(rows(&table, "status")[0].ends_with("success"), "{table}");
    assert!(table.contains("emitted:"), "{table}");
    let entity = cli.json(&["entities", "get", "ORDER:A-1"]).await;
    assert_eq!(
        (entity["status"].as_str(), entity["attributes"]["paid_by"].as_str()),
        (Some("PAID"), Some("card")),
        "{entity}"
    );
    let table = cli.ok(&["entities", "get", "ORDER:A-1"]).await;
    assert!(rows(&table, "status")[0].ends_with("PAID"), "{table}");
    // A queued event: accepted (202) and shown; it runs on the worker and ends as no_match (the entity is PAID).
    let event = cli.json(&["events", "send", "Pay", "--entity", "ORDER:A-1"]).await;
    assert!(
        ["pending", "running", "success", "no_match"].contains(&event["status"].as_str().unwrap()),
        "{event}"
    );
    let queued_id = event["id"].as_str().unwrap().to_owned();
    let list = cli
        .json(&["events", "list", "--entity", "ORDER:A-1", "--kind", "orchestration"])
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().filter(|n| **n == "Pay").count() == 2, "{list}");
    let table = cli
        .ok(&["events", "list", "--entity", "ORDER:A-1", "--name", "Pay"])
        .await;
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(table.contains(&queued_id), "{table}");
    assert_error(
        &cli.run(&["events", "send", "Pay", "--entity", "ORDER:NOPE"]).await,
        "not found",
    );
    assert_error(&cli.run(&["entities", "get", "ORDER:NOPE"]).await, "not found");

    stop_all([api, worker]).await;
}

/// Admin commands with ORDO_ADMIN_TOKEN: accounts listed, limits set and shown, and one account deleted (an
/// unknown one is "not found"; the deleted one's key gets 401 and it is no longer listed), a key created and revoked
/// (the revoked key gets 401 on the next CLI call), rollouts listed,
/// started, aborted, and an illegal promote refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_accounts_keys_and_rollouts() {
    let (db, api, cli) = setup().await;

    // Accounts.
    let table = cli.ok(&["account", "list"]).await;
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(rows(&table, "acme").len(), 1, "{table}");
    let accounts = cli.json(&["account", "list"]).await;
    assert!(accounts["items"].as_array().unwrap().iter().any(|a| a["id"] == "acme"));
    // Limits: set with --set, shown with their use; a bad limit is refused naming the field.
    let set = r#"{"weight": 2, "queues": {"default": {"max_running": 5}}}"#;
    let limits = cli.json(&["account", "limits", "acme", "--set", set]).await;
    assert_eq!(limits["queues"]["default"]["max_running"], 5, "{limits}");
    let shown = cli.ok(&["account", "limits", "acme"]).await;
    assert!(shown.contains("weight") && shown.contains("running"), "{shown}");
    let usage = cli.json(&["account", "limits", "acme"]).await;
    assert_eq!(
        (usage["weight"].as_i64(), usage["queues"]["default"]["running"].as_i64()),
        (Some(2), Some(0))
    );
    let out = cli
        .run(&["account", "limits", "acme", "--set", r#"{"weight": 0}"#])
        .await;
    assert_error(&out, "/weight");
    let doomed = tenancy::create_account(&db.pool, &AccountId::parse("doomed").unwrap(), "", "local")
        .await
        .unwrap()
        .api_key;
    let out = cli.run(&["account", "delete", "doomed"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_error(
        &cli.run_with(&["jobs", "list"], &[("ORDO_API_KEY", &doomed)]).await,
        "unknown or revoked API key",
    );
    let accounts = cli.json(&["account", "list"]).await;
    assert!(
        !accounts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "doomed"),
        "{accounts}"
    );
    assert_error(&cli.run(&["account", "delete", "doomed"]).await, "not found");
    // An account key is not the admin token; no token at all is named.
    let acme_key = cli.key.clone();
    assert_error(
        &cli.run_with(&["account", "list"], &[("ORDO_ADMIN_TOKEN", &acme_key)])
            .await,
        "cannot access admin routes",
    );

    // Keys: a new key works, and answers 401 once revoked.
    let created = cli.json(&["keys", "create", "acme"]).await;
    let (key_id, new_key) = (
        created["key_id"].as_str().unwrap().to_owned(),
        created["api_key"].as_str().unwrap().to_owned(),
    );
    let with_new = [("ORDO_API_KEY", new_key.as_str())];
    let out = cli.run_with(&["jobs", "list"], &with_new).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = cli.ok(&["keys", "create", "acme"]).await;
    assert!(
        rows(&table, "api_key").len() == 1 && rows(&table, "key_id").len() == 1,
        "{table}"
    );
    let done = cli.ok(&["keys", "revoke", "acme", &key_id]).await;
    assert!(done.contains("revoked"), "{done}");
    assert_error(
        &cli.run_with(&["jobs", "list"], &with_new).await,
        "unknown or revoked API key",
    );
    assert_error(&cli.run(&["keys", "revoke", "acme", &key_id]).await, "not found");

    // Rollouts: pool `default` at v1, and a live worker of v2 for the canary to run on.
    ordo::rollout::announce_version(&db.pool, "default", "v1", &["default".to_owned()])
        .await
        .unwrap();
    register_worker(&db.pool, "cli-v2", ("default", "v2"), "default", "noop").await;
    assert_eq!(cli.ok(&["rollouts", "list"]).await.lines().nth(1), Some("(none)"));
    let started = cli
        .json(&["rollouts", "start", "default", "--to", "v2", "--canary-percent", "20"])
        .await;
    assert_eq!(
        (started["state"].as_str(), started["canary_percent"].as_i64()),
        (Some("canary"), Some(20)),
        "{started}"
    );
    let id = started["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["rollouts", "list", "--pool", "default"]).await;
    let row = rows(&table, &id);
    assert!(
        row.len() == 1 && row[0].contains("canary") && row[0].contains("v2"),
        "{table}"
    );
    assert_error(
        &cli.run(&["rollouts", "start", "default", "--to", "v2"]).await,
        "already has an active rollout",
    );
    let table = cli.ok(&["rollouts", "abort", &id]).await;
    assert!(rows(&table, "state")[0].ends_with("aborted"), "{table}");
    assert_error(
        &cli.run(&["rollouts", "promote", &id]).await,
        "cannot promote a rollout that is aborted",
    );
    let list = cli.json(&["rollouts", "list", "--state", "aborted"]).await;
    assert_eq!(list["items"][0]["id"], id.as_str(), "{list}");

    stop_all([api]).await;
}
