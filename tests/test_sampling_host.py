"""Sampling as the host sees it: Cancel within a UNet block, previews, the activation estimate, out-of-memory.

Library calls with recording runtimes, and the sampler nodes over the recorded stand-in of ComfyUI
(tests/fake_comfy). The real host shows the same in tests/test_comfyui_host.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import emoji_model.runtime as rt
from emoji_model.errors import FYEError
from emoji_model.pipeline import LazyControls, activation_memory, generate_latents, progressive_latents
from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
from emoji_model.sampling import SamplerSettings
from tiny_fye import inputs, random_model, tiny_clip, tiny_vae

SIZE = 64


@pytest.fixture(scope="module")
def parts(astronaut):
    from emoji_model.align import align_motion
    from landmark_inputs import astronaut_track, driving_track

    model = random_model(seed=4)
    ref = encode_reference(model, astronaut, vae_encoder_from_diffusers(tiny_vae()),
                           clip_encoder_from_transformers(tiny_clip()), size=(SIZE, SIZE), device="cpu")
    aligned = align_motion(astronaut_track(), driving_track())[:10]
    return model, ref, aligned


class Cancelled(Exception):
    pass


class CancelAt(rt.StandaloneRuntime):
    """Cancel pressed before the ``at``-th check; records previews."""

    def __init__(self, at: int = 10**9):
        super().__init__(device="cpu")
        self.at, self.checks, self.previews = at, 0, []

    def check_interrupt(self):
        self.checks += 1
        if self.checks >= self.at:
            raise Cancelled()

    def preview(self, latents):
        self.previews.append(latents.clone())


def _counting_denoise(model, monkeypatch):
    calls = {"entered": 0, "left": 0}
    denoise = model.denoise

    def counted(*args, **kwargs):
        calls["entered"] += 1
        out = denoise(*args, **kwargs)
        calls["left"] += 1
        return out

    monkeypatch.setattr(model, "denoise", counted)
    return calls


def test_cancel_is_honoured_inside_one_unet_evaluation(parts, monkeypatch):
    model, ref, aligned = parts
    calls = _counting_denoise(model, monkeypatch)
    runtime = CancelAt()
    generate_latents(model, ref, LazyControls(aligned, (SIZE, SIZE)), SamplerSettings(steps=1, window=10),
                     device="cpu", runtime=runtime)
    per_eval = runtime.checks - 1  # one window: the sampler's own check, then the blocks'
    blocks = sum(len(getattr(b, n, None) or ()) for b in [*model.unet.down_blocks, model.unet.mid_block,
                                                          *model.unet.up_blocks]
                 for n in ("resnets", "attentions", "motion_modules"))
    assert calls["entered"] == 1 and per_eval == blocks >= 10
    # Cancel pressed half-way through the evaluation stops it there, not at the end of the step
    calls.update(entered=0, left=0)
    with pytest.raises(Cancelled):
        generate_latents(model, ref, LazyControls(aligned, (SIZE, SIZE)), SamplerSettings(steps=3, window=10),
                         device="cpu", runtime=CancelAt(at=1 + blocks // 2))
    assert calls == {"entered": 1, "left": 0}


def test_every_step_shows_its_estimate(parts):
    model, ref, aligned = parts
    runtime = CancelAt()
    out = generate_latents(model, ref, LazyControls(aligned, (SIZE, SIZE)),
                           SamplerSettings(steps=4, window=8, overlap=2), device="cpu", runtime=runtime)
    assert len(runtime.previews) == 4
    assert all(p.shape == (1, 4, 10, SIZE // 8, SIZE // 8) for p in runtime.previews)
    # DDIM's clean-sample estimate: it converges to the result
    final = out.permute(1, 0, 2, 3)[None]
    errors = [float((p - final).abs().mean()) for p in runtime.previews]
    assert errors[-1] < errors[0] and errors[-1] < 0.2 * float(final.abs().mean())
    runtime = CancelAt()
    progressive_latents(model, ref, LazyControls(aligned, (SIZE, SIZE)), SamplerSettings(steps=2, window=4,
                                                                                        overlap=1),
                        device="cpu", runtime=runtime)
    assert len(runtime.previews) == 2 * 4  # stage 1 (keyframes 0, 3, 6, 9) and its three gaps


def test_activation_estimate_covers_what_a_window_uses(parts):
    from trainer.memory import PeakTensorMemory

    model = parts[0]
    for frames, size in ((4, 8), (8, 16)):
        x = inputs(model, batch=2, frames=frames, size=size)
        tokens = model.encode_image_prompt(x["clip"])
        banks = model.appearance_banks(x["ref"], tokens, clip_tokens=x["clip"])
        lmk = model.encode_landmarks(x["control"])
        with torch.no_grad(), PeakTensorMemory() as meter:
            model.denoise(x["sample"], x["timestep"], tokens, banks, landmark_features=lmk)
        estimate = activation_memory(model.config, frames, (size, size), True, torch.float32)
        assert meter.peak <= estimate <= 1.6 * meter.peak, (frames, size, meter.peak, estimate)
    # halves without guidance and in fp16; SD-1.5 at 512 px, window 16, fp16: about 2.4 GiB
    one = activation_memory(model.config, 8, (16, 16), False, torch.float32)
    assert one * 2 == activation_memory(model.config, 8, (16, 16), True, torch.float32)
    assert activation_memory(model.config, 8, (16, 16), False, torch.float16) * 2 == one
    from emoji_model.networks import FYEConfig

    sd15 = activation_memory(FYEConfig(), 16, (64, 64), True, torch.float16)
    assert 2.0 < sd15 / 2**30 < 3.0


@pytest.fixture()
def host_fye(comfy_host, parts):
    from nodes.model_nodes import FYEModel

    model = parts[0]
    runtime = comfy_host.get_runtime()
    return FYEModel(handle=runtime.manage(model), config=model.config, dtype=torch.float32, source="test")


def test_sampler_node_tells_the_host_its_memory_and_previews(host_fye, parts):
    import comfy.model_management as mm
    import comfy.utils
    import latent_preview

    from nodes.sampler_nodes import TemporalSampler

    _, ref, aligned = parts
    mm.calls.clear()
    comfy.utils.previews.clear()
    latent_preview.decoded.clear()
    TemporalSampler().sample(host_fye, ref, aligned, 3, 3.5, 1, "DDIM (diffusers)", 8, 2, "pyramid", unique_id="7")
    loads = [c for c in mm.calls if c[0] == "load_models_gpu"]
    expected = activation_memory(host_fye.config, 8, (SIZE // 8, SIZE // 8), True, torch.float32)
    assert loads and loads[0][3] == expected > 0
    assert len(comfy.utils.previews) == 3  # one per step, onto the sampler's bar
    assert latent_preview.decoded == [(1, 4, SIZE // 8, 4 * SIZE // 8)] * 3  # four frames side by side
    latent_preview.args.preview_method = "none"  # the user's setting: no previews
    try:
        comfy.utils.previews.clear()
        TemporalSampler().sample(host_fye, ref, aligned, 2, 3.5, 1, "DDIM (diffusers)", 8, 2, "pyramid")
        assert comfy.utils.previews == []
    finally:
        latent_preview.args.preview_method = "latent2rgb"


def test_out_of_memory_fallback_is_shown_and_not_served_from_the_cache(host_fye, parts, monkeypatch):
    from server import PromptServer

    from nodes.sampler_nodes import TemporalSampler

    model, ref, aligned = parts
    denoise = model.denoise

    def small_memory(sample, *args, **kwargs):
        if sample.shape[2] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return denoise(sample, *args, **kwargs)

    monkeypatch.setattr(model, "denoise", small_memory)
    PromptServer.instance.texts.clear()
    latent, _ = TemporalSampler().sample(host_fye, ref, aligned, 2, 3.5, 1, "DDIM (diffusers)", 8, 2, "pyramid",
                                         unique_id="7")
    assert latent["samples"].shape[0] == 10
    texts = [t for node, t in PromptServer.instance.texts if node == "7"]
    assert texts and "window of 8 frames: retrying with 4" in texts[0]
    assert math.isnan(TemporalSampler.IS_CHANGED(unique_id="7"))  # the host runs it again next time
    assert TemporalSampler.IS_CHANGED(unique_id="8") is False
    TemporalSampler().sample(host_fye, ref, aligned, 2, 3.5, 1, "DDIM (diffusers)", 4, 1, "pyramid", unique_id="7")
    assert TemporalSampler.IS_CHANGED(unique_id="7") is False  # a run as asked: cached as usual again
    with pytest.raises(FYEError, match="on_out_of_memory"):
        TemporalSampler().sample(host_fye, ref, aligned, 2, 3.5, 1, "DDIM (diffusers)", 8, 2, "pyramid",
                                 on_out_of_memory="stop", unique_id="7")
