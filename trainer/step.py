"""What one training step runs on: the networks with their starting weights, the trainable groups,
the forward as one module (for DDP and autocast), and the frozen VAE and CLIP encoders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from emoji_model.constants import LATENT_SCALE
from emoji_model.errors import InvalidRequestError, MissingModelError
from emoji_model.networks import FollowYourEmoji

log = logging.getLogger("emoji_model.trainer.step")

# Parameter groups by name; a parameter may sit in several (conv_in is spatial too).
PARAM_GROUPS = {
    "appearance": lambda n: n.startswith("appearance."),
    "unet_spatial": lambda n: n.startswith("unet.") and ".motion_modules." not in n,
    "unet_temporal": lambda n: n.startswith("unet.") and ".motion_modules." in n,
    "unet_conv_in": lambda n: n.startswith("unet.conv_in."),
    "unet_cover_in": lambda n: n == "unet.conv_in.weight",
    "guider": lambda n: n.startswith("guider."),
    "image_prompt": lambda n: n.startswith("image_prompt."),
}
COVER_WEIGHT = "unet.conv_in.weight"
"""conv_in's kernel [C0, 4 + cover, 3, 3]: input channels 0..3 take x_t, the rest the covered latents and mask."""


def resolve_unet_file(path: str | os.PathLike) -> Path:
    """An SD UNet weights file: the path itself, or inside a diffusers pipeline or UNet folder."""
    p = Path(path)
    if p.is_file():
        return p
    for folder in (p / "unet", p):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"):
            if (folder / name).is_file():
                return folder / name
    raise MissingModelError(str(p), [str(p), str(p / "unet")],
                            "an SD-1.5 single-file checkpoint, or a diffusers folder with unet/diffusion_pytorch_model.*")


def build_model(cfg, checkpoint: Path | None = None) -> FollowYourEmoji:
    """The networks in fp32 on the CPU: from a training checkpoint, or from the config's starting weights.

    Order: ``init_checkpoint`` (released weights or ours; its config wins, ``cover_channels`` may add the
    covered-latent inputs) or a fresh preset seeded by ``cfg.seed``; then ``init_sd_unet`` into the
    appearance net and the UNet's spatial layers; then ``init_motion_module`` into the temporal layers.
    """
    from emoji_model.checkpoints import load_model, load_motion_module, load_sd_unet
    from emoji_model.networks import FYEConfig
    from emoji_model.networks import build_model as build_networks

    if checkpoint is not None:
        return load_model(checkpoint / "model.safetensors", device="cpu", dtype=torch.float32)
    overrides = dict(cfg.model_overrides or {})
    if cfg.init_checkpoint:
        model = load_model(cfg.init_checkpoint, device="cpu", dtype=torch.float32,
                           cover_channels=overrides.pop("cover_channels", None))
        if overrides:
            log.warning("model_overrides %s ignored: init_checkpoint carries its own config", sorted(overrides))
        log.info("networks from %s", cfg.init_checkpoint)
    else:
        preset = FYEConfig.sd15 if cfg.model == "sd15" else FYEConfig.tiny
        torch.manual_seed(cfg.seed)  # fresh layers start the same in every process
        model = build_networks(preset(**overrides), "cpu")
        if cfg.appearance_from_unet and not cfg.init_sd_unet:
            log.info("appearance net starts as a copy of the UNet's spatial layers (%d tensors)",
                     appearance_from_unet(model))
    if cfg.init_sd_unet:
        base = resolve_unet_file(cfg.init_sd_base) if cfg.init_sd_base else None
        updated = load_sd_unet(model, resolve_unet_file(cfg.init_sd_unet), base=base)
        log.info("SD UNet %s -> %d tensors of the appearance net and UNet", cfg.init_sd_unet, len(updated))
    if cfg.init_motion_module:
        updated = load_motion_module(model, cfg.init_motion_module)
        log.info("motion modules %s -> %d tensors", cfg.init_motion_module, len(updated))
    return model.float()


@torch.no_grad()
def appearance_from_unet(model: FollowYourEmoji) -> int:
    """Copy the UNet's spatial weights (and its image prompt) into the appearance net; returns the tensor count.

    The paper's appearance net starts as a copy of the SD UNet, so its banks begin in the space of the
    UNet's own self-attention inputs and reference attention works from the first step; two independent
    random networks would first have to discover each other. conv_in takes the latent channels only.
    """
    unet = dict(model.unet.named_parameters())
    prompt = dict(model.image_prompt.named_parameters())
    copied = 0
    for name, p in model.appearance.named_parameters():
        source = prompt.get(name[len("image_prompt."):]) if name.startswith("image_prompt.") else unet.get(name)
        if source is None:
            continue
        if name == "conv_in.weight":
            source = source[:, :p.shape[1]]
        if source.shape == p.shape:
            p.copy_(source)
            copied += 1
    return copied


def trainable_elements(model: FollowYourEmoji, groups: list[str]) -> dict[str, torch.Tensor | None]:
    """Parameter name → None (wholly trainable) or a bool mask of its trainable elements, for ``groups``.

    conv_in's kernel is split by input channel: ``unet_spatial`` trains its latent channels,
    ``unet_cover_in`` its covered-latent channels, ``unet_conv_in`` both (a union of groups is a union
    of elements). Everything not returned is frozen.
    """
    unknown = [g for g in groups if g not in PARAM_GROUPS]
    if unknown:
        raise InvalidRequestError(f"unknown parameter groups {unknown}; known: {sorted(PARAM_GROUPS)}")
    latent = model.config.in_channels
    out: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():
        chosen = {g for g in groups if PARAM_GROUPS[g](name)}
        if not chosen:
            continue
        if name != COVER_WEIGHT or "unet_conv_in" in chosen:
            out[name] = None
            continue
        mask = torch.zeros(p.shape, dtype=torch.bool)  # [C0, in, 3, 3]
        if "unet_spatial" in chosen:
            mask[:, :latent] = True
        if "unet_cover_in" in chosen:
            mask[:, latent:] = True  # empty without covered-latent inputs
        if mask.any():
            out[name] = None if bool(mask.all()) else mask
    return out


def set_trainable(model: nn.Module, groups: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything but the parameters of ``groups``; return the trainable (name, parameter) pairs.

    A parameter only partly in ``groups`` (conv_in's kernel, see :func:`trainable_elements`) is returned
    too; :class:`PartialFreeze` keeps its other elements fixed.
    """
    chosen = trainable_elements(model, groups)
    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
        if p.requires_grad:
            named.append((name, p))
    return named


class PartialFreeze:
    """Keeps the frozen elements of partly trainable parameters exactly as they are.

    Their gradient is masked (so clipping and the optimizer's moments see only the trained elements) and,
    after every optimizer step, their values are put back — weight decay, low-rank projections (GaLore,
    COAP) and momentum would otherwise move them.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor | None]):
        params = dict(model.named_parameters())
        self.parts = []
        for name, mask in masks.items():
            if mask is None:
                continue
            p = params[name]
            p.register_hook(lambda g, keep=mask: g * keep.to(g.device, g.dtype))
            self.parts.append((p, ~mask, p.detach().cpu()[~mask].clone()))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the frozen elements back (call after ``optimizer.step()``); works wherever the model moved."""
        for p, frozen, values in self.parts:
            p[frozen.to(p.device)] = values.to(p.device, p.dtype)


def _needs_grad(*modules: nn.Module) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in m.parameters())


class TrainingForward(nn.Module):
    """One forward of the networks for training, as a module so that DDP and autocast wrap all of it.

    Sub-networks without trainable parameters run without autograd (in stage 2 the appearance net,
    guider and image prompt are frozen, so none of their activations are kept).
    """

    def __init__(self, model: FollowYourEmoji, temporal: bool):
        super().__init__()
        self.model = model
        self.temporal = temporal

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clip_tokens: torch.Tensor,
                ref_latent: torch.Tensor, control: torch.Tensor, covered: torch.Tensor | None = None,
                cover_mask: torch.Tensor | None = None, bank_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Model output [B,4,F,h,w] for x_t [B,4,F,h,w] (see FollowYourEmoji.denoise for the inputs)."""
        m = self.model
        with torch.set_grad_enabled(_needs_grad(m.image_prompt)):
            prompt = m.encode_image_prompt(clip_tokens)
        with torch.set_grad_enabled(_needs_grad(m.appearance, m.image_prompt)):
            banks = m.appearance_banks(ref_latent, prompt, clip_tokens=clip_tokens)
        with torch.set_grad_enabled(_needs_grad(m.guider)):
            features = m.encode_landmarks(control)
        return m.denoise(noisy, timesteps, prompt, banks, features, covered=covered, cover_mask=cover_mask,
                         temporal=self.temporal, bank_mask=bank_mask)


class FrozenEncoders:
    """The frozen VAE and CLIP image encoder, run without autograd, frames in chunks."""

    def __init__(self, vae, image_encoder, chunk: int = 16):
        from emoji_model.reference import clip_encoder_from_transformers

        self.vae = vae
        self.factor = float(getattr(vae.config, "scaling_factor", LATENT_SCALE))
        self.clip = clip_encoder_from_transformers(image_encoder)
        self.chunk = chunk

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor, generator: torch.Generator, sample: bool) -> torch.Tensor:
        """Frames [B,3,F,H,W] in -1..1 → scaled latents [B,4,F,H/8,W/8] (posterior sample or mean), fp32."""
        b = pixels.shape[0]
        flat = rearrange(pixels, "b c f h w -> (b f) c h w").to(self.vae.device, self.vae.dtype)
        out = []
        for s in range(0, flat.shape[0], self.chunk):
            dist = self.vae.encode(flat[s:s + self.chunk]).latent_dist
            out.append(dist.sample(generator=generator) if sample else dist.mean)
        lat = torch.cat(out).float() * self.factor
        return rearrange(lat, "(b f) c h w -> b c f h w", b=b)

    @torch.no_grad()
    def reference(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference frames [B,3,H,W] in 0..1 → (latent [B,4,h,w] posterior mean, CLIP tokens [B,T,D]), fp32.

        As at inference (emoji_model.reference): the posterior mean, and CLIP's own preprocessing.
        """
        lat = self.vae.encode((image * 2 - 1).to(self.vae.device, self.vae.dtype)).latent_dist.mean
        return lat.float() * self.factor, self.clip(image).float()


def training_losses(forward: nn.Module, encoders: FrozenEncoders, batch: dict[str, torch.Tensor], noise_scheduler,
                    noise: torch.Generator, cfg, covering: bool) -> dict[str, torch.Tensor]:
    """One micro-step's forward and losses (``{"loss", "ldm", "ffg"}``); every draw comes from ``noise``.

    1. frames → z [B,4,F,h,w] (VAE posterior sample), reference → latent and CLIP tokens (frozen);
    2. t ~ U{0..T-1}, ε ~ N(0, I); x_t = add_noise(z, ε, t), v = get_velocity(z, ε, t);
    3. covering (paper 4.3) and reference dropout (classifier-free guidance), drawn every time;
    4. v̂ = networks(x_t, t, ...); L = w_ldm·MSE(v̂, v) + w_ffg·L_FFG (paper eq. 3).
    """
    from .objectives import cover_inputs, diffusion_losses, sample_covering

    device = batch["pixels"].device
    latents = encoders.latents(batch["pixels"], noise, cfg.latent_sample)
    ref_latent, clip_tokens = encoders.reference(batch["reference"])
    b, _, f = latents.shape[:3]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=noise, device=device)
    eps = torch.randn(latents.shape, generator=noise, device=device)
    noisy = noise_scheduler.add_noise(latents, eps, t)
    target = noise_scheduler.get_velocity(latents, eps, t)
    covered_frames = sample_covering(b, f, noise, cfg.cover_keyframes_prob, cfg.cover_frame_prob, device)
    drop = torch.rand(b, generator=noise, device=device) < cfg.cfg_drop
    clip_tokens = torch.where(drop[:, None, None], torch.zeros_like(clip_tokens), clip_tokens)
    bank_mask = ~drop if cfg.cfg_drop_bank else None
    covered, cover_mask = cover_inputs(latents, covered_frames) if covering else (None, None)
    pred = forward(noisy, t, clip_tokens, ref_latent, batch["control"], covered, cover_mask, bank_mask)
    frame_weight = covered_frames if covering and not cfg.loss_known_frames else None
    return diffusion_losses(pred, target, latents, noisy, t, batch["masks"], noise_scheduler.alphas_cumprod,
                            ldm_weight=cfg.ldm_weight, ffg_weight=cfg.ffg_weight, ffg_space=cfg.ffg_space,
                            frame_weight=frame_weight)
