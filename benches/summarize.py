"""Summarises `ordo bench --json` lines from stdin: median (min..max) of each figure. Usage: summarize.py NAME"""
import json
import statistics
import sys


def fig(runs, key, digits=0):
    xs = sorted(r[key] for r in runs if r.get(key) is not None)
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} ({xs[0]:.{digits}f}..{xs[-1]:.{digits}f})"


def main():
    name = sys.argv[1]
    runs = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
    if not runs:
        print(f"{name}: no result")
        return
    parts = [f"enqueue/s {fig(runs, 'enqueue_per_s')}", f"drain/s {fig(runs, 'drain_per_s')}"]
    lat = [r["latency_ms"] for r in runs if r.get("latency_ms")]
    if lat:
        flat = [{"p50": l["p50"], "p99": l["p99"]} for l in lat]
        parts.append(f"latency p50 {fig(flat, 'p50', 2)} ms, p99 {fig(flat, 'p99', 2)} ms")
    # `ordo bench` reports statements, memory and dead tuples; other drivers (benches/apalis) do not.
    if all("statements" in r for r in runs):
        for r in runs:
            if r.get("claim_ms") is None:
                # Older binaries: take the claim statement's mean from the statement list.
                means = [st["mean_ms"] for st in r.get("statements", []) if "with candidate" in st["query"]]
                r["claim_ms"] = means[0] if means else None
            settle = [
                st
                for st in r.get("statements", [])
                if st["query"].startswith("update job set state = $4")
                or st["query"].startswith("with done as ( update job set state = $")
                or st["query"].startswith("with done as ( delete from job using job_leases")
            ]
            r["settle_ms"] = settle[0]["mean_ms"] if settle else None
        parts.append(f"claim statement {fig(runs, 'claim_ms', 2)} ms")
        parts.append(f"settle statement {fig(runs, 'settle_ms', 2)} ms")
        if any(r.get("hot_key_per_s") is not None for r in runs):
            parts.append(f"hot key serial/s {fig(runs, 'hot_key_per_s')}")
        parts.append(f"worker peak rss {max(r['worker_max_rss_mib'] for r in runs)} MiB")
        parts.append(f"dead tuples after {runs[-1]['dead_tuples']}")
    print(f"{name} [{len(runs)} runs]: " + "; ".join(parts))


main()
