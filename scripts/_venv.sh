# Sourced by scripts/test, scripts/demo and scripts/bench: make sure .venv exists
# and holds this checkout's package and dev dependencies. Sets $venv.
# shellcheck shell=bash

# The project needs Python >= 3.11; take $PYTHON, else the first new-enough interpreter.
pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "no Python >= 3.11 found (set PYTHON=...)" >&2
    return 1
}

venv=.venv
stamp="$venv/.installed-from-pyproject"
# A venv whose interpreter vanished (e.g. Python upgraded) is rebuilt rather than trusted.
if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    rm -rf "$venv"
    "$(pick_python)" -m venv "$venv"
fi
# Reinstall only when pyproject.toml changed since the last successful install.
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "setting up: installing dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
