"""Motion alignment that keeps the portrait: the defaults against the released aligner, on real inputs.

    python bench/align.py

Prints, one line each, for the defaults and (after the slash) the released aligner
(rotation absolute, translation since frame 0, pupils and lids as released):
  neutral offset: mean distance of the aligned points at the driving video's neutral frame from
                  the portrait's own landmarks, in face widths (cheek to cheek), for the frontal
                  astronaut and for her rotated by 25° and -30°, an LFW face turned by 24° (and
                  also tilted), the cameraman turned by 57°;
  on-face share:  share of all aligned points, over all frames, inside the portrait's face box grown
                  by 25 % a side, for the shared driving video (the driver moves a little) and for
                  it panned by ±130 px, raised and zoomed (tests/landmark_inputs.moving_driver: up
                  to 0.7 face widths), the worst portrait of the set and the astronaut.
The inputs are those of tests/test_align_modes.py (tests/landmark_inputs.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter


def main() -> int:
    """Measure and print."""
    from emoji_model.align import RELEASED, align_motion, neutral_offset, on_face_share
    from emoji_model.landmarks import neutral_frame
    from landmark_inputs import PORTRAITS, driving_track, moving_driver_track, portrait_track

    still, moving = driving_track(), moving_driver_track()
    k = neutral_frame(still)
    for name in ("astronaut", "tilt25", "tilt-30", "lfw-turned", "lfw-turned-tilt20", "cameraman"):
        ref = portrait_track(name)
        ours = neutral_offset(align_motion(ref, still), ref, k)
        released = neutral_offset(align_motion(ref, still, **RELEASED), ref, k)
        print(f"neutral offset, {name}: {ours:.4f} / released {released:.3f} face widths")
    for label, driver in (("shared driving video", still), ("driver moving in frame", moving)):
        ours = {n: on_face_share(align_motion(portrait_track(n), driver), portrait_track(n)) for n in PORTRAITS}
        released = {n: on_face_share(align_motion(portrait_track(n), driver, **RELEASED), portrait_track(n))
                     for n in PORTRAITS}
        worst = min(ours, key=ours.get)
        print(f"on-face share, {label}, astronaut: {100 * ours['astronaut']:.2f} % / released "
              f"{100 * released['astronaut']:.2f} %")
        print(f"on-face share, {label}, worst of {len(PORTRAITS)} portraits ({worst}): {100 * ours[worst]:.2f} % / "
              f"released worst {100 * min(released.values()):.2f} % ({min(released, key=released.get)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
