"""The reference portrait, encoded once per video: latent, image-prompt tokens, appearance banks.

Conventions of the callables this module takes:

* ``vae_encode(pixels)``: pixels [B,3,H,W] RGB in -1..1 → latents [B,4,H/8,W/8] **already multiplied by
  the VAE scaling factor** (0.18215 for SD-1.5). The released pipeline uses the posterior mean.
* ``clip_encode(pixels)``: pixels [B,3,H,W] RGB in 0..1 (any size) → CLIP image tokens [B,T,clip_dim],
  the vision transformer's ``last_hidden_state`` (ViT-L/14: [B,257,1024]); the callable does CLIP's own
  preprocessing (shorter side to 224, centre crop, CLIP mean/std), as the released CLIPImageProcessor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .constants import LATENT_SCALE
from .errors import InvalidRequestError
from .networks import FollowYourEmoji
from .provenance import ImageSignature, image_signature

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VaeEncode = Callable[[torch.Tensor], torch.Tensor]
ClipEncode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ReferenceGroup:
    """The encodings of several portraits, one per face (the crops of Crop Face with every face)."""

    references: list[ReferenceEncoding]

    def __post_init__(self) -> None:
        self.references = list(self.references)
        if not self.references:
            raise InvalidRequestError("a reference group needs at least one encoded portrait")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceGroup:
        """A copy on ``device`` / in ``dtype``."""
        return ReferenceGroup([r.to(device, dtype) for r in self.references])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the portraits were encoded at."""
        return self.references[0].size


def references_of(value: ReferenceEncoding | ReferenceGroup) -> list[ReferenceEncoding]:
    """The encodings of a FYE_REFERENCE value, one per face."""
    if isinstance(value, ReferenceGroup):
        return list(value.references)
    return [value]


@dataclass
class ReferenceEncoding:
    """What the sampler reuses at every step and context window.

    ``latent`` [1,4,h,w] (× 0.18215); ``clip_tokens`` [1,T,clip_dim] (raw CLIP tokens);
    ``prompt_tokens`` / ``prompt_tokens_uncond`` [1,T',D] for the UNet's cross-attention (the
    unconditional ones come from zeroed CLIP tokens, as released); ``banks`` one [1,h_i·w_i,C_i] per
    spatial transformer block; ``banks_uncond`` the banks computed with the unconditional prompt, or None
    when the unconditional branch attends to no reference at all (the released inference: its UNet
    replaces the reference attention of the unconditional half by plain self-attention).
    """

    latent: torch.Tensor
    clip_tokens: torch.Tensor
    prompt_tokens: torch.Tensor
    prompt_tokens_uncond: torch.Tensor
    banks: list[torch.Tensor]
    banks_uncond: list[torch.Tensor] | None
    size: tuple[int, int]
    source: ImageSignature | None = None  # the portrait it was encoded from (before resizing)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceEncoding:
        """A copy on ``device`` / in ``dtype`` (floating tensors only)."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, latent=mv(self.latent), clip_tokens=mv(self.clip_tokens),
                       prompt_tokens=mv(self.prompt_tokens), prompt_tokens_uncond=mv(self.prompt_tokens_uncond),
                       banks=[mv(b) for b in self.banks],
                       banks_uncond=None if self.banks_uncond is None else [mv(b) for b in self.banks_uncond])

    def batch(self, guidance: bool, repeat: int = 1) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """(prompt_tokens, banks, bank_mask) for ``denoise``: batch [uncond×repeat, cond×repeat] or [cond×repeat].

        ``bank_mask`` is None when every row uses its bank, else [B] bool with False on the unconditional
        rows that attend to no reference.
        """

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.expand(repeat, *t.shape[1:])

        if not guidance:
            return rep(self.prompt_tokens), [rep(b) for b in self.banks], None
        tokens = torch.cat([rep(self.prompt_tokens_uncond), rep(self.prompt_tokens)])
        if self.banks_uncond is None:
            banks = [torch.cat([rep(b), rep(b)]) for b in self.banks]
            mask = torch.tensor([False] * repeat + [True] * repeat, device=self.latent.device)
            return tokens, banks, mask
        banks = [torch.cat([rep(u), rep(c)]) for u, c in zip(self.banks_uncond, self.banks)]
        return tokens, banks, None


def image_to_pixels(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [H,W,3] or float [H,W,3] / [1,H,W,3] in 0..1 → float [1,3,H,W] in 0..1."""
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise InvalidRequestError(f"one reference image expected, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3 or t.shape[-1] not in (3, 4):
        raise InvalidRequestError(f"reference image must be [H,W,3]; got {tuple(t.shape)}")
    t = t[..., :3]
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.permute(2, 0, 1).unsqueeze(0).clamp(0, 1)


def fit_to_size(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [B,3,H,W] so it covers ``size`` (H, W) and centre-crop to it; unchanged when already that size."""
    h, w = size
    if tuple(pixels.shape[-2:]) == (h, w):
        return pixels
    scale = max(h / pixels.shape[-2], w / pixels.shape[-1])
    nh, nw = max(h, round(pixels.shape[-2] * scale)), max(w, round(pixels.shape[-1] * scale))
    out = F.interpolate(pixels, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - h) // 2, (nw - w) // 2
    log.info("reference resized from %s to %s and centre-cropped to %s", tuple(pixels.shape[-2:]), (nh, nw), (h, w))
    return out[..., top:top + h, left:left + w].clamp(0, 1)


def clip_preprocess(pixels: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP's preprocessing of [B,3,H,W] in 0..1: shorter side → ``size`` (bicubic), centre crop, mean/std."""
    scale = size / min(pixels.shape[-2:])
    # the released processor truncates the longer side (transformers get_resize_output_image_size)
    nh, nw = max(size, int(pixels.shape[-2] * scale)), max(size, int(pixels.shape[-1] * scale))
    x = F.interpolate(pixels.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    x = (x.clamp(0, 1) * 255).round() / 255  # the released processor works on 8-bit images
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def vae_encoder_from_diffusers(vae) -> VaeEncode:
    """``vae_encode`` for a diffusers AutoencoderKL: posterior mean × its scaling factor."""
    factor = float(getattr(vae.config, "scaling_factor", LATENT_SCALE))

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        p = pixels.to(device=vae.device, dtype=vae.dtype)
        return vae.encode(p).latent_dist.mean * factor

    return encode


class PixelVAE:
    """A diffusers AutoencoderKL with ComfyUI's VAE call convention, for runs without the host.

    ``encode(images)``: IMAGE [B,H,W,3] in 0..1 → unscaled latents [B,4,H/8,W/8] (posterior mean);
    ``decode(latents)``: unscaled latents → IMAGE [B,H,W,3] in 0..1.
    """

    def __init__(self, vae):
        self.vae = vae

    @classmethod
    def load(cls, path, device=None, dtype: torch.dtype | None = None) -> PixelVAE:
        """From a diffusers folder, a diffusers-layout file or an ldm single file (SD VAE)."""
        from .checkpoints import load_vae

        return cls(load_vae(path, device=device or "cpu", dtype=dtype or torch.float32))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B,H,W,3] in 0..1 → unscaled latents."""
        pixels = images[..., :3].movedim(-1, 1).to(self.vae.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(pixels).latent_dist.mean.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [B,4,h,w] → IMAGE [B,H,W,3] in 0..1."""
        out = self.vae.decode(latents.to(self.vae.device, self.vae.dtype)).sample.float()
        return ((out + 1) / 2).clamp(0, 1).movedim(1, -1)


def clip_encoder_from_transformers(image_encoder) -> ClipEncode:
    """``clip_encode`` for a transformers CLIPVisionModel(WithProjection): preprocessing + last_hidden_state."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        size = int(getattr(image_encoder.config, "image_size", 224))
        x = clip_preprocess(pixels, size).to(device=image_encoder.device, dtype=image_encoder.dtype)
        return image_encoder(pixel_values=x).last_hidden_state

    return encode


@torch.no_grad()
def encode_reference(model: FollowYourEmoji, image: np.ndarray | torch.Tensor, vae_encode: VaeEncode,
                     clip_encode: ClipEncode, size: tuple[int, int] = (512, 512),
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                     uncond_banks: bool = False) -> ReferenceEncoding:
    """Encode the reference portrait once: VAE latent, image-prompt tokens (cond and uncond), appearance banks.

    ``size`` (H, W) in pixels, multiples of 8: the reference is resized to cover it and centre-cropped
    when it differs. ``uncond_banks=True`` also computes banks with the unconditional prompt (a
    training-style unconditional branch); by default the unconditional branch uses no reference, as the
    released inference does.
    """
    h, w = size
    if h % 8 or w % 8:
        raise InvalidRequestError(f"size must be multiples of 8; got {size}")
    device = torch.device(device) if device is not None else model.weight_device()
    dtype = dtype or model.dtype
    pixels = fit_to_size(image_to_pixels(image), size).to(device)

    latent = vae_encode(pixels * 2 - 1).to(device=device, dtype=dtype)
    if tuple(latent.shape[-2:]) != (h // 8, w // 8) or latent.shape[1] != model.config.in_channels:
        raise InvalidRequestError(f"vae_encode returned {tuple(latent.shape)}; expected "
                                  f"[1,{model.config.in_channels},{h // 8},{w // 8}] latents")
    clip_tokens = clip_encode(pixels).to(device=device, dtype=dtype)
    zeros = torch.zeros_like(clip_tokens)
    prompt = model.encode_image_prompt(clip_tokens)
    prompt_uncond = model.encode_image_prompt(zeros)
    banks = model.appearance_banks(latent, prompt, clip_tokens=clip_tokens)
    banks_u = model.appearance_banks(latent, prompt_uncond, clip_tokens=zeros) if uncond_banks else None
    return ReferenceEncoding(latent=latent, clip_tokens=clip_tokens, prompt_tokens=prompt,
                             prompt_tokens_uncond=prompt_uncond, banks=banks, banks_uncond=banks_u, size=(h, w),
                             source=image_signature(image))
