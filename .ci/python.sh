# Sourced by the CI scripts: puts a virtual environment with the pinned tools of .ci/requirements.txt first on PATH.
# It lives under the cache directory, outside the clone, and is rebuilt when requirements.txt changes.
# shellcheck shell=bash

ordo_python_tools() {
    local ci requirements venv stamp
    ci="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    requirements="$ci/requirements.txt"
    venv="${ORDO_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ordo-ci/venv}"
    stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]; then
        # Debian's python3 keeps venv and ensurepip in python3-venv.
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                DEBIAN_FRONTEND=noninteractive apt-get update -q
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
            else
                echo "python3 cannot create virtual environments: install python3-venv" >&2
                return 1
            fi
        fi
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        echo "$stamp" >"$venv/.requirements"
    fi
    PATH="$venv/bin:$PATH"
    export PATH
}
