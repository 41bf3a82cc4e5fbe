"""Loading our safetensors format stays within 1.3× the file size of resident memory (bench/load_memory.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_load_peak_memory_is_bounded_by_the_file_size():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "load_memory.py"), "--channels", "32,64,128,128",
                          "--dtype", "fp32"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ratio = float(re.search(r"file size: ([0-9.]+)", out.stdout).group(1))
    assert ratio <= 1.3, out.stdout
