//! PostgreSQL over TLS: a private server with `ssl=on` and only `hostssl` lines, its certificate made for
//! `localhost` by a test CA.

use std::process::{Output, Stdio};
use std::time::Duration;

use ordo::pgserver::PgServer;
use ordo::queue::{JobState, NewJob, Queue};
use ordo::testkit::{self, eventually};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

use super::Pki;
use crate::support::{acct, spawn_api_process, spawn_worker_process, wait_for_state};

/// A private PostgreSQL that accepts TLS connections only; stopped and removed on drop.
struct TlsPostgres {
    server: PgServer,
    pki: Pki,
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let pki = Pki::new("pg");
        let issued = pki.issue("server", &["localhost"]);
        let hba = pki.dir.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        ordo::pgserver::give_to_server_user(&pki.dir).unwrap();
        let (cert, key, hba) = (
            issued.cert.display().to_string(),
            issued.key.display().to_string(),
            hba.display().to_string(),
        );
        let settings = [
            ("ssl", "on"),
            ("ssl_cert_file", cert.as_str()),
            ("ssl_key_file", key.as_str()),
            ("hba_file", hba.as_str()),
            ("fsync", "off"),
        ];
        let server = PgServer::start(&pki.dir.join("data"), testkit::free_port(), &settings)
            .unwrap_or_else(|e| panic!("start a TLS-only PostgreSQL: {e}"));
        TlsPostgres { server, pki }
    }

    /// The URL of `db` as `host`, with `query` (e.g. `sslmode=verify-full&sslrootcert=…`).
    fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{query}", self.server.port)
    }

    /// The URL of `db` checked as strictly as libpq can: the test CA, the name `localhost`.
    fn verified_url(&self, db: &str) -> String {
        self.url(
            "localhost",
            db,
            &format!("sslmode=verify-full&sslrootcert={}", self.pki.ca_file.display()),
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.server.stop() {
            eprintln!("stop the TLS PostgreSQL: {e}");
        }
    }
}

/// `ordo migrate`, `ordo api`, `ordo worker` and `ordo scheduler` all run against a PostgreSQL that accepts TLS
/// only, with `sslmode=verify-full` and the CA in `sslrootcert`; every connection they hold is encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_works_over_verify_full_tls() {
    let pg = TlsPostgres::start();
    let mut admin = PgConnection::connect(&pg.verified_url("postgres")).await.unwrap();
    sqlx::query("create database ordo").execute(&mut admin).await.unwrap();
    let url = pg.verified_url("ordo");

    let migrate = ordo(&["migrate"], &url).await;
    assert!(migrate.status.success(), "ordo migrate: {}", stderr(&migrate));

    let http = reqwest::Client::new();
    let (_api, base) = spawn_api_process(&url, &[], "http://127.0.0.1", &http).await;
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);

    let _worker = spawn_worker_process(&url, &[], &[]);
    let pool = ordo::db::connect(&url, 2).await.unwrap();
    let q = Queue::new(pool.clone(), ordo::wake::Waker::disabled());
    let job = q.enqueue(&acct(), NewJob::new("noop", json!({}))).await.unwrap().job;
    wait_for_state(&pool, job.id, JobState::Completed, Duration::from_secs(30)).await;

    let _scheduler = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .arg("scheduler")
        .env("DATABASE_URL", &url)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the scheduler to take its lease", || async {
        let held: bool = sqlx::query_scalar("select exists (select 1 from leader_lease where name = $1)")
            .bind(ordo::scheduler::SCHEDULER_LEASE)
            .fetch_one(&pool)
            .await
            .unwrap();
        held.then_some(())
    })
    .await;

    let (clients, plain): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where not s.ssl)
         from pg_stat_activity a join pg_stat_ssl s using (pid)
         where a.datname = 'ordo' and a.backend_type = 'client backend'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        clients >= 3,
        "the api, worker, scheduler and this test are connected: {clients}"
    );
    assert_eq!(plain, 0, "every connection is encrypted");
}

/// A certificate for another name, a CA the client does not know, and a plain connection are all refused, each
/// with an error that says why; `ordo migrate` reports the certificate problem and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_unknown_ca_and_plain_connections_are_refused() {
    let pg = TlsPostgres::start();
    let ca = pg.pki.ca_file.display().to_string();

    // The certificate names `localhost`, not 127.0.0.1.
    let wrong_name = pg.url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let e = ordo::db::connect(&wrong_name, 1).await.unwrap_err().to_string();
    assert!(e.contains("not valid for name"), "{e}");

    let stranger = Pki::new("stranger");
    let unknown_ca = pg.url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", stranger.ca_file.display()),
    );
    let e = ordo::db::connect(&unknown_ca, 1).await.unwrap_err().to_string();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let migrate = ordo(&["migrate"], &unknown_ca).await;
    assert!(!migrate.status.success());
    assert!(stderr(&migrate).contains("UnknownIssuer"), "{}", stderr(&migrate));

    let plain = pg.url("localhost", "postgres", "sslmode=disable");
    let e = ordo::db::connect(&plain, 1).await.unwrap_err().to_string();
    assert!(e.contains("no encryption"), "{e}");

    // `prefer`, the default, takes TLS when the server offers it (without checking the certificate, as libpq).
    let preferred = pg.url("localhost", "postgres", "");
    ordo::db::connect(&preferred, 1).await.unwrap();
}

async fn ordo(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
