"""Peak resident memory while loading a checkpoint, as a multiple of the file size (one figure).

    python bench/load_memory.py [--channels 64,128,256,256] [--dtype fp16] [--format ours|released]

A child process writes a medium-size model (random weights) in the chosen format; a fresh child process
then loads it into the same dtype on the CPU while a thread samples its RSS every millisecond. The
figure is (peak RSS during loading − RSS just before) / file size; the loader's budget is 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write(args: argparse.Namespace) -> None:
    """Child 1: build a model and save it."""
    import torch

    from emoji_model.checkpoints import save_model
    from emoji_model.networks import FYEConfig, build_model

    channels = tuple(int(c) for c in args.channels.split(","))
    model = build_model(FYEConfig.sd15(block_out_channels=channels), "cpu")
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.format == "released":
        from emoji_model.checkpoints import released_state_dicts

        out = Path(args.path)
        out.mkdir(parents=True, exist_ok=True)
        for stem, sd in released_state_dicts(model).items():
            torch.save({k: v.to(dtype).contiguous().clone() for k, v in sd.items()}, out / f"{stem}.pth")
    else:
        save_model(model, args.path, dtype=dtype)


def load(args: argparse.Namespace) -> None:
    """Child 2: load while sampling RSS; print a JSON line."""
    import torch

    from emoji_model.checkpoints import load_model

    dtype = getattr(torch, DTYPES[args.dtype])
    path = Path(args.path)
    size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    base = _rss_bytes()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    model = load_model(path, device="cpu", dtype=dtype)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    sys.stdout.write(json.dumps({"file_bytes": size, "model_bytes": params, "peak_delta_bytes": peak[0] - base,
                                 "ratio": (peak[0] - base) / size, "seconds": seconds}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", default="64,128,256,256", help="UNet block channels (SD-1.5: 320,640,1280,1280)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--format", choices=("ours", "released"), default="ours")
    parser.add_argument("--stage", choices=("write", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "write":
        write(args)
        return 0
    if args.stage == "load":
        load(args)
        return 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="fye_bench_") as tmp:
        path = Path(tmp) / ("released" if args.format == "released" else "model.safetensors")
        common = ["--channels", args.channels, "--dtype", args.dtype, "--format", args.format, "--path", str(path)]
        subprocess.run([sys.executable, __file__, "--stage", "write", *common], check=True, env=env)
        out = subprocess.run([sys.executable, __file__, "--stage", "load", *common], check=True, env=env,
                             capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    sys.stdout.write(f"load peak RSS / file size: {result['ratio']:.2f} (file {result['file_bytes'] / 2**20:.0f} MiB, "
                     f"peak +{result['peak_delta_bytes'] / 2**20:.0f} MiB, {result['seconds']:.1f} s, "
                     f"{args.format}, {args.dtype})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
