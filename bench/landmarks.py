"""Landmark throughput on the driving video: extraction against a naive port, alignment and rendering.

    python bench/landmarks.py [--video PATH] [--face-model PATH] [--repeat 3]

Prints, on this machine:
  extraction: frames/s of our extraction (one VIDEO-mode landmarker per video, geometry batched
              over frames) against the naive port (a new IMAGE-mode landmarker per frame, its
              median frame time, so MediaPipe's occasional multi-second stalls when many
              landmarkers are created do not inflate the ratio), on the same decoded frames;
  file:       frames/s from the video file (decoding overlapped with detection);
  alignment + rendering: seconds for every frame of the video onto skimage's astronaut.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter

SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))


def naive_extraction(frames, model_path: str) -> list[float]:
    """Seconds per frame of the simple port: a fresh IMAGE-mode landmarker for every frame."""
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    times = []
    for frame in frames:
        start = time.perf_counter()
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=model_path), num_faces=1,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        with vision.FaceLandmarker.create_from_options(options) as landmarker:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
            np.array([(p.x, p.y, p.z) for p in result.face_landmarks[0]])
        times.append(time.perf_counter() - start)
    return times


def best_of(repeat: int, fn) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(SHARED / "data" / "driving_expressions.mp4"))
    parser.add_argument("--face-model", default=None, help="face_landmarker.task (default: the packaged one)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from skimage import data

    from emoji_model.align import align_motion
    from emoji_model.landmarks import (
        extract_file,
        extract_image,
        extract_video,
        render_controls,
        resolve_face_model,
    )
    from emoji_model.video import read_video

    model_path = str(resolve_face_model(args.face_model))
    frames, fps = read_video(args.video)
    n = len(frames)
    h, w = frames.shape[1:3]
    extract_video(frames[:5], fps, face_model=model_path)  # load libraries and the model once

    ours = best_of(args.repeat, lambda: extract_video(frames, fps, face_model=model_path))
    naive = naive_extraction(frames, model_path)
    typical = n * statistics.median(naive)  # the naive port without its occasional stalls
    stalls = [t for t in naive if t > 10 * statistics.median(naive)]
    from_file = best_of(args.repeat, lambda: extract_file(args.video, face_model=model_path))
    print(f"extraction: {n / ours:.1f} frames/s at {w}x{h} (naive per-frame landmarker: "
          f"{n / typical:.1f} frames/s, {typical / ours:.1f}x)")
    print(f"naive wall clock: {n / sum(naive):.1f} frames/s ({len(stalls)} stalled frame(s), "
          f"{sum(stalls):.1f} s in all)")
    print(f"file: {n / from_file:.1f} frames/s including decoding ({n} frames of {Path(args.video).name})")

    reference = extract_image(data.astronaut(), face_model=model_path)
    driving = extract_video(frames, fps, face_model=model_path)
    align_s = best_of(args.repeat, lambda: align_motion(reference, driving))
    aligned = align_motion(reference, driving)
    render_s = best_of(args.repeat, lambda: render_controls(aligned))
    print(f"alignment + rendering: {align_s + render_s:.3f} s for {n} frames "
          f"(alignment {1000 * align_s:.1f} ms, rendering {1000 * render_s:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
