#!/usr/bin/env bash
# Orchestration figures: sync event latency over HTTP (wrk) and async executions per second with one worker.
# Usage: benches/orchestration.sh [path/to/ordo]   (needs DATABASE_URL of a server where it may create a database)
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
admin=${DATABASE_URL:?set DATABASE_URL to a server}
db="ordo_orch_bench_$$"
base=${admin%/*}
psql "$admin" -qc "create database $db"
export DATABASE_URL="$base/$db"
trap 'kill $(jobs -p) 2>/dev/null; sleep 1; psql "$admin" -qc "drop database if exists $db with (force)"' EXIT
"$ordo" migrate >/dev/null
key=$("$ordo" account create bench | sed -n 's/^api_key=//p')
port=18090
ORDO_RATE_LIMIT_RPS=0 ORDO_LISTEN=127.0.0.1:$port RUST_LOG=warn "$ordo" api &
RUST_LOG=warn "$ordo" worker --concurrency ${WORKER_CONCURRENCY:-64} &
worker=$!
url=http://127.0.0.1:$port
until curl -sf $url/readyz >/dev/null; do sleep 0.1; done
auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
curl -sf -X PUT "$url/api/workflows/BENCH::A" "${auth[@]}" -d '{
  "statuses": [{"name": "CREATED"}, {"name": "ACTIVE"}],
  "rulesets": [{"name": "Touch", "entity_type": "BENCH", "rules": [
    {"name": "core.SetState", "props": {"status": "ACTIVE"}},
    {"name": "core.SetAttribute", "props": {"name": "last", "value": "{{event.attributes.n}}"}},
    {"name": "core.Log", "props": {"message": "touched {{entity.ref}}"}}]}]}' >/dev/null
entities=${ENTITIES:-1000}
for i in $(seq 0 $((entities - 1))); do
  echo "{\"type\":\"BENCH\",\"subtype\":\"A\",\"ref\":\"b-$i\"}"
done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -X POST "$url/api/entities" "${auth[@]}" -d {}
lua="$(dirname "$0")/http_event_sync.lua"
echo "sync events, 32 connections:"
ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t2 -c32 -d20s --latency -s "$lua" "$url" | grep -E "Requests/sec|  50%|  99%"
echo "sync events, 1 connection (latency at low load):"
ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t1 -c1 -d10s --latency -s "$lua" "$url" | grep -E "Requests/sec|  50%|  99%"

# Executions/s of the events queued while no worker ran, from the worker's start to the last one's commit.
drain() {
  local start
  start=$(psql "$DATABASE_URL" -qAt -c "select now()")
  RUST_LOG=warn "$ordo" worker --concurrency ${WORKER_CONCURRENCY:-64} &
  worker=$!
  # Index probes only: a count over the event log would take a share of the two cores from the drain it measures.
  until [ "$(psql "$DATABASE_URL" -qAt -c "select exists (select 1 from job where state in ('available', 'retryable') and queue = 'default' and run_at <= now()) or exists (select 1 from job where leased_until is not null)")" = f ]; do sleep 0.2; done
  psql "$DATABASE_URL" -qAt -c "select count(*) || ' events, ' || round(count(*) / extract(epoch from max(processed_at) - '$start'::timestamptz)) || ' executions/s' from event where kind = 'orchestration' and name = 'Touch' and processed_at > '$start'::timestamptz"
}
kill -TERM $worker; wait $worker || true
echo "async executions (events over $entities entities queued for ${ASYNC_SECONDS:-20} s with no worker, then one worker):"
ORDO_EVENT_PATH=/api/events ORDO_API_KEY=$key ORDO_ENTITIES=$entities wrk -t2 -c16 -d${ASYNC_SECONDS:-20}s -s "$lua" "$url" >/dev/null
drain
kill -TERM $worker; wait $worker || true
echo "serial chain (events of one entity queued for 3 s with no worker, then one worker):"
ORDO_EVENT_PATH=/api/events ORDO_API_KEY=$key ORDO_ENTITIES=1 wrk -t1 -c4 -d3s -s "$lua" "$url" >/dev/null
drain
