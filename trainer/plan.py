"""`plan`: the memory a training config needs per GPU, computed without allocating, and the largest batch.

    python -m trainer plan --config CONFIG.yaml [--processes N | --accelerate-config ACC.yaml] [--memory 24GiB]

What is counted, per process:

* **parameters** — the whole model in fp32 (the trainer keeps fp32 weights; mixed precision is
  autocast), plus the frozen VAE and CLIP image encoder in the run's weight dtype (their sizes read
  from the safetensors headers of the configured files, else the SD-1.5 configs);
* **gradients** — fp32, one per trained number (kept between steps as DDP's buckets when several
  processes train);
* **optimizer state** — :func:`trainer.optim.estimated_state_bytes` (exactly what each optimizer keeps);
* **activations** — one training micro-step (frozen encoders, the networks' forward, the losses, the
  backward) run on the **meta device** through a counting dispatch mode (:mod:`trainer.memory`):
  every shape as in training, nothing allocated. Runs at batch 1 and 2 give the per-sample slope.
  With fp16/bf16 the forward is run in that dtype (autocast keeps some fp32, so this is a slight
  underestimate), plus autocast's half copies of the trained weights held for backward (none with
  gradient checkpointing, where each block is recomputed);
* **optimizer step** — the foreach AdamW on CUDA holds one fp32 temporary per trained number; the
  per-tensor optimizers (COAP, GaLore, 8-bit, any on CPU) a few of the largest tensor.

The peak is parameters + optimizer state + the largest of: encoding, forward+backward (activations
and gradients), the optimizer step. With FSDP through accelerate (``fsdp_reshard_after_forward``
true: FULL_SHARD, ZeRO-3-like) parameters, gradients and optimizer state are divided by the process
count; with SHARD_GRAD_OP (false, ZeRO-2-like) gradients and optimizer state only.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

NAME = "plan"
HELP = "print the per-GPU memory a training config needs (computed on meta tensors) and the largest batch that fits"

log = logging.getLogger("emoji_model.trainer.plan")

GIB = 2 ** 30
SHARDINGS = ("none", "shard_grad_op", "full_shard")
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_bytes(text: str) -> int:
    """``"24GiB"``, ``"80 GB"``, ``"512MiB"`` → bytes."""
    from emoji_model.errors import InvalidRequestError

    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidRequestError(f"memory size must look like 24GiB, 80GB or 512MiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `plan`."""
    parser.add_argument("--config", metavar="CONFIG.yaml", required=True, help="training config")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override one config key")
    parser.add_argument("--processes", type=int, default=None, help="training processes (GPUs), default 1 or "
                        "the accelerate config's num_processes")
    parser.add_argument("--accelerate-config", metavar="ACC.yaml", default=None,
                        help="an accelerate config (trainer/configs/accelerate/): process count and FSDP sharding")
    parser.add_argument("--sharding", choices=SHARDINGS, default=None, help="override the sharding")
    parser.add_argument("--memory", default="24GiB", help="memory per GPU for the largest-batch answer (24GiB)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the dataset's, "
                        "else 512 for sd15 and 64 for tiny)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the device trained on")


def run(args: argparse.Namespace) -> int:
    """Estimate and print the plan."""
    from .config import load_config, parse_overrides

    cfg = load_config(args.config, parse_overrides(args.set))
    processes, sharding = 1, "none"
    if args.accelerate_config:
        processes, sharding = read_accelerate_config(args.accelerate_config)
    processes = args.processes or processes
    plan = estimate(cfg, processes=processes, sharding=args.sharding or sharding, size=args.size,
                    device=args.device)
    sys.stdout.write(format_plan(plan, parse_bytes(args.memory)) + "\n")
    return 0


def read_accelerate_config(path: str | Path) -> tuple[int, str]:
    """(num_processes, sharding) of an accelerate config file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    processes = int(data.get("num_processes", 1))
    if data.get("distributed_type") != "FSDP":
        return processes, "none"
    fsdp = data.get("fsdp_config", {}) or {}
    strategy = str(fsdp.get("fsdp_sharding_strategy", "")).upper()
    reshard = fsdp.get("fsdp_reshard_after_forward", True)
    if strategy in ("SHARD_GRAD_OP", "2") or reshard is False or str(reshard).upper() == "SHARD_GRAD_OP":
        return processes, "shard_grad_op"
    if strategy in ("NO_SHARD", "3"):
        return processes, "none"
    return processes, "full_shard"


@dataclass
class MemoryPlan:
    """Bytes per process of one training config (see the module docstring)."""

    stage: int
    optimizer: str
    precision: str
    checkpointing: bool
    processes: int
    sharding: str
    batch: int
    frames: int
    size: int
    trained: int                # numbers trained
    model_params: int           # bytes of the model's weights on this process
    encoder_params: int         # frozen VAE + CLIP
    grads: int
    optimizer_state: int
    step_transient: int
    autocast_copies: int
    act_probes: dict[int, int]  # forward+backward activations measured at a few batch sizes
    enc_probes: dict[int, int]  # encoding peak (frozen VAE and CLIP, no autograd) at the same
    ddp_buckets: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def act_per_sample(self) -> int:
        """Activation bytes per further sample (the slope between the two largest probes)."""
        (b0, a0), (b1, a1) = sorted(self.act_probes.items())[-2:]
        return (a1 - a0) // (b1 - b0)

    def activations(self, batch: int | None = None) -> int:
        """Activation bytes at ``batch`` samples per process (the config's by default)."""
        return _interpolate(self.act_probes, self.batch if batch is None else batch)

    def total(self, batch: int | None = None) -> int:
        """Peak bytes per process at ``batch``."""
        b = self.batch if batch is None else batch
        steady = self.model_params + self.encoder_params + self.optimizer_state
        encode = _interpolate(self.enc_probes, b) + (self.grads if self.ddp_buckets else 0)
        backward = self.activations(b) + self.autocast_copies + self.grads
        step = self.grads + self.step_transient
        return steady + max(encode, backward, step)

    def largest_batch(self, memory: int) -> int:
        """The largest batch per process whose peak fits ``memory`` (0 when not even one)."""
        if self.total(1) > memory:
            return 0
        lo, hi = 1, 2
        while self.total(hi) <= memory and hi < 1 << 20:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.total(mid) <= memory else (lo, mid)
        return lo


def _interpolate(probes: dict[int, int], batch: int) -> int:
    """Piecewise-linear through the probes, extended with the last slope (memory grows linearly in batch)."""
    points = sorted(probes.items())
    for (b0, v0), (b1, v1) in zip(points, points[1:]):
        if batch <= b1 or b1 == points[-1][0]:
            return int(v0 + (v1 - v0) * (batch - b0) / (b1 - b0))
    return points[0][1]


def _tensor_bytes(path: str | None, dtype_bytes: int) -> int | None:
    """Bytes of the tensors in a safetensors file or folder (from the headers), or None when there is none."""
    if not path:
        return None
    from safetensors import safe_open

    p = Path(path)
    files = [p] if p.is_file() and p.suffix == ".safetensors" else sorted(p.rglob("*.safetensors")) if p.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return total * dtype_bytes


def meta_encoders(cfg, dtype):
    """The frozen VAE and CLIP image encoder as meta modules, from the configured folders' config.json
    (else the SD-1.5 VAE and ViT-L/14 configs)."""
    import json

    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from emoji_model.checkpoints import CLIP_VIT_L14_VISION_CONFIG, SD_VAE_CONFIG

    def config_of(path, default):
        if path:
            p = Path(path)
            for c in (p / "config.json", p.parent / "config.json"):
                if c.is_file():
                    return json.loads(c.read_text())
        return dict(default)

    vae_cfg = config_of(cfg.vae, SD_VAE_CONFIG)
    clip_cfg = config_of(cfg.image_encoder, CLIP_VIT_L14_VISION_CONFIG)
    clip_cfg = clip_cfg.get("vision_config", clip_cfg)
    clip_cfg = {k: v for k, v in clip_cfg.items() if not k.startswith("_") and k not in ("architectures",
                                                                                         "transformers_version")}
    with torch.device("meta"):
        vae = AutoencoderKL.from_config({k: v for k, v in vae_cfg.items() if not k.startswith("_")})
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg))
    # nn.Module.to, not diffusers' override (which warns about fp32 modules; there are none here)
    vae, clip = torch.nn.Module.to(vae, dtype), clip.to(dtype)
    return vae.requires_grad_(False).eval(), clip.requires_grad_(False).eval()


def _fused_attention():
    """F.scaled_dot_product_attention as the fused kernels behave, in shapes: saves q, k, v, the output and
    its log-sum-exp for backward (on meta, torch would decompose it and keep the whole attention matrix)."""
    import torch

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        return Fused.apply(q, k, v)

    from unittest import mock

    return mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", attention)


_PEAKS: dict[str, tuple[int, int, int]] = {}  # meta runs already made in this process (plans of several sharding)


def _meta_peaks(cfg, fye_config, dtype, batch: int, frames: int, size: int) -> tuple[int, int, int]:
    """(encoding peak, forward+backward peak, gradient bytes counted in it) of one micro-step on meta."""
    import json

    key = json.dumps([cfg.to_dict(), fye_config.to_dict(), str(dtype), batch, frames, size], sort_keys=True,
                     default=str)
    if key not in _PEAKS:
        _PEAKS[key] = _run_meta_step(cfg, fye_config, dtype, batch, frames, size)
    return _PEAKS[key]


def _run_meta_step(cfg, fye_config, dtype, batch: int, frames: int, size: int) -> tuple[int, int, int]:
    import torch

    from emoji_model.networks import build_model

    from .memory import PeakTensorMemory
    from .objectives import make_noise_scheduler
    from .step import FrozenEncoders, TrainingForward, set_trainable, training_losses

    model = build_model(fye_config, "meta").to(dtype)
    named = set_trainable(model, cfg.trainable_groups(fye_config.cover_channels))
    model.enable_gradient_checkpointing(cfg.gradient_checkpointing)
    model.train()
    vae, clip = meta_encoders(cfg, dtype)
    encoders = FrozenEncoders(vae, clip)
    sched = make_noise_scheduler(fye_config.scheduler, fye_config.prediction_type)
    sched.alphas_cumprod = sched.alphas_cumprod.to("meta")
    forward = TrainingForward(model, temporal=cfg.stage == 2)
    # The bank dropout picks rows by value (not possible on meta); all rows attending is the larger case.
    run_cfg = cfg.replace(cfg_drop_bank=False)
    h = size // 8
    batch_in = {"pixels": torch.empty(batch, 3, frames, size, size, device="meta"),
                "reference": torch.empty(batch, 3, size, size, device="meta"),
                "control": torch.empty(batch, 3, frames, size, size, device="meta"),
                "masks": torch.empty(batch, 2, frames, h, h, device="meta")}
    covering = cfg.cover and fye_config.cover_channels > 0
    with _fused_attention(), PeakTensorMemory() as meter:
        encoders.latents(batch_in["pixels"], None, cfg.latent_sample)
        encoders.reference(batch_in["reference"])
        encode = meter.peak
        meter.reset_peak()
        out = training_losses(forward, encoders, batch_in, sched, None, run_cfg, covering)
        out["loss"].backward()
    grads = sum(p.numel() * p.element_size() for _, p in named)
    return encode, meter.peak, grads


def estimate(cfg, *, processes: int = 1, sharding: str = "none", size: int | None = None,
             device: str = "cuda") -> MemoryPlan:
    """The memory plan of ``cfg`` per process (see the module docstring); allocates nothing."""
    import torch

    from emoji_model.errors import InvalidRequestError
    from emoji_model.networks import FYEConfig, build_model

    from .optim import estimated_state_bytes

    if sharding not in SHARDINGS:
        raise InvalidRequestError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    if processes < 1:
        raise InvalidRequestError(f"processes must be at least 1, got {processes}")
    notes = []
    clip_length, data_size = 16, None
    if cfg.dataset and (Path(cfg.dataset) / "index.json").is_file():
        from .data import load_index

        index = load_index(cfg.dataset)
        clip_length, data_size = int(index["clip_length"]), int(index["size"])
    size = size or data_size or (512 if cfg.model == "sd15" else 64)
    frames = cfg.sample_frames(clip_length)
    preset = FYEConfig.sd15 if cfg.model == "sd15" else FYEConfig.tiny
    fye_config = preset(**dict(cfg.model_overrides or {}))
    if cfg.init_checkpoint:
        notes.append("init_checkpoint's own config is not read: the sizes are those of the preset")
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
    weight_bytes = 2 if half else 4

    model = build_model(fye_config, "meta")
    from .step import set_trainable

    named = set_trainable(model, cfg.trainable_groups(fye_config.cover_channels))
    shapes = [p.shape for _, p in named]
    trained = sum(math.prod(s) for s in shapes)
    all_params = sum(p.numel() for p in model.parameters())
    vae, clip = meta_encoders(cfg, torch.float32)
    enc_numel = {"vae": sum(p.numel() for p in vae.parameters()), "clip": sum(p.numel() for p in clip.parameters())}
    enc_bytes = sum(_tensor_bytes(path, weight_bytes) or enc_numel[k] * weight_bytes
                    for k, path in (("vae", cfg.vae), ("clip", cfg.image_encoder)))

    shard_all = sharding == "full_shard" and processes > 1
    shard_states = sharding != "none" and processes > 1
    div = processes if shard_states else 1
    state = estimated_state_bytes(shapes, cfg.optimizer, cfg.galore_rank, cfg) // div
    grads = 4 * trained // div
    if cfg.optimizer == "adamw" and device == "cuda":
        transient = 4 * trained // div  # foreach AdamW: one fp32 temporary list over all trained tensors
    else:
        transient = 3 * 4 * max(math.prod(s) for s in shapes)
    autocast = 2 * trained if half and not cfg.gradient_checkpointing else 0
    if shard_states:
        notes.append("the trainer runs DDP only (it refuses FSDP accelerate configs): the sharded figures are "
                     "what FSDP would need")

    probes = sorted({1, 2, 4, cfg.batch_size})
    peaks = {b: _meta_peaks(cfg, fye_config, half or torch.float32, b, frames, size) for b in probes}
    # the meta forward holds its gradients in the run's dtype; the plan counts fp32 gradients separately
    act = {b: max(0, bwd - g) for b, (_, bwd, g) in peaks.items()}
    enc = {b: e for b, (e, _, _) in peaks.items()}
    return MemoryPlan(
        stage=cfg.stage, optimizer=cfg.optimizer, precision=cfg.mixed_precision,
        checkpointing=cfg.gradient_checkpointing, processes=processes, sharding=sharding, batch=cfg.batch_size,
        frames=frames, size=size, trained=trained,
        model_params=4 * all_params // (processes if shard_all else 1), encoder_params=enc_bytes, grads=grads,
        optimizer_state=state, step_transient=transient, autocast_copies=autocast,
        act_probes=act, enc_probes=enc,
        ddp_buckets=processes > 1 and not shard_states, notes=notes)


def format_plan(plan: MemoryPlan, memory: int) -> str:
    """The plan as a short table for the terminal."""
    def gib(x: int) -> str:
        return f"{x / GIB:8.2f} GiB"

    shard = "" if plan.sharding == "none" or plan.processes == 1 else f", FSDP {plan.sharding}"
    lines = [
        f"stage {plan.stage}: {plan.trained / 1e6:.1f}M trained numbers, optimizer {plan.optimizer}, precision "
        f"{plan.precision}, gradient checkpointing {'on' if plan.checkpointing else 'off'}",
        f"per process of {plan.processes}{shard}: batch {plan.batch} x {plan.frames} frame(s) at {plan.size}px",
        f"  parameters        {gib(plan.model_params + plan.encoder_params)}  (model fp32 "
        f"{plan.model_params / GIB:.2f}, frozen VAE+CLIP {plan.encoder_params / GIB:.2f})",
        f"  gradients         {gib(plan.grads)}",
        f"  optimizer state   {gib(plan.optimizer_state)}",
        f"  activations       {gib(plan.activations() + plan.autocast_copies)}  "
        f"({plan.act_per_sample / GIB:.2f} GiB per sample"
        + (f", autocast copies {plan.autocast_copies / GIB:.2f}" if plan.autocast_copies else "") + ")",
        f"  peak              {gib(plan.total())}",
        f"largest batch per process in {memory / GIB:.1f} GiB: {plan.largest_batch(memory)}",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
