//! Line charts as inline SVG, drawn on the server: a title, both axes with labelled ticks and units, and a legend.
//!
//! Geometry goes in attributes and colours in CSS classes (`series-N`), so the content security policy's ban on
//! inline style holds and dark mode recolours the charts. Every string is escaped; the chart is an `img` with a
//! text alternative that states each series' peak and total.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};

use super::html::esc;

/// One line of a chart.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// One value per point of the x axis; `None` draws nothing there (a gap).
    pub values: Vec<Option<f64>>,
}

/// Drawing area inside the SVG's coordinates (the SVG scales to its box).
const W: f64 = 560.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 40.0;

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v` (at least 1): the top of the y axis.
pub fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * mag >= v {
            return step * mag;
        }
    }
    10.0 * mag
}

/// A figure: caption `title`, a chart of `series` over the minutes from `start` (one point per minute), the y
/// axis labelled `unit`, and a legend. `id` names the figure for links and tests.
pub fn line_chart(id: &str, title: &str, unit: &str, start: DateTime<Utc>, series: &[Series]) -> String {
    let points = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let peak = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = nice_max(peak);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| {
        LEFT + if points > 1 {
            plot_w * i as f64 / (points - 1) as f64
        } else {
            0.0
        }
    };
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut svg = String::new();
    // Grid and y ticks: 0, half, top.
    for frac in [0.0, 0.5, 1.0] {
        let v = top * frac;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            x2 = W - RIGHT,
            yy = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
            label = number(v),
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\"/>",
        b = H - BOTTOM,
        r = W - RIGHT,
    );
    // X ticks: first, middle and last minute, as UTC clock times.
    if points > 0 {
        let mut ticks = vec![0, (points - 1) / 2, points - 1];
        ticks.dedup();
        for (n, i) in ticks.iter().enumerate() {
            let at = start + Duration::minutes(*i as i64);
            let anchor = match n {
                0 => "start",
                _ if *i == points - 1 => "end",
                _ => "middle",
            };
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                x(*i),
                H - BOTTOM + 14.0,
                at.format("%H:%M")
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">Time (UTC, one point per minute)</text>\
         <text x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        LEFT + plot_w / 2.0,
        H - 6.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(unit)
    );
    let mut legend = String::new();
    let mut summary = Vec::new();
    for (n, s) in series.iter().enumerate() {
        let class = format!("series-{}", n % 4 + 1);
        // Consecutive known values form one polyline; a gap starts the next.
        let mut runs: Vec<Vec<String>> = vec![Vec::new()];
        for (i, v) in s.values.iter().enumerate() {
            match (v, runs.last_mut()) {
                (Some(v), Some(run)) => run.push(format!("{:.1},{:.1}", x(i), y(*v))),
                _ => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            // A lone point still shows: it is drawn as a short flat line.
            let pts = if run.len() == 1 {
                format!("{0} {0}", run[0])
            } else {
                run.join(" ")
            };
            let _ = write!(svg, "<polyline class=\"line {class}\" points=\"{pts}\"/>");
        }
        let known: Vec<f64> = s.values.iter().flatten().copied().collect();
        let max = known.iter().fold(0.0f64, |a, b| a.max(*b));
        let total: f64 = known.iter().sum();
        let _ = write!(legend, "<li class=\"{class}\">{}</li>", esc(s.label));
        summary.push(format!("{}: peak {}, sum {}", s.label, number(max), number(total)));
    }
    format!(
        "<figure class=\"chart\" id=\"{id}\"><figcaption id=\"{id}-title\">{title}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" \
         preserveAspectRatio=\"xMidYMid meet\"><desc id=\"{id}-desc\">{desc}</desc>{svg}</svg>\
         <ul class=\"legend\" aria-label=\"Legend\">{legend}</ul></figure>",
        id = esc(id),
        title = esc(title),
        desc = esc(&format!("{} ({}). {}.", title, unit, summary.join("; "))),
    )
}

/// A tick or summary figure: whole numbers as they are, others with one decimal.
fn number(v: f64) -> String {
    if v.fract() == 0.0 || v >= 100.0 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The y axis tops out at 1, 2 or 5 times a power of ten.
    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    /// A chart has its title, axis labels with the unit, a legend entry per series, a line per run of known
    /// values, and no inline style; labels are escaped.
    #[test]
    fn chart_is_labelled_and_style_free() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let svg = line_chart(
            "c",
            "Throughput",
            "jobs per minute",
            start,
            &[
                Series {
                    label: "<done>",
                    values: vec![Some(1.0), Some(3.0), None, Some(2.0)],
                },
                Series {
                    label: "failed",
                    values: vec![Some(0.0); 4],
                },
            ],
        );
        assert!(
            svg.contains("<figcaption id=\"c-title\">Throughput</figcaption>"),
            "{svg}"
        );
        assert!(svg.contains(">jobs per minute</text>"), "{svg}");
        assert!(svg.contains(">10:00</text>") && svg.contains(">10:03</text>"), "{svg}");
        assert!(svg.contains("<li class=\"series-1\">&lt;done&gt;</li>"), "{svg}");
        assert_eq!(svg.matches("class=\"line series-1\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"line series-2\"").count(), 1, "{svg}");
        assert!(!svg.contains("style="), "{svg}");
        assert!(svg.contains("peak 3, sum 6"), "{svg}");
    }
}
