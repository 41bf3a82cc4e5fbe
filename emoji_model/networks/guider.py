"""Landmark guider (paper 4, the released ``lmk_guider``): control renders → features added after conv_in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import FYEConfig


class LandmarkGuider(nn.Module):
    """Strided conv encoder of the control images, applied to each frame; zero-initialised output.

    conv_in → SiLU → [conv 3×3 → SiLU → conv 3×3 stride 2 → SiLU] × 3 → conv_out (zero). Input: control
    renders [B,3,F,H,W] with values in 0..1 (the released pipeline does not normalise them to -1..1);
    output [B, C0, F, H/8, W/8] where C0 is the UNet's conv_in width (320 for SD-1.5).
    """

    def __init__(self, config: FYEConfig):
        super().__init__()
        ch = config.guider_channels
        self.conv_in = nn.Conv2d(config.guider_in_channels, ch[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(ch[-1], config.guider_out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        """[B,3,F,H,W] in 0..1 → [B,C0,F,H/8,W/8]."""
        frames = control.shape[2]
        x = rearrange(control.to(self.conv_in.weight.dtype), "b c f h w -> (b f) c h w")
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = self.conv_out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames)
