#!/usr/bin/env bash
# Queue figures for BENCHMARKS.md: each scenario three times, printing the median, min and max.
# Usage: benches/queue.sh [path/to/ordo] [scenario-filter]   (default: target/release/ordo)
# RUNS=3 (runs per scenario), GROWTH_RUNS=1 (runs of the two growth scenarios).
# Without DATABASE_URL, `ordo bench` starts a private PostgreSQL configured as in BENCH.md for each run.
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

filter=${2:-}
runs=${RUNS:-3}

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
run() {
    local name=$1
    shift
    repeat "$name" "$ordo" bench --json "$@"
}

run "1 worker, concurrency 256" --jobs 100000 --concurrency 256 --workers 1
run "1 worker, concurrency 1000" --jobs 100000 --concurrency 1000 --workers 1 --latency-samples 0
run "1 worker, concurrency 64" --jobs 100000 --concurrency 64 --workers 1 --latency-samples 0
run "1 worker, concurrency 16" --jobs 100000 --concurrency 16 --workers 1 --latency-samples 0
run "2 workers, concurrency 64" --jobs 100000 --concurrency 64 --workers 2 --latency-samples 0
run "1 worker, concurrency 64, prefetch 1000" --jobs 100000 --concurrency 64 --prefetch 1000 --workers 1 --latency-samples 0
run "2 workers, concurrency 64, prefetch 1000" --jobs 100000 --concurrency 64 --prefetch 1000 --workers 2 --latency-samples 0
run "100 000 jobs over 1 000 keys" --jobs 100000 --concurrency 256 --workers 1 --keys 1000 --latency-samples 0
run "hot key of 20 000 jobs beside 100 000 unkeyed" --jobs 100000 --concurrency 256 --workers 1 --hot-key 20000 --latency-samples 0
run "bulk enqueue, 10 000 per transaction" --jobs 100000 --batch 10000 --concurrency 1000 --latency-samples 0
# Growth: once each by default (the set-up alone takes about a minute); RUNS=3 for the full method.
runs=${GROWTH_RUNS:-1}
run "1 000 000 finished jobs in the table" --jobs 100000 --concurrency 1000 --preload-finished 1000000 --latency-samples 0
run "1 000 000-job backlog" --jobs 100000 --concurrency 1000 --backlog 1000000 --latency-samples 0
