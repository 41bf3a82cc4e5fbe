"""Optimisation: the learning-rate function, AdamW / 8-bit AdamW / GaLore-style AdamW / COAP, EMA, state sizes.

COAP (correlation-aware projected moments, optionally 8-bit) lives in :mod:`trainer.coap`.

:class:`GaLoreAdamW` is written after the idea of GaLore (Zhao et al. 2024, "GaLore: Memory-Efficient
LLM Training by Gradient Low-Rank Projection"): for a weight matrix W ∈ R^{m×n} (a conv kernel is viewed
as [out, in·k·k]) the gradient G is projected onto a rank-r subspace taken from its SVD, refreshed every
K steps — R = G·P with P the top-r right singular vectors when m ≥ n, R = Pᵀ·G with the top-r left ones
otherwise. Adam's moments live in the projected space (m·r or r·n numbers instead of m·n), the Adam step
is projected back (N·Pᵀ or P·N), scaled by α, and applied with decoupled weight decay. Parameters
whose smaller side is not larger than r (biases, norms, small matrices) get plain AdamW.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from emoji_model.errors import InvalidRequestError

from .config import TrainConfig

log = logging.getLogger("emoji_model.trainer.optim")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up, then constant or cosine to ``min_lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def _as_matrix_shape(shape: torch.Size) -> tuple[int, int]:
    return int(shape[0]), int(math.prod(shape[1:]))


def galore_applies(p: torch.Tensor, rank: int) -> bool:
    """True for parameters GaLore projects: ≥2-D with both matrix sides larger than ``rank``."""
    if p.ndim < 2:
        return False
    m, n = _as_matrix_shape(p.shape)
    return min(m, n) > rank


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with low-rank projected moments for groups that set ``rank`` (GaLore, Zhao et al. 2024)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, rank: int | None = None, update_every: int = 200, scale: float = 0.25):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_every=update_every, scale=scale)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step; projected for the parameters of groups with a rank."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            rank = group["rank"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                step = state["step"]
                grad = p.grad.float()
                project = rank is not None and galore_applies(p, rank)
                if project:
                    g = grad.reshape(_as_matrix_shape(p.shape))  # [m, n]
                    right = g.shape[0] >= g.shape[1]
                    if "projector" not in state or (step - 1) % group["update_every"] == 0:
                        # 1. refresh the subspace from the current gradient's singular vectors
                        u, _, vh = torch.linalg.svd(g, full_matrices=False)
                        state["projector"] = (vh[:rank].T if right else u[:, :rank]).contiguous()
                    proj = state["projector"]
                    grad = g @ proj if right else proj.T @ g  # 2. R: [m, r] or [r, n]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # 3. Adam moments and the bias-corrected step, in the (projected) space
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
                update = (exp_avg / (1 - beta1 ** step)) / denom
                if project:
                    # 4. back to the weight's shape, scaled by alpha
                    update = (update @ proj.T if right else proj @ update).reshape(p.shape) * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], cfg: TrainConfig) -> list[dict]:
    """nanoGPT's split: weight decay on ≥2-D tensors (matrices, kernels), none on biases and norms."""
    decay, no_decay = [], []
    for _, p in named:
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, over the trainable parameters ``named``."""
    if not named:
        raise InvalidRequestError("no trainable parameter: check `trainable` in the training config")
    groups = param_groups(named, cfg)
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kw)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InvalidRequestError("optimizer 'adamw8bit' needs the bitsandbytes package (pip install "
                                      "bitsandbytes; it runs on CPU and CUDA); or use optimizer 'coap' or 'galore', "
                                      "which need nothing else") from None
        return bnb.optim.AdamW8bit(groups, **kw)
    if cfg.optimizer in ("coap", "coap8bit"):
        from .coap import COAPAdamW

        # Matrices and kernels are projected (each by its own layout), biases and norms get AdamW.
        groups[0]["project"], groups[1]["project"] = True, False
        return COAPAdamW(groups, **kw, rank=cfg.coap_rank, rank_ratio=cfg.coap_rank_ratio,
                         conv_rank_ratio=cfg.coap_conv_rank_ratio, update_interval=cfg.coap_update_interval,
                         reproject_factor=cfg.coap_reproject_factor, scale=cfg.coap_scale,
                         eight_bit=cfg.optimizer == "coap8bit", seed=cfg.seed)
    # GaLore: matrices in their own group with a rank, the rest plain AdamW.
    projected = [p for _, p in named if galore_applies(p, cfg.galore_rank)]
    ids = {id(p) for p in projected}
    rest = [g | {"params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    galore = {"params": projected, "weight_decay": cfg.weight_decay, "rank": cfg.galore_rank,
              "update_every": cfg.galore_update_every, "scale": cfg.galore_scale}
    return GaLoreAdamW([galore] + [g for g in rest if g["params"]], **kw)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, projections, step counters)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    total = 0
    for state in inner.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit states for smaller tensors


def estimated_state_bytes(shapes: Iterable[torch.Size], optimizer: str = "adamw", rank: int = 128,
                          cfg: TrainConfig | None = None) -> int:
    """Optimizer state bytes for parameters of ``shapes``, without allocating (moments + projections).

    ``rank`` is GaLore's; COAP's settings come from ``cfg`` (the defaults when None).
    """
    from . import coap

    cfg = cfg if cfg is not None else TrainConfig()
    total = 0
    for shape in shapes:
        numel = math.prod(shape)
        if optimizer == "galore" and len(shape) >= 2 and min(_as_matrix_shape(shape)) > rank:
            m, n = _as_matrix_shape(shape)
            total += 4 * (2 * max(m, n) * rank + min(m, n) * rank)
        elif optimizer in ("coap", "coap8bit"):
            total += coap.state_bytes(shape, cfg.coap_rank, cfg.coap_rank_ratio, cfg.coap_conv_rank_ratio,
                                      optimizer == "coap8bit")
        elif optimizer == "adamw8bit" and numel >= BNB_MIN_8BIT_SIZE:
            # two uint8 moments, an fp32 absmax per 256 values each, two 256-entry fp32 code tables
            total += 2 * (numel + 4 * math.ceil(numel / 256) + 4 * 256)
        else:
            total += 4 * 2 * numel
    return total


class EMA:
    """Exponential moving average of the trained parameters (fp32 shadows, keyed by model names).

    The decay ramps up as min(decay, (1+n)/(10+n)) over updates n, so early averages are not dominated
    by the starting weights.
    """

    def __init__(self, named: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named}

    @torch.no_grad()
    def update(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        """Move the shadows towards the current parameters."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in named:
            self.shadow[n].lerp_(p.detach().float(), 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows (CPU, contiguous) for saving."""
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore shadows saved by :meth:`state_dict`; names must match exactly."""
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            from emoji_model.errors import CheckpointMismatchError

            raise CheckpointMismatchError("EMA state", missing=missing, unexpected=unexpected)
        for n, t in state.items():
            self.shadow[n].copy_(t)
        self.updates = int(updates)
