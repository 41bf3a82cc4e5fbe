"""`prepare`: talking-head videos → a resumable dataset of face-cropped clips, controls and FFG masks."""

from __future__ import annotations

import argparse
import logging

NAME = "prepare"
HELP = "decode videos, crop around the face, extract landmarks, render controls and masks into dataset shards"

log = logging.getLogger("emoji_model.trainer.prepare")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `prepare`."""
    parser.add_argument("--videos", required=True, metavar="DIR",
                        help="folder searched recursively for .mp4/.mov/.mkv/.avi/.webm/.m4v (or one video file)")
    parser.add_argument("--out", required=True, metavar="DATASET", help="dataset folder (created or continued)")
    parser.add_argument("--size", type=int, default=512, help="side of the square clips in pixels (default 512)")
    parser.add_argument("--fps", type=float, default=None,
                        help="resample videos to this frame rate (only lowers it; default: keep)")
    parser.add_argument("--clip-length", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--scale", type=float, default=1.6,
                        help="crop side as a multiple of the clip's face box (default 1.6)")
    parser.add_argument("--face-model", metavar="PATH", default=None, help="MediaPipe face_landmarker.task")
    parser.add_argument("--no-compress", action="store_true", help="store shards uncompressed (faster to read)")
    parser.add_argument("--retry-skipped", action="store_true", help="process again videos skipped by a past run")


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset; the summary is logged and stored in DATASET/index.json."""
    from .data import PrepareOptions, prepare_dataset

    opts = PrepareOptions(size=args.size, clip_length=args.clip_length, fps=args.fps, scale=args.scale,
                          face_model=args.face_model, compress=not args.no_compress,
                          retry_skipped=args.retry_skipped)
    summary = prepare_dataset(args.videos, args.out, opts)
    return 0 if summary["clips"] else 1
