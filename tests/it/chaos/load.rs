//! The load of a chaos run, sent over HTTP as a careful client would: a request that failed at the transport
//! level or answered 503 is sent again, unchanged, with the same idempotency key, until it gets an answer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The pause before sending a request again: a client's retry backoff, not a wait for a condition.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a client keeps retrying one request before the run fails.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// What the clients saw, shared by every task of the load.
#[derive(Debug, Default)]
pub struct Seen {
    /// Jobs whose enqueue the API accepted (their idempotency keys).
    pub jobs: Mutex<Vec<String>>,
    /// Jobs accepted so far (the fault schedule follows it).
    pub jobs_accepted: AtomicUsize,
    /// Orders created (their refs).
    pub orders: Mutex<Vec<String>>,
    /// Requests answered 503 and sent again.
    pub unavailable: AtomicUsize,
    /// Requests that failed at the transport level and were sent again.
    pub transport: AtomicUsize,
    /// Answers a client cannot accept (any other 5xx, or a 4xx the request did not deserve).
    pub wrong: Mutex<Vec<String>>,
}

impl Seen {
    fn wrong(&self, what: String) {
        self.wrong.lock().unwrap_or_else(PoisonError::into_inner).push(what);
    }
}

/// An HTTP client of the API at `base` with `key`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    seen: Arc<Seen>,
}

impl Client {
    /// A client of `base` authenticating with `key`.
    pub fn new(base: &str, key: &str, seen: Arc<Seen>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Client {
            http,
            base: base.to_owned(),
            key: key.to_owned(),
            seen,
        }
    }

    /// Sends `POST path` with `body` (and `idempotency_key` as the header, when given) until it gets an answer
    /// other than 503; returns that answer and whether an earlier attempt may have reached the server.
    pub async fn post(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> (StatusCode, Value, bool) {
        let started = tokio::time::Instant::now();
        let mut retried = false;
        loop {
            let mut req = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .json(body);
            if let Some(k) = idempotency_key {
                req = req.header("idempotency-key", k);
            }
            match req.send().await {
                Ok(res) if res.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    self.seen.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                Ok(res) => {
                    let status = res.status();
                    let body = res.json::<Value>().await.unwrap_or(Value::Null);
                    return (status, body, retried);
                }
                Err(_) => {
                    self.seen.transport.fetch_add(1, Ordering::Relaxed);
                }
            }
            assert!(
                started.elapsed() < GIVE_UP_AFTER,
                "POST {path} got no answer but 503 or a transport error for {GIVE_UP_AFTER:?}"
            );
            retried = true;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Jobs per `POST /api/jobs/batch`.
pub const BATCH: usize = 100;

/// Enqueues `batches` batches of `noop` jobs, each job with an idempotency key of its own, one batch per `every`
/// at most.
pub async fn produce_jobs(client: Client, producer: usize, batches: usize, every: Duration) {
    let mut pace = tokio::time::interval(every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for b in 0..batches {
        pace.tick().await;
        let keys: Vec<String> = (0..BATCH).map(|i| format!("chaos-{producer}-{b}-{i}")).collect();
        let jobs: Vec<Value> = keys
            .iter()
            .map(|k| json!({"kind": "noop", "args": {"key": k}, "idempotency_key": k}))
            .collect();
        let (status, body, _) = client.post("/api/jobs/batch", &json!({"jobs": jobs}), None).await;
        if status != StatusCode::CREATED {
            client
                .seen
                .wrong(format!("POST /api/jobs/batch {producer}-{b}: {status} {body}"));
            continue;
        }
        let n = keys.len();
        client
            .seen
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(keys);
        client.seen.jobs_accepted.fetch_add(n, Ordering::Relaxed);
    }
}

/// Creates `orders` orders of the example workflow, one per `every` at most. A retried create that answers 409
/// found the order its earlier attempt created: accepted all the same.
pub async fn produce_orders(client: Client, orders: usize, every: Duration) {
    let mut pace = tokio::time::interval(every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..orders {
        pace.tick().await;
        let reference = format!("o-{n}");
        let body = json!({
            "type": "ORDER", "subtype": "HD", "ref": reference,
            "attributes": {"sku": "SKU-1", "location": "DC1", "qty": 1}
        });
        let (status, answer, retried) = client.post("/api/entities", &body, None).await;
        let created = status == StatusCode::CREATED || (retried && status == StatusCode::CONFLICT);
        if !created {
            client
                .seen
                .wrong(format!("POST /api/entities {reference}: {status} {answer}"));
            continue;
        }
        client
            .seen
            .orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reference);
    }
}

/// Sends `Pick` then `Ship` (each with its idempotency key) to every order once it is `BOOKED`, until `done`.
pub async fn pick_and_ship(client: Client, db: PgPool, done: CancellationToken) {
    let mut sent: HashSet<String> = HashSet::new();
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    while !done.is_cancelled() {
        pace.tick().await;
        // The database may be down for a moment: the next look finds the same orders.
        let Ok(booked) = sqlx::query_scalar::<_, String>(
            "select ref from entity where type = 'ORDER' and status = 'BOOKED' order by ref",
        )
        .fetch_all(&db)
        .await
        else {
            continue;
        };
        for reference in booked {
            if sent.contains(&reference) {
                continue;
            }
            for name in ["Pick", "Ship"] {
                let body = json!({"name": name, "entity": {"type": "ORDER", "ref": reference}});
                let key = format!("{name}:{reference}");
                let (status, answer, _) = client.post("/api/events", &body, Some(&key)).await;
                if !status.is_success() {
                    client.seen.wrong(format!("POST /api/events {key}: {status} {answer}"));
                }
            }
            sent.insert(reference);
        }
    }
}
