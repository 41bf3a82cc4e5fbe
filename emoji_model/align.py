"""Motion alignment (paper 4.1): the driving expression and head motion in the reference's geometry.

Everything happens in MediaPipe's canonical face space, as the research code does:

1. expression: each driving frame's canonical vertices minus those of a neutral driving frame,
   scaled, added to the reference's canonical vertices;
2. head pose: the rotation of each driving frame, the driving translation relative to driving
   frame 0 plus the reference translation, the reference's scale (or the reference pose itself
   when relative head pose is off);
3. projection with MediaPipe's perspective camera into the reference frame;
4. pupils: each iris is put back at its position relative to the eye's bounding box, measured in
   the driving frame (iris tracking) or in the reference (no iris tracking).

Vectorised over frames: a 100-frame video aligns in a few milliseconds.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from . import geometry
from .constants import NEUTRAL_CHOICES
from .errors import InvalidRequestError, NoFaceDetectedError
from .landmarks import LEFT_IRIS, RIGHT_IRIS, FaceTrack, fill_invalid, neutral_frame, topology
from .runtime import resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)



def resolve_neutral(driving: FaceTrack, neutral: str | int = "auto") -> int:
    """Index of the neutral driving frame: 'auto' (lowest blendshape sum), 'first' (first valid) or an index."""
    if isinstance(neutral, str) and neutral.lstrip("-").isdigit():
        neutral = int(neutral)
    if neutral == "auto":
        return neutral_frame(driving)
    if neutral == "first":
        valid = np.flatnonzero(driving.valid)
        return int(valid[0]) if len(valid) else 0
    if isinstance(neutral, (int, np.integer)):
        if not -len(driving) <= neutral < len(driving):
            raise InvalidRequestError(f"neutral frame {neutral} is outside the driving track "
                                      f"(0..{len(driving) - 1})")
        return int(neutral) % len(driving)
    raise InvalidRequestError(f"neutral must be one of {NEUTRAL_CHOICES} or a frame index, got {neutral!r}")


def smooth_track(track: FaceTrack, window: int, polyorder: int = 2) -> FaceTrack:
    """Savitzky–Golay filter over time of points, canonical vertices, blendshapes and poses.

    ``window`` is the filter length in frames (made odd, at most the track length); below 3 the
    track is returned unchanged. Rotations are filtered as matrices and re-orthonormalised.
    """
    from scipy.signal import savgol_filter

    n = len(track)
    window = min(int(window), n if n % 2 else n - 1)
    if window % 2 == 0:
        window -= 1
    if window < 3:
        return track
    order = min(polyorder, window - 1)

    def smooth(x: np.ndarray) -> np.ndarray:
        return savgol_filter(x.astype(np.float64), window, order, axis=0, mode="interp")

    pose = track.pose.astype(np.float64)
    scale = geometry.pose_scale(pose)
    rotation = geometry.nearest_rotation(smooth(pose[:, :3, :3] / scale[:, None, None]))
    pose = geometry.compose_pose(rotation, smooth(pose[:, :3, 3]), smooth(scale))
    return replace(track, points=smooth(track.points), canonical=smooth(track.canonical),
                   blendshapes=np.clip(smooth(track.blendshapes), 0.0, 1.0), pose=pose)


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


ALIGN_CHUNK = 128
"""Frames aligned at once: vectorised, with temporaries bounded by this rather than by the video."""


def align_motion(reference: FaceTrack, driving: FaceTrack, *, relative_pose: bool = True,
                 neutral: str | int = "auto", expression_scale: float = 1.0, iris_tracking: bool = True,
                 smoothing: int = 0, reference_frame: int = 0,
                 runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of the reference face carrying the driving motion, one frame per driving frame.

    The result is a track in the reference's frame size: ``points`` projected into the reference
    image, ``canonical`` the transferred canonical vertices, ``pose`` the composed poses,
    ``blendshapes`` and ``valid`` those of the driving frames.
    """
    resolve(runtime).check_interrupt()
    if len(reference) == 0 or len(driving) == 0:
        raise InvalidRequestError("motion alignment needs a reference face and at least one driving frame")
    if not 0 <= expression_scale <= 2:
        raise InvalidRequestError(f"expression_scale must be within 0..2, got {expression_scale}")
    if not -len(reference) <= reference_frame < len(reference):
        raise InvalidRequestError(f"reference_frame {reference_frame} is outside the reference track "
                                  f"(0..{len(reference) - 1})")
    ref = reference[reference_frame]
    if not ref.valid[0]:
        raise NoFaceDetectedError(f"frame {reference_frame} of the reference")
    if not driving.valid.any():
        raise NoFaceDetectedError("any frame of the driving track")
    drv = fill_invalid(driving)
    if smoothing and smoothing >= 3:
        drv = smooth_track(drv, smoothing)
    n = len(drv)
    k = resolve_neutral(drv, neutral)

    # 2. Head pose (for every frame: small).
    ref_pose = ref.pose[0].astype(np.float64)
    if relative_pose:
        drv_pose = drv.pose.astype(np.float64)
        rotation = geometry.nearest_rotation(drv_pose[:, :3, :3])
        translation = drv_pose[:, :3, 3] - drv_pose[0, :3, 3] + ref_pose[:3, 3]
        pose = geometry.compose_pose(rotation, translation, np.full(n, geometry.pose_scale(ref_pose)))
    else:
        pose = np.repeat(ref_pose[None], n, axis=0)

    # 1. Expression in canonical space; 3. projection into the reference frame; 4. pupils at their
    # relative place in the eye boxes. Per frame, so in chunks: the float64 temporaries stay bounded.
    ref_canonical = ref.canonical[0].astype(np.float64)                      # [478, 3]
    drv_neutral = drv.canonical[k].astype(np.float64)                        # [478, 3]
    canonical = np.empty(drv.canonical.shape, dtype=np.float32)              # [N, 478, 3]
    points = np.empty(drv.points.shape, dtype=np.float32)                    # [N, 478, 3]
    for s in range(0, n, ALIGN_CHUNK):
        chunk = slice(s, min(s + ALIGN_CHUNK, n))
        moved = ref_canonical + expression_scale * (drv.canonical[chunk].astype(np.float64) - drv_neutral)
        source = drv.points[chunk] if iris_tracking else np.repeat(ref.points, chunk.stop - s, axis=0)
        points[chunk] = project_onto(ref, moved, pose[chunk], iris_relative(source.astype(np.float64)))
        canonical[chunk] = moved

    log.debug("aligned %d driving frames (neutral frame %d, relative pose %s, expression x%.2f)",
              n, k, relative_pose, expression_scale)
    return FaceTrack(points=points, canonical=canonical, pose=pose, blendshapes=drv.blendshapes,
                     valid=driving.valid, size=ref.size, fps=drv.fps)
