#!/usr/bin/env bash
# Orchestration figures: sync event latency over HTTP (wrk) and async executions per second with one worker.
# Usage: benches/orchestration.sh [path/to/ordo]   (needs DATABASE_URL of a server where it may create databases)
#
# Each workload starts from a database of its own (migrated, 1 000 entities of a 3-rule workflow, their CREATE
# events run), so no figure depends on what an earlier workload left in the tables.
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
admin=${DATABASE_URL:?set DATABASE_URL to a server}
base=${admin%/*}
prefix="ordo_orch_bench_$$"
port=18090
url=http://127.0.0.1:$port
lua="$(dirname "$0")/http_event_sync.lua"
entities=${ENTITIES:-1000}
n=0
api=""
worker=""

stop() {
  for p in $worker $api; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  worker=""
  api=""
}
cleanup() {
  stop
  for i in $(seq 1 $n); do psql "$admin" -qc "drop database if exists ${prefix}_$i with (force)"; done
}
trap cleanup EXIT

start_worker() {
  RUST_LOG=warn "$ordo" worker --concurrency ${WORKER_CONCURRENCY:-64} &
  worker=$!
}

# No job of the events' queue waits or runs (index probes only: a count over the event log would take a share of
# the two cores from the drain it measures).
settled() {
  [ "$(psql "$DATABASE_URL" -qAt -c "select exists (select 1 from job where state in ('available', 'retryable') \
    and queue = 'default' and run_at <= now()) or exists (select 1 from job where leased_until is not null)")" = f ]
}

# A database of its own, the API and a worker on it, the workflow and the entities.
fresh() {
  stop
  n=$((n + 1))
  psql "$admin" -qc "create database ${prefix}_$n"
  export DATABASE_URL="$base/${prefix}_$n"
  "$ordo" migrate >/dev/null
  key=$("$ordo" account create bench | sed -n 's/^api_key=//p')
  ORDO_RATE_LIMIT_RPS=0 ORDO_LISTEN=127.0.0.1:$port RUST_LOG=warn "$ordo" api &
  api=$!
  start_worker
  until curl -sf $url/readyz >/dev/null; do sleep 0.1; done
  auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
  curl -sf -X PUT "$url/api/workflows/BENCH::A" "${auth[@]}" -d '{
    "statuses": [{"name": "CREATED"}, {"name": "ACTIVE"}],
    "rulesets": [{"name": "Touch", "entity_type": "BENCH", "rules": [
      {"name": "core.SetState", "props": {"status": "ACTIVE"}},
      {"name": "core.SetAttribute", "props": {"name": "last", "value": "{{event.attributes.n}}"}},
      {"name": "core.Log", "props": {"message": "touched {{entity.ref}}"}}]}]}' >/dev/null
  for i in $(seq 0 $((entities - 1))); do
    echo "{\"type\":\"BENCH\",\"subtype\":\"A\",\"ref\":\"b-$i\"}"
  done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -X POST "$url/api/entities" "${auth[@]}" -d {}
  until settled; do sleep 0.2; done
  psql "$DATABASE_URL" -qc "analyze; checkpoint"
}

# Executions/s of the events queued while no worker ran, from the worker's start to the last one's commit.
drain() {
  local start
  start=$(psql "$DATABASE_URL" -qAt -c "select now()")
  start_worker
  until settled; do sleep 0.2; done
  psql "$DATABASE_URL" -qAt -c "select count(*) || ' events, ' || round(count(*) / extract(epoch from max(processed_at) - '$start'::timestamptz)) || ' executions/s' from event where kind = 'orchestration' and name = 'Touch' and processed_at > '$start'::timestamptz"
}

# Queues events for `seconds` over `count` entities while no worker runs.
queue_events() {
  local seconds=$1 count=$2
  kill -TERM "$worker" && wait "$worker" || true
  ORDO_EVENT_PATH=/api/events ORDO_API_KEY=$key ORDO_ENTITIES=$count wrk -t2 -c16 -d${seconds}s -s "$lua" "$url" >/dev/null
}

fresh
echo "sync events, 32 connections:"
ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t2 -c32 -d20s --latency -s "$lua" "$url" | grep -E "Requests/sec|  50%|  99%"
fresh
echo "sync events, 32 connections pausing 40 ms after each answer (clients with think time):"
ORDO_DELAY_MS=40 ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t2 -c32 -d20s --latency -s "$lua" "$url" | grep -E "Requests/sec|  50%|  99%"
fresh
echo "sync events, 1 connection (latency at low load):"
ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t1 -c1 -d10s --latency -s "$lua" "$url" | grep -E "Requests/sec|  50%|  99%"
fresh
echo "async executions (events over $entities entities queued for ${ASYNC_SECONDS:-20} s with no worker, then one worker):"
queue_events "${ASYNC_SECONDS:-20}" "$entities"
drain
fresh
echo "serial chain (events of one entity queued for 3 s with no worker, then one worker):"
queue_events 3 1
drain
