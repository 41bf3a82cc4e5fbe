"""Reference encoding (latent, prompt tokens, banks) and the CLIP / VAE loaders, with tiny local models."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from emoji_model import CheckpointMismatchError, InvalidRequestError
from emoji_model.checkpoints import load_clip_vision, load_vae
from emoji_model.reference import (
    clip_encoder_from_transformers,
    clip_preprocess,
    encode_reference,
    image_to_pixels,
    vae_encoder_from_diffusers,
)
from tiny_fye import TINY_CLIP, TINY_VAE, random_model, tiny_clip, tiny_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def model():
    return random_model(seed=5)


def test_encode_reference_is_what_the_model_computes(model, vae, clip, astronaut):
    ref = encode_reference(model, astronaut, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                           size=(128, 96))
    assert ref.latent.shape == (1, 4, 16, 12) and ref.size == (128, 96)
    assert ref.clip_tokens.shape == (1, 17, 48) and ref.prompt_tokens.shape == (1, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(ref.prompt_tokens_uncond,
                                   model.encode_image_prompt(torch.zeros_like(ref.clip_tokens)))
        banks = model.appearance_banks(ref.latent, clip_tokens=ref.clip_tokens)
    assert len(ref.banks) == model.bank_count and ref.banks_uncond is None
    for a, b in zip(ref.banks, banks):
        torch.testing.assert_close(a, b)
    # the latent is the posterior mean, scaled
    pixels = image_to_pixels(astronaut)
    assert ref.latent.abs().mean() < 10 and pixels.shape == (1, 3, 512, 512)

    tokens, stacked, mask = ref.batch(guidance=True, repeat=2)
    assert tokens.shape[0] == 4 and stacked[0].shape[0] == 4 and mask.tolist() == [False, False, True, True]
    tokens, stacked, mask = ref.batch(guidance=False)
    assert tokens.shape[0] == 1 and mask is None
    with_u = encode_reference(model, astronaut, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                              size=(64, 64), uncond_banks=True)
    tokens, stacked, mask = with_u.batch(guidance=True)
    assert mask is None and not torch.equal(stacked[-1][0], stacked[-1][1])  # the prompt reaches later banks


def test_reference_requests_that_cannot_work(model, vae, clip, astronaut):
    with pytest.raises(InvalidRequestError, match="multiples of 8"):
        encode_reference(model, astronaut, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                         size=(100, 100))
    with pytest.raises(InvalidRequestError, match="one reference image"):
        image_to_pixels(np.zeros((2, 8, 8, 3), np.float32))


def test_clip_preprocessing_matches_the_released_processor(astronaut):
    from transformers import CLIPImageProcessor

    ours = clip_preprocess(image_to_pixels(astronaut[:, 40:480]))
    theirs = torch.as_tensor(np.asarray(CLIPImageProcessor()(images=astronaut[:, 40:480],
                                                              return_tensors="np").pixel_values))
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    assert (ours - theirs).abs().mean() < 0.005  # about 0.15 of 255 levels: PIL vs torch bicubic


def test_clip_and_vae_loaders_from_local_files(clip, vae, tmp_path):
    from safetensors.torch import save_file

    clip.save_pretrained(tmp_path / "image_encoder")
    loaded = load_clip_vision(tmp_path / "image_encoder")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).last_hidden_state, clip(pixel_values=x).last_hidden_state)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    single = load_clip_vision(tmp_path / "clip.safetensors", config=TINY_CLIP)
    with torch.no_grad():
        torch.testing.assert_close(single(pixel_values=x).last_hidden_state, clip(pixel_values=x).last_hidden_state)
    with pytest.raises(CheckpointMismatchError):
        load_clip_vision(tmp_path / "clip.safetensors")  # the shipped ViT-L/14 config does not fit a tiny file

    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    v2 = load_vae(tmp_path / "vae.safetensors", config=TINY_VAE)
    px = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(v2.encode(px).latent_dist.mean, vae.encode(px).latent_dist.mean)
