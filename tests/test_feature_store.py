"""The landmark-guider features kept between windows stay under their budget, and sampling does not change."""

from __future__ import annotations

import torch

import emoji_model.pipeline as pipeline
from emoji_model.pipeline import LandmarkFeatures, generate_latents
from test_sampling import _controls, _model, _reference, _settings


def test_a_small_budget_forgets_and_re_encodes_with_the_same_result(monkeypatch):
    model, ref, ctrl = _model(), _reference(), _controls()[:40]
    settings = _settings(window=8, overlap=2, steps=2)
    whole = generate_latents(model, ref, ctrl, settings, device="cpu")
    seen: list[LandmarkFeatures] = []
    peaks: list[int] = []

    class Watched(LandmarkFeatures):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

        def window(self, frames):
            out = super().window(frames)
            peaks.append(self.stored_bytes())
            return out

    per_frame = model.encode_landmarks(torch.zeros(1, 3, 1, 64, 64)).shape  # [1,C,1,h,w]
    frame_bytes = per_frame[1] * per_frame[3] * per_frame[4] * 4
    monkeypatch.setattr(pipeline, "FEATURE_STORE_BYTES", 12 * frame_bytes)
    monkeypatch.setattr(pipeline, "LandmarkFeatures", Watched)
    bounded = generate_latents(model, ref, ctrl, settings, device="cpu")
    torch.testing.assert_close(bounded, whole, rtol=0, atol=0)
    assert max(peaks) <= 12 * frame_bytes          # never more than the budget (12 of 40 frames)
    assert seen[0].encoded > len(ctrl)             # forgotten frames were encoded again


def test_the_default_budget_encodes_each_frame_once():
    model, ctrl = _model(), _controls()[:40]
    feats = LandmarkFeatures(model, ctrl, "cpu", torch.float32)
    for start in (0, 6, 12, 18, 24, 30, 32, 0, 6):
        feats.window(range(start, start + 8))
    assert feats.encoded == 40 and len(feats.frames) == 40
