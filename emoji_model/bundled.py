"""The small model shipped with the pack (emoji_model/assets/), named in one place.

Its files are offered in the model lists of the nodes and the command line under the names in
:data:`BUNDLED_NAMES` ("bundled/..."), after the user's own files; a real file of that name in a
model folder wins. It was made by this pack's trainer: it checks the pipeline, it is not a quality
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
PREFIX = "bundled/"


@dataclass(frozen=True)
class BundledModel:
    """Paths of the bundled networks and the settings they were trained for."""

    weights: Path        # Follow-Your-Emoji networks in our format
    vae: Path            # a diffusers AutoencoderKL save_pretrained folder
    image_encoder: Path  # a transformers CLIPVisionModelWithProjection folder
    size: int = 64       # the resolution it was trained at (pixels, square)
    steps: int = 20      # denoising steps that suffice for it

    def by_kind(self) -> dict[str, Path]:
        """Model kind (emoji_model.runtime.MODEL_KINDS) -> bundled path."""
        return {"follow_your_emoji": self.weights, "vae": self.vae, "clip_vision": self.image_encoder}


BUNDLED = BundledModel(weights=ASSETS / "demo_tiny.safetensors", vae=ASSETS / "demo_vae",
                       image_encoder=ASSETS / "demo_clip")
# The name each bundled file has in a model list, by model kind.
BUNDLED_NAMES: dict[str, str] = {kind: PREFIX + path.name for kind, path in BUNDLED.by_kind().items()}


def bundled_path(kind: str, name: str) -> Path | None:
    """The bundled file that ``name`` stands for in the lists of ``kind``, or None."""
    if BUNDLED_NAMES.get(kind) == name.replace("\\", "/"):
        return BUNDLED.by_kind()[kind]
    return None
