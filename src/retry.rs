//! Waiting between attempts of something that failed for a passing reason (a database or Redis gone for a
//! while): every retry loop waits through one [`Backoff`], whose delay doubles up to a cap and whose wait ends as
//! soon as the caller's cancellation token fires, so no retry holds up a shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first wait after a failure of a write or connection that usually comes back within a second.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait: a database or Redis that comes back is used again within this, and a retry every 5 s costs
/// nothing worth saving.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// A doubling delay between attempts, capped, optionally with random jitter added to each wait.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    delay: Duration,
    max: Duration,
    jitter: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles after each wait, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            delay: first,
            max,
            jitter: Duration::ZERO,
        }
    }

    /// Adds a random amount below `jitter` to each wait, so many clients retrying together spread out.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The next wait, before jitter (for logs).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.delay = self.first;
    }

    /// Waits the current delay, then doubles it; returns false at once when `stop` fires first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rand::random::<u64>() % self.jitter.as_nanos().max(1) as u64)
        };
        let wait = self.delay + jitter;
        self.delay = (self.delay * 2).min(self.max);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delay doubles up to the cap and starts over after a reset.
    #[tokio::test]
    async fn delay_doubles_to_the_cap_and_resets() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_micros(100), Duration::from_micros(350));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(b.delay());
            assert!(b.wait(&stop).await);
        }
        assert_eq!(seen, [100, 200, 350, 350].map(Duration::from_micros));
        b.reset();
        assert_eq!(b.delay(), Duration::from_micros(100));
    }

    /// A cancelled token ends the wait at once, however long the delay.
    #[tokio::test]
    async fn wait_ends_when_cancelled() {
        let stop = CancellationToken::new();
        stop.cancel();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(!b.wait(&stop).await);
    }
}
