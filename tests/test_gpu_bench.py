"""bench/gpu.py runs its code paths at a reduced size on the CPU (the SD-1.5 figures need an accelerator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_bench_smoke_run(tmp_path):
    out_json = tmp_path / "gpu.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--frames", "4,20",
                           "--dtypes", "fp32,bf16", "--json", str(out_json)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert {(r["frames"], r["dtype"], r["mode"]) for r in results} == {
        (f, d, m) for f in (4, 20) for d in ("fp32", "bf16") for m in ("windowed", "progressive")}
    assert all(r["s_per_frame"] > 0 and r["side"] == "ours" for r in results)
    assert done.stdout.count("s/frame") == len(results) == 8
