"""Faces MediaPipe misses: a frontal canonical face fitted into a box the user gives.

Two alpacas, a cartoon alpaca, a golden retriever and two cats of 31 freestyle portraits had no face
for MediaPipe. Given the face's box (pixels, or a mask's bounding box), MediaPipe's canonical face,
frontal and neutral, is placed so that its contour fills the box: the contour's width sets the
distance from the camera, its height stretches the canonical face vertically (a long muzzle, a round
cartoon head), and the result is an ordinary one-frame :class:`FaceTrack` marked ``fitted``. Its
expression and pose are those of the canonical face; the driving motion moves it like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import geometry
from ..errors import InvalidRequestError
from .topology import topology
from .track import LEFT_IRIS, NUM_BLENDSHAPES, RIGHT_IRIS, FaceTrack

if TYPE_CHECKING:
    from ..runtime import StandaloneRuntime

log = logging.getLogger(__name__)

IRIS_RADIUS = 0.12
"""Radius of a fitted iris as a share of its eye's width."""
MIN_BOX = 8
"""Smallest face box side in pixels."""


def parse_face_box(text: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) in pixels from "X,Y,W,H" (commas or spaces) or four numbers; None for an empty value."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.replace(",", " ").split()
        if not parts:
            return None
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InvalidRequestError(f"face box '{text}' is not X,Y,W,H in pixels (e.g. 120,80,200,220)") from None
    else:
        values = [float(v) for v in text]
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InvalidRequestError(f"a face box is four numbers X,Y,W,H in pixels, got {text!r}")
    return tuple(values)  # type: ignore[return-value]


def box_from_mask(mask: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float]:
    """The bounding box (x, y, w, h) in pixels of a mask's pixels above ``threshold`` ([H, W] or [1, H, W])."""
    m = np.asarray(mask, dtype=np.float32)
    while m.ndim > 2:
        m = m[0]
    ys, xs = np.nonzero(m > threshold)
    if not len(xs):
        raise InvalidRequestError("the face mask is empty: paint the face (values above 0.5) or give a face box")
    return float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box, after checking that it has a size and overlaps a (width, height) frame."""
    x, y, w, h = (float(v) for v in box)
    if w < MIN_BOX or h < MIN_BOX:
        raise InvalidRequestError(f"the face box {w:g}x{h:g} is too small: give at least {MIN_BOX}x{MIN_BOX} pixels")
    if x >= size[0] or y >= size[1] or x + w <= 0 or y + h <= 0:
        raise InvalidRequestError(f"the face box ({x:g}, {y:g}, {w:g}, {h:g}) lies outside the "
                                  f"{size[0]}x{size[1]} image")
    return x, y, w, h


def _canonical_with_irises(model: geometry.CanonicalModel) -> np.ndarray:
    # The 468 canonical vertices and 10 iris points (centre, then four around it) in each eye.
    topo = topology()
    verts = np.zeros((478, 3))
    verts[:geometry.MESH_POINTS] = model.vertices
    for iris, ring in ((RIGHT_IRIS, topo.right_eye_ring), (LEFT_IRIS, topo.left_eye_ring)):
        eye = model.vertices[ring]
        centre = eye.mean(axis=0)
        r = IRIS_RADIUS * float(np.ptp(eye[:, 0]))
        offsets = np.array([[0, 0, 0], [r, 0, 0], [0, r, 0], [-r, 0, 0], [0, -r, 0]], dtype=np.float64)
        verts[list(iris)] = centre + offsets
    return verts


FIT_ITERATIONS = 6


def _screen(canonical: np.ndarray, pose: np.ndarray, size: tuple[int, int], distance: float) -> np.ndarray:
    # Screen points with z like MediaPipe's: zero on average over the mesh, one centimetre of depth
    # as far as one centimetre across at the face's distance.
    metric = geometry.apply_pose(pose, canonical)
    scale = geometry.NEAR / distance
    offset = geometry.NEAR - scale * float(np.mean(-metric[:geometry.MESH_POINTS, 2]))
    return geometry.metric_to_screen(metric, size, np.array(offset), np.array(scale))


def fit_face_box(box: Sequence[float], size: tuple[int, int], face_model: str | os.PathLike | None = None, *,
                 fps: float = 0.0, runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """A one-frame track: MediaPipe's frontal canonical face whose contour fills ``box`` (x, y, w, h pixels)."""
    from .extract import resolve_face_model

    x, y, w, h = check_box(box, size)
    model = geometry.load_canonical_model(resolve_face_model(face_model, runtime))
    canonical = _canonical_with_irises(model)
    oval_index = topology().face_oval
    base = canonical.copy()
    oval = base[oval_index]
    # A first placement that ignores perspective, then a few corrections of the projected contour's
    # box (the cheeks lie behind the forehead and the chin, so the box is not the canonical one).
    stretch = (h / w) / (np.ptp(oval[:, 1]) / np.ptp(oval[:, 0]))
    frame_w, frame_h = size
    focal = 0.5 * frame_h / np.tan(0.5 * np.deg2rad(geometry.FOV_DEGREES))   # MediaPipe's 63° camera
    distance = float(np.ptp(oval[:, 0])) * focal / w
    shift = np.array([(x + w / 2 - frame_w / 2), -(y + h / 2 - frame_h / 2)]) * distance / focal
    target = np.array([x + w / 2, y + h / 2, w, h])
    for _ in range(FIT_ITERATIONS):
        canonical = base * np.array([1.0, stretch, 1.0])
        pose = geometry.compose_pose(np.eye(3), np.array([shift[0], shift[1], -distance]), 1.0)
        points = _screen(canonical, pose, size, distance)
        px = points[oval_index, :2] * np.array(size, dtype=np.float64)
        lo, hi = px.min(axis=0), px.max(axis=0)
        got = np.concatenate([(lo + hi) / 2, hi - lo])
        distance *= got[2] / target[2]
        stretch *= (target[3] / target[2]) / (got[3] / got[2])
        shift += (target[:2] - got[:2]) * np.array([1.0, -1.0]) * distance / focal
    canonical = base * np.array([1.0, stretch, 1.0])
    pose = geometry.compose_pose(np.eye(3), np.array([shift[0], shift[1], -distance]), 1.0)
    points = _screen(canonical, pose, size, distance)
    log.warning("no face was detected; a frontal canonical face is fitted into the box (%g, %g, %g, %g) of the "
                "%dx%d image. Its expression and pose are the canonical face's, so the animation follows the "
                "driving motion from a neutral, frontal start.", x, y, w, h, *size)
    return FaceTrack(points=points[None], canonical=canonical[None], pose=pose[None],
                     blendshapes=np.zeros((1, NUM_BLENDSHAPES)), valid=np.ones(1, bool), size=size, fps=fps,
                     fitted=np.ones(1, bool))
