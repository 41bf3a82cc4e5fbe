"""Our landmark extraction against the released extractor, on the shared driving video (goal: ≥ 1.5×).

    python bench/released_landmarks.py [--released /tmp/released-src] [--released-python PY] [--rounds 5]
                                       [--repeat 3] [--video PATH]

Ours: ``extract_video`` on the decoded frames (one VIDEO-mode landmarker per video, its creation
included, canonical vertices and poses batched). Released: its ``media_pipe.LMKExtractor`` (MediaPipe's
Tasks landmarker patched to also return the legacy 468-point mesh, IMAGE mode, one call per frame on the
BGR frames its pipeline reads), created once. Each side needs its own environment (the released one:
mediapipe 0.10.21, see tests/fixtures/record_released_fye.py), so each runs in its own process: ``--rounds``
pairs run back to back, their order alternating, each timing ``--repeat`` passes over the video after a
warm-up pass. Prints frames/s by wall clock and by CPU time and the median ratios (ours / released).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from released_speed import worker_json

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))
DEFAULT_RELEASED = Path(os.environ.get("FYE_RELEASED", "/tmp/released-src"))
DEFAULT_RELEASED_PYTHON = Path(os.environ.get("FYE_RELEASED_PYTHON", "/tmp/released-venv/bin/python"))


def _passes(run, repeat: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``repeat`` passes after a warm-up pass."""
    run()
    out = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def worker(args: argparse.Namespace) -> None:
    """One process: frames and timed passes of one side, printed as JSON."""
    if args.worker == "ours":
        sys.path.insert(0, str(REPO))
        from emoji_model.landmarks import extract_video
        from emoji_model.video import read_video

        frames, fps = read_video(args.video)

        def run():
            extract_video(frames, fps)
    else:
        import cv2

        sys.path.insert(0, str(args.released))
        from media_pipe.mp_utils import LMKExtractor

        capture = cv2.VideoCapture(str(args.video))
        frames = []
        while True:
            ok, frame = capture.read()  # BGR, as the released pipeline reads its videos
            if not ok:
                break
            frames.append(frame)
        extractor = LMKExtractor()

        def run():
            for frame in frames:
                extractor(frame)
    print(json.dumps({"frames": len(frames), "passes": _passes(run, args.repeat)}))


def _launch(side: str, args: argparse.Namespace) -> dict:
    python = sys.executable if side == "ours" else str(args.released_python)
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--released", str(args.released),
           "--video", str(args.video), "--repeat", str(args.repeat)]
    return worker_json(cmd, f"the {side} worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", type=Path, default=DEFAULT_RELEASED)
    parser.add_argument("--released-python", type=Path, default=DEFAULT_RELEASED_PYTHON)
    parser.add_argument("--video", type=Path, default=SHARED / "data" / "driving_expressions.mp4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", choices=["ours", "released"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.released / "media_pipe" / "mp_utils.py").is_file() or not args.released_python.is_file():
        sys.exit(f"the released code ({args.released}) or its Python ({args.released_python}) is missing")
    fps = {"ours": {"wall": [], "cpu": []}, "released": {"wall": [], "cpu": []}}
    for r in range(args.rounds):
        for side in (("ours", "released") if r % 2 == 0 else ("released", "ours")):
            got = _launch(side, args)
            for k, i in (("wall", 0), ("cpu", 1)):
                fps[side][k].append(got["frames"] / statistics.median(p[i] for p in got["passes"]))
    for k, what in (("wall", "wall clock"), ("cpu", "CPU time")):
        ratios = [o / r for o, r in zip(fps["ours"][k], fps["released"][k])]
        print(f"landmark extraction by {what}, ours / released: {statistics.median(ratios):.2f}x "
              f"({statistics.median(fps['ours'][k]):.1f} vs {statistics.median(fps['released'][k]):.1f} frames/s; "
              f"median of {args.rounds} paired process runs, alternating; {args.video.name})")


if __name__ == "__main__":
    main()
