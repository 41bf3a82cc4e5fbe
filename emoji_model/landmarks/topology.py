"""The face-mesh parts used for rendering and masks, built once from MediaPipe's face-mesh topology."""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np

from .track import LEFT_IRIS, RIGHT_IRIS

# Mouth corners and mid-line points that split each lip ring into four chains.
_LIP_CHAINS = {
    "outer_lips_lower_left": (61, 17), "outer_lips_lower_right": (17, 291),
    "outer_lips_upper_left": (61, 0), "outer_lips_upper_right": (0, 291),
    "inner_lips_lower_left": (78, 14), "inner_lips_lower_right": (14, 308),
    "inner_lips_upper_left": (78, 13), "inner_lips_upper_right": (13, 308),
}

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
