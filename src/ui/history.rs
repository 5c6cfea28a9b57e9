//! The overview's history (account key): per-minute throughput, failures, depth and start delay over a chosen
//! time range, with the range's totals, from `GET /api/queues/history` (kept on the server, so a reload keeps it).

use std::fmt::Write as _;

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use serde_json::Value;

use super::chart::{line_chart, Series};
use super::html::esc;
use super::{Error, Session, Ui};

/// The time ranges offered: query value, minutes, label.
pub const RANGES: [(&str, i64, &str); 4] = [
    ("15m", 15, "15 min"),
    ("1h", 60, "1 hour"),
    ("6h", 360, "6 hours"),
    ("24h", 1440, "24 hours"),
];

/// The range named `value`, else one hour.
pub fn range(value: &str) -> (&'static str, i64, &'static str) {
    RANGES
        .iter()
        .copied()
        .find(|(v, _, _)| *v == value)
        .unwrap_or(RANGES[1])
}

/// Per-minute columns of the answer, one slot per minute from `since` (`minutes` of them).
struct Columns {
    since: DateTime<Utc>,
    counts: [Vec<Option<f64>>; 5],
    samples: [Vec<Option<f64>>; 3],
}

const COUNTS: [&str; 5] = ["completed", "enqueued", "failed", "discarded", "cancelled"];
const SAMPLES: [&str; 3] = ["available", "running", "oldest_wait_ms"];

fn columns(answer: &Value, minutes: i64) -> Columns {
    let since = answer["since"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc::now() - Duration::minutes(minutes - 1));
    let since = since.duration_trunc(Duration::minutes(1)).unwrap_or(since);
    let n = minutes.max(1) as usize;
    // Counters count nothing in a quiet minute; a minute without a sample had no waiting or running job, except
    // the current one, which may not be sampled yet.
    let mut counts: [Vec<Option<f64>>; 5] = std::array::from_fn(|_| vec![Some(0.0); n]);
    let mut samples: [Vec<Option<f64>>; 3] = std::array::from_fn(|_| {
        let mut v = vec![Some(0.0); n];
        v[n - 1] = None;
        v
    });
    for m in answer["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(at) = m["minute"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()) else {
            continue;
        };
        let i = (at.with_timezone(&Utc) - since).num_minutes();
        if !(0..n as i64).contains(&i) {
            continue;
        }
        let i = i as usize;
        for (col, name) in counts.iter_mut().zip(COUNTS) {
            col[i] = Some(m[name].as_f64().unwrap_or(0.0));
        }
        for (col, name) in samples.iter_mut().zip(SAMPLES) {
            col[i] = m[name].as_f64().or(col[i]);
        }
    }
    Columns { since, counts, samples }
}

/// The history section for the range named `value`: range picker, totals and four charts.
pub async fn section(ui: &Ui, s: &Session, value: &str) -> Result<String, Error> {
    let (current, minutes, label) = range(value);
    let answer = ui.get(s, &format!("/api/queues/history?minutes={minutes}")).await?;
    let c = columns(&answer, minutes);
    let mut picker = String::from("<nav class=\"ranges\" aria-label=\"Time range\">");
    for (v, _, l) in RANGES {
        let cur = if v == current { " aria-current=\"true\"" } else { "" };
        let _ = write!(picker, "<a href=\"/ui/overview?range={v}#history\"{cur}>{l}</a>");
    }
    picker.push_str("</nav>");
    let t = &answer["totals"];
    let mut totals = String::from("<dl class=\"totals\" id=\"totals\">");
    for (name, key) in [
        ("Enqueued", "enqueued"),
        ("Completed", "completed"),
        ("Failed attempts", "failed"),
        ("Discarded", "discarded"),
        ("Cancelled", "cancelled"),
    ] {
        let _ = write!(
            totals,
            "<div><dt>{name}</dt><dd data-total=\"{key}\">{}</dd></div>",
            t[key].as_i64().unwrap_or(0)
        );
    }
    totals.push_str("</dl>");
    let [completed, enqueued, failed, discarded, _] = c.counts;
    let [available, running, wait] = c.samples;
    let wait_s: Vec<Option<f64>> = wait.iter().map(|v| v.map(|ms| ms / 1000.0)).collect();
    let charts = [
        line_chart(
            "chart-throughput",
            "Throughput",
            "jobs per minute",
            c.since,
            &[
                Series {
                    label: "Completed",
                    values: completed,
                },
                Series {
                    label: "Enqueued",
                    values: enqueued,
                },
            ],
        ),
        line_chart(
            "chart-failures",
            "Failures",
            "per minute",
            c.since,
            &[
                Series {
                    label: "Failed attempts",
                    values: failed,
                },
                Series {
                    label: "Discarded jobs",
                    values: discarded,
                },
            ],
        ),
        line_chart(
            "chart-depth",
            "Depth",
            "jobs",
            c.since,
            &[
                Series {
                    label: "Available (runnable)",
                    values: available,
                },
                Series {
                    label: "Running",
                    values: running,
                },
            ],
        ),
        line_chart(
            "chart-delay",
            "Start delay",
            "seconds",
            c.since,
            &[Series {
                label: "Wait of the oldest runnable job",
                values: wait_s,
            }],
        ),
    ];
    Ok(format!(
        "<section id=\"history\" aria-labelledby=\"history-title\"><h2 id=\"history-title\">History: the last {}</h2>\
         {picker}<p class=\"hint\">Counted by the server each minute (throughput, failures) and sampled once a \
         minute (depth, start delay), so a reload keeps them; kept for the finished-job retention (24 h by \
         default). Totals over the range:</p>{totals}<div class=\"charts\">{}</div></section>",
        esc(label),
        charts.concat()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Minutes land in their slot from the window's start; quiet minutes count zero; the current minute without a
    /// sample is a gap.
    #[test]
    fn minutes_fill_their_slots() {
        let answer = json!({
            "since": "2026-12-01T10:00:30Z",
            "items": [
                {"minute": "2026-12-01T10:01:00Z", "completed": 5, "enqueued": 7, "failed": 1, "discarded": 0,
                 "cancelled": 0, "available": 3, "running": 2, "oldest_wait_ms": 1500},
                {"minute": "2026-12-01T09:00:00Z", "completed": 99}
            ]
        });
        let c = columns(&answer, 3);
        assert_eq!(c.since.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!(c.counts[0], vec![Some(0.0), Some(5.0), Some(0.0)]);
        assert_eq!(c.samples[2], vec![Some(0.0), Some(1500.0), None]);
        assert_eq!(range("6h").1, 360);
        assert_eq!(range("bogus").1, 60);
    }
}
