"""The bundled model animates the portrait it is given: each video takes after its own reference."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def following(face_task):
    """The astronaut and a stylised, recoloured astronaut (neither seen in training), the demo's keyed motion."""
    import torch
    from skimage import data

    from emoji_model.bundled import BUNDLED_SAMPLING, load_bundled
    from emoji_model.commands.demo import DEMO_KEYS
    from emoji_model.evaluate import reference_following
    from emoji_model.sampling import SamplerSettings
    from trainer.augment import apply_look

    astronaut = data.astronaut()
    styled = apply_look(astronaut, "stylise", {"filter": 0, "sigma_s": 60.0, "sigma_r": 0.45})
    styled = apply_look(styled, "colour", {"brightness": 0.05, "contrast": 1.2, "saturation": 1.3, "hue": 90.0})
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, vae, encoder = load_bundled()
        settings = SamplerSettings(**{**BUNDLED_SAMPLING, "steps": 10}, window=16, overlap=4)
        return reference_following(model, vae, encoder, {"astronaut": astronaut, "stylised": styled}, settings,
                                   keys=DEMO_KEYS, frames=24, face_model=str(face_task))
    finally:
        torch.set_num_threads(old)


def test_each_video_is_closer_to_its_own_reference(following):
    # ratio = L1(video, own reference) / L1(video, the other reference), at 64x64
    assert all(r <= 0.8 for r in following["ratio"]), following


def test_the_video_moves_when_the_landmarks_do(following):
    corr = following["motion_corr"]
    assert all(c is not None and c >= 0.5 for c in corr), following
    assert np.isfinite(np.asarray(following["l1"])).all()
