"""`landmarks`: extract MediaPipe face landmarks of an image or a video into a FaceTrack .npz."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, add_render_options, face_args, write_render

NAME = "landmarks"
HELP = "extract face landmarks (points, canonical vertices, pose, blendshapes) of an image or video"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `landmarks`."""
    parser.add_argument("input", help="an image or a video file")
    parser.add_argument("--out", required=True, help="the face track to write (.npz)")
    add_face_options(parser)
    add_render_options(parser)


def run(args: argparse.Namespace) -> int:
    """Extract, save, optionally render."""
    from ..landmarks import extract_file, faces_of, save_faces
    from ..landmarks.extract import import_mediapipe

    import_mediapipe()  # a second or more on a cold start: not part of the extraction's speed
    start = time.perf_counter()
    faces = extract_file(args.input, **face_args(args))
    elapsed = time.perf_counter() - start
    save_faces(faces, args.out)
    tracks = faces_of(faces)
    first = tracks[0]
    log.info("%d face(s), %d frame(s) of %dx%d, %d with a face%s, in %.2f s (%.1f frames/s, MediaPipe's import "
             "excluded) -> %s", len(tracks), len(first), *first.size, int(first.valid.sum()),
             " (fitted into the face box)" if first.any_fitted else "", elapsed, len(first) / max(elapsed, 1e-9),
             args.out)
    if args.render:
        log.info("render -> %s", write_render(args.render, faces, first.fps, contour=args.contour,
                                              outer_lips=args.outer_lips))
    return 0
