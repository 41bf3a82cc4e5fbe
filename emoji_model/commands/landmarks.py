"""`landmarks`: extract MediaPipe face landmarks of an image or a video into a FaceTrack .npz."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, add_render_options, write_render

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
    from ..landmarks import extract_file, render_controls

    start = time.perf_counter()
    track = extract_file(args.input, face_index=args.face_index, face_model=args.face_model)
    elapsed = time.perf_counter() - start
    track.save(args.out)
    log.info("%d frame(s) of %dx%d, %d with a face, in %.2f s -> %s", len(track), *track.size,
             int(track.valid.sum()), elapsed, args.out)
    if args.render:
        frames = render_controls(track, include_contour=args.contour, outer_lips=args.outer_lips)
        log.info("render -> %s", write_render(args.render, frames, track.fps))
    return 0
