#!/usr/bin/env bash
# Lints every migration with squawk (pinned in .ci/requirements.txt, installed into a virtual environment under the
# cache directory): the rules of .squawk.toml, less the exceptions of .ci/squawk-exceptions for migrations already
# applied. A `-- no-transaction` migration is linted as running outside a transaction. Exits non-zero on any finding
# not excepted, and on an exception that matches no finding any more.
#   .ci/lint-migrations.sh            every file in migrations/
#   .ci/lint-migrations.sh FILE...    just these (e.g. a migration being written)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/python.sh
. .ci/python.sh
ordo_python_tools

if [ "$#" -gt 0 ]; then
    files=("$@")
else
    files=(migrations/*.sql)
fi
squawk --version

# Exceptions as "selector<TAB>rule" pairs, each checked for a reason.
exceptions=()
while IFS=$'\t' read -r selector rule reason; do
    case "$selector" in '' | '#'*) continue ;; esac
    if [ -z "$rule" ] || [ -z "$reason" ]; then
        echo ".ci/squawk-exceptions: '$selector' needs a rule and a reason, tab-separated" >&2
        exit 1
    fi
    exceptions+=("$selector"$'\t'"$rule")
done <.ci/squawk-exceptions

# Whether exception $1 ("selector<TAB>rule") covers rule $3 in migration file $2.
covers() {
    local selector=${1%%$'\t'*} rule=${1#*$'\t'} name version
    name=$(basename "$2")
    version=${name%%_*}
    [ "$rule" = "$3" ] || return 1
    case "$selector" in
        ..*) [[ "$version" =~ ^[0-9]+$ ]] && [ "$version" -le "${selector#..}" ] ;;
        *) [ "$selector" = "$name" ] ;;
    esac
}

declare -A used=()
failed=0
for file in "${files[@]}"; do
    mode=--assume-in-transaction
    if head -n1 "$file" | grep -qx -- '-- no-transaction'; then
        mode=--no-assume-in-transaction
    fi
    # gcc style: FILE:LINE:COLUMN: warning|error: RULE message.
    set +e
    findings=$(squawk --config .squawk.toml "$mode" --reporter gcc "$file" 2>&1)
    status=$?
    set -e
    if [ "$status" -ne 0 ] && [ -z "$findings" ]; then
        echo "$file: squawk failed with status $status" >&2
        failed=1
    fi
    while IFS= read -r finding; do
        [ -n "$finding" ] || continue
        rule=$(awk '{print $3}' <<<"$finding")
        excepted=false
        for e in "${exceptions[@]}"; do
            if covers "$e" "$file" "$rule"; then
                excepted=true
                used["$e"]=1
            fi
        done
        if [ "$excepted" = false ]; then
            # squawk counts lines and columns from 0; editors from 1.
            awk '{ n = split($1, at, ":"); $1 = at[1] ":" at[2] + 1 ":" at[3] + 1 ":"; print }' <<<"$finding"
            failed=1
        fi
    done <<<"$findings"
done

# Stale exceptions, when every migration was linted.
if [ "$#" -eq 0 ]; then
    for e in "${exceptions[@]}"; do
        if [ -z "${used["$e"]:-}" ]; then
            echo ".ci/squawk-exceptions: '${e/$'\t'/ }' matches no finding any more: remove it" >&2
            failed=1
        fi
    done
fi

if [ "$failed" -ne 0 ]; then
    echo "migration lint failed: see README, \"Schema changes without downtime\"" >&2
    exit 1
fi
echo "${#files[@]} migrations pass the lint"
