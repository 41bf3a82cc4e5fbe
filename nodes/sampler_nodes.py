"""Sampler nodes: aligned landmarks + encoded reference → latents for the host's VAE Decode."""

from __future__ import annotations

import logging

from emoji_model.constants import FUSIONS, KNOWN_MODES, LATENT_SCALE, SCHEDULER_NAMES

from .host import get_runtime

log = logging.getLogger("emoji_model.nodes")

CATEGORY = "FollowYourEmoji"
DECODE_CHUNK = 8


def _sampler_inputs() -> dict:
    return {
        "fye_model": ("FYE_MODEL",),
        "reference": ("FYE_REFERENCE",),
        "faces": ("FYE_FACES", {"tooltip": "the aligned landmark track (Motion Aligner or Expression Editor)"}),
        "steps": ("INT", {"default": 30, "min": 1, "max": 200}),
        "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0, "step": 0.1,
                          "tooltip": "classifier-free guidance on the reference image prompt (1 = off)"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        "scheduler": (list(SCHEDULER_NAMES), {"default": "ddim"}),
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


def _outputs(samples, vae, frames: int, size_hw, runtime):
    """(LATENT, IMAGE): raw latents for the host's VAE Decode and, with a VAE, the decoded frames."""
    import torch

    from emoji_model.pipeline import decode_frames

    latent = {"samples": (samples / LATENT_SCALE).float().cpu()}
    if vae is None:
        log.info("no VAE connected: the IMAGE output is black; decode the LATENT with VAE Decode")
        return latent, torch.zeros(frames, *size_hw, 3)
    chunks = decode_frames(lambda raw: vae.decode(raw), samples, chunk=DECODE_CHUNK, runtime=runtime)
    images = torch.cat([torch.from_numpy(c).float() / 255.0 for c in chunks])
    return latent, images


class _Sampler:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "images")
    OUTPUT_TOOLTIPS = ("one latent per aligned frame, for the host's VAE Decode",
                       "the decoded frames when a VAE is connected (black otherwise)")
    FUNCTION = "sample"

    def _run(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
             generate, loop=False):
        import torch

        from emoji_model.pipeline import LazyControls, with_oom_retry
        from emoji_model.sampling import SamplerSettings

        runtime = get_runtime()
        pairs = pair_faces(reference, faces)
        model = fye_model.module(runtime)
        device = runtime.torch_device()
        settings = SamplerSettings(steps=steps, cfg=cfg, scheduler=scheduler, seed=seed, window=window,
                                   overlap=overlap, fusion=fusion, loop=bool(loop))
        samples = []
        for encoding, track in pairs:  # several faces: one after the other, frames face after face
            ref = encoding.to(device, fye_model.dtype)
            controls = LazyControls(track, ref.size)  # rendered window by window, never all at once
            samples.append(with_oom_retry(lambda s, ref=ref, controls=controls: generate(
                model, ref, controls, s, device=device, dtype=fye_model.dtype, runtime=runtime), settings, runtime))
        size = pairs[0][0].size
        return _outputs(torch.cat(samples), vae, sum(len(s) for s in samples), size, runtime)


class TemporalSampler(_Sampler):
    NODE_ID = "FYE_TemporalSampler"
    DISPLAY_NAME = "Temporal Sampler (Follow-Your-Emoji)"
    DESCRIPTION = ("Generates one frame per aligned landmark frame: DDIM v-prediction with zero-terminal-SNR "
                   "as released, conditional and unconditional branches batched, and overlapping temporal "
                   "windows blended for tracks longer than the window. Interruptible; on out-of-memory it "
                   "retries with smaller windows. Several faces (aligned faces and references of every face) are "
                   "animated one after the other, their frames face after face for Paste Back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _sampler_inputs(),
                "optional": {"vae": ("VAE", {"tooltip": "decode the frames here too (else use VAE Decode)"}),
                             "loop": ("BOOLEAN", {"default": False, "tooltip": LOOP_TIP})}}

    def sample(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae=None,
               loop=False):
        """Sample every frame of the track together (of every face's track, one after the other)."""
        from emoji_model.pipeline import generate_latents

        return self._run(fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
                         generate_latents, loop)


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
        return {"required": inputs,
                "optional": {"vae": ("VAE", {"tooltip": "decode the frames here too (else use VAE Decode)"}),
                             "loop": ("BOOLEAN", {"default": False, "tooltip": LOOP_TIP})}}

    def sample(self, fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion,
               keyframe_stride, known_frames, vae=None, loop=False):
        """Keyframes first, then the gaps between them."""
        from emoji_model.pipeline import progressive_latents

        def generate(model, ref, controls, settings, **kw):
            stride = min(keyframe_stride, settings.window - 1) if keyframe_stride else None
            return progressive_latents(model, ref, controls, settings, keyframe_stride=stride,
                                       known_mode=known_frames, **kw)

        return self._run(fye_model, reference, faces, steps, cfg, seed, scheduler, window, overlap, fusion, vae,
                         generate, loop)


NODES = [TemporalSampler, ProgressiveLongVideo]
