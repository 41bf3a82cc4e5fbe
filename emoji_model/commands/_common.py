"""Helpers shared by the landmark subcommands: options, inputs that are files or tracks, renders."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_face_options(parser: argparse.ArgumentParser, where: str = "", every: bool = True) -> None:
    """--face-model, --face-index and --face-box."""
    parser.add_argument("--face-model", metavar="PATH", default=None,
                        help="MediaPipe face_landmarker.task (default: models/mediapipe or the packaged one)")
    parser.add_argument("--face-index", default="0", metavar="N",
                        help=f"which face{where} when there are several, by size: 0 = largest (default)"
                             + ("; 'all' for every face, one track each" if every else ""))
    parser.add_argument("--face-box", metavar="X,Y,W,H", default=None,
                        help=f"the face{where} in pixels, for faces MediaPipe misses (animals, cartoons, statues): "
                             "the face inside it is taken, or a frontal canonical face is fitted into it")


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """--render, --contour, --outer-lips."""
    parser.add_argument("--render", metavar="PATH", default=None,
                        help="also write the control images: an .mp4, or a .png for a still")
    parser.add_argument("--contour", action="store_true",
                        help="draw the face contour too (the model was trained without it)")
    parser.add_argument("--outer-lips", action="store_true", help="draw the outer lip line too")


def face_args(args: argparse.Namespace) -> dict:
    """face_index, face_model and face_box for the extraction functions, from add_face_options' arguments."""
    from ..landmarks.extract import parse_face_index
    from ..landmarks.fit import parse_face_box

    return {"face_index": parse_face_index(args.face_index), "face_model": args.face_model,
            "face_box": parse_face_box(args.face_box)}


def track_from_path(path: str | Path, face_index: int | str = 0, face_model: str | None = None,
                    face_box: tuple[float, float, float, float] | None = None):
    """Face tracks (a FaceTrack, or a FaceGroup of several faces): loaded from an .npz, or extracted from a file."""
    from ..landmarks import extract_file, load_faces

    path = Path(path)
    if path.suffix.lower() == ".npz":
        return load_faces(path)
    return extract_file(path, face_index=face_index, face_model=face_model, face_box=face_box)


def write_render(path: str | Path, faces, fps: float, *, contour: bool = False, outer_lips: bool = False) -> Path:
    """Write the control images of a track or group (every face drawn): an image for image suffixes, else an mp4.

    The first frame only for an image. Frames are drawn one at a time and streamed to the writer: memory
    does not grow with the track.
    """
    from PIL import Image

    from ..landmarks import iter_controls
    from ..video import is_image_file, write_video

    path = Path(path)
    frames = iter_controls(faces, include_contour=contour, outer_lips=outer_lips)
    if is_image_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(next(frames)).save(path)
        return path
    return write_video(path, frames, fps if fps and fps > 0 else 25.0)
