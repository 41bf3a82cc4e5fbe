"""Follow-Your-Emoji: expression-aware portrait animation, host-free library.

Importing this package is cheap: torch, diffusers and mediapipe are imported by the
submodules that need them, so ComfyUI can register the nodes without loading them.
"""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("emoji_model")
"""The one package logger; submodules log through children of it."""

from .errors import (  # noqa: E402  (the logger must exist before submodules use it)
    CheckpointMismatchError,
    FYEError,
    InvalidRequestError,
    LandmarkerError,
    MissingModelError,
    NoFaceDetectedError,
    VideoReadError,
)

__all__ = [
    "__version__",
    "logger",
    "FYEError",
    "NoFaceDetectedError",
    "CheckpointMismatchError",
    "MissingModelError",
    "InvalidRequestError",
    "LandmarkerError",
    "VideoReadError",
]
