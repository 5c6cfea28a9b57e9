//! The real `ordo load` against a real `ordo api` and `ordo worker`: a 100 000-line CSV, interrupted by SIGKILL
//! once the server has some batches, then run again, ends with every record exactly once.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::support::{signal, spawn_api_process, spawn_worker_process, stop_all};

const RECORDS: usize = 100_000;

/// Starts the real `ordo api` on a free port and waits until it answers `/readyz`; returns it and its URL.
async fn spawn_api(db_url: &str) -> (Child, String) {
    spawn_api_process(db_url, &[], "http://127.0.0.1", &reqwest::Client::new()).await
}

/// `ordo load FILE` with the URL and key in its environment.
fn spawn_load(url: &str, key: &str, file: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ordo"))
        .arg("load")
        .arg(file)
        .args(["--load-name", "nightly-stock", "--batch-size", "5000"])
        .env("ORDO_URL", url)
        .env("ORDO_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ordo load")
}

/// A fresh database with the account `acme` (returns its key) and a scratch directory for files.
async fn account_and_dir() -> (testkit::TestDb, String, std::path::PathBuf) {
    let db = testkit::db().await;
    let acme = AccountId::parse("acme").unwrap();
    let key = tenancy::create_account(&db.pool, &acme, "Acme", "local")
        .await
        .unwrap()
        .api_key;
    let dir = std::env::temp_dir().join(format!("ordo-load-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    (db, key, dir)
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A load interrupted by SIGKILL in the middle and run again sends every batch once (the server replays what it
/// already had): exactly 100 000 records in 20 batches, 100 000 distinct positions, all applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_cli_survives_interruption_without_duplicates() {
    let (db, key, dir) = account_and_dir().await;
    let file = dir.join("stock.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(f, "sku_ref,location_ref,qty").unwrap();
        for i in 0..RECORDS {
            writeln!(f, "SKU-{i:06},\"DC {}\",{}", i % 10, i % 97).unwrap();
        }
    }
    let (api, url) = spawn_api(&db.url).await;
    let worker = spawn_worker_process(&db.url, &[], &[]);

    let first = spawn_load(&url, &key, &file);
    // Kill it once the server has committed a few batches, while it is still sending.
    eventually(Duration::from_secs(60), "the server to have 3 batches", || async {
        (scalar(&db.pool, "select count(*) from load_batch").await >= 3).then_some(())
    })
    .await;
    signal(&first, "-KILL");
    let out = first.wait_with_output().await.unwrap();
    assert!(!out.status.success(), "the first run was killed");
    let before = scalar(&db.pool, "select count(*) from load_batch").await;
    assert!(
        before < 20,
        "interrupted in the middle, not after the last batch ({before} batches)"
    );

    let second = spawn_load(&url, &key, &file);
    let out = tokio::time::timeout(Duration::from_secs(180), second.wait_with_output())
        .await
        .expect("the rerun finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["batches"], 20, "{summary}");
    assert_eq!(summary["total"], RECORDS, "{summary}");
    assert_eq!(summary["changed"], RECORDS, "{summary}");
    assert_eq!(
        (summary["unchanged"].as_i64(), summary["failed"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(summary["replayed_batches"].as_i64().unwrap() >= before, "{summary}");
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "progress on stderr");

    // The database agrees: one load, 20 batches, each record once.
    assert_eq!(scalar(&db.pool, "select count(*) from load").await, 1);
    assert_eq!(scalar(&db.pool, "select count(*) from load_batch").await, 20);
    assert_eq!(
        scalar(&db.pool, "select coalesce(sum(total), 0) from load_batch").await,
        RECORDS as i64
    );
    assert_eq!(
        scalar(&db.pool, "select count(*) from load_batch where status = 'complete'").await,
        20
    );
    assert_eq!(
        scalar(&db.pool, "select count(*) from inventory_position").await,
        RECORDS as i64
    );
    assert_eq!(
        scalar(
            &db.pool,
            "select on_hand from inventory_position where sku_ref = 'SKU-000500'"
        )
        .await,
        500 % 97
    );
    assert_eq!(
        scalar(
            &db.pool,
            "select count(*) from inventory_position where location_ref = 'DC 3'"
        )
        .await,
        (RECORDS / 10) as i64
    );

    stop_all([api, worker]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rerunning `ordo load` on a load with another `--batch-size` fails with a message that says what to do (not a
/// bare 409), printed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_cli_with_another_batch_size_says_what_to_do() {
    let (db, key, dir) = account_and_dir().await;
    let file = dir.join("small.csv");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        writeln!(f, "sku_ref,location_ref,qty").unwrap();
        for i in 0..10 {
            writeln!(f, "SKU-{i},DC1,{i}").unwrap();
        }
    }
    let (api, url) = spawn_api(&db.url).await;
    let worker = spawn_worker_process(&db.url, &[], &[]);
    let run = |batch_size: &str| {
        Command::new(env!("CARGO_BIN_EXE_ordo"))
            .arg("load")
            .arg(&file)
            .args(["--load-name", "small", "--batch-size", batch_size])
            .env("ORDO_URL", &url)
            .env("ORDO_API_KEY", &key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
    };
    let first = run("5").await.unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = run("3").await.unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("--batch-size") && err.contains("--load-name"), "{err}");
    assert!(!err.contains("409"), "{err}");
    assert_eq!(err.matches("already sent").count(), 1, "printed once: {err}");
    drop((api, worker));
}
