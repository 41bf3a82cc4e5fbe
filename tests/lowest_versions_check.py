"""Run by scripts/lowest_versions.sh in a venv holding the lowest allowed dependency versions.

Imports the networks, builds and loads the bundled model, runs the reference encoder, a denoising step
through the sampler and a VAE decode, and imports the landmark, video and metric libraries. Prints the
versions it ran with; exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "mediapipe", "safetensors", "einops",
            "opencv-contrib-python", "numpy", "av", "scikit-image", "tqdm", "pyyaml", "scipy")


def main() -> int:
    """Exercise the networks and the libraries; 0 when everything ran."""
    print("[lowest] " + ", ".join(f"{p} {md.version(p)}" for p in PACKAGES), flush=True)
    import numpy as np
    import torch

    from emoji_model.bundled import BUNDLED_SIZE, load_bundled
    from emoji_model.networks import FYEConfig, build_model
    from emoji_model.pipeline import generate_latents, reference_controls
    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from emoji_model.sampling import SamplerSettings

    tiny = build_model(FYEConfig.tiny(), "cpu")
    assert sum(p.numel() for p in tiny.parameters()) > 0
    model, vae, clip = load_bundled()
    image = np.full((96, 96, 3), 128, np.uint8)
    image[20:76, 28:68] = (200, 160, 140)
    size = (BUNDLED_SIZE, BUNDLED_SIZE)
    ref = encode_reference(model, image, vae_encoder_from_diffusers(vae), clip_encoder_from_transformers(clip),
                           size=size)
    from emoji_model.landmarks import FaceTrack

    track = FaceTrack(points=np.random.default_rng(0).uniform(0.3, 0.7, (3, 478, 3)),
                      canonical=np.zeros((3, 478, 3)), pose=np.tile(np.eye(4), (3, 1, 1)),
                      blendshapes=np.zeros((3, 52)), valid=np.ones(3, bool), size=(96, 96))
    latents = generate_latents(model, ref, reference_controls(track, size), SamplerSettings(steps=2, window=3, overlap=1))
    with torch.no_grad():
        frames = vae.decode(latents / 0.18215).sample
    assert torch.isfinite(frames).all() and frames.shape == (3, 3, *size), frames.shape
    import av  # noqa: F401
    import cv2  # noqa: F401
    import mediapipe  # noqa: F401
    import scipy.signal  # noqa: F401
    import skimage.metrics  # noqa: F401
    from mediapipe.tasks.python import vision  # noqa: F401

    print(f"[lowest] networks ran: {tuple(frames.shape)} frames, finite", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
