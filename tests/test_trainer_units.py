"""Trainer pieces without a prepared dataset: frame selection, covering, objectives, optimizers, configs.

The networks are the tiny configuration, on the CPU; tests/test_trainer.py trains on the prepared video.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from conftest import REPO
from tiny_fye import tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_frame_rate_selection_keeps_evenly_spaced_frames():
    from trainer.data import frame_selector

    keep = frame_selector(30.0, 15.0)
    assert [i for i in range(10) if keep(i)] == [0, 2, 4, 6, 8]
    keep = frame_selector(30.0, 25.0)
    assert sum(keep(i) for i in range(300)) == 250
    assert all(frame_selector(25.0, None)(i) and frame_selector(25.0, 30.0)(i) for i in range(5))


def test_crop_and_landmark_mapping_agree():
    from trainer.data import clip_box, crop_frame, points_in_box

    frame = np.zeros((100, 160, 3), np.uint8)
    frame[40:44, 150:154] = 255                      # a bright square near the right edge
    points = np.zeros((1, 478, 3), np.float32)
    points[0, :, 0] = np.linspace(100, 156, 478) / 160  # a face box reaching past the square
    points[0, :, 1] = np.linspace(30, 60, 478) / 100
    box = clip_box(points, (160, 100), scale=1.5)
    assert box[2] == 84 and box[0] + box[2] > 160  # the crop leaves the frame: padded
    crop = crop_frame(frame, box, 42)
    assert crop.shape == (42, 42, 3)
    centre = points_in_box(np.array([[[152 / 160, 42 / 100, 0.0]]], np.float32), (160, 100), box)[0, 0]
    x, y = int(centre[0] * 42), int(centre[1] * 42)
    assert crop[y, x].min() > 200 and crop[0, 0].max() == 0


def test_mask_downsampling_modes():
    from trainer.data import downsample_mask

    m = np.zeros((16, 16), bool)
    m[0, 0] = True            # one pixel of the first cell
    m[8:16, 8:13] = True      # 5/8 of the last cell
    assert downsample_mask(m, 8, "max").tolist() == [[1, 0], [0, 1]]
    assert downsample_mask(m, 8, "area").tolist() == [[0, 0], [0, 1]]


def test_epoch_batches_split_between_processes_and_resume_mid_epoch():
    from trainer.data import EpochBatches

    ranks = [EpochBatches(23, 4, seed=1, rank=r, world=2) for r in range(2)]
    assert ranks[0].per_epoch == 4  # 5 full batches, rounded down to a multiple of 2 processes
    b0, b1 = ranks[0].batches(2), ranks[1].batches(2)
    items = [i for b in b0 + b1 for i in b]
    assert len(items) == len(set(items)) == 16 and all(46 <= i < 69 for i in items)
    assert ranks[0].batches(2, position=2) == b0[1:] and ranks[1].batches(2, position=2) == b1[1:]
    assert ranks[0].batches(3) != b0


def test_covering_frequencies_follow_the_paper():
    from trainer.objectives import sample_covering

    gen = torch.Generator().manual_seed(0)
    n, f = 20000, 16
    covered = sample_covering(n, f, gen).float()
    tol = 4 * math.sqrt(0.25 / n)  # four standard deviations of a frequency
    all_middle = covered[:, 1:-1].all(dim=1).float().mean().item()
    assert abs(all_middle - (0.5 + 0.5 * 0.5 ** (f - 2))) < tol
    marginal = covered.mean(dim=0)
    assert (marginal[1:-1] - 0.75).abs().max() < tol
    assert abs(marginal[0] - 0.25) < tol and abs(marginal[-1] - 0.25) < tol
    # the independent scheme makes the middle frames independent given it: P(two given middle frames
    # both covered) = 0.5 + 0.5 * 0.25
    assert abs((covered[:, 3] * covered[:, 9]).mean().item() - 0.625) < tol
    # Samples of one or two frames have no keyframe/gap structure: always wholly covered, never handed
    # their own target.
    for frames in (1, 2):
        assert sample_covering(n, frames, torch.Generator().manual_seed(1)).all()
    again = sample_covering(n, f, torch.Generator().manual_seed(0)).float()
    assert torch.equal(covered, again)


def test_a_fresh_appearance_net_starts_as_a_copy_of_the_unet():
    from trainer.config import TrainConfig
    from trainer.step import build_model

    model = build_model(TrainConfig(model="tiny", model_overrides={"cover_channels": 5}))
    unet = dict(model.unet.named_parameters())
    for name, p in model.appearance.named_parameters():
        if name.startswith("image_prompt."):
            assert torch.equal(p, dict(model.image_prompt.named_parameters())[name[13:]]), name
        elif name == "conv_in.weight":
            assert torch.equal(p, unet[name][:, :4])
        else:
            assert torch.equal(p, unet[name]), name
    apart = build_model(TrainConfig(model="tiny", appearance_from_unet=False))
    assert not torch.equal(apart.appearance.conv_in.weight, apart.unet.conv_in.weight)


def test_known_frames_can_be_left_out_of_the_loss():
    from trainer.objectives import diffusion_losses

    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, 3, 2, 2)
    v, v_hat, z, x = (torch.randn(shape, generator=gen) for _ in range(4))
    masks = torch.ones(2, 2, 3, 2, 2)
    t = torch.tensor([10, 500])
    acp = torch.linspace(0.99, 0.01, 1000)
    covered = torch.tensor([[False, True, False], [True, True, False]])
    full = diffusion_losses(v_hat, v, z, x, t, masks, acp)
    part = diffusion_losses(v_hat, v, z, x, t, masks, acp, frame_weight=covered)
    err = (v_hat - v).square()
    expected = (err[0, :, 1].sum() + err[1, :, 0].sum() + err[1, :, 1].sum()) / (3 * 4 * 2 * 2)
    assert part["ldm"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert full["ldm"].item() == pytest.approx(err.mean().item(), rel=1e-6)
    assert part["ffg"].item() != pytest.approx(full["ffg"].item())


def test_cover_inputs_zero_the_covered_frames():
    from trainer.objectives import cover_inputs

    lat = torch.randn(2, 4, 3, 2, 2)
    covered = torch.tensor([[True, False, True], [False, False, False]])
    known, mask = cover_inputs(lat, covered)
    assert mask.shape == (2, 1, 3, 2, 2)
    assert torch.equal(known[0, :, 0], torch.zeros(4, 2, 2)) and torch.equal(known[0, :, 1], lat[0, :, 1])
    assert torch.equal(known[1], lat[1]) and mask[0, 0, :, 0, 0].tolist() == [1, 0, 1]


def test_ffg_with_full_masks_is_four_times_the_mse_and_ignores_errors_outside_the_masks():
    from trainer.objectives import ffg_loss

    g = torch.Generator().manual_seed(0)
    z, z_hat = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    ones = torch.ones(2, 1, 3, 8, 8)
    mse = (z - z_hat).square().mean()
    torch.testing.assert_close(ffg_loss(z, z_hat, ones, ones), 4 * mse)
    torch.testing.assert_close(ffg_loss(z, z_hat, ones, torch.zeros_like(ones)), mse)
    e = torch.zeros_like(ones)
    e[..., 2:4, 2:4] = 1
    f = torch.zeros_like(ones)
    f[..., 1:6, 1:6] = 1
    base = ffg_loss(z, z_hat, e, f)
    outside = (e + f) == 0
    z2 = z + 5 * torch.randn(z.shape, generator=g) * outside
    assert torch.equal(ffg_loss(z2, z_hat, e, f), base)
    inside = z + (e > 0).float()
    assert ffg_loss(inside, z_hat, e, f) != base
    # where both masks hold the error counts 4x: only the overlap region differs from M_f alone
    weights = (e + f).square()
    torch.testing.assert_close(base, (weights * (z - z_hat).square()).mean())


def test_noise_schedule_is_the_inference_schedule_and_latent_ffg_is_scaled_v_error():
    from emoji_model.sampling import make_scheduler
    from trainer.objectives import diffusion_losses, make_noise_scheduler, predicted_latents

    sched = make_noise_scheduler(tiny_config().scheduler)
    infer = make_scheduler("ddim", "v_prediction")
    torch.testing.assert_close(sched.alphas_cumprod, infer.alphas_cumprod)
    assert sched.alphas_cumprod[-1] == 0 and sched.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 2, 4, 4, generator=g)
    eps = torch.randn(z.shape, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = sched.add_noise(z, eps, t)
    v = sched.get_velocity(z, eps, t)
    torch.testing.assert_close(predicted_latents(sched.alphas_cumprod, x_t, v, t), z, atol=1e-5, rtol=1e-5)
    v_hat = v + 0.3 * torch.randn(v.shape, generator=g)
    masks = torch.ones(3, 2, 2, 4, 4)
    out = diffusion_losses(v_hat, v, z, x_t, t, masks, sched.alphas_cumprod)
    one_minus = (1 - sched.alphas_cumprod[t]).reshape(3, 1, 1, 1, 1)
    torch.testing.assert_close(out["ffg"], 4 * (one_minus * (v_hat - v).square()).mean())
    torch.testing.assert_close(out["ldm"], (v_hat - v).square().mean())
    in_v = diffusion_losses(v_hat, v, z, x_t, t, masks, sched.alphas_cumprod, ffg_space="v", ffg_weight=0.5)
    torch.testing.assert_close(in_v["ffg"], 4 * in_v["ldm"])
    torch.testing.assert_close(in_v["loss"], 3 * in_v["ldm"])


def test_galore_keeps_low_rank_moments_and_still_optimises():
    from trainer.config import TrainConfig
    from trainer.optim import build_optimizer, estimated_state_bytes, optimizer_state_bytes

    torch.manual_seed(0)
    target = torch.randn(64, 48) @ torch.randn(48, 96) / 8
    x = torch.randn(256, 96)

    def fit(kind: str, steps: int = 60):
        torch.manual_seed(1)
        layer = torch.nn.Linear(96, 64)
        cfg = TrainConfig(optimizer=kind, lr=0.1, galore_rank=8, galore_update_every=5, galore_scale=1.0,
                          weight_decay=0.0)
        opt = build_optimizer(list(layer.named_parameters()), cfg)
        losses = []
        for _ in range(steps):
            before = layer.weight.detach().clone()
            loss = (layer(x) - x @ target.T).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return opt, losses, layer, layer.weight.detach() - before

    adam = fit("adamw")[0]
    galore, losses, layer, _ = fit("galore")
    assert losses[-1] < 0.5 * losses[0]
    state = galore.state[layer.weight]
    assert state["exp_avg"].shape == (8, 96) and state["projector"].shape == (64, 8)  # 64 < 96: left side
    shapes = [p.shape for p in layer.parameters()]
    assert optimizer_state_bytes(galore) == estimated_state_bytes(shapes, "galore", 8)  # step counts are ints
    assert optimizer_state_bytes(galore) < 0.3 * optimizer_state_bytes(adam)
    # the first update lies in the span of the gradient's top-8 left singular vectors
    first, _, layer, delta = fit("galore", steps=1)
    proj = first.state[layer.weight]["projector"]
    torch.testing.assert_close(proj.T @ proj, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(delta - proj @ (proj.T @ delta), torch.zeros_like(delta), atol=1e-6, rtol=0)


def test_learning_rate_schedule():
    from trainer.config import TrainConfig
    from trainer.optim import learning_rate

    cfg = TrainConfig(lr=1e-4, warmup_steps=10, lr_schedule="cosine", min_lr=1e-5, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(9, cfg) == pytest.approx(1e-4)
    assert learning_rate(60, cfg) == pytest.approx(5.5e-5)
    assert learning_rate(110, cfg) == pytest.approx(1e-5)
    assert learning_rate(50, cfg.replace(lr_schedule="constant")) == 1e-4


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    from emoji_model.errors import InvalidRequestError
    from trainer.config import TrainConfig, load_config

    (tmp_path / "c.yaml").write_text("lr: 1e-5\nmax_steps: '12'\n")
    cfg = load_config(tmp_path / "c.yaml", {"seed": 3})
    assert (cfg.lr, cfg.max_steps, cfg.seed) == (1e-5, 12, 3)
    with pytest.raises(InvalidRequestError, match="unknown training config keys"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(InvalidRequestError, match="stage must be"):
        TrainConfig(stage=3, dataset="d", vae="v", image_encoder="c").validate()


def test_example_configs_parse():
    from trainer.config import load_config

    for name in ("tiny_cpu.yaml", "sd15_stage1.yaml", "sd15_stage2.yaml"):
        cfg = load_config(REPO / "trainer" / "configs" / name)
        assert cfg.stage in (1, 2)
