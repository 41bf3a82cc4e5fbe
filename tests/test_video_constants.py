"""What is constant for a video is computed once: bank and prompt projections, and every control frame's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoji_model.networks.reference_attention import ReferenceContext
from emoji_model.pipeline import LazyControls, generate_latents, progressive_latents
from emoji_model.sampling import SamplerSettings
from tiny_fye import inputs, random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(cover_channels=5), seed=5)


def _branches(model, frames=4):
    """Sample, tokens (zeroed CLIP tokens first, as released), banks, bank mask and landmark features."""
    data = inputs(model, batch=1, frames=frames, seed=2)
    clip = torch.cat([torch.zeros_like(data["clip"]), data["clip"]])
    with torch.no_grad():
        tokens = model.encode_image_prompt(clip)
        banks = model.appearance_banks(data["ref"].repeat(2, 1, 1, 1), clip_tokens=clip)
        lmk = model.encode_landmarks(data["control"]).repeat(2, 1, 1, 1, 1)
    return data["sample"].repeat(2, 1, 1, 1, 1), tokens, banks, torch.tensor([False, True]), lmk


def test_a_prepared_reference_computes_what_the_raw_banks_do(model):
    sample, tokens, banks, mask, lmk = _branches(model)
    with torch.no_grad():
        raw = model.denoise(sample, 321, tokens, banks, lmk, bank_mask=mask)
        context = model.prepare_reference(tokens, banks, mask)
        prepared = model.denoise(sample, 321, None, context, lmk)
        all_rows = model.denoise(sample, 321, None, model.prepare_reference(tokens, banks), lmk)
    assert isinstance(context, ReferenceContext) and context.batch == 2
    layer = next(iter(context.layers.values()))
    # zeroed CLIP tokens through clip_fc are all equal: the unconditional row's cross-attention is constant
    assert layer.constant == (True, False) and layer.with_bank == (False, True)
    assert raw.abs().mean() > 0.1
    torch.testing.assert_close(prepared, raw, atol=1e-5, rtol=1e-5)
    assert (all_rows[0] - raw[0]).abs().max() > 1e-3  # the mask matters: the rows differ as they should
    torch.testing.assert_close(all_rows[1], raw[1], atol=1e-5, rtol=1e-5)


def test_the_constant_cross_attention_is_the_attention_it_replaces(model):
    """Forcing every row through the attention over its T tokens gives the same output as the shortcut."""
    import dataclasses

    sample, tokens, banks, mask, lmk = _branches(model)
    with torch.no_grad():
        context = model.prepare_reference(tokens, banks, mask)
        attended = ReferenceContext({name: dataclasses.replace(layer, constant=(False, False))
                                     for name, layer in context.layers.items()}, context.batch)
        a = model.denoise(sample, 321, None, context, lmk)
        b = model.denoise(sample, 321, None, attended, lmk)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class _CountingControls:
    """Control renders that count how often each frame is drawn (LazyControls' interface)."""

    def __init__(self, frames: np.ndarray):
        self.frames, self.drawn = frames, np.zeros(len(frames), int)
        self.shape = frames.shape

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        idx = np.arange(len(self.frames))[index]
        np.add.at(self.drawn, idx, 1)
        return self.frames[index]


def _reference(model):
    from skimage import data

    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from tiny_fye import tiny_clip, tiny_vae

    return encode_reference(model, data.astronaut(), vae_encoder_from_diffusers(tiny_vae()),
                            clip_encoder_from_transformers(tiny_clip()), size=(64, 64), device="cpu")


@pytest.mark.parametrize("long", [False, True])
def test_every_control_frame_is_rendered_and_encoded_once(model, long):
    from emoji_model.align import align_motion
    from landmark_inputs import astronaut_track, driving_track

    lazy = LazyControls(align_motion(astronaut_track(), driving_track())[:30], (64, 64))
    controls = _CountingControls(lazy[:])
    encoded = []
    original = model.encode_landmarks

    def counting(control):
        encoded.append(control.shape[2])
        return original(control)

    model.encode_landmarks = counting
    try:
        settings = SamplerSettings(steps=2, window=8, overlap=2)
        run = progressive_latents if long else generate_latents
        out = run(model, _reference(model), controls, settings, device="cpu")
    finally:
        del model.encode_landmarks
    assert out.shape == (30, 4, 8, 8) and torch.isfinite(out).all()
    assert controls.drawn.tolist() == [1] * 30
    assert sum(encoded) == 30
