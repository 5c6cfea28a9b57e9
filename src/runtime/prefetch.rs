//! Fetch ahead: how many jobs a worker claims beyond its free slots, fixed or sized from its throughput.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How many jobs a worker claims ahead of its free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Follows the worker's throughput: about [`AUTO_PREFETCH_WINDOW`] of its recent work, at least its concurrency
    /// and at most [`AUTO_PREFETCH_MAX`] jobs. Short jobs get a deep buffer, so each claim brings many; long ones
    /// a shallow one, so a worker never sits on work another could start.
    Auto,
    /// Exactly this many.
    Fixed(usize),
}

/// How much recent work an automatic prefetch holds.
pub const AUTO_PREFETCH_WINDOW: Duration = Duration::from_millis(50);
/// The most jobs an automatic prefetch holds.
pub const AUTO_PREFETCH_MAX: usize = 2000;

impl std::str::FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Prefetch::Auto),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 10_000)
                .map(Prefetch::Fixed)
                .ok_or_else(|| format!("{s:?} is neither `auto` nor a number of jobs from 0 to 10000")),
        }
    }
}

/// The buffer an automatic prefetch wants at `per_s` jobs a second (see [`Prefetch::Auto`]).
pub(super) fn auto_prefetch(per_s: f64, concurrency: usize) -> usize {
    let window = (per_s * AUTO_PREFETCH_WINDOW.as_secs_f64()) as usize;
    window.clamp(concurrency.min(AUTO_PREFETCH_MAX), AUTO_PREFETCH_MAX)
}

/// Sizes an automatic prefetch (see [`Prefetch::Auto`]) every 100 ms from the jobs this worker finished: the
/// buffer grows at once when throughput rises and shrinks as it falls, by permits handed back (a job waiting in
/// the buffer is never dropped).
/// How often the automatic prefetch is resized: often enough to follow a change of job length within a second.
const RESIZE_EVERY: Duration = Duration::from_millis(100);

pub(super) async fn size_prefetch(
    held: Arc<Semaphore>,
    prefetch: Arc<AtomicUsize>,
    finished: Arc<AtomicU64>,
    concurrency: usize,
    stop: CancellationToken,
) {
    let tick = RESIZE_EVERY;
    let mut last = finished.load(Ordering::Relaxed);
    let mut rate = 0.0_f64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = finished.load(Ordering::Relaxed);
        let per_s = now.saturating_sub(last) as f64 / tick.as_secs_f64();
        last = now;
        // Up at once, down gently: one quiet tick between bursts must not empty the buffer.
        rate = if per_s >= rate { per_s } else { 0.7 * rate + 0.3 * per_s };
        let want = auto_prefetch(rate, concurrency);
        let have = prefetch.load(Ordering::Relaxed);
        if want > have {
            held.add_permits(want - have);
            prefetch.store(want, Ordering::Relaxed);
        } else if want < have {
            // Only free permits can be forgotten; the rest go on a later tick, as jobs finish.
            let gone = held.forget_permits(have - want);
            prefetch.store(have - gone, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--prefetch` takes `auto` or a number of jobs up to 10 000, and says what it wants otherwise.
    #[test]
    fn prefetch_parses_auto_or_a_number() {
        assert_eq!("auto".parse::<Prefetch>(), Ok(Prefetch::Auto));
        assert_eq!("0".parse::<Prefetch>(), Ok(Prefetch::Fixed(0)));
        assert_eq!("10000".parse::<Prefetch>(), Ok(Prefetch::Fixed(10_000)));
        for bad in ["10001", "-1", "lots", ""] {
            let err = bad.parse::<Prefetch>().unwrap_err();
            assert!(err.contains("neither `auto` nor a number"), "{bad}: {err}");
        }
    }

    /// An automatic prefetch holds about 50 ms of work, never less than the concurrency, never more than the cap.
    #[test]
    fn auto_prefetch_follows_throughput_within_bounds() {
        assert_eq!(auto_prefetch(0.0, 64), 64, "idle: the concurrency");
        assert_eq!(auto_prefetch(64.0, 64), 64, "one-second jobs: the concurrency");
        assert_eq!(auto_prefetch(10_000.0, 64), 500, "50 ms at 10 000 jobs/s");
        assert_eq!(auto_prefetch(1_000_000.0, 64), AUTO_PREFETCH_MAX);
        assert_eq!(
            auto_prefetch(0.0, 5000),
            AUTO_PREFETCH_MAX,
            "the cap holds at any concurrency"
        );
    }
}
