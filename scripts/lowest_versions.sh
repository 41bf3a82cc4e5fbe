#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows for the runtime dependencies (torch pinned to the
# CPU build the tests use) into .venv-lowest, then build and run the networks there
# (tests/lowest_versions_check.py). Fails when a lower bound is too low to import or run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-lowest
start=$SECONDS
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" scripts/lowest_pins.py > "$work/lowest.txt"
echo "[lowest] pins: $(grep -v '^torch' "$work/lowest.txt" | tr '\n' ' ')"
echo "torch==${TORCH_VERSION:-2.13.0}" > "$work/constraints.txt"
"$VENV/bin/python" -m pip install -q -c "$work/constraints.txt" "torch==${TORCH_VERSION:-2.13.0}"
grep -v '^torch' "$work/lowest.txt" > "$work/pins.txt"
# Wheels only: a bound too old to have a wheel for this Python fails here instead of compiling for an hour.
"$VENV/bin/python" -m pip install -q --only-binary :all: -c "$work/constraints.txt" -r "$work/pins.txt"
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "[lowest] installed in $((SECONDS - start)) s"
HF_HOME="$work/hf" "$VENV/bin/python" tests/lowest_versions_check.py
echo "[lowest] done in $((SECONDS - start)) s"
