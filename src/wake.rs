//! Wake-ups through Redis: after an enqueue commits, one coalesced `PUBLISH` per queue wakes idle workers at once.
//! A hint only: workers also poll, so a lost message or a Redis outage only adds latency. Channels carry the
//! database name, so clusters sharing one Redis never wake each other.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::retry::{self, Backoff};

/// Errors making a Redis client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is invalid, or the CA does not fit it (a CA file needs a `rediss://` URL).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The CA file cannot be used.
    #[error("ORDO_REDIS_CA_FILE: {0}")]
    Ca(#[from] crate::tls::Error),
}

/// A client for the Redis at `url`. For `rediss://`, the server's certificate is checked against the system's
/// roots, or against the CA certificates in `ca_file` (PEM) when given.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, Error> {
    let Some(path) = ca_file else {
        return Ok(redis::Client::open(url)?);
    };
    let root_cert = crate::tls::read_ca_pem(path)?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    Ok(redis::Client::build_with_tls(url, certs)?)
}

/// The channel for a queue's wake-ups.
pub fn channel(namespace: &str, queue: &str) -> String {
    format!("ordo:{namespace}:wake:{queue}")
}

/// The namespace of a database's wake-up channels: its name, so clusters sharing one Redis stay apart.
pub async fn namespace(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar::<_, String>("select current_database()")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "ordo".to_owned())
}

/// Publishes wake-ups; cheap to clone. A disabled waker does nothing.
#[derive(Clone, Debug)]
pub struct Waker {
    tx: Option<mpsc::UnboundedSender<String>>,
    /// The publisher's task: it ends at shutdown, and is aborted when the last clone is dropped (a wake-up is a
    /// hint, so one still queued then may go).
    _publisher: Option<Arc<AbortOnDropHandle<()>>>,
}

impl Waker {
    /// A waker that publishes nothing (no Redis configured).
    pub fn disabled() -> Self {
        Waker {
            tx: None,
            _publisher: None,
        }
    }

    /// Starts a publisher for `namespace` on the Redis at `url`. The publisher reconnects by itself; until it
    /// can, wake-ups are dropped (workers still poll). Stops when `shutdown` fires.
    pub fn start(url: &str, namespace: &str, shutdown: CancellationToken) -> Result<Self, redis::RedisError> {
        Ok(Self::with_client(redis::Client::open(url)?, namespace, shutdown))
    }

    /// Like [`Waker::start`], with a client already made (e.g. by [`client`], for a private CA).
    pub fn with_client(client: redis::Client, namespace: &str, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_loop(client, namespace.to_owned(), rx, shutdown));
        Waker {
            tx: Some(tx),
            _publisher: Some(Arc::new(AbortOnDropHandle::new(publisher))),
        }
    }

    /// Starts a publisher whose namespace is the database `pool` connects to, as workers expect.
    pub async fn for_database(
        url: &str,
        pool: &sqlx::PgPool,
        shutdown: CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        Self::start(url, &namespace(pool).await, shutdown)
    }

    /// Asks for the queue's workers to be woken. Call after the enqueue committed.
    pub fn wake(&self, queue: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(queue.to_owned());
        }
    }

    /// Whether wake-ups are published at all.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }
}

async fn publish_loop(
    client: redis::Client,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            q = rx.recv() => match q { Some(q) => q, None => return },
        };
        // Coalesce: everything queued meanwhile goes out as one publish per queue.
        let mut queues = BTreeSet::from([first]);
        while let Ok(q) = rx.try_recv() {
            queues.insert(q);
        }
        if conn.is_none() {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "redis unavailable; wake-up dropped");
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let mut pipe = redis::pipe();
            for q in &queues {
                pipe.publish(channel(&namespace, q), 1).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(c).await {
                tracing::debug!(error = %e, "wake-up publish failed; reconnecting");
                conn = None;
            }
        }
    }
}

/// Per-queue notifiers that the subscriber pokes when a wake-up arrives.
#[derive(Clone, Debug, Default)]
pub struct WakeSignals {
    by_queue: HashMap<String, Arc<Notify>>,
}

impl WakeSignals {
    /// One notifier per queue.
    pub fn new(queues: &[String]) -> Self {
        WakeSignals {
            by_queue: queues.iter().map(|q| (q.clone(), Arc::new(Notify::new()))).collect(),
        }
    }

    /// The notifier of a queue.
    pub fn get(&self, queue: &str) -> Option<Arc<Notify>> {
        self.by_queue.get(queue).cloned()
    }

    fn wake_all(&self) {
        for n in self.by_queue.values() {
            n.notify_one();
        }
    }
}

/// Listens for wake-ups of the given queues until `shutdown`, reconnecting with backoff. After each (re)connect
/// every queue is poked once, in case a wake-up was missed while disconnected.
pub async fn subscribe(client: redis::Client, namespace: String, signals: WakeSignals, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(retry::FIRST_DELAY, retry::MAX_DELAY);
    let by_channel: HashMap<String, Arc<Notify>> = signals
        .by_queue
        .iter()
        .map(|(q, n)| (channel(&namespace, q), n.clone()))
        .collect();
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for ch in by_channel.keys() {
                pubsub.subscribe(ch).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connected => r,
        };
        match pubsub {
            Ok(pubsub) => {
                backoff.reset();
                signals.wake_all();
                let mut stream = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = stream.next() => m,
                    };
                    match msg {
                        Some(m) => {
                            if let Some(n) = by_channel.get(m.get_channel_name()) {
                                n.notify_one();
                            }
                        }
                        None => break,
                    }
                }
                tracing::warn!("redis subscription closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.delay(), "redis unavailable; polling until it is back")
            }
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
