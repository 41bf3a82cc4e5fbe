"""Helpers shared by the landmark subcommands: options, inputs that are files or tracks, renders."""

from __future__ import annotations

import argparse
from pathlib import Path



def add_face_options(parser: argparse.ArgumentParser, where: str = "") -> None:
    """--face-model and --face-index."""
    parser.add_argument("--face-model", metavar="PATH", default=None,
                        help="MediaPipe face_landmarker.task (default: models/mediapipe or the packaged one)")
    parser.add_argument("--face-index", type=int, default=0, metavar="N",
                        help=f"which face{where} when there are several, by size: 0 = largest (default)")


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """--render, --contour, --outer-lips."""
    parser.add_argument("--render", metavar="PATH", default=None,
                        help="also write the control images: an .mp4, or a .png for a still")
    parser.add_argument("--contour", action="store_true",
                        help="draw the face contour too (the model was trained without it)")
    parser.add_argument("--outer-lips", action="store_true", help="draw the outer lip line too")


def track_from_path(path: str | Path, face_index: int = 0, face_model: str | None = None):
    """A FaceTrack: loaded from an .npz, or extracted from an image or video file."""
    from ..landmarks import FaceTrack, extract_file

    path = Path(path)
    if path.suffix.lower() == ".npz":
        return FaceTrack.load(path)
    return extract_file(path, face_index=face_index, face_model=face_model)


def write_render(path: str | Path, track, fps: float, *, contour: bool = False, outer_lips: bool = False) -> Path:
    """Write the control images of ``track``: its first frame as an image for image suffixes, else an mp4.

    Frames are drawn one at a time and streamed to the writer: memory does not grow with the track.
    """
    from PIL import Image

    from ..landmarks import iter_controls
    from ..video import is_image_file, write_video

    path = Path(path)
    frames = iter_controls(track, include_contour=contour, outer_lips=outer_lips)
    if is_image_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(next(frames)).save(path)
        return path
    return write_video(path, frames, fps if fps and fps > 0 else 25.0)
