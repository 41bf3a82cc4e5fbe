"""Masks for the facial fine-grained loss (paper 4.2): the expression-aware points and the face contour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..runtime import resolve
from .topology import topology
from .track import FaceTrack

if TYPE_CHECKING:
    from ..runtime import StandaloneRuntime


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
    """bool [H, W]: the filled face-contour polygon."""
    import cv2

    w, h = int(size[0]), int(size[1])
    mask = np.zeros((h, w), dtype=np.uint8)
    polygon = np.round(np.asarray(points)[topology().face_oval, :2] * np.array([w, h])).astype(np.int32)
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
