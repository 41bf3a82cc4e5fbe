"""Does the bundled model animate the portrait it is given? Portraits the trainer never saw, one keyed motion.

    python bench/follow_reference.py [--weights FILE --vae DIR --image-encoder DIR] [--frames 48] [--steps 20]

Every portrait (the astronaut, a stylised and recoloured astronaut, the cameraman, three held-out LFW
faces in false colour) is animated with the demo's keyed expression. Prints the L1 matrix at 64×64 between
each video and each reference, then one line per portrait:
  ratio        L1 to its own reference / L1 to the nearest other reference (goal ≤ 0.8);
  motion_corr  correlation between the per-frame change of the video and of its control images (goal ≥ 0.5);
and last the figures: the largest ratio and the smallest motion correlation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")
SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))


def held_out_portraits():
    """name -> RGB uint8 portrait, none of them seen in training (trainer/demo_encoders.py keeps them out)."""
    import cv2
    import numpy as np
    from skimage import data

    from trainer.augment import apply_look
    from trainer.demo_encoders import LFW_HELD_OUT, lfw_faces

    astronaut = data.astronaut()
    styled = apply_look(astronaut, "stylise", {"filter": 0, "sigma_s": 60.0, "sigma_r": 0.45})
    styled = apply_look(styled, "colour", {"brightness": 0.05, "contrast": 1.2, "saturation": 1.3, "hue": 90.0})
    camera = np.repeat(data.camera()[20:220, 150:350, None], 3, axis=-1)
    portraits = {"astronaut": astronaut, "astronaut stylised": styled, "cameraman": camera}
    for k, (i, face) in enumerate(zip(list(LFW_HELD_OUT)[:3], lfw_faces(list(LFW_HELD_OUT)[:3]))):
        tinted = cv2.cvtColor(cv2.applyColorMap(face[..., 0], (cv2.COLORMAP_AUTUMN, cv2.COLORMAP_OCEAN,
                                                                cv2.COLORMAP_PINK)[k]), cv2.COLOR_BGR2RGB)
        portraits[f"lfw {i}"] = tinted
    return portraits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="our .safetensors (default: the bundled model)")
    parser.add_argument("--vae", default=None)
    parser.add_argument("--image-encoder", default=None)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=None, help="default: the bundled model's setting")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--noise-share", type=float, default=None, help="default: the bundled model's setting")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from emoji_model.bundled import BUNDLED_SAMPLING, load_bundled
    from emoji_model.checkpoints import load_clip_vision, load_model, load_vae
    from emoji_model.commands.demo import DEMO_KEYS
    from emoji_model.evaluate import reference_following
    from emoji_model.sampling import SamplerSettings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.weights:
        model, vae, encoder = load_model(args.weights), load_vae(args.vae), load_clip_vision(args.image_encoder)
    else:
        model, vae, encoder = load_bundled()
    start = time.perf_counter()
    result = reference_following(model, vae, encoder, held_out_portraits(),
                                 SamplerSettings(steps=args.steps, window=16, overlap=4,
                                                 cfg=BUNDLED_SAMPLING["cfg"] if args.cfg is None else args.cfg,
                                                 noise_share=BUNDLED_SAMPLING["noise_share"] if args.noise_share is None
                                                 else args.noise_share),
                                 keys=DEMO_KEYS, frames=args.frames, size=args.size,
                                 face_model=str(SHARED / "data" / "face_landmarker.task"))
    names = result["names"]
    print("L1 at 64x64 (rows: videos, columns: references)")
    print(" " * 20 + "".join(f"{n[:10]:>11}" for n in names))
    for name, row in zip(names, result["l1"]):
        print(f"{name[:20]:<20}" + "".join(f"{x:11.3f}" for x in row))
    for name, ratio, corr in zip(names, result["ratio"], result["motion_corr"]):
        print(f"{name:<20} ratio {ratio:.2f}  motion_corr {corr if corr is None else round(corr, 2)}")
    corrs = [c for c in result["motion_corr"] if c is not None]
    print(f"largest ratio {max(result['ratio']):.2f} (goal <= 0.8); smallest motion_corr "
          f"{min(corrs) if corrs else float('nan'):.2f} (goal >= 0.5); {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
