"""The denoising UNet (paper 3.2, 4): SD-1.5 spatial layers with reference attention + temporal layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from einops import rearrange, repeat
from torch import nn

from ..errors import InvalidRequestError
from .blocks import build_spatial_blocks, maybe_checkpoint, set_reference_processors
from .config import FYEConfig
from .walk import WalkHooks, needs_upsample_sizes, walk_unet


class DenoisingUNet(nn.Module):
    """SD UNet over frames folded into the batch, with AnimateDiff temporal layers.

    Module names follow diffusers' ``UNet2DConditionModel`` for the spatial part and AnimateDiff's
    ``*.motion_modules.*`` for the temporal part. Everything spatial is per frame (the released
    "inflated" convolutions and group norms reshape frames into the batch); only the temporal
    transformers mix frames. Each spatial self-attention attends over the frame's tokens plus the
    matching appearance bank; landmark features are added right after ``conv_in``; with
    ``config.cover_channels`` the covered latents and cover mask enter ``conv_in`` beside the sample.
    """

    def __init__(self, config: FYEConfig):
        super().__init__()
        self.config = config
        c0 = config.block_out_channels[0]
        self.conv_in = nn.Conv2d(config.unet_in_channels, c0, kernel_size=3, padding=1)
        if config.cover_channels:
            with torch.no_grad():
                self.conv_in.weight[:, config.in_channels:].zero_()
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, config.time_embed_dim)
        self.down_blocks, self.mid_block, self.up_blocks = build_spatial_blocks(config, motion=True)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, c0, eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, config.out_channels, kernel_size=3, padding=1)
        set_reference_processors(self)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, prompt_tokens: torch.Tensor,
                banks: list[torch.Tensor] | None = None, bank_mask: torch.Tensor | None = None,
                landmark_features: torch.Tensor | None = None, cover: torch.Tensor | None = None,
                temporal: bool = True, on_block: Callable[[str], None] | None = None) -> torch.Tensor:
        """Model output [B,C,F,h,w] for a sample [B,C,F,h,w] (see FollowYourEmoji.denoise).

        ``on_block(name)`` is called after every resnet, transformer and temporal module (see
        :class:`WalkHooks`).
        """
        b, _, frames, _, _ = sample.shape
        ckpt = self.gradient_checkpointing and self.training
        dtype = self.conv_in.weight.dtype
        x = rearrange(sample.to(dtype), "b c f h w -> (b f) c h w")
        if cover is not None:
            x = torch.cat([x, rearrange(cover.to(dtype), "b c f h w -> (b f) c h w")], dim=1)

        t = torch.as_tensor(timestep, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise InvalidRequestError(f"timestep has {t.shape[0]} entries for a batch of {b}")
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        emb = repeat(emb, "b c -> (b f) c", f=frames)
        ctx = repeat(prompt_tokens.to(dtype), "b t d -> (b f) t d", f=frames)
        bank_iter = iter(banks) if banks is not None else None
        bank_rows = _bank_rows(bank_mask, frames, x.device)

        def attend(attn, h, context, bank, rows):
            kwargs = {"num_frames": frames}
            if bank is not None:
                kwargs.update(bank=bank, bank_rows=rows)
            return attn(h, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False)[0]

        def inject_bank(name: str, attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
            # Banks come in UNet order, one per spatial transformer.
            bank = next(bank_iter).to(dtype) if bank_iter is not None else None
            return maybe_checkpoint(ckpt, attend, attn, h, ctx, bank, bank_rows)

        def run_motion(name: str, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return maybe_checkpoint(ckpt, module, h, frames)

        h = self.conv_in(x)
        if landmark_features is not None:
            h = h + rearrange(landmark_features.to(dtype), "b c f h w -> (b f) c h w")
        hooks = WalkHooks(attention=inject_bank, motion=run_motion if temporal else None, on_block=on_block)
        h = walk_unet(self.down_blocks, self.mid_block, self.up_blocks, h, emb, hooks, checkpoint=ckpt,
                      upsample_sizes=needs_upsample_sizes(x, self.config.levels))

        if bank_iter is not None and next(bank_iter, None) is not None:
            raise InvalidRequestError("more appearance banks were given than the UNet has attention layers")
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=frames)


def _bank_rows(bank_mask: torch.Tensor | None, frames: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Indices of the (b f) rows that attend to their bank and of those that do not; None when all do."""
    if bank_mask is None:
        return None
    rows = repeat(bank_mask.to(device=device, dtype=torch.bool).reshape(-1), "b -> (b f)", f=frames)
    if bool(rows.all()):
        return None
    return rows.nonzero().flatten(), (~rows).nonzero().flatten()
