//! Per-account request rate: a token bucket of `rps` tokens per second holding at most `2 × rps`.
//!
//! With Redis the bucket lives there (one hash per account, updated atomically by a Lua script using Redis's own
//! clock), so every API node spends the same budget. Without Redis, or while it is unreachable, each node keeps
//! its own bucket in memory: the limit then applies per node, which is looser but never blocks traffic because a
//! soft-state store went away.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use super::error::{ApiError, RateLimited};
use crate::tenancy::AccountId;

/// Refills `KEYS[1]` by elapsed time × rate, takes one token if there is one, and returns
/// `{allowed (0|1), tokens left × 1000}`. The key expires once a full bucket would have refilled.
const TOKEN_BUCKET_LUA: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.floor(tokens * 1000)}
"#;

/// How long to wait before trying Redis again after it failed.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for Redis (connect or script) before falling back to the local bucket: a hung Redis must not
/// stall requests.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct RedisState {
    conn: Option<redis::aio::MultiplexedConnection>,
    retry_at: Option<Instant>,
}

/// The limiter shared by every request of a node.
pub(crate) struct RateLimiter {
    rps: u32,
    namespace: String,
    redis: Option<(redis::Client, AsyncMutex<RedisState>)>,
    local: Mutex<HashMap<AccountId, Bucket>>,
}

/// The outcome of one check: tokens left, or how long to wait.
enum Verdict {
    Allowed,
    Denied { tokens: f64 },
}

impl RateLimiter {
    /// A limiter of `rps` per account (0 = off), shared through `redis` when given.
    pub(crate) fn new(rps: u32, redis: Option<redis::Client>, namespace: &str) -> Self {
        let redis = redis.map(|c| {
            (
                c,
                AsyncMutex::new(RedisState {
                    conn: None,
                    retry_at: None,
                }),
            )
        });
        RateLimiter {
            rps,
            namespace: namespace.to_owned(),
            redis,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        f64::from(self.rps) * 2.0
    }

    /// Takes one request from the account's budget, or answers 429.
    pub(crate) async fn check(&self, account: &AccountId) -> Result<(), ApiError> {
        if self.rps == 0 {
            return Ok(());
        }
        let verdict = match self.check_redis(account).await {
            Some(v) => v,
            None => self.check_local(account),
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied { tokens } => {
                metrics::counter!(crate::telemetry::metrics::RATE_LIMITED_TOTAL).increment(1);
                let rate = f64::from(self.rps);
                Err(ApiError::RateLimited(RateLimited {
                    limit: self.rps,
                    retry_after_s: ((1.0 - tokens).max(0.0) / rate).ceil() as u64,
                    reset_s: ((self.burst() - tokens).max(0.0) / rate).ceil() as u64,
                }))
            }
        }
    }

    fn check_local(&self, account: &AccountId) -> Verdict {
        let mut buckets = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let burst = self.burst();
        let rate = f64::from(self.rps);
        let bucket = buckets
            .entry(account.clone())
            .or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Allowed
        } else {
            Verdict::Denied { tokens: bucket.tokens }
        }
    }

    /// `None` when Redis is not configured or not reachable (the caller falls back to the local bucket).
    async fn check_redis(&self, account: &AccountId) -> Option<Verdict> {
        let (client, state) = self.redis.as_ref()?;
        let mut conn = {
            let mut st = state.lock().await;
            match &st.conn {
                Some(c) => c.clone(),
                None => {
                    if st.retry_at.is_some_and(|t| Instant::now() < t) {
                        return None;
                    }
                    let connect = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection());
                    match connect
                        .await
                        .map_err(|_| "timed out".to_owned())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        Ok(c) => {
                            st.conn = Some(c.clone());
                            st.retry_at = None;
                            c
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "redis unavailable; per-node rate limit");
                            st.retry_at = Some(Instant::now() + REDIS_RETRY);
                            return None;
                        }
                    }
                }
            }
        };
        let key = format!("ordo:{}:rl:{}", self.namespace, account);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TOKEN_BUCKET_LUA)
            .arg(1)
            .arg(&key)
            .arg(self.rps)
            .arg(self.burst());
        let reply = tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<(i64, i64)>(&mut conn))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match reply {
            Ok((1, _)) => Some(Verdict::Allowed),
            Ok((_, milli)) => Some(Verdict::Denied {
                tokens: milli as f64 / 1000.0,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "redis rate limit failed; per-node rate limit");
                let mut st = state.lock().await;
                st.conn = None;
                st.retry_at = Some(Instant::now() + REDIS_RETRY);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local bucket allows the burst, then refuses with a positive wait.
    #[tokio::test]
    async fn local_bucket_allows_burst_then_refuses() {
        let rl = RateLimiter::new(2, None, "t");
        let a = AccountId::parse("a").unwrap();
        for _ in 0..4 {
            assert!(rl.check(&a).await.is_ok());
        }
        match rl.check(&a).await {
            Err(ApiError::RateLimited(r)) => {
                assert_eq!(r.limit, 2);
                assert!(r.retry_after_s >= 1);
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another account has its own bucket.
        assert!(rl.check(&AccountId::parse("b").unwrap()).await.is_ok());
    }

    /// A limit of zero is off.
    #[tokio::test]
    async fn zero_rps_is_off() {
        let rl = RateLimiter::new(0, None, "t");
        let a = AccountId::parse("a").unwrap();
        for _ in 0..100 {
            assert!(rl.check(&a).await.is_ok());
        }
    }
}
