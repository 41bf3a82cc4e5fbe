"""Loops (the editor's curves, wrapped sampler windows) and the samplers animating several faces."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import emoji_model.runtime as rt
from emoji_model import InvalidRequestError
from emoji_model.editor import animate_face, control_curves, parse_keyframes
from emoji_model.sampling import context_windows, count_windows, fused
from landmark_inputs import astronaut_track, driving_track

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64


def test_looping_windows_wrap_around_the_end_and_cover_every_frame():
    for frames, window, overlap in ((40, 16, 4), (17, 16, 4), (33, 8, 2)):
        for step in range(5):
            windows = context_windows(frames, window, overlap, step, loop=True)
            assert all(len(w) == window for w in windows)
            assert set().union(*map(set, windows)) == set(range(frames))
            assert all(np.all(np.diff(w) % frames == 1) for w in windows)          # consecutive on the circle
        seams = [w for s in range(5) for w in context_windows(frames, window, overlap, s, loop=True)
                 if w[-1] < w[0]]
        assert seams                                       # the last frames are denoised with the first ones
        assert not [w for s in range(5) for w in context_windows(frames, window, overlap, s) if w[-1] < w[0]]
    # A track that fits in one window is one window, turned a little further at every step.
    starts = [context_windows(12, 16, 4, s, loop=True)[0][0] for s in range(4)]
    assert len(set(starts)) > 1 and all(sorted(context_windows(12, 16, 4, s, loop=True)[0]) == list(range(12))
                                        for s in range(4))
    assert count_windows(40, 16, 4, 3, loop=True) == 3 * 4
    # Fusion over wrapped windows: a denoiser returning its input gives the input back.
    x = torch.randn(1, 4, 40, 2, 2)
    out = fused(lambda xs, t, f: xs, context_windows(40, 16, 4, 1, loop=True))(x, 0, list(range(40)))
    torch.testing.assert_close(out, x)
    seen = []
    fused(lambda xs, t, f: seen.append(list(f)) or xs, context_windows(12, 16, 4, 1, loop=True))(
        x[:, :, :12], 0, list(range(100, 112)))
    assert seen[0][0] != 100 and sorted(seen[0]) == list(range(100, 112))   # frame indices follow the turn


def test_editor_loop_closes_the_curves_on_the_first_frame():
    keys = parse_keyframes("0: smile=0 yaw=0; 20: smile=1 yaw=20; 40: smile=0.5")
    plain = control_curves(keys, 60)
    looped = control_curves(keys, 60, loop=True)
    assert plain["smile"][-1] == 0.5 and plain["yaw"][-1] == 20                 # held: a jump back to frame 0
    np.testing.assert_allclose(looped["smile"][:41], plain["smile"][:41])      # the keys themselves are kept
    # After the last key each control heads back to its first key's value, reached at frame 60 = frame 0.
    assert looped["smile"][59] == pytest.approx(0.5 * (1 / 20), abs=1e-9)
    assert looped["yaw"][59] == pytest.approx(20 * 1 / 40, abs=1e-9)
    steps = np.abs(np.diff(np.r_[looped["yaw"], looped["yaw"][0]]))
    assert steps.max() <= 1.0 + 1e-9                                            # no step larger than the keys' own
    # A still becomes a looping clip; a video's track is closed on its first frame as well.
    still = animate_face(astronaut_track(), "0: blink=0; 10: blink=1", frames=30, loop=True)
    seam = np.abs(still.pixels()[0] - still.pixels()[-1]).max()
    assert seam < 0.5 * np.abs(still.pixels()[10] - still.pixels()[0]).max()
    # The node's loop switch does the same.
    from nodes.edit_nodes import ExpressionEditor

    sliders = {n: 0.0 for n in ("blink", "smile", "mouth_open", "brow_raise", "pupil_x", "pupil_y", "yaw", "pitch",
                                "roll")}
    node_seam = {}
    for loop in (False, True):
        edited, _ = ExpressionEditor().edit(astronaut_track(), 30, 25.0, "0: blink=0; 10: blink=1", "linear",
                                            loop=loop, **sliders)
        node_seam[loop] = np.abs(edited.pixels()[0] - edited.pixels()[-1]).max()
    assert node_seam[True] < 0.5 * node_seam[False]
    video = animate_face(driving_track()[:40], "0: smile=0", loop=True)
    step = np.linalg.norm(np.diff(video.pixels(), axis=0), axis=-1).mean(axis=1)
    assert np.linalg.norm(video.pixels()[0] - video.pixels()[-1], axis=-1).mean() < 2 * np.median(step)


@pytest.fixture(scope="module")
def tiny(astronaut):
    from emoji_model.align import align_motion
    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from nodes.model_nodes import FYEModel
    from tiny_fye import random_model, tiny_clip, tiny_vae

    model, vae, clip = random_model(seed=4), tiny_vae(), tiny_clip()
    ref = encode_reference(model, astronaut, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                           size=(SIZE, SIZE), device="cpu")
    aligned = align_motion(astronaut_track(), driving_track())[:10]
    fye = FYEModel(handle=model, config=model.config, dtype=torch.float32, source="test")
    return fye, ref, aligned


def test_samplers_animate_every_face_and_can_loop(tiny, monkeypatch):
    from emoji_model.align import align_motion
    from emoji_model.landmarks import FaceGroup
    from emoji_model.reference import ReferenceGroup
    from nodes.sampler_nodes import ProgressiveLongVideo, TemporalSampler

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    fye, ref, aligned = tiny
    other = align_motion(astronaut_track(), driving_track()[40:50])
    (one, _), (two, _) = (TemporalSampler().sample(fye, ref, t, 2, 3.5, 3, "ddim", 8, 2, "pyramid")
                          for t in (aligned, other))
    (both, images) = TemporalSampler().sample(fye, ReferenceGroup([ref, ref]), FaceGroup([aligned, other]), 2, 3.5,
                                              3, "ddim", 8, 2, "pyramid")
    assert both["samples"].shape == (20, 4, 8, 8) and images is None  # no VAE: no frames made (blocked output)
    torch.testing.assert_close(both["samples"][:10], one["samples"])           # face after face
    torch.testing.assert_close(both["samples"][10:], two["samples"])
    with pytest.raises(InvalidRequestError, match="'each' on Encode Reference"):
        TemporalSampler().sample(fye, ref, FaceGroup([aligned, other]), 2, 3.5, 3, "ddim", 8, 2, "pyramid")
    progressive, _ = ProgressiveLongVideo().sample(fye, ReferenceGroup([ref, ref]), FaceGroup([aligned, other]), 2,
                                                   3.5, 3, "ddim", 8, 2, "pyramid", 4, "auto")
    assert progressive["samples"].shape == (20, 4, 8, 8)
    # loop: the windows wrap, so the result differs from the plain run and stays finite.
    looped, _ = TemporalSampler().sample(fye, ref, aligned, 2, 3.5, 3, "ddim", 8, 2, "pyramid", loop=True)
    assert looped["samples"].isfinite().all() and not torch.equal(looped["samples"], one["samples"])
    looped_long, _ = ProgressiveLongVideo().sample(fye, ref, aligned, 2, 3.5, 3, "ddim", 8, 2, "pyramid", 4, "auto",
                                                   loop=True)
    assert looped_long["samples"].shape == (10, 4, 8, 8)


def test_animate_loop_option_wraps_the_sampler_windows():
    import argparse

    from emoji_model.commands import animate

    parser = argparse.ArgumentParser()
    animate.configure(parser)
    base = ["--reference", "r.png", "--driving", "d.mp4", "--out", "o.mp4"]
    assert animate.settings_from_args(parser.parse_args(base + ["--loop"])).loop
    assert animate.settings_from_args(parser.parse_args(base + ["--loop", "8"])).loop
    assert not animate.settings_from_args(parser.parse_args(base)).loop
    windows = context_windows(48, 16, 4, 2, loop=animate.settings_from_args(parser.parse_args(base + ["--loop"])).loop)
    assert any(w[-1] < w[0] for w in windows)                  # a window runs past the end into the start


def test_the_sampler_node_uses_the_models_noise_share(tiny, monkeypatch):
    from dataclasses import replace

    from emoji_model.constants import LATENT_SCALE
    from emoji_model.pipeline import LazyControls, generate_latents
    from emoji_model.sampling import SamplerSettings
    from nodes.model_nodes import LoadModel
    from nodes.sampler_nodes import TemporalSampler

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    assert LoadModel().load("bundled/demo_tiny.safetensors", "fp32")[0].noise_share == 1.0  # its training setting
    fye, ref, aligned = tiny
    assert fye.noise_share == 0.0
    (shared, _) = TemporalSampler().sample(replace(fye, noise_share=1.0), ref, aligned, 2, 3.5, 3, "ddim", 8, 2,
                                           "pyramid")
    direct = generate_latents(fye.handle, ref, LazyControls(aligned, ref.size), SamplerSettings(steps=2, cfg=3.5, seed=3, window=8, overlap=2,
                                                                        noise_share=1.0), device="cpu")
    torch.testing.assert_close(shared["samples"], direct / LATENT_SCALE)  # LATENT: unscaled, for VAE Decode
    (plain, _) = TemporalSampler().sample(fye, ref, aligned, 2, 3.5, 3, "ddim", 8, 2, "pyramid")
    assert (plain["samples"] - shared["samples"]).abs().mean() > 1e-3
