#!/usr/bin/env bash
# Soak benchmark for BENCHMARKS.md (a benchmark, not a test): `ordo bench` enqueues noop jobs at a fixed rate for
# MINUTES while its workers run them, with a transaction holding a snapshot open for the whole run (pinned xmin, as
# a long report or a forgotten session does), and samples every SAMPLE_SECS: throughput, enqueue→start p50/p99, the
# claim statement's time, and dead tuples and size of every queue table and index. It writes OUT.csv,
# OUT-relations.csv and OUT.json, then draws OUT.png (matplotlib, pinned, in a virtual environment of its own) and
# prints the drift figures: first against last tenth of the run.
#
# Usage: benches/soak.sh [path/to/ordo]      (default: target/release/ordo)
# MINUTES=30 RATE=1000 CONCURRENCY=64 SAMPLE_SECS=10 PIN_XMIN=1 OUT=benches/results/soak
# Without DATABASE_URL, `ordo bench` starts a private PostgreSQL configured as in BENCH.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
minutes=${MINUTES:-30}
rate=${RATE:-1000}
concurrency=${CONCURRENCY:-64}
sample_secs=${SAMPLE_SECS:-10}
out=${OUT:-benches/results/soak}
pin=()
if [ "${PIN_XMIN:-1}" = 1 ]; then
    pin=(--pin-xmin)
fi
mkdir -p "$(dirname "$out")"

venv=${SOAK_VENV:-$HOME/.cache/ordo-soak-venv}
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'matplotlib==3.9.2'
fi

echo "soak: $rate jobs/s for $minutes min, concurrency $concurrency, a sample every $sample_secs s${pin:+, xmin pinned}" >&2
"$ordo" bench --json --steady-rate "$rate" --steady-secs $((minutes * 60)) --sample-secs "$sample_secs" \
    --concurrency "$concurrency" --latency-samples 0 "${pin[@]}" --csv "$out.csv" >"$out.json"
"$venv/bin/python" benches/soak_chart.py "$out.csv" "$out.png" \
    "ordo soak: $rate jobs/s for $minutes min, concurrency $concurrency$([ ${#pin[@]} -gt 0 ] && echo ', xmin pinned throughout')"
