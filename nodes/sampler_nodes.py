"""Sampler nodes: aligned landmarks + encoded reference → latents for the host's VAE Decode."""

from __future__ import annotations

import logging

from emoji_model.constants import FUSIONS, KNOWN_MODES, LATENT_SCALE, SCHEDULER_LABELS

from .categories import SAMPLING
from .host import blocked_output, get_runtime

log = logging.getLogger("emoji_model.nodes")

SCHEDULER_NAMES = list(SCHEDULER_LABELS.values())
# Labels and the library's names (what graphs saved before the labels hold) -> the library's names.
SCHEDULER_KEYS = {**{label: key for key, label in SCHEDULER_LABELS.items()}, **{k: k for k in SCHEDULER_LABELS}}
DECODE_CHUNK = 8
NO_VAE = ("the sampler's images output needs a VAE on its vae input; or decode its latent output with "
          "VAE Decode")


def _sampler_inputs() -> dict:
    return {
        "fye_model": ("FYE_MODEL", {"tooltip": "the networks (Load Follow-Your-Emoji Model)"}),
        "reference": ("FYE_REFERENCE", {"tooltip": "the encoded portrait (Encode Reference Portrait)"}),
        "faces": ("FYE_FACES", {"tooltip": "the aligned landmark track (Motion Aligner or Expression Editor)"}),
        "steps": ("INT", {"default": 30, "min": 1, "max": 200, "tooltip": "denoising steps (30 as released)"}),
        "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0, "step": 0.1,
                          "tooltip": "classifier-free guidance on the reference image prompt (1 = off)"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                         "tooltip": "noise seed; frame i gets the same noise whatever the track length"}),
        "scheduler": (SCHEDULER_NAMES, {"default": SCHEDULER_LABELS["ddim"],
                                        "tooltip": "diffusers' scheduler on the checkpoint's noise schedule "
                                                   "(DDIM v-prediction as released); not ComfyUI's samplers"}),
        "window": ("INT", {"default": 16, "min": 1, "max": 32,
                           "tooltip": "frames per temporal window (at most the model's position encoding, 32 "
                                      "for the released weights); longer tracks use overlapping windows"}),
        "overlap": ("INT", {"default": 4, "min": 0, "max": 31, "tooltip": "frames shared by neighbouring windows"}),
        "fusion": (list(FUSIONS), {"default": "pyramid",
                                         "tooltip": "how overlapping windows' predictions are blended"}),
    }


LOOP_TIP = ("the temporal windows wrap around the end of the track, so the last frames are denoised with the "
            "first ones: a seamless loop (use a looped track: Motion Aligner or Expression Editor with loop)")


def pair_faces(reference, faces) -> list[tuple]:
    """(reference encoding, aligned track) per face: K encodings with K tracks, or one of each."""
    from emoji_model.errors import InvalidRequestError
    from emoji_model.landmarks import faces_of
    from emoji_model.reference import references_of

    refs, tracks = references_of(reference), faces_of(faces)
    if len(refs) != len(tracks):
        raise InvalidRequestError(
            f"{len(tracks)} aligned face(s) but {len(refs)} encoded reference(s): each face is animated from its "
            "own crop — set images to 'each' on Encode Reference Portrait and connect the crops of Crop Face "
            "(face_index -1) to it, with the faces aligned from that Crop Face's faces")
    return list(zip(refs, tracks))


OOM_CHOICES = ["retry with smaller windows", "stop"]


def _optional_inputs() -> dict:
    return {"vae": ("VAE", {"tooltip": "decode the frames here too, on the images output (else use VAE Decode "
                                       "on the latent output)"}),
            "on_out_of_memory": (OOM_CHOICES, {
                "default": OOM_CHOICES[0],
                "tooltip": "retry: halve the window until it fits, say so on this node, and run again next time "
                           "instead of reusing that result; stop: fail with what to change"}),
            "loop": ("BOOLEAN", {"default": False, "tooltip": LOOP_TIP})}


HIDDEN = {"unique_id": "UNIQUE_ID"}
# Nodes (by id) whose last result was made with smaller windows than asked, after an out-of-memory retry:
# IS_CHANGED makes the host run them again rather than serve that result from its cache.
_DEGRADED: set[str] = set()


def _validate(scheduler) -> bool | str:
    if scheduler in SCHEDULER_KEYS:
        return True
    return f"scheduler must be one of {SCHEDULER_NAMES}, got {scheduler!r}"


def _outputs(samples, vae, runtime):
    """(LATENT, IMAGE): raw latents for the host's VAE Decode and, with a VAE, the decoded frames.

    Without a VAE the IMAGE output is blocked: nothing is made or cached for it, and a node connected
    to it stops with a message saying what to connect.
    """
    import torch

    from emoji_model.pipeline import decode_frames

    latent = {"samples": (samples / LATENT_SCALE).float().cpu()}
    if vae is None:
        return latent, blocked_output(NO_VAE)
    chunks = decode_frames(lambda raw: vae.decode(raw), samples, chunk=DECODE_CHUNK, runtime=runtime)
    images = torch.cat([torch.from_numpy(c).float() / 255.0 for c in chunks])
    return latent, images


class _Sampler:
    CATEGORY = SAMPLING
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "images")
    OUTPUT_TOOLTIPS = ("one latent per aligned frame, for the host's VAE Decode",
                       "the decoded frames; only when a VAE is connected to this node")
    FUNCTION = "sample"

    @classmethod
    def VALIDATE_INPUTS(cls, scheduler):
        """The scheduler's label, or the library's name that graphs saved by earlier versions hold."""
        return _validate(scheduler)

    @classmethod
    def IS_CHANGED(cls, unique_id=None, **inputs):
        """NaN (never equal: run again) after a run that fell back to smaller windows, else unchanged."""
        return float("nan") if unique_id in _DEGRADED else False

    def _run(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
             generate, on_out_of_memory=OOM_CHOICES[0], unique_id=None, loop=False):
        import torch

        from emoji_model.pipeline import (
            LazyControls,
            activation_memory,
            check_track_matches_reference,
            with_oom_retry,
        )
        from emoji_model.sampling import SamplerSettings

        runtime = get_runtime()
        pairs = pair_faces(reference, faces)
        for encoding, track in pairs:
            check_track_matches_reference(track, encoding)  # before anything is loaded or sampled
        settings = SamplerSettings(steps=steps, cfg=cfg, scheduler=SCHEDULER_KEYS.get(scheduler, scheduler),
                                   seed=seed, window=window, overlap=overlap, fusion=fusion, loop=bool(loop),
                                   noise_share=getattr(fye_model, "noise_share", 0.0))
        settings.validate(fye_model.config.motion_max_len)
        h, w = pairs[0][0].size
        need = activation_memory(fye_model.config, min(window, max(len(t) for _, t in pairs)), (h // 8, w // 8),
                                 cfg != 1.0, fye_model.dtype)
        model = fye_model.module(runtime, memory_required=need)
        device = runtime.torch_device()
        _DEGRADED.discard(str(unique_id))
        samples = []
        for encoding, track in pairs:  # several faces: one after the other, frames face after face
            ref = encoding.to(device, fye_model.dtype)
            controls = LazyControls(track, ref.size)  # rendered window by window, never all at once
            samples.append(with_oom_retry(
                lambda s, ref=ref, controls=controls: generate(model, ref, controls, s, device=device,
                                                               dtype=fye_model.dtype, runtime=runtime),
                settings, runtime, retry=on_out_of_memory != "stop",
                on_retry=lambda asked, used: _DEGRADED.add(str(unique_id))))
        return _outputs(torch.cat(samples), vae, runtime)


class TemporalSampler(_Sampler):
    NODE_ID = "FYE_TemporalSampler"
    DISPLAY_NAME = "Temporal Sampler (Follow-Your-Emoji)"
    DESCRIPTION = ("Generates one frame per aligned landmark frame: DDIM v-prediction with zero-terminal-SNR "
                   "as released, conditional and unconditional branches batched, and overlapping temporal "
                   "windows blended for tracks longer than the window. Shows previews while it runs and honours "
                   "Cancel within one UNet block; tells the host how much memory a window needs; on "
                   "out-of-memory it retries with smaller windows and says so on the node (or stops). Several "
                   "faces (aligned faces and references of every face) are animated one after the other, their "
                   "frames face after face for Paste Back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _sampler_inputs(), "optional": _optional_inputs(), "hidden": HIDDEN}

    def sample(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae=None,
               on_out_of_memory=OOM_CHOICES[0], loop=False, unique_id=None):
        """Sample every frame of the track together (of every face's track, one after the other)."""
        from emoji_model.pipeline import generate_latents

        return self._run(fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
                         generate_latents, on_out_of_memory, unique_id, loop)


class ProgressiveLongVideo(_Sampler):
    NODE_ID = "FYE_ProgressiveLongVideo"
    DISPLAY_NAME = "Progressive Long Video (Follow-Your-Emoji)"
    DESCRIPTION = ("The paper's long-video strategy: keyframes spread over the whole track are generated "
                   "first, then every gap between two keyframes is generated with both keyframes given "
                   "(through the covered-latent input when the checkpoint has it, else by replacing them at "
                   "every step). Keyframes come out unchanged; memory grows with the window, not the video.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _sampler_inputs()
        inputs["keyframe_stride"] = ("INT", {"default": 0, "min": 0, "max": 31,
                                             "tooltip": "frames between keyframes; 0 = window - 1"})
        inputs["known_frames"] = (list(KNOWN_MODES), {
            "default": "auto", "tooltip": "how stage 2 is given its keyframes: auto picks covered-latent "
                                          "input when the checkpoint has those channels"})
        return {"required": inputs, "optional": _optional_inputs(), "hidden": HIDDEN}

    def sample(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion,
               keyframe_stride, known_frames, vae=None, on_out_of_memory=OOM_CHOICES[0], loop=False, unique_id=None):
        """Keyframes first, then the gaps between them."""
        from emoji_model.pipeline import progressive_latents

        def generate(model, ref, controls, settings, **kw):
            stride = min(keyframe_stride, settings.window - 1) if keyframe_stride else None
            return progressive_latents(model, ref, controls, settings, keyframe_stride=stride,
                                       known_mode=known_frames, **kw)

        return self._run(fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
                         generate, on_out_of_memory, unique_id, loop)


NODES = [TemporalSampler, ProgressiveLongVideo]
