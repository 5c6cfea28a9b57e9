#!/usr/bin/env bash
# Queue figures for BENCHMARKS.md: each scenario three times, printing the median, min and max.
# Usage: benches/queue.sh [path/to/ordo]   (default: target/release/ordo; build with `cargo build --release`)
# Without DATABASE_URL, `ordo bench` starts a private PostgreSQL configured as in BENCH.md for each run.
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

run() {
    local name=$1
    shift
    for _ in 1 2 3; do
        "$ordo" bench --json "$@" 2>/dev/null
    done | python3 -c '
import json, statistics, sys
name = sys.argv[1]
runs = [json.loads(l) for l in sys.stdin if l.strip()]
def fig(key):
    xs = sorted(r[key] for r in runs if r.get(key) is not None)
    return f"{statistics.median(xs):.0f} ({xs[0]:.0f}..{xs[-1]:.0f})" if xs else "-"
lat = [r["latency_ms"] for r in runs if r.get("latency_ms")]
p50 = sorted(l["p50"] for l in lat); p99 = sorted(l["p99"] for l in lat)
claim = sorted(r["claim_ms"] for r in runs if r.get("claim_ms") is not None)
print(f"{name}: enqueue/s {fig(\"enqueue_per_s\")}; drain/s {fig(\"drain_per_s\")}", end="")
if lat: print(f"; latency p50 {statistics.median(p50):.2f} ms ({p50[0]:.2f}..{p50[-1]:.2f}), p99 {statistics.median(p99):.2f} ms ({p99[0]:.2f}..{p99[-1]:.2f})", end="")
if claim: print(f"; claim {statistics.median(claim):.2f} ms", end="")
print(f"; worker rss {max(r[\"worker_max_rss_mib\"] for r in runs)} MiB; dead tuples {runs[-1][\"dead_tuples\"]}")
' "$name"
}

run "1 worker, concurrency 256" --jobs 100000 --concurrency 256 --workers 1
run "1 worker, concurrency 1000" --jobs 100000 --concurrency 1000 --workers 1 --latency-samples 0
run "2 workers, concurrency 500" --jobs 100000 --concurrency 500 --workers 2 --latency-samples 0
run "bulk enqueue, 10 000 per transaction" --jobs 100000 --batch 10000 --concurrency 1000 --latency-samples 0
run "1 000 000 finished jobs in the table" --jobs 100000 --concurrency 1000 --preload-finished 1000000 --latency-samples 0
run "1 000 000-job backlog" --jobs 100000 --concurrency 1000 --backlog 1000000 --latency-samples 0
