"""Numbers and choices that the library, the nodes, the command line and the trainer share.

This module imports nothing, so that node registration can read the choices its inputs offer
without importing torch, numpy or MediaPipe; the library modules that use a value import it from
here, so that each is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENT_SCALE = 0.18215
"""SD-1.5's VAE scaling factor: the networks and the sampler work on VAE latents × this."""

# -- landmarks and alignment (emoji_model.landmarks, emoji_model.align) ------------------------
FACE_LANDMARKER_FILE = "face_landmarker.task"
EXTRACT_MODES = ("auto", "video", "image")
NEUTRAL_CHOICES = ("auto", "first", "blendshapes")
"""auto: the driving frame with the lowest blendshape sum (a one-frame driver: blendshapes); first: the
first valid frame; blendshapes: each frame's expression read from its blendshape scores."""
ROTATION_MODES = ("relative", "absolute", "off")
"""relative: the portrait's own rotation composed with the driving rotation relative to the neutral
frame; absolute: the driving frame's rotation (the released aligner); off: the portrait's rotation."""
TRANSLATION_MODES = ("relative", "released", "off")
"""relative: the driving movement since the neutral frame in face widths, softly limited; released:
the driving translation since frame 0 as the released aligner adds it; off: the portrait's place."""
IRIS_MODES = ("relative", "absolute", "off")
"""relative: the portrait's gaze moved as the driving gaze moves from the neutral frame; absolute: the
driving pupils' place in the eye (the released aligner); off: the portrait's pupils."""
LID_MODES = ("relative", "absolute")
"""relative: the lids move as far as the driver's as a share of each eye's opening (narrow eyes shut
without the lids crossing); absolute: as far as the driver's lids move (the released aligner)."""
TRANSLATION_LIMIT = 0.08
"""Default soft limit of the relative head translation, in face widths (and as a share of the distance)."""
REGIONS = ("eyes", "brows", "mouth", "pupils", "head")
REGION_PRESETS: dict[str, tuple[float, ...]] = {
    "all": (1.0, 1.0, 1.0, 1.0, 1.0),
    "expression only": (1.0, 1.0, 1.0, 1.0, 0.0),
    "only mouth": (0.0, 0.0, 1.0, 0.0, 0.0),
    "only eyes": (1.0, 0.0, 0.0, 1.0, 0.0),
}
"""Strengths of REGIONS (eyes, brows, mouth, pupils, head pose) each preset starts from."""
FACE_ALL = "all"
"""face_index value that asks for every face (one track per face)."""

# -- crop and paste-back (emoji_model.crop) ------------------------------------------------------
PAD_MODES = ("edge", "reflect", "black")
BATCH_BOXES = ("union", "median")

# -- expression editor (emoji_model.editor) ------------------------------------------------------
INTERPOLATIONS = ("linear", "smoothstep", "step")


@dataclass(frozen=True)
class Control:
    """One editable expression control: its name, its range and what it does."""

    name: str
    lo: float
    hi: float
    help: str

    @property
    def degrees(self) -> bool:
        """True for the head rotations, whose values are angles in degrees."""
        return self.name in ("yaw", "pitch", "roll")


CONTROLS: dict[str, Control] = {c.name: c for c in (
    Control("blink", -0.5, 1.0, "close both eyes: 1 shut, negative widens them"),
    Control("blink_left", -0.5, 1.0, "close the subject's left eye (the image's right), added to blink"),
    Control("blink_right", -0.5, 1.0, "close the subject's right eye (the image's left), added to blink"),
    Control("smile", -1.0, 1.0, "mouth corners up and out; negative: down, a frown"),
    Control("mouth_open", 0.0, 1.0, "lower lip and chin down"),
    Control("brow_raise", -1.0, 1.0, "eyebrows up; negative: down"),
    Control("pupil_x", -1.0, 1.0, "gaze toward the image's right (+) or left (-)"),
    Control("pupil_y", -1.0, 1.0, "gaze up (+) or down (-)"),
    Control("yaw", -45.0, 45.0, "degrees: the face turns toward the image's right (+)"),
    Control("pitch", -30.0, 30.0, "degrees: the chin goes up (+)"),
    Control("roll", -45.0, 45.0, "degrees: the head tilts clockwise in the image (+)"),
)}

# -- checkpoints (emoji_model.checkpoints) -------------------------------------------------------
RELEASED_FILES = {"referencenet": "appearance", "unet": "unet", "lmk_guider": "guider"}
"""Stems of the released weight files and the component of our model each one fills."""

REFERENCE_IMAGES = ("first", "each")
"""Which images of a batch the reference encoder encodes: the first, or each (one face each)."""

# -- sampling (emoji_model.sampling, emoji_model.pipeline) --------------------------------------
SCHEDULER_NAMES = ("ddim", "dpmpp_2m", "euler", "euler_ancestral", "unipc", "ddpm")
# What the nodes call them: diffusers' schedulers on this pack's noise schedule. ComfyUI's samplers of
# similar names (ddim, euler, dpmpp_2m, uni_pc, ddpm) compute differently, so the names say "diffusers".
SCHEDULER_LABELS: dict[str, str] = {
    "ddim": "DDIM (diffusers)", "dpmpp_2m": "DPM++ 2M (diffusers)", "euler": "Euler (diffusers)",
    "euler_ancestral": "Euler ancestral (diffusers)", "unipc": "UniPC (diffusers)", "ddpm": "DDPM (diffusers)",
}
FUSIONS = ("pyramid", "flat")
KNOWN_MODES = ("auto", "covered", "replace")
"""How the progressive sampler imposes the keyframes of a gap (see pipeline.progressive_latents)."""
