"""Draws a soak CSV (`ordo bench --steady-rate … --csv FILE`) as one PNG of four panels sharing the time axis:
throughput, enqueue→start delay, claim statement time, and dead tuples with the hot table's size.

Usage: python soak_chart.py SOAK.csv OUT.png [TITLE]
Prints the drift figures BENCHMARKS.md quotes (first and last 10 % of the run compared) as one JSON line.
"""

import csv
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def column(rows, name):
    return [float(r[name]) if r[name] != "" else float("nan") for r in rows]


def mean_of(values):
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")


def panel(ax, title, minutes, series):
    """One panel of millisecond series."""
    for values, label, style in series:
        ax.plot(minutes, values, label=label, **style)
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title)


def drift(values):
    """Mean of the last tenth of the run over the mean of the first tenth."""
    n = max(1, len(values) // 10)
    first, last = mean_of(values[:n]), mean_of(values[-n:])
    return first, last, (last / first if first else float("nan"))


def main():
    src, out = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "ordo soak"
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        sys.exit(f"{src}: fewer than two samples")
    # A last line taken when the load ended between two samples covers a shorter window: leave it out.
    typical = statistics.median(float(r["enqueued"]) for r in rows)
    if len(rows) > 2 and float(rows[-1]["enqueued"]) < typical / 2:
        rows = rows[:-1]
    minutes = [float(r["secs"]) / 60 for r in rows]
    mib = 1024 * 1024

    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 12), constrained_layout=True)
    fig.suptitle(title, fontsize=13)

    ax = axes[0]
    ax.plot(minutes, column(rows, "throughput_per_s"), label="jobs run per second", color="tab:blue")
    rate = [float(r["enqueued"]) for r in rows]
    secs = [float(rows[0]["secs"])] + [float(b["secs"]) - float(a["secs"]) for a, b in zip(rows, rows[1:])]
    ax.plot(minutes, [e / s if s else float("nan") for e, s in zip(rate, secs)], label="jobs enqueued per second",
            color="tab:gray", linestyle="--")
    ax.set_ylabel("jobs / s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title("Throughput")

    panel(axes[1], "Enqueue → handler start", minutes, [
        (column(rows, "start_p50_ms"), "p50", {"color": "tab:green"}),
        (column(rows, "start_p99_ms"), "p99", {"color": "tab:red"}),
    ])
    panel(axes[2], "Claim", minutes, [
        (column(rows, "claim_mean_ms"), "statement mean (pg_stat_statements)", {"color": "tab:purple"}),
        (column(rows, "claim_p99_ms"), "claim p99 as workers time it (histogram)", {"color": "tab:red"}),
        (column(rows, "claim_max_ms"), "statement max", {"color": "tab:orange", "alpha": 0.5, "linewidth": 0.8}),
    ])

    ax = axes[3]
    ax.plot(minutes, [v / 1e6 for v in column(rows, "dead_tuples")], label="dead tuples in job (millions)",
            color="tab:brown")
    ax.plot(minutes, [v / 1e6 for v in column(rows, "dead_tuples_all")],
            label="dead tuples in all queue tables (millions)", color="tab:brown", linestyle=":")
    ax.set_ylabel("million tuples")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    size = ax.twinx()
    size.plot(minutes, [v / mib for v in column(rows, "table_bytes")], label="job heap (MiB)", color="tab:cyan")
    size.plot(minutes, [v / mib for v in column(rows, "index_bytes")], label="job indexes (MiB)",
              color="tab:olive")
    size.set_ylabel("MiB")
    size.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = size.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    ax.set_title("Hot table: dead tuples and size")
    ax.set_xlabel("minutes since the load started")

    fig.savefig(out, dpi=90)

    figures = {}
    for name in ("throughput_per_s", "start_p50_ms", "start_p99_ms", "claim_mean_ms", "claim_p99_ms"):
        first, last, ratio = drift(column(rows, name))
        figures[name] = {"first": round(first, 3), "last": round(last, 3), "drift": round(ratio, 3)}
    figures["peak_dead_tuples"] = int(max(column(rows, "dead_tuples")))
    figures["peak_dead_tuples_all"] = int(max(column(rows, "dead_tuples_all")))
    figures["peak_table_mib"] = round(max(column(rows, "table_bytes")) / mib, 1)
    figures["peak_index_mib"] = round(max(column(rows, "index_bytes")) / mib, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
