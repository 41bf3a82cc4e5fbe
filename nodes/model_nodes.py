"""Model nodes: load the Follow-Your-Emoji networks, and encode the reference portrait once per video."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoji_model.constants import LATENT_SCALE, REFERENCE_IMAGES, RELEASED_FILES

from .categories import SAMPLING
from .host import get_runtime

log = logging.getLogger("emoji_model.nodes")

NONE = "none"
RELEASED_STEMS = tuple(RELEASED_FILES)
# Shown when models/follow_your_emoji is empty: the name the README's `convert` example writes.
DEFAULT_CHECKPOINT = "fye_sd15.safetensors"


@dataclass
class FYEModel:
    """The FYE_MODEL value: the host's handle on the networks, plus what samplers need to know."""

    handle: Any  # runtime.manage(model) inside ComfyUI, the module itself standalone
    config: Any  # emoji_model.networks.FYEConfig
    dtype: Any  # torch.dtype of the weights
    source: str
    noise_share: float = 0.0  # starting noise shared by all frames: the bundled model's setting, 0 (released) else

    @property
    def scheduler(self) -> dict:
        """The scheduler config the weights were trained with (FYEConfig.scheduler)."""
        return dict(self.config.scheduler)

    def module(self, runtime=None, memory_required: int = 0):
        """The FollowYourEmoji module, loaded onto the compute device through the host's model management.

        ``memory_required``: bytes of activations the coming run needs, so the host can evict other models.
        """
        return (runtime or get_runtime()).load_model(self.handle, memory_required=memory_required)


def _choices(kind: str, with_none: bool = False, default: str | None = None) -> list[str]:
    names = get_runtime().list_models(kind)
    if not names and default is not None:
        names = [default]  # running it then raises MissingModelError saying where the file goes
    return ([NONE] if with_none else []) + names


def _checkpoint_paths(runtime, name: str) -> list[Path]:
    """One file of ours, or the set of released files when one of them is chosen."""
    path = runtime.find_model("follow_your_emoji", name)
    if path.stem in RELEASED_STEMS:
        found = []
        for stem in RELEASED_STEMS:
            candidates = [p for p in path.parent.glob(f"{stem}.*") if p.suffix.lower() in (".pth", ".safetensors")]
            if not candidates:
                found.append(runtime.find_model("follow_your_emoji", str(path.parent / f"{stem}.pth")))
            else:
                found.append(sorted(candidates, key=lambda p: p.suffix != path.suffix)[0])
        return found
    return [path]


class LoadModel:
    NODE_ID = "FYE_LoadModel"
    DISPLAY_NAME = "Load Follow-Your-Emoji Model"
    CATEGORY = SAMPLING
    DESCRIPTION = ("Loads the Follow-Your-Emoji networks (appearance net, denoising UNet with temporal layers, "
                   "landmark guider, image prompt) from models/follow_your_emoji: a file converted with "
                   "`python -m emoji_model convert`, or the released referencenet/unet/lmk_guider files (pick "
                   "any of the three). Optionally personalises the spatial layers with an SD-1.5 checkpoint "
                   "(as a difference to its base model when one is given) and swaps in AnimateDiff motion modules.")
    RETURN_TYPES = ("FYE_MODEL",)
    RETURN_NAMES = ("fye_model",)
    OUTPUT_TOOLTIPS = ("the networks, for Encode Reference Portrait and the samplers",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (_choices("follow_your_emoji", default=DEFAULT_CHECKPOINT), {
                    "tooltip": "models/follow_your_emoji: a converted .safetensors, or one of the released files; "
                               "bundled/demo_tiny.safetensors is the small model shipped with the pack (64 px, a "
                               "pipeline check, not a quality model)"}),
                "dtype": (["auto", "fp16", "bf16", "fp32"], {
                    "default": "auto", "tooltip": "weight precision; auto follows the device"}),
            },
            "optional": {
                "sd_checkpoint": (_choices("checkpoints", with_none=True), {
                    "default": NONE,
                    "tooltip": "a personalised SD-1.5 checkpoint for the appearance net and the UNet's spatial "
                               "layers"}),
                "sd_base": (_choices("checkpoints", with_none=True), {
                    "default": NONE,
                    "tooltip": "the SD-1.5 the personalised checkpoint was fine-tuned from: its difference is "
                               "added to the Follow-Your-Emoji weights. Without it the spatial weights are "
                               "replaced, which discards what Follow-Your-Emoji learned"}),
                "sd_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                          "tooltip": "scale of the added difference (with sd_base)"}),
                "motion_module": (_choices("animatediff_models", with_none=True), {
                    "default": NONE, "tooltip": "AnimateDiff v2 motion modules for the temporal layers"}),
            },
        }

    def load(self, checkpoint, dtype, sd_checkpoint=NONE, sd_base=NONE, sd_strength=1.0, motion_module=NONE):
        from emoji_model.checkpoints import load_model, load_motion_module, load_sd_unet

        runtime = get_runtime()
        torch_dtype = runtime.choose_dtype(dtype)
        paths = _checkpoint_paths(runtime, checkpoint)
        model = load_model(paths, device=runtime.offload_device(), dtype=torch_dtype)
        if sd_checkpoint and sd_checkpoint != NONE:
            base = runtime.find_model("checkpoints", sd_base) if sd_base and sd_base != NONE else None
            if base is None:
                log.warning("replacing the spatial weights with %s: without sd_base the Follow-Your-Emoji "
                            "training of those layers is lost", sd_checkpoint)
            load_sd_unet(model, runtime.find_model("checkpoints", sd_checkpoint), base=base, weight=sd_strength)
        if motion_module and motion_module != NONE:
            load_motion_module(model, runtime.find_model("animatediff_models", motion_module))
        from emoji_model.bundled import BUNDLED_SAMPLING, is_bundled

        source = ", ".join(p.name for p in paths)
        share = BUNDLED_SAMPLING["noise_share"] if len(paths) == 1 and is_bundled(paths[0]) else 0.0
        return (FYEModel(handle=runtime.manage(model), config=model.config, dtype=torch_dtype, source=source,
                         noise_share=share),)


class ReferenceEncoder:
    NODE_ID = "FYE_ReferenceEncoder"
    DISPLAY_NAME = "Encode Reference Portrait (Follow-Your-Emoji)"
    CATEGORY = SAMPLING
    DESCRIPTION = ("Encodes the reference portrait once per video: its VAE latent, its CLIP image tokens "
                   "through the image prompt (and the zeroed unconditional ones), and the appearance net's "
                   "features that every frame's self-attention will attend to. The image is resized to cover "
                   "width × height and centre-cropped; use the same framing as the landmarks. A square "
                   "portrait (Crop Face's output) needs a square size: Paste Back puts square frames back. "
                   "The encoding records the portrait, and the samplers refuse a face track aligned to another.")
    RETURN_TYPES = ("FYE_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("the encoded portrait (and what it was made from), for the samplers",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fye_model": ("FYE_MODEL", {"tooltip": "the networks (Load Follow-Your-Emoji Model)"}),
                "image": ("IMAGE", {"tooltip": "the reference portrait (the first image of a batch is used)"}),
                "vae": ("VAE", {"tooltip": "an SD-1.5 VAE (sd-vae-ft-mse), from VAE Loader or Load VAE "
                                           "(Follow-Your-Emoji)"}),
                "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                  "tooltip": "width the portrait is encoded and animated at (a multiple of 8)"}),
                "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                   "tooltip": "height the portrait is encoded and animated at (a multiple of 8)"}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP ViT-L/14 image encoder (sd-image-variations)"}),
                "image_encoder": (_choices("clip_vision", with_none=True), {
                    "default": NONE,
                    "tooltip": "or the pack's own loader for an image-encoder file or folder in models/clip_vision "
                               "(bundled/demo_clip: the small model's)"}),
                "offload_appearance": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "move the appearance net to the offload device once the reference is encoded "
                               "(the samplers do not use it): frees its memory on the GPU for sampling"}),
                "images": (list(REFERENCE_IMAGES), {
                    "default": "first",
                    "tooltip": "first: the first image of the batch is the portrait; each: every image is "
                               "encoded (the crops of several faces from Crop Face with face_index -1), one "
                               "reference per face for the samplers"}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width, height):
        """Sizes the networks can take, refused when the prompt is queued (before anything runs)."""
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int):
                continue  # a linked value: checked when the node runs
            if value % 8 or not 64 <= value <= 2048:
                return f"{name} must be a multiple of 8 within 64..2048, got {value}"
        return True

    def encode(self, fye_model, image, vae, width, height, clip_vision=None, image_encoder=NONE,
               offload_appearance=False, images="first"):
        from emoji_model.errors import InvalidRequestError
        from emoji_model.reference import (
            ReferenceGroup,
            clip_encoder_from_transformers,
            encode_reference,
            fit_to_size,
            image_to_pixels,
        )

        runtime = get_runtime()
        check_reference_size(image, width, height)
        if clip_vision is not None:
            clip_encode = host_clip_encoder(clip_vision)
        elif image_encoder and image_encoder != NONE:
            from emoji_model.checkpoints import load_clip_vision

            encoder = load_clip_vision(runtime.find_model("clip_vision", image_encoder),
                                       device=runtime.torch_device(), dtype=fye_model.dtype)
            clip_encode = clip_encoder_from_transformers(encoder)
        else:
            raise InvalidRequestError("connect a CLIP_VISION (CLIP ViT-L/14) or choose an image_encoder file")
        # The host's VAE and CLIP run first: loading them may evict other models, and ours must be
        # on the device, whole, when its own networks run.
        device = runtime.torch_device()
        portraits = image[:1] if images == "first" else image
        encoded = []
        for i in range(len(portraits)):
            pixels = fit_to_size(image_to_pixels(portraits[i:i + 1]), (height, width)).to(device)
            encoded.append((host_vae_encoder(vae)(pixels * 2 - 1), clip_encode(pixels)))
        model = fye_model.module(runtime)
        refs = [encode_reference(model, portraits[i:i + 1], lambda _, lat=lat: lat, lambda _, tok=tok: tok,
                                 size=(height, width), device=device, dtype=fye_model.dtype)
                for i, (lat, tok) in enumerate(encoded)]
        if offload_appearance:
            model.appearance.to(runtime.offload_device())  # back on the device with the next full load
        refs = [r.to(runtime.offload_device()) for r in refs]
        return (refs[0] if len(refs) == 1 else ReferenceGroup(refs),)


def check_reference_size(image, width: int, height: int) -> None:
    """Refuse, before any network runs, a size that the rest of the graph cannot use.

    A square portrait (what Crop Face makes) encoded at a non-square size would be centre-cropped,
    and Paste Back, which puts square frames back into the picture, could not use the result.
    """
    from emoji_model.errors import InvalidRequestError

    for name, value in (("width", width), ("height", height)):
        if value % 8 or not 64 <= value <= 2048:
            raise InvalidRequestError(f"{name} must be a multiple of 8 within 64..2048, got {value}")
    h, w = int(image.shape[1]), int(image.shape[2])
    if abs(h - w) <= 1 and width != height:
        raise InvalidRequestError(
            f"the portrait is square ({w}x{h}, as Crop Face makes it) but it would be encoded at {width}x{height}: "
            f"its sides would be cut off and Paste Back, which puts square frames back, could not use the "
            f"animation. Set width and height to the same value (e.g. {max(width, height)}).")


class LoadVAE:
    NODE_ID = "FYE_LoadVAE"
    DISPLAY_NAME = "Load VAE (Follow-Your-Emoji)"
    CATEGORY = SAMPLING
    DESCRIPTION = ("Loads a VAE as ComfyUI's own VAE, for VAE Decode and Encode Reference Portrait: a file of "
                   "models/vae (read as ComfyUI's VAE Loader reads it), a diffusers VAE folder or its "
                   "diffusion_pytorch_model file beside its config.json (sd-vae-ft-mse as downloaded), or "
                   "bundled/demo_vae, the small VAE shipped with the pack. VAEs of other sizes than SD's load "
                   "when they fit ComfyUI's VAE (32-group norms, 4 levels, 4 latent channels).")
    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("the VAE, for VAE Decode, VAE Encode and Encode Reference Portrait",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """The VAE file or folder."""
        return {"required": {"vae_name": (_choices("vae", default="sd-vae-ft-mse"), {
            "tooltip": "models/vae: an SD-1.5 VAE file, a diffusers VAE folder's weights, or bundled/demo_vae"})}}

    def load(self, vae_name):
        """Read the VAE through the runtime (ComfyUI's VAE inside the host)."""
        runtime = get_runtime()
        path = runtime.find_model("vae", vae_name)
        if path.is_dir() and not (path / "config.json").is_file():
            from emoji_model.errors import CheckpointMismatchError

            raise CheckpointMismatchError(str(path), note="a VAE folder needs the config.json of a diffusers "
                                                          "AutoencoderKL beside its weights")
        return (runtime.load_vae(path),)


def host_vae_encoder(vae):
    """vae_encode for ComfyUI's VAE: pixels [B,3,H,W] in -1..1 → latents × 0.18215 (VAE.encode is unscaled)."""

    def encode(pixels):
        images = ((pixels.float() + 1) / 2).clamp(0, 1).movedim(1, -1)  # [B,H,W,3] in 0..1
        return vae.encode(images).to(pixels.device) * LATENT_SCALE

    return encode


def host_clip_encoder(clip_vision):
    """clip_encode for ComfyUI's CLIP_VISION: pixels [B,3,H,W] in 0..1 → last_hidden_state [B,T,1024]."""

    def encode(pixels):
        out = clip_vision.encode_image(pixels.float().movedim(1, -1))
        return out["last_hidden_state"].to(pixels.device)

    return encode


NODES = [LoadModel, LoadVAE, ReferenceEncoder]
