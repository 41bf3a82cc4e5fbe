"""Sampling: schedulers, classifier-free guidance, context windows, known frames, progressive video.

Every stage is a small function over a *denoiser* (a callable ``(x, t, frames) -> model output``
with classifier-free guidance already folded in), in the manner of k-diffusion's samplers. The
schedulers are diffusers' own; the defaults reproduce the released Follow-Your-Emoji inference:
DDIM, 30 steps, guidance 3.5, v-prediction, zero-terminal-SNR rescaled scaled-linear betas
(0.00085–0.012) with trailing timestep spacing (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .constants import FUSIONS
from .errors import InvalidRequestError

if TYPE_CHECKING:
    import torch

    from .runtime import ProgressBar, StandaloneRuntime

log = logging.getLogger(__name__)

# name -> (diffusers class, extra settings). Every scheduler shares the released beta schedule.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "steps_offset": 1}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "final_sigmas_type": "zero", "lower_order_final": True}),
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {"final_sigmas_type": "zero", "lower_order_final": True}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
}
BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
PREDICTION_TYPES = ("v_prediction", "epsilon")


def make_scheduler(name: str = "ddim", prediction_type: str = "v_prediction",
                   zero_terminal_snr: bool | None = None, betas: dict[str, Any] | None = None):
    """A diffusers scheduler with the released betas (or ``betas``) and settings valid for ``prediction_type``.

    Zero-terminal-SNR rescaling and trailing spacing are on for v-prediction (as released) and off
    for epsilon-prediction, where a zero-SNR last step cannot be predicted.
    """
    import diffusers

    if name not in SCHEDULERS:
        raise InvalidRequestError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise InvalidRequestError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if zero_terminal_snr is None:
        zero_terminal_snr = prediction_type == "v_prediction"
    if zero_terminal_snr and prediction_type == "epsilon":
        raise InvalidRequestError("zero-terminal-SNR needs a v-prediction checkpoint; this one predicts epsilon")
    cls_name, extra = SCHEDULERS[name]
    kwargs = dict(BETAS, prediction_type=prediction_type, **extra)
    kwargs.update({k: v for k, v in (betas or {}).items() if k in BETAS})
    kwargs["timestep_spacing"] = "trailing" if zero_terminal_snr else "leading"
    if zero_terminal_snr:
        kwargs["rescale_betas_zero_snr"] = True
    if name in ("euler", "euler_ancestral") and not zero_terminal_snr:
        kwargs["timestep_spacing"] = "linspace"
    return getattr(diffusers, cls_name)(**kwargs)


@dataclass(frozen=True)
class SamplerSettings:
    """What a sampling run needs besides the model and its inputs."""

    steps: int = 30
    cfg: float = 3.5
    scheduler: str = "ddim"
    seed: int = 0
    window: int = 16
    overlap: int = 4
    fusion: str = "pyramid"
    eta: float = 0.0
    temporal: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self, max_window: int) -> None:
        """Raise InvalidRequestError for settings no run can honour."""
        if self.steps < 1:
            raise InvalidRequestError(f"steps must be at least 1, got {self.steps}")
        if self.cfg < 0:
            raise InvalidRequestError(f"cfg must be >= 0, got {self.cfg}")
        if self.window < 1:
            raise InvalidRequestError(f"window must be at least 1 frame, got {self.window}")
        if self.window > max_window:
            raise InvalidRequestError(
                f"window of {self.window} frames exceeds the temporal position encoding of this model "
                f"({max_window} frames); use window <= {max_window}")
        if not 0 <= self.overlap < self.window:
            raise InvalidRequestError(f"overlap must be in [0, window), got {self.overlap} for window {self.window}")
        if self.fusion not in FUSIONS:
            raise InvalidRequestError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.scheduler not in SCHEDULERS:
            raise InvalidRequestError(f"unknown scheduler {self.scheduler!r}; expected one of {sorted(SCHEDULERS)}")


# -- context windows ------------------------------------------------------------------------

def context_windows(num_frames: int, window: int, overlap: int, step: int = 0) -> list[list[int]]:
    """Uniform overlapping windows covering ``range(num_frames)``, shifted from step to step.

    Window starts are ``offset + k * stride`` (stride = window - overlap) clamped to the track, with
    the first window at 0 and the last ending at the last frame. The offset follows the golden-ratio
    sequence over the steps, so that window seams land on different frames at every denoising step
    and spread evenly over the stride.
    """
    if num_frames <= window:
        return [list(range(num_frames))]
    stride = window - overlap
    offset = int(stride * ((step * 0.6180339887498949) % 1.0))
    last = num_frames - window
    starts = {0, last}
    starts.update(min(s, last) for s in range(offset, last, stride))
    return [list(range(s, s + window)) for s in sorted(starts)]


def fusion_weights(length: int, kind: str = "pyramid") -> torch.Tensor:
    """Per-frame weights of one window: pyramid (1, 2, ..., peak, ..., 2, 1) or flat ones."""
    import torch

    if kind == "flat":
        return torch.ones(length)
    if kind != "pyramid":
        raise InvalidRequestError(f"fusion must be one of {FUSIONS}, got {kind!r}")
    idx = torch.arange(length, dtype=torch.float32)
    return torch.minimum(idx + 1, length - idx)


# -- the denoiser -----------------------------------------------------------------------------

@dataclass
class Conditioning:
    """Per-video inputs reused at every step and window (uncond first, cond second along batch)."""

    prompt_tokens: torch.Tensor          # [2, T, 768] (uncond, cond) or [1, T, 768] if cfg == 1
    banks: list[torch.Tensor]             # one [2, L_i, C_i] per transformer block (same batch order)
    landmark_features: torch.Tensor       # [1, 320, F, h, w] for every frame of the track
    bank_mask: torch.Tensor | None = None  # [2] bool: rows that attend to the reference (None: all)
    guided: bool = True                   # False: batch holds the conditional branch only


def make_denoiser(model, cond: Conditioning, cfg: float, temporal: bool = True,
                  covered: torch.Tensor | None = None, cover_mask: torch.Tensor | None = None,
                  dtype: torch.dtype | None = None) -> Callable[[torch.Tensor, Any, Sequence[int]], torch.Tensor]:
    """A denoiser ``(x [1,4,W,h,w], t, frame indices) -> guided model output`` in float32.

    The conditional and unconditional branches run as one batch, in the model's ``dtype`` (the
    latents themselves stay float32); ``covered``/``cover_mask`` ([1,4,F,h,w]/[1,1,F,h,w] over the
    whole track; the mask is 1 on unknown frames) feed the covered-latent input channels.
    """
    import torch

    def denoise(x: torch.Tensor, t, frames: Sequence[int]) -> torch.Tensor:
        idx = list(frames)
        n = 2 if cond.guided else 1
        x = x.to(dtype or x.dtype)
        lmk = cond.landmark_features[:, :, idx].to(x.device, x.dtype)
        kwargs: dict[str, Any] = {"landmark_features": lmk.expand(n, *lmk.shape[1:]), "temporal": temporal,
                                  "bank_mask": cond.bank_mask}
        if covered is not None:
            cov = covered[:, :, idx].to(x.device, x.dtype)
            mask = cover_mask[:, :, idx].to(x.device, x.dtype)
            kwargs["covered"] = cov.expand(n, *cov.shape[1:])
            kwargs["cover_mask"] = mask.expand(n, *mask.shape[1:])
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(n)
        out = model.denoise(torch.cat([x] * n), timestep, cond.prompt_tokens, cond.banks, **kwargs).float()
        if not cond.guided:
            return out
        uncond, text = out.chunk(2)
        return uncond + cfg * (text - uncond)

    return denoise


# -- the sampling loop ------------------------------------------------------------------------

def initial_noise(shape: Sequence[int], seed: int, device, dtype,
                  frames: Sequence[int] | None = None) -> torch.Tensor:
    """Seeded Gaussian noise [1,C,F,h,w], drawn per frame on the CPU.

    Frame ``i`` always gets the same noise for a seed, whatever the track length or the subset of
    frames asked for (``frames``: their indices), and on every device.
    """
    import torch

    _, channels, count, h, w = shape
    frames = range(count) if frames is None else frames
    if len(frames) != count:
        raise InvalidRequestError(f"{len(frames)} frame indices for a noise tensor of {count} frames")
    out = torch.empty((1, channels, count, h, w), dtype=torch.float32)
    gen = torch.Generator(device="cpu")
    for k, i in enumerate(frames):
        gen.manual_seed((int(seed) * 1_000_003 + int(i)) % (2**63))
        out[0, :, k] = torch.randn((channels, h, w), generator=gen)
    return out.to(device, dtype)


def sample_windows(denoiser, latents: torch.Tensor, scheduler, *, window: int, overlap: int,
                   fusion: str = "pyramid", known: dict[int, torch.Tensor] | None = None,
                   replace_known: bool = True, noise: torch.Tensor | None = None, eta: float = 0.0,
                   seed: int = 0, runtime: StandaloneRuntime | None = None,
                   bar: ProgressBar | None = None) -> torch.Tensor:
    """Denoise float32 ``latents`` [1,4,F,h,w] over the scheduler's timesteps with fused context windows.

    Known frames (index -> clean latent [4,h,w]) are imposed by replacement with their latents
    noised to each step (RePaint-style, Lugmayr et al. 2022) when ``replace_known``, and always set
    exactly at the end, so they come out unchanged.
    """
    import torch

    from .runtime import resolve

    rt = resolve(runtime)
    num_frames = latents.shape[2]
    known = known or {}
    known_idx = sorted(known)
    if known_idx:
        if min(known_idx) < 0 or max(known_idx) >= num_frames:
            raise InvalidRequestError(f"known frame indices {known_idx} fall outside 0..{num_frames - 1}")
        known_lat = torch.stack([known[i] for i in known_idx], dim=1)[None].to(latents)  # [1,4,K,h,w]
        known_noise = noise[:, :, known_idx] if noise is not None else torch.randn_like(known_lat)
    step_kwargs: dict[str, Any] = {}
    params = inspect.signature(scheduler.step).parameters
    if "eta" in params:
        step_kwargs["eta"] = eta
    if "generator" in params:
        step_kwargs["generator"] = torch.Generator(device="cpu").manual_seed((int(seed) + 1) % 2**63)
    for step, t in enumerate(scheduler.timesteps):
        if known_idx and replace_known:
            latents[:, :, known_idx] = scheduler.add_noise(known_lat, known_noise, t.reshape(1))
        windows = context_windows(num_frames, window, overlap, step)
        if len(windows) == 1:  # the whole track in one window: no fusion, the prediction itself
            rt.check_interrupt()
            fused = denoiser(scheduler.scale_model_input(latents, t), t, windows[0])
            if bar is not None:
                bar.update()
        else:
            fused = torch.zeros_like(latents, dtype=torch.float32)
            total = torch.zeros(num_frames, dtype=torch.float32, device=latents.device)
            for frames in windows:
                rt.check_interrupt()
                span = slice(frames[0], frames[-1] + 1)  # windows are contiguous
                pred = denoiser(scheduler.scale_model_input(latents[:, :, span], t), t, frames).float()
                w = fusion_weights(len(frames), fusion).to(latents.device)
                fused[:, :, span] += pred * w[None, None, :, None, None]
                total[span] += w
                if bar is not None:
                    bar.update()
            fused = (fused / total[None, None, :, None, None]).to(latents.dtype)
        latents = scheduler.step(fused, t, latents, **step_kwargs).prev_sample
    if known_idx:
        latents[:, :, known_idx] = known_lat
    return latents


def count_windows(num_frames: int, window: int, overlap: int, steps: int) -> int:
    """Model evaluations a windowed run makes (for progress bars)."""
    return sum(len(context_windows(num_frames, window, overlap, s)) for s in range(steps))


def keyframe_indices(num_frames: int, stride: int) -> list[int]:
    """Keyframes every ``stride`` frames, always including the first and the last frame."""
    if stride < 1:
        raise InvalidRequestError(f"keyframe stride must be at least 1, got {stride}")
    idx = list(range(0, num_frames, stride))
    if idx[-1] != num_frames - 1:
        idx.append(num_frames - 1)
    return idx
