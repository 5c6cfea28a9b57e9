//! The database going away while the API runs: 503 with Retry-After, /readyz fails, and both recover by
//! themselves once it is back.

use std::net::SocketAddr;
use std::time::Duration;

use ordo::api::{self, AppState};
use ordo::testkit::{self, TcpProxy};
use ordo::wake::Waker;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::settings;

/// Status, headers (lower-cased names) and body of one HTTP/1.1 exchange over a fresh connection.
async fn http(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

/// Requests get 503 (problem JSON, Retry-After) and /readyz fails while the database is cut; both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_recovers() {
    let db = testkit::db().await;
    let upstream = testkit::server_addr(&db.url).await;
    let proxy = TcpProxy::start(upstream).await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&testkit::with_host_port(&db.url, proxy.addr()))
        .await
        .unwrap();
    let key = ordo::tenancy::create_account(&db.pool, &ordo::tenancy::AccountId::parse("acme").unwrap(), "", "local")
        .await
        .unwrap()
        .api_key;
    let state = AppState::new(pool, Waker::disabled(), settings());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, state, stop.clone()));
    let job = r#"{"kind":"noop"}"#;

    assert_eq!(http(addr, "POST", "/api/jobs", &key, job).await.0, 201);
    assert_eq!(http(addr, "GET", "/readyz", "", "").await.0, 200);

    proxy.cut();
    let (_, head, body) = testkit::eventually(Duration::from_secs(20), "enqueue answers 503", || async {
        let r = http(addr, "POST", "/api/jobs", &key, job).await;
        assert_ne!(r.0, 500, "an outage is never a 500: {r:?}");
        (r.0 == 503).then_some(r)
    })
    .await;
    assert!(head.contains("retry-after:"), "{head}");
    assert!(head.contains("content-type: application/problem+json"), "{head}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 503);
    testkit::eventually(Duration::from_secs(20), "/readyz answers 503", || async {
        (http(addr, "GET", "/readyz", "", "").await.0 == 503).then_some(())
    })
    .await;

    proxy.restore();
    testkit::eventually(Duration::from_secs(30), "enqueue recovers", || async {
        (http(addr, "POST", "/api/jobs", &key, job).await.0 == 201).then_some(())
    })
    .await;
    assert_eq!(http(addr, "GET", "/readyz", "", "").await.0, 200);

    stop.cancel();
    server.await.unwrap().unwrap();
}
