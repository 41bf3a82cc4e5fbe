"""Face crops and paste-back: a square crop around the face at the model size, and the way back.

MediaPipe's face detector (inside the landmarker) looks at a 128-pixel copy of the whole image and
misses faces smaller than about a fifth of the frame. :func:`find_faces` therefore tries the whole
image first, then overlapping square windows of halving size (the detector sees each window
enlarged), and maps the landmarks back to the full image.

A crop is described by :class:`CropInfo`: the source size, the square box in source pixels (it may
reach past the borders, which are then padded) and the output size. :func:`paste_back` puts frames
of the crop size back into the source frames through a feathered face mask; where the mask is zero
the source pixels are returned untouched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from . import geometry
from .constants import BATCH_BOXES, PAD_MODES
from .errors import InvalidRequestError, NoFaceDetectedError
from .landmarks import Face, FaceLandmarker, FaceTrack, as_rgb_uint8, extract_auto, resolve_face_model, topology
from .provenance import image_signature
from .runtime import resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)

MARGIN_RANGE = (1.0, 4.0)
_BORDER = {"edge": "BORDER_REPLICATE", "reflect": "BORDER_REFLECT_101", "black": "BORDER_CONSTANT"}
SEARCH_MIN_WINDOW = 128
"""Smallest search window in pixels: faces of about 30 pixels and more are found."""
SEARCH_FRAMES = 16
"""Frames of a video batch searched for the face when no face track is given."""


@dataclass(frozen=True)
class CropInfo:
    """Where a square crop came from: source size, box in source pixels, output size, padding."""

    source_size: tuple[int, int]              # (width, height) of the source frames
    box: tuple[int, int, int]                 # (x0, y0, side): the square in source pixels
    output_size: int                          # side of the cropped frames in pixels
    pad_mode: str = "edge"                    # how the part of the box outside the source was filled

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels of the box that lie outside the source."""
        (w, h), (x0, y0, side) = self.source_size, self.box
        return max(0, -x0), max(0, -y0), max(0, x0 + side - w), max(0, y0 + side - h)

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.output_size / self.box[2]

    def inside(self) -> tuple[slice, slice, slice, slice]:
        """(source rows, source columns, box rows, box columns) of the part of the box inside the source."""
        (w, h), (x0, y0, side) = self.source_size, self.box
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if sx1 <= sx0 or sy1 <= sy0:
            raise InvalidRequestError(f"crop box {self.box} does not overlap the {w}x{h} source")
        return (slice(sy0, sy1), slice(sx0, sx1), slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))


# -- finding small faces in large images -----------------------------------------------------

def _windows(width: int, height: int, side: int) -> list[tuple[int, int]]:
    # Top-left corners of square windows with half-window overlap covering the frame.
    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        step = side // 2
        out = list(range(0, length - side, step))
        return out + [length - side]

    return [(x, y) for y in starts(height) for x in starts(width)]


def _face_in_window(face: Face, x0: int, y0: int, side: int, size: tuple[int, int]) -> Face:
    # Window-normalised landmarks -> full-image-normalised; z scales like x (MediaPipe's convention).
    w, h = size
    points = face.points.copy()
    points[:, 0] = (points[:, 0] * side + x0) / w
    points[:, 1] = (points[:, 1] * side + y0) / h
    points[:, 2] = points[:, 2] * side / w
    return Face(points, None, face.blendshapes)  # the pose belongs to the window's camera


def _box_of(face: Face, size: tuple[int, int]) -> np.ndarray:
    xy = face.points[:, :2] * np.asarray(size, dtype=np.float64)
    return np.concatenate([xy.min(0), xy.max(0)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2])) - inter
    return inter / union if union > 0 else 0.0


def _dedupe(faces: list[Face], size: tuple[int, int]) -> list[Face]:
    # Overlapping windows find the same face several times: keep the largest of each cluster.
    faces = sorted(faces, key=lambda f: -f.area(size))
    kept: list[Face] = []
    for face in faces:
        box = _box_of(face, size)
        if all(_iou(box, _box_of(k, size)) < 0.3 for k in kept):
            kept.append(face)
    return kept


def find_faces(image: np.ndarray, landmarker: FaceLandmarker, *, hint: np.ndarray | None = None,
               min_window: int = SEARCH_MIN_WINDOW, runtime: StandaloneRuntime | None = None) -> list[Face]:
    """Faces in an image of any size, largest first, landmarks normalised to the whole image.

    Tries the whole image, then a window around ``hint`` (a box x0, y0, x1, y1 in pixels, e.g. the
    face of the previous frame), then overlapping windows of halving size down to ``min_window``.
    ``landmarker`` must be in IMAGE mode. Poses are left out (they belong to each window's camera).
    """
    import cv2

    rt = resolve(runtime)
    image = as_rgb_uint8(image)
    h, w = image.shape[:2]
    faces = landmarker.detect(image)
    if faces:
        return faces

    def look(x0: int, y0: int, side: int) -> list[Face]:
        window = image[y0:y0 + side, x0:x0 + side]
        if window.shape[0] != window.shape[1]:  # a window at a border of a frame smaller than it
            window = cv2.copyMakeBorder(window, 0, side - window.shape[0], 0, side - window.shape[1],
                                        cv2.BORDER_CONSTANT)
        if side > 256:  # the detector sees 128 pixels; the search only needs the face's box
            window = cv2.resize(window, (256, 256), interpolation=cv2.INTER_AREA)
        return [_face_in_window(f, x0, y0, side, (w, h)) for f in landmarker.detect(np.ascontiguousarray(window))]

    if hint is not None:
        (hx0, hy0, hx1, hy1) = np.asarray(hint, dtype=np.float64)
        side = int(min(max(w, h), max(min_window, 3.0 * max(hx1 - hx0, hy1 - hy0))))
        cx, cy = (hx0 + hx1) / 2, (hy0 + hy1) / 2
        x0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
        y0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
        faces = look(x0, y0, side)
        if faces:
            return _dedupe(faces, (w, h))
    side = min(w, h) // 2 if max(w, h) <= 2 * min(w, h) else min(w, h)
    while side >= min_window:
        found: list[Face] = []
        for x0, y0 in _windows(w, h, side):
            rt.check_interrupt()
            found += look(x0, y0, side)
        if found:
            log.debug("found %d face(s) in %d-pixel windows of a %dx%d image", len(found), side, w, h)
            return _dedupe(found, (w, h))
        side //= 2
    return []


# -- the crop box ----------------------------------------------------------------------------

def face_boxes(track: FaceTrack) -> np.ndarray:
    """Bounding boxes [N, 4] (x0, y0, x1, y1 in pixels) of each frame's face contour; NaN where invalid."""
    px = track.pixels()[:, topology().face_oval].astype(np.float64)
    boxes = np.concatenate([px.min(axis=1), px.max(axis=1)], axis=1)
    boxes[~track.valid] = np.nan
    return boxes


def square_box(boxes: np.ndarray, margin: float = 1.8, batch_box: str = "union") -> tuple[int, int, int]:
    """One square (x0, y0, side) in pixels around face boxes [N, 4] (NaN rows ignored), ``margin`` × the face.

    "union" encloses every frame's face (the face never leaves the crop); "median" follows the
    median face centre and size (tighter, for a head that mostly stays put).
    """
    if not MARGIN_RANGE[0] <= margin <= MARGIN_RANGE[1]:
        raise InvalidRequestError(f"margin must be within {MARGIN_RANGE[0]}..{MARGIN_RANGE[1]} times the "
                                  f"face, got {margin}")
    if batch_box not in BATCH_BOXES:
        raise InvalidRequestError(f"batch_box must be one of {BATCH_BOXES}, got {batch_box!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    if not len(boxes):
        raise NoFaceDetectedError("any frame", "A crop needs at least one frame with a face.")
    if batch_box == "union":
        x0, y0 = boxes[:, :2].min(axis=0)
        x1, y1 = boxes[:, 2:].max(axis=0)
    else:
        centre = np.median((boxes[:, :2] + boxes[:, 2:]) / 2, axis=0)
        half = np.median(boxes[:, 2:] - boxes[:, :2], axis=0) / 2
        (x0, y0), (x1, y1) = centre - half, centre + half
    side = max(2, int(round(margin * max(x1 - x0, y1 - y0))))
    return int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2)), side


def _interp(shrink: bool) -> int:
    # Enlarging uses Lanczos (sharp, and paste-back's Lanczos reduction undoes it to well under a
    # grey level); reducing a crop averages areas so that it does not alias.
    import cv2

    return cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4


def _as_float_frames(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise InvalidRequestError(f"{what} must be images [B, H, W, 3], got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def crop_images(images: np.ndarray, info: CropInfo) -> np.ndarray:
    """The crop [B, S, S, 3] float32 of source frames [B, H, W, 3] (uint8 or float 0..1).

    An enlarged crop keeps the Lanczos filter's small overshoot past 0..1, so that paste-back of an
    unmodified crop gives the source back within one grey level.
    """
    import cv2

    images = _as_float_frames(images, "the images")
    h, w = images.shape[1:3]
    if (w, h) != info.source_size:
        raise InvalidRequestError(f"the images are {w}x{h}, the crop was made for {info.source_size[0]}x"
                                  f"{info.source_size[1]} frames")
    rows, cols, _, _ = info.inside()
    left, top, right, bottom = info.padding
    side, size = info.box[2], info.output_size
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, frame in enumerate(images):
        region = np.ascontiguousarray(frame[rows, cols])
        if left or top or right or bottom:
            region = cv2.copyMakeBorder(region, top, bottom, left, right, getattr(cv2, _BORDER[info.pad_mode]),
                                        value=(0.0, 0.0, 0.0))
        if side != size:
            region = cv2.resize(region, (size, size), interpolation=_interp(size < side))
        out[i] = region
    # Not clipped: the filter's overshoot (a few hundredths) is what lets paste-back restore the source.
    return out


def crop_track(track: FaceTrack, info: CropInfo, face_model: str | os.PathLike | None = None,
               runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """The face track seen through the crop: points moved into it, canonical vertices and pose refitted.

    The crop has its own virtual camera (MediaPipe's 63° field of view spans the crop), so the
    canonical vertices and poses are recomputed from the moved points with the canonical model.
    """
    if track.size != info.source_size:
        raise InvalidRequestError(f"the faces were found in {track.size[0]}x{track.size[1]} frames, the crop "
                                  f"is of {info.source_size[0]}x{info.source_size[1]} frames")
    (w, h), (x0, y0, side) = info.source_size, info.box
    points = track.points.astype(np.float64).copy()
    points[..., 0] = (points[..., 0] * w - x0) / side
    points[..., 1] = (points[..., 1] * h - y0) / side
    points[..., 2] = points[..., 2] * w / side
    out = replace(track, points=points, size=(info.output_size, info.output_size),
                  canonical=track.canonical.copy(), pose=track.pose.copy())
    idx = np.flatnonzero(track.valid)
    if len(idx):
        model = geometry.load_canonical_model(resolve_face_model(face_model, runtime))
        fit = geometry.screen_to_metric(points[idx], out.size, model)
        out.pose[idx] = fit.pose
        out.canonical[idx] = geometry.apply_pose(geometry.invert_pose(fit.pose), fit.metric)
    return out


def _search_boxes(images: np.ndarray, face_index: int, face_model, runtime) -> np.ndarray:
    # Face boxes [K, 4] of up to SEARCH_FRAMES evenly spaced frames (NaN where none was found).
    rt = resolve(runtime)
    picks = np.unique(np.linspace(0, len(images) - 1, min(len(images), SEARCH_FRAMES)).round().astype(int))
    boxes = np.full((len(picks), 4), np.nan)
    hint = None
    with FaceLandmarker(face_model, video=False, num_faces=max(4, face_index + 1), runtime=rt) as lm, \
            rt.progress(len(picks), "find the face") as bar:
        for row, i in enumerate(picks):
            frame = as_rgb_uint8(images[i])
            size = (frame.shape[1], frame.shape[0])
            faces = find_faces(frame, lm, hint=hint, runtime=rt)
            if face_index < len(faces):
                px = faces[face_index].points[topology().face_oval, :2] * np.asarray(size, dtype=np.float64)
                boxes[row] = hint = np.concatenate([px.min(0), px.max(0)])
            bar.update()
    return boxes


def crop_face(images: np.ndarray, faces: FaceTrack | None = None, *, margin: float = 1.8, size: int = 512,
              batch_box: str = "union", pad_mode: str = "edge", face_index: int = 0,
              face_model: str | os.PathLike | None = None, fps: float = 25.0,
              runtime: StandaloneRuntime | None = None) -> tuple[np.ndarray, CropInfo, FaceTrack]:
    """(crop [B, S, S, 3] float32, crop info, face track in the crop) of a portrait or a video batch.

    With ``faces`` (a track of these frames) the box comes from its valid frames and the track is
    moved into the crop. Without, the face is searched for (small faces in large frames included)
    and the landmarks are extracted from the crop itself, like FYE_LandmarkExtractor would.
    One box serves the whole batch, so the crop does not jitter.
    """
    images = _as_float_frames(images, "the image")
    if size % 8 or not 64 <= size <= 4096:
        raise InvalidRequestError(f"crop size must be a multiple of 8 within 64..4096, got {size}")
    if pad_mode not in PAD_MODES:
        raise InvalidRequestError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    h, w = images.shape[1:3]
    if faces is not None:
        if faces.size != (w, h):
            raise InvalidRequestError(f"the faces were found in {faces.size[0]}x{faces.size[1]} frames but the "
                                      f"image is {w}x{h}: connect the faces of this image")
        if len(faces) not in (1, len(images)):
            raise InvalidRequestError(f"the face track has {len(faces)} frames, the image batch {len(images)}: "
                                      "they must match (or the track has one frame)")
        if not faces.valid.any():
            raise NoFaceDetectedError("the face track given to the crop")
        boxes = face_boxes(faces)
    else:
        boxes = _search_boxes(images, face_index, face_model, runtime)
        if not np.isfinite(boxes).all(axis=1).any():
            raise NoFaceDetectedError(
                "the image" if len(images) == 1 else f"any of the searched frames of the {len(images)}-frame batch",
                f"The search looked at the whole image and at windows down to {SEARCH_MIN_WINDOW} pixels: faces "
                "smaller than about 30 pixels, turned far away or covered are not found. Use a larger or clearer "
                "face, or connect faces found another way.")
    info = CropInfo((w, h), square_box(boxes, margin, batch_box), int(size), pad_mode)
    crops = crop_images(images, info)
    if faces is not None:
        track = crop_track(faces, info, face_model, runtime)
    else:
        track = extract_auto(crops, fps=fps, face_index=0, face_model=face_model, what="the face crop",
                             runtime=runtime)
    # The track belongs to the crop now: a still's reference portrait is the crop itself.
    track = replace(track, source=image_signature(crops[0]) if len(crops) == 1 else None)
    log.debug("cropped %d frame(s) of %dx%d at box %s to %d px", len(images), w, h, info.box, size)
    return crops, info, track


# -- paste-back ------------------------------------------------------------------------------

def _border_ramp(size: int, width: float) -> np.ndarray:
    # 0 at the edge of the square, 1 from ``width`` pixels inwards (smoothstep), [size, size].
    d = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5)
    t = np.clip(d / max(width, 1e-6), 0.0, 1.0)
    ramp = t * t * (3 - 2 * t)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def paste_mask(points: np.ndarray | None, size: int, expand: float = 0.1, feather: float = 0.05) -> np.ndarray:
    """Blend weights float32 [S, S] in 0..1: the face-oval polygon of ``points`` grown and feathered.

    ``expand`` and ``feather`` are shares of the face width (of the crop side without ``points``,
    which gives a square with feathered edges). The weights fall to zero at the crop's border.
    """
    import cv2

    from .landmarks import face_width, facial_mask

    if points is None:
        return _border_ramp(size, max(1.0, feather * size))
    width = max(face_width(points, (size, size)), 1.0)
    mask = facial_mask(points, (size, size)).astype(np.uint8)
    grow = int(round(expand * width))
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        mask = cv2.dilate(mask, kernel)
    alpha = mask.astype(np.float32)
    sigma = feather * width
    if sigma > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    alpha *= _border_ramp(size, max(1.0, 2 * sigma))
    alpha[alpha < 1e-4] = 0.0  # the blur's far tails: keep the source exact there
    return alpha


def paste_back(frames: np.ndarray, original: np.ndarray, info: CropInfo, faces: FaceTrack | None = None, *,
               expand: float = 0.1, feather: float = 0.05,
               runtime: StandaloneRuntime | None = None) -> np.ndarray:
    """Frames of the crop [N, S, S, 3] composited into the source frames: float32 [N, H, W, 3].

    ``original`` is one source image (used for every frame) or N source frames. ``faces`` (one
    frame or N, of a square frame such as the crop) shape the blend mask; without them a square
    with feathered edges is used.
    """
    import cv2

    rt = resolve(runtime)
    frames = _as_float_frames(frames, "the generated frames")
    original = _as_float_frames(original, "the original image")
    n, fh, fw = frames.shape[:3]
    sw, sh = info.source_size
    if fh != fw:
        raise InvalidRequestError(f"the generated frames are {fw}x{fh}; paste-back needs square frames like "
                                  f"the {info.output_size}x{info.output_size} crop")
    if original.shape[1:3] != (sh, sw):
        raise InvalidRequestError(f"the original image is {original.shape[2]}x{original.shape[1]}, but the crop "
                                  f"was taken from a {sw}x{sh} image: connect the image that was cropped")
    if len(original) not in (1, n):
        raise InvalidRequestError(f"{n} generated frames but {len(original)} original frames: give one "
                                  f"original image or exactly {n} frames")
    if faces is not None:
        if len(faces) not in (1, n):
            raise InvalidRequestError(f"{n} generated frames but a face track of {len(faces)} frames: give "
                                      f"the faces of the generated frames (one per frame) or one frame")
        if faces.size[0] != faces.size[1]:
            raise InvalidRequestError(f"the faces belong to a {faces.size[0]}x{faces.size[1]} frame; paste-back "
                                      "needs the faces of the square crop (the aligned or edited faces)")
    rows, cols, brows, bcols = info.inside()
    side = info.box[2]
    if len(original) == 1:
        out = np.repeat(original, n, axis=0)
    else:
        out = original.copy()
    alpha_box = None
    with rt.progress(n, "paste back") as bar:
        for i in range(n):
            rt.check_interrupt()
            if alpha_box is None or (faces is not None and len(faces) > 1):
                points = None if faces is None else faces.points[min(i, len(faces) - 1)]
                alpha = paste_mask(points, fw, expand, feather)
                if fw != side:
                    alpha = cv2.resize(alpha, (side, side), interpolation=_interp(side < fw))
                alpha_box = np.clip(alpha[brows, bcols], 0.0, 1.0)[..., None]
            content = frames[i]
            if fw != side:
                content = cv2.resize(content, (side, side), interpolation=cv2.INTER_LANCZOS4)
            target = out[i, rows, cols]
            target += alpha_box * (content[brows, bcols] - target)
            np.clip(target, 0.0, 1.0, out=target)  # only the pasted region changes
            bar.update()
    return out
