"""Expression editor: blinks, smiles, an open mouth, brows, gaze and head turns keyed over time.

Makes a face track move without a driving video, from one still (a FaceTrack of one frame becomes
N frames) or by editing every frame of a track. Each expression control is a displacement field
on the canonical vertices, built from MediaPipe's face-mesh topology and scaled to the face (the
distance between the outer eye corners), so it is deterministic and needs no data:

- blink: each upper lid comes down onto its lower lid (negative values widen the eye);
- smile: the mouth corners go up and out, the lips follow (negative: a frown);
- mouth_open: the lower lip and the chin go down;
- brow_raise: the eyebrows go up (negative: down);

the skin around the moved points follows with a Gaussian falloff. Gaze moves the pupils inside
their eye boxes; yaw, pitch and roll rotate the head about the canonical origin. The edited
vertices are projected exactly as motion alignment projects (:func:`emoji_model.align.project_onto`),
so the result is an ordinary FaceTrack for rendering and sampling.

Keyframe text: keys separated by new lines or ";", each ``FRAME: name=value name=value ...``.
FRAME is a frame index (``12``) or a time in seconds (``0.5s``); "#" starts a comment. Between
the keys that set a control, its value is interpolated (linear, smoothstep or step); before its
first key and after its last it is held; a control never keyed is 0. Constant values (the node's
sliders) are added on top. Example::

    0: blink=0 smile=0
    12: blink=1
    24: blink=0 smile=0.8 yaw=15
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from . import geometry
from .constants import CONTROLS, INTERPOLATIONS, Control
from .projection import iris_relative, project_onto
from .errors import InvalidRequestError, NoFaceDetectedError
from .landmarks import NUM_POINTS, FaceTrack, close_loop, fill_invalid, topology
from .runtime import resolve

if TYPE_CHECKING:
    from .runtime import StandaloneRuntime

log = logging.getLogger(__name__)



# MediaPipe's 52 blendshape names, in the order of FaceTrack.blendshapes (ARKit's names; "Left"
# is the subject's left). tests/test_editor.py checks them against the landmarker's output.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight",
)
_BS = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}

# Magnitudes in units of the face size (outer eye corner to outer eye corner, about 9.5 cm).
BLINK_CLOSED_GAP = 0.1      # share of the lid gap left when shut
BLINK_LOWER_RISE = 0.05     # share of the lid gap the lower lid rises
SMILE_CORNER = (0.07, 0.06, -0.02)   # out, up, back
MOUTH_DROP = 0.25
BROW_LIFT = 0.08
PUPIL_SHIFT = (0.25, 0.2)   # share of the eye box per unit of pupil_x, pupil_y
PUPIL_LIMITS = ((0.2, 0.8), (0.25, 0.75))  # where an iris centre may go, as a share of its eye box
SPREAD = {"blink": 0.06, "smile": 0.1, "mouth_open": 0.15, "brow_raise": 0.12}  # falloff sigma


# -- keyframes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keyframe:
    """Control values set at one frame."""

    frame: int
    values: dict[str, float]


_ASSIGN = re.compile(r"^([A-Za-z_]\w*)=([^=]+)$")


def _parse_frame(token: str, fps: float, entry: str) -> int:
    try:
        if token.lower().endswith("s"):
            frame = round(float(token[:-1]) * fps)
        else:
            frame = int(token)
    except ValueError:
        raise InvalidRequestError(f"bad frame '{token}' in key '{entry}': use a frame number (12) or seconds "
                                  "(0.5s)") from None
    if frame < 0:
        raise InvalidRequestError(f"bad frame '{token}' in key '{entry}': frames count from 0")
    return frame


def parse_keyframes(text: str, fps: float = 25.0) -> list[Keyframe]:
    """Keyframes of the text format in this module's docstring, sorted by frame (a repeated frame merges).

    InvalidRequestError names the bad token: an unknown control, a value that is not a number or
    is out of range, a key without ``FRAME:``.
    """
    keys: dict[int, dict[str, float]] = {}
    for line in (text or "").splitlines():
        for entry in line.split("#", 1)[0].split(";"):
            entry = entry.strip()
            if not entry:
                continue
            if ":" not in entry:
                raise InvalidRequestError(f"key '{entry}' has no 'FRAME:' in front (e.g. '12: blink=1')")
            head, body = entry.split(":", 1)
            frame = _parse_frame(head.strip(), fps, entry)
            values = keys.setdefault(frame, {})
            body = re.sub(r"\s*=\s*", "=", body.replace(",", " "))
            for token in body.split():
                match = _ASSIGN.match(token)
                if not match:
                    raise InvalidRequestError(f"bad token '{token}' in key '{entry}': write name=value, "
                                              f"e.g. blink=1")
                name, raw = match.group(1).lower(), match.group(2)
                control = CONTROLS.get(name)
                if control is None:
                    raise InvalidRequestError(f"unknown control '{match.group(1)}' in key '{entry}'; controls: "
                                              f"{', '.join(CONTROLS)}")
                try:
                    value = float(raw)
                except ValueError:
                    raise InvalidRequestError(f"value '{raw}' of {name} in key '{entry}' is not a number") from None
                if not np.isfinite(value) or not control.lo <= value <= control.hi:
                    raise InvalidRequestError(f"{name}={raw} in key '{entry}' is outside "
                                              f"{control.lo:g}..{control.hi:g}")
                values[name] = value
    return [Keyframe(f, keys[f]) for f in sorted(keys)]


def _ease(t: np.ndarray, interpolation: str) -> np.ndarray:
    if interpolation == "linear":
        return t
    if interpolation == "smoothstep":
        return t * t * (3.0 - 2.0 * t)
    return np.zeros_like(t)  # step: hold each key until the next


def control_curves(keys: Sequence[Keyframe], frames: int, interpolation: str = "linear",
                   constants: Mapping[str, float] | None = None, loop: bool = False) -> dict[str, np.ndarray]:
    """Per-frame values [frames] of every control: keys interpolated, constants added, clipped to range.

    With ``loop`` the curves are periodic: after its last key a control moves back to its first key's
    value, reached at frame ``frames`` (the first frame again), so the animation repeats without a jump.
    """
    if interpolation not in INTERPOLATIONS:
        raise InvalidRequestError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if frames < 1:
        raise InvalidRequestError(f"frames must be at least 1, got {frames}")
    constants = dict(constants or {})
    unknown = sorted(set(constants) - set(CONTROLS))
    if unknown:
        raise InvalidRequestError(f"unknown control(s) {unknown}; controls: {', '.join(CONTROLS)}")
    beyond = [k.frame for k in keys if k.frame >= frames]
    if beyond:
        log.warning("keys at frames %s lie past the last frame %d; %s", beyond, frames - 1,
                    "a loop ignores them" if loop else "they only shape the curves before it")
        if loop:
            keys = [k for k in keys if k.frame < frames]
    f = np.arange(frames, dtype=np.float64)
    curves = {}
    for name, control in CONTROLS.items():
        points = [(k.frame, k.values[name]) for k in keys if name in k.values]
        curve = np.zeros(frames)
        if points:
            xs = np.array([p[0] for p in points], dtype=np.float64)
            ys = np.array([p[1] for p in points], dtype=np.float64)
            if loop:  # one period before and after: the last key leads into the first one again
                xs = np.concatenate([[xs[-1] - frames], xs, [xs[0] + frames]])
                ys = np.concatenate([[ys[-1]], ys, [ys[0]]])
            i = np.clip(np.searchsorted(xs, f, side="right") - 1, 0, len(xs) - 1)
            j = np.minimum(i + 1, len(xs) - 1)
            span = np.where(j > i, xs[j] - xs[i], 1.0)
            t = np.clip((f - xs[i]) / span, 0.0, 1.0)
            curve = ys[i] + _ease(t, interpolation) * (ys[j] - ys[i])
            curve[f < xs[0]] = ys[0]
        curve = curve + float(constants.get(name, 0.0))
        curves[name] = np.clip(curve, control.lo, control.hi)
    return curves


# -- displacement fields ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Parts:
    upper_lids: tuple[np.ndarray, np.ndarray]    # right eye, left eye
    lower_lids: tuple[np.ndarray, np.ndarray]
    brows: np.ndarray
    nose: np.ndarray
    lips: np.ndarray
    lower_lip: np.ndarray
    upper_lip: np.ndarray
    corners: np.ndarray                          # 61, 291 (outer), 78, 308 (inner)
    face_oval: np.ndarray


def _ring_halves(ring: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Split a closed eye contour at its two corners (extreme x) into (upper, lower) lid chains,
    # both running from the corner at lower x to the other.
    xs = vertices[ring, 0]
    a, b = int(np.argmin(xs)), int(np.argmax(xs))
    ring = np.roll(ring, -a)                                  # the low-x corner first
    b = (b - a) % len(ring)
    one, two = ring[1:b], ring[b + 1:][::-1]
    if vertices[one, 1].mean() > vertices[two, 1].mean():
        return one, two
    return two, one


def _opposite(chain: np.ndarray, other: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    # The point of the other lid facing each point of ``chain`` [K, 3]: MediaPipe's lids pair up
    # point by point when they have as many points; otherwise interpolate along x.
    if len(chain) == len(other):
        return vertices[other]
    return _lid_at(vertices[chain, 0], other, vertices)


def _parts(vertices: np.ndarray) -> _Parts:
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    topo = topology()
    right = _ring_halves(topo.right_eye_ring, vertices)
    left = _ring_halves(topo.left_eye_ring, vertices)

    def points(*names: str) -> np.ndarray:
        return np.unique(np.concatenate([topo.parts[n].ravel() for n in names]))

    corners = np.array([61, 291, 78, 308])
    lower = np.setdiff1d(points(*[n for n in topo.parts if "lips_lower" in n]), corners)
    upper = np.setdiff1d(points(*[n for n in topo.parts if "lips_upper" in n]), corners)
    nose = np.unique([i for c in C.FACE_LANDMARKS_NOSE for i in (c.start, c.end)])
    return _Parts(upper_lids=(right[0], left[0]), lower_lids=(right[1], left[1]),
                  brows=points("left_eyebrow", "right_eyebrow"), nose=nose,
                  lips=np.concatenate([lower, upper, corners]), lower_lip=lower, upper_lip=upper,
                  corners=corners, face_oval=topo.face_oval)


def _spread(vertices: np.ndarray, handles: np.ndarray, moves: np.ndarray, sigma: float) -> np.ndarray:
    """Displacements [478, 3]: ``moves`` [K, 3] at ``handles``, Gaussian-weighted averages on the other mesh points.

    Points farther than about 2 sigma from every handle fade to zero; the iris points get none.
    """
    mesh = vertices[:geometry.MESH_POINTS]
    d2 = ((mesh[:, None, :] - vertices[None, handles, :]) ** 2).sum(-1)        # [468, K]
    k = np.exp(-0.5 * d2 / sigma ** 2)
    field = np.zeros((NUM_POINTS, 3))
    field[:geometry.MESH_POINTS] = (k @ moves) / np.maximum(k.sum(axis=1), np.exp(-2.0))[:, None]
    field[handles] = moves
    return field


def _lid_at(xs: np.ndarray, chain: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    # Points of a lid chain interpolated at canonical x positions ``xs`` -> [len(xs), 3].
    order = np.argsort(vertices[chain, 0])
    pts = vertices[chain[order]]
    return np.stack([np.interp(xs, pts[:, 0], pts[:, d]) for d in range(3)], axis=-1)


def expression_fields(canonical: np.ndarray) -> dict[str, np.ndarray]:
    """Displacement fields [478, 3] at value 1 of one face's canonical vertices [478, 3].

    Keys: blink_right, blink_left (per eye, the subject's side), smile, mouth_open, brow_raise.
    """
    v = np.asarray(canonical, dtype=np.float64)
    parts = _parts(v)
    unit = float(np.linalg.norm(v[263] - v[33]))  # outer eye corners: the face size
    fields: dict[str, np.ndarray] = {}

    # Blink: the upper lid down onto the lower lid (meeting just above it), the lower lid up a bit.
    for side, upper, lower, brow_x in (("blink_right", parts.upper_lids[0], parts.lower_lids[0], -1),
                                       ("blink_left", parts.upper_lids[1], parts.lower_lids[1], 1)):
        below = _opposite(upper, lower, v)
        above = _opposite(lower, upper, v)
        moves = np.concatenate([-(1.0 - BLINK_CLOSED_GAP) * (v[upper] - below),
                                BLINK_LOWER_RISE * (above - v[lower])])
        corners = np.setdiff1d(np.concatenate([topology().right_eye_ring, topology().left_eye_ring]),
                               np.concatenate(parts.upper_lids + parts.lower_lids))
        anchors = np.concatenate([parts.brows[np.sign(v[parts.brows, 0]) == brow_x], parts.nose, corners])
        handles = np.concatenate([upper, lower, anchors])
        moves = np.concatenate([moves, np.zeros((len(anchors), 3))])
        fields[side] = _spread(v, handles, moves, SPREAD["blink"] * unit)

    eye_rings = np.concatenate(parts.upper_lids + parts.lower_lids)
    mouth_y = v[[61, 291], 1].mean()
    centre_x = v[[61, 291], 0].mean()
    half_width = max(abs(v[291, 0] - v[61, 0]) / 2, 1e-6)

    # Smile: the corners out, up and back; the lips follow by their distance from the middle.
    out = np.sign(v[parts.lips, 0] - centre_x)
    share = np.clip(np.abs(v[parts.lips, 0] - centre_x) / half_width, 0.0, 1.0) ** 2
    share[np.isin(parts.lips, parts.corners)] = 1.0
    moves = unit * np.stack([SMILE_CORNER[0] * out, np.full_like(out, SMILE_CORNER[1]),
                             np.full_like(out, SMILE_CORNER[2])], axis=-1) * share[:, None]
    chin = parts.face_oval[v[parts.face_oval, 1] < mouth_y]
    anchors = np.concatenate([parts.nose, eye_rings, chin])
    fields["smile"] = _spread(v, np.concatenate([parts.lips, anchors]),
                              np.concatenate([moves, np.zeros((len(anchors), 3))]), SPREAD["smile"] * unit)

    # Mouth open: the lower lip (most in the middle) and the chin down (the jaw's drop grows toward
    # the chin), the corners a third of the way; the upper lip and everything above stay.
    chin_y = v[parts.face_oval, 1].min()
    jaw_share = np.clip((mouth_y - v[chin, 1]) / max(mouth_y - chin_y, 1e-6), 0.0, 1.0)
    drop = np.array([0.0, -MOUTH_DROP * unit, 0.0])
    middle = 1.0 - np.clip(np.abs(v[parts.lower_lip, 0] - centre_x) / half_width, 0.0, 1.0) ** 2
    handles = np.concatenate([parts.lower_lip, parts.corners, chin])
    moves = np.concatenate([(0.35 + 0.65 * middle)[:, None] * drop,   # a rounded opening
                            np.repeat(0.35 * drop[None], len(parts.corners), 0), jaw_share[:, None] * drop])
    still = np.concatenate([parts.upper_lip, parts.nose, eye_rings,
                            parts.face_oval[v[parts.face_oval, 1] >= mouth_y]])
    fields["mouth_open"] = _spread(v, np.concatenate([handles, still]),
                                   np.concatenate([moves, np.zeros((len(still), 3))]), SPREAD["mouth_open"] * unit)

    # Brow raise: the eyebrows up; the eyes and the nose stay.
    lift = np.zeros((len(parts.brows), 3))
    lift[:, 1] = BROW_LIFT * unit
    still = np.concatenate([eye_rings, parts.nose])
    fields["brow_raise"] = _spread(v, np.concatenate([parts.brows, still]),
                                   np.concatenate([lift, np.zeros((len(still), 3))]), SPREAD["brow_raise"] * unit)
    return fields


def head_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotations [..., 3, 3] in canonical space (x right, y up, z toward the camera) from degrees.

    yaw > 0 turns the face toward the image's right, pitch > 0 raises the chin, roll > 0 tilts the
    head clockwise as seen in the image; roll is applied first, then pitch, then yaw.
    """
    y, p, r = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (yaw, pitch, -np.asarray(roll)))
    p = -p
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([np.cos(y), zero, np.sin(y)], -1), np.stack([zero, one, zero], -1),
                   np.stack([-np.sin(y), zero, np.cos(y)], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, np.cos(p), -np.sin(p)], -1),
                   np.stack([zero, np.sin(p), np.cos(p)], -1)], -2)
    rz = np.stack([np.stack([np.cos(r), -np.sin(r), zero], -1), np.stack([np.sin(r), np.cos(r), zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    return ry @ rx @ rz


def field_deltas(canonical: np.ndarray, controls: Mapping[str, np.ndarray]) -> np.ndarray:
    """Canonical displacements [N, 478, 3] of one face [478, 3] for control values ({name: [N]}, missing = 0)."""
    lengths = {len(np.atleast_1d(v)) for v in controls.values()} or {1}
    n = max(lengths)
    c = {name: np.broadcast_to(np.asarray(controls.get(name, 0.0), dtype=np.float64), (n,)) for name in CONTROLS}
    weights = {"blink_right": c["blink"] + c["blink_right"], "blink_left": c["blink"] + c["blink_left"],
               "smile": c["smile"], "mouth_open": c["mouth_open"], "brow_raise": c["brow_raise"]}
    out = np.zeros((n, NUM_POINTS, 3))
    for name, field in expression_fields(canonical).items():
        w = np.clip(weights[name], -0.5, 1.0) if name.startswith("blink") else weights[name]
        out += w[:, None, None] * field[None]
    return out


# Blendshape scores -> control values, for a driving photo (an expression without a neutral frame to
# compare with). (offset, gain): the score of open, relaxed eyes / a closed mouth, and the score span
# of the control's full value, measured on the shared driving video (eyeBlink 0.03 open, 0.65 shut)
# and on LFW faces (the lip gap is about 0.55 x jawOpen eye-corner distances; mouth_open = 1 drops
# the lower lip by MOUTH_DROP).
BLINK_SCORES = (0.05, 0.6)
JAW_SCORES = (0.02, 0.55 / MOUTH_DROP)
SMILE_GAIN = 1.0
BROW_SCORES = (0.12, 0.5)
GAZE_GAIN = 1.5


def controls_from_blendshapes(blendshapes: np.ndarray) -> dict[str, np.ndarray]:
    """Editor control values {name: [N]} that re-create the expressions of blendshape scores [N, 52].

    What a neutral face scores is subtracted, so a relaxed face gives zeros (an estimate: MediaPipe's
    scores of a neutral face vary a little from person to person).
    """
    b = np.atleast_2d(np.asarray(blendshapes, dtype=np.float64))

    def score(*names: str) -> np.ndarray:
        return np.mean([b[:, _BS[name]] for name in names], axis=0)

    def ramp(value: np.ndarray, offset_span: tuple[float, float]) -> np.ndarray:
        offset, span = offset_span
        return (value - offset) / span

    out = {name: np.zeros(len(b)) for name in CONTROLS}
    for eye, name in (("Left", "blink_left"), ("Right", "blink_right")):
        out[name] = np.clip(ramp(score(f"eyeBlink{eye}"), BLINK_SCORES), 0.0, 1.0) - 0.5 * score(f"eyeWide{eye}")
    out["smile"] = np.clip(SMILE_GAIN * (score("mouthSmileLeft", "mouthSmileRight")
                                         - score("mouthFrownLeft", "mouthFrownRight")), -1.0, 1.0)
    out["mouth_open"] = np.clip(score("jawOpen") - JAW_SCORES[0], 0.0, None) * JAW_SCORES[1]
    raised = 0.5 * (score("browInnerUp") + score("browOuterUpLeft", "browOuterUpRight"))
    out["brow_raise"] = ramp(raised, BROW_SCORES) - score("browDownLeft", "browDownRight") / BROW_SCORES[1]
    # Gaze to the image's right: the subject's left eye looks out, the right eye looks in.
    out["pupil_x"] = GAZE_GAIN * (score("eyeLookOutLeft", "eyeLookInRight")
                                  - score("eyeLookInLeft", "eyeLookOutRight"))
    out["pupil_y"] = GAZE_GAIN * (score("eyeLookUpLeft", "eyeLookUpRight")
                                  - score("eyeLookDownLeft", "eyeLookDownRight"))
    return {name: np.clip(v, CONTROLS[name].lo, CONTROLS[name].hi) for name, v in out.items()}


# -- the edit --------------------------------------------------------------------------------

def _raise(blend: np.ndarray, names: Sequence[str], amount: np.ndarray) -> None:
    # Move the named scores toward 1 by ``amount`` (0..1) of the way, per frame, in place.
    amount = np.clip(amount, 0.0, 1.0)
    for name in names:
        i = _BS[name]
        blend[:, i] += amount * (1.0 - blend[:, i])


def _lower(blend: np.ndarray, names: Sequence[str], amount: np.ndarray) -> None:
    amount = np.clip(amount, 0.0, 1.0)
    for name in names:
        blend[:, _BS[name]] *= 1.0 - amount


def _edit_blendshapes(blend: np.ndarray, c: Mapping[str, np.ndarray]) -> np.ndarray:
    b = blend.astype(np.float64).copy()
    for eye, value in (("Left", c["blink"] + c["blink_left"]), ("Right", c["blink"] + c["blink_right"])):
        _raise(b, [f"eyeBlink{eye}"], value)
        _lower(b, [f"eyeWide{eye}"], value)
        _lower(b, [f"eyeBlink{eye}"], -value)
        _raise(b, [f"eyeWide{eye}"], -2.0 * value)
    _raise(b, ["mouthSmileLeft", "mouthSmileRight"], c["smile"])
    _lower(b, ["mouthFrownLeft", "mouthFrownRight"], c["smile"])
    _raise(b, ["mouthFrownLeft", "mouthFrownRight"], -c["smile"])
    _lower(b, ["mouthSmileLeft", "mouthSmileRight"], -c["smile"])
    _raise(b, ["jawOpen"], c["mouth_open"])
    _lower(b, ["mouthClose"], c["mouth_open"])
    _raise(b, ["browInnerUp", "browOuterUpLeft", "browOuterUpRight"], c["brow_raise"])
    _lower(b, ["browDownLeft", "browDownRight"], c["brow_raise"])
    _raise(b, ["browDownLeft", "browDownRight"], -c["brow_raise"])
    _lower(b, ["browInnerUp", "browOuterUpLeft", "browOuterUpRight"], -c["brow_raise"])
    # Gaze to the image's right: the subject's left eye looks out, the right eye looks in.
    _raise(b, ["eyeLookOutLeft", "eyeLookInRight"], c["pupil_x"])
    _raise(b, ["eyeLookInLeft", "eyeLookOutRight"], -c["pupil_x"])
    _raise(b, ["eyeLookUpLeft", "eyeLookUpRight"], c["pupil_y"])
    _raise(b, ["eyeLookDownLeft", "eyeLookDownRight"], -c["pupil_y"])
    return b


def move_iris(relative: list[np.ndarray], pupil_x: np.ndarray, pupil_y: np.ndarray) -> list[np.ndarray]:
    """Iris places ([right, left], each [N, 5, 2] in eye-box fractions) shifted by gaze controls [N]."""
    # Each iris (centre and rim together) moves inside its eye box, the centre kept within limits.
    out = []
    for rel in relative:                                   # [N, 5, 2] per eye
        centre = rel[:, 0, :]
        shift = np.stack([PUPIL_SHIFT[0] * pupil_x, -PUPIL_SHIFT[1] * pupil_y], axis=-1)
        lo = np.array([PUPIL_LIMITS[0][0], PUPIL_LIMITS[1][0]])
        hi = np.array([PUPIL_LIMITS[0][1], PUPIL_LIMITS[1][1]])
        target = np.where(shift != 0, np.clip(centre + shift, np.minimum(lo, centre), np.maximum(hi, centre)),
                          centre)
        out.append(rel + (target - centre)[:, None, :])
    return out


def edit_track(track: FaceTrack, curves: Mapping[str, np.ndarray], *,
               runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """The track with control ``curves`` ({name: [N]}, missing = 0) applied; a one-frame track becomes N frames."""
    rt = resolve(runtime)
    lengths = {len(np.atleast_1d(c)) for c in curves.values()} or {len(track)}
    if len(lengths) != 1:
        raise InvalidRequestError(f"control curves differ in length: {sorted(lengths)}")
    n = lengths.pop()
    if len(track) not in (1, n):
        raise InvalidRequestError(f"a face track of {len(track)} frames cannot take {n} frames of controls: "
                                  "give one frame (a still) or the same number")
    unknown = sorted(set(curves) - set(CONTROLS))
    if unknown:
        raise InvalidRequestError(f"unknown control(s) {unknown}; controls: {', '.join(CONTROLS)}")
    if not track.valid.any():
        raise NoFaceDetectedError("the face track to edit")
    base = fill_invalid(track)
    c = {name: np.broadcast_to(np.asarray(curves.get(name, 0.0), dtype=np.float64), (n,)) for name in CONTROLS}

    canonical = np.broadcast_to(base.canonical.astype(np.float64), (n, NUM_POINTS, 3)).copy()
    with rt.progress(len(base), "expression fields") as bar:
        for i in range(len(base)):
            rt.check_interrupt()
            frames = slice(None) if len(base) == 1 else slice(i, i + 1)
            canonical[frames] += field_deltas(base.canonical[i], {k: v[frames] for k, v in c.items()})
            bar.update()

    pose = np.broadcast_to(base.pose.astype(np.float64), (n, 4, 4)).copy()
    rotation = head_rotation(c["yaw"], c["pitch"], c["roll"])                    # [N, 3, 3]
    pose[:, :3, :3] = pose[:, :3, :3] @ rotation  # turn the head about its own canonical origin

    source = np.broadcast_to(base.points.astype(np.float64), (n, NUM_POINTS, 3))
    iris = move_iris(iris_relative(source), c["pupil_x"], c["pupil_y"])
    points = project_onto(base, canonical, pose, iris)
    blend = _edit_blendshapes(np.broadcast_to(base.blendshapes, (n, base.blendshapes.shape[1])), c)
    valid = np.broadcast_to(track.valid, (n,)).copy()
    return FaceTrack(points=points, canonical=canonical, pose=pose, blendshapes=blend, valid=valid,
                     size=track.size, fps=track.fps, source=track.source)


def animate_face(faces: FaceTrack, keys: str | Sequence[Keyframe] = "", *, frames: int = 48, fps: float = 25.0,
                 interpolation: str = "linear", constants: Mapping[str, float] | None = None, loop: bool = False,
                 runtime: StandaloneRuntime | None = None) -> FaceTrack:
    """Keyed expression edits of a face track (keyframe text or Keyframes, plus constant values).

    A one-frame track (a still) becomes ``frames`` frames at ``fps``; a longer track is edited frame
    by frame and keeps its length and frame rate (``frames`` is ignored, ``fps`` used if it has none).
    ``loop`` closes the animation on its first frame: the curves wrap around (see
    :func:`control_curves`) and a longer track's last frames are blended into its first
    (:func:`~emoji_model.landmarks.close_loop`).
    """
    if len(faces) == 0:
        raise InvalidRequestError("the face track to edit has no frame")
    if fps <= 0:
        raise InvalidRequestError(f"fps must be positive, got {fps}")
    still = len(faces) == 1
    n = int(frames) if still else len(faces)
    rate = float(fps) if still or faces.fps <= 0 else faces.fps
    if isinstance(keys, str):
        keys = parse_keyframes(keys, rate)
    curves = control_curves(keys, n, interpolation, constants, loop=loop)
    if loop and not still:
        faces = close_loop(fill_invalid(faces))
    edited = edit_track(faces, curves, runtime=runtime)
    return replace(edited, fps=rate)
