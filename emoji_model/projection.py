"""Canonical vertices back into a portrait: perspective projection and the pupils' place in the eyes.

Shared by motion alignment and the expression editor, which both move a face in MediaPipe's
canonical space and need ordinary landmarks of the portrait's frame again.
"""

from __future__ import annotations

import numpy as np

from . import geometry
from .errors import InvalidRequestError
from .landmarks import LEFT_IRIS, RIGHT_IRIS, FaceTrack, topology


def _eye_boxes(points: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xy = points[..., ring, :2]
    return xy.min(axis=-2), xy.max(axis=-2)  # [..., 2] each


def iris_relative(points: np.ndarray) -> list[np.ndarray]:
    """Iris points as fractions of their eye's bounding box: [right, left], each [..., 5, 2]."""
    topo = topology()
    out = []
    for iris, ring in ((RIGHT_IRIS, topo.right_eye_ring), (LEFT_IRIS, topo.left_eye_ring)):
        lo, hi = _eye_boxes(points, ring)
        span = np.maximum(hi - lo, 1e-9)
        out.append((points[..., list(iris), :2] - lo[..., None, :]) / span[..., None, :])
    return out


def place_iris(points: np.ndarray, relative: list[np.ndarray]) -> None:
    """Put the iris points of ``points`` [..., 478, ≥2] at ``relative`` places in their eye boxes (in place)."""
    topo = topology()
    for iris, ring, rel in zip((RIGHT_IRIS, LEFT_IRIS), (topo.right_eye_ring, topo.left_eye_ring), relative):
        lo, hi = _eye_boxes(points, ring)
        points[..., list(iris), :2] = lo[..., None, :] + rel * (hi - lo)[..., None, :]


def project_onto(reference: FaceTrack, canonical: np.ndarray, pose: np.ndarray,
                 iris: list[np.ndarray]) -> np.ndarray:
    """Normalised points [N, 478, 3] of canonical vertices [N, 478, 3] placed by poses [N, 4, 4] in the reference frame.

    ``reference`` has one frame (shared) or N; z follows each reference frame's depth calibration.
    ``iris`` (from :func:`iris_relative`) puts the pupils at their relative places in the projected
    eye boxes.
    """
    n = len(canonical)
    if len(reference) not in (1, n):
        raise InvalidRequestError(f"projection onto a reference of {len(reference)} frames needs 1 or {n}")
    calibration = np.array([geometry.depth_calibration(
        reference.points[i].astype(np.float64),
        geometry.apply_pose(reference.pose[i].astype(np.float64), reference.canonical[i].astype(np.float64)),
        reference.size) for i in range(len(reference))])                     # [1 or N, 2]
    calibration = np.broadcast_to(calibration, (n, 2))
    points = geometry.project(canonical, pose, reference.size, calibration[:, 0], calibration[:, 1])
    place_iris(points, iris)
    return points
