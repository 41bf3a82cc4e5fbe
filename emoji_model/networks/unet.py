"""The denoising UNet (paper 3.2, 4): SD-1.5 spatial layers with reference attention + temporal layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from einops import rearrange, repeat
from torch import nn

from ..errors import InvalidRequestError
from .blocks import build_spatial_blocks, maybe_checkpoint, set_reference_processors
from .config import FYEConfig
from .reference_attention import ReferenceContext, prepare_reference, spatial_transformers
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

    def transformers(self):
        """(name, spatial transformer) in the order the walk runs them (the order of the appearance banks)."""
        prefixes = [f"down_blocks.{i}" for i in range(len(self.down_blocks))] + ["mid_block"] + [
            f"up_blocks.{i}" for i in range(len(self.up_blocks))]
        return spatial_transformers([*self.down_blocks, self.mid_block, *self.up_blocks], prefixes)

    def prepare_reference(self, prompt_tokens: torch.Tensor, banks: Sequence[torch.Tensor] | None,
                          bank_mask: torch.Tensor | None = None) -> ReferenceContext:
        """Key/value projections of the banks and prompt tokens, reusable at every step of a video."""
        dtype = self.conv_in.weight.dtype
        return prepare_reference(self.transformers(), prompt_tokens.to(dtype),
                                 None if banks is None else [b.to(dtype) for b in banks], bank_mask)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, prompt_tokens: torch.Tensor | None,
                banks: Sequence[torch.Tensor] | ReferenceContext | None = None, bank_mask: torch.Tensor | None = None,
                landmark_features: torch.Tensor | None = None, cover: torch.Tensor | None = None,
                temporal: bool = True, on_block: Callable[[str], None] | None = None) -> torch.Tensor:
        """Model output [B,C,F,h,w] for a sample [B,C,F,h,w] (see FollowYourEmoji.denoise).

        ``banks`` are the raw appearance banks, or a :class:`ReferenceContext` prepared from them and the
        prompt tokens once per video (then ``prompt_tokens`` may be None). ``on_block(name)`` is called
        after every resnet, transformer and temporal module (see :class:`WalkHooks`).
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
        context = banks if isinstance(banks, ReferenceContext) else self.prepare_reference(prompt_tokens, banks,
                                                                                           bank_mask)
        if context.batch != b:
            raise InvalidRequestError(f"the reference context holds {context.batch} clips, the sample {b}")
        cross = x.new_empty(0)  # marks attn2 as cross-attention; its keys and values come from the context

        def attend(attn, h, layer):
            kwargs = {"num_frames": frames, "layer": layer}
            return attn(h, encoder_hidden_states=cross, cross_attention_kwargs=kwargs, return_dict=False)[0]

        def inject_bank(name: str, attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return maybe_checkpoint(ckpt, attend, attn, h, context.layers[name])

        def run_motion(name: str, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return maybe_checkpoint(ckpt, module, h, frames)

        h = self.conv_in(x)
        if landmark_features is not None:
            h = h + rearrange(landmark_features.to(dtype), "b c f h w -> (b f) c h w")
        hooks = WalkHooks(attention=inject_bank, motion=run_motion if temporal else None, on_block=on_block)
        h = walk_unet(self.down_blocks, self.mid_block, self.up_blocks, h, emb, hooks, checkpoint=ckpt,
                      upsample_sizes=needs_upsample_sizes(x, self.config.levels))

        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=frames)
