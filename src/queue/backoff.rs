//! Retry delays: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// How failed attempts are spaced out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first retry's delay.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
}

/// The first retry of a failed job waits up to this (CONTRACT §4).
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than an hour (CONTRACT §4): a job failing for a day still runs 24 more times.
pub const RETRY_CAP: Duration = Duration::from_secs(3600);

impl Default for RetryPolicy {
    /// From 1 s, capped at 1 h (the contract's schedule).
    fn default() -> Self {
        RetryPolicy {
            base: RETRY_BASE,
            cap: RETRY_CAP,
        }
    }
}

/// The delay before the attempt after `attempt` (1-based): uniform in `[0, min(cap, base·2^(attempt-1))]`.
/// Full jitter spreads a burst of failures out instead of retrying them in lockstep.
pub fn backoff(policy: RetryPolicy, attempt: i32) -> Duration {
    let ceiling = ceiling(policy, attempt);
    ceiling.mul_f64(rand::thread_rng().gen::<f64>())
}

fn ceiling(policy: RetryPolicy, attempt: i32) -> Duration {
    let exp = attempt.clamp(1, 40) - 1;
    let factor = 2f64.powi(exp);
    let secs = (policy.base.as_secs_f64() * factor).min(policy.cap.as_secs_f64());
    Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ceiling doubles per attempt from the base and stops at the cap.
    #[test]
    fn ceiling_doubles_then_caps() {
        let p = RetryPolicy::default();
        let cases = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (10, 512),
            (12, 2048),
            (13, 3600),
            (1000, 3600),
        ];
        for (attempt, secs) in cases {
            assert_eq!(ceiling(p, attempt), Duration::from_secs(secs), "attempt {attempt}");
        }
    }

    /// Every delay lies within [0, ceiling].
    #[test]
    fn backoff_stays_within_ceiling() {
        let p = RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_secs(1),
        };
        for attempt in 1..30 {
            let d = backoff(p, attempt);
            assert!(d <= ceiling(p, attempt), "attempt {attempt}: {d:?}");
        }
    }
}
