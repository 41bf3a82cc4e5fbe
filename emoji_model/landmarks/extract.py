"""Landmark extraction with MediaPipe's face landmarker (Tasks API): stills, videos, files, batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import geometry
from ..constants import EXTRACT_MODES, FACE_ALL, FACE_LANDMARKER_FILE
from ..errors import InvalidRequestError, LandmarkerError, NoFaceDetectedError
from ..provenance import image_signature
from ..runtime import resolve
from .masks import face_masks
from .render import render_controls
from .fit import check_box, fit_face_box
from .group import FaceGroup, FYEFaces, faces_of
from .track import NUM_BLENDSHAPES, NUM_POINTS, FaceTrack, empty_track, fill_invalid

if TYPE_CHECKING:
    from ..runtime import StandaloneRuntime

log = logging.getLogger(__name__)


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


def import_mediapipe():
    """MediaPipe's Tasks vision module (imported on first use: heavy, and not needed by most of the pack)."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision

    return mp, vision


class FaceLandmarker:
    """MediaPipe's face landmarker (Tasks API) as a context manager; one per image or video."""

    def __init__(self, model_path: str | os.PathLike | None = None, video: bool = False,
                 num_faces: int = 2, runtime: StandaloneRuntime | None = None):
        from mediapipe.tasks.python.core.base_options import BaseOptions

        _, vision = import_mediapipe()
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
        except (RuntimeError, ValueError) as exc:
            # Images too small to hold a face were answered above; anything MediaPipe raises now is
            # its own failure, which must not pass for a frame without a face.
            raise LandmarkerError(f"MediaPipe's face landmarker failed on a {w}x{h} image ({exc}). Check the "
                                  f"face model file '{self.model_path}' and the MediaPipe installation "
                                  "(pip install mediapipe).") from exc
        faces = []
        for i, landmarks in enumerate(result.face_landmarks):
            if len(landmarks) != NUM_POINTS:
                continue
            # float32, as MediaPipe computes them (and as a FaceTrack stores them)
            points = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float32)
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


MAX_FACES = 8
"""Most faces tracked with face_index "all"."""

FaceIndex = int | str
"""Which face: its rank by size (0 = largest) or "all" (one track per face)."""
Box = tuple[float, float, float, float]
"""A face box: x, y, width, height in pixels."""


def parse_face_index(face_index: FaceIndex) -> int | str:
    """A face rank (int >= 0) or "all"; -1 and "all" ask for every face."""
    if isinstance(face_index, str):
        if face_index.strip().lower() == FACE_ALL:
            return FACE_ALL
        try:
            face_index = int(face_index)
        except ValueError:
            raise InvalidRequestError(f"face_index must be a face number (0 = largest) or 'all', got "
                                      f"{face_index!r}") from None
    face_index = int(face_index)
    if face_index == -1:
        return FACE_ALL
    if face_index < 0:
        raise InvalidRequestError(f"face_index must be 0 or more (or -1 / 'all' for every face), got {face_index}")
    return face_index


def box_of(face: Face, size: tuple[int, int]) -> np.ndarray:
    """(x0, y0, x1, y1) in pixels of a face's landmarks in a (width, height) image."""
    xy = face.points[:, :2] * np.asarray(size, dtype=np.float64)
    return np.concatenate([xy.min(0), xy.max(0)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2])) - inter
    return inter / union if union > 0 else 0.0


def _pick(faces: list[Face], face_index: int, box: tuple[float, ...] | None = None,
          size: tuple[int, int] | None = None) -> Face | None:
    # With a face box, the face that overlaps it most (none below 10 % overlap); else by size rank.
    if box is not None:
        x, y, w, h = box
        target = np.array([x, y, x + w, y + h])
        scored = [(iou(box_of(f, size), target), f) for f in faces]
        scored = [(o, f) for o, f in scored if o >= 0.1]
        return max(scored, key=lambda of: of[0])[1] if scored else None
    return faces[face_index] if face_index < len(faces) else None


def associate(tracks: list[np.ndarray | None], faces: list[Face], size: tuple[int, int]) -> list[Face | None]:
    """Faces of a frame given to the tracks whose last boxes [x0, y0, x1, y1] (None: not seen yet) are nearest.

    The assignment minimises the summed centre distances (in face sizes); a face farther than one
    face size from a track's last box is not that track's.
    """
    from scipy.optimize import linear_sum_assignment

    out: list[Face | None] = [None] * len(tracks)
    known = [j for j, b in enumerate(tracks) if b is not None]
    if not faces or not known:
        return out
    boxes = np.stack([box_of(f, size) for f in faces])
    last = np.stack([tracks[j] for j in known])
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    extent = np.maximum((last[:, 2:] - last[:, :2]).max(axis=1), 1.0)
    cost = np.linalg.norm(centre(last)[:, None] - centre(boxes)[None], axis=-1) / extent[:, None]
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols):
        if cost[r, c] <= 1.0:
            out[known[r]] = faces[c]
    return out


def extract_image(image: np.ndarray, *, face_index: FaceIndex = 0, face_model: str | os.PathLike | None = None,
                  face_box: Box | None = None, what: str = "the image",
                  runtime: StandaloneRuntime | None = None) -> FYEFaces:
    """Landmarks of one still (IMAGE mode) as a one-frame track; NoFaceDetectedError if none.

    ``face_box`` (x, y, w, h pixels) picks the face inside it, or fits a canonical face into it when
    MediaPipe finds none there (:func:`~emoji_model.landmarks.fit.fit_face_box`). ``face_index`` "all"
    gives a FaceGroup of every face (largest first).
    """
    return extract_stills([image], face_index=face_index, face_model=face_model, face_box=face_box, what=what,
                          runtime=runtime)


def extract_stills(images: Sequence[np.ndarray] | np.ndarray, *, face_index: FaceIndex = 0,
                   face_model: str | os.PathLike | None = None,
                   face_box: Box | None = None, what: str = "the image",
                   runtime: StandaloneRuntime | None = None) -> FYEFaces:
    """Landmarks of independent stills of one size (IMAGE mode, no tracking); every one needs a face.

    With ``face_index`` "all" every face of the first image is followed through the others (nearest
    box); a face missing from a later image is marked invalid there and filled from the others.
    """
    rt = resolve(runtime)
    images = [as_rgb_uint8(im) for im in images]
    if not images:
        raise InvalidRequestError(f"{what}: zero images")
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise InvalidRequestError(f"{what}: the images differ in size")
    index = parse_face_index(face_index)
    box = None if face_box is None else check_box(face_box, (w, h))
    every = index == FACE_ALL and box is None
    num_faces = MAX_FACES if every else max(4, (0 if index == FACE_ALL else index) + 1)
    found: list[list[Face | None]] = []
    boxes: list[np.ndarray | None] = []
    with FaceLandmarker(face_model, video=False, num_faces=num_faces, runtime=rt) as lm, \
            rt.progress(len(images), "face landmarks") as bar:
        model = geometry.load_canonical_model(lm.model_path)
        for i, image in enumerate(images):
            rt.check_interrupt()
            faces = lm.detect(image)
            name = what if len(images) == 1 else f"image {i} of {what}"
            if every:
                if not faces:
                    raise NoFaceDetectedError(name, subject="portrait")
                if not found:
                    row: list[Face | None] = list(faces)
                    boxes = [box_of(f, (w, h)) for f in faces]
                else:
                    row = associate(boxes, faces, (w, h))
                    boxes = [b if f is None else box_of(f, (w, h)) for b, f in zip(boxes, row)]
                found.append(row)
            else:
                face = _pick(faces, 0 if index == FACE_ALL else index, box, (w, h))
                if face is None and box is not None:
                    if len(images) > 1:
                        raise NoFaceDetectedError(name, "A face box fits a face into one portrait; give the "
                                                        "images one by one.", subject="portrait")
                    return fit_face_box(box, (w, h), lm.model_path, runtime=rt)
                if face is None:
                    hint = None
                    if faces:
                        hint = (f"Only {len(faces)} face(s) found; face_index {index} asks for face "
                                f"number {index + 1} by size. Use a smaller face_index.")
                    raise NoFaceDetectedError(name, hint, subject="portrait")
                found.append([face])
            bar.update()
    tracks = []
    for j in range(len(found[0])):
        track = empty_track(len(images), (w, h), 0.0)
        for i, row in enumerate(found):
            if row[j] is not None:
                _store(track, i, row[j])
        _finish_geometry(track, model)
        if len(images) == 1:
            track.source = image_signature(images[0])
        tracks.append(fill_invalid(track))
    if every:
        log.info("%d face(s) in %s", len(tracks), what)
    return FaceGroup(tracks) if every else tracks[0]


def extract_video(frames: Iterable[np.ndarray], fps: float = 25.0, *, face_index: FaceIndex = 0,
                  face_model: str | os.PathLike | None = None, face_box: Box | None = None,
                  total: int | None = None, what: str = "the driving video",
                  runtime: StandaloneRuntime | None = None) -> FYEFaces:
    """Landmarks of video frames (VIDEO mode, temporal tracking); missing faces are interpolated.

    Frames without a face stay marked invalid in ``valid`` and are filled from the nearest valid
    frames (:func:`faceless_report` says which). NoFaceDetectedError when no frame has a face.
    ``face_box`` follows the face inside it (and fits a canonical face into it, held still, when no
    frame has one there); ``face_index`` "all" follows every face of the first frame with faces.
    """
    rt = resolve(runtime)
    fps = float(fps) if fps and fps > 0 else 25.0
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)  # type: ignore[arg-type]
    index = parse_face_index(face_index)
    every = index == FACE_ALL and face_box is None
    rank = 0 if index == FACE_ALL else index
    found: list[list[Face | None]] = []
    boxes: list[np.ndarray | None] = []
    size: tuple[int, int] | None = None
    box = None
    with FaceLandmarker(face_model, video=True, num_faces=MAX_FACES if every else max(2, rank + 1),
                        runtime=rt) as lm, rt.progress(total or 0, "face landmarks") as bar:
        model = geometry.load_canonical_model(lm.model_path)
        for i, frame in enumerate(frames):
            rt.check_interrupt()
            frame = as_rgb_uint8(frame)
            frame_size = (frame.shape[1], frame.shape[0])
            if size is None:
                size = frame_size
                box = None if face_box is None else check_box(face_box, size)
            elif frame_size != size:
                raise InvalidRequestError(f"frame {i} of {what} is {frame_size[0]}x{frame_size[1]}, "
                                          f"the first frame {size[0]}x{size[1]}")
            faces = lm.detect(frame, round(i * 1000.0 / fps))
            if every:
                if not boxes and faces:
                    boxes = [box_of(f, size) for f in faces]
                    found = [[None] * len(faces) for _ in found]
                    row: list[Face | None] = list(faces)
                elif boxes:
                    row = associate(boxes, faces, size)
                    boxes = [b if f is None else box_of(f, size) for b, f in zip(boxes, row)]
                else:
                    row = []
                found.append(row)
            else:
                found.append([_pick(faces, rank, box, size)])
            bar.update()
    if not found:
        raise InvalidRequestError(f"{what} has no frame")
    count = max(len(row) for row in found)
    if count == 0 or not any(f is not None for row in found for f in row):
        if box is not None:
            still = fit_face_box(box, size, lm.model_path, fps=fps, runtime=rt)
            return still[np.zeros(len(found), dtype=int)]
        raise NoFaceDetectedError(f"any of the {len(found)} frames of {what}", subject=_subject(what))
    tracks = []
    for j in range(count):
        track = empty_track(len(found), size, fps)
        for i, row in enumerate(found):
            if j < len(row) and row[j] is not None:
                _store(track, i, row[j])
        _finish_geometry(track, model)
        report = faceless_report(track, what if count == 1 else f"{what} (face {j + 1} of {count})")
        if report:
            log.warning("%s", report)
            track = fill_invalid(track)
        tracks.append(track)
    return FaceGroup(tracks) if every else tracks[0]


def _subject(what: str) -> str:
    return "portrait" if "portrait" in what or "reference" in what else "driving video"


def faceless_report(track: FaceTrack, what: str = "the driving video") -> str | None:
    """A sentence naming the frames without a face (filled from their neighbours), or None when every frame has one."""
    missing = np.flatnonzero(~track.valid)
    if not len(missing):
        return None
    return (f"no face in {len(missing)} of {len(track)} frames of {what} (frames {_ranges(missing)}); "
            "they are filled from the nearest frames with a face")


def extract_file(path: str | os.PathLike, *, face_index: FaceIndex = 0, face_model: str | os.PathLike | None = None,
                 face_box: Box | None = None,
                 runtime: StandaloneRuntime | None = None) -> FYEFaces:
    """Landmarks of an image file (a one-frame track) or a video file (every frame)."""
    from ..video import is_image_file, iter_video, load_image, prefetch, probe_video

    path = Path(path)
    if is_image_file(path):
        return extract_image(load_image(path), face_index=face_index, face_model=face_model, face_box=face_box,
                             what=f"image '{path.name}'", runtime=runtime)
    fps, count = probe_video(path)
    return extract_video(prefetch(iter_video(path)), fps, face_index=face_index, face_model=face_model,
                         face_box=face_box, total=count or None, what=f"video '{path.name}'", runtime=runtime)


def extract_auto(images: np.ndarray, *, mode: str = "auto", fps: float = 25.0, face_index: FaceIndex = 0,
                 face_model: str | os.PathLike | None = None, face_box: Box | None = None,
                 what: str | None = None, runtime: StandaloneRuntime | None = None) -> FYEFaces:
    """A batch [B, H, W, 3] as video frames (VIDEO mode) or independent stills (IMAGE mode).

    mode "auto": one image is a still, more are video frames. ``what`` names the batch in messages
    (default "the portrait" for a still, "the driving video" for video frames).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if len(images) == 0:
        raise InvalidRequestError(f"{what or 'the images'}: zero images")
    if mode not in EXTRACT_MODES:
        raise InvalidRequestError(f"mode must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "image" or (mode == "auto" and len(images) == 1):
        return extract_stills(images, face_index=face_index, face_model=face_model, face_box=face_box,
                              what=what or ("the portrait" if len(images) == 1 else "the images"), runtime=runtime)
    return extract_video(images, fps, face_index=face_index, face_model=face_model, face_box=face_box,
                         what=what or "the driving video", runtime=runtime)


def extract_controls(images: np.ndarray, *, mode: str = "auto", fps: float = 25.0, face_index: FaceIndex = 0,
                     face_model: str | os.PathLike | None = None, face_box: Box | None = None,
                     include_contour: bool = False, outer_lips: bool = False, what: str | None = None,
                     runtime: StandaloneRuntime | None = None) -> tuple[FYEFaces, np.ndarray, np.ndarray]:
    """(faces, control renders uint8 [B, H, W, 3], face mask bool [B, H, W]) of an image batch.

    The mask is the union of the expression mask and the facial mask (paper 4.2); with several faces
    the renders and masks show them all.
    """
    faces = extract_auto(images, mode=mode, fps=fps, face_index=face_index, face_model=face_model,
                         face_box=face_box, what=what, runtime=runtime)
    return (faces, *faces_controls(faces, include_contour=include_contour, outer_lips=outer_lips, runtime=runtime))


def faces_controls(faces: FYEFaces, *, include_contour: bool = False, outer_lips: bool = False,
                   runtime: StandaloneRuntime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(control renders uint8 [B, H, W, 3], face mask bool [B, H, W]) of every face of ``faces``, drawn together."""
    controls, mask = None, None
    for track in faces_of(faces):
        drawn = render_controls(track, include_contour=include_contour, outer_lips=outer_lips, runtime=runtime)
        expression, facial = face_masks(track, runtime=runtime)
        controls = drawn if controls is None else np.maximum(controls, drawn)
        mask = (expression | facial) if mask is None else (mask | expression | facial)
    return controls, mask


def _store(track: FaceTrack, i: int, face: Face) -> None:
    track.points[i] = face.points
    track.blendshapes[i] = face.blendshapes
    track.valid[i] = True
    if face.pose is not None:
        track.pose[i] = face.pose
    else:
        track.pose[i] = np.nan  # filled by _finish_geometry with the fitted pose


GEOMETRY_CHUNK = 256
"""Frames fitted at once: batched for speed, bounded so that the float64 temporaries do not grow with the video."""


def _finish_geometry(track: FaceTrack, model: geometry.CanonicalModel) -> None:
    """Canonical vertices of the valid frames, relative to MediaPipe's pose (batched over chunks of frames)."""
    valid = np.flatnonzero(track.valid)
    for s in range(0, len(valid), GEOMETRY_CHUNK):
        idx = valid[s:s + GEOMETRY_CHUNK]
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
