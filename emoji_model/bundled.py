"""The small model bundled with the pack (emoji_model/assets/), made by this pack's own trainer.

``python -m trainer.make_demo_checkpoint`` rebuilds it. It animates 64-pixel portraits on a CPU in
seconds: enough to see the whole chain work (the demo, the tests, CI's ComfyUI workflows) and to follow a
reference's colours, style and layout, not a substitute for SD-1.5-size weights.

Its files are offered in the model lists of the nodes and the command line under the names in
:data:`BUNDLED_NAMES` ("bundled/..."), after the user's own files; a real file of that name in a
model folder wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_WEIGHTS = ASSETS / "demo_tiny.safetensors"    # our format, fp16
BUNDLED_VAE = ASSETS / "demo_vae"                     # diffusers AutoencoderKL, save_pretrained folder
BUNDLED_IMAGE_ENCODER = ASSETS / "demo_clip"          # transformers CLIPVisionModelWithProjection folder
BUNDLED_FILES = (BUNDLED_WEIGHTS, BUNDLED_VAE, BUNDLED_IMAGE_ENCODER)
BUNDLED_SIZE = 64                                     # the resolution it was trained at (pixels, square)
# How the bundled model samples best: one starting noise for every frame (its temporal layers are small, so
# independent noise flickers more than the landmarks move), no guidance beyond the reference itself.
BUNDLED_SAMPLING = {"steps": 20, "cfg": 1.5, "noise_share": 1.0}
BUNDLED_CROP_MARGIN = 1.6  # face crop of its training clips (face height × margin); 1.8 suits SD-1.5-size models
CROP_MARGIN = 1.8
BUNDLED_NOTICE = ("the bundled 64-pixel model made by this pack's trainer (a demonstration model, not a "
                  "substitute for SD-1.5-size weights)")
# Model kind (emoji_model.runtime.MODEL_KINDS) -> the bundled file of that kind, and its name in model lists.
BUNDLED_BY_KIND: dict[str, Path] = {"follow_your_emoji": BUNDLED_WEIGHTS, "vae": BUNDLED_VAE,
                                    "clip_vision": BUNDLED_IMAGE_ENCODER}
PREFIX = "bundled/"
BUNDLED_NAMES: dict[str, str] = {kind: PREFIX + path.name for kind, path in BUNDLED_BY_KIND.items()}


def is_bundled(path: str | Path | None) -> bool:
    """True when ``path`` is the bundled weights file."""
    return path is not None and Path(path).resolve() == BUNDLED_WEIGHTS


def bundled_path(kind: str, name: str) -> Path | None:
    """The bundled file that ``name`` stands for in the lists of ``kind``, or None."""
    if BUNDLED_NAMES.get(kind) == name.replace("\\", "/"):
        return BUNDLED_BY_KIND[kind]
    return None


def load_bundled(device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any, Any]:
    """(model, vae, image encoder) of the bundled model on ``device`` (float32 unless ``dtype``)."""
    import torch

    from .checkpoints import load_clip_vision, load_model, load_vae

    dtype = dtype or torch.float32
    return (load_model(BUNDLED_WEIGHTS, device=device, dtype=dtype),
            load_vae(BUNDLED_VAE, device=device, dtype=dtype),
            load_clip_vision(BUNDLED_IMAGE_ENCODER, device=device, dtype=dtype))
