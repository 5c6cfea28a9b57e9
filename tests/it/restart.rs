//! Zero-downtime restarts of `ordo api` (real processes): on SIGTERM `/readyz` turns 503 at once while requests
//! are still served, requests in flight finish after the listener closed, and the process exits 0; a rolling
//! restart of two nodes behind a load balancer that follows `/readyz` loses no request.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ordo::tenancy::{self, AccountId};
use ordo::testkit::{self, eventually};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::support::{signal, spawn_api_process};
use crate::tls::{client_trusting, Pki};

/// How often the balancer asks each node's `/readyz`, as a load balancer's health check would.
const READY_POLL: Duration = Duration::from_millis(50);
/// The drain window of the nodes under test: many readiness polls long, even on a loaded machine.
const DRAIN_MS: &str = "3000";

/// An account `acme` on `db`; returns its key.
async fn account(db: &testkit::TestDb) -> String {
    tenancy::create_account(&db.pool, &AccountId::parse("acme").unwrap(), "Acme", "local")
        .await
        .unwrap()
        .api_key
}

/// Sends SIGTERM and asserts that the process exits 0.
async fn stop(child: Child) {
    signal(&child, "-TERM");
    exits_zero(child).await;
}

fn addr_of(base: &str) -> SocketAddr {
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A stream a held request can run on: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// `POST /api/jobs` written by hand, its body cut in two so the test decides when the request completes.
struct HeldRequest {
    stream: Box<dyn Stream>,
    rest: Vec<u8>,
}

impl HeldRequest {
    /// Sends the request line, the headers and the first half of the body.
    async fn start(mut stream: Box<dyn Stream>, key: &str) -> Self {
        let body = br#"{"kind": "noop", "args": {"held": true}}"#;
        let (first, rest) = body.split_at(body.len() / 2);
        let head = format!(
            "POST /api/jobs HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(first).await.unwrap();
        stream.flush().await.unwrap();
        HeldRequest {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the rest of the body; returns the response's head (status line and headers), lower case.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut response = Vec::new();
        // The server closes the connection after the response: it is draining.
        tokio::time::timeout(Duration::from_secs(60), self.stream.read_to_end(&mut response))
            .await
            .expect("the held request is answered")
            .unwrap_or_else(|e| panic!("the held request failed: {e}"));
        let text = String::from_utf8_lossy(&response).to_lowercase();
        text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
    }
}

/// After SIGTERM: `/readyz` answers 503 at once while the node still serves; a request in flight when the
/// listener closes still completes with 201 and `Connection: close`; then the process exits 0.
async fn sigterm_drains(tls: bool) {
    let db = testkit::db().await;
    let key = account(&db).await;
    let pki = Pki::new("drain");
    let issued = pki.issue("api", &["localhost"]);
    let (cert, tls_key) = (issued.cert.display().to_string(), issued.key.display().to_string());
    let mut env = vec![("ORDO_API_DRAIN_MS", DRAIN_MS)];
    let (client, origin) = if tls {
        env.extend([("ORDO_TLS_CERT", cert.as_str()), ("ORDO_TLS_KEY", tls_key.as_str())]);
        (client_trusting(&pki.ca_file), "https://localhost")
    } else {
        (reqwest::Client::new(), "http://127.0.0.1")
    };
    let (api, base) = spawn_api_process(&db.url, &env, origin, &client).await;
    let addr = addr_of(&base);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream: Box<dyn Stream> = if tls {
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(tls_connector(&pki).connect(name, tcp).await.unwrap())
    } else {
        Box::new(tcp)
    };
    let held = HeldRequest::start(stream, &key).await;

    signal(&api, "-TERM");
    let problem = eventually(Duration::from_secs(20), "/readyz to answer 503", || {
        let req = client.get(format!("{base}/readyz"));
        async move {
            let res = req.send().await.expect("the draining node still accepts connections");
            if res.status() == 503 {
                return Some(res.json::<serde_json::Value>().await.unwrap());
            }
            assert_eq!(res.status(), 200, "/readyz answers 200 or 503");
            None
        }
    })
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("draining"), "{problem}");
    let alive = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200, "a draining node is alive");
    // Before the listener closes: this is the node telling clients to reconnect, not hyper's own shutdown.
    assert_eq!(
        alive.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close"),
        "a draining node asks clients to close kept-alive connections"
    );

    eventually(Duration::from_secs(30), "the listener to close", || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    let head = held.finish().await;
    assert!(head.starts_with("http/1.1 201"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let (jobs,): (i64,) = sqlx::query_as("select count(*) from job_all where args = '{\"held\": true}'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "the held request's job was enqueued");
    exits_zero(api).await;
}

fn tls_connector(pki: &Pki) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in ordo::tls::read_certs(&pki.ca_file).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Waits for a process already sent SIGTERM and asserts that it exits 0.
async fn exits_zero(mut child: Child) {
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("ordo api exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "ordo api exited with {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sigterm_turns_readyz_503_and_finishes_requests_in_flight() {
    sigterm_drains(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_sigterm_turns_readyz_503_and_finishes_requests_in_flight() {
    sigterm_drains(true).await;
}

/// A load balancer for the test, on 127.0.0.1: each new connection goes, round robin, to a node whose `/readyz`
/// answered 200 at its last poll. A connection it cannot route (no node ready, or the node refuses it) is closed
/// and counted: clients see that as a failed request.
struct Balancer {
    addr: SocketAddr,
    nodes: Arc<Mutex<Vec<Node>>>,
    unrouted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    addr: SocketAddr,
    ready: bool,
}

impl Balancer {
    async fn start(nodes: &[SocketAddr]) -> Balancer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let balancer = Balancer {
            addr: listener.local_addr().unwrap(),
            nodes: Arc::new(Mutex::new(
                nodes.iter().map(|&addr| Node { addr, ready: false }).collect(),
            )),
            unrouted: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(poll_readiness(Arc::clone(&balancer.nodes), balancer.stop.clone()));
        tokio::spawn(route(
            listener,
            Arc::clone(&balancer.nodes),
            Arc::clone(&balancer.unrouted),
            balancer.stop.clone(),
        ));
        balancer
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn nodes(&self) -> Vec<Node> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn is_ready(&self, addr: SocketAddr) -> bool {
        self.nodes().iter().any(|n| n.addr == addr && n.ready)
    }

    /// A node replaced by a new one (a restarted process on a new port), not routed to until it is ready.
    fn replace(&self, old: SocketAddr, new: SocketAddr) {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let node = nodes.iter_mut().find(|n| n.addr == old).unwrap();
        *node = Node {
            addr: new,
            ready: false,
        };
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn poll_readiness(nodes: Arc<Mutex<Vec<Node>>>, stop: CancellationToken) {
    // A fresh connection per check, as a load balancer's health check.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    while !stop.is_cancelled() {
        let addrs: Vec<SocketAddr> = nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|n| n.addr)
            .collect();
        // An answer decides (200 or not), so does a refused connection; a check that timed out on a busy machine
        // leaves the node as it was, as a balancer's failure threshold would.
        let checks = addrs.iter().map(|addr| {
            let req = http.get(format!("http://{addr}/readyz"));
            async move {
                match req.send().await {
                    Ok(res) => Some(res.status() == 200),
                    Err(e) if e.is_timeout() => None,
                    Err(_) => Some(false),
                }
            }
        });
        let checked = futures_util::future::join_all(checks).await;
        for (addr, ready) in addrs.into_iter().zip(checked) {
            let mut nodes = nodes.lock().unwrap_or_else(PoisonError::into_inner);
            if let (Some(node), Some(ready)) = (nodes.iter_mut().find(|n| n.addr == addr), ready) {
                node.ready = ready;
            }
        }
        // The balancer's own polling period, not a wait for a condition.
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn route(
    listener: TcpListener,
    nodes: Arc<Mutex<Vec<Node>>>,
    unrouted: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut turn = 0usize;
    loop {
        let mut inbound = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let upstream = {
            let nodes = nodes.lock().unwrap_or_else(PoisonError::into_inner);
            let ready: Vec<SocketAddr> = nodes.iter().filter(|n| n.ready).map(|n| n.addr).collect();
            turn += 1;
            (!ready.is_empty()).then(|| ready[turn % ready.len()])
        };
        let Some(upstream) = upstream else {
            unrouted.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let unrouted = Arc::clone(&unrouted);
        let stop = stop.clone();
        tokio::spawn(async move {
            match TcpStream::connect(upstream).await {
                Ok(mut outbound) => {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                }
                Err(_) => {
                    unrouted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Clients sending requests at once through the balancer.
const CLIENTS: usize = 4;
/// Most enqueue-and-read rounds of one client (the load stops earlier, when the restarts are done).
const MAX_ROUNDS: usize = 50_000;

/// What one client saw.
#[derive(Debug, Default)]
struct Load {
    /// Idempotency keys of the jobs the API accepted.
    accepted: Vec<String>,
    /// Every request that did not answer 2xx, or did not answer.
    failures: Vec<String>,
    /// Whether the client ran until told to stop (not out of rounds).
    stopped: bool,
}

/// Enqueues a job with a fresh idempotency key and reads it back, round after round, until `done`.
async fn client(c: usize, url: String, key: String, done: CancellationToken, rounds: Arc<AtomicUsize>) -> Load {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut load = Load::default();
    for n in 0..MAX_ROUNDS {
        if done.is_cancelled() {
            load.stopped = true;
            break;
        }
        let idem = format!("client-{c}-{n}");
        let sent = http
            .post(format!("{url}/api/jobs"))
            .bearer_auth(&key)
            .header("idempotency-key", &idem)
            .json(&serde_json::json!({"kind": "noop", "args": {"client": c, "n": n}}))
            .send()
            .await;
        let id = match sent {
            Ok(res) if res.status().is_success() => {
                let job: serde_json::Value = res.json().await.unwrap();
                load.accepted.push(idem.clone());
                job["id"].as_str().unwrap().to_owned()
            }
            Ok(res) => {
                load.failures.push(format!("POST {idem}: {}", res.status()));
                continue;
            }
            Err(e) => {
                load.failures
                    .push(format!("POST {idem}: {}", ordo::tls::error_chain(&e)));
                continue;
            }
        };
        match http.get(format!("{url}/api/jobs/{id}")).bearer_auth(&key).send().await {
            Ok(res) if res.status().is_success() => {}
            Ok(res) => load.failures.push(format!("GET {id}: {}", res.status())),
            Err(e) => load.failures.push(format!("GET {id}: {}", ordo::tls::error_chain(&e))),
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    load
}

/// Two `ordo api` nodes behind a balancer that follows `/readyz`, under a steady load of enqueues (with
/// idempotency keys) and reads: SIGTERM one node, wait for it to exit 0, start it again, wait until it is routed
/// to, then the same for the other. No request failed, and every accepted key names exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rolling_restart_under_load_loses_no_request() {
    let db = testkit::db().await;
    let key = account(&db).await;
    let env = [("ORDO_API_DRAIN_MS", DRAIN_MS)];
    let http = reqwest::Client::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (child, base) = spawn_api_process(&db.url, &env, "http://127.0.0.1", &http).await;
        nodes.push((child, addr_of(&base)));
    }
    let balancer = Balancer::start(&nodes.iter().map(|(_, addr)| *addr).collect::<Vec<_>>()).await;
    eventually(Duration::from_secs(20), "both nodes routed to", || async {
        balancer.nodes().iter().all(|n| n.ready).then_some(())
    })
    .await;

    let done = CancellationToken::new();
    let rounds = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                c,
                balancer.url(),
                key.clone(),
                done.clone(),
                Arc::clone(&rounds),
            ))
        })
        .collect();
    let load_runs = |at_least: usize| {
        let rounds = Arc::clone(&rounds);
        eventually(Duration::from_secs(30), "the load to go on", move || {
            let rounds = Arc::clone(&rounds);
            async move { (rounds.load(Ordering::Relaxed) >= at_least).then_some(()) }
        })
    };
    load_runs(20).await;

    let mut fresh = Vec::new();
    for (child, old) in nodes {
        stop(child).await;
        let (child, base) = spawn_api_process(&db.url, &env, "http://127.0.0.1", &http).await;
        let new = addr_of(&base);
        balancer.replace(old, new);
        eventually(Duration::from_secs(20), "the restarted node routed to", || async {
            balancer.is_ready(new).then_some(())
        })
        .await;
        load_runs(rounds.load(Ordering::Relaxed) + 20).await;
        fresh.push(child);
    }
    done.cancel();

    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    for c in clients {
        let load = c.await.unwrap();
        assert!(load.stopped, "a client ran out of rounds before the restarts were done");
        accepted.extend(load.accepted);
        failures.extend(load.failures);
    }
    assert!(failures.is_empty(), "{} requests failed: {failures:?}", failures.len());
    assert_eq!(
        balancer.unrouted.load(Ordering::Relaxed),
        0,
        "connections the balancer could not route"
    );
    let per_key: Vec<(String, i64)> =
        sqlx::query_as("select idempotency_key, count(*) from job_all where idempotency_key is not null group by 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let per_key: std::collections::HashMap<String, i64> = per_key.into_iter().collect();
    for idem in &accepted {
        assert_eq!(per_key.get(idem), Some(&1), "accepted key {idem} names exactly one job");
    }
    assert_eq!(per_key.len(), accepted.len(), "no job without an accepted key");
    for child in &fresh {
        signal(child, "-TERM");
    }
    for child in fresh {
        exits_zero(child).await;
    }
}
