# Shared by the bench scripts (sourced): `repeat NAME COMMAND...` runs COMMAND `$runs` times, unless `$filter` is
# set and not part of NAME, and prints the median (min..max) of the JSON lines it prints (benches/summarize.py).
repeat() {
    local name=$1
    shift
    if [ -n "${filter:-}" ] && [[ "$name" != *"$filter"* ]]; then
        return 0
    fi
    for _ in $(seq 1 "${runs:-3}"); do
        "$@" 2>/dev/null
    done | python3 "$(dirname "${BASH_SOURCE[0]}")/summarize.py" "$name"
}
