#!/usr/bin/env bash
# Fuzzes the HTTP API from its OpenAPI document with schemathesis (pinned in .ci/requirements.txt, installed into a
# virtual environment under the cache directory): a private `ordo api` on a scratch database, every operation with
# every check (.ci/schemathesis.toml: `checks.enabled`, which unlike `--checks all` lets one operation turn off a
# check that cannot apply to it) and 25 examples, once with an account key and once with the admin token. Any 5xx, any answer the
# document does not describe, any schema-valid request refused or schema-violating one accepted fails the run.
#   .ci/schemathesis.sh              builds the debug binary if needed (cargo build --bin ordo)
#   ORDO_BIN=path .ci/schemathesis.sh
#   .ci/schemathesis.sh --include-path-regex '^/api/jobs'   further arguments go to `schemathesis run`
# DATABASE_URL names the server (default postgres://postgres@127.0.0.1:5432); the scratch database is dropped at
# the end. ORDO_SCHEMATHESIS_SEED changes the seed (CI keeps one, so a run is repeatable); failures are written to
# $CARGO_TARGET_DIR/schemathesis/ as reports that replay them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/python.sh
. .ci/python.sh
ordo_python_tools
schemathesis --version

target=${CARGO_TARGET_DIR:-target}
if [ -z "${ORDO_BIN:-}" ]; then
    SQLX_OFFLINE=true cargo build --locked --quiet --bin ordo
    ORDO_BIN="$target/debug/ordo"
fi
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
database="ordo_schemathesis_$$"
export DATABASE_URL="$server/$database"
unset REDIS_URL
work=$(mktemp -d)
reports="$target/schemathesis"
mkdir -p "$reports"
api_pid=

cleanup() {
    if [ -n "$api_pid" ]; then
        kill -TERM "$api_pid" 2>/dev/null || true
        wait "$api_pid" 2>/dev/null || true
    fi
    psql -q -X "$server/postgres" -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$ORDO_BIN" migrate >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; exit 1; }
key=$("$ORDO_BIN" account create fuzz --name schemathesis 2>>"$work/migrate.log" | sed -n 's/^api_key=//p')
if [ -z "$key" ]; then
    echo "ordo account create printed no api_key:" >&2
    cat "$work/migrate.log" >&2
    exit 1
fi
admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# Port 0: the kernel picks a free port, and the API logs the address it listens on. No rate limit: a 429 would
# depend on how fast this machine sends.
ORDO_LISTEN=127.0.0.1:0 ORDO_ADMIN_TOKEN="$admin_token" ORDO_RATE_LIMIT_RPS=0 NO_COLOR=1 \
    "$ORDO_BIN" api >"$work/api.log" 2>&1 &
api_pid=$!
base=
for _ in $(seq 1 120); do
    addr=$(grep -o 'addr=127\.0\.0\.1:[0-9]*' "$work/api.log" | head -n1 || true)
    if [ -n "$addr" ] && python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://${addr#addr=}/readyz" >/dev/null 2>&1; then
        base="http://${addr#addr=}"
        break
    fi
    if ! kill -0 "$api_pid" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
if [ -z "$base" ]; then
    echo "ordo api did not become ready within 60 s:" >&2
    cat "$work/api.log" >&2
    exit 1
fi

# One run per credential; `timeout` bounds each (a hung request fails the run instead of holding CI).
fuzz() {
    local who=$1 credential=$2 status=0
    printf '\n== schemathesis with the %s\n' "$who"
    timeout 900 schemathesis --config-file .ci/schemathesis.toml run "$base/openapi.json" \
        --max-examples 25 \
        --seed "${ORDO_SCHEMATHESIS_SEED:-17}" \
        --generation-database none \
        --header "Authorization: Bearer $credential" \
        --report junit,vcr --report-dir "$reports/$who" \
        --no-color "${extra[@]}" || status=$?
    return "$status"
}

extra=("$@")
started=$SECONDS
failed=0
fuzz "account-key" "$key" || failed=1
fuzz "admin-token" "$admin_token" || failed=1
echo "schemathesis took $((SECONDS - started)) s"
if grep -q -E 'ERROR|panicked' "$work/api.log"; then
    echo "ordo api logged errors:" >&2
    grep -E 'ERROR|panicked' "$work/api.log" >&2
    failed=1
fi
exit "$failed"
