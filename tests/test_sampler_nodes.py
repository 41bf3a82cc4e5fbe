"""FYE_TemporalSampler, FYE_ProgressiveLongVideo and `python -m emoji_model animate`, standalone, tiny files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import emoji_model.runtime as rt
from emoji_model.checkpoints import save_model
from emoji_model.pipeline import LATENT_SCALE, generate_latents, reference_controls
from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
from emoji_model.sampling import SCHEDULERS, SamplerSettings
from tiny_fye import random_model, tiny_clip, tiny_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64


@pytest.fixture(scope="module")
def parts(astronaut):
    from emoji_model.align import align_motion
    from landmark_inputs import astronaut_track, driving_track

    model, vae, clip = random_model(seed=4), tiny_vae(), tiny_clip()
    ref = encode_reference(model, astronaut, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                           size=(SIZE, SIZE), device="cpu")
    aligned = align_motion(astronaut_track(), driving_track())[:10]
    return model, vae, clip, ref, aligned


class HostVAE:
    """Like ComfyUI's VAE: decode(raw latents) → IMAGE [B,H,W,3] in 0..1."""

    def __init__(self, vae):
        self.vae = vae
        self.calls = []

    def decode(self, samples):
        self.calls.append(samples.shape[0])
        with torch.no_grad():
            return ((self.vae.decode(samples).sample.movedim(1, -1) + 1) / 2).clamp(0, 1)


@pytest.fixture()
def fye(parts):
    from nodes.model_nodes import FYEModel

    model = parts[0]
    return FYEModel(handle=model, config=model.config, dtype=torch.float32, source="test")


def test_scheduler_lists_agree():
    from emoji_model.constants import SCHEDULER_LABELS
    from nodes.sampler_nodes import SCHEDULER_KEYS, SCHEDULER_NAMES

    assert sorted(SCHEDULER_NAMES) == sorted(SCHEDULER_LABELS.values())
    assert {SCHEDULER_KEYS[n] for n in SCHEDULER_NAMES} == set(SCHEDULERS)


def test_temporal_sampler_node_returns_host_latents_and_frames(parts, fye, monkeypatch):
    from nodes.sampler_nodes import TemporalSampler

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    model, vae, _, ref, aligned = parts
    host_vae = HostVAE(vae)
    latent, images = TemporalSampler().sample(fye, ref, aligned, 2, 3.5, 11, "ddim", 8, 2, "pyramid", vae=host_vae)
    expected = generate_latents(model, ref, reference_controls(aligned, (SIZE, SIZE)),
                                SamplerSettings(steps=2, seed=11, window=8, overlap=2), device="cpu")
    torch.testing.assert_close(latent["samples"], expected / LATENT_SCALE)
    assert images.shape == (10, SIZE, SIZE, 3) and 0 <= images.min() and images.max() <= 1
    assert host_vae.calls == [8, 2]  # decoded in chunks
    direct = host_vae.decode(latent["samples"][:1])
    assert (images[0] - direct[0]).abs().max() <= 1 / 255 + 1e-6
    # without a VAE nothing is made for the images output (standalone: None; in ComfyUI: a blocker)
    latent2, nothing = TemporalSampler().sample(fye, ref, aligned, 1, 3.5, 11, "DDIM (diffusers)", 8, 2, "pyramid")
    assert nothing is None and latent2["samples"].shape == (10, 4, SIZE // 8, SIZE // 8)


def test_progressive_node_keeps_keyframes_of_its_stage_one(parts, fye, monkeypatch):
    from nodes.sampler_nodes import ProgressiveLongVideo

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    _, _, _, ref, aligned = parts
    a, _ = ProgressiveLongVideo().sample(fye, ref, aligned, 2, 3.5, 5, "ddim", 8, 2, "pyramid", 4, "auto")
    b, _ = ProgressiveLongVideo().sample(fye, ref, aligned, 2, 3.5, 5, "ddim", 8, 2, "pyramid", 4, "replace")
    assert a["samples"].shape == (10, 4, 8, 8)
    assert torch.equal(a["samples"], b["samples"])  # no covered-latent channels: auto = replace
    from emoji_model import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="covered-latent"):
        ProgressiveLongVideo().sample(fye, ref, aligned, 2, 3.5, 5, "ddim", 8, 2, "pyramid", 4, "covered")


def test_reference_controls_follow_the_reference_framing():
    """A 2:1 portrait is covered and centre-cropped to a square, and its landmarks move with it."""
    from dataclasses import replace

    from emoji_model.landmarks import render_controls
    from landmark_inputs import astronaut_track

    track = astronaut_track()  # 512x512
    square = reference_controls(track, (128, 128))
    assert np.array_equal(square, render_controls(track, (128, 128)))
    # The same face in the right half of a 1024x512 frame: covering 128x128 scales it to 256x128 and
    # the centre crop starts at x = 64, so the face lands 64 px right of where the square render has it.
    points = track.points.copy()
    points[..., 0] = 0.5 + 0.5 * points[..., 0]
    framed = reference_controls(replace(track, points=points, size=(1024, 512)), (128, 128))
    ys, xs = np.nonzero(framed[0].max(axis=-1))
    ys0, xs0 = np.nonzero(square[0].max(axis=-1))
    assert abs(xs.mean() - (xs0.mean() + 64)) < 1.0
    assert abs(ys.mean() - ys0.mean()) < 1.0


@pytest.fixture()
def model_dir(tmp_path, parts, monkeypatch):
    from landmark_inputs import driving_track

    model, vae, clip, _, _ = parts
    save_model(model, tmp_path / "follow_your_emoji" / "tiny.safetensors")
    vae.save_pretrained(tmp_path / "vae" / "tiny_vae")
    clip.save_pretrained(tmp_path / "clip_vision" / "tiny_clip")
    driving_track()[:6].save(tmp_path / "driving.npz")
    return tmp_path


def _animate_args(d, out):
    from skimage import data
    from PIL import Image

    Image.fromarray(data.astronaut()).save(d / "astronaut.png")
    return ["animate", "--reference", str(d / "astronaut.png"), "--driving", str(d / "driving.npz"),
            "--weights", "tiny.safetensors", "--vae", "tiny_vae", "--image-encoder", "tiny_clip",
            "--size", str(SIZE), "--steps", "2", "--window", "8", "--out", str(out)]


def test_animate_cli_writes_the_video(model_dir, monkeypatch):
    from emoji_model.__main__ import main
    from emoji_model.video import read_video

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu", models_dir=model_dir))
    out = model_dir / "out" / "animated.mp4"
    assert main(_animate_args(model_dir, out)) == 0
    frames, fps = read_video(out)
    from landmark_inputs import driving_frames

    assert frames.shape == (6, SIZE, SIZE, 3) and fps == pytest.approx(driving_frames()[1], abs=0.01)
    assert frames.std() > 1  # decoded content, not a blank video


class Cancelled(Exception):
    pass


class CancellingRuntime(rt.StandaloneRuntime):
    def __init__(self, models_dir):
        super().__init__(device="cpu", models_dir=models_dir)
        self.calls = 0

    def check_interrupt(self):
        self.calls += 1
        if self.calls > 3:
            raise Cancelled()


def test_interrupted_animate_leaves_no_output(model_dir, monkeypatch):
    from emoji_model.__main__ import main

    monkeypatch.setattr(rt, "_default", CancellingRuntime(model_dir))
    out = model_dir / "out" / "cancelled.mp4"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(Cancelled):
        main(_animate_args(model_dir, out))
    assert sorted(p.name for p in out.parent.iterdir()) == []  # neither the video nor a temporary file


def test_animate_cli_names_a_missing_weight_file(model_dir, monkeypatch, capsys, caplog):
    from emoji_model.__main__ import main

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu", models_dir=model_dir))
    args = _animate_args(model_dir, model_dir / "x.mp4")
    args[args.index("--weights") + 1] = "missing.safetensors"
    assert main(args) == 2
    assert "missing.safetensors" in caplog.text and str(model_dir / "follow_your_emoji") in caplog.text
