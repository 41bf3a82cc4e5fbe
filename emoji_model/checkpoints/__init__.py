"""Checkpoint IO: our safetensors format, the released Follow-Your-Emoji weights, and base weights.

Loading reads as a recipe: read tensors (:mod:`.reader`) → detect the layout from the files
(:mod:`.formats`) → map names to ours (:mod:`.released`, :mod:`.sd_unet`, :mod:`.motion_module`) →
check every name and shape against the network → assign the tensors onto a meta-device model in the
target dtype and device → verify nothing stayed uninitialised (:mod:`.assign`). A mismatch raises
:class:`~emoji_model.errors.CheckpointMismatchError` listing missing, unexpected and mis-shaped
tensors; nothing is dropped silently.

Formats
-------
* **Ours** (:mod:`.ours`): ``.safetensors`` whose metadata holds ``fye_format`` and the
  :class:`FYEConfig` as JSON (``fye_config``). Either one merged file with keys prefixed
  ``appearance.``, ``unet.``, ``guider.``, ``image_prompt.``, or one file per component
  (``fye_component`` names it; keys carry no prefix).
* **Released** (:mod:`.released`): ``referencenet.pth``, ``unet.pth``, ``lmk_guider.pth`` (or
  ``.safetensors`` repacks with the same stems); the architecture comes from their shapes
  (:mod:`.config_from_shapes`).
* **Base weights** for training or personalisation: SD-1.5 single files (ldm layout,
  ``model.diffusion_model.*``) or diffusers UNet files into the appearance net and the UNet's spatial
  layers (:mod:`.sd_unet`); AnimateDiff motion modules into the temporal layers (:mod:`.motion_module`);
  the CLIP image encoder and the VAE (:mod:`.encoders`).

Importing this package imports torch and diffusers; keep it out of node registration.
"""

from ..constants import RELEASED_FILES
from .assign import Adapter, assign_tensors, check_initialised, expected_tensors
from .config_from_shapes import infer_config
from .encoders import CLIP_VIT_L14_VISION_CONFIG, SD_VAE_CONFIG, load_clip_vision, load_vae
from .formats import describe, iter_component_counts, load_model
from .motion_module import load_motion_module
from .ours import FORMAT_VERSION, is_our_format, load_ours, save_components, save_model
from .reader import CHECKPOINT_SUFFIXES, TensorFile, expand_paths, read_metadata, read_state_dict
from .released import load_released, motion_to_ours, ours_to_released, released_state_dicts, released_to_ours
from .sd_unet import LDM_UNET_PREFIX, ldm_unet_blocks, ldm_unet_names, load_sd_unet

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CLIP_VIT_L14_VISION_CONFIG",
    "FORMAT_VERSION",
    "LDM_UNET_PREFIX",
    "RELEASED_FILES",
    "SD_VAE_CONFIG",
    "Adapter",
    "TensorFile",
    "assign_tensors",
    "check_initialised",
    "describe",
    "expand_paths",
    "expected_tensors",
    "infer_config",
    "is_our_format",
    "iter_component_counts",
    "ldm_unet_blocks",
    "ldm_unet_names",
    "load_clip_vision",
    "load_model",
    "load_motion_module",
    "load_ours",
    "load_released",
    "load_sd_unet",
    "load_vae",
    "motion_to_ours",
    "ours_to_released",
    "read_metadata",
    "read_state_dict",
    "released_state_dicts",
    "released_to_ours",
    "save_components",
    "save_model",
]
