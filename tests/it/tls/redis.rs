//! Redis over TLS: a private `redis-server` listening on a TLS port only, its certificate signed by a test CA.

use std::process::Stdio;
use std::time::Duration;

use ordo::testkit::{self, eventually};
use tokio::process::{Child, Command};

use super::Pki;
use crate::support::wake_ups_start_jobs_at_once;

/// A private Redis that speaks TLS only (`--port 0`); killed on drop.
struct TlsRedis {
    _server: Child,
    port: u16,
    pki: Pki,
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        let pki = Pki::new("redis");
        let issued = pki.issue("redis", &["localhost", "127.0.0.1"]);
        let port = testkit::free_port();
        let server = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(&issued.cert)
            .arg("--tls-key-file")
            .arg(&issued.key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca_file)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&pki.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server (Debian: apt-get install redis-server)");
        let redis = TlsRedis {
            _server: server,
            port,
            pki,
        };
        let url = redis.url();
        let ca = redis.pki.ca_file.clone();
        eventually(Duration::from_secs(30), "the TLS Redis to answer PING", || {
            let (url, ca) = (url.clone(), ca.clone());
            async move { ping(&url, Some(&ca)).await.ok() }
        })
        .await;
        redis
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

async fn ping(url: &str, ca: Option<&std::path::Path>) -> Result<(), String> {
    let client = ordo::wake::client(url, ca).map_err(|e| e.to_string())?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// With `REDIS_URL=rediss://…` and the private CA in `ORDO_REDIS_CA_FILE`, wake-ups travel over TLS: an idle
/// worker whose poll interval is an hour starts each new job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_travel_over_tls_with_a_private_ca() {
    let redis = TlsRedis::start().await;
    wake_ups_start_jobs_at_once(&redis.url(), Some(&redis.pki.ca_file)).await;
}

/// A TLS Redis is refused without its CA (the system roots do not know it), with a CA that did not sign it, and
/// over plain `redis://`; a CA file that does not exist is a clear error before anything connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_refuses_unknown_cas_and_plain_connections() {
    let redis = TlsRedis::start().await;
    let e = ping(&redis.url(), None).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let stranger = Pki::new("stranger");
    let e = ping(&redis.url(), Some(&stranger.ca_file)).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(ping(&format!("redis://localhost:{}", redis.port), None).await.is_err());

    let missing = redis.pki.dir.join("missing.pem");
    let e = ordo::wake::client(&redis.url(), Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ORDO_REDIS_CA_FILE") && e.contains("missing.pem"), "{e}");
    let worker = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .arg("worker")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused")
        .env("REDIS_URL", redis.url())
        .env("ORDO_REDIS_CA_FILE", &missing)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&worker.stderr);
    assert!(!worker.status.success());
    assert!(stderr.contains("missing.pem"), "{stderr}");
}
