"""COAP (trainer/coap.py): layouts and state sizes, the first projection, the cheap refresh, the
correlation update and its schedule, 8-bit moments and their state dict, and the missing-library error."""

from __future__ import annotations

import math
import sys

import pytest
import torch


def _cfg(**kw):
    from trainer.config import TrainConfig

    base = dict(lr=1e-2, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_layouts_and_state_bytes_match_what_the_optimizer_keeps():
    from trainer.coap import layout_for
    from trainer.optim import build_optimizer, estimated_state_bytes, optimizer_state_bytes

    assert layout_for((96, 64)).kind == "right" and layout_for((96, 64)).ranks == (16,)
    assert layout_for((64, 96)).kind == "left" and layout_for((64, 96)).state_shapes()["moment"] == (16, 96)
    tucker = layout_for((64, 32, 3, 3))
    assert tucker.kind == "tucker" and tucker.state_shapes() == {"proj0": (64, 32), "proj1": (32, 16),
                                                                 "moment": (32, 16, 3, 3)}
    assert layout_for((64, 32, 1, 1)).kind == "right"  # a 1x1 kernel is a linear layer over channels
    assert layout_for((64,)) is None and layout_for((3, 3), rank_ratio=1) is None
    assert layout_for((128, 64), rank=8).ranks == (8,)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3), torch.nn.Conv2d(64, 32, 1), torch.nn.Flatten(),
                              torch.nn.Linear(32 * 36, 48), torch.nn.LayerNorm(48))
    shapes = [p.shape for p in net.parameters()]
    for kind in ("coap", "coap8bit"):
        opt = build_optimizer(list(net.named_parameters()), _cfg(optimizer=kind))
        net(torch.randn(2, 8, 8, 8)).square().mean().backward()
        opt.step()
        assert optimizer_state_bytes(opt) == estimated_state_bytes(shapes, kind)


def test_state_on_the_tiny_stage1_parameters_is_a_third_of_adamw():
    from emoji_model.networks import FYEConfig, build_model
    from trainer.config import TrainConfig
    from trainer.optim import build_optimizer, optimizer_state_bytes
    from trainer.step import set_trainable

    sizes = {}
    for kind in ("adamw", "coap", "coap8bit"):
        torch.manual_seed(0)
        named = set_trainable(build_model(FYEConfig.tiny(cover_channels=5), "cpu"), TrainConfig().trainable_groups(5))
        opt = build_optimizer(named, _cfg(optimizer=kind))
        for _, p in named:
            p.grad = torch.randn_like(p)
        opt.step()
        sizes[kind] = optimizer_state_bytes(opt)
    assert 0.25 < sizes["coap"] / sizes["adamw"] < 0.4
    assert sizes["coap8bit"] / sizes["adamw"] < 0.15


def test_first_projection_captures_a_low_rank_gradient_exactly():
    from trainer.coap import COAPAdamW, layout_for

    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.zeros(96, 64))
    w.grad = torch.randn(96, 16, generator=g) @ torch.randn(16, 64, generator=g)  # rank 16 = the layout's
    opt = COAPAdamW([w], lr=0.1)
    opt.step()
    proj = opt.state[w]["proj"]  # [16, 64]
    torch.testing.assert_close(proj @ proj.T, torch.eye(16), atol=1e-5, rtol=0)
    residual = w.grad - w.grad @ proj.T @ proj
    assert residual.norm() / w.grad.norm() < 1e-5
    # the update lies in the projection's row space
    torch.testing.assert_close(w.detach() @ proj.T @ proj, w.detach(), atol=1e-6, rtol=0)

    # a conv kernel with Tucker ranks (32, 16) on its channel modes
    k = torch.nn.Parameter(torch.zeros(64, 32, 3, 3))
    core = torch.randn(32, 16, 3, 3, generator=g)
    u0, u1 = torch.randn(64, 32, generator=g), torch.randn(32, 16, generator=g)
    k.grad = torch.einsum("abhw,oa,ib->oihw", core, u0, u1)
    assert layout_for(k.shape).ranks == (32, 16)
    opt = COAPAdamW([k], lr=0.1)
    opt.step()
    s = opt.state[k]
    restored = torch.einsum("abhw,oa,ib->oihw", torch.einsum("oihw,oa,ib->abhw", k.grad, s["proj0"], s["proj1"]),
                            s["proj0"], s["proj1"])
    assert (restored - k.grad).norm() / k.grad.norm() < 1e-4


def test_cheap_refresh_from_the_previous_projection_finds_the_top_subspace():
    """One randomized-SVD pass started from a slightly stale subspace captures ~all a full SVD does."""
    from trainer.coap import range_basis

    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(256, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(128, 64, generator=g))
    spectrum = torch.logspace(0, -3, 64)
    a = u @ torch.diag(spectrum) @ v.T                      # [256, 128], decaying singular values
    best = spectrum[:16].square().sum()                     # energy of the exact top-16 subspace
    stale = v[:, :16] + 0.3 * torch.randn(128, 16, generator=g) / math.sqrt(128)  # last subspace, drifted
    p = range_basis(a, 16, stale)                           # [16, 128]
    captured = (a @ p.T).square().sum()
    assert captured / best > 0.999
    cold = range_basis(a, 16, torch.randn(128, 16, generator=g))
    assert (a @ cold.T).square().sum() < captured          # the warm start is what makes one pass enough


def test_correlation_update_lowers_its_objective_with_a_bounded_step():
    import torch.nn.functional as F

    from trainer.coap import COAPAdamW, layout_for

    g = torch.Generator().manual_seed(3)
    lay = layout_for((96, 64))
    grad = torch.randn(96, 64, generator=g)
    proj, _ = torch.linalg.qr(torch.randn(64, 16, generator=g))
    factors = {"proj": proj.T.contiguous()}
    moment = torch.randn(96, 16, generator=g)
    opt = COAPAdamW([torch.nn.Parameter(torch.zeros(96, 64))])

    def objective(f):
        restored = opt._up(lay, f, opt._down(lay, f, grad))
        cos = F.cosine_similarity(opt._up(lay, f, moment), grad, dim=1).mean()
        return (F.mse_loss(restored, grad) * (1 - cos)).item()

    before = objective(factors)
    after = opt._correlate(lay, grad, moment, factors, lr=0.1)
    assert objective(after) < before
    assert (after["proj"] - factors["proj"]).norm() <= 0.1 + 1e-6  # clipped to norm 1, times the rate


def test_projection_schedule_correlates_then_refreshes(monkeypatch):
    from trainer.coap import COAPAdamW

    calls = []
    original_refresh, original_correlate = COAPAdamW._refresh, COAPAdamW._correlate
    monkeypatch.setattr(COAPAdamW, "_refresh", staticmethod(lambda *a: calls.append("refresh") or original_refresh(*a)))
    monkeypatch.setattr(COAPAdamW, "_correlate", lambda self, *a: calls.append("correlate") or
                        original_correlate(self, *a))
    w = torch.nn.Parameter(torch.randn(48, 32))
    opt = COAPAdamW([w], lr=1e-2, update_interval=2, reproject_factor=3)
    for step in range(13):
        calls.append(step)
        w.grad = torch.randn(48, 32)
        opt.step()
    # step 0: the first projection (a refresh from a Gaussian test matrix); every 2nd a correlation update,
    # every 6th a refresh instead
    events = [(c, calls[i - 1]) for i, c in enumerate(calls) if isinstance(c, str)]
    assert events == [("refresh", 0), ("correlate", 2), ("correlate", 4), ("refresh", 6), ("correlate", 8),
                      ("correlate", 10), ("refresh", 12)]


def test_coap_optimises_and_beats_galore_at_the_same_rank():
    """A rank-48 regression through a 64x96 layer, projections of rank 32 refreshed every 5 steps."""
    from trainer.optim import build_optimizer

    torch.manual_seed(0)
    target = torch.randn(64, 48) @ torch.randn(48, 96) / 8
    x = torch.randn(256, 96)
    finals = {}
    for kind in ("galore", "coap", "coap8bit"):
        torch.manual_seed(1)
        layer = torch.nn.Linear(96, 64)
        cfg = _cfg(optimizer=kind, lr=0.02, galore_rank=32, galore_update_every=5, galore_scale=1.0,
                   coap_rank_ratio=2, coap_update_interval=5, coap_reproject_factor=4)
        opt = build_optimizer(list(layer.named_parameters()), cfg)
        losses = []
        for _ in range(150):
            loss = (layer(x) - x @ target.T).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        finals[kind] = losses[-1]
        assert losses[-1] < 0.15 * losses[0], (kind, finals)
    assert finals["coap"] < 0.6 * finals["galore"], finals  # measured 4.5 vs 10.4
    assert finals["coap8bit"] < 1.5 * finals["coap"], finals


def test_eight_bit_state_dict_round_trip_continues_exactly():
    from trainer.coap import COAPAdamW

    def run(steps, opt=None, w=None):
        gen = torch.Generator().manual_seed(5)
        grads = [torch.randn(80, 40, generator=gen) for _ in range(6)]
        for i in steps:
            w.grad = grads[i].clone()
            opt.step()

    w1 = torch.nn.Parameter(torch.ones(80, 40))
    whole = COAPAdamW([w1], lr=1e-2, eight_bit=True, update_interval=2, reproject_factor=2)
    run(range(6), whole, w1)

    w2 = torch.nn.Parameter(torch.ones(80, 40))
    first = COAPAdamW([w2], lr=1e-2, eight_bit=True, update_interval=2, reproject_factor=2)
    run(range(3), first, w2)
    saved = first.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == torch.uint8 and saved["state"][0]["exp_avg"].shape == (80, 10)
    w3 = torch.nn.Parameter(w2.detach().clone())
    again = COAPAdamW([w3], lr=1e-2, eight_bit=True, update_interval=2, reproject_factor=2)
    again.load_state_dict(saved)
    assert again.state[w3]["exp_avg"].dtype == torch.uint8
    run(range(3, 6), again, w3)
    torch.testing.assert_close(w3, w1, atol=0, rtol=0)


def test_eight_bit_states_without_bitsandbytes_name_the_package(monkeypatch):
    from emoji_model.errors import InvalidRequestError
    from trainer.optim import build_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    params = list(torch.nn.Linear(4, 4).named_parameters())
    for kind in ("coap8bit", "adamw8bit"):
        with pytest.raises(InvalidRequestError, match="bitsandbytes package .* or use optimizer 'coap'"):
            build_optimizer(params, _cfg(optimizer=kind))
