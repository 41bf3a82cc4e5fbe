"""Control images: the expression-aware landmarks drawn as the research code's renders (paper 4.1).

The networks see the eyes, eyebrows, inner lips and pupils, without the face contour.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..runtime import resolve
from .topology import topology
from .track import LEFT_IRIS, RIGHT_IRIS, FaceTrack

if TYPE_CHECKING:
    from ..runtime import StandaloneRuntime
    from .group import FYEFaces


# Colours (RGB) and drawing order of the research code's renders, which the released weights were
# trained on. The face contour is drawn only for comparison; the left/right halves of the lips
# are the image's left/right (the subject's right is the image's left for a frontal face).
CONTOUR_COLOR = (10, 200, 10)
PUPIL_COLOR = (255, 0, 0)
PART_COLORS: dict[str, tuple[int, int, int]] = {
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
    "outer_lips_lower_left": (10, 180, 20),
    "outer_lips_lower_right": (20, 10, 180),
    "inner_lips_lower_left": (100, 100, 30),
    "inner_lips_lower_right": (100, 150, 50),
    "outer_lips_upper_left": (20, 80, 100),
    "outer_lips_upper_right": (80, 100, 20),
    "inner_lips_upper_left": (120, 100, 200),
    "inner_lips_upper_right": (150, 120, 100),
}
REFERENCE_SIZE = 512
"""Resolution at which the research renders used 1-pixel lines and 6-pixel pupil squares."""


def line_width(size: tuple[int, int]) -> int:
    """Line thickness in pixels for a render of ``size``: 1 at 512 px, proportional above."""
    return max(1, round(min(size) / REFERENCE_SIZE))


def pupil_half_width(size: tuple[int, int]) -> int:
    """Half side of the square pupil dot: 3 at 512 px (a 6×6 square, as the research renders)."""
    return max(1, round(3 * min(size) / REFERENCE_SIZE))


def _pixel_coords(points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # As MediaPipe's drawing utilities: floor(x * width), clamped to the last pixel; points outside
    # the frame are not drawn.
    w, h = size
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    inside = np.all((xy >= 0) & (xy <= 1), axis=1) & np.all(np.isfinite(xy), axis=1)
    px = np.stack([np.minimum(np.floor(np.nan_to_num(xy[:, 0]) * w), w - 1),
                   np.minimum(np.floor(np.nan_to_num(xy[:, 1]) * h), h - 1)], axis=1).astype(np.int64)
    return px, inside


def render_frame(points: np.ndarray, size: tuple[int, int], *, include_contour: bool = False,
                 outer_lips: bool = False, pupils: bool = True, image: np.ndarray | None = None) -> np.ndarray:
    """Control image uint8 [H, W, 3] of one face: normalised points [478, ≥2] drawn at (w, h)."""
    import cv2

    w, h = int(size[0]), int(size[1])
    if image is None:
        image = np.zeros((h, w, 3), dtype=np.uint8)
    topo = topology()
    px, inside = _pixel_coords(points, (w, h))
    thickness = line_width((w, h))
    names = (["face_oval"] if include_contour else []) + [
        n for n in PART_COLORS if outer_lips or not n.startswith("outer_lips")]
    for name in names:
        color = CONTOUR_COLOR if name == "face_oval" else PART_COLORS[name]
        for a, b in topo.parts[name]:
            if inside[a] and inside[b]:
                cv2.line(image, (int(px[a, 0]), int(px[a, 1])), (int(px[b, 0]), int(px[b, 1])), color,
                         thickness)
    if pupils:
        half = pupil_half_width((w, h))
        for centre in (LEFT_IRIS[0], RIGHT_IRIS[0]):
            if inside[centre]:
                x, y = px[centre]
                image[max(y - half, 0):max(y + half, 0), max(x - half, 0):max(x + half, 0)] = PUPIL_COLOR
    return image


def render_controls(track: FaceTrack, size: tuple[int, int] | None = None, *, include_contour: bool = False,
                    outer_lips: bool = False, runtime: StandaloneRuntime | None = None) -> np.ndarray:
    """Control images uint8 [N, H, W, 3] of every frame at ``size`` (w, h; default the track's)."""
    rt = resolve(runtime)
    w, h = size or track.size
    out = np.zeros((len(track), h, w, 3), dtype=np.uint8)
    with rt.progress(len(track), "render landmarks") as bar:
        for i in range(len(track)):
            rt.check_interrupt()
            render_frame(track.points[i], (w, h), include_contour=include_contour, outer_lips=outer_lips,
                         image=out[i])
            bar.update()
    return out


def iter_controls(faces: FYEFaces, size: tuple[int, int] | None = None, *, include_contour: bool = False,
                  outer_lips: bool = False) -> Iterator[np.ndarray]:
    """Control images uint8 [H, W, 3] of every frame, every face drawn, one at a time (for a video writer)."""
    from .group import faces_of

    tracks = faces_of(faces)
    w, h = size or tracks[0].size
    for i in range(len(tracks[0])):
        # several faces: drawn apart and overlaid (brightest wins), as the batch renders of a group
        frame = render_frame(tracks[0].points[i], (w, h), include_contour=include_contour, outer_lips=outer_lips)
        for track in tracks[1:]:
            np.maximum(frame, render_frame(track.points[i], (w, h), include_contour=include_contour,
                                           outer_lips=outer_lips), out=frame)
        yield frame
