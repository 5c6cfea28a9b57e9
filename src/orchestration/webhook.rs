//! Webhook delivery (`core.SendWebhook`): one job of kind [`WEBHOOK_KIND`] per delivery, queued by the execution
//! that sent it. Each attempt POSTs the event JSON, signed with the account's webhook secret:
//!
//! ```text
//! Ordo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key = webhook_secret, message = "<t>.<raw body>")>
//! Idempotency-Key: <account>-<event seq>-<n>      (stable across the retries of one delivery)
//! ```
//!
//! Retries follow the workflow setting `webhook.retry`: `fast` waits 2 s, 4 s, 8 s before attempts 2–4; `slow`
//! waits 1 min, 1 h, 1 day. Every attempt is an audit record (category `webhook`) of the event. Only http and
//! https are sent, and private, loopback and link-local addresses are refused unless allowed.
//!
//! A receiver verifies a delivery over the raw body bytes it received (before any JSON parsing), e.g. in Python:
//!
//! ```text
//! t, v1 = dict(p.split("=", 1) for p in headers["Ordo-Signature"].split(",")).values()
//! expected = hmac.new(secret.encode(), f"{t}.".encode() + raw_body, hashlib.sha256).hexdigest()
//! ok = hmac.compare_digest(expected, v1) and abs(time.time() - int(t)) < 300
//! ```

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use ordo_workers::rules::EntityKey;
use ordo_workers::{BoxFuture, StepContext, StepError};
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;

use super::audit::{self, Audit, Category};
use super::event::EventStatus;
use super::{Error, QUEUE};
use crate::engine::{EngineHandler, EngineResult};
use crate::queue::{self, Job, NewJob};
use crate::tenancy::{self, AccountId};

/// The job kind of one webhook delivery.
pub const WEBHOOK_KIND: &str = "webhook.deliver";

/// Attempts per delivery: the first, then one after each wait of the schedule.
const ATTEMPTS: i32 = 4;

/// How long one attempt may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before attempt `attempt + 1` after attempt `attempt` failed.
fn retry_wait(schedule: &str, attempt: i32) -> Duration {
    let waits: [u64; 3] = match schedule {
        "slow" => [60, 3600, 86_400],
        _ => [2, 4, 8],
    };
    let i = usize::try_from(attempt.clamp(1, 3) - 1).unwrap_or(0);
    Duration::from_secs(waits[i])
}

/// The `Ordo-Signature` header value for `body` sent at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The job of one delivery.
pub(crate) fn delivery_job(
    account: &AccountId,
    url: &str,
    body: Value,
    seq: i64,
    n: usize,
    retry: &str,
    entity: &EntityKey,
) -> NewJob {
    let delivery = format!("{seq}-{n}");
    NewJob::new(
        WEBHOOK_KIND,
        json!({
            "url": url,
            "body": body,
            "retry": retry,
            "event_id": seq.to_string(),
            "entity": entity,
            "idempotency_key": format!("{account}-{delivery}"),
        }),
    )
    .queue(QUEUE)
    .max_attempts(ATTEMPTS)
    .idempotency_key(format!("webhook:{delivery}"))
}

#[derive(Debug, Deserialize)]
struct Args {
    url: String,
    body: Value,
    retry: String,
    event_id: String,
    entity: EntityKey,
    idempotency_key: String,
}

/// The engine handler that delivers webhooks.
#[derive(Clone)]
pub struct WebhookDeliverer {
    client: Client,
    allow_private: bool,
}

impl WebhookDeliverer {
    /// A deliverer; `allow_private` permits private, loopback and link-local targets.
    pub fn new(allow_private: bool) -> Self {
        let client = Client::builder()
            .user_agent(concat!("ordo/", env!("CARGO_PKG_VERSION")))
            .timeout(TIMEOUT)
            // A redirect could lead to a private address the check did not see.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with default TLS settings and built-in root certificates always builds");
        WebhookDeliverer { client, allow_private }
    }
}

impl EngineHandler for WebhookDeliverer {
    fn kind(&self) -> &'static str {
        WEBHOOK_KIND
    }

    fn run(&self, pool: PgPool, job: Job, ctx: StepContext) -> BoxFuture<'static, EngineResult> {
        let this = self.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => EngineResult::Step(Err(StepError::Cancelled)),
                r = this.deliver(&pool, &job) => r,
            }
        })
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            v.is_loopback()
                || v.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered(u16),
    Retry(String),
    Refused(String),
}

impl WebhookDeliverer {
    async fn deliver(&self, pool: &PgPool, job: &Job) -> EngineResult {
        let args: Args = match serde_json::from_value(job.args.clone()) {
            Ok(a) => a,
            Err(e) => return EngineResult::Step(Err(StepError::fail(format!("invalid args for {WEBHOOK_KIND}: {e}")))),
        };
        let account = match AccountId::parse(&job.account_id) {
            Ok(a) => a,
            Err(e) => return EngineResult::Step(Err(StepError::fail(e.to_string()))),
        };
        let attempt = match self.attempt(pool, &account, &args, job.traceparent.as_deref()).await {
            Ok(a) => a,
            Err(e) => Attempt::Retry(e.to_string()),
        };
        let (status, error, code) = match &attempt {
            Attempt::Delivered(code) => (EventStatus::Success, None, Some(*code)),
            Attempt::Retry(e) | Attempt::Refused(e) => (EventStatus::Failed, Some(e.clone()), None),
        };
        let mut record = Audit::new(
            Category::Webhook,
            "webhook",
            0,
            json!({"url": args.url, "attempt": job.attempt, "status_code": code,
                   "idempotency_key": args.idempotency_key}),
        );
        if let Some(e) = error {
            record = record.failed(e);
        }
        record.status = status;
        let source: i64 = args.event_id.parse().unwrap_or_default();
        let settled = async {
            let mut tx = pool.begin().await?;
            audit::write(&mut tx, &account, &args.entity, &[record], &[source]).await?;
            if matches!(attempt, Attempt::Delivered(_)) {
                queue::complete_in(&mut tx, job.id, job.attempt, json!({"status_code": code})).await?;
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        match (attempt, settled) {
            (Attempt::Delivered(_), Ok(())) => EngineResult::Settled,
            (Attempt::Delivered(_), Err(Error::Queue(queue::Error::LeaseLost { .. }))) => EngineResult::Settled,
            (Attempt::Delivered(_), Err(e)) => EngineResult::Step(Err(StepError::Retry {
                reason: format!("record delivery: {e}"),
                after: None,
            })),
            (Attempt::Refused(reason), _) => EngineResult::Step(Err(StepError::Fail { reason })),
            (Attempt::Retry(reason), _) => EngineResult::Step(Err(StepError::Retry {
                reason,
                after: Some(retry_wait(&args.retry, job.attempt)),
            })),
        }
    }

    async fn attempt(
        &self,
        pool: &PgPool,
        account: &AccountId,
        args: &Args,
        traceparent: Option<&str>,
    ) -> Result<Attempt, Error> {
        let url = match Url::parse(&args.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => {
                return Ok(Attempt::Refused(format!(
                    "scheme {:?} is not http or https",
                    u.scheme()
                )))
            }
            Err(e) => return Ok(Attempt::Refused(format!("invalid url {:?}: {e}", args.url))),
        };
        if !self.allow_private {
            let host = url.host_str().unwrap_or_default().to_owned();
            let port = url.port_or_known_default().unwrap_or(80);
            let resolved = tokio::net::lookup_host(format!("{host}:{port}")).await;
            match resolved {
                Ok(addrs) => {
                    if let Some(a) = addrs.into_iter().find(|a| is_private(a.ip())) {
                        return Ok(Attempt::Refused(format!(
                            "{host} resolves to the private address {}; set ORDO_WEBHOOK_ALLOW_PRIVATE=true to allow",
                            a.ip()
                        )));
                    }
                }
                Err(e) => return Ok(Attempt::Retry(format!("resolve {host}: {e}"))),
            }
        }
        let secret = match tenancy::webhook_secret(pool, account).await {
            Ok(s) => s,
            Err(tenancy::Error::Database(e)) => return Err(e.into()),
            Err(e) => return Ok(Attempt::Refused(e.to_string())),
        };
        let body = serde_json::to_vec(&args.body).map_err(|e| Error::Corrupt(e.to_string()))?;
        let signature = sign(&secret, Utc::now().timestamp(), &body);
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("ordo-signature", signature)
            .header("idempotency-key", &args.idempotency_key);
        if let Some(t) = traceparent {
            // The receiver continues the trace of the request that started the process.
            request = request.header("traceparent", t);
        }
        let sent = request.body(body).send().await;
        Ok(match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
            Ok(r) => Attempt::Retry(format!("receiver answered {}", r.status())),
            Err(e) => Attempt::Retry(format!("send: {e}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature is HMAC-SHA256 over "<t>.<body>", hex, in the documented header format.
    #[test]
    fn signature_matches_the_documented_scheme() {
        // Known answer computed independently (Python's hmac module over b"1700000000.{}").
        let s = sign("secret", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert_ne!(s, sign("secret", 1_700_000_001, b"{}"));
    }

    /// Waits follow the fast and slow schedules; private addresses are recognised.
    #[test]
    fn schedules_and_private_addresses() {
        assert_eq!(retry_wait("fast", 1), Duration::from_secs(2));
        assert_eq!(retry_wait("fast", 3), Duration::from_secs(8));
        assert_eq!(retry_wait("slow", 2), Duration::from_secs(3600));
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::8888"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
