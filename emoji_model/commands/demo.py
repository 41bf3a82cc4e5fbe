"""`demo`: the landmark pipeline on real inputs — astronaut portrait, driving video, aligned motion."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..errors import InvalidRequestError
from ..runtime import PACK_ROOT

NAME = "demo"
HELP = "landmark demo: skimage's astronaut driven by a video -> out/demo.mp4 (reference | driving | aligned)"

log = logging.getLogger(__name__)


def default_driving() -> Path:
    """The shared test video beside the repository (or under $FYE_SHARED)."""
    shared = Path(os.environ.get("FYE_SHARED", PACK_ROOT.parent / "shared"))
    return shared / "data" / "driving_expressions.mp4"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `demo`."""
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--driving", default=None,
                        help=f"driving video (default: {default_driving()} when it exists)")
    parser.add_argument("--face-model", metavar="PATH", default=None, help="MediaPipe face_landmarker.task")


def run(args: argparse.Namespace) -> int:
    """Extract, align, render the three panels, write demo.mp4 and the two tracks."""
    import numpy as np
    from skimage import data

    from ..align import align_motion
    from ..landmarks import extract_image, extract_video, render_controls, render_frame
    from ..video import read_video, write_video

    driving_path = Path(args.driving) if args.driving else default_driving()
    if not driving_path.is_file():
        raise InvalidRequestError(f"no driving video at '{driving_path}': pass one with --driving VIDEO")
    out = Path(args.out)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        return now

    t = time.perf_counter()
    reference = data.astronaut()
    frames, fps = read_video(driving_path)
    t = lap("decode", t)
    ref_track = extract_image(reference, face_model=args.face_model, what="the astronaut")
    drv_track = extract_video(frames, fps, face_model=args.face_model, what=f"video '{driving_path.name}'")
    t = lap("landmarks", t)
    aligned = align_motion(ref_track, drv_track)
    t = lap("alignment", t)
    controls = render_controls(aligned)
    h, w = reference.shape[:2]
    panels = np.zeros((len(aligned), h, 3 * w, 3), dtype=np.uint8)
    panels[:, :, :w] = reference
    for i, frame in enumerate(frames):
        # Driving landmarks over the darkened driving frame, resized to the reference's height.
        dimmed = (frame.astype(np.float32) * 0.4).astype(np.uint8)
        drawn = render_frame(drv_track.points[i], drv_track.size, image=dimmed)
        panels[i, :, w:2 * w] = _fit(drawn, (w, h))
    panels[:, :, 2 * w:] = controls
    t = lap("render", t)
    video = write_video(out / "demo.mp4", panels, fps)
    ref_track.save(out / "reference.npz")
    drv_track.save(out / "driving.npz")
    aligned.save(out / "aligned.npz")
    lap("write", t)
    log.info("demo: %d frames -> %s", len(panels), video)
    log.info("timings: %s (landmarks %.1f frames/s)", ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
             len(frames) / max(timings["landmarks"], 1e-9))
    return 0


def _fit(image, size):
    """Resize ``image`` to (w, h), keeping the aspect ratio and padding with black."""
    import cv2
    import numpy as np

    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = resized
    return out
