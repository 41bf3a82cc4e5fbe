"""Training throughput and peak memory for the tiny config, and the optimizers side by side.

    python bench/train.py [--steps 30] [--threads N] [--size 64] [--only throughput|optimizers]

The shared driving video is prepared once at ``--size`` into a temporary folder with a tiny VAE and
CLIP beside it. Throughput: each case trains in a fresh child process: stage 1 (single frames, batch 8)
and stage 2 (8-frame clips with covering, batch 1); steps/s is the median over the steps after the first
three, peak RSS the highest resident memory during training over the process's RSS just before it.

Optimizers (one table): AdamW, GaLore, COAP and, where bitsandbytes is installed, COAP and AdamW with
8-bit states train the tiny stage-1 networks from the same seed on the same batches with the same
noise, in one process, round-robin step by step (the order alternating), so each ratio is taken under
the same machine load. Per optimizer: its state in bytes (counted), the CPU time of a whole training
step (forward, backward, clipping, optimizer step) over AdamW's, and the mean loss of the last 10 of
``--opt-steps`` steps over AdamW's. Then the SD-1.5 stage-1 figures of ``trainer plan`` (computed).
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


OPTIMIZERS = ("adamw", "galore", "coap", "coap8bit", "adamw8bit")


def optimizer_table(work: Path, steps: int) -> list[str]:
    """The optimizers side by side on the tiny stage-1 networks (see the module docstring)."""
    import time

    import torch

    from emoji_model.checkpoints import load_clip_vision, load_vae
    from trainer.config import TrainConfig
    from trainer.data import ClipDataset, EpochBatches
    from trainer.objectives import make_noise_scheduler
    from trainer.optim import build_optimizer, optimizer_state_bytes
    from trainer.step import FrozenEncoders, TrainingForward, build_model, set_trainable, training_losses

    try:
        import bitsandbytes  # noqa: F401
        kinds = OPTIMIZERS
    except ImportError:
        kinds = tuple(k for k in OPTIMIZERS if "8bit" not in k)
    base = dict(model="tiny", model_overrides={"cover_channels": 5}, image_encoder=str(work / "clip"),
                vae=str(work / "vae"), dataset=str(work / "data"), batch_size=8, lr=1e-3, galore_rank=8, seed=0)
    encoders = FrozenEncoders(load_vae(work / "vae"), load_clip_vision(work / "clip"))
    dataset = ClipDataset(work / "data", 1, seed=0)
    order = EpochBatches(len(dataset), 8, seed=0)
    runs = {}
    for kind in kinds:
        cfg = TrainConfig.from_dict(dict(base, optimizer=kind))
        model = build_model(cfg)
        named = set_trainable(model, cfg.trainable_groups(5))
        model.train()
        runs[kind] = dict(cfg=cfg, named=named, forward=TrainingForward(model, temporal=False),
                          opt=build_optimizer(named, cfg), noise=torch.Generator().manual_seed(17), cpu=0.0,
                          losses=[])
    sched = make_noise_scheduler(runs["adamw"]["forward"].model.config.scheduler)
    batches = [b for e in range(steps // order.per_epoch + 1) for b in order.batches(e)][:steps]
    for step, items in enumerate(batches):
        batch = {k: torch.stack([dataset[i][k] for i in items]) for k in ("pixels", "reference", "control", "masks")}
        for kind in (kinds if step % 2 == 0 else kinds[::-1]):
            r = runs[kind]
            t = time.process_time()
            out = training_losses(r["forward"], encoders, batch, sched, r["noise"], r["cfg"], True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in r["named"]], 1.0)
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["cpu"] += time.process_time() - t
            r["losses"].append(out["loss"].item())
    ref = runs["adamw"]
    ref_loss = sum(ref["losses"][-10:]) / 10
    lines = [f"optimizers, tiny stage 1 ({sum(p.numel() for _, p in ref['named']) / 1e6:.2f}M trained), batch 8, "
             f"{steps} steps, same seed, batches and noise, CPU time per step (round-robin in one process):",
             "| optimizer | state | state / AdamW | step time / AdamW | loss (last 10) / AdamW |",
             "|---|---|---|---|---|"]
    for kind, r in runs.items():
        state = optimizer_state_bytes(r["opt"])
        loss = sum(r["losses"][-10:]) / 10
        lines.append(f"| {kind} | {state / MIB:.2f} MiB | {state / optimizer_state_bytes(ref['opt']):.2f}x | "
                     f"{r['cpu'] / ref['cpu']:.2f}x | {loss / ref_loss:.3f} |")
    return lines


def plan_figures() -> list[str]:
    """SD-1.5 stage 1 per GPU from `trainer plan` (meta tensors), for each optimizer, in 24 GiB."""
    from trainer.config import load_config
    from trainer.plan import GIB, estimate

    cfg = load_config(REPO / "trainer" / "configs" / "sd15_stage1.yaml").replace(batch_size=1)
    lines = ["SD-1.5 stage 1, bf16, gradient checkpointing, 512px, per GPU (`trainer plan`, computed):",
             "| optimizer | state | peak at batch 1 | largest batch in 24 GiB |", "|---|---|---|---|"]
    for kind in OPTIMIZERS:
        plan = estimate(cfg.replace(optimizer=kind))
        lines.append(f"| {kind} | {plan.optimizer_state / GIB:.2f} GiB | {plan.total(1) / GIB:.2f} GiB | "
                     f"{plan.largest_batch(24 * GIB)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=64, help="clip size in pixels")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the children")
    parser.add_argument("--opt-steps", type=int, default=60, help="steps of the optimizer comparison")
    parser.add_argument("--only", choices=("throughput", "optimizers"), default=None)
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
        for case in CASES if args.only != "optimizers" else ():
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
        if args.only != "throughput":
            import torch

            torch.set_num_threads(args.threads or 1)
            for line in optimizer_table(work, args.opt_steps) + [""] + plan_figures():
                print(line, flush=True)


if __name__ == "__main__":
    main()
