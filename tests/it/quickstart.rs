//! The first five minutes (issue #19): the README's configuration table names only flags the binary accepts,
//! `ordo migrate` creates a missing database, and CLI errors are printed once.

use std::process::Stdio;

use ordo::testkit;
use tokio::process::Command;

/// Every role a README row may name, as `ordo <role> --help` spells it (`jobs list` and `account list` stand for
/// the CLI's client commands, which share their flags).
const ROLES: [&str; 13] = [
    "migrate",
    "api",
    "worker",
    "scheduler",
    "autoscaler",
    "account",
    "sandbox",
    "bench",
    "load",
    "account create",
    "account list",
    "jobs list",
    "keys rotate",
];

/// `ordo <role> --help`.
async fn help(role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(role.split(' '))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "ordo {role} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of the README's configuration table: (variable, flag, roles).
fn configuration_rows() -> Vec<(String, String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let var = cells[0].trim_start_matches("| ").trim_matches('`').to_owned();
        let flag_cell = cells[1];
        let flag = flag_cell
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("no flag in {line}"))
            .to_owned();
        let roles = match flag_cell.split_once('(') {
            Some((_, r)) => r.trim_end_matches(')').split(", ").map(str::to_owned).collect(),
            None => panic!("the row of {var} names no role: {line}"),
        };
        rows.push((var, flag, roles));
    }
    assert!(rows.len() >= 20, "parsed only {} rows", rows.len());
    rows
}

/// Every flag the README's configuration table names is accepted by each role the row names, with the row's
/// environment variable (`ordo <role> --help` is the binary's own clap definition).
#[tokio::test]
async fn readme_configuration_flags_are_accepted_by_their_roles() {
    let mut helps = std::collections::HashMap::new();
    for role in ROLES {
        helps.insert(role, help(role).await);
    }
    let mut wrong = Vec::new();
    for (var, flag, roles) in configuration_rows() {
        let roles: Vec<&str> = if roles == ["every role"] {
            ROLES.to_vec()
        } else {
            roles.iter().map(String::as_str).collect()
        };
        for role in roles {
            let Some(text) = helps.get(role) else {
                wrong.push(format!("{var}: unknown role {role:?}"));
                continue;
            };
            let has_flag = text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{flag} ")) || l.trim_start() == flag);
            if !has_flag {
                wrong.push(format!("ordo {role} does not accept {flag} ({var})"));
            } else if flag != "--log" && !text.contains(&format!("env: {var}")) {
                wrong.push(format!("ordo {role} {flag} does not read {var}"));
            }
        }
    }
    assert!(wrong.is_empty(), "README configuration table:\n{}", wrong.join("\n"));
}

/// The scheduler's `--lease-ms` and `--tick-ms` are documented in its `--help`.
#[tokio::test]
async fn scheduler_help_names_lease_and_tick() {
    let text = help("scheduler").await;
    for flag in ["--lease-ms", "--tick-ms"] {
        assert!(text.contains(flag), "{flag} missing from ordo scheduler --help");
    }
}

/// `ordo migrate` creates the database when it is missing (then migrates it), and a second run only migrates.
#[tokio::test]
async fn migrate_creates_a_missing_database() {
    let db = testkit::db().await;
    let name = format!("{}_fresh", db.name);
    let url = db.url.replace(&format!("/{}", db.name), &format!("/{name}"));
    assert_ne!(url, db.url);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ordo"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
    };
    let first = run().await.unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(
        stdout.contains("database created") && stdout.contains("migrations applied"),
        "{stdout}"
    );
    let second = run().await.unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(
        !stdout.contains("database created") && stdout.contains("migrations applied"),
        "{stdout}"
    );
    sqlx::query(&format!("drop database \"{name}\" with (force)"))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// `ordo <args>` with `DATABASE_URL` set to `database_url` (or removed); fails, and returns its one stderr line.
async fn failing_run(args: &[&str], database_url: Option<&str>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
    c.args(args).stdin(Stdio::null());
    match database_url {
        Some(u) => c.env("DATABASE_URL", u),
        None => c.env_remove("DATABASE_URL"),
    };
    let out = c.output().await.unwrap();
    assert!(!out.status.success(), "ordo {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line: {err}"
    );
    err
}

/// A CLI error is printed once, on one line, without a cause repeated and without "failed to" glued to a noun.
#[tokio::test]
async fn cli_errors_are_printed_once() {
    let err = failing_run(&["migrate"], None).await;
    assert_eq!(err.matches("DATABASE_URL").count(), 1, "{err}");
    assert!(!err.contains("failed to DATABASE_URL"), "{err}");

    // A database error whose message repeats its source is shown once too.
    let db = testkit::db().await;
    let url = db.url.replace(&format!("/{}", db.name), "/ordo_no_such_database");
    let err = failing_run(&["account", "create", "acme"], Some(&url)).await;
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
}

/// The README's step-by-step quick start runs as written, in order, in a fresh directory: only the build step is
/// left out (the test's binary is put on PATH instead), and the addresses point at this test's database (one that
/// does not exist yet, so `ordo migrate` must create it) and a free port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quick_start_runs_as_written() {
    quick_start(None).await;
}

/// The same quick start as an unprivileged user: as `nobody` (uid and gid 65534, no supplementary groups) through
/// `setpriv` when the test runs as root (as in CI and containers), in a directory and with a HOME that user owns;
/// as the current user otherwise. Never skipped: without `setpriv` a root run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quick_start_runs_as_an_unprivileged_user() {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let nobody = (uid == 0).then_some(65534);
    if nobody.is_some() {
        assert!(
            std::path::Path::new(SETPRIV).exists(),
            "running as root, this test drops to nobody with {SETPRIV} (Debian's util-linux); it is missing"
        );
    }
    quick_start(nobody).await;
}

const SETPRIV: &str = "/usr/bin/setpriv";

/// Runs the README's step-by-step quick start in a fresh directory, as `uid` (also its gid) when given, and checks
/// each step's result.
async fn quick_start(uid: Option<u32>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Quick start\n").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(2)
        .and_then(|b| b.split("```").next())
        .expect("a second sh block: the step-by-step quick start");
    assert!(block.contains("cargo install --path ."), "{block}");

    let db = testkit::db().await;
    let name = format!("{}_qs", db.name);
    let url = db.url.replace(&format!("/{}", db.name), &format!("/{name}"));
    let port = testkit::free_port();
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo install"))
        .map(|l| {
            l.replace("postgres://postgres@127.0.0.1:5432/ordo", &url)
                .replace("localhost:8080", &format!("127.0.0.1:{port}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = std::env::temp_dir().join(format!("ordo-quickstart-{name}"));
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    // The build directory may be one the user cannot enter (under /root): the user gets its own copy of the binary,
    // as `cargo install` would have put one in its own ~/.cargo/bin.
    std::fs::copy(env!("CARGO_BIN_EXE_ordo"), bin_dir.join("ordo")).unwrap();
    if let Some(uid) = uid {
        for p in [&dir, &bin_dir, &bin_dir.join("ordo")] {
            std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
        }
    }
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new(SETPRIV);
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
                "bash".to_owned(),
            ]);
            c
        }
        None => Command::new("bash"),
    };
    let run = cmd
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env("HOME", &dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("ORDO_LISTEN", format!("127.0.0.1:{port}"))
        .env("ORDO_URL", format!("http://127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), run)
        .await
        .expect("the quick start finishes within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start (uid {uid:?}) failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("database created") && stdout.contains("migrations applied"),
        "{stdout}"
    );
    assert!(stdout.contains("\"kind\":\"noop\""), "the job was enqueued: {stdout}");
    assert!(
        stdout.contains("\"changed\":1"),
        "the load applied its record: {stdout}"
    );
    let env_file = dir.join("acme.env");
    let written = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        written.contains("api_key=") && written.contains("webhook_secret="),
        "{written}"
    );
    if let Some(uid) = uid {
        use std::os::unix::fs::MetadataExt as _;
        // The files of the steps were written by that user, not by root.
        assert_eq!(std::fs::metadata(&env_file).unwrap().uid(), uid);
        assert_eq!(std::fs::metadata(dir.join("stock.csv")).unwrap().uid(), uid);
    }
    let _ = std::fs::remove_dir_all(&dir);
    sqlx::query(&format!("drop database \"{name}\" with (force)"))
        .execute(&db.pool)
        .await
        .unwrap();
}
