#!/usr/bin/env bash
# Dashboard page times for BENCHMARKS.md: fills a scratch database with 1 000 000 jobs of one account (plus a
# second account's 100 000, so tenancy filters have something to skip), starts `ordo api`, signs in through the
# form and times every page N times with curl (time to the last byte on 127.0.0.1, which is the server's time plus
# a loopback round trip). Prints p50 / p95 / max per page in milliseconds.
# Usage: benches/ui.sh [path/to/ordo]   (default: $CARGO_TARGET_DIR/release/ordo, else target/release/ordo)
# Env: ADMIN_URL [postgres://postgres@127.0.0.1:5432/postgres] (a server where we may create a database),
#      JOBS [1000000], N [50] requests per page, PORT [18089].
set -euo pipefail
ordo=${1:-${CARGO_TARGET_DIR:-target}/release/ordo}
admin_url=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
jobs=${JOBS:-1000000}
n=${N:-50}
port=${PORT:-18089}
db=ordo_ui_bench_$$
base_url=${admin_url%/*}
export DATABASE_URL="$base_url/$db"
export ORDO_ADMIN_TOKEN=bench-admin-token ORDO_LISTEN=127.0.0.1:$port ORDO_RATE_LIMIT_RPS=0 RUST_LOG=error
unset REDIS_URL

psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
api_pid=
cleanup() {
    if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
    psql "$admin_url" -c "drop database if exists $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql "$admin_url" -c "create database $db"
"$ordo" migrate >/dev/null
key=$("$ordo" account create bench | sed -n 's/^api_key=//p')
other=$("$ordo" account create rival | sed -n 's/^api_key=//p')

echo "filling: $jobs jobs of account bench, $((jobs / 10)) of account rival" >&2
start=$(date +%s)
# 4 queues x 8 kinds; 90% completed, 4% discarded (with an error), 1% cancelled, 5% available; spread over a day.
psql "$DATABASE_URL" <<SQL
insert into job (account_id, queue, kind, args, state, attempt, max_attempts, run_at, created_at, started_at,
                 finished_at, errors, result)
select 'bench', 'q' || (g % 4), 'kind-' || (g % 8),
       jsonb_build_object('id', g, 'pad', repeat('x', 40)),
       case when g % 100 < 90 then 'completed' when g % 100 < 94 then 'discarded'
            when g % 100 < 95 then 'cancelled' else 'available' end,
       case when g % 100 < 95 then 1 else 0 end, 1,
       now() - make_interval(secs => ($jobs - g) * 86400.0 / $jobs),
       now() - make_interval(secs => ($jobs - g) * 86400.0 / $jobs),
       case when g % 100 < 95 then now() - make_interval(secs => ($jobs - g) * 86400.0 / $jobs) end,
       case when g % 100 < 95 then now() - make_interval(secs => ($jobs - g) * 86400.0 / $jobs) end,
       case when g % 100 between 90 and 93
            then jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), 'message', 'boom')) else '[]' end,
       case when g % 100 < 90 then '{"ok": true}'::jsonb end
from generate_series(1, $jobs) g;
insert into job (account_id, queue, kind, args, state)
select 'rival', 'q' || (g % 4), 'kind-' || (g % 8), '{}', 'available' from generate_series(1, $jobs / 10) g;
vacuum analyze job;
SQL
echo "filled in $(( $(date +%s) - start )) s" >&2

"$ordo" api 2>"${TMPDIR:-/tmp}/ui-bench-api.log" &
api_pid=$!
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
done

# Sign in through the form; the cookie is Secure, so send it by hand rather than through curl's jar.
login() {
    curl -s -o /dev/null -D - "http://127.0.0.1:$port/ui/login" --data-urlencode "key=$1" \
        | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\);.*/\1/p'
}
cookie=$(login "$key")
admin_cookie=$(login "$ORDO_ADMIN_TOKEN")
[ -n "$cookie" ] && [ -n "$admin_cookie" ] || { echo "sign-in failed" >&2; exit 1; }

# A job in the middle of the table, and the cursor of the jobs list's second page.
mid=$(psql "$DATABASE_URL" -At -c "select id from job where account_id = 'bench' and state = 'discarded' order by id limit 1 offset 20000")
cursor=$(curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/api/jobs?limit=50" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"])')

# time_page NAME PATH HEADER: N timed GETs of PATH with HEADER (a session cookie, or an API key for comparison).
time_page() {
    local name=$1 path=$2 h=$3
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "$h" "http://127.0.0.1:$port$path")
    if [ "$status" != 200 ]; then
        printf '%-44s HTTP %s\n' "$name" "$status"
        return 0
    fi
    for _ in $(seq 1 "$n"); do
        curl -s -o /dev/null -w '%{time_total}\n' -H "$h" "http://127.0.0.1:$port$path"
    done | python3 -c '
import sys
name = sys.argv[1]
t = sorted(float(x) * 1000 for x in sys.stdin)
pct = lambda p: t[min(len(t) - 1, int(round(p / 100 * (len(t) - 1))))]
print(f"{name:<44} p50 {pct(50):7.1f} ms   p95 {pct(95):7.1f} ms   max {t[-1]:7.1f} ms")
' "$name"
}

echo "page times over $n requests each (account with $jobs jobs):"
time_page "overview" "/ui/overview" "Cookie: $cookie"
time_page "overview live fragment" "/ui/fragments/overview" "Cookie: $cookie"
time_page "jobs, newest first" "/ui/jobs" "Cookie: $cookie"
time_page "jobs, second page (cursor)" "/ui/jobs?cursor=$cursor" "Cookie: $cookie"
time_page "jobs, queue=q1" "/ui/jobs?queue=q1" "Cookie: $cookie"
time_page "jobs, state=discarded" "/ui/jobs?state=discarded" "Cookie: $cookie"
time_page "jobs, state=available (5%)" "/ui/jobs?state=available" "Cookie: $cookie"
time_page "jobs, kind=kind-3" "/ui/jobs?kind=kind-3" "Cookie: $cookie"
time_page "jobs, queue=q1 state=discarded kind=kind-1" "/ui/jobs?queue=q1&state=discarded&kind=kind-1" "Cookie: $cookie"
time_page "jobs, kind=no-such-kind (matches nothing)" "/ui/jobs?kind=no-such-kind" "Cookie: $cookie"
time_page "job detail" "/ui/jobs/$mid" "Cookie: $cookie"
time_page "entities (search form)" "/ui/entities" "Cookie: $cookie"
time_page "workflows" "/ui/workflows" "Cookie: $cookie"
time_page "schedules" "/ui/schedules" "Cookie: $cookie"
time_page "overview (admin: pool versions)" "/ui/overview" "Cookie: $admin_cookie"
time_page "pools (admin)" "/ui/pools" "Cookie: $admin_cookie"
time_page "accounts (admin)" "/ui/accounts" "Cookie: $admin_cookie"
echo "the API calls behind the slowest pages, for comparison:"
time_page "GET /api/queues (behind the overview)" "/api/queues" "Authorization: Bearer $key"
time_page "GET /api/pools (behind the admin overview)" "/api/pools" "Authorization: Bearer $ORDO_ADMIN_TOKEN"
time_page "GET /api/jobs?limit=50" "/api/jobs?limit=50" "Authorization: Bearer $key"
