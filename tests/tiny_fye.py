"""Tiny Follow-Your-Emoji models for CPU tests: random but seeded weights, released-layout files."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from emoji_model.checkpoints import released_state_dicts
from emoji_model.constants import LATENT_SCALE
from emoji_model.networks import FollowYourEmoji, FYEConfig, build_model


def tiny_config(**overrides) -> FYEConfig:
    """The tiny configuration used across the tests."""
    return FYEConfig.tiny(**overrides)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones too) seeded values of a sensible scale."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim == 1:  # norms
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        elif p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def random_model(config: FYEConfig | None = None, seed: int = 0) -> FollowYourEmoji:
    """A tiny model with seeded random weights everywhere, in eval mode."""
    return randomize(build_model(config or tiny_config(), "cpu"), seed).eval()


def write_released(model: FollowYourEmoji, directory: Path, fmt: str = "pth",
                   dtype: torch.dtype | None = None) -> list[Path]:
    """Save ``model`` as the three released files (torch.save .pth or safetensors repacks)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, sd in released_state_dicts(model).items():
        sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
              for k, v in sd.items()}
        if fmt == "pth":
            path = directory / f"{stem}.pth"
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            path = directory / f"{stem}.safetensors"
            save_file(sd, str(path))
        out.append(path)
    return out


# What released shapes cannot tell about the tiny configuration.
TINY_HIDDEN = {"attention_heads": 2, "norm_num_groups": 8, "motion_heads": 2, "qformer_layers": 2,
               "qformer_queries": 4, "qformer_heads": 2}


TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
                latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=LATENT_SCALE)
# 32-pixel images in 8-pixel patches: 17 tokens of 48 = the tiny config's clip_dim.
TINY_CLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8, projection_dim=16, hidden_act="quick_gelu")


def tiny_vae(seed: int = 0):
    """A seeded tiny diffusers AutoencoderKL (÷8 latents, 4 channels), built locally."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE).eval()


def tiny_clip(seed: int = 0):
    """A seeded tiny transformers CLIPVisionModelWithProjection, built locally."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).eval()


def inputs(model: FollowYourEmoji, batch: int = 1, frames: int = 3, size: int = 16, seed: int = 1):
    """Seeded sample, timestep, CLIP tokens, reference latent and control renders for a tiny model."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return {
        "sample": torch.randn(batch, cfg.in_channels, frames, size, size, generator=g),
        "timestep": torch.full((batch,), 421),
        "clip": torch.randn(batch, 5, cfg.clip_dim, generator=g),
        "ref": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "control": torch.rand(batch, 3, frames, size * 8, size * 8, generator=g),
    }


_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def to_ldm_unet(state: dict[str, torch.Tensor], layers: int, attn_levels: tuple[bool, ...]) -> dict[str, torch.Tensor]:
    """A diffusers-named SD UNet state dict in the original ldm layout ("model.diffusion_model.*").

    Written independently of the loader's table (emoji_model.checkpoints.sd_unet), so that loading the
    result checks the table in the other direction.
    """
    out = {}
    per = layers + 1
    for key, value in state.items():
        parts = key.split(".")
        new = None
        head = ".".join(parts[:2])
        if head in _TOP_TO_LDM or ".".join(parts[:1]) in _TOP_TO_LDM:
            top = head if head in _TOP_TO_LDM else parts[0]
            new = _TOP_TO_LDM[top] + key[len(top):]
        elif parts[0] == "down_blocks":
            b, kind, i = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{1 + b * per + i}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + b * per + i}.1.{rest}"
            elif kind == "downsamplers":
                new = f"input_blocks.{(b + 1) * per}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            kind, i = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            new = f"middle_block.{1 if kind == 'attentions' else 2 * i}.{_resnet(rest) if kind == 'resnets' else rest}"
        elif parts[0] == "up_blocks":
            b, kind, i = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{b * per + i}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{b * per + i}.1.{rest}"
            elif kind == "upsamplers":
                has_attn = attn_levels[len(attn_levels) - 1 - b]
                new = f"output_blocks.{b * per + layers}.{2 if has_attn else 1}.conv.{parts[-1]}"
        if new is None:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def _resnet(rest: str) -> str:
    for a, b in _RESNET_TO_LDM:
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest
