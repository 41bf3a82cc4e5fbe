"""`align`: transfer a driving video's expressions and head motion onto a reference portrait."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, add_render_options, track_from_path, write_render

NAME = "align"
HELP = "motion alignment: driving landmarks in the reference portrait's geometry"

log = logging.getLogger(__name__)


def add_align_options(parser: argparse.ArgumentParser) -> None:
    """The aligner's options, shared with other commands."""
    parser.add_argument("--no-relative-pose", dest="relative_pose", action="store_false",
                        help="keep the reference head pose; transfer the expression only")
    parser.add_argument("--neutral", default="auto",
                        help="neutral driving frame: auto (lowest blendshape sum), first, or an index")
    parser.add_argument("--expression-scale", type=float, default=1.0, metavar="S",
                        help="scale of the transferred expression, 0..2 (default 1)")
    parser.add_argument("--no-iris", dest="iris_tracking", action="store_false",
                        help="keep the reference's pupils instead of following the driving ones")
    parser.add_argument("--smoothing", type=int, default=0, metavar="FRAMES",
                        help="Savitzky-Golay window over time, in frames (0 = off)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `align`."""
    parser.add_argument("--reference", required=True, help="reference portrait: an image or a track .npz")
    parser.add_argument("--driving", required=True, help="driving motion: a video, an image or a track .npz")
    parser.add_argument("--out", required=True, help="the aligned face track to write (.npz)")
    add_face_options(parser, " of the reference")
    add_align_options(parser)
    add_render_options(parser)


def run(args: argparse.Namespace) -> int:
    """Extract (or load) both tracks, align, save, optionally render at the reference size."""
    from ..align import align_motion

    start = time.perf_counter()
    reference = track_from_path(args.reference, args.face_index, args.face_model)
    driving = track_from_path(args.driving, 0, args.face_model)
    extracted = time.perf_counter()
    aligned = align_motion(reference, driving, relative_pose=args.relative_pose, neutral=args.neutral,
                           expression_scale=args.expression_scale, iris_tracking=args.iris_tracking,
                           smoothing=args.smoothing)
    aligned.save(args.out)
    log.info("aligned %d driving frames onto the %dx%d reference in %.3f s (landmarks %.2f s) -> %s",
             len(aligned), *aligned.size, time.perf_counter() - extracted, extracted - start, args.out)
    if args.render:
        log.info("render -> %s", write_render(args.render, aligned, aligned.fps, contour=args.contour,
                                              outer_lips=args.outer_lips))
    return 0
