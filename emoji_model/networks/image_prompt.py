"""Image prompt: CLIP ViT-L/14 image tokens → tokens for the UNets' cross-attention (paper 3.2, 4)."""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .config import FYEConfig


class LinearImagePrompt(nn.Module):
    """The released projection: ``clip_fc`` Linear(clip_dim → cross_attention_dim) applied per token.

    Input is CLIP's ``last_hidden_state`` (257 tokens of 1024 for ViT-L/14, before the post-layernorm);
    the released pipelines feed zeros of that shape for the unconditional branch.
    """

    def __init__(self, clip_dim: int, out_dim: int):
        super().__init__()
        self.clip_fc = nn.Linear(clip_dim, out_dim, bias=True)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """[B,T,clip_dim] → [B,T,out_dim]."""
        return self.clip_fc(clip_tokens.to(self.clip_fc.weight.dtype))


class QFormerLayer(nn.Module):
    """Learned queries attend over [image tokens; queries], then a feed-forward; both pre-norm residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_queries = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=4, activation_fn="gelu")

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries [B,Q,D], tokens [B,T,D] → queries [B,Q,D]."""
        q = self.norm_queries(queries)
        context = torch.cat([self.norm_tokens(tokens), q], dim=1)
        queries = queries + self.attn(q, encoder_hidden_states=context)
        return queries + self.ff(self.norm_ff(queries))


class QFormerImagePrompt(nn.Module):
    """A Q-Former (paper 4, after StyleCrafter): learned queries fuse all CLIP image tokens.

    proj_in (clip_dim → D) → ``layers`` × :class:`QFormerLayer` → proj_out → LayerNorm; returns
    ``qformer_queries`` tokens of ``cross_attention_dim``. An alternative to the released ``clip_fc`` for
    training; released weights do not contain one.
    """

    def __init__(self, clip_dim: int, out_dim: int, layers: int, queries: int, heads: int):
        super().__init__()
        self.proj_in = nn.Linear(clip_dim, out_dim)
        self.queries = nn.Parameter(torch.randn(1, queries, out_dim) * out_dim ** -0.5)
        self.layers = nn.ModuleList(QFormerLayer(out_dim, heads) for _ in range(layers))
        self.proj_out = nn.Linear(out_dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """[B,T,clip_dim] → [B,Q,out_dim]."""
        tokens = self.proj_in(clip_tokens.to(self.proj_in.weight.dtype))
        q = self.queries.expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, tokens)
        return self.norm_out(self.proj_out(q))


def build_image_prompt(config: FYEConfig) -> nn.Module:
    """The image-prompt module the config names."""
    if config.image_prompt == "qformer":
        return QFormerImagePrompt(config.clip_dim, config.cross_attention_dim, config.qformer_layers,
                                  config.qformer_queries, config.qformer_heads)
    return LinearImagePrompt(config.clip_dim, config.cross_attention_dim)
