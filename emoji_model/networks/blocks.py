"""Pieces shared by the appearance net and the denoising UNet, composed from diffusers parts.

* :class:`ReferenceAttnProcessor` — the attention processor of every spatial attention. In a
  self-attention it can (a) record the normalised hidden states it receives (the appearance net's
  "bank") and (b) let the frame's queries attend over the frame's own tokens concatenated with the
  matching bank tokens (the denoising UNet), keeping only the frame's outputs.
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
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block, get_up_block
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from einops import rearrange, repeat
from torch import nn

from .config import FYEConfig


class ReferenceAttnProcessor:
    """SDPA attention; self-attention may record its input and attend over appearance-bank tokens too.

    Keyword inputs (passed through ``cross_attention_kwargs``):
      ``bank``       [B, M, C] normalised reference hidden states for this layer, or None;
      ``bank_rows``  (rows with, rows without) index tensors over the (B·F) attention batch when only
                     some rows attend to their bank (the released unconditional branch), or None (all do);
      ``num_frames`` F when the attention batch is (B·F) frames sharing one bank per clip;
      ``capture``    a list that receives the self-attention input (the appearance net's bank).
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 bank: torch.Tensor | None = None, bank_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                 num_frames: int = 1, capture: list | None = None) -> torch.Tensor:
        is_self = encoder_hidden_states is None
        if is_self and capture is not None:
            capture.append(hidden_states)
        context = hidden_states if is_self else encoder_hidden_states
        heads = attn.heads
        # [(b f), n, (h d)] -> [(b f), h, n, d]
        q = rearrange(attn.to_q(hidden_states), "b n (h d) -> b h n d", h=heads)
        k = rearrange(attn.to_k(context), "b n (h d) -> b h n d", h=heads)
        v = rearrange(attn.to_v(context), "b n (h d) -> b h n d", h=heads)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[2], q.shape[0])
            attention_mask = attention_mask.view(q.shape[0], heads, -1, attention_mask.shape[-1])

        if is_self and bank is not None:
            # The released block attends with keys/values of cat([frame tokens, bank tokens]) along the
            # token axis; the bank is shared by the F frames of its clip.
            kb = repeat(attn.to_k(bank), "b m (h d) -> (b f) h m d", h=heads, f=num_frames)
            vb = repeat(attn.to_v(bank), "b m (h d) -> (b f) h m d", h=heads, f=num_frames)
            if bank_rows is None:
                out = F.scaled_dot_product_attention(q, torch.cat([k, kb], 2), torch.cat([v, vb], 2))
            else:
                with_bank, without = bank_rows
                out = torch.empty_like(q)
                if with_bank.numel():
                    out[with_bank] = F.scaled_dot_product_attention(
                        q[with_bank], torch.cat([k[with_bank], kb[with_bank]], 2),
                        torch.cat([v[with_bank], vb[with_bank]], 2))
                if without.numel():
                    out[without] = F.scaled_dot_product_attention(q[without], k[without], v[without])
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)

        out = rearrange(out, "b h n d -> b n (h d)").to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


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
    from diffusers.models.attention_processor import Attention

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
