"""Follow-Your-Emoji networks: appearance net, denoising UNet with temporal layers, guider, image prompt.

Importing this package imports torch and diffusers; keep it out of node registration.
"""

from .appearance import AppearanceNet
from .blocks import TemporalTransformer
from .config import MOTION_NORM_GROUPS, RELEASED_SCHEDULER, FYEConfig
from .guider import LandmarkGuider
from .image_prompt import LinearImagePrompt, QFormerImagePrompt, build_image_prompt
from .model import COMPONENTS, FollowYourEmoji, build_model
from .reference_attention import LayerContext, ReferenceAttnProcessor, ReferenceContext
from .unet import DenoisingUNet

__all__ = [
    "FYEConfig",
    "FollowYourEmoji",
    "build_model",
    "COMPONENTS",
    "RELEASED_SCHEDULER",
    "MOTION_NORM_GROUPS",
    "AppearanceNet",
    "DenoisingUNet",
    "LandmarkGuider",
    "LinearImagePrompt",
    "QFormerImagePrompt",
    "build_image_prompt",
    "ReferenceAttnProcessor",
    "ReferenceContext",
    "LayerContext",
    "TemporalTransformer",
]
