#!/usr/bin/env bash
# Load figures for BENCHMARKS.md: `ordo load` of a CSV file through `ordo api` and one `ordo worker` process.
#   changed:   every record changes its position (positions created, `InventoryChanged` queued for each; the
#              workflow INVENTORY_POSITION::DEFAULT is present). The file is sent with no worker running, then the
#              worker starts: "ingest" is the API's rate, "apply" the worker's (first chunk started → last batch
#              complete: positions written and events queued, before any event runs), "serial" both one after
#              the other.
#   unchanged: the same records again into a second load, fully pipelined (worker running while the client sends,
#              after the events of the first pass have run): client clock, file read → every batch complete.
# Usage: benches/loads.sh [path/to/ordo]   (needs DATABASE_URL of a server where it may create a database)
# RECORDS=100000 (records in the file), RUNS=3 (a fresh database each run), WORKFLOW=0 (no workflow: no events).
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
admin=${DATABASE_URL:?set DATABASE_URL to a server}
base=${admin%/*}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
records=${RECORDS:-100000}
runs=${RUNS:-3}
batches=$(( (records + 4999) / 5000 ))
port=18091
url=http://127.0.0.1:$port
dir=$(mktemp -d)
file=$dir/stock.csv
db=""
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "$db" ] && psql "$admin" -qc "drop database if exists $db with (force)" >/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

awk -v n="$records" 'BEGIN { print "sku_ref,location_ref,qty"; for (i = 0; i < n; i++) printf "SKU-%07d,DC-%02d,%d\n", i, i % 40, i % 997 }' > "$file"
q() { psql "$DATABASE_URL" -qAt -c "$1"; }
now() { date +%s.%N; }
rate() { python3 -c "print(round($1 / ($2)))"; }

ingest=(); apply=(); serial=(); unchanged=()
for run in $(seq 1 "$runs"); do
    db="ordo_load_bench_$$_$run"
    psql "$admin" -qc "create database $db"
    export DATABASE_URL="$base/$db"
    "$ordo" migrate >/dev/null
    key=$("$ordo" account create bench | sed -n 's/^api_key=//p')
    ORDO_RATE_LIMIT_RPS=0 ORDO_LISTEN=127.0.0.1:$port RUST_LOG=warn,sqlx=error "$ordo" api &
    api=$!
    until curl -sf $url/readyz >/dev/null; do sleep 0.1; done
    if [ "${WORKFLOW:-1}" = 1 ]; then
        curl -sf -X PUT "$url/api/workflows/INVENTORY_POSITION::DEFAULT" -H "Authorization: Bearer $key" \
            -H 'Content-Type: application/json' -d '{
          "statuses": [{"name": "CREATED"}],
          "rulesets": [{"name": "InventoryChanged", "entity_type": "INVENTORY_POSITION", "rules": [
            {"name": "core.SetAttribute", "props": {"name": "on_hand", "value": "{{event.attributes.on_hand}}"}}]}]}' >/dev/null
    fi
    q "checkpoint" >/dev/null

    # Changed: ingest with no worker, then apply.
    t0=$(now)
    ORDO_URL=$url ORDO_API_KEY=$key "$ordo" load "$file" --load-name stock-changed > "$dir/changed.json" 2>/dev/null &
    client=$!
    until [ "$(q "select count(*) from load_batch")" -ge "$batches" ]; do sleep 0.02; done
    t1=$(now)
    RUST_LOG=warn,sqlx=error "$ordo" worker &
    worker=$!
    wait $client
    t2=$(now)
    applied=$(q "select extract(epoch from max(completed_at) - min(started_at)) from load_batch")
    events=$(q "select count(*) from event where name = 'InventoryChanged' and kind = 'orchestration'")
    ingest+=("$(rate "$records" "$t1 - $t0")")
    apply+=("$(rate "$records" "$applied")")
    serial+=("$(rate "$records" "$t1 - $t0 + $applied")")
    echo "run $run changed: ingest ${ingest[-1]}/s, apply ${apply[-1]}/s, serial ${serial[-1]}/s, $events events queued; $(cat "$dir/changed.json")"

    # Unchanged: pipelined, once the events of the first pass have run.
    until [ "$(q "select count(*) from job where state in ('available', 'running', 'retryable')")" = 0 ]; do sleep 0.5; done
    q "checkpoint" >/dev/null
    t0=$(now)
    ORDO_URL=$url ORDO_API_KEY=$key "$ordo" load "$file" --load-name stock-unchanged > "$dir/unchanged.json" 2>/dev/null
    t1=$(now)
    unchanged+=("$(rate "$records" "$t1 - $t0")")
    echo "run $run unchanged: ${unchanged[-1]}/s end to end; $(cat "$dir/unchanged.json")"

    kill -TERM $api $worker; wait $api $worker || true
    psql "$admin" -qc "drop database if exists $db with (force)" >/dev/null
    db=""
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%d (%d..%d)", a[int((NR+1)/2)], a[1], a[NR]}'; }
echo "median (min..max) of $runs runs, records/s:"
echo "  changed, ingest (API):               $(median "${ingest[@]}")"
echo "  changed, apply (worker, events queued): $(median "${apply[@]}")"
echo "  changed, serial (ingest then apply): $(median "${serial[@]}")"
echo "  unchanged, end to end (pipelined):   $(median "${unchanged[@]}")"
