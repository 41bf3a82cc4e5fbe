"""`align`: transfer a driving video's expressions and head motion onto a reference portrait."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, add_render_options, face_args, track_from_path, write_render

NAME = "align"
HELP = "motion alignment: driving landmarks in the reference portrait's geometry"

log = logging.getLogger(__name__)


def add_align_options(parser: argparse.ArgumentParser) -> None:
    """The aligner's options, shared with other commands."""
    from ..constants import (
        IRIS_MODES,
        LID_MODES,
        REGION_PRESETS,
        REGIONS,
        ROTATION_MODES,
        TRANSLATION_LIMIT,
        TRANSLATION_MODES,
    )

    parser.add_argument("--rotation", choices=ROTATION_MODES, default="relative",
                        help="head rotation: relative (the portrait's own pose turned as the driver turns from the "
                             "neutral frame; default), absolute (the driver's rotation, as released), off")
    parser.add_argument("--translation", choices=TRANSLATION_MODES, default="relative",
                        help="head translation: relative (the driver's movement since the neutral frame in face "
                             "widths, softly limited; default), released (since frame 0, as released), off")
    parser.add_argument("--translation-strength", type=float, default=1.0, metavar="S",
                        help="share of the driver's movement the portrait follows, 0..1 (default 1)")
    parser.add_argument("--translation-limit", type=float, default=TRANSLATION_LIMIT, metavar="FACE_WIDTHS",
                        help=f"soft limit of the relative movement in face widths (default {TRANSLATION_LIMIT})")
    parser.add_argument("--iris", choices=IRIS_MODES, default="relative",
                        help="pupils: relative (the portrait's gaze moved as the driver's moves; default), absolute "
                             "(the driver's place in the eye, as released), off")
    parser.add_argument("--lids", choices=LID_MODES, default="relative",
                        help="lids: relative (they close as far as the driver's as a share of the eye's opening; "
                             "default), absolute (as far as the driver's, as released)")
    parser.add_argument("--released", action="store_true",
                        help="the released aligner: --rotation absolute --translation released --iris absolute "
                             "--lids absolute")
    parser.add_argument("--no-relative-pose", dest="relative_pose", action="store_false",
                        help="keep the reference head pose (rotation and translation off): the expression only")
    parser.add_argument("--neutral", default="auto",
                        help="neutral driving frame: auto (lowest blendshape sum; a driving photo: blendshapes), "
                             "first, blendshapes (each frame's expression from its blendshape scores), or an index")
    parser.add_argument("--expression-scale", type=float, default=1.0, metavar="S",
                        help="scale of the transferred expression, 0..2 (default 1)")
    parser.add_argument("--regions", choices=list(REGION_PRESETS), default="all",
                        help="what follows the driver: all (default), 'expression only', 'only mouth', 'only eyes'")
    for region in REGIONS:
        parser.add_argument(f"--{region}", type=float, default=1.0, metavar="S",
                            help=f"strength of the {'head pose' if region == 'head' else region}, 0..2, multiplying "
                                 "the --regions preset (default 1)")
    parser.add_argument("--no-iris", dest="iris_tracking", action="store_false",
                        help="keep the reference's pupils instead of following the driving ones (--iris off)")
    parser.add_argument("--smoothing", type=int, default=0, metavar="FRAMES",
                        help="Savitzky-Golay window over time, in frames (0 = off)")
    parser.add_argument("--loop", type=int, nargs="?", const=-1, default=0, metavar="FRAMES",
                        help="close the track on its first frame for a seamless loop, blending the last FRAMES "
                             "frames (default: a quarter of the track, at most 16)")


def align_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`emoji_model.align.align_motion` from add_align_options' arguments."""
    from ..align import RELEASED
    from ..constants import REGIONS

    out = {"rotation": args.rotation, "translation": args.translation, "iris": args.iris, "lids": args.lids,
           "translation_strength": args.translation_strength, "translation_limit": args.translation_limit,
           "neutral": args.neutral, "expression_scale": args.expression_scale, "smoothing": args.smoothing,
           "regions": {"preset": args.regions, **{r: getattr(args, r) for r in REGIONS}},
           "loop": True if args.loop == -1 else args.loop, "relative_pose": args.relative_pose,
           "iris_tracking": args.iris_tracking}
    if args.released:
        out.update(RELEASED)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `align`."""
    parser.add_argument("--reference", required=True, help="reference portrait: an image or a track .npz")
    parser.add_argument("--driving", required=True,
                        help="driving motion: a video, a photo (its expression is transferred) or a track .npz")
    parser.add_argument("--driving-face-index", default="0", metavar="N",
                        help="which face of the driving video, by size (default 0); 'all' drives each reference "
                             "face with its own driving face")
    parser.add_argument("--out", required=True, help="the aligned face track to write (.npz)")
    add_face_options(parser, " of the reference")
    add_align_options(parser)
    add_render_options(parser)


def run(args: argparse.Namespace) -> int:
    """Extract (or load) both tracks, align, save, optionally render at the reference size."""
    from ..align import align_faces
    from ..landmarks import faces_of, save_faces
    from ..landmarks.extract import parse_face_index

    start = time.perf_counter()
    reference = track_from_path(args.reference, **face_args(args))
    driving = track_from_path(args.driving, parse_face_index(args.driving_face_index), args.face_model)
    extracted = time.perf_counter()
    aligned = align_faces(reference, driving, **align_kwargs(args))
    save_faces(aligned, args.out)
    first = faces_of(aligned)[0]
    log.info("aligned %d driving frames onto %d face(s) of the %dx%d reference in %.3f s (landmarks %.2f s) -> %s",
             len(first), len(faces_of(aligned)), *first.size, time.perf_counter() - extracted, extracted - start,
             args.out)
    if args.render:
        log.info("render -> %s", write_render(args.render, aligned, first.fps, contour=args.contour,
                                              outer_lips=args.outer_lips))
    return 0
