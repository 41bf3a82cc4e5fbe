#!/usr/bin/env bash
# Set up (or refresh) .venv-comfyui: a real ComfyUI's Python for the host tests (tests/test_comfyui_host.py).
# ComfyUI's own requirements with torch pinned (an unpinned torch pulls GBs of CUDA) and without
# torchaudio (no wheel matches torch 2.13; only ComfyUI's audio nodes need it), plus this pack's
# requirements, as a user's ComfyUI has them. The ComfyUI source is COMFYUI_DIR, else ../shared/comfyui.
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY=${COMFYUI_DIR:-../shared/comfyui}
if [ ! -f "$COMFY/main.py" ] || [ ! -f "$COMFY/requirements.txt" ]; then
    echo "setup_comfyui: no ComfyUI source at $COMFY (set COMFYUI_DIR to a ComfyUI checkout)" >&2
    exit 1
fi
PY=${PYTHON:-python3}
VENV=.venv-comfyui
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==${TORCH_VERSION:-2.13.0}" > "$work/constraints.txt"
grep -v -i -E '^[[:space:]]*torchaudio([^a-z0-9_-]|$)' "$COMFY/requirements.txt" > "$work/comfyui-requirements.txt"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c "$work/constraints.txt" "torch==${TORCH_VERSION:-2.13.0}"
# requests: ComfyUI's CPU start-up needs it and its requirements do not list it.
"$VENV/bin/python" -m pip install -q -c "$work/constraints.txt" -r "$work/comfyui-requirements.txt" \
    -r requirements.txt requests
