"""Masks for the facial fine-grained loss (paper 4.2): the expression-aware points and the face contour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runtime import resolve
from .topology import topology
from .track import FaceTrack

if TYPE_CHECKING:
    from ..runtime import StandaloneRuntime

# The released code's head polygon for the facial mask of L_FFG (media_pipe/draw_util.py, draw_mask):
# 26 points of the face oval from temple to temple around the chin, without the forehead arc, so the
# mask covers the face the landmarks describe rather than the forehead and hairline.
HEAD_OVAL = (21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
             288, 361, 323, 454, 356, 389)


def face_width(points: np.ndarray, size: tuple[int, int]) -> float:
    """Width of the face contour in pixels."""
    xs = np.asarray(points)[topology().face_oval, 0] * size[0]
    return float(xs.max() - xs.min())


def expression_mask(points: np.ndarray, size: tuple[int, int], radius_fraction: float = 0.04) -> np.ndarray:
    """bool [H, W]: the expression-aware points (eyes, brows, lips, irises) dilated by a share of the face width."""
    import cv2

    w, h = int(size[0]), int(size[1])
    mask = np.zeros((h, w), dtype=np.uint8)
    radius = max(1, round(radius_fraction * face_width(points, (w, h))))
    xy = np.asarray(points)[topology().expression_points, :2] * np.array([w, h])
    for x, y in np.round(xy).astype(np.int64):
        if -radius <= x < w + radius and -radius <= y < h + radius:
            cv2.circle(mask, (int(x), int(y)), radius, 1, thickness=-1)
    return mask.astype(bool)


def facial_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the filled head polygon of the released code (HEAD_OVAL)."""
    import cv2

    w, h = int(size[0]), int(size[1])
    mask = np.zeros((h, w), dtype=np.uint8)
    polygon = np.round(np.asarray(points)[list(HEAD_OVAL), :2] * np.array([w, h])).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 1)
    return mask.astype(bool)


def face_masks(track: FaceTrack, size: tuple[int, int] | None = None, radius_fraction: float = 0.04,
               runtime: StandaloneRuntime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(expression masks, facial masks), each bool [N, H, W], for every frame at ``size`` (w, h)."""
    rt = resolve(runtime)
    w, h = size or track.size
    expression = np.zeros((len(track), h, w), dtype=bool)
    facial = np.zeros((len(track), h, w), dtype=bool)
    with rt.progress(len(track), "face masks") as bar:
        for i in range(len(track)):
            rt.check_interrupt()
            expression[i] = expression_mask(track.points[i], (w, h), radius_fraction)
            facial[i] = facial_mask(track.points[i], (w, h))
            bar.update()
    return expression, facial
