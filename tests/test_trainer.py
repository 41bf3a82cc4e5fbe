"""The trainer: dataset preparation, the objective, optimizers, training, resuming, export, multi-process.

Data is the real driving video prepared at 64 px (plus a corrupt file and a faceless video); the
networks are the tiny configuration with a tiny VAE and CLIP saved locally, all on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from tiny_fye import random_model, tiny_clip, tiny_config, tiny_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64
CLIPS = 6  # 97 frames of the driving video in clips of 16


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread (and are not slowed by other processes on the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, driving_video, face_task):
    """Videos folder (real video, corrupt file, faceless video), prepared dataset, tiny VAE and CLIP folders."""
    from emoji_model.video import write_video
    from trainer.data import PrepareOptions, prepare_dataset

    root = tmp_path_factory.mktemp("trainer")
    videos = root / "videos"
    (videos / "talk").mkdir(parents=True)
    shutil.copy(driving_video, videos / "talk" / "driving.mp4")
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_video(videos / "flat.mp4", np.full((20, 64, 64, 3), 128, np.uint8), 25)
    opts = PrepareOptions(size=SIZE, face_model=str(face_task))
    summary = prepare_dataset(videos, root / "data", opts)
    tiny_vae().save_pretrained(root / "vae")
    tiny_clip().save_pretrained(root / "clip")
    return {"root": root, "videos": videos, "data": root / "data", "summary": summary, "options": opts}


def _config(ws, run: str, **overrides):
    from trainer.config import TrainConfig

    base = dict(run_dir=str(ws["root"] / run), model="tiny", model_overrides={"cover_channels": 5},
                image_encoder=str(ws["root"] / "clip"), vae=str(ws["root"] / "vae"), dataset=str(ws["data"]),
                batch_size=2, max_steps=4, lr=1e-3, checkpoint_every=100, seed=0)
    base.update(overrides)
    return TrainConfig.from_dict(base)


def _metrics(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec  # a resumed run rewrites the steps after its checkpoint
    return out


# -------------------------------------------------------------------------------------------------
# prepare
# -------------------------------------------------------------------------------------------------
def test_prepare_writes_the_clips_and_reports_what_it_skipped(workspace):
    from trainer.data import load_index, read_shard

    s = workspace["summary"]
    assert (s["videos"], s["done"], s["skipped"]) == (3, 1, 2)
    assert s["clips"] == CLIPS and s["frames"] == CLIPS * 16
    assert s["skipped_reasons"]["corrupt.mp4"].startswith("unreadable")
    assert s["skipped_reasons"]["flat.mp4"] == "no face found in any frame"
    index = load_index(workspace["data"])
    assert index["summary"] == s
    assert [c["start"] for c in index["clips"]] == [16 * k for k in range(CLIPS)]
    assert index["videos"]["talk/driving.mp4"]["frames"] == 97
    clip = read_shard(workspace["data"] / index["clips"][0]["shard"])
    assert clip["frames"].shape == clip["controls"].shape == (16, SIZE, SIZE, 3)
    assert clip["frames"].dtype == np.uint8 and clip["expression"].shape == (16, SIZE, SIZE)
    assert clip["controls"].reshape(-1, 3).any(axis=1).mean() > 0.005  # landmarks are drawn
    assert not list(workspace["data"].rglob("*.tmp"))


def test_masks_and_controls_lie_on_the_face(workspace):
    from trainer.data import load_index, read_shard

    index = load_index(workspace["data"])
    for entry in index["clips"]:
        clip = read_shard(workspace["data"] / entry["shard"])
        expression, facial, controls = clip["expression"], clip["facial"], clip["controls"].any(-1)
        corner = SIZE // 8
        for m in (expression, facial, controls):
            for ys, xs in ((slice(0, corner), slice(0, corner)), (slice(0, corner), slice(-corner, None)),
                           (slice(-corner, None), slice(0, corner)), (slice(-corner, None), slice(-corner, None))):
                assert not m[:, ys, xs].any(), f"{entry['id']}: a mask reaches a corner of the crop"
        area = facial.mean(axis=(1, 2))
        assert ((area > 0.15) & (area < 0.6)).all(), area  # the face fills a good part of the crop, not all
        assert (expression & facial).sum() / expression.sum() > 0.85  # expression regions lie on the face
        ys, xs = np.nonzero(facial[0])
        assert abs(xs.mean() / SIZE - 0.5) < 0.12 and abs(ys.mean() / SIZE - 0.5) < 0.15  # centred crop
        pts = clip["points"][..., :2]
        assert pts.min() > 0 and pts.max() < 1


def test_a_second_run_skips_finished_videos(workspace):
    from trainer.data import load_index, prepare_dataset

    before = load_index(workspace["data"])
    again = prepare_dataset(workspace["videos"], workspace["data"], workspace["options"])
    assert again["last_run"]["processed"] == 0 and again["last_run"]["already_done"] == 3
    assert load_index(workspace["data"])["clips"] == before["clips"]
    # A changed file is processed again (and, still faceless, skipped again).
    flat = workspace["videos"] / "flat.mp4"
    os.utime(flat, ns=(flat.stat().st_atime_ns, flat.stat().st_mtime_ns + 10**9))
    third = prepare_dataset(workspace["videos"], workspace["data"], workspace["options"])
    assert third["last_run"]["processed"] == 1 and third["skipped"] == 2 and third["clips"] == CLIPS


def test_prepare_refuses_a_different_layout_in_the_same_folder(workspace):
    from emoji_model.errors import InvalidRequestError
    from trainer.data import PrepareOptions, prepare_dataset

    with pytest.raises(InvalidRequestError, match="prepared with"):
        prepare_dataset(workspace["videos"], workspace["data"], PrepareOptions(size=32))


def test_dataset_items_are_deterministic_and_shaped(workspace):
    from trainer.data import ClipDataset

    ds = ClipDataset(workspace["data"], frames=4, seed=3)
    assert len(ds) == CLIPS * 4
    a, b = ds[5], ds[5]
    assert torch.equal(a["reference"], b["reference"])
    assert a["pixels"].shape == (3, 4, SIZE, SIZE) and a["control"].shape == (3, 4, SIZE, SIZE)
    assert a["masks"].shape == (2, 4, SIZE // 8, SIZE // 8)
    assert -1 <= a["pixels"].min() and a["pixels"].max() <= 1 and a["masks"].max() == 1


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


def test_loader_workers_give_the_same_batches(workspace):
    from trainer.data import ClipDataset, EpochBatches, batch_stream

    ds = ClipDataset(workspace["data"], frames=2, seed=0, max_clips=2)
    order = EpochBatches(len(ds), 3, seed=0)
    a = [b for _, (_, _, b) in zip(range(3), batch_stream(ds, order, 0, 2, num_workers=0))]
    b = [b for _, (_, _, b) in zip(range(3), batch_stream(ds, order, 0, 2, num_workers=1))]
    for x, y in zip(a, b):
        assert torch.equal(x["item"], y["item"]) and torch.equal(x["reference"], y["reference"])
    assert a[0]["item"].tolist() == order.batches(0)[2]


def test_epoch_batches_split_between_processes_and_resume_mid_epoch():
    from trainer.data import EpochBatches

    ranks = [EpochBatches(23, 4, seed=1, rank=r, world=2) for r in range(2)]
    assert ranks[0].per_epoch == 4  # 5 full batches, rounded down to a multiple of 2 processes
    b0, b1 = ranks[0].batches(2), ranks[1].batches(2)
    items = [i for b in b0 + b1 for i in b]
    assert len(items) == len(set(items)) == 16 and all(46 <= i < 69 for i in items)
    assert ranks[0].batches(2, position=2) == b0[1:] and ranks[1].batches(2, position=2) == b1[1:]
    assert ranks[0].batches(3) != b0


# -------------------------------------------------------------------------------------------------
# the objective
# -------------------------------------------------------------------------------------------------
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


def test_stage_one_never_sees_its_target_and_never_trains_the_covered_inputs(workspace, one_thread):
    """No stage-1 batch carries an uncovered target latent; after training, zeroing the covered input changes nothing."""
    from emoji_model.checkpoints import load_clip_vision, load_model, load_vae
    from trainer.data import ClipDataset, EpochBatches, batch_stream
    from trainer.objectives import make_noise_scheduler
    from trainer.step import FrozenEncoders, TrainingForward, training_losses
    from trainer.train import train

    cfg = _config(workspace, "no_shortcut", max_steps=3, batch_size=4, weight_decay=0.1)
    seen = []

    class Recording(TrainingForward):
        zero = False

        def forward(self, noisy, t, clip_tokens, ref_latent, control, covered=None, cover_mask=None, bank_mask=None):
            seen.append((covered.clone(), cover_mask.clone()))
            if self.zero:
                covered, cover_mask = torch.zeros_like(covered), torch.zeros_like(cover_mask)
            return super().forward(noisy, t, clip_tokens, ref_latent, control, covered, cover_mask, bank_mask)

    result = train(cfg)
    trained = load_model(result.checkpoint / "model.safetensors")
    w = trained.unet.conv_in.weight
    assert not w[:, 4:].any() and w[:, :4].abs().sum() > 0  # the covered slice stayed at its zero start
    encoders = FrozenEncoders(load_vae(cfg.vae), load_clip_vision(cfg.image_encoder))
    ds = ClipDataset(cfg.dataset, frames=1, seed=0)
    sched = make_noise_scheduler(trained.config.scheduler)
    for _, (_, _, batch) in zip(range(8), batch_stream(ds, EpochBatches(len(ds), 4, seed=0), 0, 0)):
        losses = []
        for zero in (False, True):
            forward = Recording(trained, temporal=False)
            forward.zero = zero
            with torch.no_grad():
                out = training_losses(forward, encoders, batch, sched, torch.Generator().manual_seed(3), cfg,
                                      covering=True)
            losses.append(out["loss"].item())
        covered, mask = seen[-2]
        assert not covered.any() and bool((mask == 1).all())  # every target latent covered: nothing to copy
        assert losses[0] == losses[1]


def test_stage_two_trains_only_the_covered_slice_of_conv_in(workspace, one_thread):
    """Weight decay and GaLore would move conv_in's latent channels and bias: they stay bit-exact."""
    from emoji_model.checkpoints import load_model, read_state_dict
    from trainer.train import train

    first = train(_config(workspace, "slice_s1", max_steps=2))
    init = workspace["root"] / "slice_s1.safetensors"
    from trainer.export import export_checkpoint

    export_checkpoint(Path(first.checkpoint).parent.parent, init)
    before = read_state_dict(init)
    cfg = _config(workspace, "slice_s2", stage=2, frames=4, max_steps=3, weight_decay=0.5, optimizer="galore",
                  galore_rank=2, galore_update_every=1, model_overrides={}, init_checkpoint=str(init))
    after = load_model(train(cfg).checkpoint / "model.safetensors").state_dict()
    w0, w1 = before["unet.conv_in.weight"], after["unet.conv_in.weight"]
    assert torch.equal(w1[:, :4], w0[:, :4]) and torch.equal(after["unet.conv_in.bias"], before["unet.conv_in.bias"])
    assert not torch.equal(w1[:, 4:], w0[:, 4:])  # the covered-latent inputs learn
    spatial = [k for k in before if k.startswith("unet.") and ".motion_modules." not in k and "conv_in" not in k]
    assert all(torch.equal(before[k], after[k]) for k in spatial)
    motion = [k for k in before if ".motion_modules." in k and k.endswith("proj_out.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in motion)


def test_evaluation_during_training_is_logged_and_changes_nothing(workspace, one_thread):
    """eval_every logs the evaluate metrics beside the losses; the run trains exactly as without it."""
    from trainer.train import train

    common = dict(max_steps=4, batch_size=2, ema_decay=0.9)
    plain = train(_config(workspace, "eval_off", **common))
    scored = train(_config(workspace, "eval_on", eval_every=2, eval_dataset=str(workspace["data"]), eval_frames=3,
                           eval_steps=1, **common))
    assert scored.losses == plain.losses
    metrics = _metrics(Path(_config(workspace, "eval_on").run_dir))
    for step in (2, 4):
        assert 0 < metrics[step]["eval_l1"] < 1 and 0 < metrics[step]["eval_ssim"] < 1
        assert metrics[step]["eval_psnr"] > 0 and "eval_face_found" in metrics[step]
    assert "eval_l1" not in metrics[1] and "eval_l1" not in metrics[3]


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


# -------------------------------------------------------------------------------------------------
# optimizers
# -------------------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------------------
# starting weights
# -------------------------------------------------------------------------------------------------
def test_starting_weights_from_sd_and_animatediff_files_and_trainable_groups(tmp_path):
    from safetensors.torch import save_file

    from emoji_model.checkpoints import released_state_dicts
    from tiny_fye import to_ldm_unet
    from trainer.config import TrainConfig
    from trainer.step import build_model, set_trainable

    cfg = tiny_config()
    donor = random_model(cfg, seed=5)
    spatial = {k[5:]: v for k, v in donor.state_dict().items() if k.startswith("unet.") and ".motion_modules." not in k}
    save_file(to_ldm_unet(spatial, cfg.layers_per_block, cfg.attention_levels), str(tmp_path / "sd.safetensors"))
    motion = {k: v for k, v in released_state_dicts(donor)["unet"].items() if ".motion_modules." in k}
    torch.save(motion, tmp_path / "mm.ckpt")
    tc = TrainConfig(model="tiny", model_overrides={"cover_channels": 5}, init_sd_unet=str(tmp_path / "sd.safetensors"),
                     init_motion_module=str(tmp_path / "mm.ckpt"))
    model = build_model(tc)
    state, ref = model.state_dict(), donor.state_dict()
    assert torch.equal(state["unet.conv_out.weight"], ref["unet.conv_out.weight"])
    assert torch.equal(state["appearance.down_blocks.0.resnets.0.conv1.weight"],
                       ref["unet.down_blocks.0.resnets.0.conv1.weight"])
    assert torch.equal(state["unet.conv_in.weight"][:, :4], ref["unet.conv_in.weight"])
    assert not state["unet.conv_in.weight"][:, 4:].any()  # covered-latent inputs start at zero
    temporal = [k for k in state if ".motion_modules." in k and not k.endswith(".pe")]
    assert temporal and all(torch.equal(state[k], ref[k]) for k in temporal)

    stage1 = {n for n, _ in set_trainable(model, tc.trainable_groups(5))}
    assert stage1 and not any(".motion_modules." in n for n in stage1)
    assert any(n.startswith("appearance.") for n in stage1) and any(n.startswith("guider.") for n in stage1)
    assert "unet.conv_in.weight" in stage1 and "unet.conv_in.bias" in stage1
    stage2 = {n for n, _ in set_trainable(model, tc.replace(stage=2).trainable_groups(5))}
    # Stage 2: the temporal layers and conv_in's kernel (only its covered-input slice, see below); not its bias.
    assert stage2 == {n for n, _ in model.named_parameters() if ".motion_modules." in n or n == "unet.conv_in.weight"}
    assert all(p.requires_grad == (n in stage2) for n, p in model.named_parameters())

    from trainer.step import trainable_elements

    one = trainable_elements(model, tc.trainable_groups(5))["unet.conv_in.weight"]
    two = trainable_elements(model, tc.replace(stage=2).trainable_groups(5))["unet.conv_in.weight"]
    assert one[:, :4].all() and not one[:, 4:].any()  # stage 1: the latent channels only
    assert two[:, 4:].all() and not two[:, :4].any()  # stage 2: the covered-latent inputs only
    assert trainable_elements(model, ["unet_conv_in"])["unet.conv_in.weight"] is None  # all of it
    no_cover = random_model(cfg, seed=1)
    assert "unet.conv_in.weight" not in trainable_elements(no_cover, tc.replace(stage=2).trainable_groups(0))


# -------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overfit_run(workspace):
    """Stage 1 on one clip for 40 steps (EMA on): the loss must fall."""
    from trainer.train import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _config(workspace, "overfit", max_clips=1, batch_size=8, max_steps=40, lr=2e-3, cfg_drop=0.0,
                      ema_decay=0.9)
        result = train(cfg)
    finally:
        torch.set_num_threads(old)
    return cfg, result


def test_training_on_one_clip_lowers_the_loss(overfit_run):
    cfg, result = overfit_run
    losses = result.losses
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    metrics = _metrics(Path(cfg.run_dir))
    assert sorted(metrics) == list(range(1, 41)) and metrics[40]["steps_per_s"] > 0
    assert metrics[40]["loss"] == pytest.approx(losses[-1])


@pytest.mark.parametrize("optimizer", ["galore", "coap", "coap8bit", "adamw8bit"])
def test_resumed_run_repeats_the_uninterrupted_one(workspace, one_thread, optimizer):
    """Stage 2 with covering, accumulation, EMA and each memory-saving optimizer: stop at 3, resume, compare 4..6.

    COAP's projection takes a correlation update at step 2 and a refresh at step 4 (after the resume).
    """
    from emoji_model.checkpoints import read_state_dict
    from trainer.checkpointing import list_checkpoints
    from trainer.train import train

    common = dict(stage=2, frames=4, batch_size=2, grad_accum=2, max_steps=6, ema_decay=0.9, optimizer=optimizer,
                  galore_rank=4, galore_update_every=2, coap_update_interval=2, coap_reproject_factor=2,
                  lr_schedule="cosine", warmup_steps=2, cfg_drop=0.5)
    whole = train(_config(workspace, f"whole-{optimizer}", **common))
    first = train(_config(workspace, f"parts-{optimizer}", **common), stop_at=3)
    assert first.step == 3 and [c.name for c in list_checkpoints(workspace["root"] / f"parts-{optimizer}")] == \
        ["step_00000003"]
    rest = train(_config(workspace, f"parts-{optimizer}", **common))
    assert rest.step == 6
    np.testing.assert_allclose(first.losses + rest.losses, whole.losses, rtol=0, atol=1e-5)
    a = read_state_dict(whole.checkpoint / "model.safetensors")
    b = read_state_dict(rest.checkpoint / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ea, eb = read_state_dict(whole.checkpoint / "ema.safetensors"), read_state_dict(rest.checkpoint / "ema.safetensors")
    assert ea.keys() == eb.keys() and all(torch.allclose(ea[k], eb[k], atol=1e-6) for k in ea)
    state = json.loads((rest.checkpoint / "state.json").read_text())
    assert state["step"] == 6 and state["train_config"]["stage"] == 2 and state["fye_config"]["cover_channels"] == 5
    assert state["position"] == 6 * 2 and state["epoch"] == 0  # 12 global batches of 24 windows / 2


def test_sigterm_saves_a_checkpoint_and_the_run_continues_from_it(workspace, one_thread):
    from trainer.checkpointing import list_checkpoints
    from trainer.config import dump_yaml
    from trainer.train import train

    cfg = _config(workspace, "sigterm", max_steps=10000, checkpoint_every=100000)
    path = workspace["root"] / "sigterm.yaml"
    path.write_text(dump_yaml(cfg))
    run_dir = Path(cfg.run_dir)
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", "--config", str(path)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and len(_metrics(run_dir)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received" in out
    saved = list_checkpoints(run_dir)
    assert len(saved) == 1
    step = json.loads((saved[0] / "state.json").read_text())["step"]
    assert step >= 2 and step == max(_metrics(run_dir))
    result = train(cfg, stop_at=step + 2)
    assert result.step == step + 2 and len(result.losses) == 2


def test_two_processes_resume_exactly_and_continue_on_one(workspace):
    """trainer/configs/accelerate/multi_gpu.yaml with 2 processes (gloo on the CPU), COAP: a run stopped at
    step 2 and resumed repeats the uninterrupted one; its checkpoint then continues in a single process."""
    from emoji_model.checkpoints import load_model
    from trainer.config import dump_yaml

    accelerate = Path(sys.executable).parent / "accelerate"
    assert accelerate.is_file(), "accelerate's launcher is installed with the pack"

    def launch(run: str, *extra: str) -> Path:
        cfg = _config(workspace, run, max_steps=4, optimizer="coap", coap_update_interval=2, coap_reproject_factor=2)
        path = workspace["root"] / f"{run}.yaml"
        path.write_text(dump_yaml(cfg))
        cmd = [str(accelerate), "launch", "--config_file", str(REPO / "trainer/configs/accelerate/multi_gpu.yaml"),
               "--num_processes", "2", "--main_process_port", "29517", "-m", "trainer", "train", "--config",
               str(path), *extra]
        out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return Path(cfg.run_dir)

    whole = launch("ddp-whole")
    parts = launch("ddp-parts", "--stop-at", "2")
    assert max(_metrics(parts)) == 2
    launch("ddp-parts")
    a, b = _metrics(whole), _metrics(parts)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[k]["loss"] for k in a], [a[k]["loss"] for k in a], rtol=0, atol=1e-5)
    ckpt = parts / "checkpoints" / "step_00000004"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["processes"] == 2 and state["position"] == 8  # two global batches per step
    assert (ckpt / "rng_0.pt").is_file() and (ckpt / "rng_1.pt").is_file()
    assert load_model(ckpt / "model.safetensors").config.cover_channels == 5

    from trainer.train import train

    one = train(_config(workspace, "ddp-parts", max_steps=5, optimizer="coap"))
    assert one.step == 5 and len(one.losses) == 1 and math.isfinite(one.losses[0])
    state = json.loads((one.checkpoint / "state.json").read_text())
    assert state["processes"] == 1 and state["position"] == 9  # the data order went on from batch 8


def test_export_loads_with_the_pack_loader_and_samples(workspace, overfit_run):
    from emoji_model.checkpoints import load_model, read_metadata
    from emoji_model.pipeline import generate_latents
    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from emoji_model.sampling import SamplerSettings
    from trainer.__main__ import main
    from trainer.data import load_index, read_shard

    cfg, result = overfit_run
    out = workspace["root"] / "exported.safetensors"
    assert main(["export", cfg.run_dir, "--out", str(out), "--ema", "--dtype", "fp16"]) == 0
    meta = read_metadata(out)
    assert meta["fye_trained_steps"] == "40" and meta["fye_ema"] == "1"
    model = load_model(out)
    assert model.config.cover_channels == 5 and model.dtype == torch.float32
    with torch.no_grad():
        trained = load_model(result.checkpoint / "model.safetensors")
    assert not torch.equal(model.guider.conv_out.weight, trained.guider.conv_out.weight)  # EMA, not the last step

    clip = read_shard(workspace["data"] / load_index(workspace["data"])["clips"][0]["shard"])
    from emoji_model.checkpoints import load_clip_vision, load_vae

    vae = load_vae(workspace["root"] / "vae")
    encoder = load_clip_vision(workspace["root"] / "clip")
    ref = encode_reference(model, clip["frames"][0], vae_encoder_from_diffusers(vae),
                           clip_encoder_from_transformers(encoder), size=(SIZE, SIZE), device="cpu")
    latents = generate_latents(model, ref, clip["controls"][:4], SamplerSettings(steps=1, window=4, overlap=0),
                               device="cpu")
    assert latents.shape == (4, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latents).all()


def test_cli_lists_the_trainer_commands():
    out = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=_env())
    assert out.returncode == 0
    for name in ("prepare", "train", "export"):
        assert name in out.stdout
