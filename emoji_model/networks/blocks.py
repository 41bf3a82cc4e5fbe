"""Pieces shared by the appearance net and the denoising UNet, composed from diffusers parts.

* :class:`~.reference_attention.ReferenceAttnProcessor` — the attention processor of every spatial
  attention (records the appearance net's banks; attends over them in the denoising UNet).
* :class:`TemporalTransformer` — AnimateDiff's temporal transformer with the released forward:
  GroupNorm statistics per frame (diffusers' ``AnimateDiffTransformer3D`` normalises over all frames
  of a clip instead, which is not what AnimateDiff or Follow-Your-Emoji compute).
* :class:`BankOnlyBlock` — the last transformer block of the appearance net: the released
  referencenet keeps only its ``norm1`` there, because nothing downstream of that bank is used.
* :func:`build_spatial_blocks` — SD-style down/mid/up blocks from ``diffusers.models.unets``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block, get_up_block
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from einops import rearrange
from torch import nn

from .config import FYEConfig
from .reference_attention import cached_signature


@cached_signature
class TemporalAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, for the temporal attentions (its signature read once, not per call)."""


class TemporalTransformer(AnimateDiffTransformer3D):
    """AnimateDiff temporal transformer (motion module) as released: per-frame GroupNorm.

    norm → proj_in → blocks of [LayerNorm → +sinusoidal position → temporal self-attention → residual]
    ×2 → [LayerNorm → GEGLU feed-forward → residual] → proj_out, plus the outer residual. Attention runs
    along the frame axis independently at every spatial position. ``proj_out`` starts at zero so a new
    module is the identity.
    """

    def __init__(self, channels: int, heads: int, layers: int, norm_groups: int, max_len: int):
        super().__init__(
            num_attention_heads=heads,
            attention_head_dim=channels // heads,
            in_channels=channels,
            num_layers=layers,
            norm_num_groups=norm_groups,
            cross_attention_dim=None,
            attention_bias=False,
            activation_fn="geglu",
            double_self_attention=True,
            positional_embeddings="sinusoidal",
            num_positional_embeddings=max_len,
        )
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        processor = TemporalAttnProcessor()
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_processor(processor)

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1,  # type: ignore[override]
                **_: Any) -> torch.Tensor:
        """Temporal attention over [(b f), c, h, w] → same shape."""
        _, _, height, width = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states)  # statistics per frame, as released
        x = rearrange(x, "(b f) c h w -> (b h w) f c", f=num_frames)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.proj_out(x)
        x = rearrange(x, "(b h w) f c -> (b f) c h w", h=height, w=width)
        return x + residual


class BankOnlyBlock(nn.Module):
    """The appearance net's last transformer block: records ``norm1(x)`` as a bank, computes nothing else."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                class_labels=None, added_cond_kwargs=None) -> torch.Tensor:
        """Append the bank to ``cross_attention_kwargs['capture']``; return the input unchanged."""
        capture = (cross_attention_kwargs or {}).get("capture")
        if capture is not None:
            capture.append(self.norm1(hidden_states))
        return hidden_states


def _heads(cfg: FYEConfig, channels: int) -> dict[str, int]:
    return {"num_attention_heads": cfg.attention_heads, "attention_head_dim": channels // cfg.attention_heads}


def build_spatial_blocks(cfg: FYEConfig, motion: bool) -> tuple[nn.ModuleList, nn.Module, nn.ModuleList]:
    """SD-1.5-style down blocks, mid block and up blocks; with ``motion`` each gets ``motion_modules``."""
    boc = cfg.block_out_channels
    common = dict(temb_channels=cfg.time_embed_dim, resnet_eps=cfg.norm_eps, resnet_act_fn="silu",
                  resnet_groups=cfg.norm_num_groups, cross_attention_dim=cfg.cross_attention_dim,
                  use_linear_projection=cfg.use_linear_projection)

    def temporal(channels: int, count: int) -> nn.ModuleList:
        return nn.ModuleList(TemporalTransformer(channels, cfg.motion_heads, cfg.motion_layers,
                                                 cfg.motion_norm_groups, cfg.motion_max_len) for _ in range(count))

    down = nn.ModuleList()
    out_ch = boc[0]
    for i, attn in enumerate(cfg.attention_levels):
        in_ch, out_ch = out_ch, boc[i]
        block = get_down_block("CrossAttnDownBlock2D" if attn else "DownBlock2D",
                               num_layers=cfg.layers_per_block, in_channels=in_ch, out_channels=out_ch,
                               add_downsample=i < cfg.levels - 1, downsample_padding=1,
                               **_heads(cfg, out_ch), **common)
        if motion:
            block.motion_modules = temporal(out_ch, cfg.layers_per_block)
        down.append(block)

    mid = get_mid_block("UNetMidBlock2DCrossAttn", in_channels=boc[-1], output_scale_factor=1.0,
                        **_heads(cfg, boc[-1]), **common)
    if motion and cfg.motion_mid_block:
        mid.motion_modules = temporal(boc[-1], 1)

    up = nn.ModuleList()
    rev = list(reversed(boc))
    out_ch = rev[0]
    for i, attn in enumerate(reversed(cfg.attention_levels)):
        prev_ch, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, cfg.levels - 1)]
        block = get_up_block("CrossAttnUpBlock2D" if attn else "UpBlock2D",
                             num_layers=cfg.layers_per_block + 1, in_channels=in_ch, out_channels=out_ch,
                             prev_output_channel=prev_ch, add_upsample=i < cfg.levels - 1, resolution_idx=i,
                             **_heads(cfg, out_ch), **common)
        if motion:
            block.motion_modules = temporal(out_ch, cfg.layers_per_block + 1)
        up.append(block)
    return down, mid, up


def set_reference_processors(module: nn.Module) -> None:
    """Give every spatial attention (not the temporal ones) a :class:`ReferenceAttnProcessor`."""
    from .reference_attention import ReferenceAttnProcessor

    processor = ReferenceAttnProcessor()
    for name, sub in module.named_modules():
        if isinstance(sub, Attention) and ".motion_modules." not in f".{name}.":
            sub.set_processor(processor)


def maybe_checkpoint(enabled: bool, fn, *args):
    """Run ``fn(*args)``, through non-reentrant activation checkpointing when training with it on."""
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
