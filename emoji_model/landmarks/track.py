"""The FaceTrack type: per-frame MediaPipe landmarks, canonical vertices, pose and blendshapes; gaps and measures.

A :class:`FaceTrack` holds, per frame, MediaPipe's 478 landmarks (468 mesh + 10 iris points), the
canonical-space vertices of the face (see :mod:`emoji_model.geometry`), the 4×4 canonical-to-face
pose, the 52 blendshape scores and whether a face was found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import geometry
from ..errors import InvalidRequestError
from ..fileio import atomic_path
from ..provenance import ImageSignature

NUM_POINTS = 478
NUM_BLENDSHAPES = 52
RIGHT_IRIS = (468, 469, 470, 471, 472)   # centre first; the iris in the eye of points 33..133
LEFT_IRIS = (473, 474, 475, 476, 477)    # the iris in the eye of points 263..362
# Lid and corner points used for the eye aperture: (upper lid, lower lid, corner, corner).
RIGHT_EYE_APERTURE = (159, 145, 33, 133)
LEFT_EYE_APERTURE = (386, 374, 362, 263)



@dataclass
class FaceTrack:
    """Per-frame face landmarks of a still (one frame) or a video, in one frame size."""

    points: np.ndarray       # [N, 478, 3] float32: x, y normalised to the frame (0..1), z as MediaPipe
    canonical: np.ndarray    # [N, 478, 3] float32: canonical-space vertices
    pose: np.ndarray         # [N, 4, 4] float32: canonical -> metric (camera) space
    blendshapes: np.ndarray  # [N, 52] float32: MediaPipe's scores, index 0 is "_neutral"
    valid: np.ndarray        # [N] bool: a face was detected in that frame
    size: tuple[int, int]    # (width, height) of the frames
    fps: float = 0.0         # frame rate of the source video; 0 for a still
    source: ImageSignature | None = None  # the portrait the face belongs to (a still's track and its edits)
    fitted: np.ndarray | None = None  # [N] bool: a canonical face fitted into a given box, not detected

    ARRAYS: ClassVar[tuple[str, ...]] = ("points", "canonical", "pose", "blendshapes", "valid", "fitted")

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        self.canonical = np.asarray(self.canonical, dtype=np.float32)
        self.pose = np.asarray(self.pose, dtype=np.float32)
        self.blendshapes = np.asarray(self.blendshapes, dtype=np.float32)
        self.valid = np.asarray(self.valid, dtype=bool)
        n = len(self.points)
        self.fitted = np.zeros(n, bool) if self.fitted is None else np.asarray(self.fitted, dtype=bool)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.fps = float(self.fps)
        expected = {"points": (n, NUM_POINTS, 3), "canonical": (n, NUM_POINTS, 3), "pose": (n, 4, 4),
                    "blendshapes": (n, NUM_BLENDSHAPES), "valid": (n,), "fitted": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise InvalidRequestError(f"FaceTrack.{name} must have shape {shape}, "
                                          f"got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index) -> FaceTrack:
        """Frames selected by an int, a slice or an index array, as a new track."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return replace(self, **{k: getattr(self, k)[index] for k in self.ARRAYS})

    @classmethod
    def concat(cls, tracks: Sequence[FaceTrack]) -> FaceTrack:
        """Frames of several tracks of the same frame size, one after the other."""
        if not tracks:
            raise InvalidRequestError("cannot concatenate zero face tracks")
        sizes = {t.size for t in tracks}
        if len(sizes) != 1:
            raise InvalidRequestError(f"face tracks have different frame sizes {sorted(sizes)}")
        first = tracks[0]
        return replace(first, **{k: np.concatenate([getattr(t, k) for t in tracks]) for k in first.ARRAYS})

    def pixels(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """x, y of the points in pixels [N, 478, 2] of a frame of ``size`` (default: the track's)."""
        w, h = size or self.size
        return self.points[..., :2] * np.array([w, h], dtype=np.float32)

    @property
    def any_fitted(self) -> bool:
        """True when some frame holds a face fitted into a box rather than detected."""
        return bool(self.fitted.any())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the track as .npz (points, canonical, pose, blendshapes, valid, fitted, size, fps)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, **{k: getattr(self, k) for k in self.ARRAYS},
                                size=np.array(self.size, dtype=np.int64), fps=np.array(self.fps))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaceTrack:
        """Read a track written by :meth:`save`."""
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in ("points", "canonical", "pose", "blendshapes", "valid")}
                if "fitted" in data.files:  # tracks written before fitted faces existed have none
                    arrays["fitted"] = data["fitted"]
                size = tuple(int(v) for v in data["size"])
                fps = float(data["fps"]) if "fps" in data.files else 0.0
        except (OSError, KeyError, ValueError) as exc:
            raise InvalidRequestError(f"'{path}' is not a face track (.npz with points, canonical, pose, "
                                      f"blendshapes, valid, size): {exc}. A file of several faces is read "
                                      "with emoji_model.landmarks.load_faces.") from exc
        return cls(**arrays, size=size, fps=fps)


def empty_track(n: int, size: tuple[int, int], fps: float) -> FaceTrack:
    """A track of ``n`` frames without a face (zero points, identity poses), to be filled."""
    return FaceTrack(points=np.zeros((n, NUM_POINTS, 3)), canonical=np.zeros((n, NUM_POINTS, 3)),
                     pose=np.tile(np.eye(4), (n, 1, 1)), blendshapes=np.zeros((n, NUM_BLENDSHAPES)),
                     valid=np.zeros(n, bool), size=size, fps=fps)


def fill_invalid(track: FaceTrack) -> FaceTrack:
    """Fill frames without a face from the nearest valid ones (linear; poses blended; held at the ends).

    ``valid`` is left as it was, so callers still see which frames were detected.
    """
    valid = track.valid
    if valid.all() or not valid.any():
        return track
    n = len(track)
    frames = np.arange(n)
    good = np.flatnonzero(valid)
    # The nearest valid frames at or before (lo) and at or after (hi) each frame; before the first
    # and after the last valid frame both are that frame, which holds it.
    lo = good[np.clip(np.searchsorted(good, frames, side="right") - 1, 0, len(good) - 1)]
    hi = good[np.clip(np.searchsorted(good, frames, side="left"), 0, len(good) - 1)]
    t = np.where(hi > lo, (frames - lo) / np.maximum(hi - lo, 1), 0.0)
    out = replace(track, **{k: getattr(track, k).copy() for k in track.ARRAYS})
    for name in ("points", "canonical", "blendshapes"):
        arr = getattr(track, name).astype(np.float64)
        w = t.reshape((n,) + (1,) * (arr.ndim - 1))
        getattr(out, name)[:] = (1 - w) * arr[lo] + w * arr[hi]
    out.pose[:] = geometry.interpolate_poses(track.pose[lo].astype(np.float64),
                                             track.pose[hi].astype(np.float64), t)
    return out


LOOP_BLEND = 16
"""Most frames :func:`close_loop` blends by default (a quarter of the track when it is shorter)."""


def close_loop(track: FaceTrack, frames: int | None = None) -> FaceTrack:
    """The track with its last ``frames`` frames blended into its first, so that it loops without a jump.

    Frame N-L+j moves (j+1)/(L+1) of the way to frame 0 (points, canonical vertices, blendshapes
    linearly, poses blended), so the step from the last frame back to the first is like any other.
    Default L: a quarter of the track, at most :data:`LOOP_BLEND`.
    """
    n = len(track)
    count = min(LOOP_BLEND, n // 4) if frames is None else int(frames)
    count = max(0, min(count, n - 1))
    if count == 0:
        return track
    out = replace(track, **{k: getattr(track, k).copy() for k in track.ARRAYS})
    idx = np.arange(n - count, n)
    t = (np.arange(count) + 1.0) / (count + 1.0)                        # [L]
    for name in ("points", "canonical", "blendshapes"):
        arr = getattr(track, name).astype(np.float64)
        w = t.reshape((count,) + (1,) * (arr.ndim - 1))
        getattr(out, name)[idx] = (1 - w) * arr[idx] + w * arr[:1]
    first = np.repeat(track.pose[:1].astype(np.float64), count, axis=0)
    out.pose[idx] = geometry.interpolate_poses(track.pose[idx].astype(np.float64), first, t)
    return out


# -- measurements ----------------------------------------------------------------------------

def eye_aperture(points: np.ndarray, size: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Lid distance over eye width for both eyes [..., 2] (right eye, left eye) of points [..., 478, ≥2]."""
    xy = np.asarray(points)[..., :2] * np.asarray(size, dtype=np.float64)
    out = []
    for upper, lower, c1, c2 in (RIGHT_EYE_APERTURE, LEFT_EYE_APERTURE):
        lid = np.linalg.norm(xy[..., upper, :] - xy[..., lower, :], axis=-1)
        width = np.linalg.norm(xy[..., c1, :] - xy[..., c2, :], axis=-1)
        out.append(lid / np.maximum(width, 1e-9))
    return np.stack(out, axis=-1)


def neutral_frame(track: FaceTrack) -> int:
    """Index of the most neutral valid frame: the lowest sum of blendshape scores (without "_neutral")."""
    score = track.blendshapes[:, 1:].sum(axis=1).astype(np.float64)
    score[~track.valid] = np.inf
    if not np.isfinite(score).any():
        score = track.blendshapes[:, 1:].sum(axis=1)
    return int(np.argmin(score))
