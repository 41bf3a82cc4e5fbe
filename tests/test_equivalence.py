"""Our networks compute what the released architecture computes (same weights, same inputs → same outputs).

The reference is an independent torch re-statement of the released forward (tests/released_reference.py)
evaluated over the released-layout tensors of the same model.
"""

from __future__ import annotations

import os

import pytest
import torch

from emoji_model.checkpoints import load_released, released_state_dicts
from emoji_model.networks.blocks import TemporalTransformer
from released_reference import Released
from tiny_fye import TINY_HIDDEN, inputs, random_model, tiny_config, write_released

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-5


def _reference(model, stem):
    cfg = model.config
    sd = released_state_dicts(model)[stem]
    return Released(sd, levels=cfg.levels, layers=cfg.layers_per_block, attn_levels=cfg.attention_levels,
                    heads=cfg.attention_heads, groups=cfg.norm_num_groups, motion_heads=cfg.motion_heads,
                    motion_mid=cfg.motion_mid_block, motion_groups=cfg.motion_norm_groups)


@pytest.fixture(scope="module")
def model():
    return random_model(seed=3)


@pytest.fixture(scope="module")
def data(model):
    return inputs(model, batch=2, frames=4)


def test_landmark_guider_matches_released(model, data):
    with torch.no_grad():
        ours = model.encode_landmarks(data["control"])
        ref = _reference(model, "lmk_guider").guider(data["control"])
    assert ours.shape == (2, model.config.block_out_channels[0], 4, 16, 16)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_appearance_banks_match_released_referencenet(model, data):
    with torch.no_grad():
        ours = model.appearance_banks(data["ref"], clip_tokens=data["clip"])
        ref = _reference(model, "referencenet").referencenet(data["ref"], data["clip"])
    assert len(ours) == len(ref) == model.bank_count == 7
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


def test_unet_matches_released_with_reference_and_landmarks(model, data):
    with torch.no_grad():
        banks = model.appearance_banks(data["ref"], clip_tokens=data["clip"])
        lmk = model.encode_landmarks(data["control"])
        tokens = model.encode_image_prompt(data["clip"])
        ours = model.denoise(data["sample"], data["timestep"], tokens, banks, lmk)
        ref = _reference(model, "unet").unet(data["sample"], data["timestep"], data["clip"], lmk, banks)
    assert ours.abs().mean() > 0.1  # a real signal, not an all-zero comparison
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_unet_matches_released_guidance_branch(model, data):
    """Released CFG: the unconditional half sees zeroed CLIP tokens and no reference attention."""
    clip = torch.cat([torch.zeros_like(data["clip"][:1]), data["clip"][:1]])
    sample = data["sample"][:1].repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        banks = model.appearance_banks(data["ref"][:1].repeat(2, 1, 1, 1), clip_tokens=clip)
        tokens = model.encode_image_prompt(clip)
        ours = model.denoise(sample, 700, tokens, banks, bank_mask=torch.tensor([False, True]))
        ref = _reference(model, "unet").unet(sample, torch.tensor([700]), clip, None, banks, uncond_rows=1)
        no_ref = model.denoise(sample[:1], 700, tokens[:1], None)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(ours[:1], no_ref, atol=ATOL, rtol=1e-5)


def test_released_files_load_into_the_same_computation(model, data, tmp_path):
    write_released(model, tmp_path, "pth")
    loaded = load_released(tmp_path, **TINY_HIDDEN)
    assert loaded.config == model.config
    with torch.no_grad():
        a = model.denoise(data["sample"], 10, model.encode_image_prompt(data["clip"]),
                          model.appearance_banks(data["ref"], clip_tokens=data["clip"]))
        b = loaded.denoise(data["sample"], 10, loaded.encode_image_prompt(data["clip"]),
                           loaded.appearance_banks(data["ref"], clip_tokens=data["clip"]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_temporal_module_matches_released_motion_module():
    """Per-frame GroupNorm as released; diffusers' AnimateDiffTransformer3D normalises across frames."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    from tiny_fye import randomize

    torch.manual_seed(0)
    mm = randomize(TemporalTransformer(32, heads=2, layers=1, norm_groups=8, max_len=16), seed=5).eval()
    x = torch.randn(2 * 6, 32, 4, 4)  # (b f) c h w, 6 frames
    released = released_state_dicts({f"unet.down_blocks.0.motion_modules.0.{k}": v
                                     for k, v in mm.state_dict().items()})["unet"]
    sd = {k.replace("down_blocks.0.motion_modules.0.", "m."): v for k, v in released.items()}
    ref = Released(sd, levels=1, layers=1, attn_levels=(True,), heads=2, groups=8, motion_heads=2, motion_groups=8)
    with torch.no_grad():
        ours = mm(x, num_frames=6)
        expected = ref.motion(x.reshape(2, 6, 32, 4, 4).transpose(1, 2), "m").transpose(1, 2).reshape(12, 32, 4, 4)
        stock = AnimateDiffTransformer3D.forward(mm, x, num_frames=6)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=1e-5)
    assert (stock - expected).abs().max() > 1e-3


def test_tiny_config_is_small():
    n = sum(p.numel() for p in random_model(tiny_config()).parameters())
    assert 1e6 < n < 6e6
