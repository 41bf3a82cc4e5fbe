"""Our loader, `convert` and sampler against outputs recorded from the real released code (tests/fixtures).

The fixture was made by tests/fixtures/record_released_fye.py with mayuelala/FollowYourEmoji's own classes
at a tiny size (4 levels of 32 channels, 8 spatial GroupNorm groups, 8 heads, cross-attention 768 from its
hard-coded clip_fc, infer.yaml's temporal layers): one forward of the guider, the referencenet and the UNet,
and one whole run of its VideoPipeline (16 frames, 5 DDIM steps, CFG 3.5) from a recorded starting noise.
"""

from __future__ import annotations

import pytest
import torch

from emoji_model.checkpoints import load_model
from emoji_model.networks import MOTION_NORM_GROUPS
from released_fixture import HIDDEN, banks, inputs, outputs, recording, write_released

ATOL = 1e-4


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    return write_released(tmp_path_factory.mktemp("released"))


@pytest.fixture(scope="module")
def model(released_dir):
    return load_model(released_dir, **HIDDEN)


def _forward(model):
    """Our guider features, banks, guided UNet batch and plain UNet output on the recorded forward inputs."""
    out = outputs()
    clip = out["clip_tokens"]
    both = torch.cat([torch.zeros_like(clip), clip])
    with torch.no_grad():
        lmk = model.encode_landmarks(out["forward_control"])
        ours_banks = model.appearance_banks(out["forward_ref_latent"].repeat(2, 1, 1, 1), clip_tokens=both)
        t = out["forward_timestep"]
        guided = model.denoise(out["forward_sample"].repeat(2, 1, 1, 1, 1), t, model.encode_image_prompt(both),
                               ours_banks, lmk.repeat(2, 1, 1, 1, 1), bank_mask=torch.tensor([False, True]))
        plain = model.denoise(out["forward_sample"], t, model.encode_image_prompt(clip), [b[1:] for b in ours_banks],
                              lmk)
    return lmk, ours_banks, guided, plain


def _max_error(a, b) -> float:
    return float((a - b).abs().max())


def test_loader_infers_the_released_architecture(model):
    cfg = model.config
    rec = recording()["unet_config"]
    assert cfg.block_out_channels == tuple(rec["block_out_channels"]) and cfg.layers_per_block == 2
    assert cfg.norm_num_groups == rec["norm_num_groups"] == 8
    assert cfg.motion_norm_groups == MOTION_NORM_GROUPS == 32  # the released motion modules' own count
    assert cfg.cross_attention_dim == 768 and cfg.clip_dim == 1024 and cfg.motion_max_len == 32


def test_loader_matches_the_released_forward(model):
    out = outputs()
    lmk, ours_banks, guided, plain = _forward(model)
    assert _max_error(lmk, out["forward_lmk"]) < ATOL
    assert len(ours_banks) == len(banks()) == 16
    assert max(_max_error(a, b) for a, b in zip(ours_banks, banks())) < ATOL
    assert out["forward_guided"].abs().mean() > 0.1  # a real signal, not zeros compared with zeros
    assert _max_error(guided, out["forward_guided"]) < ATOL
    assert _max_error(plain, out["forward_plain"]) < ATOL


def test_the_temporal_group_count_is_what_made_the_difference(model):
    """With the UNet's 8 groups in the temporal layers (the earlier reading) the UNet drifts far off."""
    from emoji_model.networks import build_model

    misread = build_model(model.config.replace(motion_norm_groups=8), "cpu")
    misread.load_state_dict(model.state_dict())
    _, _, guided, _ = _forward(misread)
    assert _max_error(guided, outputs()["forward_guided"]) > 1e-2


def test_convert_matches_the_released_forward(released_dir, tmp_path):
    from emoji_model.__main__ import main
    from emoji_model.checkpoints import read_metadata

    out_file = tmp_path / "tiny.safetensors"
    assert main(["convert", "--released", str(released_dir), "--out", str(out_file), "--dtype", "fp32",
                 "--heads", "8", "--norm-groups", "8", "--motion-heads", "8"]) == 0
    assert '"motion_norm_groups": 32' in read_metadata(out_file)["fye_config"]
    converted = load_model(out_file)
    _, ours_banks, guided, plain = _forward(converted)
    assert _max_error(guided, outputs()["forward_guided"]) < ATOL
    assert _max_error(plain, outputs()["forward_plain"]) < ATOL


def test_sampler_matches_the_released_pipeline_run(model):
    """The released VideoPipeline's 5 DDIM steps at CFG 3.5 from the same starting noise → the same latents."""
    from emoji_model.pipeline import generate_latents
    from emoji_model.reference import encode_reference
    from emoji_model.sampling import SamplerSettings

    out, rec = outputs(), recording()
    size = rec["size"]
    # The reference as the released pipeline encoded it: its VAE's latent and its CLIP tokens.
    ref = encode_reference(model, inputs()["reference"], lambda pixels: out["run_ref_latent"],
                           lambda pixels: out["clip_tokens"], size=(size, size), device="cpu")
    settings = SamplerSettings(steps=rec["steps"], cfg=rec["cfg"], window=rec["frames"], overlap=4)
    latents = generate_latents(model, ref, inputs()["controls"], settings, device="cpu", noise=out["run_noise"])
    expected = out["run_latents"][0].permute(1, 0, 2, 3)  # 1 c f h w -> f c h w
    assert expected.abs().mean() > 0.5
    assert _max_error(latents, expected) < ATOL
    # the same noise handed over as a generator, drawn the way the released pipeline draws it
    again = generate_latents(model, ref, inputs()["controls"], settings, device="cpu",
                             generator=torch.Generator().manual_seed(rec["noise_seed"]))
    assert _max_error(again, expected) < ATOL
