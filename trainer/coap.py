"""COAP: AdamW with correlation-aware low-rank projected moments, optionally stored in 8 bits.

Written after Xiao et al. 2025, "COAP: Memory-Efficient Training with Correlation-Aware Gradient
Projection" (CVPR 2025). Like GaLore, Adam's moments of a weight live in a rank-r subspace of its
gradient; unlike GaLore the subspace is not recomputed from scratch by a full SVD every few hundred
steps, which makes successive subspaces unrelated (the moments then describe a space the gradient no
longer lives in). Instead, for a weight whose gradient G is viewed as [m, n]:

* projection: R = G·Pᵀ with P ∈ R^{r×n} when m ≥ n ("right"), R = Pᵀ·G with P ∈ R^{m×r} otherwise;
  the moments are [m, r] or [r, n]; the Adam direction N is projected back (N·P or P·N) and scaled.
  Its entries are ~√(r/n) the size of AdamW's, so the default scale 2 (= √4, the default rank ratio)
  gives steps of AdamW's size (the authors use 1; on the tiny bench 2 ends at 1.10× AdamW's loss
  after 60 steps, 1 at 1.32×);
* every ``update_interval`` steps the **inter-projection correlation update** (paper eq. 5): one
  clipped gradient step on P of ``MSE(Ĝ, G) / mean(G²) · (1 − CosSim(M̂, G))``, where Ĝ is G projected
  onto P and back, and M̂ the stored first moment lifted with P (the row-wise cosine, averaged). The
  MSE is taken relative to the gradient's size (the authors' plain MSE scales with |G|², and its step
  vanishes for gradients of ~1e-3; relative, the update moves P — tiny bench: 1.32× AdamW's loss
  after 60 steps against 1.58× with the plain MSE). The first factor
  keeps the subspace capturing the gradient, the second keeps the moments accumulated so far pointing
  where the gradient goes, so the optimizer's history stays meaningful across updates;
* every ``update_interval · reproject_factor`` steps the **cheap projection refresh** (eq. 6): a
  randomized SVD whose test matrix is the previous projection — Q = qr(G·Pᵀ), then the SVD of the
  small r×n matrix QᵀG — one subspace iteration from the current subspace rather than a full SVD
  (the very first projection uses a fixed Gaussian test matrix).

Conv kernels [o, i, kh, kw] with kh·kw > 1 are projected as the authors do, by a Tucker-2 factorisation
of their two channel modes: factors U₀ ∈ R^{o×r₀}, U₁ ∈ R^{i×r₁}, the moments are the core
[r₀, r₁, kh, kw]; both factors take the same correlation update and refresh (each factor from its mode
unfolding). Ranks are ``dim / √conv_rank_ratio`` per mode, so the core is 1/ratio of the kernel.
1×1 kernels are linear layers over channels and are projected as [o, i] matrices. Parameters whose
projection would not be smaller (biases, norms, tiny matrices) get plain AdamW.

With ``eight_bit`` the two moments are stored blockwise-quantised to 8 bits with bitsandbytes (the
library the authors use for their 8-bit variant), dequantised for the update and quantised again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from emoji_model.errors import InvalidRequestError

QUANT_BLOCK = 256  # elements per absmax of the 8-bit moments (bitsandbytes' optimizer block)
_QUANTISED = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class Layout:
    """How one parameter is projected: ``kind`` is "right", "left" or "tucker"; ``ranks`` per factor."""

    kind: str
    ranks: tuple[int, ...]
    shape: tuple[int, ...]

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the projection factors and of the (projected) moments."""
        if self.kind == "tucker":
            o, i, *k = self.shape
            r0, r1 = self.ranks
            return {"proj0": (o, r0), "proj1": (i, r1), "moment": (r0, r1, *k)}
        m, n = self.shape[0], math.prod(self.shape[1:])
        r = self.ranks[0]
        if self.kind == "right":
            return {"proj": (r, n), "moment": (m, r)}
        return {"proj": (m, r), "moment": (r, n)}


def layout_for(shape: Sequence[int], rank: int | None = None, rank_ratio: float = 4.0,
               conv_rank_ratio: float = 4.0) -> Layout | None:
    """The projection of a parameter of ``shape``, or None when plain AdamW keeps less or as much state."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return None
    if len(shape) == 4 and shape[2] * shape[3] > 1:
        o, i = shape[:2]
        per_mode = math.sqrt(conv_rank_ratio)
        r0, r1 = max(1, int(o / per_mode)), max(1, int(i / per_mode))
        if r0 >= o and r1 >= i:
            return None
        lay = Layout("tucker", (min(r0, o), min(r1, i)), shape)
    else:
        m, n = shape[0], math.prod(shape[1:])
        r = int(rank) if rank else max(1, int(min(m, n) / rank_ratio))
        if r >= min(m, n):
            return None
        lay = Layout("right" if m >= n else "left", (r,), shape)
    return lay if state_numel(lay) < 2 * math.prod(shape) else None


def state_numel(layout: Layout) -> int:
    """Numbers COAP keeps for one projected parameter: factors + two moments."""
    shapes = layout.state_shapes()
    return sum(math.prod(s) for k, s in shapes.items() if k != "moment") + 2 * math.prod(shapes["moment"])


def state_bytes(shape: Sequence[int], rank: int | None, rank_ratio: float, conv_rank_ratio: float,
                eight_bit: bool = False) -> int:
    """Optimizer-state bytes of one parameter under COAP (fp32 factors; fp32 or 8-bit moments)."""
    lay = layout_for(shape, rank, rank_ratio, conv_rank_ratio)
    moment = math.prod(lay.state_shapes()["moment"]) if lay is not None else math.prod(shape)
    factors = state_numel(lay) - 2 * moment if lay is not None else 0
    per_moment = (moment + 4 * math.ceil(moment / QUANT_BLOCK)) if eight_bit else 4 * moment
    return 4 * factors + 2 * per_moment


def range_basis(a: torch.Tensor, rank: int, omega: torch.Tensor) -> torch.Tensor:
    """Rows [rank, n]: the top right singular vectors of ``a`` [m, n] within the range of ``a·omega``.

    One pass of a randomized SVD (Halko et al. 2011) whose test matrix ``omega`` [n, rank] is the
    previous projection: Q = qr(a·omega), then the SVD of the small matrix Qᵀ·a.
    """
    q, _ = torch.linalg.qr(a @ omega)               # [m, rank]
    _, _, vh = torch.linalg.svd(q.T @ a, full_matrices=False)  # [rank, n]
    return vh[:rank].contiguous()


def _bnb_functional():
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise InvalidRequestError("8-bit optimizer states need the bitsandbytes package (pip install bitsandbytes; "
                                  "it runs on CPU and CUDA); or use optimizer 'coap' or 'galore', which need "
                                  "nothing else") from None
    return bnbf


class COAPAdamW(torch.optim.Optimizer):
    """AdamW whose moments live in a COAP projection for the groups that set ``project`` (see module doc)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, project: bool = True, rank: int | None = None,
                 rank_ratio: float = 4.0, conv_rank_ratio: float = 4.0, update_interval: int = 32,
                 reproject_factor: int = 5, scale: float = 2.0, correlation_lr: float = 0.1,
                 eight_bit: bool = False, seed: int = 0):
        if update_interval < 1 or reproject_factor < 1:
            raise InvalidRequestError(f"COAP needs update_interval >= 1 and reproject_factor >= 1, got "
                                      f"{update_interval} and {reproject_factor}")
        if eight_bit:
            _bnb_functional()
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, project=project, rank=rank,
                        rank_ratio=rank_ratio, conv_rank_ratio=conv_rank_ratio, update_interval=update_interval,
                        reproject_factor=reproject_factor, scale=scale, correlation_lr=correlation_lr,
                        eight_bit=eight_bit, seed=seed)
        super().__init__(params, defaults)
        self._codes: dict[tuple[str, bool], torch.Tensor] = {}
        self._layouts: dict[int, Layout | None] = {}  # per parameter (its shape and group do not change)

    # -- 8-bit moments ----------------------------------------------------------------------------
    def _code(self, device: torch.device, signed: bool) -> torch.Tensor:
        key = (str(device), signed)
        if key not in self._codes:
            self._codes[key] = _bnb_functional().create_dynamic_map(signed=signed).to(device)
        return self._codes[key]

    def _get(self, state: dict, key: str, shape, device, eight_bit: bool) -> torch.Tensor:
        if key not in state:
            return torch.zeros(shape, device=device, dtype=torch.float32)
        if not eight_bit:
            return state[key]
        bnbf = _bnb_functional()
        codes = state[key]
        return bnbf.dequantize_blockwise(codes, absmax=state[key + "_absmax"], code=self._code(device, key == "exp_avg"),
                                         blocksize=QUANT_BLOCK).reshape(shape)

    def _put(self, state: dict, key: str, value: torch.Tensor, eight_bit: bool) -> None:
        if not eight_bit:
            state[key] = value
            return
        codes, quant = _bnb_functional().quantize_blockwise(value.contiguous(), code=self._code(value.device, key == "exp_avg"),
                                                            blocksize=QUANT_BLOCK)
        state[key], state[key + "_absmax"] = codes, quant.absmax

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the 8-bit codes stay uint8 (torch casts every state tensor to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in _QUANTISED:
                if key + "_absmax" in state:
                    state[key] = state[key].to(torch.uint8)

    # -- projections ------------------------------------------------------------------------------
    @staticmethod
    def _down(lay: Layout, state: dict, g: torch.Tensor) -> torch.Tensor:
        """The gradient in the projected space."""
        if lay.kind == "tucker":  # two matmuls: U₀ᵀ on the output mode, then U₁ᵀ on the input mode
            o, i, h, w = g.shape
            u0, u1 = state["proj0"], state["proj1"]
            x = (u0.T @ g.reshape(o, -1)).reshape(u0.shape[1], i, h * w)       # [r0, i, hw]
            return (x.transpose(1, 2) @ u1).transpose(1, 2).reshape(u0.shape[1], u1.shape[1], h, w)
        g = g.reshape(lay.shape[0], -1)
        return g @ state["proj"].T if lay.kind == "right" else state["proj"].T @ g

    @staticmethod
    def _up(lay: Layout, factors: dict, x: torch.Tensor) -> torch.Tensor:
        """A projected tensor back in the weight's shape."""
        if lay.kind == "tucker":
            r0, r1, h, w = x.shape
            u0, u1 = factors["proj0"], factors["proj1"]
            x = u1 @ x.reshape(r0, r1, h * w)                                   # [r0, i, hw]
            return (u0 @ x.reshape(r0, -1)).reshape(lay.shape)
        out = x @ factors["proj"] if lay.kind == "right" else factors["proj"] @ x
        return out.reshape(lay.shape)

    def _initial(self, lay: Layout, g: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """First projection: a randomized SVD of the first gradient with a fixed Gaussian test matrix."""
        gen = torch.Generator(device=g.device).manual_seed(seed)
        if lay.kind == "tucker":
            (o, r0), (i, r1) = lay.state_shapes()["proj0"], lay.state_shapes()["proj1"]
            return self._refresh(lay, g, {"proj0": torch.randn(o, r0, generator=gen, device=g.device),
                                          "proj1": torch.randn(i, r1, generator=gen, device=g.device)})
        m, n = lay.shape[0], math.prod(lay.shape[1:])
        r = lay.ranks[0]
        omega = torch.randn(r, n, generator=gen, device=g.device) if lay.kind == "right" else \
            torch.randn(m, r, generator=gen, device=g.device)
        return self._refresh(lay, g, {"proj": omega})

    @staticmethod
    def _refresh(lay: Layout, g: torch.Tensor, factors: dict) -> dict[str, torch.Tensor]:
        """Cheap refresh (eq. 6): one randomized-SVD pass started from the current factors."""
        if lay.kind == "tucker":
            o, i = lay.shape[:2]
            g0 = g.reshape(o, -1)                                   # mode-0 unfolding [o, i·kh·kw]
            g1 = g.transpose(0, 1).reshape(i, -1)                   # mode-1 unfolding [i, o·kh·kw]
            return {"proj0": range_basis(g0.T, lay.ranks[0], factors["proj0"]).T.contiguous(),
                    "proj1": range_basis(g1.T, lay.ranks[1], factors["proj1"]).T.contiguous()}
        g = g.reshape(lay.shape[0], -1)
        p = factors["proj"]
        if lay.kind == "right":
            return {"proj": range_basis(g, lay.ranks[0], p.T)}              # [r, n]
        return {"proj": range_basis(g.T, lay.ranks[0], p).T.contiguous()}   # [m, r]

    def _correlate(self, lay: Layout, g: torch.Tensor, moment: torch.Tensor, factors: dict,
                   lr: float) -> dict[str, torch.Tensor]:
        """Inter-projection correlation update (eq. 5): one clipped gradient step on the factors."""
        names = sorted(factors)
        live = {k: factors[k].detach().clone().requires_grad_(True) for k in names}
        with torch.enable_grad():
            restored = self._up(lay, live, self._down(lay, live, g))  # Ĝ: G through the subspace and back
            lifted = self._up(lay, live, moment)                        # M̂: the first moment in weight space
            rows = lay.shape[0]
            cos = F.cosine_similarity(lifted.reshape(rows, -1), g.reshape(rows, -1), dim=1).mean()
            # The reconstruction error relative to the gradient's own size: the authors' plain MSE scales
            # with |G|², so for gradients of ~1e-3 its step on P vanishes; relative, the step does not.
            loss = F.mse_loss(restored, g) / g.square().mean().clamp_min(1e-30) * (1 - cos)
            grads = torch.autograd.grad(loss, [live[k] for k in names])
        norm = torch.sqrt(sum(d.square().sum() for d in grads))
        clip = torch.clamp(1.0 / (norm + 1e-6), max=1.0)  # the authors clip the factor gradient to norm 1
        return {k: (live[k].detach() - lr * clip * d) for k, d in zip(names, grads)}

    # -- the step ---------------------------------------------------------------------------------
    def _project(self, p: torch.Tensor, group: dict) -> tuple[Layout | None, torch.Tensor, tuple]:
        """(layout, the gradient in its projected space, the moment shape); refreshes the projection when due."""
        state = self.state[p]
        done = state.get("step", 0)  # steps taken before this one
        g = p.grad.float()
        if id(p) not in self._layouts:
            self._layouts[id(p)] = layout_for(p.shape, group["rank"], group["rank_ratio"],
                                              group["conv_rank_ratio"]) if group["project"] else None
        lay = self._layouts[id(p)]
        if lay is None:
            return None, g, tuple(g.shape)
        names = ("proj0", "proj1") if lay.kind == "tucker" else ("proj",)
        shape = lay.state_shapes()["moment"]
        if names[0] not in state:
            state.update(self._initial(lay, g, group["seed"]))
        elif done % group["update_interval"] == 0:
            factors = {k: state[k] for k in names}
            if done % (group["update_interval"] * group["reproject_factor"]) == 0:
                state.update(self._refresh(lay, g, factors))
            else:
                moment = self._get(state, "exp_avg", shape, g.device, group["eight_bit"])
                state.update(self._correlate(lay, g, moment, factors, group["correlation_lr"]))
        return lay, self._down(lay, state, g), shape

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step; projected as COAP for the parameters of groups with ``project``.

        Projections are per tensor; the Adam arithmetic runs in torch's fused AdamW kernel over the
        tensors of a group that share a step count (8-bit moments: foreach ops around the quantisation).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_step: dict[int, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                lay, g, shape = self._project(p, group)
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                by_step.setdefault(state["step"], []).append((p, state, lay, g, shape))
            for step, items in by_step.items():
                if group["eight_bit"] or not hasattr(torch, "_fused_adamw_"):
                    self._adam(items, step, group)
                else:
                    self._adam_fused(items, step, group)
        return loss

    def _adam_fused(self, items: list, step: int, group: dict) -> None:
        """The AdamW update in one fused kernel (CPU and CUDA) for fp32 moments.

        Unprojected tensors are stepped in place. Projected ones step a zero stand-in in the projected
        space with rate 1 and no decay, which leaves minus the Adam direction in it; that is projected
        back and applied with the group's rate, scale and decoupled decay.
        """
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        for projected in (False, True):
            chosen = [it for it in items if (it[2] is not None) == projected]
            if not chosen:
                continue
            targets = [torch.zeros_like(g) if projected else p for p, _, _, g, _ in chosen]
            avgs = [st.setdefault("exp_avg", torch.zeros_like(g)) for _, st, _, g, _ in chosen]
            sqs = [st.setdefault("exp_avg_sq", torch.zeros_like(g)) for _, st, _, g, _ in chosen]
            steps = [torch.tensor(float(step), device=g.device) for _, _, _, g, _ in chosen]
            torch._fused_adamw_(targets, [g for _, _, _, g, _ in chosen], avgs, sqs, [], steps,
                                lr=1.0 if projected else lr, beta1=beta1, beta2=beta2,
                                weight_decay=0.0 if projected else wd, eps=group["eps"], amsgrad=False,
                                maximize=False)
            if projected:
                for (p, st, lay, _, _), neg in zip(chosen, targets):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(self._up(lay, st, neg).to(p.dtype), alpha=lr * group["scale"])

    def _adam(self, items: list, step: int, group: dict) -> None:
        """The AdamW update of ``items`` (parameter, state, layout, projected gradient, moment shape), foreach."""
        beta1, beta2 = group["betas"]
        eight_bit = group["eight_bit"]
        grads = [g for _, _, _, g, _ in items]
        avgs = [self._get(st, "exp_avg", sh, g.device, eight_bit) for _, st, _, g, sh in items]
        sqs = [self._get(st, "exp_avg_sq", sh, g.device, eight_bit) for _, st, _, g, sh in items]
        torch._foreach_lerp_(avgs, grads, 1 - beta1)
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, value=1 - beta2)
        for (_, st, _, _, _), avg, sq in zip(items, avgs, sqs):
            self._put(st, "exp_avg", avg, eight_bit)
            self._put(st, "exp_avg_sq", sq, eight_bit)
        denom = torch._foreach_div(sqs, 1 - beta2 ** step)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(avgs, 1 - beta1 ** step)
        torch._foreach_div_(updates, denom)
        params = [p for p, _, _, _, _ in items]
        updates = [(self._up(lay, st, u) * group["scale"] if lay is not None else u).to(p.dtype)
                   for (p, st, lay, _, _), u in zip(items, updates)]
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])
