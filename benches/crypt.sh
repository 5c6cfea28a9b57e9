#!/usr/bin/env bash
# Encryption at rest: the queue drain (`ordo bench`, private server, BENCH.md's method) and the HTTP enqueue rate
# (`ordo api` on a fresh database of the machine's PostgreSQL, wrk) without and with ORDO_MASTER_KEYS. Runs
# alternate plain/sealed, so drift in the machine's load falls on both alike.
#
#   benches/crypt.sh target/release/ordo [runs]      # one line per measurement: <what> <mode> <value>
set -euo pipefail
ORDO=$(realpath "${1:?usage: benches/crypt.sh path/to/ordo [runs]}")
RUNS=${2:-3}
PG=${PG_URL:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
PORT=${PORT:-18080}
KEYS="bench:$(head -c 32 /dev/urandom | base64)"
cd "$(dirname "$0")/.."

http_runs() {
  local mode=$1 db="ordo_bench_crypt_$$_$2_$1" url key api
  url="$PG/$db?sslmode=disable"
  DATABASE_URL=$url "$ORDO" migrate >/dev/null
  key=$(DATABASE_URL=$url "$ORDO" account create bench 2>/dev/null | sed -n 's/^api_key=//p')
  DATABASE_URL=$url ORDO_RATE_LIMIT_RPS=0 ORDO_LISTEN=127.0.0.1:$PORT RUST_LOG=warn "$ORDO" api 2>/dev/null &
  api=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
  echo "http_single_rps $mode $(ORDO_API_KEY=$key wrk -t1 -c64 -d15s -s benches/http_enqueue.lua \
    "http://127.0.0.1:$PORT" | awk '/Requests\/sec/ {print $2}')"
  echo "http_batch_jobs_per_s $mode $(ORDO_BATCH=1000 ORDO_API_KEY=$key wrk -t1 -c4 -d10s \
    -s benches/http_enqueue.lua "http://127.0.0.1:$PORT" | awk '/Requests\/sec/ {print $2 * 1000}')"
  kill "$api"; wait "$api" 2>/dev/null || true
  psql "$PG/postgres" -qc "drop database \"$db\"" >/dev/null
}

for run in $(seq "$RUNS"); do
  for mode in plain sealed; do
    if [ "$mode" = sealed ]; then export ORDO_MASTER_KEYS=$KEYS; else unset ORDO_MASTER_KEYS; fi
    summary=$(env -u DATABASE_URL "$ORDO" bench --jobs 100000 --concurrency 64 --latency-samples 0 \
      --redis-url "$REDIS" --json 2>/dev/null)
    echo "drain_per_s $mode $(echo "$summary" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["drain_per_s"]))')"
    echo "enqueue_per_s $mode $(echo "$summary" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["enqueue_per_s"]))')"
    http_runs "$mode" "$run"
  done
done
