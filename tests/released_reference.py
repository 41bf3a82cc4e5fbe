"""An independent re-statement of the released Follow-Your-Emoji forward passes, for equivalence tests.

Written directly in torch from the released equations (no diffusers, no code of ours), over tensors
in the released key layout (``referencenet.pth``, ``unet.pth``, ``lmk_guider.pth``). Shapes follow the
released code: video tensors are [b, c, f, h, w]; "inflated" convolutions and group norms apply to every
frame on its own; temporal modules attend along f at every spatial position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


class Released:
    """Forward passes of the released networks over a dict of released-layout tensors."""

    def __init__(self, sd: dict[str, torch.Tensor], *, levels: int, layers: int, attn_levels: tuple[bool, ...],
                 heads: int, groups: int, motion_heads: int, motion_mid: bool = True, motion_groups: int = 32):
        # The released motion modules (AnimateDiff's TemporalTransformer3DModel) are built without the
        # UNet's group count: they normalise with their own default of 32 groups at every size.
        self.sd = sd
        self.levels, self.layers, self.attn_levels = levels, layers, attn_levels
        self.heads, self.groups, self.motion_heads, self.motion_mid = heads, groups, motion_heads, motion_mid
        self.motion_groups = motion_groups

    # -- primitives --------------------------------------------------------------------------------
    def w(self, name: str) -> torch.Tensor:
        return self.sd[name]

    def conv3d(self, x, p, stride=1, padding=1):  # InflatedConv3d: a 2-D conv on every frame
        f = x.shape[2]
        y = F.conv2d(rearrange(x, "b c f h w -> (b f) c h w"), self.w(p + ".weight"), self.sd.get(p + ".bias"),
                     stride=stride, padding=padding)
        return rearrange(y, "(b f) c h w -> b c f h w", f=f)

    def gnorm3d(self, x, p, eps, groups=None):  # InflatedGroupNorm: statistics per frame
        f = x.shape[2]
        y = F.group_norm(rearrange(x, "b c f h w -> (b f) c h w"), groups or self.groups, self.w(p + ".weight"),
                         self.w(p + ".bias"), eps)
        return rearrange(y, "(b f) c h w -> b c f h w", f=f)

    def linear(self, x, p):
        return F.linear(x, self.w(p + ".weight"), self.sd.get(p + ".bias"))

    def lnorm(self, x, p):
        return F.layer_norm(x, x.shape[-1:], self.w(p + ".weight"), self.w(p + ".bias"), 1e-5)

    def attention(self, x, ctx, p, heads):  # softmax(q kᵀ / √d) v with separate q/k/v/out projections
        q, k, v = self.linear(x, p + ".to_q"), self.linear(ctx, p + ".to_k"), self.linear(ctx, p + ".to_v")
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.linear(rearrange(a @ v, "b h n d -> b n (h d)"), p + ".to_out.0")

    def geglu_ff(self, x, p):
        hidden, gate = self.linear(x, p + ".net.0.proj").chunk(2, dim=-1)
        return self.linear(hidden * F.gelu(gate), p + ".net.2")

    @staticmethod
    def timestep_embedding(t, dim):  # flip_sin_to_cos=True, shift 0
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def time_mlp(self, t, dim):
        e = self.timestep_embedding(t, dim)
        return self.linear(F.silu(self.linear(e, "time_embedding.linear_1")), "time_embedding.linear_2")

    # -- blocks ------------------------------------------------------------------------------------
    def resnet(self, x, temb, p):  # ResnetBlock3D with inflated group norm
        h = self.conv3d(F.silu(self.gnorm3d(x, p + ".norm1", 1e-5)), p + ".conv1")
        h = h + self.linear(F.silu(temb), p + ".time_emb_proj")[:, :, None, None, None]
        h = self.conv3d(F.silu(self.gnorm3d(h, p + ".norm2", 1e-5)), p + ".conv2")
        if p + ".conv_shortcut.weight" in self.sd:
            x = self.conv3d(x, p + ".conv_shortcut", padding=0)
        return x + h

    def spatial_transformer(self, x, ctx, p, ref=None, uncond_rows=0, capture=None):
        """Transformer3DModel (SpatialAtten) / referencenet transformer on [b, c, f, h, w]."""
        b, c, f, hh, ww = x.shape
        res = x
        h = self.gnorm3d(x, p + ".norm", 1e-6)
        h = self.conv3d(h, p + ".proj_in", padding=0)
        h = rearrange(h, "b c f h w -> (b f) (h w) c")
        ctx = repeat(ctx, "b n c -> (b f) n c", f=f)
        q = p + ".transformer_blocks.0"
        n1 = self.lnorm(h, q + ".norm1")
        if capture is not None:
            capture.append(rearrange(n1, "(b f) n c -> b f n c", f=f)[:, 0])
            if q + ".attn1.to_q.weight" not in self.sd:
                return None  # referencenet's last layer: only the bank
        if ref is not None:
            r = repeat(ref, "b n c -> (b f) n c", f=f)
            out = self.attention(n1, torch.cat([n1, r], dim=1), q + ".attn1", self.heads)
            if uncond_rows:  # released CFG: the unconditional half attends only to itself
                k = uncond_rows * f
                out = torch.cat([self.attention(n1[:k], n1[:k], q + ".attn1", self.heads), out[k:]])
        else:
            out = self.attention(n1, n1, q + ".attn1", self.heads)
        h = h + out
        h = h + self.attention(self.lnorm(h, q + ".norm2"), ctx, q + ".attn2", self.heads)
        h = h + self.geglu_ff(self.lnorm(h, q + ".norm3"), q + ".ff")
        h = rearrange(h, "(b f) (h w) c -> b c f h w", f=f, h=hh)
        return self.conv3d(h, p + ".proj_out", padding=0) + res

    def motion(self, x, p):
        """VanillaTemporalModule: per-frame GroupNorm, attention along frames with sinusoidal positions."""
        b, c, f, hh, ww = x.shape
        p = p + ".temporal_transformer"
        res = x
        h = self.gnorm3d(x, p + ".norm", 1e-6, self.motion_groups)
        h = rearrange(h, "b c f h w -> (b f) (h w) c")
        h = self.linear(h, p + ".proj_in")
        q = p + ".transformer_blocks.0"
        for i in range(2):
            n = self.lnorm(h, f"{q}.norms.{i}")
            n = rearrange(n, "(b f) d c -> (b d) f c", f=f)
            n = n + self.position_table(c, f)
            a = self.attention(n, n, f"{q}.attention_blocks.{i}", self.motion_heads)
            h = h + rearrange(a, "(b d) f c -> (b f) d c", d=hh * ww)
        h = h + self.geglu_ff(self.lnorm(h, q + ".ff_norm"), q + ".ff")
        h = self.linear(h, p + ".proj_out")
        return rearrange(h, "(b f) (h w) c -> b c f h w", f=f, h=hh) + res

    @staticmethod
    def position_table(dim, length):
        pos = torch.arange(length, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(length, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return pe

    # -- networks ----------------------------------------------------------------------------------
    def guider(self, control):
        x = F.silu(self.conv3d(control, "conv_in"))
        i = 0
        while f"blocks.{i}.weight" in self.sd:
            x = F.silu(self.conv3d(x, f"blocks.{i}", stride=2 if i % 2 else 1))
            i += 1
        return self.conv3d(x, "conv_out")

    def referencenet(self, latent, clip_tokens):
        """Released referencenet: banks (normalised self-attention inputs) from a latent [b,4,h,w] at t=0."""
        x = latent[:, :, None]
        ctx = self.linear(clip_tokens, "clip_fc")
        temb = self.time_mlp(torch.zeros(x.shape[0]), self.w("conv_in.weight").shape[0])
        banks = []
        self._unet(x, temb, ctx, None, 0, capture=banks, temporal=False)
        return banks

    def unet(self, sample, t, clip_tokens, lmk_fea, banks, uncond_rows=0):
        """Released UNet3DConditionModel forward with reference banks (the CFG path when uncond_rows)."""
        ctx = self.linear(clip_tokens, "clip_fc")
        temb = self.time_mlp(t.expand(sample.shape[0]), self.w("conv_in.weight").shape[0])
        return self._unet(sample, temb, ctx, lmk_fea, uncond_rows, banks=list(banks), temporal=True)

    def _unet(self, x, temb, ctx, lmk, uncond_rows, banks=None, capture=None, temporal=True):
        bank = iter(banks) if banks is not None else None

        def attn(h, p):
            out = self.spatial_transformer(h, ctx, p, ref=next(bank) if bank else None, uncond_rows=uncond_rows,
                                           capture=capture)
            return out

        h = self.conv3d(x, "conv_in")
        if lmk is not None:
            h = h + lmk
        skips = [h]
        for i in range(self.levels):
            for j in range(self.layers):
                h = self.resnet(h, temb, f"down_blocks.{i}.resnets.{j}")
                if self.attn_levels[i]:
                    h = attn(h, f"down_blocks.{i}.attentions.{j}")
                if temporal:
                    h = self.motion(h, f"down_blocks.{i}.motion_modules.{j}")
                skips.append(h)
            if i < self.levels - 1:
                h = self.conv3d(h, f"down_blocks.{i}.downsamplers.0.conv", stride=2)
                skips.append(h)
        h = self.resnet(h, temb, "mid_block.resnets.0")
        h = attn(h, "mid_block.attentions.0")
        if temporal and self.motion_mid:
            h = self.motion(h, "mid_block.motion_modules.0")
        h = self.resnet(h, temb, "mid_block.resnets.1")
        for i in range(self.levels):
            level = self.levels - 1 - i
            for j in range(self.layers + 1):
                h = self.resnet(torch.cat([h, skips.pop()], dim=1), temb, f"up_blocks.{i}.resnets.{j}")
                if self.attn_levels[level]:
                    h = attn(h, f"up_blocks.{i}.attentions.{j}")
                    if h is None:
                        return None
                if temporal:
                    h = self.motion(h, f"up_blocks.{i}.motion_modules.{j}")
            if i < self.levels - 1:
                f = h.shape[2]
                h = rearrange(h, "b c f h w -> (b f) c h w")
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.conv3d(rearrange(h, "(b f) c h w -> b c f h w", f=f), f"up_blocks.{i}.upsamplers.0.conv")
        h = self.conv3d(F.silu(self.gnorm3d(h, "conv_norm_out", 1e-5)), "conv_out")
        return h
