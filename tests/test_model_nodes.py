"""FYE_LoadModel and FYE_ReferenceEncoder run standalone over tiny files, adapting host-style VAE/CLIP objects."""

from __future__ import annotations

import os

import pytest
import torch

import emoji_model.runtime as rt
from emoji_model.checkpoints import released_state_dicts, save_model
from emoji_model.reference import (
    ReferenceEncoding,
    clip_preprocess,
    encode_reference,
    vae_encoder_from_diffusers,
)
from tiny_fye import random_model, tiny_clip, tiny_vae, write_released

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def runtime(tmp_path, monkeypatch):
    runtime = rt.StandaloneRuntime(device="cpu", models_dir=tmp_path)
    monkeypatch.setattr(rt, "_default", runtime)
    return runtime


@pytest.fixture(scope="module")
def model():
    return random_model(seed=9)


class HostVAE:
    """Like ComfyUI's VAE: encode(IMAGE [B,H,W,3] in 0..1) → unscaled latents (posterior mean)."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, images):
        with torch.no_grad():
            return self.vae.encode(images.movedim(-1, 1) * 2 - 1).latent_dist.mean


class HostClipVision:
    """Like ComfyUI's CLIP_VISION: encode_image(IMAGE) → an output with last_hidden_state."""

    def __init__(self, clip):
        self.clip = clip

    def encode_image(self, image, crop=True):
        with torch.no_grad():
            out = self.clip(pixel_values=clip_preprocess(image.movedim(-1, 1), 32))
        return {"last_hidden_state": out.last_hidden_state, "image_embeds": out.image_embeds}


def test_load_model_node_lists_and_loads_our_file(runtime, model, tmp_path):
    from nodes.model_nodes import FYEModel, LoadModel

    save_model(model, tmp_path / "follow_your_emoji" / "fye_tiny.safetensors")
    spec = LoadModel.INPUT_TYPES()
    assert "fye_tiny.safetensors" in spec["required"]["checkpoint"][0]
    assert spec["optional"]["motion_module"][0] == ["none"]
    (fye,) = LoadModel().load("fye_tiny.safetensors", "auto")
    assert isinstance(fye, FYEModel) and fye.config == model.config and fye.dtype == torch.float32
    assert fye.scheduler["prediction_type"] == "v_prediction"
    loaded = fye.module(runtime)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_model_node_applies_a_motion_module(runtime, model, tmp_path):
    from nodes.model_nodes import LoadModel

    save_model(model, tmp_path / "follow_your_emoji" / "fye_tiny.safetensors")
    donor = random_model(seed=10)
    motion = {k: v for k, v in released_state_dicts(donor)["unet"].items() if ".motion_modules." in k}
    (tmp_path / "animatediff_models").mkdir()
    torch.save(motion, tmp_path / "animatediff_models" / "mm_tiny.ckpt")
    (fye,) = LoadModel().load("fye_tiny.safetensors", "fp32", motion_module="mm_tiny.ckpt")
    loaded = fye.module(runtime)
    name = "unet.down_blocks.0.motion_modules.0.proj_out.weight"
    assert torch.equal(loaded.state_dict()[name], donor.state_dict()[name])


def test_released_files_are_picked_as_a_set(runtime, model, tmp_path):
    from nodes.model_nodes import _checkpoint_paths

    write_released(model, tmp_path / "follow_your_emoji" / "released", "pth")
    names = runtime.list_models("follow_your_emoji")
    assert "released/unet.pth" in names
    paths = _checkpoint_paths(runtime, "released/unet.pth")
    assert [p.name for p in paths] == ["referencenet.pth", "unet.pth", "lmk_guider.pth"]


def test_reference_encoder_node_matches_the_library(runtime, model, tmp_path, astronaut):
    from nodes.model_nodes import FYEModel, ReferenceEncoder

    vae, clip = tiny_vae(), tiny_clip()
    fye = FYEModel(handle=model, config=model.config, dtype=torch.float32, source="test")
    image = torch.from_numpy(astronaut).float().div(255)[None]  # IMAGE [1,H,W,3]
    (ref,) = ReferenceEncoder().encode(fye, image, HostVAE(vae), 64, 64, clip_vision=HostClipVision(clip))
    assert isinstance(ref, ReferenceEncoding)
    direct = encode_reference(model, image, vae_encoder_from_diffusers(vae),
                              lambda px: clip(pixel_values=clip_preprocess(px, 32)).last_hidden_state,
                              size=(64, 64))
    torch.testing.assert_close(ref.latent, direct.latent, atol=1e-5, rtol=1e-5)
    for a, b in zip(ref.banks, direct.banks):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the pack's own image-encoder file instead of a host CLIP_VISION
    clip.save_pretrained(tmp_path / "clip_vision" / "tiny_encoder")
    (ref2,) = ReferenceEncoder().encode(fye, image, HostVAE(vae), 64, 64,
                                        image_encoder="tiny_encoder/model.safetensors")
    assert ref2.prompt_tokens.shape == ref.prompt_tokens.shape
    torch.testing.assert_close(ref2.banks[-1], ref.banks[-1], atol=1e-4, rtol=1e-4)


def test_reference_encoder_needs_an_image_encoder(runtime, model, astronaut):
    from emoji_model import InvalidRequestError
    from nodes.model_nodes import FYEModel, ReferenceEncoder

    fye = FYEModel(handle=model, config=model.config, dtype=torch.float32, source="test")
    with pytest.raises(InvalidRequestError, match="CLIP_VISION"):
        ReferenceEncoder().encode(fye, torch.zeros(1, 64, 64, 3), HostVAE(tiny_vae()), 64, 64)


def test_reference_encoder_can_move_the_appearance_net_off_the_device(tmp_path, monkeypatch, astronaut):
    from nodes.model_nodes import FYEModel, ReferenceEncoder

    class ParkOnMeta(rt.StandaloneRuntime):
        def offload_device(self):
            return torch.device("meta")  # stands for "not the compute device": nothing computes there

    monkeypatch.setattr(rt, "_default", ParkOnMeta(device="cpu", models_dir=tmp_path))
    vae, clip = tiny_vae(), tiny_clip()
    image = torch.from_numpy(astronaut).float().div(255)[None]
    for offload in (False, True):
        model = random_model(seed=9)
        fye = FYEModel(handle=model, config=model.config, dtype=torch.float32, source="test")
        ReferenceEncoder().encode(fye, image, HostVAE(vae), 64, 64, clip_vision=HostClipVision(clip),
                                  offload_appearance=offload)
        appearance = {p.device.type for p in model.appearance.parameters()}
        assert appearance == ({"meta"} if offload else {"cpu"})
        assert {p.device.type for p in model.unet.parameters()} == {"cpu"}  # the samplers' networks stay
