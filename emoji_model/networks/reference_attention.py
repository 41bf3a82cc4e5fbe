"""Reference attention of the denoising UNet, with what is constant for a video projected once.

Each spatial transformer of the UNet attends twice. Its self-attention runs over the frame's own tokens
concatenated with the matching appearance bank (paper 3.2; the released ``SpatialAtten``); its
cross-attention runs over the image-prompt tokens. Both the bank and the prompt tokens are the same at
every denoising step, context window and frame of a video, so their key/value projections are computed
once per video (:func:`prepare_reference`, a :class:`ReferenceContext`) instead of once per frame and
step. Two more things follow from the released guidance batch: its unconditional rows attend to no
bank, and their prompt tokens are zeroed CLIP tokens through a linear layer, all equal, so their
cross-attention output is one constant vector, precomputed too. Batch rows are grouped by clip
(``(b f)`` rows, ``f`` frames per clip) and each group takes its own path.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidRequestError


@dataclass
class LayerContext:
    """What one spatial transformer of the UNet reuses for a whole video (batch B clips).

    ``bank_k``/``bank_v`` [B, heads, M, d] project the appearance bank (None: no reference attention);
    ``with_bank`` [B] which clips attend to their bank (the released unconditional rows do not);
    ``cross_k``/``cross_v`` [B, heads, T, d] project the prompt tokens; ``cross_out`` [B, 1, C] is the
    whole cross-attention output of the clips in ``constant`` (their T prompt tokens are equal).
    """

    bank_k: torch.Tensor | None
    bank_v: torch.Tensor | None
    with_bank: tuple[bool, ...]
    cross_k: torch.Tensor
    cross_v: torch.Tensor
    cross_out: torch.Tensor
    constant: tuple[bool, ...]


@dataclass
class ReferenceContext:
    """Per-video key/value projections of every spatial transformer of a UNet, by module name."""

    layers: dict[str, LayerContext]
    batch: int

    def to(self, device=None, dtype=None) -> ReferenceContext:
        """A copy on ``device`` / in ``dtype``."""

        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return ReferenceContext({name: LayerContext(mv(c.bank_k), mv(c.bank_v), c.with_bank, mv(c.cross_k),
                                                    mv(c.cross_v), mv(c.cross_out), c.constant)
                                 for name, c in self.layers.items()}, self.batch)


def spatial_transformers(blocks: Sequence[nn.Module], prefixes: Sequence[str]) -> Iterator[tuple[str, nn.Module]]:
    """(name, Transformer2DModel) of every spatial transformer, in the order the UNet walk runs them."""
    for prefix, block in zip(prefixes, blocks):
        for j, attn in enumerate(getattr(block, "attentions", None) or ()):
            yield f"{prefix}.attentions.{j}", attn


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)  # "b n (h d) -> b h n d" (a view: this runs per layer)


def prepare_layer(block: nn.Module, bank: torch.Tensor | None, with_bank: tuple[bool, ...],
                  prompt_tokens: torch.Tensor, constant: tuple[bool, ...]) -> LayerContext:
    """The :class:`LayerContext` of one transformer block (its ``attn1``/``attn2``) for a bank [B,M,C] and tokens [B,T,D]."""
    attn1, attn2 = block.attn1, block.attn2
    bank_k = bank_v = None
    if bank is not None:
        bank_k, bank_v = _heads(attn1.to_k(bank), attn1.heads), _heads(attn1.to_v(bank), attn1.heads)
    cross_k, cross_v = _heads(attn2.to_k(prompt_tokens), attn2.heads), _heads(attn2.to_v(prompt_tokens), attn2.heads)
    # softmax over equal keys is uniform, so every query receives the one value: out = to_out(to_v(token))
    cross_out = attn2.to_out[1](attn2.to_out[0](attn2.to_v(prompt_tokens[:, :1])))
    return LayerContext(bank_k, bank_v, with_bank, cross_k, cross_v, cross_out, constant)


def prepare_reference(transformers: Iterator[tuple[str, nn.Module]], prompt_tokens: torch.Tensor,
                      banks: Sequence[torch.Tensor] | None, bank_mask: torch.Tensor | None = None) -> ReferenceContext:
    """Project the banks (one [B,M_i,C_i] per transformer, UNet order) and prompt tokens [B,T,D] once.

    ``bank_mask`` [B] bool: False clips attend to no bank (None: all do).
    """
    batch = prompt_tokens.shape[0]
    with_bank = (tuple(bool(v) for v in bank_mask.reshape(-1).tolist())
                 if bank_mask is not None and not bank_mask.is_meta else (True,) * batch)
    if len(with_bank) != batch:
        raise InvalidRequestError(f"bank_mask has {len(with_bank)} entries for a batch of {batch}")
    if prompt_tokens.is_meta:  # shapes only (the trainer's memory plan): no values to compare
        constant = (False,) * batch
    else:
        constant = tuple(bool((row == row[:1]).all()) for row in prompt_tokens.detach())
    bank_iter = iter(banks) if banks is not None else None
    layers = {}
    for name, transformer in transformers:
        bank = next(bank_iter, None) if bank_iter is not None else None
        if bank_iter is not None and bank is None:
            raise InvalidRequestError("fewer appearance banks were given than the UNet has attention layers")
        layers[name] = prepare_layer(transformer.transformer_blocks[0], bank,
                                     with_bank if bank is not None else (False,) * batch, prompt_tokens, constant)
    if bank_iter is not None and next(bank_iter, None) is not None:
        raise InvalidRequestError("more appearance banks were given than the UNet has attention layers")
    return ReferenceContext(layers, batch)


def _runs(flags: tuple[bool, ...]) -> Iterator[tuple[int, int, bool]]:
    """(start, stop, flag) of the runs of equal consecutive flags."""
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            yield start, i, flags[start]
            start = i


def _with_bank(own: torch.Tensor, bank: torch.Tensor, frames: int) -> torch.Tensor:
    """cat([own [(g f),h,n,d], bank [g,h,M,d] for each of the f frames], tokens) → [(g f),h,n+M,d], one copy each."""
    rows, heads, n, d = own.shape
    out = own.new_empty(rows, heads, n + bank.shape[2], d)
    out[:, :, :n] = own
    out.view(bank.shape[0], frames, heads, -1, d)[:, :, :, n:] = bank[:, None]
    return out


def cached_signature(cls):
    """diffusers' Attention.forward reads its processor's signature at every call: compute it once."""
    cls.__call__.__signature__ = inspect.signature(cls.__call__)
    return cls


@cached_signature
class ReferenceAttnProcessor:
    """SDPA attention of the appearance net and the denoising UNet (a diffusers attention processor).

    Keyword inputs (through ``cross_attention_kwargs``):
      ``layer``       the transformer's :class:`LayerContext` (the denoising UNet), or None: plain attention;
      ``num_frames``  F, the frames of each clip in the ``(b f)`` attention batch;
      ``capture``     a list that receives the self-attention input (the appearance net's bank).
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 layer: LayerContext | None = None, num_frames: int = 1, capture: list | None = None) -> torch.Tensor:
        is_self = encoder_hidden_states is None
        if is_self and capture is not None:
            capture.append(hidden_states)
        if layer is None:
            out = self._plain(attn, hidden_states, encoder_hidden_states, attention_mask)
        elif is_self:
            out = self._self(attn, hidden_states, layer, num_frames)
        else:
            out = self._cross(attn, hidden_states, layer, num_frames)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    @staticmethod
    def _project_out(attn, out: torch.Tensor) -> torch.Tensor:
        b, h, n, d = out.shape
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, h * d)))  # "b h n d -> b n (h d)"

    def _plain(self, attn, x, context, attention_mask):
        context = x if context is None else context
        q, k, v = (_heads(f(t), attn.heads) for f, t in ((attn.to_q, x), (attn.to_k, context), (attn.to_v, context)))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[2], q.shape[0])
            attention_mask = attention_mask.view(q.shape[0], attn.heads, -1, attention_mask.shape[-1])
        return self._project_out(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask))

    def _self(self, attn, x, layer: LayerContext, frames: int):
        """Frames attend over their own tokens, plus their clip's bank where ``layer.with_bank`` says so."""
        q, k, v = (_heads(f(x), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
        parts = []
        for start, stop, use_bank in _runs(layer.with_bank):
            rows = slice(start * frames, stop * frames)
            qr, kr, vr = q[rows], k[rows], v[rows]
            if use_bank:
                # the released block: keys/values of cat([frame tokens, bank tokens]), one bank per clip
                kr = _with_bank(kr, layer.bank_k[start:stop], frames)
                vr = _with_bank(vr, layer.bank_v[start:stop], frames)
            parts.append(F.scaled_dot_product_attention(qr, kr, vr))
        return self._project_out(attn, parts[0] if len(parts) == 1 else torch.cat(parts))

    def _cross(self, attn, x, layer: LayerContext, frames: int):
        """Every frame of a clip attends over the clip's prompt tokens (their projections given)."""
        parts = []
        n = x.shape[1]
        for start, stop, constant in _runs(layer.constant):
            rows = x[start * frames:stop * frames]
            if constant:
                parts.append(layer.cross_out[start:stop].repeat_interleave(frames, 0).expand(-1, n, -1))
                continue
            # the frames of a clip share its keys: fold them into the query sequence ("(b f) n c -> b (f n) c")
            q = _heads(attn.to_q(rows.reshape(stop - start, frames * n, rows.shape[-1])), attn.heads)
            out = F.scaled_dot_product_attention(q, layer.cross_k[start:stop], layer.cross_v[start:stop])
            parts.append(self._project_out(attn, out).reshape(-1, n, attn.to_out[0].out_features))
        return parts[0] if len(parts) == 1 else torch.cat(parts)
