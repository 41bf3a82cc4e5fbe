"""Training throughput, peak memory and the optimizer-memory option, for the tiny config (one line each).

    python bench/train.py [--steps 30] [--threads N] [--size 64]

The shared driving video is prepared once at ``--size`` into a temporary folder with a tiny VAE and
CLIP beside it. Each case then trains in a fresh child process: stage 1 (single frames, batch 8) and
stage 2 (8-frame clips with covering, batch 1); steps/s is the median over the steps after the first
three, peak RSS the highest resident memory during training over the process's RSS just before it
(sampled every millisecond), plus the GPU's peak allocation when one is used. The optimizer lines
compare the state AdamW keeps with the GaLore-style projected moments: measured after one step on
the tiny stage-1 parameters, and computed for the SD-1.5 trainable sets of both stages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))
MIB = 2 ** 20

CASES = {
    "stage1": dict(stage=1, batch_size=8),
    "stage2": dict(stage=2, frames=8, batch_size=1),
    "stage1-galore": dict(stage=1, batch_size=8, optimizer="galore", galore_rank=8),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def prepare(work: Path, size: int) -> None:
    """Dataset from the shared driving video, tiny VAE and CLIP folders."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_fye import tiny_clip, tiny_vae

    from trainer.data import PrepareOptions, prepare_dataset

    prepare_dataset(SHARED / "data" / "driving_expressions.mp4", work / "data",
                    PrepareOptions(size=size, face_model=str(SHARED / "data" / "face_landmarker.task")))
    tiny_vae().save_pretrained(work / "vae")
    tiny_clip().save_pretrained(work / "clip")


def child(work: Path, case: str, steps: int) -> None:
    """Train one case; print a JSON line with steps/s and the peak memory."""
    import torch

    from trainer.config import TrainConfig
    from trainer.train import train

    cfg = TrainConfig.from_dict(dict(
        run_dir=str(work / f"run-{case}"), model="tiny", model_overrides={"cover_channels": 5},
        image_encoder=str(work / "clip"), vae=str(work / "vae"), dataset=str(work / "data"), max_steps=steps,
        lr=1e-3, checkpoint_every=10 ** 6, resume="never", **CASES[case]))
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        train(cfg)
    finally:
        done.set()
        sampler.join()
    records = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records[3:]] or [r["steps_per_s"] for r in records]
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    print("RESULT" + json.dumps({"steps_per_s": statistics.median(rates), "peak_rss": peak[0] - base, "gpu": gpu,
                                 "samples": cfg.batch_size}))


def optimizer_figures() -> list[str]:
    """AdamW vs GaLore state: measured on the tiny stage-1 parameters, computed for SD-1.5."""
    import torch

    from emoji_model.networks import FYEConfig, build_model
    from trainer.config import TrainConfig
    from trainer.optim import build_optimizer, estimated_state_bytes, optimizer_state_bytes
    from trainer.step import set_trainable

    lines = []
    stage1 = TrainConfig(stage=1).trainable_groups(5)
    measured = {}
    for kind in ("adamw", "galore"):
        model = build_model(FYEConfig.tiny(cover_channels=5), "cpu")
        named = set_trainable(model, stage1)
        opt = build_optimizer(named, TrainConfig(optimizer=kind, galore_rank=8, lr=1e-4))
        for _, p in named:
            p.grad = torch.randn_like(p)
        opt.step()
        measured[kind] = optimizer_state_bytes(opt)
    lines.append(f"optimizer, tiny stage 1: galore rank 8 keeps {measured['galore'] / measured['adamw']:.2f}x AdamW's "
                 f"state ({measured['galore'] / MIB:.1f} MiB vs {measured['adamw'] / MIB:.1f} MiB, measured)")
    sd = build_model(FYEConfig.sd15(cover_channels=5), "meta")
    for stage in (1, 2):
        named = set_trainable(sd, TrainConfig(stage=stage).trainable_groups(5))
        shapes = [p.shape for _, p in named]
        adam = estimated_state_bytes(shapes, "adamw")
        galore = estimated_state_bytes(shapes, "galore", 128)
        params = sum(p.numel() for _, p in named)
        lines.append(f"optimizer, SD-1.5 stage {stage} ({params / 1e9:.2f}B trained): galore rank 128 keeps "
                     f"{galore / adam:.2f}x AdamW's state ({galore / 2 ** 30:.2f} GiB vs {adam / 2 ** 30:.2f} GiB, "
                     f"computed)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=64, help="clip size in pixels")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the children")
    parser.add_argument("--child", nargs=2, metavar=("WORK", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.steps)
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.size)
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", str(work), case],
                                 env=env, capture_output=True, text=True, timeout=1800)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
            if out.returncode or not lines:
                raise SystemExit(f"{case} failed:\n{out.stderr[-3000:]}")
            r = json.loads(lines[-1][6:])
            gpu = f", GPU peak {r['gpu'] / MIB:.0f} MiB" if r["gpu"] else ""
            print(f"{case} (tiny, {args.size}px, batch {r['samples']}): {r['steps_per_s']:.2f} steps/s "
                  f"({r['steps_per_s'] * r['samples']:.1f} samples/s), peak RSS +{r['peak_rss'] / MIB:.0f} MiB{gpu}",
                  flush=True)
    for line in optimizer_figures():
        print(line)


if __name__ == "__main__":
    main()
