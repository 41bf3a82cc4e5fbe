"""The networks: released structure at SD-1.5 size, zero-initialised inputs, determinism, frame handling."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import SHARED
from emoji_model import InvalidRequestError
from emoji_model.checkpoints import expected_tensors, infer_config, ours_to_released, released_to_ours
from emoji_model.networks import FYEConfig, build_model
from tiny_fye import inputs, random_model, randomize, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RELEASED_SHAPES = SHARED / "reference" / "official_fye_state_dict_shapes.json"


@pytest.fixture(scope="module")
def released_shapes():
    data = json.loads(RELEASED_SHAPES.read_text())
    return {stem: {k: tuple(v) for k, v in t.items()} for stem, t in data.items()}


def test_sd15_maps_every_released_tensor(released_shapes):
    assert {k: len(v) for k, v in released_shapes.items()} == {"referencenet": 666, "unet": 1276, "lmk_guider": 16}
    model = build_model(FYEConfig.sd15(), "meta")
    ours = expected_tensors(model)
    unexpected, mismatched, covered = [], [], set()
    for stem, tensors in released_shapes.items():
        for name, shape in tensors.items():
            mine = released_to_ours(stem, name)
            if mine not in ours:
                unexpected.append(f"{stem}:{name}")
            elif ours[mine] != shape:
                mismatched.append(f"{stem}:{name} {shape} vs {ours[mine]}")
            covered.add(mine)
    missing = sorted(set(ours) - covered)
    assert (unexpected, mismatched, missing) == ([], [], [])
    # and back: every tensor of ours names released tensors that exist
    for name in ours:
        stem, names = ours_to_released(name)
        assert all(n in released_shapes[stem] for n in names), name
    assert model.bank_count == 16 and model.max_frames == 32


def test_config_is_inferred_from_released_shapes(released_shapes):
    assert infer_config(released_shapes) == FYEConfig.sd15()


def test_config_round_trips_and_validates():
    cfg = tiny_config(image_prompt="qformer", cover_channels=5)
    assert FYEConfig.from_json(cfg.to_json()) == cfg
    assert FYEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidRequestError, match="cover_channels"):
        tiny_config(cover_channels=3)
    with pytest.raises(InvalidRequestError, match="norm_num_groups"):
        tiny_config(norm_num_groups=7)
    with pytest.raises(InvalidRequestError, match="unknown FYEConfig fields"):
        FYEConfig.from_dict({"bogus": 1})


@pytest.fixture(scope="module")
def model():
    return random_model(seed=11)


@pytest.fixture(scope="module")
def fresh():
    """Freshly built (not randomised) tiny model: guider output and cover channels are zero."""
    torch.manual_seed(0)
    return build_model(tiny_config(cover_channels=5), "cpu")


def _run(m, data, **kw):
    with torch.no_grad():
        banks = m.appearance_banks(data["ref"], clip_tokens=data["clip"])
        return m.denoise(data["sample"], data["timestep"], m.encode_image_prompt(data["clip"]), banks, **kw)


def test_zero_initialised_guider_and_cover_channels_change_nothing_until_trained(fresh):
    data = inputs(fresh)
    lmk = fresh.encode_landmarks(data["control"])
    assert lmk.abs().max() == 0
    base = _run(fresh, data)
    covered = torch.randn_like(data["sample"])
    mask = (torch.rand(1, 1, 3, 1, 1) > 0.5).float().expand(1, 1, 3, 16, 16)
    torch.testing.assert_close(_run(fresh, data, landmark_features=lmk, covered=covered, cover_mask=mask),
                               base, atol=0, rtol=0)
    # after training moves them off zero, both inputs matter
    perturbed = build_model(fresh.config, "cpu")
    perturbed.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        perturbed.guider.conv_out.weight.normal_(0, 0.1)
        perturbed.unet.conv_in.weight[:, 4:].normal_(0, 0.1)
    lmk2 = perturbed.encode_landmarks(data["control"])
    with_lmk = _run(perturbed, data, landmark_features=lmk2)
    assert (with_lmk - base).abs().max() > 1e-3
    with_cover = _run(perturbed, data, covered=covered, cover_mask=mask)
    assert (with_cover - _run(perturbed, data)).abs().max() > 1e-3


def test_seeded_forward_is_deterministic(model):
    data = inputs(model)
    a, b = _run(model, data), _run(model, data)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    again = random_model(seed=11)
    torch.testing.assert_close(_run(again, data), a, atol=0, rtol=0)
    # pinned numbers of the seeded tiny model: a regression guard for the whole forward
    assert a.mean().item() == pytest.approx(0.112409, abs=1e-4)
    assert a.std().item() == pytest.approx(0.521087, abs=1e-4)
    torch.testing.assert_close(a[0, 0, 0, 0, :4], torch.tensor([-0.174694, 0.183650, -0.077052, 0.216099]),
                               atol=1e-4, rtol=0)


def test_temporal_groups_of_older_configs_compute_what_they_did():
    """A config stored without motion_norm_groups (the pack's own trainings) keeps its UNet's group count."""
    stored = {k: v for k, v in tiny_config().to_dict().items() if k != "motion_norm_groups"}
    legacy = FYEConfig.from_dict(stored)
    assert legacy.motion_norm_groups == legacy.norm_num_groups == 8
    assert tiny_config().motion_norm_groups == FYEConfig.sd15().motion_norm_groups == 32
    model = random_model(legacy, seed=11)
    a = _run(model, inputs(model))
    # the numbers this seeded model gave before the field existed (temporal groups = norm_num_groups)
    assert a.mean().item() == pytest.approx(0.078011, abs=1e-4)
    assert a.std().item() == pytest.approx(0.484627, abs=1e-4)
    torch.testing.assert_close(a[0, 0, 0, 0, :4], torch.tensor([0.117578, 0.263815, 0.224721, 0.183927]),
                               atol=1e-4, rtol=0)
    with pytest.raises(InvalidRequestError, match="motion_norm_groups"):
        tiny_config(block_out_channels=(48, 64, 64))


def test_spatial_path_is_per_frame_without_temporal_layers(model):
    data = inputs(model, frames=4)
    clip = _run(model, data, temporal=False)
    for f in range(4):
        one = dict(data, sample=data["sample"][:, :, f:f + 1])
        torch.testing.assert_close(_run(model, one, temporal=False), clip[:, :, f:f + 1], atol=1e-5, rtol=1e-5)
    # with the temporal layers on, frames do see each other
    with_t = _run(model, data)
    alone = _run(model, dict(data, sample=data["sample"][:, :, :1]))
    assert (with_t[:, :, :1] - alone).abs().max() > 1e-3


def test_bank_mask_false_rows_attend_to_no_reference(model):
    data = inputs(model, batch=2)
    tokens = model.encode_image_prompt(data["clip"])
    with torch.no_grad():
        banks = model.appearance_banks(data["ref"], clip_tokens=data["clip"])
        masked = model.denoise(data["sample"], 300, tokens, banks, bank_mask=torch.tensor([False, True]))
        plain = model.denoise(data["sample"][:1], 300, tokens[:1], None)
        full = model.denoise(data["sample"], 300, tokens, banks)
    torch.testing.assert_close(masked[:1], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[1:], full[1:], atol=1e-5, rtol=1e-5)


def test_requests_that_cannot_work_are_named(model):
    data = inputs(model)
    tokens = model.encode_image_prompt(data["clip"])
    banks = model.appearance_banks(data["ref"], clip_tokens=data["clip"])
    with pytest.raises(InvalidRequestError, match="cover_channels=0"):
        model.denoise(data["sample"], 1, tokens, banks, covered=data["sample"])
    with pytest.raises(InvalidRequestError, match="appearance banks"):
        model.denoise(data["sample"], 1, tokens, banks[:-1])
    with pytest.raises(InvalidRequestError, match="batch"):
        model.denoise(data["sample"].repeat(2, 1, 1, 1, 1), 1, tokens.repeat(2, 1, 1), banks)
    long = torch.zeros(1, 4, model.max_frames + 1, 8, 8)
    with pytest.raises(InvalidRequestError, match="maximum"):
        model.denoise(long, 1, tokens, None)
    with pytest.raises(InvalidRequestError, match="clip_tokens"):
        model.appearance_banks(data["ref"], tokens)


def test_qformer_image_prompt_and_shared_prompt():
    m = random_model(tiny_config(image_prompt="qformer", appearance_own_prompt=False), seed=2)
    data = inputs(m)
    tokens = m.encode_image_prompt(data["clip"])
    assert tokens.shape == (1, m.config.qformer_queries, m.config.cross_attention_dim)
    with torch.no_grad():
        banks = m.appearance_banks(data["ref"], tokens)
        out = m.denoise(data["sample"], 5, tokens, banks)
    assert out.shape == data["sample"].shape and torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    data = inputs(random_model(seed=4), frames=2, size=8)
    grads = []
    for ckpt in (False, True):
        m = random_model(seed=4).train()
        m.enable_gradient_checkpointing(ckpt)
        banks = m.appearance_banks(data["ref"][..., :8, :8], clip_tokens=data["clip"])
        out = m.denoise(data["sample"], 100, m.encode_image_prompt(data["clip"]), banks,
                        m.encode_landmarks(data["control"][..., :64, :64]))
        out.square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("appearance.") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4)


def test_odd_latent_sizes_and_half_precision(model):
    data = inputs(model, size=12)
    out = _run(model, data)
    assert out.shape == data["sample"].shape
    half = randomize(build_model(model.config, "cpu", torch.bfloat16), seed=11)
    out16 = _run(half, data)
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()


def test_one_walk_names_every_block_in_order():
    """Both networks walk the same blocks; on_block sees each resnet, transformer and temporal module once."""
    m = random_model(seed=5)
    data = inputs(m, frames=2, size=8)
    seen_unet, seen_appearance = [], []
    with torch.no_grad():
        tokens = m.encode_image_prompt(data["clip"])
        banks = m.appearance(data["ref"], m.encode_image_prompt(data["clip"], for_appearance=True),
                             on_block=seen_appearance.append)
        out = m.unet(data["sample"], 7, tokens, banks=banks, on_block=seen_unet.append)
        plain = m.unet(data["sample"], 7, tokens, banks=banks)
        spatial_only = []
        m.unet(data["sample"], 7, tokens, banks=banks, temporal=False, on_block=spatial_only.append)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    for names, net in ((seen_unet, m.unet), (seen_appearance, m.appearance)):
        assert len(names) == len(set(names))
        for name in names:
            net.get_submodule(name)  # every name is the block's module path
    unet_blocks = [n for n, _ in m.unet.named_modules()
                   if n.count(".") in (2, 3) and n.split(".")[-2] in ("resnets", "attentions", "motion_modules")]
    assert sorted(seen_unet) == sorted(unet_blocks)
    assert spatial_only == [n for n in seen_unet if ".motion_modules." not in n]
    # The appearance net walks the spatial blocks in the same order and stops at its last bank.
    assert seen_appearance == spatial_only[:len(seen_appearance)]
    assert seen_appearance[-1] == "up_blocks.2.attentions.1" and len(banks) == m.bank_count
    assert seen_unet.index("down_blocks.0.attentions.0") < seen_unet.index("down_blocks.0.motion_modules.0") \
        < seen_unet.index("down_blocks.1.resnets.0") < seen_unet.index("mid_block.attentions.0") \
        < seen_unet.index("mid_block.motion_modules.0") < seen_unet.index("mid_block.resnets.1") \
        < seen_unet.index("up_blocks.0.resnets.0")
