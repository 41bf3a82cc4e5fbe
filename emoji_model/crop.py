"""Face crops and paste-back: a square crop around the face at the model size, and the way back.

Without a face track the face is searched for (:mod:`emoji_model.facesearch`: small faces in large
images, every candidate checked to be a face).

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
from .constants import FACE_ALL
from .facesearch import SEARCH_MIN_WINDOW, find_faces
from .landmarks import (
    FaceGroup,
    FaceLandmarker,
    FaceTrack,
    FYEFaces,
    as_rgb_uint8,
    extract_auto,
    faces_of,
    resolve_face_model,
    topology,
)
from .landmarks.extract import MAX_FACES, associate, parse_face_index
from .provenance import image_signature
from .runtime import resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)

MARGIN_RANGE = (1.0, 4.0)
_BORDER = {"edge": "BORDER_REPLICATE", "reflect": "BORDER_REFLECT_101", "black": "BORDER_CONSTANT"}
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


@dataclass(frozen=True)
class CropGroup:
    """The crops of several faces of the same source frames (face_index "all"), one CropInfo per face."""

    infos: tuple[CropInfo, ...]

    def __post_init__(self) -> None:
        if not self.infos or len({i.source_size for i in self.infos}) != 1:
            raise InvalidRequestError("a crop group needs crops of one source size")

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the source frames."""
        return self.infos[0].source_size


FYECrop = CropInfo | CropGroup
"""What travels as FYE_CROP."""


def crops_of(value: FYECrop) -> list[CropInfo]:
    """The CropInfo of each face of a FYE_CROP value."""
    if isinstance(value, CropGroup):
        return list(value.infos)
    if isinstance(value, CropInfo):
        return [value]
    raise InvalidRequestError(f"expected a face crop (FYE_CROP from Crop Face), got {type(value).__name__}")


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


def _search_boxes(images: np.ndarray, face_index: int | str, face_model, runtime) -> np.ndarray:
    # Face-contour boxes [faces, K, 4] of up to SEARCH_FRAMES evenly spaced frames (NaN where a face
    # was not found); one face unless face_index is "all", whose faces are those of the first frame
    # with faces, followed to the nearest box in the others.
    rt = resolve(runtime)
    picks = np.unique(np.linspace(0, len(images) - 1, min(len(images), SEARCH_FRAMES)).round().astype(int))
    every = face_index == FACE_ALL
    rows: list[list[np.ndarray | None]] = []
    last: list[np.ndarray | None] = []
    hint = None
    with FaceLandmarker(face_model, video=False, num_faces=MAX_FACES if every else max(4, int(face_index) + 1),
                        runtime=rt) as lm, rt.progress(len(picks), "find the face") as bar:
        for i in picks:
            frame = as_rgb_uint8(images[i])
            size = (frame.shape[1], frame.shape[0])
            faces = find_faces(frame, lm, hint=None if every else hint, every=every, runtime=rt)
            if every:
                chosen = list(faces) if not last else associate(last, faces, size)
            else:
                chosen = [faces[face_index] if face_index < len(faces) else None]
            row = []
            for face in chosen:
                px = None if face is None else \
                    face.points[topology().face_oval, :2] * np.asarray(size, dtype=np.float64)
                row.append(None if px is None else np.concatenate([px.min(0), px.max(0)]))
            if every and not last:
                last = [r for r in row]
            elif every:
                last = [r if r is not None else prev for r, prev in zip(row, last)]
            else:
                hint = row[0] if row[0] is not None else hint
            rows.append(row)
            bar.update()
    count = max((len(r) for r in rows), default=0)
    boxes = np.full((max(count, 1), len(picks), 4), np.nan)
    for k, row in enumerate(rows):
        for j, box in enumerate(row):
            if box is not None:
                boxes[j, k] = box
    return boxes


def _check_faces(faces: FaceTrack, images: np.ndarray) -> None:
    h, w = images.shape[1:3]
    if faces.size != (w, h):
        raise InvalidRequestError(f"the faces were found in {faces.size[0]}x{faces.size[1]} frames but the "
                                  f"image is {w}x{h}: connect the faces of this image")
    if len(faces) not in (1, len(images)):
        raise InvalidRequestError(f"the face track has {len(faces)} frames, the image batch {len(images)}: "
                                  "they must match (or the track has one frame)")
    if not faces.valid.any():
        raise NoFaceDetectedError("the face track given to the crop")


def crop_face(images: np.ndarray, faces: FYEFaces | None = None, *, margin: float = 1.8, size: int = 512,
              batch_box: str = "union", pad_mode: str = "edge", face_index: int | str = 0,
              face_box: tuple[float, float, float, float] | None = None, face_model: str | os.PathLike | None = None,
              fps: float = 25.0, runtime: StandaloneRuntime | None = None) -> tuple[np.ndarray, FYECrop, FYEFaces]:
    """(crop [B, S, S, 3] float32, crop info, face track in the crop) of a portrait or a video batch.

    With ``faces`` (a track of these frames) the box comes from its valid frames and the track is
    moved into the crop. Without, the face is searched for (small faces in large frames included)
    and the landmarks are extracted from the crop itself, like FYE_LandmarkExtractor would; a
    ``face_box`` (x, y, w, h pixels) gives the face's place instead (a canonical face is fitted
    there when MediaPipe finds none). One box serves the whole batch, so the crop does not jitter.

    Several faces (``face_index`` "all", or a FaceGroup as ``faces``) give one crop per face: the
    crops face after face [K·B, S, S, 3], a :class:`CropGroup` and a FaceGroup.
    """
    from .landmarks.fit import check_box

    images = _as_float_frames(images, "the image")
    if size % 8 or not 64 <= size <= 4096:
        raise InvalidRequestError(f"crop size must be a multiple of 8 within 64..4096, got {size}")
    if pad_mode not in PAD_MODES:
        raise InvalidRequestError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    h, w = images.shape[1:3]
    face_index = parse_face_index(face_index)
    given = None if faces is None else faces_of(faces)
    if given is not None:
        for track in given:
            _check_faces(track, images)
        boxes = np.stack([face_boxes(track) for track in given])                 # [faces, F, 4]
    elif face_box is not None:
        x, y, bw, bh = check_box(face_box, (w, h))
        boxes = np.array([[[x, y, x + bw, y + bh]]])
    else:
        boxes = _search_boxes(images, face_index, face_model, runtime)
        if not np.isfinite(boxes).all(axis=-1).any():
            raise NoFaceDetectedError(
                "the image" if len(images) == 1 else f"any of the searched frames of the {len(images)}-frame batch",
                f"The search looked at the whole image and at windows down to {SEARCH_MIN_WINDOW} pixels: faces "
                "smaller than about 30 pixels, turned far away or covered are not found, and what is not a face "
                "is refused. Use a larger or clearer face, connect faces found another way, or give the face's "
                "box (face_box / face_mask on the node, --face-box on the command line).",
                subject="portrait" if len(images) == 1 else "driving video")
    crops, infos, tracks = [], [], []
    for j, face_boxes_j in enumerate(boxes):
        info = CropInfo((w, h), square_box(face_boxes_j, margin, batch_box), int(size), pad_mode)
        crop = crop_images(images, info)
        if given is not None:
            track = crop_track(given[j], info, face_model, runtime)
        else:
            # The face to take in the crop is the one at the searched (or given) place.
            found = face_boxes_j[np.isfinite(face_boxes_j).all(axis=1)]
            lo, hi = found[:, :2].min(axis=0), found[:, 2:].max(axis=0)
            x0, y0, _ = info.box
            hint = (float((lo[0] - x0) * info.scale), float((lo[1] - y0) * info.scale),
                    float((hi[0] - lo[0]) * info.scale), float((hi[1] - lo[1]) * info.scale))
            track = extract_auto(crop, fps=fps, face_box=hint, face_model=face_model,
                                 what="the face crop" if len(boxes) == 1 else f"the crop of face {j + 1}",
                                 runtime=runtime)
        # The track belongs to the crop now: a still's reference portrait is the crop itself.
        track = replace(track, source=image_signature(crop[0]) if len(crop) == 1 else None)
        crops.append(crop)
        infos.append(info)
        tracks.append(track)
        log.debug("cropped %d frame(s) of %dx%d at box %s to %d px", len(images), w, h, info.box, size)
    if len(infos) == 1:
        return crops[0], infos[0], tracks[0]
    return np.concatenate(crops), CropGroup(tuple(infos)), FaceGroup(tracks)


# -- paste-back ------------------------------------------------------------------------------

def _border_ramp(size: int, width: float) -> np.ndarray:
    # 0 at the edge of the square, 1 from ``width`` pixels inwards (smoothstep), [size, size].
    d = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5)
    t = np.clip(d / max(width, 1e-6), 0.0, 1.0)
    ramp = t * t * (3 - 2 * t)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def _face_hull(points: np.ndarray, size: int) -> np.ndarray:
    # uint8 [S, S]: the convex hull of the head contour (the released head polygon, no forehead) and of
    # the eyes, brows, lips and nose. A face in profile folds its contour over itself, so the polygon
    # alone would leave its middle out; for a frontal face the hull is the polygon.
    import cv2

    from .landmarks import HEAD_OVAL

    inner = np.concatenate([topology().expression_points, NOSE_POINTS])
    xy = np.asarray(points)[np.concatenate([list(HEAD_OVAL), inner]), :2] * size
    hull = cv2.convexHull(np.round(xy).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask


NOSE_POINTS = np.array([1, 2, 4, 5, 6, 19, 94, 168, 195, 197])
"""Nose tip and bridge points, inside the paste mask even where the nose stands out of the contour."""


def paste_mask(points: np.ndarray | None, size: int, expand: float = 0.1, feather: float = 0.05) -> np.ndarray:
    """Blend weights float32 [S, S] in 0..1: the face of ``points`` (contour and features) grown and feathered.

    ``expand`` and ``feather`` are shares of the face width (of the crop side without ``points``,
    which gives a square with feathered edges). The weights fall to zero at the crop's border.
    """
    import cv2

    from .landmarks import face_width

    if points is None:
        return _border_ramp(size, max(1.0, feather * size))
    width = max(face_width(points, (size, size)), 1.0)
    mask = _face_hull(points, size)
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


def paste_back(frames: np.ndarray, original: np.ndarray, crop: FYECrop, faces: FYEFaces | None = None, *,
               expand: float = 0.1, feather: float = 0.05,
               runtime: StandaloneRuntime | None = None) -> np.ndarray:
    """Frames of the crop [N, S, S, 3] composited into the source frames: float32 [N, H, W, 3].

    ``original`` is one source image (used for every frame) or N source frames. ``faces`` (one
    frame or N, of a square frame such as the crop) shape the blend mask; without them a square
    with feathered edges is used. With the crops of K faces (a CropGroup) ``frames`` holds each
    face's N frames after the other's [K·N, S, S, 3], ``faces`` a FaceGroup of K tracks, and every
    face is composited into the same output frames.
    """
    rt = resolve(runtime)
    infos = crops_of(crop)
    frames = _as_float_frames(frames, "the generated frames")
    original = _as_float_frames(original, "the original image")
    k = len(infos)
    if len(frames) % k:
        raise InvalidRequestError(f"{len(frames)} generated frames for the crops of {k} faces: the frames of "
                                  f"each face come one face after the other, {k} x the frames of one face")
    n, fh, fw = len(frames) // k, frames.shape[1], frames.shape[2]
    sw, sh = infos[0].source_size
    if fh != fw:
        raise InvalidRequestError(f"the generated frames are {fw}x{fh}; paste-back needs square frames like "
                                  f"the {infos[0].output_size}x{infos[0].output_size} crop")
    if original.shape[1:3] != (sh, sw):
        raise InvalidRequestError(f"the original image is {original.shape[2]}x{original.shape[1]}, but the crop "
                                  f"was taken from a {sw}x{sh} image: connect the image that was cropped")
    if len(original) not in (1, n):
        raise InvalidRequestError(f"{n} generated frames but {len(original)} original frames: give one "
                                  f"original image or exactly {n} frames")
    tracks: list[FaceTrack | None] = [None] * k
    if faces is not None:
        given = faces_of(faces)
        if len(given) != k:
            raise InvalidRequestError(f"the crops are of {k} face(s) but the faces connected hold {len(given)}: "
                                      "connect the faces that were animated from these crops")
        for track in given:
            if len(track) not in (1, n):
                raise InvalidRequestError(f"{n} generated frames but a face track of {len(track)} frames: give "
                                          f"the faces of the generated frames (one per frame) or one frame")
            if track.size[0] != track.size[1]:
                raise InvalidRequestError(f"the faces belong to a {track.size[0]}x{track.size[1]} frame; paste-back "
                                          "needs the faces of the square crop (the aligned or edited faces)")
        tracks = list(given)
    out = np.repeat(original, n, axis=0) if len(original) == 1 else original.copy()
    with rt.progress(k * n, "paste back") as bar:
        for j, info in enumerate(infos):
            _paste_into(out, frames[j * n:(j + 1) * n], info, tracks[j], expand, feather, rt, bar)
    return out


def _paste_into(out: np.ndarray, frames: np.ndarray, info: CropInfo, faces: FaceTrack | None, expand: float,
                feather: float, rt, bar) -> None:
    # One face's frames [N, S, S, 3] blended into ``out`` [N, H, W, 3] in place.
    import cv2

    fw = frames.shape[2]
    rows, cols, brows, bcols = info.inside()
    side = info.box[2]
    alpha_box = None
    for i in range(len(frames)):
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
