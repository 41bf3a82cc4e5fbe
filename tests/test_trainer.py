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


def test_loader_workers_give_the_same_batches(workspace):
    from trainer.data import ClipDataset, EpochBatches, batch_stream

    ds = ClipDataset(workspace["data"], frames=2, seed=0, max_clips=2)
    order = EpochBatches(len(ds), 3, seed=0)
    a = [b for _, (_, _, b) in zip(range(3), batch_stream(ds, order, 0, 2, num_workers=0))]
    b = [b for _, (_, _, b) in zip(range(3), batch_stream(ds, order, 0, 2, num_workers=1))]
    for x, y in zip(a, b):
        assert torch.equal(x["item"], y["item"]) and torch.equal(x["reference"], y["reference"])
    assert a[0]["item"].tolist() == order.batches(0)[2]


# -------------------------------------------------------------------------------------------------
# the objective
# -------------------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------------------
# optimizers
# -------------------------------------------------------------------------------------------------
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
