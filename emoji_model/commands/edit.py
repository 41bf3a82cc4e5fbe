"""`edit`: animate a portrait's face without a driving video, from keyframed expression controls."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, add_render_options, face_args, track_from_path, write_render

NAME = "edit"
HELP = "keyframed expression editor: blinks, smiles, mouth, brows, gaze and head turns over time"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `edit`."""
    from ..editor import CONTROLS, INTERPOLATIONS

    parser.add_argument("--reference", required=True,
                        help="the portrait: an image, or a face track .npz (a video's track is edited frame by frame)")
    parser.add_argument("--keys", default="", metavar="TEXT",
                        help='keyframes, e.g. "0: blink=0 smile=0; 12: blink=1; 24: blink=0 smile=0.8 yaw=15" '
                             "(FRAME or seconds like 1.5s; controls: " + ", ".join(CONTROLS) + ")")
    parser.add_argument("--keys-file", metavar="PATH", default=None, help="read the keyframes from a text file")
    parser.add_argument("--set", dest="constants", action="append", default=[], metavar="NAME=VALUE",
                        help="a constant added to a control in every frame (repeatable)")
    parser.add_argument("--frames", type=int, default=48, metavar="N", help="frames made from a still (default 48)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="linear",
                        help="how values move between keys (default linear)")
    parser.add_argument("--loop", action="store_true",
                        help="close the animation on its first frame: after the last key every control returns to "
                             "its first key's value, so the clip loops without a jump")
    parser.add_argument("--out", required=True, help="the edited face track to write (.npz)")
    add_face_options(parser, " of the reference")
    add_render_options(parser)


def _constants(pairs: list[str]) -> dict[str, float]:
    from ..errors import InvalidRequestError

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise InvalidRequestError(f"--set expects NAME=VALUE, got '{pair}'") from None
    return out


def run(args: argparse.Namespace) -> int:
    """Extract (or load) the reference, apply the keys, save, optionally render."""
    from pathlib import Path

    from ..editor import animate_face
    from ..errors import InvalidRequestError
    from ..landmarks import faces_of, from_faces, save_faces

    keys = args.keys
    if args.keys_file:
        try:
            keys = Path(args.keys_file).read_text() + "\n" + keys
        except OSError as exc:
            raise InvalidRequestError(f"cannot read --keys-file '{args.keys_file}': {exc}") from exc
    start = time.perf_counter()
    reference = track_from_path(args.reference, **face_args(args))
    extracted = time.perf_counter()
    edited = from_faces([animate_face(face, keys, frames=args.frames, fps=args.fps, interpolation=args.interpolation,
                                      constants=_constants(args.constants), loop=args.loop)
                         for face in faces_of(reference)])
    save_faces(edited, args.out)
    first = faces_of(edited)[0]
    log.info("edited %d frames of %d face(s) of %dx%d in %.3f s (landmarks %.2f s) -> %s", len(first),
             len(faces_of(edited)), *first.size, time.perf_counter() - extracted, extracted - start, args.out)
    if args.render:
        log.info("render -> %s", write_render(args.render, edited, first.fps, contour=args.contour,
                                              outer_lips=args.outer_lips))
    return 0
