"""Finding faces in images of any size, and making sure that what is found is a face.

MediaPipe's face detector (inside the landmarker) looks at a 128-pixel copy of the whole image and
misses faces smaller than about a fifth of the frame. :func:`find_faces` therefore tries the whole
image first, then overlapping square windows of halving size (the detector sees each window
enlarged), and maps the landmarks back to the full image.

MediaPipe's landmark network always draws a face-shaped mesh, even over a cat's eye, a colour wheel
or gravel, so every candidate is checked before it is returned (:func:`is_face`):

1. geometry: the mesh, fitted by MediaPipe's canonical face, deviates from it no more than real
   faces do (:data:`MAX_SHAPE_DEVIATION` eye-corner distances, root mean square);
2. size: a face found in a window lies inside it and fills 8–95 % of its side;
3. re-detection: the landmarker, run again on two other framings around the candidate, finds the
   same landmarks (within :data:`MAX_REDETECTION_SHIFT` of the face's size, mean over the points).
   Measured on 99 upscaled LFW faces, the astronaut, the driving video and the cameraman in profile
   the shift is at most 0.052 (median 0.01); on a cat's eye, a colour wheel, coins, gravel and the
   100 LFW non-face crops it is 0.059 or more, or nothing is found again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from . import geometry
from .landmarks import Face, FaceLandmarker, as_rgb_uint8
from .landmarks.extract import box_of, iou
from .runtime import resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)

SEARCH_MIN_WINDOW = 128
"""Smallest search window in pixels: faces of about 30 pixels and more are found."""
MAX_SHAPE_DEVIATION = 0.35
"""Largest RMS deviation of a candidate's mesh from the canonical face, in eye-corner distances."""
MAX_REDETECTION_SHIFT = 0.055
"""Largest mean landmark shift between a candidate and its re-detections, as a share of its box side."""
REDETECTION_FRAMINGS = ((1.6, 0.0, 0.0), (2.0, 0.12, 0.08))
"""(crop side / face box side, x and y offset as a share of the crop) of the re-detection crops."""
REDETECTION_SIZE = 256


def windows(width: int, height: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of square windows of ``side`` with half-window overlap covering the frame."""
    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        step = side // 2
        out = list(range(0, length - side, step))
        return out + [length - side]

    return [(x, y) for y in starts(height) for x in starts(width)]


def _face_in_window(face: Face, x0: float, y0: float, side: float, size: tuple[int, int]) -> Face:
    # Window-normalised landmarks -> full-image-normalised; z scales like x (MediaPipe's convention).
    w, h = size
    points = face.points.copy()
    points[:, 0] = (points[:, 0] * side + x0) / w
    points[:, 1] = (points[:, 1] * side + y0) / h
    points[:, 2] = points[:, 2] * side / w
    return Face(points, None, face.blendshapes)  # the pose belongs to the window's camera


def dedupe(faces: list[Face], size: tuple[int, int]) -> list[Face]:
    """The largest face of each cluster of overlapping ones (windows find a face several times)."""
    faces = sorted(faces, key=lambda f: -f.area(size))
    kept: list[Face] = []
    for face in faces:
        box = box_of(face, size)
        if all(iou(box, box_of(k, size)) < 0.3 for k in kept):
            kept.append(face)
    return kept


# -- is it a face? -----------------------------------------------------------------------------

def shape_deviation(face: Face, size: tuple[int, int], model: geometry.CanonicalModel) -> float:
    """RMS distance of a face's metric mesh from the fitted canonical face, in eye-corner distances."""
    fit = geometry.screen_to_metric(face.points[None].astype(np.float64), size, model)
    posed = geometry.apply_pose(fit.pose, model.vertices[None])[0]
    unit = float(np.linalg.norm(model.vertices[263] - model.vertices[33]) * geometry.pose_scale(fit.pose[0]))
    residual = fit.metric[0, :geometry.MESH_POINTS] - posed
    return float(np.sqrt((residual ** 2).sum(-1).mean()) / max(unit, 1e-9))


def fits_window(face: Face, window: tuple[float, float, float], size: tuple[int, int]) -> bool:
    """True when a face found in a window (x0, y0, side) lies inside it and fills 8–95 % of its side."""
    x0, y0, side = window
    box = box_of(face, size)
    extent = max(box[2] - box[0], box[3] - box[1]) / side
    margin = 0.02 * side
    inside = box[0] >= x0 - margin and box[1] >= y0 - margin and box[2] <= x0 + side + margin and \
        box[3] <= y0 + side + margin
    return bool(inside and 0.08 <= extent <= 0.95)


def redetection_shift(image: np.ndarray, face: Face, landmarker: FaceLandmarker) -> float:
    """Largest mean landmark shift (share of the face box side) over re-detections in other framings; inf if lost."""
    import cv2

    h, w = image.shape[:2]
    box = box_of(face, (w, h))
    centre, extent = (box[:2] + box[2:]) / 2, max(float(max(box[2] - box[0], box[3] - box[1])), 1.0)
    px = face.points[:, :2] * np.array([w, h], dtype=np.float64)
    worst = 0.0
    for ratio, dx, dy in REDETECTION_FRAMINGS:
        side = ratio * extent
        x0, y0 = centre - side / 2 + np.array([dx, dy]) * side
        scale = REDETECTION_SIZE / side
        warp = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        crop = cv2.warpAffine(image, warp, (REDETECTION_SIZE, REDETECTION_SIZE), flags=cv2.INTER_AREA
                              if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        found = landmarker.detect(np.ascontiguousarray(crop))
        if not found:
            return float("inf")
        back = [f.points[:, :2] * side + [x0, y0] for f in found]
        worst = max(worst, min(float(np.linalg.norm(b - px, axis=1).mean()) for b in back) / extent)
    return worst


def is_face(image: np.ndarray, face: Face, landmarker: FaceLandmarker, model: geometry.CanonicalModel,
            window: tuple[float, float, float] | None = None) -> bool:
    """Whether a candidate passes the checks of this module's docstring (geometry, size, re-detection)."""
    size = (image.shape[1], image.shape[0])
    if window is not None and not fits_window(face, window, size):
        log.debug("rejected a candidate: its size does not fit the %s window", window)
        return False
    deviation = shape_deviation(face, size, model)
    if deviation > MAX_SHAPE_DEVIATION:
        log.debug("rejected a candidate: its mesh deviates %.2f from a face", deviation)
        return False
    shift = redetection_shift(image, face, landmarker)
    if shift > MAX_REDETECTION_SHIFT:
        log.debug("rejected a candidate at %s: re-detection moved it by %.3f", np.round(box_of(face, size)), shift)
        return False
    return True


# -- the search --------------------------------------------------------------------------------

def find_faces(image: np.ndarray, landmarker: FaceLandmarker, *, hint: np.ndarray | None = None,
               min_window: int = SEARCH_MIN_WINDOW, every: bool = False,
               runtime: StandaloneRuntime | None = None) -> list[Face]:
    """Faces in an image of any size, largest first, landmarks normalised to the whole image.

    Tries the whole image, then a window around ``hint`` (a box x0, y0, x1, y1 in pixels, e.g. the
    face of the previous frame), then overlapping windows of halving size down to ``min_window``,
    stopping at the first that finds a face; ``every`` looks at every window size (for all the faces
    of a group photo). Every candidate is checked (:func:`is_face`). ``landmarker`` must be in IMAGE
    mode. Poses are left out of window finds (they belong to each window's camera).
    """
    import cv2

    rt = resolve(runtime)
    image = as_rgb_uint8(image)
    h, w = image.shape[:2]
    model = geometry.load_canonical_model(landmarker.model_path)
    rejected = 0

    def keep(candidates: list[Face], window: tuple[float, float, float] | None) -> list[Face]:
        nonlocal rejected
        out = [f for f in candidates if is_face(image, f, landmarker, model, window)]
        rejected += len(candidates) - len(out)
        return out

    faces = keep(landmarker.detect(image), None)
    if faces and not every:
        return faces

    def look(x0: int, y0: int, side: int) -> list[Face]:
        window = image[y0:y0 + side, x0:x0 + side]
        if window.shape[0] != window.shape[1]:  # a window at a border of a frame smaller than it
            window = cv2.copyMakeBorder(window, 0, side - window.shape[0], 0, side - window.shape[1],
                                        cv2.BORDER_CONSTANT)
        if side > 256:  # the detector sees 128 pixels; the search only needs the face's box
            window = cv2.resize(window, (256, 256), interpolation=cv2.INTER_AREA)
        found = [_face_in_window(f, x0, y0, side, (w, h)) for f in landmarker.detect(np.ascontiguousarray(window))]
        return keep(found, (x0, y0, side))

    found: list[Face] = list(faces)
    if hint is not None and not every:
        (hx0, hy0, hx1, hy1) = np.asarray(hint, dtype=np.float64)
        side = int(min(max(w, h), max(min_window, 3.0 * max(hx1 - hx0, hy1 - hy0))))
        cx, cy = (hx0 + hx1) / 2, (hy0 + hy1) / 2
        x0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
        y0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
        found = look(x0, y0, side)
    side = min(w, h) // 2 if max(w, h) <= 2 * min(w, h) else min(w, h)
    while (every or not found) and side >= min_window:
        for x0, y0 in windows(w, h, side):
            rt.check_interrupt()
            found += look(x0, y0, side)
        if found:
            log.debug("found %d face(s) in %d-pixel windows of a %dx%d image", len(found), side, w, h)
        side //= 2
    if rejected:
        log.info("the face search rejected %d candidate(s) in a %dx%d image that were not faces", rejected, w, h)
    return dedupe(found, (w, h))
