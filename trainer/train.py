"""`train`: both training stages of Follow-Your-Emoji on accelerate (CPU, one GPU or many).

The run, top to bottom:

1. config: YAML + ``--set`` overrides (:mod:`trainer.config`); a resumed run takes the checkpoint's.
2. networks: our model built from a preset or a checkpoint, then the base weights (SD-1.5 into the
   appearance net and UNet spatial layers, AnimateDiff into the temporal layers); the frozen VAE and
   CLIP image encoder; the parameter groups of the stage set trainable, everything else frozen.
3. data: :class:`trainer.data.ClipDataset` in the order of :class:`trainer.data.EpochBatches`.
4. each optimizer step, ``grad_accum`` micro-steps of: encode frames and reference (frozen, no grad) →
   draw t, ε, the covering and the reference dropout from the run's noise generator → x_t and the
   v target with the model's own zero-terminal-SNR schedule → one forward of the networks → L_LDM +
   L_FFG → backward. Then clip, step, EMA, log; checkpoint every ``checkpoint_every`` steps, at the
   end, and at the next step boundary after SIGINT/SIGTERM.

Everything random comes from generators whose states are checkpointed, and the data position is
(epoch, batches consumed), so a resumed run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "train"
HELP = "train stage 1 (single frames) or stage 2 (clips, temporal layers) from a YAML config"

log = logging.getLogger("emoji_model.trainer.train")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `train`."""
    parser.add_argument("--config", metavar="CONFIG.yaml", default=None,
                        help="training config (see trainer/configs/); optional with --resume")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override one config key (value parsed as YAML); repeatable")
    parser.add_argument("--resume", metavar="auto|never|PATH", default=None,
                        help="resume from the run's latest checkpoint (auto, default), never, or a checkpoint/run folder")
    parser.add_argument("--stop-at", type=int, metavar="STEP", default=None,
                        help="stop at this step with a checkpoint (a time-sliced job); the schedule still ends at max_steps")


def run(args: argparse.Namespace) -> int:
    """Train; the exit status is 0 when done, 128+signal when stopped by SIGINT/SIGTERM (after saving)."""
    from .config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    if args.resume is not None:
        overrides["resume"] = args.resume
    if args.config is None and args.resume in (None, "auto", "never"):
        from emoji_model.errors import InvalidRequestError

        raise InvalidRequestError("give --config CONFIG.yaml, or --resume CHECKPOINT to continue a run from its "
                                  "stored config")
    explicit = set(overrides)
    if args.config is not None:
        import yaml

        explicit |= set((yaml.safe_load(Path(args.config).read_text()) or {}).keys())
    cfg = load_config(args.config, overrides)
    result = train(cfg, stop_at=args.stop_at, explicit_keys=explicit)
    return 128 + result.signal if result.signal else 0


# -------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """How a run ended."""

    step: int
    checkpoint: Path | None
    signal: int = 0
    losses: list[float] | None = None


class GracefulStop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and exits.

    A second SIGINT while waiting interrupts at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum  # only a flag: logging here could re-enter a stream write and lose the record

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def resolve_resume(cfg) -> Path | None:
    """The checkpoint a run continues from, or None for a fresh run."""
    from .checkpointing import list_checkpoints, resolve_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        found = list_checkpoints(cfg.run_dir)
        return found[-1] if found else None
    return resolve_checkpoint(cfg.resume)


def resumed_config(saved: dict[str, Any], cfg, explicit_keys: set[str] | None):
    """The checkpoint's config, with only the keys of RESUME_MUTABLE taken from the one given."""
    from .config import RESUME_MUTABLE, TrainConfig

    stored = TrainConfig.from_dict(saved)
    explicit = set(explicit_keys) if explicit_keys is not None else set(RESUME_MUTABLE)
    ignored = sorted(k for k in explicit if k not in RESUME_MUTABLE and getattr(stored, k) != getattr(cfg, k))
    if ignored:
        log.warning("resuming keeps the checkpoint's %s; to change them start a new run with "
                    "init_checkpoint: <an exported checkpoint>", ", ".join(ignored))
    return stored.replace(**{k: getattr(cfg, k) for k in RESUME_MUTABLE if k in explicit})


def _cpu_processes() -> bool:
    """True for several processes on a machine without GPUs (torchrun / ``accelerate launch --multi_gpu``).

    accelerate only picks its gloo MULTI_CPU backend when told ``cpu=True``; without it each process
    would train alone. (``accelerate launch --cpu`` starts a single process unless MPI is used.)
    """
    import torch

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    xpu = getattr(torch, "xpu", None)
    return several and not torch.cuda.is_available() and not (xpu is not None and xpu.is_available())


def train(cfg, *, stop_at: int | None = None, explicit_keys: set[str] | None = None) -> TrainResult:
    """Run (or continue) training as ``cfg`` says; see the module docstring."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, is_tensorboard_available

    from emoji_model.checkpoints import load_clip_vision, load_vae

    from . import checkpointing as ck
    from .config import dump_yaml
    from .data import ClipDataset, EpochBatches, batch_stream, load_index
    from .objectives import make_noise_scheduler
    from .optim import EMA, build_optimizer, learning_rate
    from .step import (FrozenEncoders, PartialFreeze, TrainingForward, build_model, set_trainable, trainable_elements,
                       training_losses)

    # -- 1. config and resume point --------------------------------------------------------------
    resume_from = resolve_resume(cfg)
    saved = None
    if resume_from is not None:
        saved = ck.read_state(resume_from)
        cfg = resumed_config(saved["train_config"], cfg, explicit_keys)
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    use_tb = cfg.tensorboard == "true" or (cfg.tensorboard == "auto" and is_tensorboard_available())
    accelerator = Accelerator(
        cpu=_cpu_processes(), mixed_precision=cfg.mixed_precision, log_with="tensorboard" if use_tb else None,
        project_dir=str(run_dir), kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=cfg.find_unused_parameters, gradient_as_bucket_view=True)])  # one copy of the grads
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        from emoji_model.errors import InvalidRequestError

        raise InvalidRequestError(f"the trainer runs data parallel (DDP) only, not {accelerator.distributed_type.name}: "
                                  "use trainer/configs/accelerate/multi_gpu.yaml, and optimizer coap or coap8bit "
                                  "where AdamW's state does not fit (see `python -m trainer plan`)")
    if not accelerator.is_main_process:
        logging.getLogger("emoji_model").setLevel(logging.WARNING)
    random.seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    torch.manual_seed(cfg.seed + rank)

    # -- 2. networks -------------------------------------------------------------------------------
    model = build_model(cfg, resume_from)
    groups = cfg.trainable_groups(model.config.cover_channels)
    named = set_trainable(model, groups)
    partial = PartialFreeze(model, trainable_elements(model, groups))  # e.g. conv_in's covered inputs in stage 1
    n_train = sum(p.numel() for _, p in named)
    log.info("stage %d: training %s — %.2fM of %.2fM parameters", cfg.stage, ", ".join(groups), n_train / 1e6,
             sum(p.numel() for p in model.parameters()) / 1e6)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing(True)
    model.train()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    vae = load_vae(cfg.vae, device=device, dtype=weight_dtype).requires_grad_(False)
    image_encoder = load_clip_vision(cfg.image_encoder, device=device, dtype=weight_dtype).requires_grad_(False)
    encoders = FrozenEncoders(vae, image_encoder)
    clip_dim = int(image_encoder.config.hidden_size)
    if clip_dim != model.config.clip_dim:
        from emoji_model.errors import InvalidRequestError

        raise InvalidRequestError(f"the image encoder gives {clip_dim}-wide tokens, the model's image prompt "
                                  f"expects clip_dim={model.config.clip_dim}")
    noise_scheduler = make_noise_scheduler(model.config.scheduler, model.config.prediction_type)
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    covering = cfg.cover and model.config.cover_channels > 0

    # -- 3. data -----------------------------------------------------------------------------------
    frames = cfg.sample_frames(int(load_index(cfg.dataset)["clip_length"]))
    if cfg.stage == 2 and frames > model.max_frames:
        from emoji_model.errors import InvalidRequestError

        raise InvalidRequestError(f"{frames} frames per sample exceed the temporal layers' {model.max_frames}")
    dataset = ClipDataset(cfg.dataset, frames, seed=cfg.seed, max_clips=cfg.max_clips,
                          mask_downsample=cfg.mask_downsample, augment=cfg.augment_options())
    order = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, rank, world)

    # -- 4. optimizer, accelerate, restored state --------------------------------------------------
    optimizer = build_optimizer(named, cfg)
    forward = TrainingForward(model, temporal=cfg.stage == 2)
    forward, optimizer = accelerator.prepare(forward, optimizer)
    ema = EMA(named, cfg.ema_decay) if cfg.ema_decay > 0 else None
    noise = torch.Generator(device=device).manual_seed(cfg.seed * 1009 + 17 + rank)
    step, epoch, position = 0, 0, 0
    if resume_from is not None:
        optimizer.load_state_dict(ck.load_optimizer_state(resume_from))
        ck.load_scaler_state(accelerator, resume_from)
        if ema is not None:
            from emoji_model.checkpoints import read_state_dict

            ema_file = resume_from / "ema.safetensors"
            if ema_file.is_file():
                ema.load_state_dict(read_state_dict(ema_file), saved.get("ema_updates", 0))
            else:
                log.warning("the checkpoint has no EMA: starting the EMA from its weights")
        rng = ck.load_rng_state(resume_from, rank)
        if rng is None or saved.get("processes") != world:
            log.warning("the checkpoint was written by %s processes, this run has %d: random streams restart "
                        "from the seed (the data order continues exactly)", saved.get("processes"), world)
        if rng is not None:
            ck.restore_rng_state(rng, noise)
        step, epoch, position = int(saved["step"]), int(saved["epoch"]), int(saved["position"])
        log.info("resumed from %s: step %d, epoch %d, batch %d of %d", resume_from, step, epoch, position,
                 order.per_epoch)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    if use_tb:
        accelerator.init_trackers("fye", config={k: v for k, v in cfg.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
    stream = batch_stream(dataset, order, epoch, position, cfg.num_workers)
    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process and metrics_path.is_file():
        # Steps after the checkpoint we resume from were lost with the crash; they will be logged again.
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    unwrapped = accelerator.unwrap_model(forward).model
    evaluation = None
    if cfg.eval_every and accelerator.is_main_process:
        from .evaluation import TrainingEvaluation

        evaluation = TrainingEvaluation(cfg, vae, image_encoder)
    params = [p for _, p in named]

    def state_now() -> dict[str, Any]:
        return {"epoch": epoch, "position": position, "processes": world, "samples": step * cfg.batch_size *
                cfg.grad_accum * world, "stage": cfg.stage, "train_config": cfg.to_dict(),
                "fye_config": unwrapped.config.to_dict(), "ema_updates": ema.updates if ema is not None else 0,
                "time": time.time()}

    def save() -> Path:
        return ck.save_checkpoint(accelerator, run_dir, step, model=unwrapped, optimizer=optimizer, ema=ema,
                                  noise=noise, state=state_now(), keep=cfg.keep_checkpoints)

    # -- 5. the loop -------------------------------------------------------------------------------
    last_ckpt = None
    signum = 0
    losses: list[float] = []
    end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    if step >= end:
        log.info("nothing to do: the run is at step %d, it stops at %d", step, end)
    with GracefulStop() as stop:
        while step < end:
            t0 = time.perf_counter()
            lr = learning_rate(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            sums = torch.zeros(3, device=device)
            for micro in range(cfg.grad_accum):
                epoch, position, batch = next(stream)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                sync = micro == cfg.grad_accum - 1
                with nullcontext() if sync else accelerator.no_sync(forward):
                    out = training_losses(forward, encoders, batch, noise_scheduler, noise, cfg, covering)
                    accelerator.backward(out["loss"] / cfg.grad_accum)
                sums += torch.stack([out["loss"].detach(), out["ldm"], out["ffg"]]) / cfg.grad_accum
            # One collective per step: the mean losses and whether any process was asked to stop.
            flag = torch.tensor([float(stop.signum)], device=device)
            reduced = accelerator.reduce(torch.cat([sums, flag]), reduction="sum")
            loss, ldm, ffg = (reduced[:3] / world).tolist()
            if not math.isfinite(loss):
                from emoji_model.errors import FYEError

                raise FYEError(f"the loss is {loss} at step {step + 1}; nothing was applied. Lower lr, or use bf16 "
                               "instead of fp16")
            if reduced[3].item() > 0 and not signum:
                signum = stop.signum or signal.SIGTERM
                log.warning("%s received: saving a checkpoint at the end of this step, then stopping",
                            signal.Signals(signum).name)
            grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            optimizer.step()
            partial.restore()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(named)
            losses.append(loss)
            dt = time.perf_counter() - t0
            scores = evaluation(unwrapped, ema) if evaluation is not None and evaluation.due(step) else {}
            if accelerator.is_main_process and (step % cfg.log_every == 0 or step == end or signum or scores):
                samples = cfg.batch_size * cfg.grad_accum * world
                record = {"step": step, "loss": loss, "ldm": ldm, "ffg": ffg, "lr": lr, "epoch": epoch,
                          "steps_per_s": 1 / dt, "samples_per_s": samples / dt,
                          "grad_norm": float(grad_norm) if grad_norm is not None else None, **scores}
                log.info("step %d/%d | loss %.4f (ldm %.4f, ffg %.4f) | lr %.2e | %.2f steps/s, %.1f samples/s",
                         step, cfg.max_steps, loss, ldm, ffg, lr, 1 / dt, samples / dt)
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if use_tb:
                    accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)
            if step % cfg.checkpoint_every == 0 or step == end or signum:
                last_ckpt = save()
            if signum:
                log.warning("stopped at step %d by %s; resume with the same config to continue", step,
                            signal.Signals(signum).name)
                break
    if use_tb:
        accelerator.end_training()
    return TrainResult(step=step, checkpoint=last_ckpt, signal=int(signum), losses=losses)
