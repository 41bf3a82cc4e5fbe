"""Checkpoint IO: our format, released files, mismatches, SD / AnimateDiff base weights, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from emoji_model import CheckpointMismatchError
from emoji_model.checkpoints import (
    describe,
    load_model,
    load_motion_module,
    load_released,
    load_sd_unet,
    read_metadata,
    released_state_dicts,
    save_components,
    save_model,
)
from emoji_model.networks import build_model
from tiny_fye import TINY_HIDDEN, inputs, random_model, tiny_config, to_ldm_unet, write_released

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model():
    return random_model(seed=7)


def _same_weights(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=atol, rtol=0, msg=k)


def _output(m):
    data = inputs(m, frames=2, size=8)
    with torch.no_grad():
        banks = m.appearance_banks(data["ref"], clip_tokens=data["clip"])
        return m.denoise(data["sample"], 50, m.encode_image_prompt(data["clip"]), banks,
                         m.encode_landmarks(data["control"]))


def test_merged_file_round_trip(model, tmp_path):
    path = save_model(model, tmp_path / "fye.safetensors")
    meta = read_metadata(path)
    assert json.loads(meta["fye_config"]) == model.config.to_dict() and meta["fye_component"] == "all"
    loaded = load_model(path)
    assert loaded.config == model.config
    _same_weights(model, loaded)
    assert not any(p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(_output(loaded), _output(model), atol=0, rtol=0)


def test_per_component_files_and_dtypes(model, tmp_path):
    paths = save_components(model, tmp_path / "split", dtype=torch.float16)
    assert sorted(p.name for p in paths) == ["appearance.safetensors", "guider.safetensors",
                                             "image_prompt.safetensors", "unet.safetensors"]
    loaded = load_model(tmp_path / "split", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    half = load_model(paths, dtype=torch.float32)
    _same_weights(model, half, atol=2e-3)
    assert describe(tmp_path / "split")["dtypes"] == {"float16": len(model.state_dict())}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_released_layout_files_convert_and_round_trip(model, tmp_path, fmt):
    write_released(model, tmp_path / "released", fmt, dtype=torch.float16 if fmt == "safetensors" else None)
    loaded = load_model(tmp_path / "released", **TINY_HIDDEN)
    assert loaded.config == model.config
    _same_weights(model, loaded, atol=2e-3 if fmt == "safetensors" else 0)
    # and back into the released layout, tensor for tensor
    again = released_state_dicts(loaded)
    for stem, sd in released_state_dicts(model).items():
        assert again[stem].keys() == sd.keys()


def test_cover_channels_added_to_released_weights_change_nothing(model, tmp_path):
    write_released(model, tmp_path, "pth")
    plain = load_released(tmp_path, **TINY_HIDDEN)
    covered = load_released(tmp_path, cover_channels=5, **TINY_HIDDEN)
    assert covered.unet.conv_in.weight.shape[1] == 9 and covered.unet.conv_in.weight[:, 4:].abs().max() == 0
    data = inputs(model, frames=2, size=8)
    with torch.no_grad():
        tokens = plain.encode_image_prompt(data["clip"])
        a = plain.denoise(data["sample"], 3, tokens, None)
        b = covered.denoise(data["sample"], 3, tokens, None, covered=torch.randn_like(data["sample"]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mismatched_released_files_name_the_offending_tensors(model, tmp_path):
    files = {p.stem: p for p in write_released(model, tmp_path, "pth")}
    sd = torch.load(files["unet"], weights_only=True)
    sd.pop("up_blocks.0.resnets.1.conv1.weight")
    sd["up_blocks.0.resnets.1.extra.weight"] = torch.zeros(3)
    sd["mid_block.attentions.0.proj_in.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(sd, files["unet"])
    with pytest.raises(CheckpointMismatchError) as err:
        load_released(tmp_path, **TINY_HIDDEN)
    e = err.value
    assert e.missing == ["unet.up_blocks.0.resnets.1.conv1.weight"]
    assert e.unexpected == ["unet.up_blocks.0.resnets.1.extra.weight"]
    assert e.mismatched == ["unet.mid_block.attentions.0.proj_in.weight: file (64, 64, 3, 3) vs network (64, 64, 1, 1)"]
    msg = str(e)
    assert "1 missing" in msg and "1 unexpected" in msg and "1 mis-shaped" in msg and "unet.pth" in msg


def test_wrong_config_for_our_file_is_a_mismatch(model, tmp_path):
    path = save_model(model, tmp_path / "fye.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path, config=tiny_config(block_out_channels=(32, 64, 128)))
    assert err.value.mismatched and err.value.source == str(path)


def test_truncated_files_raise_naming_the_file(model, tmp_path):
    path = save_model(model, tmp_path / "fye.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match="truncated") as err:
        load_model(cut)
    assert str(cut) in str(err.value)
    files = {p.stem: p for p in write_released(model, tmp_path / "rel", "pth")}
    blob = files["lmk_guider"].read_bytes()
    files["lmk_guider"].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointMismatchError) as err:
        load_released(tmp_path / "rel", **TINY_HIDDEN)
    assert "lmk_guider.pth" in str(err.value)


def test_missing_released_file_is_named(model, tmp_path):
    files = {p.stem: p for p in write_released(model, tmp_path, "pth")}
    files["lmk_guider"].unlink()
    with pytest.raises(CheckpointMismatchError, match="lmk_guider"):
        load_model(tmp_path)


def _spatial(state, drop_prefix):
    return {k[len(drop_prefix):]: v for k, v in state.items()
            if k.startswith(drop_prefix) and ".motion_modules." not in k}


def test_sd_single_file_loads_into_appearance_and_spatial_layers(tmp_path):
    cfg = tiny_config()
    donor = random_model(cfg, seed=21)
    sd_unet = _spatial(donor.state_dict(), "unet.")
    ldm = to_ldm_unet(sd_unet, cfg.layers_per_block, cfg.attention_levels)
    ldm["cond_stage_model.transformer.dummy"] = torch.zeros(1)  # the rest of a full SD checkpoint
    from safetensors.torch import save_file

    save_file(ldm, str(tmp_path / "sd15_tiny.safetensors"))
    target = random_model(cfg, seed=22)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    updated = load_sd_unet(target, tmp_path / "sd15_tiny.safetensors")
    after = target.state_dict()
    for k, v in sd_unet.items():
        torch.testing.assert_close(after["unet." + k], v, atol=0, rtol=0)
        if "appearance." + k in after and not k.startswith("up_blocks.2.attentions.1.transformer_blocks.0.attn"):
            torch.testing.assert_close(after["appearance." + k], v, atol=0, rtol=0)
    untouched = [k for k in after if ".motion_modules." in k or k.startswith(("guider.", "image_prompt.",
                                                                               "appearance.image_prompt."))]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)
    assert set(updated) == {k for k in after if k not in untouched}


def test_personalised_model_as_a_difference_to_its_base(tmp_path):
    cfg = tiny_config()
    from safetensors.torch import save_file

    base, personal = random_model(cfg, seed=31), random_model(cfg, seed=32)
    for name, m in (("base", base), ("personal", personal)):
        save_file(_spatial(m.state_dict(), "unet."), str(tmp_path / f"{name}.safetensors"))  # diffusers layout
    target = random_model(cfg, seed=33)
    w0 = target.unet.conv_out.weight.clone()
    load_sd_unet(target, tmp_path / "personal.safetensors", base=tmp_path / "base.safetensors", weight=0.5)
    expected = w0 + 0.5 * (personal.unet.conv_out.weight - base.unet.conv_out.weight)
    torch.testing.assert_close(target.unet.conv_out.weight, expected, atol=1e-6, rtol=0)


def test_animatediff_motion_module_loads_into_temporal_layers(tmp_path):
    cfg = tiny_config()
    donor = random_model(cfg, seed=41)
    motion = {k: v for k, v in released_state_dicts(donor)["unet"].items() if ".motion_modules." in k}
    torch.save(motion, tmp_path / "mm_tiny.ckpt")
    target = random_model(cfg, seed=42)
    before = target.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    updated = load_motion_module(target, tmp_path / "mm_tiny.ckpt")
    after = target.state_dict()
    for k in after:
        if ".motion_modules." in k:
            assert torch.equal(after[k], donor.state_dict()[k]), k
        else:
            assert torch.equal(after[k], before[k]), k
    assert len(updated) == sum(".motion_modules." in k for k in after)
    # a v1-style file (no mid-block module) is refused with the reason
    torch.save({k: v for k, v in motion.items() if not k.startswith("mid_block.")}, tmp_path / "mm_v1.ckpt")
    with pytest.raises(CheckpointMismatchError, match="mid-block"):
        load_motion_module(target, tmp_path / "mm_v1.ckpt")


def test_cli_convert_and_inspect(model, tmp_path, capsys, caplog):
    from emoji_model.__main__ import main

    write_released(model, tmp_path / "released", "pth")
    out = tmp_path / "fye_tiny.safetensors"
    code = main(["convert", "--released", str(tmp_path / "released"), "--out", str(out), "--dtype", "fp32",
                 "--heads", "2", "--norm-groups", "8", "--motion-heads", "2"])
    assert code == 0
    _same_weights(model, load_model(out))
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["block_out_channels"] == [32, 64, 64] and info["format"] == "fye-safetensors"
    counts = {c: sum(p.numel() for p in getattr(model, c).parameters()) for c in info["parameters"]}
    assert info["parameters"] == counts
    assert main(["inspect", str(tmp_path / "released")]) == 0
    text = capsys.readouterr().out
    assert "format: released" in text and "appearance" in text
    assert main(["inspect", str(tmp_path / "nothing.safetensors")]) == 2
    assert "nothing.safetensors" in caplog.text and "was not found" in caplog.text


def test_cli_is_registered():
    run = subprocess.run([sys.executable, "-m", "emoji_model", "convert", "--help"], cwd=REPO,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--released" in run.stdout


def test_meta_build_allocates_nothing():
    m = build_model(tiny_config(), "meta")
    assert all(p.is_meta for p in m.parameters())


def test_ldm_key_table_matches_comfyui_for_sd15():
    """Our ldm → diffusers table on the real SD-1.5 key list that ComfyUI's own table gives (a recorded fixture)."""
    from conftest import SHARED
    from emoji_model.checkpoints import ldm_unet_names
    from emoji_model.networks import FYEConfig

    comfy = json.loads((REPO / "tests" / "fixtures" / "sd15_ldm_unet_keys.json").read_text())["diffusers_to_ldm"]
    released = json.loads((SHARED / "reference" / "official_fye_state_dict_shapes.json").read_text())
    spatial = {k for k in released["unet"] if ".motion_modules." not in k and not k.startswith("clip_fc.")}
    # ComfyUI lists a shortcut conv for every resnet (SD-1.5 has one where a block changes width) and
    # a resampler for every level (SD-1.5 has none at the lowest resolution).
    extra = set(comfy) - spatial
    resamplers = {k for k in extra if k.startswith(("down_blocks.3.downsamplers.", "up_blocks.3.upsamplers."))}
    assert spatial <= set(comfy) and len(resamplers) == 4
    assert all(".conv_shortcut." in k for k in extra - resamplers)
    assert set(released["referencenet"]) - spatial <= {"clip_fc.weight", "clip_fc.bias"}
    sd15 = {d: ldm for d, ldm in comfy.items() if d in spatial}  # the keys of a real SD-1.5 single file
    names, unmapped = ldm_unet_names([*sd15.values(), "cond_stage_model.transformer.x", "first_stage_model.y"],
                                     FYEConfig.sd15())
    assert unmapped == [] and names == sd15
    # ComfyUI's whole table maps key for key, the absent shortcuts too; the absent resamplers fit no block.
    names, unmapped = ldm_unet_names(comfy.values(), FYEConfig.sd15())
    assert names == {d: ldm for d, ldm in comfy.items() if d not in resamplers}
    assert sorted(unmapped) == sorted(comfy[d] for d in resamplers)
    # A key that fits no block of the UNet is reported, not dropped.
    assert ldm_unet_names(["model.diffusion_model.input_blocks.99.0.x.weight"], FYEConfig.sd15())[1] == [
        "model.diffusion_model.input_blocks.99.0.x.weight"]
