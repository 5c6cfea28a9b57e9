//! What a steady load reads from its workers' `/metrics`: attempts settled and the claim statement's histogram,
//! summed over every worker, so that a sample's throughput and claim percentiles are differences of two scrapes.

use std::net::SocketAddr;

use crate::telemetry::metrics as m;

/// The counters of all workers at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Scrape {
    /// Attempts settled (every outcome).
    pub settled: f64,
    /// Cumulative claim-duration buckets: upper bound in seconds and the count at or below it, ascending by bound.
    pub claim_buckets: Vec<(f64, f64)>,
}

impl Scrape {
    /// Adds one worker's `/metrics` text.
    fn add(&mut self, text: &str) {
        let settled = format!("{}{{", m::JOBS_SETTLED_TOTAL);
        let bucket = format!("{}_bucket{{", m::CLAIM_DURATION_SECONDS);
        for line in text.lines() {
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if line.starts_with(&settled) {
                self.settled += value;
            } else if line.starts_with(&bucket) {
                let Some(le) = label(line, "le") else { continue };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                if le.is_nan() {
                    continue;
                }
                // Buckets of several queues (label sets) with one bound add up.
                match self.claim_buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += value,
                    None => self.claim_buckets.push((le, value)),
                }
            }
        }
        self.claim_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// The `q` quantile (0..1) of the claims between `earlier` and `self`, in milliseconds, interpolated linearly
    /// within its bucket as Prometheus's `histogram_quantile` does; `None` without claims in between.
    pub fn claim_quantile_ms(&self, earlier: &Scrape, q: f64) -> Option<f64> {
        let delta: Vec<(f64, f64)> = self
            .claim_buckets
            .iter()
            .map(|&(le, n)| {
                let before = earlier
                    .claim_buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, n)| *n);
                (le, (n - before).max(0.0))
            })
            .collect();
        let total = delta.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, n) in delta {
            if n >= rank {
                if le.is_infinite() {
                    // Beyond the last finite bound: that bound is all a histogram can say.
                    return Some(lower * 1000.0);
                }
                let within = if n > below { (rank - below) / (n - below) } else { 1.0 };
                return Some((lower + (le - lower) * within) * 1000.0);
            }
            (lower, below) = (le, n);
        }
        None
    }
}

/// The value of label `name` in a Prometheus text line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Reads every worker's `/metrics` and sums them; a worker that does not answer counts as nothing.
pub(super) async fn scrape(client: &reqwest::Client, addrs: &[SocketAddr]) -> Scrape {
    let mut out = Scrape::default();
    for addr in addrs {
        let text = match client.get(format!("http://{addr}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.add(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = r#"# TYPE ordo_jobs_settled_total counter
ordo_jobs_settled_total{outcome="completed"} 90
ordo_jobs_settled_total{outcome="retryable"} 10
ordo_claim_duration_seconds_bucket{queue="default",le="0.001"} 0
ordo_claim_duration_seconds_bucket{queue="default",le="0.0025"} 50
ordo_claim_duration_seconds_bucket{queue="default",le="0.005"} 90
ordo_claim_duration_seconds_bucket{queue="default",le="0.01"} 100
ordo_claim_duration_seconds_bucket{queue="default",le="+Inf"} 100
ordo_claim_duration_seconds_sum{queue="default"} 0.3
"#;

    #[test]
    fn sums_workers_and_label_sets() {
        let mut s = Scrape::default();
        s.add(WORKER);
        s.add(WORKER);
        assert_eq!(s.settled, 200.0);
        assert_eq!(s.claim_buckets.len(), 5);
        assert_eq!(s.claim_buckets[1], (0.0025, 100.0));
        assert_eq!(s.claim_buckets[4], (f64::INFINITY, 200.0));
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_difference() {
        let mut now = Scrape::default();
        now.add(WORKER);
        let none = Scrape::default();
        // 50 of 100 claims at or below 2.5 ms: the median is that bound; the 70th is halfway into (2.5, 5].
        assert_eq!(now.claim_quantile_ms(&none, 0.5), Some(2.5));
        let p70 = now.claim_quantile_ms(&none, 0.7).unwrap();
        assert!((p70 - 3.75).abs() < 1e-9, "{p70}");
        // Between two equal scrapes there were no claims.
        assert_eq!(now.claim_quantile_ms(&now, 0.99), None);
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_that_bound() {
        let mut s = Scrape::default();
        s.add("ordo_claim_duration_seconds_bucket{queue=\"q\",le=\"0.01\"} 1\nordo_claim_duration_seconds_bucket{queue=\"q\",le=\"+Inf\"} 10\n");
        assert_eq!(s.claim_quantile_ms(&Scrape::default(), 0.99), Some(10.0));
    }
}
