"""Motion alignment (paper 4.1): the driving expression and head motion in the reference's geometry.

Everything happens in MediaPipe's canonical face space:

1. expression: each driving frame's canonical vertices minus those of a neutral driving frame,
   the lids' motion scaled to the portrait's eye opening, weighted per region
   (:mod:`emoji_model.regions`) and scaled, added to the reference's canonical vertices; a driving
   photo, which has no neutral frame of its own, has its expression re-created from its blendshape
   scores with the expression editor's displacement fields;
2. head rotation (:data:`~emoji_model.constants.ROTATION_MODES`): ``relative`` composes the
   portrait's own rotation with the driving rotation relative to the neutral frame, in the head's
   own axes (R_ref · R_kᵀ · R_i), so a tilted or turned portrait keeps its pose; ``absolute`` takes
   each driving frame's rotation as the released aligner does; ``off`` keeps the portrait's;
3. head translation (:data:`~emoji_model.constants.TRANSLATION_MODES`): ``relative`` moves the
   portrait as far as the driver moved since the neutral frame, measured in face widths (across)
   and as a share of the distance (depth), scaled by a strength and softly limited, so that a driver
   who moves in the frame does not carry the landmarks off the portrait's face; ``released`` adds
   the driving translation since frame 0 to the reference's, as the released aligner does;
4. projection with MediaPipe's perspective camera into the reference frame;
5. pupils (:data:`~emoji_model.constants.IRIS_MODES`): each iris is placed in its projected eye box
   at the portrait's place moved as the driving gaze moved (``relative``), at the driving place
   (``absolute``, released) or at the portrait's place (``off``).

:data:`RELEASED` (``rotation="absolute", translation="released", iris="absolute", lids="absolute"``)
is the released aligner. Vectorised over chunks of :data:`ALIGN_CHUNK` frames (memory bounded by the
chunk, not the video): a 100-frame video aligns in a few milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from . import geometry
from .constants import IRIS_MODES, LID_MODES, NEUTRAL_CHOICES, ROTATION_MODES, TRANSLATION_LIMIT, TRANSLATION_MODES
from .errors import InvalidRequestError, NoFaceDetectedError
from .landmarks import (
    LEFT_EYE_APERTURE,
    RIGHT_EYE_APERTURE,
    FaceTrack,
    close_loop,
    faces_of,
    fill_invalid,
    from_faces,
    neutral_frame,
    topology,
)
from .projection import iris_relative, place_iris, project_onto
from .regions import Regions, as_regions, memberships, vertex_weights
from .runtime import resolve

if TYPE_CHECKING:
    from .landmarks import FYEFaces
    from .runtime import StandaloneRuntime

__all__ = ["RELEASED", "align_faces", "align_motion", "iris_relative", "neutral_offset", "on_face_share",
           "place_iris", "project_onto", "resolve_neutral", "smooth_track"]

log = logging.getLogger(__name__)

RELEASED = {"rotation": "absolute", "translation": "released", "iris": "absolute", "lids": "absolute"}
"""The released aligner's choices: driving rotation, translation since frame 0, driving pupil places,
the lids moved as far as the driver's."""


def resolve_neutral(driving: FaceTrack, neutral: str | int = "auto") -> int:
    """Index of the neutral driving frame: 'auto' (lowest blendshape sum), 'first' (first valid) or an index.

    'blendshapes' re-creates each frame's expression from its scores; head pose and gaze are then
    measured from the 'auto' frame.
    """
    if isinstance(neutral, str) and neutral.lstrip("-").isdigit():
        neutral = int(neutral)
    if neutral in ("auto", "blendshapes"):
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


# -- head pose -------------------------------------------------------------------------------

def _rotation_power(rotation: np.ndarray, strength: float) -> np.ndarray:
    # R^s for rotations [..., 3, 3]: the same axis, s times the angle.
    if strength == 1.0:
        return rotation
    from scipy.spatial.transform import Rotation

    flat = rotation.reshape(-1, 3, 3)
    out = Rotation.from_rotvec(Rotation.from_matrix(flat).as_rotvec() * strength).as_matrix()
    return out.reshape(rotation.shape)


def head_rotations(reference_pose: np.ndarray, driving_pose: np.ndarray, neutral: int, mode: str,
                   strength: float = 1.0) -> np.ndarray:
    """Rotations [N, 3, 3] of the aligned head for each driving pose [N, 4, 4] (see the module docstring).

    MediaPipe's rotation is the face's rotation as the picture shows it (a face moved across the
    frame unturned keeps its rotation, within 3° median on tests/landmark_inputs.moving_driver), so
    no correction for the line of sight is made.
    """
    ref = geometry.nearest_rotation(reference_pose[:3, :3])
    drv = geometry.nearest_rotation(driving_pose[:, :3, :3])
    if mode == "off" or strength == 0.0:
        return np.repeat(ref[None], len(drv), axis=0)
    if mode == "relative":
        delta = drv[neutral].T[None] @ drv                  # R_kᵀ R_i: the turn since the neutral frame
        return ref[None] @ _rotation_power(delta, strength)
    if mode == "absolute":
        return ref[None] @ _rotation_power(ref.T[None] @ drv, strength)  # = drv at strength 1
    raise InvalidRequestError(f"rotation must be one of {ROTATION_MODES}, got {mode!r}")


DEPTH_LIMIT_SHARE = 0.5
"""The depth change's soft limit (a share of the distance) as a share of the across limit (face widths)."""


def apparent_width(canonical: np.ndarray, pose: np.ndarray) -> float:
    """Width of the face as the camera sees it (metric x extent of the placed face contour)."""
    xs = geometry.apply_pose(np.asarray(pose, dtype=np.float64),
                             np.asarray(canonical, dtype=np.float64)[topology().face_oval])[:, 0]
    return max(float(xs.max() - xs.min()), 1e-6)


def _soft_limit(values: np.ndarray, limit: float) -> np.ndarray:
    # Vectors [..., D] shortened smoothly to at most ``limit`` (tanh of the length): small moves pass
    # unchanged, large ones approach the limit.
    if limit <= 0:
        return np.zeros_like(values)
    length = np.linalg.norm(values, axis=-1, keepdims=True)
    return values * np.where(length > 1e-12, limit * np.tanh(length / limit) / np.maximum(length, 1e-12), 1.0)


def head_translations(reference: FaceTrack, driving: FaceTrack, neutral: int, mode: str, strength: float = 1.0,
                      limit: float = TRANSLATION_LIMIT) -> np.ndarray:
    """Translations [N, 3] of the aligned head (metric space of the reference's camera).

    ``relative``: the driving movement since the neutral frame, toward the camera as a share of the
    distance (the head moves along its line of sight, so it grows in place) and across in face widths
    (as the picture shows the face: its contour's width), times ``strength``, softly limited to
    ``limit`` face widths across and half of that in depth (tanh of the length, so small movements
    pass almost unchanged).
    """
    ref_t = reference.pose[0, :3, 3].astype(np.float64)
    t = driving.pose[:, :3, 3].astype(np.float64)                     # [N, 3]
    if mode == "off" or strength == 0.0:
        return np.repeat(ref_t[None], len(t), axis=0)
    if mode == "released":
        return ref_t + strength * (t - t[0])
    if mode != "relative":
        raise InvalidRequestError(f"translation must be one of {TRANSLATION_MODES}, got {mode!r}")
    # Depth: the distance's ratio to the neutral frame's, which scales a face by the same ratio in
    # both videos; limited more tightly, since a face that grows pushes its outline out on every side.
    # Moving the head along its line of sight keeps its place in the picture.
    ratio = t[:, 2] / t[neutral, 2]                                               # [N], < 1: closer
    closer = _soft_limit(strength * (1.0 - ratio)[:, None], DEPTH_LIMIT_SHARE * limit)[:, 0]
    # Across: what is left after the approach, over the face's metric width, is face widths whatever
    # the distance; widths as seen, so a face in profile (narrow in the picture) moves as far as it looks.
    ref_width = apparent_width(reference.canonical[0], reference.pose[0])
    drv_width = apparent_width(driving.canonical[neutral], driving.pose[neutral])
    across = _soft_limit(strength * (t[:, :2] - ratio[:, None] * t[neutral, :2]) / drv_width, limit)  # [N, 2]
    out = (1.0 - closer)[:, None] * ref_t[None]
    out[:, :2] += across * ref_width
    return out


# -- expression and pupils -------------------------------------------------------------------

EYE_RATIO_RANGE = (0.3, 3.0)
"""Bounds of the eye-opening ratio that scales the lids' motion (portrait over driver)."""


def _lid_gaps(canonical: np.ndarray) -> np.ndarray:
    # Distances between the middle points of the upper and lower lids [2] (right eye, left eye).
    return np.array([np.linalg.norm(canonical[RIGHT_EYE_APERTURE[0]] - canonical[RIGHT_EYE_APERTURE[1]]),
                     np.linalg.norm(canonical[LEFT_EYE_APERTURE[0]] - canonical[LEFT_EYE_APERTURE[1]])])


def _lid_gains(ref: FaceTrack, drv: FaceTrack, k: int, lids: str) -> np.ndarray | None:
    # Per-vertex gain [478] of the driving expression (None: unscaled). The lids move as far as the
    # driver's, as a share of each eye's opening: a blink shuts narrow eyes without the lids
    # crossing, and wide ones all the way.
    if lids == "absolute":
        return None
    ref_canonical = ref.canonical[0].astype(np.float64)
    ratio = np.clip(_lid_gaps(ref_canonical) / np.maximum(_lid_gaps(drv.canonical[k].astype(np.float64)), 1e-6),
                    *EYE_RATIO_RANGE)                                         # [2]: right eye, left eye
    member = memberships(ref_canonical)[:, :2]                                # [478, 2]
    return 1.0 + member @ (ratio - 1.0)


def _expression_deltas(ref: FaceTrack, drv: FaceTrack, k: int, frames: slice, from_blendshapes: bool,
                       gains: np.ndarray | None) -> np.ndarray:
    # Canonical-space expression of the driving frames ``frames`` [n, 478, 3], before regional weights.
    if from_blendshapes:
        from .editor import controls_from_blendshapes, field_deltas

        return field_deltas(ref.canonical[0].astype(np.float64), controls_from_blendshapes(drv.blendshapes[frames]))
    deltas = drv.canonical[frames].astype(np.float64) - drv.canonical[k].astype(np.float64)
    return deltas if gains is None else deltas * gains[None, :, None]


def _iris_places(ref: FaceTrack, drv: FaceTrack, k: int, frames: slice, mode: str, strength: float,
                 from_blendshapes: bool) -> list[np.ndarray]:
    # Iris places of the driving frames ``frames`` ([right, left], each [n, 5, 2] in eye-box fractions).
    n = len(drv.points[frames])
    own = [np.repeat(r, n, axis=0) for r in iris_relative(ref.points.astype(np.float64))]
    if mode == "off" or strength == 0.0:
        return own
    if mode == "absolute":
        driven = iris_relative(drv.points[frames].astype(np.float64))
        return [o + strength * (d - o) for o, d in zip(own, driven)]
    if mode != "relative":
        raise InvalidRequestError(f"iris must be one of {IRIS_MODES}, got {mode!r}")
    if from_blendshapes:
        from .editor import controls_from_blendshapes, move_iris

        c = controls_from_blendshapes(drv.blendshapes[frames])
        return move_iris(own, strength * c["pupil_x"], strength * c["pupil_y"])
    driven = iris_relative(drv.points[frames].astype(np.float64))
    neutral = iris_relative(drv.points[k:k + 1].astype(np.float64))
    return [o + strength * (d - d0) for o, d, d0 in zip(own, driven, neutral)]


ALIGN_CHUNK = 128
"""Frames aligned at once: vectorised, with temporaries bounded by this rather than by the video."""


# -- the aligner -----------------------------------------------------------------------------

def align_motion(reference: FaceTrack, driving: FaceTrack, *, rotation: str = "relative",
                 translation: str = "relative", translation_strength: float = 1.0,
                 translation_limit: float = TRANSLATION_LIMIT, iris: str = "relative", lids: str = "relative",
                 regions: Regions | str | Mapping[str, float] | None = None, neutral: str | int = "auto",
                 expression_scale: float = 1.0, smoothing: int = 0, loop: bool | int = False,
                 reference_frame: int = 0, relative_pose: bool | None = None, iris_tracking: bool | None = None,
                 runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of the reference face carrying the driving motion, one frame per driving frame.

    The result is a track in the reference's frame size: ``points`` projected into the reference
    image, ``canonical`` the transferred canonical vertices, ``pose`` the composed poses,
    ``blendshapes`` and ``valid`` those of the driving frames. ``loop`` (True, or a number of
    frames) blends the driving track's end into its first frame first, for a seamless loop.
    ``relative_pose=False`` and ``iris_tracking=False`` are the older switches for rotation and
    translation ``off`` and iris ``off``.
    """
    resolve(runtime).check_interrupt()
    if relative_pose is False:
        rotation = translation = "off"
    if iris_tracking is False:
        iris = "off"
    for name, value, choices in (("rotation", rotation, ROTATION_MODES), ("iris", iris, IRIS_MODES),
                                 ("translation", translation, TRANSLATION_MODES), ("lids", lids, LID_MODES)):
        if value not in choices:
            raise InvalidRequestError(f"{name} must be one of {choices}, got {value!r}")
    if len(reference) == 0 or len(driving) == 0:
        raise InvalidRequestError("motion alignment needs a reference face and at least one driving frame")
    if not 0 <= expression_scale <= 2:
        raise InvalidRequestError(f"expression_scale must be within 0..2, got {expression_scale}")
    if not 0 <= translation_strength <= 1:
        raise InvalidRequestError(f"translation_strength must be within 0..1, got {translation_strength}")
    if not 0 <= translation_limit <= 10:
        raise InvalidRequestError(f"translation_limit must be within 0..10 face widths, got {translation_limit}")
    if not -len(reference) <= reference_frame < len(reference):
        raise InvalidRequestError(f"reference_frame {reference_frame} is outside the reference track "
                                  f"(0..{len(reference) - 1})")
    strengths = as_regions(regions)
    ref = reference[reference_frame]
    if not ref.valid[0]:
        raise NoFaceDetectedError(f"frame {reference_frame} of the reference", subject="portrait")
    if not driving.valid.any():
        raise NoFaceDetectedError("any frame of the driving track", subject="driving video")
    drv = fill_invalid(driving)
    if smoothing and smoothing >= 3:
        drv = smooth_track(drv, smoothing)
    if loop:
        drv = close_loop(drv, None if loop is True else int(loop))
    n = len(drv)
    from_blendshapes = neutral == "blendshapes" or (neutral == "auto" and n == 1)
    k = resolve_neutral(drv, neutral)

    # 2.-3. Head pose (for every frame: small).
    ref_pose = ref.pose[0].astype(np.float64)
    drv_pose = drv.pose.astype(np.float64)
    rotations = head_rotations(ref_pose, drv_pose, k, rotation, strengths.head)
    translations = head_translations(ref, drv, k, translation, translation_strength * strengths.head,
                                     translation_limit)
    pose = geometry.compose_pose(rotations, translations, np.full(n, geometry.pose_scale(ref_pose)))

    # 1. Expression in canonical space, weighted per region; 4. projection into the reference frame;
    # 5. pupils in the projected eye boxes. Per frame, so in chunks: the float64 temporaries stay bounded.
    ref_canonical = ref.canonical[0].astype(np.float64)                      # [478, 3]
    weights = (np.full(len(ref_canonical), strengths.eyes) if strengths.uniform
               else vertex_weights(ref_canonical, strengths))                # [478]
    gains = None if from_blendshapes else _lid_gains(ref, drv, k, lids)      # [478] or None
    canonical = np.empty(drv.canonical.shape, dtype=np.float32)              # [N, 478, 3]
    points = np.empty(drv.points.shape, dtype=np.float32)                    # [N, 478, 3]
    for s in range(0, n, ALIGN_CHUNK):
        chunk = slice(s, min(s + ALIGN_CHUNK, n))
        deltas = _expression_deltas(ref, drv, k, chunk, from_blendshapes, gains)  # [n, 478, 3]
        moved = ref_canonical + expression_scale * weights[None, :, None] * deltas
        places = _iris_places(ref, drv, k, chunk, iris, strengths.pupils, from_blendshapes)
        points[chunk] = project_onto(ref, moved, pose[chunk], places)
        canonical[chunk] = moved

    log.debug("aligned %d driving frames (neutral %s, rotation %s, translation %s x%.2f, iris %s, %s)",
              n, "blendshapes" if from_blendshapes else f"frame {k}", rotation, translation,
              translation_strength, iris, strengths)
    return FaceTrack(points=points, canonical=canonical, pose=pose, blendshapes=drv.blendshapes,
                     valid=driving.valid, size=ref.size, fps=drv.fps, fitted=np.repeat(ref.fitted, n),
                     source=ref.source)


def align_faces(reference: FYEFaces, driving: FYEFaces, **options) -> FYEFaces:
    """:func:`align_motion` for every face of ``reference``: one driving track for all, or one per face."""
    refs, drvs = faces_of(reference), faces_of(driving)
    if len(drvs) not in (1, len(refs)):
        raise InvalidRequestError(f"{len(refs)} reference faces but {len(drvs)} driving faces: give one driving "
                                  f"face for all of them, or one per face ({len(refs)})")
    return from_faces([align_motion(r, drvs[0] if len(drvs) == 1 else drvs[j], **options)
                       for j, r in enumerate(refs)])


# -- measures (tests and bench/align.py) ---------------------------------------------------------

def face_span(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cheek-to-cheek distance in pixels [...] of landmarks [..., 478, ≥2] (points 234 and 454)."""
    xy = np.asarray(points, dtype=np.float64)[..., :2] * np.asarray(size, dtype=np.float64)
    return np.linalg.norm(xy[..., 234, :] - xy[..., 454, :], axis=-1)


def neutral_offset(aligned: FaceTrack, reference: FaceTrack, frame: int) -> float:
    """Mean distance of the aligned points at ``frame`` from the reference's own, in face widths."""
    a = aligned.pixels()[frame].astype(np.float64)
    r = reference.pixels()[0].astype(np.float64)
    return float(np.linalg.norm(a - r, axis=-1).mean() / face_span(reference.points[0], reference.size))


def on_face_share(aligned: FaceTrack, reference: FaceTrack, grow: float = 0.25) -> float:
    """Share of all aligned points, over all frames, inside the reference's face box grown by ``grow`` a side."""
    oval = reference.pixels()[0, topology().face_oval].astype(np.float64)
    lo, hi = oval.min(axis=0), oval.max(axis=0)
    margin = grow * (hi - lo)
    px = aligned.pixels().astype(np.float64)
    inside = ((px >= lo - margin) & (px <= hi + margin)).all(axis=-1)
    return float(inside.mean())
