"""The inference pipeline: landmark features → (progressive) windowed sampling → streamed decoding.

`generate_latents` samples a track whose frames all share one noise schedule (with context windows
when it is longer than the temporal window); `progressive_latents` is the paper's long-video
strategy (section 4.3): keyframes first, then every gap between two keyframes with both given.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .constants import KNOWN_MODES, LATENT_SCALE
from .errors import FYEError, InvalidRequestError
from .runtime import resolve
from .sampling import (
    Conditioning,
    SamplerSettings,
    count_windows,
    initial_noise,
    keyframe_indices,
    make_denoiser,
    make_scheduler,
    sample_windows,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)


def _to_control_tensor(control, device, dtype) -> torch.Tensor:
    """Control renders (uint8 [F,H,W,3] or float [F,H,W,3] 0..1) → [1,3,F,H,W] in 0..1."""
    import numpy as np
    import torch

    if isinstance(control, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(control))
    else:
        t = control
    if t.ndim != 4 or t.shape[-1] != 3:
        raise InvalidRequestError(f"control renders must be [frames, H, W, 3], got shape {tuple(t.shape)}")
    t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
    return t.permute(3, 0, 1, 2)[None].to(device, dtype)  # "f h w c -> 1 c f h w"


def landmark_features(model, control, device, dtype, chunk: int = 16, store=None) -> torch.Tensor:
    """Landmark-guider features [1,320,F,h,w] of every control frame, computed once per video.

    Computed ``chunk`` frames at a time on ``device``; kept on ``store`` (default ``device``), so a
    long track's features can wait in host memory while the accelerator holds one window.
    """
    import torch

    num = len(control)
    if num == 0:
        raise InvalidRequestError("the landmark track has zero frames")
    parts = []
    with torch.no_grad():
        for s in range(0, num, chunk):
            feats = model.encode_landmarks(_to_control_tensor(control[s:s + chunk], device, dtype))
            parts.append(feats.to(store or device))
    return torch.cat(parts, dim=2)


# Landmark-guider features kept between windows: about 200 frames at 512 px in fp16 (2.6 MB a frame), 100 in
# float32; a longer track encodes the frames it forgot again when a window needs them.
FEATURE_STORE_BYTES = 512 * 2 ** 20


class LandmarkFeatures:
    """Landmark-guider features of a track, computed when a window first asks for a frame, once per frame.

    ``control`` gives control renders uint8 [n,H,W,3] when indexed by a list of frames (an array, or
    :class:`LazyControls`, which draws them then): a frame is rendered and encoded once, in chunks of
    ``chunk`` frames on ``device``, and kept on ``store`` (default ``device``; the host, so that the
    accelerator holds only the window) until :meth:`release`. At most ``keep_bytes`` of features are kept:
    past that the frames asked for longest ago are forgotten and encoded again when a window needs them,
    so a long track at 512 px (2.6 MB of fp16 features a frame) costs a bounded store, not one per frame.
    """

    def __init__(self, model, control, device, dtype, store=None, chunk: int = 16,
                 keep_bytes: int | None = None):
        if len(control) == 0:
            raise InvalidRequestError("the landmark track has zero frames")
        self.model, self.control, self.device, self.dtype = model, control, device, dtype
        self.store, self.chunk = store or device, chunk
        self.keep_bytes = FEATURE_STORE_BYTES if keep_bytes is None else keep_bytes
        self.frames: OrderedDict[int, torch.Tensor] = OrderedDict()  # frame -> [C,h,w], least recently asked first
        self.encoded = 0  # frames encoded so far (a frame forgotten and asked again counts twice)

    def __len__(self) -> int:
        return len(self.control)

    def window(self, frames) -> torch.Tensor:
        """Features [1,C,W,h,w] of ``frames`` on ``device``."""
        import torch

        frames = [int(i) for i in frames]
        missing = list(dict.fromkeys(i for i in frames if i not in self.frames))
        with torch.no_grad():
            for s in range(0, len(missing), self.chunk):
                part = missing[s:s + self.chunk]
                feats = self.model.encode_landmarks(_to_control_tensor(self.control[part], self.device, self.dtype))
                self.encoded += len(part)
                for k, i in enumerate(part):
                    self.frames[i] = feats[0, :, k].to(self.store)
        out = torch.stack([self.frames[i] for i in frames], dim=1)[None].to(self.device)
        for i in frames:
            self.frames.move_to_end(i)
        self._forget(keep=set(frames))
        return out

    def stored_bytes(self) -> int:
        """Bytes of the features kept now."""
        return sum(t.numel() * t.element_size() for t in self.frames.values())

    def _forget(self, keep: set[int]) -> None:
        if not self.frames:
            return
        per_frame = next(iter(self.frames.values()))
        limit = max(len(keep), self.keep_bytes // max(1, per_frame.numel() * per_frame.element_size()))
        while len(self.frames) > limit:
            self.frames.popitem(last=False)

    def of(self, frames) -> _FeatureSubset:
        """The features of a stage: window positions 0..len(frames)-1 are the track's ``frames``."""
        return _FeatureSubset(self, [int(i) for i in frames])

    def release(self, frames) -> None:
        """Forget the features of ``frames`` (no later stage needs them)."""
        for i in frames:
            self.frames.pop(int(i), None)


class _FeatureSubset:
    def __init__(self, features: LandmarkFeatures, frames: list[int]):
        self.features, self.frames = features, frames

    def window(self, positions) -> torch.Tensor:
        return self.features.window([self.frames[i] for i in positions])


def make_model_scheduler(model, settings: SamplerSettings):
    """The sampler's scheduler with the noise schedule stored in the checkpoint's config."""
    stored = dict(getattr(model.config, "scheduler", None) or {})
    return make_scheduler(settings.scheduler, model.config.prediction_type,
                          stored.get("rescale_betas_zero_snr"), betas=stored)


# Peak bytes of live tensors in one denoiser call, per (guidance row × frame × latent pixel × channel of the
# first UNet level × byte of the dtype): 22.1–23.3 measured over the tiny config and SD-1.5's structure at a
# tenth of its widths, 8–32 latent pixels a side, 4–16 frames (tests/test_sampling_host.py pins it).
ACTIVATION_BYTES = 23.3
ACTIVATION_MARGIN = 1.25  # the guider's features, the fused window's buffers, allocator slack


def activation_memory(config, frames: int, latent_hw: tuple[int, int], guided: bool, dtype) -> int:
    """Bytes of activations one window of sampling needs besides the weights (for the host's model management).

    window × latent size × guidance batch, scaled by the UNet's first width and the dtype's size.
    """
    import torch

    rows = 2 if guided else 1
    h, w = latent_hw
    elements = rows * frames * h * w * config.block_out_channels[0]
    return int(elements * torch.empty((), dtype=dtype).element_size() * ACTIVATION_BYTES * ACTIVATION_MARGIN)


def block_checks(runtime) -> Callable[[str], None]:
    """``on_block`` for the UNet walk: ask the runtime for Cancel after every resnet, transformer and temporal module.

    A denoising step over a window can take minutes at SD-1.5 size on a CPU; with these checks Cancel
    takes effect within one of its blocks.
    """

    def check(name: str) -> None:
        runtime.check_interrupt()

    return check


def previewing(scheduler, runtime):
    """``scheduler`` whose every step shows its clean-sample estimate through ``runtime.preview``."""
    step = scheduler.step

    @functools.wraps(step)  # keeps step's signature: the sampler asks it which arguments it takes
    def step_and_preview(*args, **kwargs):
        out = step(*args, **kwargs)
        estimate = getattr(out, "pred_original_sample", None)
        runtime.preview(out.prev_sample if estimate is None else estimate)
        return out

    scheduler.step = step_and_preview
    return scheduler


def conditioning(reference, features, cfg: float, model=None) -> Conditioning:
    """Stack the reference's unconditional and conditional branches for one batched forward.

    With ``model``, the banks' and prompt tokens' projections are prepared here, once for the video.
    """
    guided = cfg != 1.0
    tokens, banks, bank_mask = reference.batch(guidance=guided)
    context = None
    if model is not None and hasattr(model, "prepare_reference"):
        context = model.prepare_reference(tokens, banks, bank_mask)
    return Conditioning(tokens, banks, features, bank_mask=bank_mask, guided=guided, context=context)


def _check_sizes(model, reference, control) -> tuple[int, int]:
    """Latent height and width, after checking the reference and the control renders agree."""
    lat = reference.latent
    h, w = int(control.shape[1]), int(control.shape[2])
    if h % 8 or w % 8:
        raise InvalidRequestError(f"control renders must have sides divisible by 8, got {w}x{h}")
    if (lat.shape[-2], lat.shape[-1]) != (h // 8, w // 8):
        raise InvalidRequestError(
            f"size mismatch: the reference was encoded at {lat.shape[-1] * 8}x{lat.shape[-2] * 8} but the "
            f"landmark renders are {w}x{h}; render the aligned landmarks at the reference size")
    return h // 8, w // 8


def check_track_matches_reference(track, reference) -> None:
    """Reject an aligned track made for another portrait, or another framing of it, than ``reference``.

    Both record their portrait (emoji_model.provenance): a track aligned to a crop but sampled with the
    full image encoded (or the other way round) would put the face in the wrong place.
    """
    ref_h, ref_w = reference.size
    track_w, track_h = track.size
    if abs(track_w / track_h - ref_w / ref_h) > 0.02 * max(track_w / track_h, ref_w / ref_h):
        raise InvalidRequestError(
            f"the face track belongs to a {track_w}x{track_h} frame but the reference was encoded at "
            f"{ref_w}x{ref_h}: encode the reference at the aspect of the portrait the track was aligned to")
    mine, theirs = getattr(track, "source", None), getattr(reference, "source", None)
    if mine is not None and theirs is not None:
        why = theirs.differences(mine)
        if why:
            raise InvalidRequestError(
                f"the face track was aligned to another portrait ({mine.describe()}) than the one the "
                f"reference was encoded from ({theirs.describe()}; {', '.join(why)}). Connect the same image "
                "to Encode Reference Portrait and to the reference landmarks (Crop Face's image and faces "
                "go together).")


def starting_noise(shape: tuple[int, ...], seed: int, device, *, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, frames: list[int] | None = None,
                   share: float = 0.0) -> torch.Tensor:
    """The starting noise [1,4,n,h,w] (float32) of the ``frames`` of a track of ``shape`` = (1,4,F,h,w).

    ``noise`` over the whole track ([1,4,F,h,w] as diffusers' video pipelines, or [F,4,h,w] as the latents
    this module returns) is used as given; else ``generator`` draws the track's noise in one
    ``torch.randn`` call, as diffusers' pipelines (and the released one) do; else every frame gets its own
    seeded noise (:func:`~emoji_model.sampling.initial_noise`), whatever the track length. ``share``
    (SamplerSettings.noise_share) mixes one draw common to all frames into the noise drawn here, with the
    same weights as ``initial_noise``; a given ``noise`` is already what the caller wants and stays as is.
    """
    import torch

    if noise is None and generator is not None:
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        if share:  # drawn after the track's noise: share 0 keeps the released draw order
            common = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, device=generator.device,
                                 dtype=torch.float32)
            noise = (share ** 0.5) * common + ((1 - share) ** 0.5) * noise
    if noise is None:
        count = len(frames) if frames is not None else shape[2]
        return initial_noise((1, shape[1], count, *shape[3:]), seed, device, torch.float32, frames, share=share)
    if noise.ndim == 4:
        noise = noise.permute(1, 0, 2, 3)[None]  # "f c h w -> 1 c f h w"
    if tuple(noise.shape) != tuple(shape):
        raise InvalidRequestError(f"starting noise must be {tuple(shape)} ([1,4,frames,h,w]); got {tuple(noise.shape)}")
    if frames is not None:
        noise = noise[:, :, frames]
    return noise.to(device=device, dtype=torch.float32)


def _prepare(model, reference, control, settings: SamplerSettings, device, dtype, runtime):
    """Validate a sampling request; the runtime, device, dtype and (frames, latent h, latent w)."""
    import torch

    rt = resolve(runtime)
    settings.validate(model.max_frames)
    h, w = _check_sizes(model, reference, control)
    return rt, device or rt.torch_device(), dtype or torch.float32, (len(control), h, w)


def generate_latents(model, reference, control, settings: SamplerSettings = SamplerSettings(), *,
                     device=None, dtype=None, runtime: StandaloneRuntime | None = None,
                     noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample every frame of a track together (windows when longer than ``settings.window``).

    Returns scaled float32 latents [F,4,h,w] (divide by LATENT_SCALE before a VAE decode); the model
    runs in ``dtype`` while the diffusion state stays float32, as in ComfyUI's own samplers. The
    starting noise is ``noise``, or drawn from ``generator``, or seeded per frame by ``settings.seed``
    (see :func:`starting_noise`).
    """
    import torch

    rt, device, dtype, (num, h, w) = _prepare(model, reference, control, settings, device, dtype, runtime)
    with torch.no_grad():
        feats = LandmarkFeatures(model, control, device, dtype, store=rt.offload_device())
        cond = conditioning(reference, feats, settings.cfg, model)
        scheduler = previewing(make_model_scheduler(model, settings), rt)
        scheduler.set_timesteps(settings.steps, device=device)
        noise = starting_noise((1, 4, num, h, w), settings.seed, device, noise=noise, generator=generator,
                               share=settings.noise_share)
        denoiser = make_denoiser(model, cond, settings.cfg, settings.temporal, dtype=dtype,
                                 on_block=block_checks(rt))
        total = count_windows(num, settings.window, settings.overlap, settings.steps, settings.loop)
        with rt.progress(total, "sampling") as bar:
            out = sample_windows(denoiser, noise * scheduler.init_noise_sigma, scheduler,
                                 window=settings.window, overlap=settings.overlap, fusion=settings.fusion,
                                 eta=settings.eta, seed=settings.seed, loop=settings.loop, runtime=rt, bar=bar)
    return out[0].permute(1, 0, 2, 3).contiguous()  # "1 c f h w -> f c h w"


def progressive_latents(model, reference, control, settings: SamplerSettings = SamplerSettings(), *,
                        keyframe_stride: int | None = None, known_mode: str = "auto", device=None,
                        dtype=None, runtime: StandaloneRuntime | None = None, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's progressive long-video strategy (section 4.3); returns scaled latents [F,4,h,w].

    1. keyframes every ``keyframe_stride`` frames (default window - 1) are sampled as one clip;
    2. each gap between consecutive keyframes is sampled with both keyframes known: through the
       covered-latent input channels when the checkpoint has them (``known_mode`` "covered"),
       otherwise by replacing them at every step with their noised latents ("replace").

    The starting noise of every frame is taken from ``noise`` / ``generator`` as in
    :func:`generate_latents` (each stage uses its frames' part of it).

    Memory follows the window, not the video: control renders (``control`` may render lazily,
    see LazyControls), landmark features and noise exist only for the frames of the stage at hand
    and the keyframes (each frame is rendered and encoded once); the latents are the only per-frame state.
    """
    import torch

    rt, device, dtype, (num, h, w) = _prepare(model, reference, control, settings, device, dtype, runtime)
    stride = keyframe_stride or max(1, settings.window - 1)
    if stride + 1 > settings.window:
        raise InvalidRequestError(
            f"keyframe stride {stride} needs windows of {stride + 1} frames to hold a gap with both "
            f"keyframes, but the window is {settings.window}; use a stride <= {settings.window - 1}")
    has_cover = getattr(model.config, "cover_channels", 0) > 0
    if known_mode == "auto":
        known_mode = "covered" if has_cover else "replace"
    if known_mode not in KNOWN_MODES:
        raise InvalidRequestError(f"known_mode must be one of {KNOWN_MODES}, got {known_mode!r}")
    if known_mode == "covered" and not has_cover:
        raise InvalidRequestError("this checkpoint has no covered-latent input channels; use known_mode 'replace'")
    keys = keyframe_indices(num, stride)
    gaps = [(a, b) for a, b in zip(keys, keys[1:]) if b - a > 1]
    total = count_windows(len(keys), settings.window, settings.overlap, settings.steps, settings.loop)
    total += settings.steps * len(gaps)

    if noise is None and generator is not None:  # one draw for the whole track, as diffusers' pipelines
        noise = starting_noise((1, 4, num, h, w), settings.seed, "cpu", generator=generator,
                               share=settings.noise_share)

    feats = LandmarkFeatures(model, control, device, dtype, store=rt.offload_device())
    with torch.no_grad():  # the reference's projections, once for every stage
        video = conditioning(reference, feats, settings.cfg, model)

    def run(frames: list[int], known=None, covered=None, mask=None, bar=None, loop=False):
        init = starting_noise((1, 4, num, h, w), settings.seed, device, noise=noise, frames=frames,
                              share=settings.noise_share)
        sched = previewing(make_model_scheduler(model, settings), rt)
        sched.set_timesteps(settings.steps, device=device)
        cond = replace(video, landmark_features=feats.of(frames))
        den = make_denoiser(model, cond, settings.cfg, settings.temporal, covered, mask, dtype=dtype,
                            on_block=block_checks(rt))
        return sample_windows(den, init * sched.init_noise_sigma, sched, window=settings.window,
                              overlap=settings.overlap, fusion=settings.fusion, known=known,
                              replace_known=known_mode == "replace", noise=init, eta=settings.eta,
                              seed=settings.seed, loop=loop, runtime=rt, bar=bar)

    latents = torch.empty((1, 4, num, h, w), device=device)  # float32: the only per-frame state
    with torch.no_grad(), rt.progress(total, "progressive sampling") as bar:
        # Stage 1: keyframes spread over the whole track, as one clip (a circle when looping: the last
        # keyframe is denoised with the first, the gaps then lie between them as usual).
        latents[:, :, keys] = run(keys, bar=bar, loop=settings.loop)
        # Stage 2: fill each gap with its two keyframes known.
        for a, b in gaps:
            known = {0: latents[0, :, a], b - a: latents[0, :, b]}
            covered = mask = None
            if known_mode == "covered":  # covered latents: known frames kept, the rest zeroed
                covered = torch.zeros((1, 4, b - a + 1, h, w), device=device)
                mask = torch.ones_like(covered[:, :1])  # 1 = covered (unknown)
                for i, lat in known.items():
                    covered[0, :, i] = lat
                    mask[0, :, i] = 0.0
            filled = run(list(range(a, b + 1)), known, covered, mask, bar=bar)
            latents[:, :, a + 1:b] = filled[:, :, 1:-1]
            feats.release(range(a, b))  # keyframe b starts the next gap
    return latents[0].permute(1, 0, 2, 3).contiguous()  # "1 c f h w -> f c h w"


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def with_oom_retry(run: Callable[[SamplerSettings], Any], settings: SamplerSettings,
                   runtime: StandaloneRuntime | None = None, min_window: int = 2, retry: bool = True,
                   on_retry: Callable[[SamplerSettings, SamplerSettings], None] | None = None) -> Any:
    """Run ``run(settings)``; on out-of-memory halve the window and retry (``retry``), or stop saying what to do.

    Each retry is announced through ``runtime.notify`` (the node's text in ComfyUI, the log elsewhere)
    and ``on_retry(asked, used)``, so a result made with other settings than asked never passes unseen.
    """
    rt = resolve(runtime)
    asked = settings
    while True:
        try:
            return run(settings)
        except Exception as exc:  # noqa: BLE001 — only out-of-memory errors are handled here
            if not _is_oom(exc):
                raise
            rt.free_memory()
            advice = ("Lower the resolution or the window, load the model in fp16/bf16, turn on offload_appearance, "
                      "or free memory held by other models")
            if not retry:
                raise FYEError(f"out of memory with a window of {settings.window} frames. {advice}; or let the "
                               "sampler retry with smaller windows (on_out_of_memory).") from exc
            if settings.window // 2 < min_window:
                raise FYEError(f"out of memory even with a window of {settings.window} frames. {advice}.") from exc
            smaller = replace(settings, window=settings.window // 2,
                              overlap=min(settings.overlap, settings.window // 4))
            rt.notify(f"Out of memory with a window of {settings.window} frames: retrying with {smaller.window}. "
                      f"The result differs from what a window of {asked.window} gives.")
            if on_retry is not None:
                on_retry(asked, smaller)
            settings = smaller


def decode_frames(vae_decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                  chunk: int = 8, runtime: StandaloneRuntime | None = None) -> Iterator[np.ndarray]:
    """Stream uint8 frames [n,H,W,3] from scaled latents [F,4,h,w], ``chunk`` frames at a time.

    ``vae_decode`` maps raw (unscaled) latents [n,4,h,w] to images [n,H,W,3] in 0..1.
    """
    import torch

    rt = resolve(runtime)
    for s in range(0, latents.shape[0], chunk):
        rt.check_interrupt()
        with torch.no_grad():
            img = vae_decode(latents[s:s + chunk] / LATENT_SCALE)
        yield (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class LazyControls:
    """Control renders of a track, drawn on demand: behaves like a uint8 array [F,H,W,3] when indexed.

    The landmarks are framed as the reference encoder frames the portrait (resized to cover the
    output size, centre-cropped), so that they stay on the face.
    """

    def __init__(self, track, size_hw: tuple[int, int], *, include_contour: bool = False):
        from dataclasses import replace as dc_replace

        import numpy as np

        h, w = size_hw
        src_w, src_h = track.size
        scale = max(h / src_h, w / src_w)
        new_w, new_h = max(w, round(src_w * scale)), max(h, round(src_h * scale))
        left, top = (new_w - w) // 2, (new_h - h) // 2
        points = np.array(track.points, dtype=np.float64, copy=True)
        points[..., 0] = (points[..., 0] * new_w - left) / w
        points[..., 1] = (points[..., 1] * new_h - top) / h
        self.track = dc_replace(track, points=points, size=(w, h))
        self.include_contour = include_contour
        self.shape = (len(track), h, w, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        import numpy as np

        from .landmarks import render_controls

        frames = render_controls(self.track[index], self.track.size, include_contour=self.include_contour)
        return frames[0] if isinstance(index, (int, np.integer)) else frames

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)


def reference_controls(track, size_hw: tuple[int, int], *, include_contour: bool = False,
                       runtime: StandaloneRuntime | None = None) -> np.ndarray:
    """Control renders uint8 [F,H,W,3] of an aligned track, framed as the reference encoder frames it."""
    from .landmarks import render_controls

    lazy = LazyControls(track, size_hw, include_contour=include_contour)
    return render_controls(lazy.track, lazy.track.size, include_contour=include_contour, runtime=runtime)


def animate(model, reference_image: np.ndarray, aligned, vae, image_encoder, *,
            settings: SamplerSettings = SamplerSettings(), size: tuple[int, int] = (512, 512),
            long: bool = False, keyframe_stride: int | None = None, device=None, dtype=None,
            decode_chunk: int = 8, runtime: StandaloneRuntime | None = None) -> Iterator[np.ndarray]:
    """The whole job in one call: encode the reference, sample every frame, stream decoded frames.

    ``aligned`` is the motion-aligned FaceTrack (emoji_model.align.align_motion); ``vae`` a diffusers
    AutoencoderKL and ``image_encoder`` a transformers CLIPVisionModelWithProjection; ``size`` is
    (H, W). Yields uint8 frame chunks [n,H,W,3] once sampling has finished.
    """
    import torch

    from .reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers

    rt = resolve(runtime)
    device = device or rt.torch_device()
    dtype = dtype or torch.float32
    with torch.no_grad():
        ref = encode_reference(model, reference_image, vae_encoder_from_diffusers(vae),
                               clip_encoder_from_transformers(image_encoder), size=size, device=device, dtype=dtype)
    check_track_matches_reference(aligned, ref)
    controls = LazyControls(aligned, size)

    def run(s: SamplerSettings):
        if long:
            stride = min(keyframe_stride, s.window - 1) if keyframe_stride else None  # windows may shrink
            return progressive_latents(model, ref, controls, s, keyframe_stride=stride, device=device,
                                       dtype=dtype, runtime=rt)
        return generate_latents(model, ref, controls, s, device=device, dtype=dtype, runtime=rt)

    latents = with_oom_retry(run, settings, rt)

    def decode(raw):
        return (vae.decode(raw.to(vae.dtype)).sample.float().permute(0, 2, 3, 1) + 1) / 2

    yield from decode_frames(decode, latents, chunk=decode_chunk, runtime=rt)
