#!/usr/bin/env bash
# apalis figures for BENCHMARKS.md: the drain of 100 000 no-op tasks through an apalis worker on ordo
# (apalis-ordo) and on apalis's own PostgreSQL backend (apalis-postgres), and `ordo worker`'s own drain, all on
# one private PostgreSQL configured as in BENCH.md; each scenario three times, printing the median, min and max.
# Usage: benches/apalis.sh [scenario-filter]     RUNS=3 (runs per scenario), JOBS=100000, SMALL_JOBS=10000
# Builds ordo and benches/apalis (apalis-drain) in release first; needs the PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
filter=${1:-}
runs=${RUNS:-3}
jobs=${JOBS:-100000}
target=${CARGO_TARGET_DIR:-target}

export SQLX_OFFLINE=true
cargo build --release --locked --bin ordo
cargo build --release --manifest-path benches/apalis/Cargo.toml --target-dir "$target"
ordo="$target/release/ordo"
drain="$target/release/apalis-drain"

# The private server: BENCH.md's durable settings, run as `postgres` (initdb refuses root).
bin=${PG_BIN:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
data=$(mktemp -d /tmp/apalis-bench-XXXXXX)
chown postgres "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data -c fsync=on -c synchronous_commit=on"
opts="$opts -c full_page_writes=on -c shared_buffers=1GB -c max_wal_size=4GB -c checkpoint_timeout=15min"
opts="$opts -c max_connections=200 -c autovacuum=on"
as_pg "$bin/pg_ctl" -D "$data" -l "$data/postgres.log" -o "$opts" -w -t 60 start >/dev/null
trap 'as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null; rm -rf "$data"' EXIT
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"

# shellcheck source=lib.sh
source benches/lib.sh

# 3 000 held: what `ordo worker --concurrency 1000` holds with its automatic prefetch (up to 2 000 more).
repeat "apalis-ordo, 1 worker, 3000 held" "$drain" ordo --jobs "$jobs" --batch 3000
repeat "apalis-ordo, 1 worker, 1000 held" "$drain" ordo --jobs "$jobs" --batch 1000
repeat "apalis-ordo, 1 worker, 1000 held, parallelize" "$drain" ordo --jobs "$jobs" --batch 1000 --parallel
repeat "apalis-ordo, 1 worker, 256 held" "$drain" ordo --jobs "$jobs" --batch 256
repeat "apalis-postgres, 1 worker, batch 1000" "$drain" postgres --jobs "$jobs" --batch 1000
repeat "apalis-postgres, 1 worker, batch 100" "$drain" postgres --jobs "$jobs" --batch 100
# At its default batch of 10, apalis-postgres takes minutes per 100 000 tasks: SMALL_JOBS of them instead.
repeat "apalis-postgres, 1 worker, batch 10 (its default)" "$drain" postgres --jobs "${SMALL_JOBS:-10000}" --batch 10
repeat "ordo worker, concurrency 1000" "$ordo" bench --json --jobs "$jobs" --concurrency 1000 --workers 1 --latency-samples 0
repeat "ordo worker, concurrency 256" "$ordo" bench --json --jobs "$jobs" --concurrency 256 --workers 1 --latency-samples 0
