"""Expression-aware landmarks: MediaPipe extraction, the FaceTrack type, control renders and masks.

A :class:`FaceTrack` holds, per frame, MediaPipe's 478 landmarks (468 mesh + 10 iris points), the
canonical-space vertices of the face (see :mod:`emoji_model.geometry`), the 4×4 canonical-to-face
pose, the 52 blendshape scores and whether a face was found. The control image the networks see
is drawn from the points with the eyes, eyebrows, inner lips and pupils of the research code's
renders — and without the face contour (paper 4.1).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from . import geometry
from .errors import InvalidRequestError, NoFaceDetectedError
from .fileio import atomic_path
from .runtime import FACE_LANDMARKER_FILE, resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)

NUM_POINTS = 478
NUM_BLENDSHAPES = 52
RIGHT_IRIS = (468, 469, 470, 471, 472)   # centre first; the iris in the eye of points 33..133
LEFT_IRIS = (473, 474, 475, 476, 477)    # the iris in the eye of points 263..362
# Lid and corner points used for the eye aperture: (upper lid, lower lid, corner, corner).
RIGHT_EYE_APERTURE = (159, 145, 33, 133)
LEFT_EYE_APERTURE = (386, 374, 362, 263)


# -- the track -------------------------------------------------------------------------------

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

    ARRAYS: ClassVar[tuple[str, ...]] = ("points", "canonical", "pose", "blendshapes", "valid")

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        self.canonical = np.asarray(self.canonical, dtype=np.float32)
        self.pose = np.asarray(self.pose, dtype=np.float32)
        self.blendshapes = np.asarray(self.blendshapes, dtype=np.float32)
        self.valid = np.asarray(self.valid, dtype=bool)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.fps = float(self.fps)
        n = len(self.points)
        expected = {"points": (n, NUM_POINTS, 3), "canonical": (n, NUM_POINTS, 3), "pose": (n, 4, 4),
                    "blendshapes": (n, NUM_BLENDSHAPES), "valid": (n,)}
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the track as .npz (points, canonical, pose, blendshapes, valid, size, fps)."""
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
                size = tuple(int(v) for v in data["size"])
                fps = float(data["fps"]) if "fps" in data.files else 0.0
        except (OSError, KeyError, ValueError) as exc:
            raise InvalidRequestError(f"'{path}' is not a face track (.npz with points, canonical, pose, "
                                      f"blendshapes, valid, size): {exc}") from exc
        return cls(**arrays, size=size, fps=fps)


def _empty_track(n: int, size: tuple[int, int], fps: float) -> FaceTrack:
    return FaceTrack(points=np.zeros((n, NUM_POINTS, 3)), canonical=np.zeros((n, NUM_POINTS, 3)),
                     pose=np.tile(np.eye(4), (n, 1, 1)), blendshapes=np.zeros((n, NUM_BLENDSHAPES)),
                     valid=np.zeros(n, bool), size=size, fps=fps)


# -- extraction ------------------------------------------------------------------------------

@dataclass
class Face:
    """One face found in one image: landmarks, MediaPipe's pose matrix, blendshapes."""

    points: np.ndarray       # [478, 3]
    pose: np.ndarray | None  # [4, 4]
    blendshapes: np.ndarray  # [52]

    def area(self, size: tuple[int, int]) -> float:
        """Area of the landmarks' bounding box in pixels (used to rank faces by size)."""
        span = self.points[:, :2].max(0) - self.points[:, :2].min(0)
        return float(span[0] * size[0] * span[1] * size[1])


class FaceLandmarker:
    """MediaPipe's face landmarker (Tasks API) as a context manager; one per image or video."""

    def __init__(self, model_path: str | os.PathLike | None = None, video: bool = False,
                 num_faces: int = 2, runtime: StandaloneRuntime | None = None):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.model_path = resolve_face_model(model_path, runtime)
        self.video = video
        mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)), running_mode=mode,
            num_faces=max(1, int(num_faces)), output_face_blendshapes=True,
            output_facial_transformation_matrixes=True)
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise InvalidRequestError(f"MediaPipe cannot load the face landmarker '{self.model_path}': "
                                      f"{exc}") from exc
        self._last_ts = -1

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release MediaPipe's graph now (its own finaliser can crash at interpreter exit)."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def detect(self, image: np.ndarray, timestamp_ms: int | None = None) -> list[Face]:
        """Faces in an RGB uint8 image, largest first; video mode needs increasing timestamps."""
        import mediapipe as mp

        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        if h < 2 or w < 2:
            return []
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=image)
        try:
            if self.video:
                ts = max(self._last_ts + 1, int(timestamp_ms or 0))
                self._last_ts = ts
                result = self._landmarker.detect_for_video(mp_image, ts)
            else:
                result = self._landmarker.detect(mp_image)
        except (RuntimeError, ValueError) as exc:  # MediaPipe refuses some inputs; treat as no face
            log.warning("MediaPipe could not process a %dx%d image: %s", w, h, exc)
            return []
        faces = []
        for i, landmarks in enumerate(result.face_landmarks):
            if len(landmarks) != NUM_POINTS:
                continue
            points = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float64)
            pose = None
            if i < len(result.facial_transformation_matrixes):
                pose = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float64)
            blend = np.zeros(NUM_BLENDSHAPES)
            if i < len(result.face_blendshapes):
                scores = [c.score for c in result.face_blendshapes[i]][:NUM_BLENDSHAPES]
                blend[:len(scores)] = scores
            faces.append(Face(points, pose, blend))
        faces.sort(key=lambda f: -f.area((w, h)))
        return faces


def resolve_face_model(model_path: str | os.PathLike | None = None,
                       runtime: StandaloneRuntime | None = None) -> Path:
    """Path of the face landmarker bundle: ``model_path`` (a path or a name in models/mediapipe) or the default."""
    return resolve(runtime).find_model("mediapipe", str(model_path or FACE_LANDMARKER_FILE))


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image as contiguous uint8 RGB [H, W, 3] (grey expanded, alpha dropped, floats 0..1 scaled)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InvalidRequestError(f"expected an image [H, W, 3], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            image = np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255)
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def _pick(faces: list[Face], face_index: int) -> Face | None:
    return faces[face_index] if face_index < len(faces) else None


def extract_image(image: np.ndarray, *, face_index: int = 0, face_model: str | os.PathLike | None = None,
                  what: str = "the image", runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of one still (IMAGE mode) as a one-frame track; NoFaceDetectedError if none."""
    return extract_stills([image], face_index=face_index, face_model=face_model, what=what, runtime=runtime)


def extract_stills(images: Sequence[np.ndarray] | np.ndarray, *, face_index: int = 0,
                   face_model: str | os.PathLike | None = None, what: str = "the image",
                   runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of independent stills of one size (IMAGE mode, no tracking); every one needs a face."""
    rt = resolve(runtime)
    images = [as_rgb_uint8(im) for im in images]
    if not images:
        raise InvalidRequestError(f"{what}: zero images")
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise InvalidRequestError(f"{what}: the images differ in size")
    track = _empty_track(len(images), (w, h), 0.0)
    with FaceLandmarker(face_model, video=False, num_faces=max(4, face_index + 1), runtime=rt) as lm, \
            rt.progress(len(images), "face landmarks") as bar:
        model = geometry.load_canonical_model(lm.model_path)
        for i, image in enumerate(images):
            rt.check_interrupt()
            faces = lm.detect(image)
            face = _pick(faces, face_index)
            if face is None:
                name = what if len(images) == 1 else f"image {i} of {what}"
                hint = None
                if faces:
                    hint = (f"Only {len(faces)} face(s) found; face_index {face_index} asks for face "
                            f"number {face_index + 1} by size. Use a smaller face_index.")
                raise NoFaceDetectedError(name, hint)
            _store(track, i, face)
            bar.update()
    _finish_geometry(track, model)
    return track


def extract_video(frames: Iterable[np.ndarray], fps: float = 25.0, *, face_index: int = 0,
                  face_model: str | os.PathLike | None = None, total: int | None = None,
                  what: str = "the driving video", runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of video frames (VIDEO mode, temporal tracking); missing faces are interpolated.

    Frames without a face stay marked invalid in ``valid`` and are filled from the nearest valid
    frames. NoFaceDetectedError when no frame has a face.
    """
    rt = resolve(runtime)
    fps = float(fps) if fps and fps > 0 else 25.0
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)  # type: ignore[arg-type]
    found: list[Face | None] = []
    size: tuple[int, int] | None = None
    with FaceLandmarker(face_model, video=True, num_faces=max(2, face_index + 1), runtime=rt) as lm, \
            rt.progress(total or 0, "face landmarks") as bar:
        model = geometry.load_canonical_model(lm.model_path)
        for i, frame in enumerate(frames):
            rt.check_interrupt()
            frame = as_rgb_uint8(frame)
            frame_size = (frame.shape[1], frame.shape[0])
            if size is None:
                size = frame_size
            elif frame_size != size:
                raise InvalidRequestError(f"frame {i} of {what} is {frame_size[0]}x{frame_size[1]}, "
                                          f"the first frame {size[0]}x{size[1]}")
            found.append(_pick(lm.detect(frame, round(i * 1000.0 / fps)), face_index))
            bar.update()
    if not found:
        raise InvalidRequestError(f"{what} has no frame")
    track = _empty_track(len(found), size, fps)
    for i, face in enumerate(found):
        if face is not None:
            _store(track, i, face)
    if not track.valid.any():
        raise NoFaceDetectedError(f"any of the {len(found)} frames of {what}")
    _finish_geometry(track, model)
    missing = int((~track.valid).sum())
    if missing:
        frames_list = np.flatnonzero(~track.valid)
        log.warning("no face in %d of %d frames of %s (frames %s); filled by interpolation",
                    missing, len(track), what, _ranges(frames_list))
        track = fill_invalid(track)
    return track


def extract_file(path: str | os.PathLike, *, face_index: int = 0, face_model: str | os.PathLike | None = None,
                 runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Landmarks of an image file (a one-frame track) or a video file (every frame)."""
    from .video import is_image_file, iter_video, load_image, prefetch, probe_video

    path = Path(path)
    if is_image_file(path):
        return extract_image(load_image(path), face_index=face_index, face_model=face_model,
                             what=f"image '{path.name}'", runtime=runtime)
    fps, count = probe_video(path)
    return extract_video(prefetch(iter_video(path)), fps, face_index=face_index, face_model=face_model,
                         total=count or None, what=f"video '{path.name}'", runtime=runtime)


EXTRACT_MODES = ("auto", "video", "image")


def extract_auto(images: np.ndarray, *, mode: str = "auto", fps: float = 25.0, face_index: int = 0,
                 face_model: str | os.PathLike | None = None, what: str = "the images",
                 runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """A batch [B, H, W, 3] as video frames (VIDEO mode) or independent stills (IMAGE mode).

    mode "auto": one image is a still, more are video frames.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if len(images) == 0:
        raise InvalidRequestError(f"{what}: zero images")
    if mode not in EXTRACT_MODES:
        raise InvalidRequestError(f"mode must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "image" or (mode == "auto" and len(images) == 1):
        return extract_stills(images, face_index=face_index, face_model=face_model, what=what, runtime=runtime)
    return extract_video(images, fps, face_index=face_index, face_model=face_model, what=what,
                         runtime=runtime)


def extract_controls(images: np.ndarray, *, mode: str = "auto", fps: float = 25.0, face_index: int = 0,
                     face_model: str | os.PathLike | None = None, include_contour: bool = False,
                     outer_lips: bool = False, what: str = "the images",
                     runtime: StandaloneRuntime | None = None) -> tuple[FaceTrack, np.ndarray, np.ndarray]:
    """(track, control renders uint8 [B, H, W, 3], face mask bool [B, H, W]) of an image batch.

    The mask is the union of the expression mask and the facial mask (paper 4.2).
    """
    track = extract_auto(images, mode=mode, fps=fps, face_index=face_index, face_model=face_model,
                         what=what, runtime=runtime)
    controls = render_controls(track, include_contour=include_contour, outer_lips=outer_lips, runtime=runtime)
    expression, facial = face_masks(track, runtime=runtime)
    return track, controls, expression | facial


def _store(track: FaceTrack, i: int, face: Face) -> None:
    track.points[i] = face.points
    track.blendshapes[i] = face.blendshapes
    track.valid[i] = True
    if face.pose is not None:
        track.pose[i] = face.pose
    else:
        track.pose[i] = np.nan  # filled by _finish_geometry with the fitted pose


def _finish_geometry(track: FaceTrack, model: geometry.CanonicalModel) -> None:
    """Canonical vertices of the valid frames, relative to MediaPipe's pose (batched over frames)."""
    idx = np.flatnonzero(track.valid)
    fit = geometry.screen_to_metric(track.points[idx].astype(np.float64), track.size, model)
    pose = track.pose[idx].astype(np.float64)
    missing = np.isnan(pose).any(axis=(-1, -2))
    pose[missing] = fit.pose[missing]
    track.pose[idx] = pose
    track.canonical[idx] = geometry.apply_pose(geometry.invert_pose(pose), fit.metric)


def _ranges(indices: np.ndarray) -> str:
    parts, start = [], None
    for a, b in zip(indices, list(indices[1:]) + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = None
    return ", ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")


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


# -- topology and drawing --------------------------------------------------------------------

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
# Mouth corners and mid-line points that split each lip ring into four chains.
_LIP_CHAINS = {
    "outer_lips_lower_left": (61, 17), "outer_lips_lower_right": (17, 291),
    "outer_lips_upper_left": (61, 0), "outer_lips_upper_right": (0, 291),
    "inner_lips_lower_left": (78, 14), "inner_lips_lower_right": (14, 308),
    "inner_lips_upper_left": (78, 13), "inner_lips_upper_right": (13, 308),
}
REFERENCE_SIZE = 512
"""Resolution at which the research renders used 1-pixel lines and 6-pixel pupil squares."""
# The released code's head polygon for the facial mask of L_FFG (media_pipe/draw_util.py, draw_mask):
# 26 points of the face oval from temple to temple around the chin, without the forehead arc, so the
# mask covers the face the landmarks describe rather than the forehead and hairline.
HEAD_OVAL = (21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
             288, 361, 323, 454, 356, 389)


@dataclass(frozen=True)
class Topology:
    """Index lists of the face-mesh parts, taken from MediaPipe's FaceLandmarksConnections."""

    parts: dict[str, np.ndarray]     # part name -> edges [E, 2]
    face_oval: np.ndarray            # [36] ordered polygon of the face contour
    right_eye_ring: np.ndarray       # [16] ordered contour of the eye around points 33..133
    left_eye_ring: np.ndarray        # [16] ordered contour of the eye around points 263..362
    expression_points: np.ndarray    # indices of eyes, eyebrows, lips and irises (no contour)


def _edges(connections) -> list[tuple[int, int]]:
    return [(int(c.start), int(c.end)) for c in connections]


def _shortest_path(edges: list[tuple[int, int]], a: int, b: int) -> list[int]:
    adjacent: dict[int, list[int]] = {}
    for s, e in edges:
        adjacent.setdefault(s, []).append(e)
        adjacent.setdefault(e, []).append(s)
    previous = {a: a}
    queue = deque([a])
    while queue:
        node = queue.popleft()
        if node == b:
            break
        for nxt in adjacent.get(node, []):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    if b not in previous:
        raise ValueError(f"no path from {a} to {b} in the given edges")
    path = [b]
    while path[-1] != a:
        path.append(previous[path[-1]])
    return path[::-1]


def _cycle(edges: list[tuple[int, int]]) -> np.ndarray:
    # Walk a closed contour given as unordered edges.
    adjacent: dict[int, list[int]] = {}
    for s, e in edges:
        adjacent.setdefault(s, []).append(e)
        adjacent.setdefault(e, []).append(s)
    start = edges[0][0]
    order, prev, node = [start], None, start
    while True:
        nxt = next(n for n in adjacent[node] if n != prev)
        if nxt == start:
            return np.asarray(order)
        order.append(nxt)
        prev, node = node, nxt


@functools.lru_cache(maxsize=1)
def topology() -> Topology:
    """The face-mesh parts used for rendering and masks (built once from MediaPipe's topology)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    lips = _edges(C.FACE_LANDMARKS_LIPS)
    parts = {
        "left_eye": _edges(C.FACE_LANDMARKS_LEFT_EYE),
        "left_eyebrow": _edges(C.FACE_LANDMARKS_LEFT_EYEBROW),
        "right_eye": _edges(C.FACE_LANDMARKS_RIGHT_EYE),
        "right_eyebrow": _edges(C.FACE_LANDMARKS_RIGHT_EYEBROW),
    }
    for name, (a, b) in _LIP_CHAINS.items():
        path = _shortest_path(lips, a, b)
        parts[name] = list(zip(path[:-1], path[1:]))
    parts["face_oval"] = _edges(C.FACE_LANDMARKS_FACE_OVAL)
    parts = {k: np.asarray(v, dtype=np.int64) for k, v in parts.items()}
    expression = sorted({int(i) for k, e in parts.items() if k != "face_oval" for i in e.ravel()}
                        | set(RIGHT_IRIS) | set(LEFT_IRIS))
    return Topology(parts=parts, face_oval=_cycle(_edges(C.FACE_LANDMARKS_FACE_OVAL)),
                    right_eye_ring=_cycle(_edges(C.FACE_LANDMARKS_RIGHT_EYE)),
                    left_eye_ring=_cycle(_edges(C.FACE_LANDMARKS_LEFT_EYE)),
                    expression_points=np.asarray(expression))


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


# -- masks for the facial fine-grained loss (paper 4.2) --------------------------------------

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
