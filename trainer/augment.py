"""Paired training augmentations: one draw per sample, applied alike to its reference and target frames.

A model trained on one person's video learns to paint that person whatever the reference. These
augmentations change what the reference and the target share — colours, style, background, mirror
image, framing — so that the only way to predict the target is to take its appearance from the
reference and its pose and expression from the landmarks:

* **appearance**: one look per sample — colour (brightness, contrast, saturation, hue), greyscale, a
  false-colour tint, an OpenCV stylisation filter (``stylization``, ``edgePreservingFilter``,
  ``detailEnhance``, opencv-contrib's ``xphoto.oilPainting``), a quantised cartoon with dark edges, or
  a colour pencil sketch — often followed by a colour change;
* **background**: everything outside the head (the released head oval, grown upwards for the hair and
  feathered) replaced by a crop of one of scikit-image's sample images, the same crop for every frame;
* **flip**: the mirror image, with the landmarks mirrored and their left/right labels swapped (the
  permutation comes from the symmetric canonical face of MediaPipe's bundle);
* **warp**: a random similarity transform of the reference and a smooth one over the target frames (a
  synthetic head motion); stills always get one, since their reference and target are the same image.

Landmarks are transformed with the pixels; the caller re-renders the control images and masks from them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoji_model.errors import InvalidRequestError

APPEARANCE_LOOKS = ("colour", "grey", "tint", "stylise", "cartoon", "sketch")
# scikit-image's sample images used as backgrounds (the astronaut and the cameraman are kept out of
# training: they are evaluation portraits).
BACKGROUND_IMAGES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                     "clock", "brick", "grass", "gravel", "coins", "moon", "page", "horse")


@dataclass(frozen=True)
class AugmentOptions:
    """Probabilities and ranges of the paired augmentations (all off by default)."""

    appearance: float = 0.0   # P(a new look for the sample)
    background: float = 0.0   # P(a new background outside the head)
    flip: float = 0.0         # P(the mirror image)
    warp: float = 0.0         # P(a synthetic head motion) for video clips; stills always get one
    rotation: float = 12.0    # largest rotation of a warp, degrees
    scale: float = 0.12       # largest relative zoom of a warp
    shift: float = 0.08       # largest shift of a warp, as a share of the side

    def validate(self) -> None:
        """Raise InvalidRequestError for probabilities outside 0..1 or negative ranges."""
        bad = [k for k in ("appearance", "background", "flip", "warp") if not 0.0 <= getattr(self, k) <= 1.0]
        bad += [k for k in ("rotation", "scale", "shift") if getattr(self, k) < 0]
        if bad:
            raise InvalidRequestError(f"augmentation settings out of range: {', '.join(bad)} (probabilities "
                                      "are 0..1, ranges non-negative)")


@dataclass
class Plan:
    """Every random choice for one sample, drawn before any pixel is touched."""

    looks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    background: tuple[int, float, float, float] | None = None  # image, crop x, crop y, crop side (shares)
    flip: bool = False
    ref_warp: tuple[float, float, float, float] | None = None  # degrees, zoom, dx, dy (shares)
    warp_from: tuple[float, float, float, float] | None = None
    warp_to: tuple[float, float, float, float] | None = None


def draw_plan(rng: np.random.Generator, opts: AugmentOptions, still: bool = False) -> Plan:
    """The random choices of one sample (always the same number of draws, whatever is chosen)."""
    u = rng.random(5)
    plan = Plan()
    look = APPEARANCE_LOOKS[int(rng.integers(len(APPEARANCE_LOOKS)))]
    params, colour = rng.random(6), rng.random(6)
    if u[0] < opts.appearance:
        plan.looks.append((look, _look_params(look, params)))
        if look != "colour" and u[1] < 0.5:
            plan.looks.append(("colour", _look_params("colour", colour)))
    bg = (int(rng.integers(len(BACKGROUND_IMAGES))), *rng.random(3))
    if u[2] < opts.background:
        plan.background = (bg[0], bg[1], bg[2], 0.3 + 0.7 * bg[3])
    plan.flip = bool(u[3] < opts.flip)
    warps = [_warp_params(rng.random(4), opts) for _ in range(3)]
    if still or u[4] < opts.warp:
        plan.ref_warp, plan.warp_from, plan.warp_to = warps
    return plan


def _look_params(look: str, r: np.ndarray) -> dict[str, Any]:
    if look == "colour":
        return {"brightness": (r[0] - 0.5) * 0.5, "contrast": 0.6 + 0.8 * r[1], "saturation": 1.6 * r[2],
                "hue": 180.0 * r[3]}
    if look == "tint":
        return {"colormap": int(r[0] * 22), "amount": 0.5 + 0.5 * r[1]}
    if look == "stylise":
        return {"filter": int(r[0] * 4), "sigma_s": 10 + 50 * r[1], "sigma_r": 0.15 + 0.45 * r[2]}
    if look == "cartoon":
        return {"levels": 2 + int(r[0] * 4), "edges": bool(r[1] < 0.6)}
    if look == "sketch":
        return {"sigma_s": 10 + 40 * r[0], "shade": 0.02 + 0.06 * r[1]}
    return {}


def _warp_params(r: np.ndarray, opts: AugmentOptions) -> tuple[float, float, float, float]:
    return ((2 * r[0] - 1) * opts.rotation, 1 + (2 * r[1] - 1) * opts.scale, (2 * r[2] - 1) * opts.shift,
            (2 * r[3] - 1) * opts.shift)


# -- appearance --------------------------------------------------------------------------------

def apply_look(image: np.ndarray, look: str, p: dict[str, Any]) -> np.ndarray:
    """One look applied to an RGB uint8 image [S,S,3]."""
    import cv2

    if look == "colour":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + p["hue"]) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * p["saturation"], 0, 255)
        rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255
        rgb = (rgb - 0.5) * p["contrast"] + 0.5 + p["brightness"]
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    if look == "grey":
        return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    if look == "tint":
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        tinted = cv2.cvtColor(cv2.applyColorMap(grey, p["colormap"]), cv2.COLOR_BGR2RGB)
        return cv2.addWeighted(tinted, p["amount"], np.repeat(grey[..., None], 3, -1), 1 - p["amount"], 0)
    if look == "stylise":
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        f = p["filter"]
        if f == 0:
            out = cv2.stylization(bgr, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"])
        elif f == 1:
            out = cv2.edgePreservingFilter(bgr, flags=1, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"])
        elif f == 2:
            out = cv2.detailEnhance(bgr, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"])
        else:
            out = cv2.xphoto.oilPainting(bgr, 3, 1)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    if look == "cartoon":
        step = 256 // p["levels"]
        out = (image // step) * step + step // 2
        out = cv2.medianBlur(out.astype(np.uint8), 3)
        if p["edges"]:
            edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 80, 160) > 0
            out[edges] = out[edges] // 4
        return out
    if look == "sketch":
        _, colour = cv2.pencilSketch(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), sigma_s=p["sigma_s"], sigma_r=0.07,
                                     shade_factor=p["shade"])
        return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    raise InvalidRequestError(f"unknown look {look!r}; expected one of {APPEARANCE_LOOKS}")


# -- background --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def background_image(index: int) -> np.ndarray:
    """scikit-image sample image ``BACKGROUND_IMAGES[index]`` as RGB uint8."""
    from skimage import data

    image = getattr(data, BACKGROUND_IMAGES[index])()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def background_crop(index: int, x: float, y: float, side: float, size: int) -> np.ndarray:
    """A square crop (position and side as shares of the image) of a background image, at ``size``²."""
    import cv2

    image = background_image(index)
    h, w = image.shape[:2]
    s = max(8, int(side * min(h, w)))
    x0, y0 = int(x * (w - s)), int(y * (h - s))
    return cv2.resize(image[y0:y0 + s, x0:x0 + s], (size, size), interpolation=cv2.INTER_AREA)


def head_alpha(points: np.ndarray, size: int) -> np.ndarray:
    """float32 [S,S] in 0..1: the head (released head oval grown, and raised for the hair), feathered."""
    import cv2

    from emoji_model.landmarks import HEAD_OVAL

    xy = np.asarray(points, dtype=np.float64)[list(HEAD_OVAL), :2] * size
    centre = xy.mean(0)
    span = xy.max(0) - xy.min(0)
    grown = centre + (xy - centre) * 1.25
    raised = grown[grown[:, 1] < centre[1]] - np.array([0.0, 0.45 * span[1]])  # the hair above the oval
    hull = cv2.convexHull(np.round(np.concatenate([grown, raised])).astype(np.int32))
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [hull], 1.0)
    sigma = max(1.0, 0.06 * float(span.max()))
    return cv2.GaussianBlur(mask, (0, 0), sigma)


# -- geometry ----------------------------------------------------------------------------------

def warp_matrix(params: tuple[float, float, float, float], size: int) -> np.ndarray:
    """2×3 similarity (rotation, zoom about the centre, shift) in pixels."""
    angle, zoom, dx, dy = params
    a = math.radians(angle)
    c, s = zoom * math.cos(a), zoom * math.sin(a)
    centre = size / 2
    return np.array([[c, -s, centre - c * centre + s * centre + dx * size],
                     [s, c, centre - s * centre - c * centre + dy * size]], dtype=np.float64)


def warp(image: np.ndarray, points: np.ndarray, params, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its normalised landmarks [478,3] moved by one similarity transform."""
    import cv2

    m = warp_matrix(params, size)
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    pts = np.array(points, dtype=np.float32, copy=True)
    xy = pts[:, :2].astype(np.float64) * size
    pts[:, :2] = (xy @ m[:, :2].T + m[:, 2]) / size
    pts[:, 2] *= params[1]
    return out, pts


@functools.lru_cache(maxsize=None)
def mirror_permutation() -> np.ndarray:
    """[478] index of each landmark's mirror twin (left↔right), from the symmetric canonical face."""
    from emoji_model import geometry
    from emoji_model.landmarks import LEFT_IRIS, RIGHT_IRIS, resolve_face_model

    vertices = geometry.load_canonical_model(resolve_face_model()).vertices  # [468,3], symmetric in x
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    perm = np.arange(478)
    perm[:len(vertices)] = np.argmin(((mirrored[:, None] - vertices[None]) ** 2).sum(-1), axis=1)
    # The iris points (not in the canonical mesh): each eye's iris becomes the other's.
    perm[list(LEFT_IRIS) + list(RIGHT_IRIS)] = list(RIGHT_IRIS) + list(LEFT_IRIS)
    return perm


def flip(image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mirror image and its landmarks, mirrored and relabelled (a left eye stays a left eye)."""
    pts = np.array(points, dtype=np.float32, copy=True)
    pts[:, 0] = 1.0 - pts[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), pts[mirror_permutation()]


# -- the whole sample --------------------------------------------------------------------------

def apply_plan(plan: Plan, frames: np.ndarray, points: np.ndarray, reference: np.ndarray,
               ref_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(frames [F,S,S,3], points [F,478,3], reference [S,S,3], its points) after the plan."""
    size = frames.shape[1]
    f = len(frames)
    frames = np.array(frames, copy=True)
    points = np.array(points, dtype=np.float32, copy=True)
    ref, ref_pts = np.array(reference, copy=True), np.array(ref_points, dtype=np.float32, copy=True)
    if plan.ref_warp is not None:
        ref, ref_pts = warp(ref, ref_pts, plan.ref_warp, size)
        for i in range(f):
            t = i / max(1, f - 1)
            params = tuple(a + (b - a) * t for a, b in zip(plan.warp_from, plan.warp_to))
            frames[i], points[i] = warp(frames[i], points[i], params, size)
    if plan.flip:
        ref, ref_pts = flip(ref, ref_pts)
        for i in range(f):
            frames[i], points[i] = flip(frames[i], points[i])
    if plan.background is not None:
        texture = background_crop(*plan.background, size).astype(np.float32)
        for image, pts in [(ref, ref_pts)] + [(frames[i], points[i]) for i in range(f)]:
            alpha = head_alpha(pts, size)[..., None]
            image[...] = (alpha * image + (1 - alpha) * texture + 0.5).astype(np.uint8)
    for look, params in plan.looks:
        ref = apply_look(ref, look, params)
        for i in range(f):
            frames[i] = apply_look(frames[i], look, params)
    return frames, points, ref, ref_pts
