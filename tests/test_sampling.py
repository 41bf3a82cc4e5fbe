"""The temporal sampler and the progressive long-video stage, on a seeded tiny model and real inputs."""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import pytest
import torch

from emoji_model import FYEError, InvalidRequestError
from emoji_model.pipeline import (
    conditioning,
    decode_frames,
    generate_latents,
    landmark_features,
    progressive_latents,
    with_oom_retry,
)
from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
from emoji_model.runtime import StandaloneRuntime
from emoji_model.sampling import (
    SCHEDULERS,
    Conditioning,
    SamplerSettings,
    context_windows,
    fusion_weights,
    initial_noise,
    keyframe_indices,
    make_denoiser,
    make_scheduler,
    sample_windows,
)
from tiny_fye import random_model, tiny_clip, tiny_config, tiny_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64  # pixels; 8x8 latents


@functools.cache
def _model(cover: int = 0):
    return random_model(tiny_config(cover_channels=cover), seed=3)


@functools.cache
def _vae():
    return tiny_vae()


@functools.cache
def _reference(cover: int = 0):
    from skimage import data

    return encode_reference(_model(cover), data.astronaut(), vae_encoder_from_diffusers(_vae()),
                            clip_encoder_from_transformers(tiny_clip()), size=(SIZE, SIZE), device="cpu")


@functools.cache
def _controls() -> np.ndarray:
    """Control renders of the astronaut aligned to the real driving video, at 64x64: uint8 [97,64,64,3]."""
    from emoji_model.align import align_motion
    from emoji_model.landmarks import render_controls
    from landmark_inputs import astronaut_track, driving_track

    return render_controls(align_motion(astronaut_track(), driving_track()), (SIZE, SIZE))


def _settings(**kw) -> SamplerSettings:
    base = dict(steps=3, cfg=3.5, window=8, overlap=2, seed=7)
    base.update(kw)
    return SamplerSettings(**base)


# -- windows --------------------------------------------------------------------------------

@pytest.mark.parametrize("frames,window,overlap", [(1, 16, 4), (16, 16, 4), (17, 16, 4), (97, 16, 4),
                                                   (40, 8, 0), (33, 32, 8), (256, 16, 15)])
def test_every_frame_is_covered_by_a_window(frames, window, overlap):
    starts_seen = set()
    for step in range(8):
        windows = context_windows(frames, window, overlap, step)
        covered = sorted({i for w in windows for i in w})
        assert covered == list(range(frames))
        for w in windows:
            assert len(w) == min(window, frames) and w == list(range(w[0], w[0] + len(w)))
        starts_seen.add(tuple(w[0] for w in windows))
    if frames - window > window - overlap > 1:  # room for the seams to move
        assert len(starts_seen) > 1, "window seams never move between steps"


def test_fusion_weights():
    assert fusion_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert fusion_weights(4, "flat").tolist() == [1, 1, 1, 1]
    with pytest.raises(InvalidRequestError):
        fusion_weights(4, "gaussian")


def test_keyframes_include_both_ends():
    assert keyframe_indices(97, 15) == [0, 15, 30, 45, 60, 75, 90, 96]
    assert keyframe_indices(16, 15) == [0, 15]
    assert keyframe_indices(1, 4) == [0]


# -- sampling -------------------------------------------------------------------------------

def test_single_window_track_equals_the_direct_denoiser():
    """A track that fits one window: the fused prediction is the denoiser's own output."""
    model, ref, ctrl = _model(), _reference(), _controls()[:6]
    feats = landmark_features(model, ctrl, "cpu", torch.float32)
    den = make_denoiser(model, conditioning(ref, feats, 3.5), 3.5)
    seen = []

    def recording(x, t, frames):
        out = den(x, t, frames)
        seen.append((x.clone(), t, list(frames), out))
        return out

    sched = make_scheduler()
    sched.set_timesteps(2)
    lat = initial_noise((1, 4, 6, 8, 8), 0, "cpu", torch.float32)
    out = sample_windows(recording, lat.clone(), sched, window=8, overlap=2)
    assert [s[2] for s in seen] == [list(range(6))] * 2
    sched2 = make_scheduler()
    sched2.set_timesteps(2)
    x = lat.clone()
    for t in sched2.timesteps:
        x = sched2.step(den(sched2.scale_model_input(x, t), t, range(6)), t, x).prev_sample
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def _released_alphas_cumprod() -> np.ndarray:
    """ᾱ_t of the released schedule by hand (float64): scaled-linear betas, then zero terminal SNR.

    Lin et al. 2024, algorithm 1: shift √ᾱ so that its last value is 0 and scale it so that its first
    value is unchanged.
    """
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root ** 2


@pytest.mark.parametrize("window,overlap", [(8, 2), (4, 2)])
def test_one_ddim_v_prediction_step_follows_the_ddim_equations(window, overlap):
    """One released DDIM step (v-prediction, η = 0, trailing spacing), computed here from the equations.

    x̂₀ = √ᾱ_t·x_t − √(1−ᾱ_t)·v,  ε̂ = √ᾱ_t·v + √(1−ᾱ_t)·x_t,  x_{t−Δ} = √ᾱ_{t−Δ}·x̂₀ + √(1−ᾱ_{t−Δ})·ε̂,
    Δ = 1000 // steps. A prediction that is the same function of each frame fuses to itself, so the
    windowed run (window 4) must give the same step.
    """
    steps, k = 30, 10
    sched = make_scheduler()
    sched.set_timesteps(steps)
    trailing = np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64) - 1
    assert sched.timesteps.tolist() == trailing.tolist()
    t, prev = int(trailing[k]), int(trailing[k]) - 1000 // steps
    sched.timesteps = sched.timesteps[k:k + 1]  # the loop runs exactly this one step
    x = initial_noise((1, 4, 6, 8, 8), 5, "cpu", torch.float32)
    gain = torch.linspace(0.2, 0.7, 6)[None, None, :, None, None]

    def velocity(z, step, frames):  # v = a_f·x − 0.3, per frame f
        return gain[:, :, list(frames)] * z - 0.3

    out = sample_windows(velocity, x.clone(), sched, window=window, overlap=overlap)
    abar = _released_alphas_cumprod()
    a_t, a_prev = abar[t], abar[prev]
    xt = x.double().numpy()
    v = gain.double().numpy() * xt - 0.3
    x0 = np.sqrt(a_t) * xt - np.sqrt(1 - a_t) * v
    eps = np.sqrt(a_t) * v + np.sqrt(1 - a_t) * xt
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    assert (t, prev) == (666, 633)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=2e-5)


class _TwoBranches(torch.nn.Module):
    """A stand-in model whose unconditional row predicts 0.5·x and conditional row 0.5·x + 1 − 0.1·t/1000."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def denoise(self, sample, timestep, prompt_tokens, banks, **kwargs):
        self.calls.append((sample.shape[0], timestep.tolist(), kwargs["landmark_features"].shape))
        out = 0.5 * sample.clone()
        if sample.shape[0] == 2:
            out[1] += 1 - 0.1 * timestep[1] / 1000
        else:
            out += 1 - 0.1 * timestep[0] / 1000
        return out


def test_classifier_free_guidance_combines_the_branches_by_the_formula():
    """ε̂ = ε(∅) + s·(ε(c) − ε(∅)) on hand-set branch outputs, and on the tiny model's two branches."""
    model = _TwoBranches()
    feats = torch.zeros(1, 32, 6, 8, 8)
    both = Conditioning(torch.zeros(2, 3, 32), [], feats)
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = make_denoiser(model, both, 3.5)(x, torch.tensor(500), [1, 2, 4])
    torch.testing.assert_close(out, 0.5 * x + 3.5 * (1 - 0.05), rtol=0, atol=1e-6)  # u + 3.5·(c − u)
    cond_only = Conditioning(torch.zeros(1, 3, 32), [], feats, guided=False)
    torch.testing.assert_close(make_denoiser(model, cond_only, 3.5)(x, torch.tensor(500), [0, 1, 2]),
                               0.5 * x + 0.95, rtol=0, atol=1e-6)
    assert model.calls == [(2, [500, 500], (2, 32, 3, 8, 8)), (1, [500], (1, 32, 3, 8, 8))]

    # The tiny model: each branch run on its own, combined here.
    tiny, ref, ctrl = _model(), _reference(), _controls()[:4]
    feats = landmark_features(tiny, ctrl, "cpu", torch.float32)
    cond = conditioning(ref, feats, 3.5)
    x = initial_noise((1, 4, 4, 8, 8), 2, "cpu", torch.float32)
    t = torch.tensor([700])
    with torch.no_grad():
        guided_out = make_denoiser(tiny, cond, 3.5)(x, t, range(4))
        branch = [tiny.denoise(x, t, cond.prompt_tokens[i:i + 1], [b[i:i + 1] for b in cond.banks], feats,
                               bank_mask=None if cond.bank_mask is None else cond.bank_mask[i:i + 1])
                  for i in (0, 1)]
    expected = branch[0] + 3.5 * (branch[1] - branch[0])
    assert (branch[1] - branch[0]).abs().mean() > 1e-3  # the reference makes a difference
    # Batched and one-row forwards round differently (~1e-6), which guidance multiplies by 3.5.
    torch.testing.assert_close(guided_out, expected, rtol=0, atol=5e-5)


def test_windowed_fusion_equals_one_window_for_the_spatial_path():
    """Per-frame outputs (temporal layers off) make overlapping windows fuse to the one-window result."""
    model, ref, ctrl = _model(), _reference(), _controls()[:16]
    whole = generate_latents(model, ref, ctrl, _settings(window=16, temporal=False), device="cpu")
    for fusion in ("pyramid", "flat"):
        windowed = generate_latents(model, ref, ctrl, _settings(window=6, overlap=3, temporal=False,
                                                                 fusion=fusion), device="cpu")
        torch.testing.assert_close(windowed, whole, rtol=1e-5, atol=5e-5)  # float32 rounding, and one thread sums in another order


def test_same_seed_same_frames_and_temporal_layers_matter():
    model, ref, ctrl = _model(), _reference(), _controls()[:12]
    a = generate_latents(model, ref, ctrl, _settings(), device="cpu")
    b = generate_latents(model, ref, ctrl, _settings(), device="cpu")
    c = generate_latents(model, ref, ctrl, _settings(seed=8), device="cpu")
    d = generate_latents(model, ref, ctrl, _settings(temporal=False), device="cpu")
    assert a.shape == (12, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05
    assert (a - d).abs().mean() > 1e-4
    # The landmarks steer the frames (runs are bit-exact, so any difference is their effect).
    e = generate_latents(model, ref, np.zeros_like(ctrl), _settings(), device="cpu")
    assert (a - e).abs().mean() > 1e-5


def test_guidance_scale_one_runs_only_the_conditional_branch():
    model, ref, ctrl = _model(), _reference(), _controls()[:4]
    calls = []
    original = model.denoise

    def spy(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    model.denoise = spy
    try:
        generate_latents(model, ref, ctrl, _settings(cfg=1.0, steps=2), device="cpu")
        generate_latents(model, ref, ctrl, _settings(cfg=3.5, steps=2), device="cpu")
    finally:
        del model.denoise
    assert calls == [1, 1, 2, 2]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples(name):
    out = generate_latents(_model(), _reference(), _controls()[:4], _settings(scheduler=name, steps=4),
                           device="cpu")
    assert torch.isfinite(out).all() and 0.05 < out.std() < 20


def test_scheduler_settings_follow_the_prediction_type():
    ddim = make_scheduler()
    assert ddim.config.prediction_type == "v_prediction" and ddim.config.rescale_betas_zero_snr
    assert ddim.config.timestep_spacing == "trailing"
    ddim.set_timesteps(30)
    assert int(ddim.timesteps[0]) == 999 and len(ddim.timesteps) == 30
    assert float(ddim.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-8)  # zero terminal SNR
    eps = make_scheduler("dpmpp_2m", "epsilon")
    assert not eps.config.rescale_betas_zero_snr
    with pytest.raises(InvalidRequestError, match="v-prediction"):
        make_scheduler("ddim", "epsilon", zero_terminal_snr=True)


# -- known frames and the progressive strategy ----------------------------------------------

def _stage_one(model, ref, ctrl, settings, keys):
    """Stage 1 of the progressive strategy rebuilt from the public pieces."""
    feats = landmark_features(model, ctrl, "cpu", torch.float32)
    noise = initial_noise((1, 4, len(ctrl), 8, 8), settings.seed, "cpu", torch.float32)
    sched = make_scheduler(settings.scheduler)
    sched.set_timesteps(settings.steps)
    den = make_denoiser(model, conditioning(ref, feats[:, :, keys], settings.cfg), settings.cfg)
    return sample_windows(den, noise[:, :, keys] * sched.init_noise_sigma, sched, window=settings.window,
                          overlap=settings.overlap, seed=settings.seed)[0].permute(1, 0, 2, 3)


@pytest.mark.parametrize("cover", [0, 5])
def test_progressive_reproduces_its_keyframes(cover):
    model, ref, ctrl = _model(cover), _reference(cover), _controls()[:30]
    settings = _settings(window=8, overlap=2)
    out = progressive_latents(model, ref, ctrl, settings, keyframe_stride=7, device="cpu")
    keys = keyframe_indices(30, 7)
    assert keys == [0, 7, 14, 21, 28, 29]
    stage1 = _stage_one(model, ref, ctrl, settings, keys)
    assert torch.equal(out[keys], stage1)
    assert torch.isfinite(out).all()
    between = [i for i in range(30) if i not in keys]
    assert (out[between] - out[between].mean()).std() > 0.05


def test_covered_latent_input_steers_the_gap_frames():
    """Stage 2 through the covered-latent channels: the keyframes given reach the gap frames."""
    model, ref, ctrl = _model(5), _reference(5), _controls()[:8]
    feats = landmark_features(model, ctrl, "cpu", torch.float32)
    noise = initial_noise((1, 4, 8, 8, 8), 2, "cpu", torch.float32)
    mask = torch.ones(1, 1, 8, 8, 8)
    mask[:, :, [0, 7]] = 0  # 1 = covered (unknown)

    def gap(first_key):
        covered = torch.zeros(1, 4, 8, 8, 8)
        covered[0, :, 0], covered[0, :, 7] = first_key, torch.ones(4, 8, 8)
        den = make_denoiser(model, conditioning(ref, feats, 3.5), 3.5, covered=covered, cover_mask=mask)
        sched = make_scheduler()
        sched.set_timesteps(3)
        known = {0: first_key, 7: torch.ones(4, 8, 8)}
        return sample_windows(den, noise.clone(), sched, window=8, overlap=2, known=known, replace_known=False)

    a, b = gap(torch.zeros(4, 8, 8)), gap(torch.full((4, 8, 8), 2.0))
    assert torch.equal(a[0, :, 7], b[0, :, 7]) and torch.equal(b[0, :, 0], torch.full((4, 8, 8), 2.0))
    assert (a[:, :, 1:7] - b[:, :, 1:7]).abs().mean() > 1e-3
    conv = model.unet.conv_in
    saved = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight[:, 4:8] = 0  # a checkpoint whose covered-latent weights are still zero
    try:
        a0, b0 = gap(torch.zeros(4, 8, 8)), gap(torch.full((4, 8, 8), 2.0))
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved)
    assert torch.equal(a0[:, :, 1:7], b0[:, :, 1:7])


def test_known_frame_replacement_holds_known_frames():
    model, ref, ctrl = _model(), _reference(), _controls()[:8]
    feats = landmark_features(model, ctrl, "cpu", torch.float32)
    den = make_denoiser(model, conditioning(ref, feats, 3.5), 3.5)
    sched = make_scheduler()
    sched.set_timesteps(3)
    known = {0: torch.randn(4, 8, 8), 7: torch.randn(4, 8, 8)}
    seen = []

    def recording(x, t, frames):
        seen.append(x[0, :, 0].clone())
        return den(x, t, frames)

    noise = initial_noise((1, 4, 8, 8, 8), 1, "cpu", torch.float32)
    out = sample_windows(recording, noise.clone(), sched, window=8, overlap=2, known=known, noise=noise)
    assert torch.equal(out[0, :, 0], known[0]) and torch.equal(out[0, :, 7], known[7])
    # At the last step the known frame entered the model noised to that step's level.
    t = sched.timesteps[-1]
    expected = sched.add_noise(known[0][None], noise[:, :, 0], t.reshape(1))[0]
    torch.testing.assert_close(seen[-1], expected)


def test_noise_of_a_frame_does_not_depend_on_the_track():
    full = initial_noise((1, 4, 30, 8, 8), 3, "cpu", torch.float32)
    some = initial_noise((1, 4, 3, 8, 8), 3, "cpu", torch.float32, frames=[2, 17, 29])
    assert torch.equal(full[:, :, [2, 17, 29]], some)
    assert not torch.equal(full, initial_noise((1, 4, 30, 8, 8), 4, "cpu", torch.float32))
    assert abs(float(full.std()) - 1) < 0.05


def test_shared_noise_mixes_one_common_draw_into_every_frame():
    own = initial_noise((1, 4, 40, 8, 8), 3, "cpu", torch.float32)
    same = initial_noise((1, 4, 40, 8, 8), 3, "cpu", torch.float32, share=1.0)
    half = initial_noise((1, 4, 40, 8, 8), 3, "cpu", torch.float32, share=0.5)
    assert all(torch.equal(same[:, :, 0], same[:, :, k]) for k in range(40))  # one draw for all frames
    common = same[:, :, :1]
    torch.testing.assert_close(half, 0.5 ** 0.5 * common + 0.5 ** 0.5 * own)
    assert abs(float(half.std()) - 1) < 0.05  # still standard normal per frame
    corr = np.corrcoef(half[0, :, 0].flatten(), half[0, :, 7].flatten())[0, 1]
    assert abs(corr - 0.5) < 0.12  # two frames share half their variance
    some = initial_noise((1, 4, 2, 8, 8), 3, "cpu", torch.float32, frames=[5, 9], share=0.5)
    assert torch.equal(some, half[:, :, [5, 9]])  # a frame's noise still ignores the track length
    with pytest.raises(InvalidRequestError, match="noise_share"):
        SamplerSettings(noise_share=1.5).validate(16)


def test_shared_noise_works_with_a_given_noise_and_with_a_generator():
    from emoji_model.pipeline import starting_noise

    model, ref, ctrl = _model(), _reference(), _controls()[:12]
    shape = (1, 4, len(ctrl), 8, 8)
    shared, plain = _settings(steps=2, noise_share=0.5), _settings(steps=2)
    # the settings' share over the seeded per-frame noise is that noise mixed and given explicitly
    mixed = initial_noise(shape, shared.seed, "cpu", torch.float32, share=0.5)
    for run in (generate_latents, progressive_latents):
        torch.testing.assert_close(run(model, ref, ctrl, shared, device="cpu"),
                                   run(model, ref, ctrl, plain, device="cpu", noise=mixed))
    # a generator draws the track's noise (the released order), then the common draw when shared
    def gen():
        return torch.Generator().manual_seed(11)

    g = gen()
    track, common = torch.randn(shape, generator=g), torch.randn((1, 4, 1, 8, 8), generator=g)
    assert torch.equal(starting_noise(shape, 0, "cpu", generator=gen()), track)
    torch.testing.assert_close(starting_noise(shape, 0, "cpu", generator=gen(), share=0.5),
                               0.5 ** 0.5 * common + 0.5 ** 0.5 * track)
    assert torch.equal(starting_noise(shape, 0, "cpu", noise=track, share=0.5), track)  # given: used as is
    for run in (generate_latents, progressive_latents):
        with_generator = run(model, ref, ctrl, shared, device="cpu", generator=gen())
        torch.testing.assert_close(with_generator, run(model, ref, ctrl, plain, device="cpu",
                                                       noise=0.5 ** 0.5 * common + 0.5 ** 0.5 * track))
        assert not torch.allclose(with_generator, run(model, ref, ctrl, plain, device="cpu", generator=gen()))


def test_progressive_takes_lazily_rendered_controls():
    from emoji_model.align import align_motion
    from emoji_model.pipeline import LazyControls
    from landmark_inputs import astronaut_track, driving_track

    model, ref = _model(), _reference()
    track = align_motion(astronaut_track(), driving_track())[:12]
    lazy = LazyControls(track, (SIZE, SIZE))
    assert lazy.shape == (12, SIZE, SIZE, 3) and np.array_equal(np.asarray(lazy), _controls()[:12])
    s = _settings(window=8, overlap=2, steps=2)
    torch.testing.assert_close(progressive_latents(model, ref, lazy, s, device="cpu"),
                               progressive_latents(model, ref, _controls()[:12], s, device="cpu"), rtol=0, atol=0)


def test_progressive_and_plain_runs_differ_but_both_are_deterministic():
    model, ref, ctrl = _model(), _reference(), _controls()[:12]
    s = _settings(window=8, overlap=2, steps=2)
    p1 = progressive_latents(model, ref, ctrl, s, device="cpu")
    p2 = progressive_latents(model, ref, ctrl, s, device="cpu")
    assert torch.equal(p1, p2)
    assert not torch.equal(p1, generate_latents(model, ref, ctrl, s, device="cpu"))


# -- the host's interrupt and bad requests --------------------------------------------------

class Interrupted(Exception):
    pass


class InterruptingRuntime(StandaloneRuntime):
    def __init__(self, after: int):
        super().__init__(device="cpu")
        self.after = after
        self.calls = 0

    def check_interrupt(self) -> None:
        self.calls += 1
        if self.calls > self.after:
            raise Interrupted()


def test_host_interrupt_stops_within_one_step():
    model, ref, ctrl = _model(), _reference(), _controls()[:20]
    calls = []
    original = model.denoise

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.denoise = spy
    rt = InterruptingRuntime(after=4)
    try:
        with pytest.raises(Interrupted):
            generate_latents(model, ref, ctrl, _settings(steps=10), runtime=rt, device="cpu")
    finally:
        del model.denoise
    # stopped inside the first evaluation: the window's check, then three of the UNet's block checks
    assert len(calls) == 1 and rt.calls == 5


def test_invalid_requests_are_explained():
    model, ref, ctrl = _model(), _reference(), _controls()[:8]
    with pytest.raises(InvalidRequestError, match="zero frames"):
        generate_latents(model, ref, ctrl[:0], _settings(), device="cpu")
    with pytest.raises(InvalidRequestError, match="size mismatch"):
        generate_latents(model, ref, np.zeros((4, 72, 64, 3), np.uint8), _settings(), device="cpu")
    with pytest.raises(InvalidRequestError, match="steps"):
        generate_latents(model, ref, ctrl, _settings(steps=0), device="cpu")
    with pytest.raises(InvalidRequestError, match="position encoding"):
        generate_latents(model, ref, ctrl, _settings(window=model.max_frames + 1), device="cpu")
    with pytest.raises(InvalidRequestError, match="overlap"):
        generate_latents(model, ref, ctrl, _settings(window=4, overlap=4), device="cpu")
    with pytest.raises(InvalidRequestError, match="stride"):
        progressive_latents(model, ref, ctrl, _settings(window=8), keyframe_stride=8, device="cpu")
    with pytest.raises(InvalidRequestError, match="covered-latent"):
        progressive_latents(model, ref, ctrl, _settings(), known_mode="covered", device="cpu")


def test_out_of_memory_retries_with_smaller_windows(caplog):
    tried = []

    def run(settings):
        tried.append(settings.window)
        if settings.window > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    with caplog.at_level(logging.WARNING, logger="emoji_model"):
        assert with_oom_retry(run, _settings(window=16, overlap=4)) == "done"
    assert tried == [16, 8, 4]
    assert "retrying with 8" in caplog.text

    def always(settings):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(FYEError, match="out of memory even with a window of 2"):
        with_oom_retry(always, _settings(window=8, overlap=2))


def test_decoding_streams_in_chunks():
    vae = _vae()
    lat = generate_latents(_model(), _reference(), _controls()[:5], _settings(steps=2), device="cpu")
    sizes = []

    def decode(raw):
        sizes.append(raw.shape[0])
        return (vae.decode(raw).sample.permute(0, 2, 3, 1) + 1) / 2

    frames = np.concatenate(list(decode_frames(decode, lat, chunk=2)))
    assert sizes == [2, 2, 1]
    assert frames.shape == (5, SIZE, SIZE, 3) and frames.dtype == np.uint8


def test_the_largest_seed_the_node_offers_samples():
    out = generate_latents(_model(), _reference(), _controls()[:4], _settings(seed=0xFFFFFFFFFFFFFFFF,
                                                                               scheduler="euler_ancestral"),
                           device="cpu")
    assert torch.isfinite(out).all()


def test_a_bf16_model_keeps_the_diffusion_state_in_float32():
    """The networks run in bf16, the latents and scheduler steps stay float32 (as ComfyUI's samplers do)."""
    import copy

    model32, ref32, ctrl = _model(), _reference(), _controls()[:6]
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    ref16 = ref32.to(dtype=torch.bfloat16)
    a = generate_latents(model32, ref32, ctrl, _settings(), device="cpu")
    b = generate_latents(model16, ref16, ctrl, _settings(), device="cpu", dtype=torch.bfloat16)
    assert b.dtype == torch.float32
    assert (a - b).abs().mean() / a.abs().mean() < 0.05


def test_the_scheduler_follows_the_checkpoint_schedule():
    from dataclasses import replace

    from emoji_model.pipeline import make_model_scheduler

    model = _model()
    assert make_model_scheduler(model, _settings()).config.beta_end == pytest.approx(0.012)
    stored = dict(model.config.scheduler, beta_end=0.02, rescale_betas_zero_snr=False)
    other = type("M", (), {"config": replace(model.config, scheduler=stored)})()
    sched = make_model_scheduler(other, _settings())
    assert sched.config.beta_end == pytest.approx(0.02) and not sched.config.rescale_betas_zero_snr


def test_lazy_controls_index_like_an_array():
    from emoji_model.align import align_motion
    from emoji_model.pipeline import LazyControls
    from landmark_inputs import astronaut_track, driving_track

    lazy = LazyControls(align_motion(astronaut_track(), driving_track())[:5], (SIZE, SIZE))
    full = np.asarray(lazy)
    assert lazy[3].shape == (SIZE, SIZE, 3) and np.array_equal(lazy[3], full[3])
    assert np.array_equal(lazy[1:4], full[1:4]) and np.array_equal(lazy[[0, 4]], full[[0, 4]])
