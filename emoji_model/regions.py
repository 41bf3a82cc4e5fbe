"""Regional control of motion transfer: how strongly eyes, brows, mouth, pupils and head pose follow.

Strengths are given per region (:data:`~emoji_model.constants.REGIONS`) or by a preset
(:data:`~emoji_model.constants.REGION_PRESETS`, multiplied by the per-region strengths). The
canonical-space expression deltas are weighted per vertex by a soft membership in the eye, brow and
mouth regions (Gaussian in canonical distance to each region's points, normalised over the regions),
so that the cheeks and the chin follow the mouth and nothing tears at a region's edge.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .constants import REGION_PRESETS, REGIONS
from .errors import InvalidRequestError
from .landmarks import topology

MEMBERSHIP_SIGMA = 0.05
"""Width of the soft region membership, in units of the outer-eye-corner distance."""


@dataclass(frozen=True)
class Regions:
    """Strengths 0..2 of the eyes, brows, mouth, pupils and head pose (1 = as driven, 0 = still)."""

    eyes: float = 1.0
    brows: float = 1.0
    mouth: float = 1.0
    pupils: float = 1.0
    head: float = 1.0

    def __post_init__(self) -> None:
        for name in REGIONS:
            value = float(getattr(self, name))
            if not np.isfinite(value) or not 0.0 <= value <= 2.0:
                raise InvalidRequestError(f"{name} strength must be within 0..2, got {value}")

    @classmethod
    def of(cls, preset: str = "all", **strengths: float) -> Regions:
        """A preset's strengths multiplied by the given per-region strengths."""
        if preset not in REGION_PRESETS:
            raise InvalidRequestError(f"region preset must be one of {list(REGION_PRESETS)}, got {preset!r}")
        unknown = sorted(set(strengths) - set(REGIONS))
        if unknown:
            raise InvalidRequestError(f"unknown region(s) {unknown}; regions: {', '.join(REGIONS)}")
        base = dict(zip(REGIONS, REGION_PRESETS[preset]))
        return cls(**{name: base[name] * float(strengths.get(name, 1.0)) for name in REGIONS})

    @property
    def uniform(self) -> bool:
        """True when eyes, brows and mouth share one strength (the deltas need no per-vertex weights)."""
        return self.eyes == self.brows == self.mouth


def as_regions(regions: Regions | str | Mapping[str, float] | None) -> Regions:
    """Regions from a Regions, a preset name, a {region: strength} mapping, or None (all at 1)."""
    if regions is None:
        return Regions()
    if isinstance(regions, Regions):
        return regions
    if isinstance(regions, str):
        return Regions.of(regions)
    values = dict(regions)
    return Regions.of(str(values.pop("preset", "all")), **values)


@functools.lru_cache(maxsize=1)
def _region_points() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    topo = topology()
    brows = np.unique(np.concatenate([topo.parts["left_eyebrow"].ravel(), topo.parts["right_eyebrow"].ravel()]))
    lips = np.unique(np.concatenate([e.ravel() for name, e in topo.parts.items() if "lips" in name]))
    return topo.right_eye_ring, topo.left_eye_ring, brows, lips


def memberships(canonical: np.ndarray) -> np.ndarray:
    """Soft membership [478, 4] of each vertex in the right eye, left eye, brows and mouth regions (rows sum to 1).

    The mouth region takes in the jaw (the face contour below the mouth corners), which opens with it.
    """
    v = np.asarray(canonical, dtype=np.float64)
    right, left, brows, lips = _region_points()
    oval = topology().face_oval
    jaw = oval[v[oval, 1] < v[[61, 291], 1].mean()]
    mouth = np.concatenate([lips, jaw])
    unit = max(float(np.linalg.norm(v[263] - v[33])), 1e-6)
    sigma = MEMBERSHIP_SIGMA * unit
    d2 = np.stack([((v[:, None, :] - v[None, idx, :]) ** 2).sum(-1).min(axis=1)
                   for idx in (right, left, brows, mouth)], axis=-1)           # [478, 4]
    logits = -0.5 * d2 / sigma ** 2
    member = np.exp(logits - logits.max(axis=1, keepdims=True))
    return member / member.sum(axis=1, keepdims=True)


def vertex_weights(canonical: np.ndarray, regions: Regions) -> np.ndarray:
    """Per-vertex strengths [478] of one face's canonical vertices [478, 3] for its expression deltas."""
    return memberships(canonical) @ np.array([regions.eyes, regions.eyes, regions.brows, regions.mouth])
