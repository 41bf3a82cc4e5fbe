"""The one walk over an SD UNet's down, mid and up blocks, shared by the appearance net and the denoising UNet.

Both networks are diffusers SD blocks (``build_spatial_blocks``) run in the same order: per level the
resnet → spatial transformer → [temporal module] pairs, skip connections pushed on the way down and
concatenated on the way up, the mid block's resnet → transformer → [temporal] → resnet. What differs
is what happens at a spatial transformer (the appearance net records its banks, the UNet attends over
them) and whether temporal modules run; :class:`WalkHooks` says that. Every block is named by its
module path (``down_blocks.0.attentions.1``, ``mid_block.motion_modules.0``, …), so a hook can find
per-layer state by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import maybe_checkpoint

BlockFn = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class WalkHooks:
    """What the walk does at the blocks that differ between the two networks.

    ``attention(name, transformer, h) -> h`` runs one spatial transformer (capturing or injecting
    the appearance bank); ``motion(name, module, h) -> h`` runs one temporal module (None: skip
    them, as the appearance net and ``temporal=False`` do); ``on_block(name)`` is called after every
    resnet, transformer and temporal module that ran (progress, cancellation); the walk stops right
    after the block named ``stop_after`` (the appearance net's last bank) and returns its output.
    """

    attention: BlockFn
    motion: BlockFn | None = None
    on_block: Callable[[str], None] | None = None
    stop_after: str | None = None


class _Stop(Exception):
    def __init__(self, h: torch.Tensor):
        self.h = h


def needs_upsample_sizes(latent: torch.Tensor, levels: int) -> bool:
    """True when the latent's sides are not multiples of the UNet's total downsampling (sizes must be forced)."""
    factor = 2 ** (levels - 1)
    return any(s % factor for s in latent.shape[-2:])


def walk_unet(down_blocks: nn.ModuleList, mid_block: nn.Module, up_blocks: nn.ModuleList, h: torch.Tensor,
              emb: torch.Tensor, hooks: WalkHooks, *, checkpoint: bool = False,
              upsample_sizes: bool = False) -> torch.Tensor:
    """conv_in output h [N,C0,h,w] → the last up block's output [N,C0,h,w] (or the ``stop_after`` block's).

    ``emb`` [N,T] is the timestep embedding; ``checkpoint`` recomputes the resnets in backward
    (the hooks checkpoint their own blocks); ``upsample_sizes`` forces each upsampler to the size of
    its skip connection (latents whose sides are not multiples of the downsampling).
    """

    def ran(name: str, out: torch.Tensor) -> torch.Tensor:
        if hooks.on_block is not None:
            hooks.on_block(name)
        if name == hooks.stop_after:
            raise _Stop(out)
        return out

    def resnet(name: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return ran(name, maybe_checkpoint(checkpoint, block, x, emb))

    def attention(name: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return ran(name, hooks.attention(name, block, x))

    def motion(name: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if hooks.motion is None else ran(name, hooks.motion(name, block, x))

    def pair(prefix: str, block: nn.Module, j: int, x: torch.Tensor) -> torch.Tensor:
        """Resnet j of a level, then its transformer and temporal module where the level has them."""
        x = resnet(f"{prefix}.resnets.{j}", block.resnets[j], x)
        if getattr(block, "attentions", None) is not None:
            x = attention(f"{prefix}.attentions.{j}", block.attentions[j], x)
        if getattr(block, "motion_modules", None) is not None:
            x = motion(f"{prefix}.motion_modules.{j}", block.motion_modules[j], x)
        return x

    try:
        skips = [h]
        for i, block in enumerate(down_blocks):
            for j in range(len(block.resnets)):
                h = pair(f"down_blocks.{i}", block, j, h)
                skips.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                skips.append(h)

        mid_motion = getattr(mid_block, "motion_modules", None)
        h = resnet("mid_block.resnets.0", mid_block.resnets[0], h)
        for k, (attn, res) in enumerate(zip(mid_block.attentions, mid_block.resnets[1:])):
            h = attention(f"mid_block.attentions.{k}", attn, h)
            if mid_motion is not None:
                h = motion(f"mid_block.motion_modules.{k}", mid_motion[k], h)
            h = resnet(f"mid_block.resnets.{k + 1}", res, h)

        for i, block in enumerate(up_blocks):
            for j in range(len(block.resnets)):
                h = pair(f"up_blocks.{i}", block, j, torch.cat([h, skips.pop()], dim=1))
            if block.upsamplers is not None:
                h = block.upsamplers[0](h, skips[-1].shape[-2:] if upsample_sizes else None)
    except _Stop as stop:
        return stop.h
    return h
