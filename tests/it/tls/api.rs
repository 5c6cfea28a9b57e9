//! `ordo api` over HTTPS (ORDO_TLS_CERT/ORDO_TLS_KEY) and the CLI clients that call it (ORDO_CA_FILE).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use tokio::process::Command;

use super::{client_trusting, peer_certificate, Pki};
use crate::support::{spawn_api_process, spawn_worker_process};

/// The API serves HTTPS only; a certificate written over its files is served to new connections without a
/// restart, while a connection opened before keeps working (with the certificate it was made with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_serves_a_renewed_certificate_without_restart() {
    let db = testkit::db().await;
    let pki = Pki::new("api");
    let first = pki.issue("api", &["localhost", "127.0.0.1"]);
    let (cert, key) = (first.cert.display().to_string(), first.key.display().to_string());
    let kept = client_trusting(&pki.ca_file);
    let env = [("ORDO_TLS_CERT", cert.as_str()), ("ORDO_TLS_KEY", key.as_str())];
    let (_api, base) = spawn_api_process(&db.url, &env, "https://localhost", &kept).await;

    let res = kept.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(peer_certificate(&res), first.der);

    // HTTPS only: plain HTTP on the same port gets no answer, and a client without the CA refuses the server.
    let plain = base.replace("https://", "http://");
    assert!(reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_err());
    let e = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(ordo::tls::is_certificate_error(&e), "{}", ordo::tls::error_chain(&e));

    let renewed = pki.issue("api", &["localhost", "127.0.0.1"]);
    assert_ne!(renewed.der, first.der);
    eventually(
        Duration::from_secs(20),
        "new connections to get the renewed certificate",
        || {
            let fresh = client_trusting(&pki.ca_file);
            let url = format!("{base}/healthz");
            let want = &renewed.der;
            async move {
                let res = fresh.get(url).send().await.ok()?;
                (&peer_certificate(&res) == want).then_some(())
            }
        },
    )
    .await;

    let res = kept.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        peer_certificate(&res),
        first.der,
        "the connection opened before the renewal is still in use"
    );
}

/// A fresh database with the account `acme` and `ordo api` serving HTTPS on it with a certificate of a fresh CA
/// named `name`; returns the database, the API process, its base URL, acme's key and the CA.
async fn https_api(name: &str) -> (testkit::TestDb, tokio::process::Child, String, String, Pki) {
    let db = testkit::db().await;
    let key = tenancy::create_account(&db.pool, &AccountId::parse("acme").unwrap(), "Acme", "local")
        .await
        .unwrap()
        .api_key;
    let pki = Pki::new(name);
    let issued = pki.issue("api", &["localhost"]);
    let (cert, tls_key) = (issued.cert.display().to_string(), issued.key.display().to_string());
    let env = [("ORDO_TLS_CERT", cert.as_str()), ("ORDO_TLS_KEY", tls_key.as_str())];
    let (api, base) = spawn_api_process(&db.url, &env, "https://localhost", &client_trusting(&pki.ca_file)).await;
    (db, api, base, key, pki)
}

/// `ordo <args>` against `base` with `key`, trusting `ca` (ORDO_CA_FILE) when given.
fn cli_command(args: &[&str], base: &str, key: &str, ca: Option<&std::path::Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ordo"));
    c.args(args)
        .env("ORDO_URL", base)
        .env("ORDO_API_KEY", key)
        .env_remove("ORDO_CA_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        c.env("ORDO_CA_FILE", ca);
    }
    c
}

/// `ordo load` sends a file to an `https://` API whose CA it learns from ORDO_CA_FILE; without it, it stops at
/// once with an error that names the refused certificate instead of retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_cli_calls_an_https_api_trusting_ca_file() {
    let (db, _api, base, key, pki) = https_api("load").await;
    let _worker = spawn_worker_process(&db.url, &[], &["--queues", ordo::load::QUEUE]);
    let file = pki.dir.join("stock.csv");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        writeln!(f, "sku_ref,location_ref,qty\nSKU-1,DC1,5\nSKU-2,DC1,7").unwrap();
    }
    let file_arg = file.display().to_string();
    let load = |ca: Option<&std::path::Path>| {
        cli_command(&["load", &file_arg, "--load-name", "tls"], &base, &key, ca).output()
    };

    let refused = load(None).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("certificate was refused"), "{stderr}");

    let out = load(Some(&pki.ca_file)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["total"], 2, "{summary}");
}

/// The daily CLI (`ordo queues`, `ordo jobs enqueue`) calls an `https://` API trusting ORDO_CA_FILE, through the
/// same HTTP client as `ordo load`; without the CA it fails at once naming the refused certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_cli_calls_an_https_api_trusting_ca_file() {
    let (_db, _api, base, key, pki) = https_api("cli").await;
    let cli = |args: &'static [&'static str], ca: Option<&std::path::Path>| cli_command(args, &base, &key, ca).output();

    let refused = cli(&["queues"], None).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("certificate was refused"), "{stderr}");

    let out = cli(&["jobs", "enqueue", "noop", "--json"], Some(&pki.ca_file))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["kind"], "noop", "{job}");
    let out = cli(&["queues"], Some(&pki.ca_file)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("QUEUE"));
}
