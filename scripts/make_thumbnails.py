"""Make the templates' thumbnails (example_workflows/NAME.jpg) from the workflows' real outputs.

    FYE_HOST_OUTPUT=/tmp/out .venv/bin/python -m pytest -q tests/test_comfyui_host.py -k runs_as_shipped
    .venv/bin/python scripts/make_thumbnails.py /tmp/out

For each workflow, three frames (at a quarter, half and three quarters) of the video it wrote, side by
side; with --icon, web/icon.png from the middle frame of one of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The output each thumbnail shows (a file name prefix), by workflow.
MAIN_OUTPUT = {"landmarks_only": "aligned_landmarks", "expression_editor": "edited_in_place",
               "follow_your_emoji": "animation_0", "follow_your_emoji_long": "animation_long_0"}
SIDE = 256


def strip(video: Path):
    """Three frames of ``video`` side by side, each SIDE pixels high (uint8 RGB)."""
    import cv2
    import numpy as np

    from emoji_model.video import read_video

    frames, _ = read_video(video)
    picks = [frames[round(f * (len(frames) - 1))] for f in (0.25, 0.5, 0.75)]
    # Landmark renders are thin lines on black: show the square around what is drawn, not the black.
    drawn = np.argwhere(np.max([p.max(axis=-1) for p in picks], axis=0) > 40)
    h, w = picks[0].shape[:2]
    if len(drawn) and (drawn.max(0) - drawn.min(0)).max() < 0.6 * min(h, w):
        (y0, x0), (y1, x1) = drawn.min(0), drawn.max(0)
        side = int(max(y1 - y0, x1 - x0) * 1.3) + 8
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        top, left = max(0, min(h - side, cy - side // 2)), max(0, min(w - side, cx - side // 2))
        picks = [p[top:top + side, left:left + side] for p in picks]
    tiles = [cv2.resize(p, (SIDE, SIDE), interpolation=cv2.INTER_AREA) for p in picks]
    return np.concatenate(tiles, axis=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", type=Path, help="FYE_HOST_OUTPUT of a host-test run (one folder per workflow)")
    p.add_argument("--icon", default=None, help="write web/icon.png from this workflow's middle frame")
    args = p.parse_args()
    from PIL import Image

    for name, prefix in MAIN_OUTPUT.items():
        videos = sorted(v for v in (args.outputs / name).glob("*.mp4") if v.name.startswith(prefix))
        if not videos:
            print(f"no {prefix}* video of {name} in {args.outputs / name}", file=sys.stderr)
            return 1
        image = strip(videos[0])
        Image.fromarray(image).save(REPO / "example_workflows" / f"{name}.jpg", quality=85, optimize=True)
        print(f"{name}.jpg from {videos[0].name}")
        if args.icon == name:
            Image.fromarray(image[:, SIDE:2 * SIDE]).save(REPO / "web" / "icon.png", optimize=True)
            print(f"web/icon.png from {videos[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
