"""Peak resident memory of every command-line path at a long against a short driving video (goal: ≤ 1.2×).

    python bench/cli_memory.py [--short 64] [--long 1008] [--only landmarks,align,...] [--steps 2]

The driving videos are the shared 97-frame video looped (forwards, then backwards) to ``--short`` and
``--long`` frames, written to a temporary folder. Each command runs in a fresh process (``python -m
emoji_model ...`` in-process under a small wrapper) that reports its own peak RSS (``ru_maxrss``); the
figure per path is peak(long) / peak(short). The generating paths use the bundled 64-pixel model with
``--steps`` denoising steps (memory does not depend on the step count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))
DRIVING = SHARED / "data" / "driving_expressions.mp4"


def commands(video: Path, frames: int, tmp: Path, steps: int) -> dict[str, list[str]]:
    """name -> argv of every command-line path that reads or writes a video of ``frames`` frames."""
    ref = str(tmp / "astronaut.png")
    out = tmp / f"out{frames}"
    s = ["--steps", str(steps)]
    return {
        "landmarks --render": ["landmarks", str(video), "--out", str(out / "track.npz"), "--render",
                               str(out / "track.mp4")],
        "align --render": ["align", "--reference", ref, "--driving", str(video), "--out", str(out / "aligned.npz"),
                           "--render", str(out / "aligned.mp4")],
        "edit --render": ["edit", "--reference", ref, "--keys", "0: blink=0; 10: blink=1; 20: blink=0 smile=0.8",
                          "--frames", str(frames), "--out", str(out / "edited.npz"), "--render",
                          str(out / "edited.mp4")],
        "animate": ["animate", "--reference", ref, "--driving", str(video), "--out", str(out / "animated.mp4"), *s],
        "demo --driving": ["demo", "--driving", str(video), "--out", str(out / "demo"), *s],
        "demo (keyed)": ["demo", "--frames", str(frames), "--out", str(out / "demo_keyed"), *s],
        "evaluate": ["evaluate", "--driving", str(video), "--frames", str(frames - 1), "--no-landmarks",
                     "--json", str(out / "metrics.json"), *s],
    }


def looped_video(frames: int, path: Path) -> Path:
    """The shared driving video played forwards and backwards until ``frames`` frames, streamed to ``path``."""
    sys.path.insert(0, str(REPO))
    from emoji_model.video import probe_video, read_video, write_video

    source, fps = read_video(DRIVING)  # 97 frames, held by this (measuring) process only
    period = 2 * len(source) - 2
    order = (i % period for i in range(frames))
    return write_video(path, (source[i if i < len(source) else period - i] for i in order), fps)


def worker(argv: list[str]) -> None:
    """Run one command in this process and print its peak RSS in MiB."""
    import resource

    sys.path.insert(0, str(REPO))
    from emoji_model.__main__ import main

    start = time.perf_counter()
    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"code": code, "peak_mib": peak, "seconds": time.perf_counter() - start}))


def run(argv: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GLOG_minloglevel="2", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--", *argv],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)
    line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), None)
    if done.returncode or line is None or json.loads(line)["code"] != 0:
        sys.exit(f"`{' '.join(argv)}` failed:\n{done.stderr[-3000:]}")
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=64)
    parser.add_argument("--long", type=int, default=1008)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated path names (default: all)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rest)
        return
    from skimage import data
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(data.astronaut()).save(tmp / "astronaut.png")
        videos = {n: looped_video(n, tmp / f"driving_{n}.mp4") for n in (args.short, args.long)}
        names = list(commands(videos[args.short], args.short, tmp, args.steps))
        wanted = [n for n in names if not args.only or n in args.only.split(",")]
        worst = 0.0
        for name in wanted:
            peaks = {n: run(commands(videos[n], n, tmp, args.steps)[name]) for n in (args.short, args.long)}
            ratio = peaks[args.long]["peak_mib"] / peaks[args.short]["peak_mib"]
            worst = max(worst, ratio)
            print(f"{name:<20} {ratio:.2f}x  ({peaks[args.long]['peak_mib']:.0f} MiB at {args.long} frames vs "
                  f"{peaks[args.short]['peak_mib']:.0f} MiB at {args.short}; {peaks[args.long]['seconds']:.0f} s)",
                  flush=True)
        print(f"peak RSS, {args.long} vs {args.short} frames, worst command-line path: {worst:.2f}x (goal <= 1.2)")


if __name__ == "__main__":
    main()
