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
    # Share of the starting noise common to every frame (0: independent frames, as released). The rest is
    # each frame's own; variances add to one, so every frame's noise stays standard normal. Shared noise
    # leaves the landmarks as the main cause of change between frames: less flicker.
    noise_share: float = 0.0
    loop: bool = False  # context windows wrap around the end of the track (a seamless loop)
    extra: dict = field(default_factory=dict)

    def validate(self, max_window: int) -> None:
        """Raise InvalidRequestError for settings no run can honour."""
        if not 0.0 <= self.noise_share <= 1.0:
            raise InvalidRequestError(f"noise_share must be within 0..1, got {self.noise_share}")
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

def context_windows(num_frames: int, window: int, overlap: int, step: int = 0,
                    loop: bool = False) -> list[list[int]]:
    """Uniform overlapping windows covering ``range(num_frames)``, shifted from step to step.

    Window starts are ``offset + k * stride`` (stride = window - overlap) clamped to the track, with
    the first window at 0 and the last ending at the last frame. The offset follows the golden-ratio
    sequence over the steps, so that window seams land on different frames at every denoising step
    and spread evenly over the stride. With ``loop`` the track is a circle: windows run on past the
    last frame into the first ones (a track no longer than the window is one window, rotated), so the
    end is denoised together with the start.
    """
    golden = (step * 0.6180339887498949) % 1.0
    if loop:
        if num_frames <= window:
            start = int(num_frames * golden)
            return [[(start + j) % num_frames for j in range(num_frames)]]
        stride = window - overlap
        count = -(-num_frames // stride)                                   # ceil: the circle is covered
        offset = int(stride * golden)
        return [[(offset + k * stride + j) % num_frames for j in range(window)] for k in range(count)]
    if num_frames <= window:
        return [list(range(num_frames))]
    stride = window - overlap
    offset = int(stride * golden)
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

Denoiser = Callable[["torch.Tensor", Any, Sequence[int]], "torch.Tensor"]
"""``(x [1,4,W,h,w], t, frame indices of the W frames) -> guided model output [1,4,W,h,w]`` in float32.

Every sampling stage below takes or returns one (k-diffusion's convention of one denoiser signature).
"""


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε(∅) + s·(ε(c) − ε(∅)), for any prediction type."""
    return uncond + scale * (cond - uncond)

@dataclass
class Conditioning:
    """Per-video inputs reused at every step and window (uncond first, cond second along batch)."""

    prompt_tokens: torch.Tensor          # [2, T, 768] (uncond, cond) or [1, T, 768] if cfg == 1
    banks: list[torch.Tensor]             # one [2, L_i, C_i] per transformer block (same batch order)
    landmark_features: Any                # [1, 320, F, h, w] for every frame, or a store with .window(frames)
    bank_mask: torch.Tensor | None = None  # [2] bool: rows that attend to the reference (None: all)
    guided: bool = True                   # False: batch holds the conditional branch only
    context: Any = None                   # the model's prepare_reference() of the three above, made once


def window_features(features, frames: Sequence[int]) -> torch.Tensor:
    """Landmark features [1,C,W,h,w] of ``frames``: from a store (``.window``) or sliced from a tensor."""
    window = getattr(features, "window", None)
    return window(frames) if window is not None else features[:, :, list(frames)]


def make_denoiser(model, cond: Conditioning, cfg: float, temporal: bool = True,
                  covered: torch.Tensor | None = None, cover_mask: torch.Tensor | None = None,
                  dtype: torch.dtype | None = None, on_block: Callable[[str], None] | None = None) -> Denoiser:
    """A denoiser ``(x [1,4,W,h,w], t, frame indices) -> guided model output`` in float32.

    The conditional and unconditional branches run as one batch, in the model's ``dtype`` (the
    latents themselves stay float32); ``covered``/``cover_mask`` ([1,4,F,h,w]/[1,1,F,h,w] over the
    whole track; the mask is 1 on unknown frames) feed the covered-latent input channels;
    ``on_block`` is handed to the UNet walk (called after each of its blocks). The banks' and prompt
    tokens' projections are made once (``cond.context``) where the model can prepare them.
    """
    import torch

    if cond.context is None and hasattr(model, "prepare_reference"):
        cond.context = model.prepare_reference(cond.prompt_tokens, cond.banks, cond.bank_mask)
    if cond.context is not None:
        tokens, banks, bank_mask = None, cond.context, None
    else:
        tokens, banks, bank_mask = cond.prompt_tokens, cond.banks, cond.bank_mask

    def denoise(x: torch.Tensor, t, frames: Sequence[int]) -> torch.Tensor:
        idx = list(frames)
        n = 2 if cond.guided else 1
        x = x.to(dtype or x.dtype)
        lmk = window_features(cond.landmark_features, idx).to(x.device, x.dtype)
        kwargs: dict[str, Any] = {"landmark_features": lmk.expand(n, *lmk.shape[1:]), "temporal": temporal,
                                  "bank_mask": bank_mask}
        if on_block is not None:
            kwargs["on_block"] = on_block
        if covered is not None:
            cov = covered[:, :, idx].to(x.device, x.dtype)
            mask = cover_mask[:, :, idx].to(x.device, x.dtype)
            kwargs["covered"] = cov.expand(n, *cov.shape[1:])
            kwargs["cover_mask"] = mask.expand(n, *mask.shape[1:])
        timestep = torch.as_tensor(t, device=x.device).reshape(-1)[:1].expand(n)
        out = model.denoise(x.expand(n, *x.shape[1:]), timestep, tokens, banks, **kwargs).float()
        if not cond.guided:
            return out
        uncond, text = out.chunk(2)
        return guided(uncond, text, cfg)

    return denoise


# -- the sampling loop ------------------------------------------------------------------------

def initial_noise(shape: Sequence[int], seed: int, device, dtype,
                  frames: Sequence[int] | None = None, share: float = 0.0) -> torch.Tensor:
    """Seeded Gaussian noise [1,C,F,h,w], drawn per frame on the CPU.

    Frame ``i`` always gets the same noise for a seed, whatever the track length or the subset of
    frames asked for (``frames``: their indices), and on every device. With ``share`` the noise is
    √share·(one draw common to all frames) + √(1−share)·(the frame's own draw).
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
    if share:
        gen.manual_seed((int(seed) * 1_000_003 - 1) % (2**63))  # a stream no frame index reaches
        common = torch.randn((channels, h, w), generator=gen)
        out = (share ** 0.5) * common[None, :, None] + ((1 - share) ** 0.5) * out
    return out.to(device, dtype)


def counted(denoiser: Denoiser, runtime: StandaloneRuntime, bar: ProgressBar | None = None) -> Denoiser:
    """The denoiser with the host's interrupt checked before, and progress reported after, every evaluation."""

    def denoise(x, t, frames):
        runtime.check_interrupt()
        out = denoiser(x, t, frames)
        if bar is not None:
            bar.update()
        return out

    return denoise


def fused(denoiser: Denoiser, windows: Sequence[Sequence[int]], fusion: str = "pyramid") -> Denoiser:
    """A denoiser over a whole track from one over its context windows (positions into the track).

    Each window's prediction is weighted by :func:`fusion_weights` and the weighted sum divided by the
    weights, per frame; a single window is the prediction itself, unweighted.
    """
    import torch

    def denoise(x, t, frames):
        if len(windows) == 1 and list(windows[0]) == list(range(x.shape[2])):
            return denoiser(x, t, [frames[i] for i in windows[0]])
        out = torch.zeros_like(x, dtype=torch.float32)
        total = torch.zeros(x.shape[2], dtype=torch.float32, device=x.device)
        for window in windows:
            if list(window) == list(range(window[0], window[0] + len(window))):
                span = slice(window[0], window[-1] + 1)
            else:  # a window that wraps around the end of a looping track
                span = torch.as_tensor(window, device=x.device)
            pred = denoiser(x[:, :, span], t, [frames[i] for i in window]).float()
            w = fusion_weights(len(window), fusion).to(x.device)
            out[:, :, span] += pred * w[None, None, :, None, None]
            total[span] += w
        return (out / total[None, None, :, None, None]).to(x.dtype)

    return denoise


@dataclass
class KnownFrames:
    """Frames whose clean latents are given, imposed by replacement (RePaint-style, Lugmayr et al. 2022)."""

    index: list[int]
    latents: torch.Tensor | None = None  # [1,4,K,h,w]
    noise: torch.Tensor | None = None    # [1,4,K,h,w], the noise they are noised with at every step

    @classmethod
    def of(cls, known: dict[int, torch.Tensor] | None, latents: torch.Tensor,
           noise: torch.Tensor | None = None) -> KnownFrames:
        """The known frames (index -> clean latent [4,h,w]) of ``latents`` [1,4,F,h,w]; ``noise`` over all F frames."""
        import torch

        index = sorted(known or {})
        if not index:
            return cls([])
        num_frames = latents.shape[2]
        if min(index) < 0 or max(index) >= num_frames:
            raise InvalidRequestError(f"known frame indices {index} fall outside 0..{num_frames - 1}")
        clean = torch.stack([known[i] for i in index], dim=1)[None].to(latents)  # [1,4,K,h,w]
        return cls(index, clean, noise[:, :, index] if noise is not None else torch.randn_like(clean))

    def noised(self, latents: torch.Tensor, scheduler, t) -> torch.Tensor:
        """``latents`` with the known frames replaced by their clean latents noised to step ``t``."""
        if self.index:
            latents[:, :, self.index] = scheduler.add_noise(self.latents, self.noise, t.reshape(1))
        return latents

    def restore(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` with the known frames set to their clean latents exactly."""
        if self.index:
            latents[:, :, self.index] = self.latents
        return latents


def scheduler_step(scheduler, eta: float = 0.0, seed: int = 0) -> Callable[[torch.Tensor, Any, torch.Tensor],
                                                                          torch.Tensor]:
    """``(model output, t, x_t) -> x_{t-1}``: the scheduler's own update, with ``eta`` and a seeded generator
    where its step takes them (DDIM's η; the ancestral and DDPM samplers' fresh noise)."""
    import torch

    kwargs: dict[str, Any] = {}
    params = inspect.signature(scheduler.step).parameters
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = torch.Generator(device="cpu").manual_seed((int(seed) + 1) % 2**63)

    def step(output: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        return scheduler.step(output, t, x, **kwargs).prev_sample

    return step


def sample_windows(denoiser: Denoiser, latents: torch.Tensor, scheduler, *, window: int, overlap: int,
                   fusion: str = "pyramid", known: dict[int, torch.Tensor] | None = None,
                   replace_known: bool = True, noise: torch.Tensor | None = None, eta: float = 0.0,
                   seed: int = 0, loop: bool = False, runtime: StandaloneRuntime | None = None,
                   bar: ProgressBar | None = None) -> torch.Tensor:
    """Denoise float32 ``latents`` [1,4,F,h,w] over the scheduler's timesteps with fused context windows.

    At every step: 1. known frames (index -> clean latent [4,h,w]) are replaced by their latents
    noised to that step when ``replace_known``; 2. the step's windows (:func:`context_windows`)
    are denoised and fused (:func:`fused`); 3. the scheduler steps (:func:`scheduler_step`). The
    known frames are set exactly at the end, so they come out unchanged.
    """
    from .runtime import resolve

    frames = KnownFrames.of(known, latents, noise)
    step = scheduler_step(scheduler, eta, seed)
    evaluate = counted(denoiser, resolve(runtime), bar)
    positions = list(range(latents.shape[2]))
    for i, t in enumerate(scheduler.timesteps):
        if replace_known:
            latents = frames.noised(latents, scheduler, t)
        den = fused(evaluate, context_windows(len(positions), window, overlap, i, loop), fusion)
        latents = step(den(scheduler.scale_model_input(latents, t), t, positions), t, latents)
    return frames.restore(latents)


def count_windows(num_frames: int, window: int, overlap: int, steps: int, loop: bool = False) -> int:
    """Model evaluations a windowed run makes (for progress bars)."""
    return sum(len(context_windows(num_frames, window, overlap, s, loop)) for s in range(steps))


def keyframe_indices(num_frames: int, stride: int) -> list[int]:
    """Keyframes every ``stride`` frames, always including the first and the last frame."""
    if stride < 1:
        raise InvalidRequestError(f"keyframe stride must be at least 1, got {stride}")
    idx = list(range(0, num_frames, stride))
    if idx[-1] != num_frames - 1:
        idx.append(num_frames - 1)
    return idx
