"""The appearance net (paper 3.2, the released "referencenet"): an SD-1.5 UNet run once at t=0."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..errors import InvalidRequestError
from .blocks import BankOnlyBlock, build_spatial_blocks, maybe_checkpoint, set_reference_processors
from .config import FYEConfig
from .image_prompt import build_image_prompt
from .walk import WalkHooks, needs_upsample_sizes, walk_unet


class AppearanceNet(nn.Module):
    """SD UNet without its output head that returns the input of every spatial self-attention.

    Module names follow diffusers' ``UNet2DConditionModel`` (``conv_in``, ``time_embedding``,
    ``down_blocks.*``, ``mid_block.*``, ``up_blocks.*``), so SD checkpoints load directly. As in the
    released referencenet there is no ``conv_norm_out``/``conv_out`` and the last transformer block of
    the last up block keeps only ``norm1``: its normalised input is the last bank and nothing after it
    is computed. With ``config.appearance_own_prompt`` the net carries its own image-prompt projection
    (the released ``clip_fc``) as ``image_prompt``.
    """

    def __init__(self, config: FYEConfig):
        super().__init__()
        self.config = config
        c0 = config.block_out_channels[0]
        self.conv_in = nn.Conv2d(config.in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, config.time_embed_dim)
        self.image_prompt = build_image_prompt(config) if config.appearance_own_prompt else None
        self.down_blocks, self.mid_block, self.up_blocks = build_spatial_blocks(config, motion=False)
        last = self.up_blocks[-1]
        if not hasattr(last, "attentions"):
            raise InvalidRequestError("the appearance net needs attention at the top level (attention_levels[0])")
        old = last.attentions[-1].transformer_blocks[-1]
        last.attentions[-1].transformer_blocks[-1] = BankOnlyBlock(old.norm1.normalized_shape[0], eps=old.norm1.eps)
        set_reference_processors(self)
        self.gradient_checkpointing = False

    @property
    def bank_count(self) -> int:
        """Number of banks one forward returns (one per spatial transformer block)."""
        return sum(len(a.transformer_blocks) for b in self._blocks() for a in getattr(b, "attentions", []))

    def _blocks(self) -> list[nn.Module]:
        return [*self.down_blocks, self.mid_block, *self.up_blocks]

    def forward(self, latent: torch.Tensor, prompt_tokens: torch.Tensor, timestep: torch.Tensor | int = 0,
                on_block: Callable[[str], None] | None = None) -> list[torch.Tensor]:
        """Banks [B, h_i·w_i, C_i] for a latent [B,4,h,w] and projected prompt tokens [B,T,D], in UNet order.

        ``on_block(name)`` is called after every resnet and transformer (see :class:`WalkHooks`).
        """
        ckpt = self.gradient_checkpointing and self.training
        dtype = self.conv_in.weight.dtype
        x = latent.to(dtype)
        b = x.shape[0]
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(b)
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        ctx = prompt_tokens.to(dtype)
        banks: list[torch.Tensor] = []

        def attend(attn: nn.Module, h: torch.Tensor, context: torch.Tensor):
            capture: list[torch.Tensor] = []
            out = attn(h, encoder_hidden_states=context, cross_attention_kwargs={"capture": capture},
                       return_dict=False)[0]
            return (out, *capture)

        def capture_banks(name: str, attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
            out, *captured = maybe_checkpoint(ckpt, attend, attn, h, ctx)
            banks.extend(captured)
            return out

        # The last bank is the normalised input of the last transformer: nothing after it is computed.
        last = f"up_blocks.{len(self.up_blocks) - 1}.attentions.{len(self.up_blocks[-1].resnets) - 1}"
        hooks = WalkHooks(attention=capture_banks, on_block=on_block, stop_after=last)
        walk_unet(self.down_blocks, self.mid_block, self.up_blocks, self.conv_in(x), emb, hooks, checkpoint=ckpt,
                  upsample_sizes=needs_upsample_sizes(x, self.config.levels))
        return banks
