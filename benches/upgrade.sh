#!/usr/bin/env bash
# Upgrade under load for BENCHMARKS.md: the previous release's `ordo` creates its schema and its workers drain a
# 1 000 000-job backlog while this release's migrations are applied (`ordo bench --upgrade-from`), as in a rolling
# upgrade; prints the JSON summary: each migration's time, the longest pause of the drain while they ran against the
# longest before them, and the drain rates before, during and after.
#
# Usage: benches/upgrade.sh [path/to/new/ordo] [path/to/previous/ordo]
#   Without a previous binary, PREV_REV (a commit, default the one before fair share, 6a225a7) is checked out into a
#   scratch worktree and built in release mode (its own target directory under ~/.cache, reused next time).
# BACKLOG=1000000 WORKERS=2 CONCURRENCY=64 RUNS=1
set -euo pipefail
cd "$(dirname "$0")/.."
new=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
prev=${2:-}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
if [ -z "$prev" ]; then
    rev=${PREV_REV:-6a225a7}
    tree=${PREV_TREE:-$HOME/.cache/ordo-prev-$rev}
    [ -d "$tree" ] || git worktree add --detach "$tree" "$rev"
    (cd "$tree" && CARGO_TARGET_DIR="$HOME/.cache/ordo-target-prev" SQLX_OFFLINE=true cargo build --release --locked --bin ordo)
    prev="$HOME/.cache/ordo-target-prev/release/ordo"
fi
for _ in $(seq 1 "${RUNS:-1}"); do
    "$new" bench --json --backlog "${BACKLOG:-1000000}" --workers "${WORKERS:-2}" --concurrency "${CONCURRENCY:-64}" \
        --latency-samples 0 --upgrade-from "$prev"
done
