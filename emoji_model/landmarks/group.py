"""Several faces of the same frames: :class:`FaceGroup`, one :class:`FaceTrack` per face, and track files.

FYE_FACES carries a FaceTrack for one face, as it always has; with ``face_index = "all"`` it carries
a FaceGroup. Code that takes either calls :func:`faces_of` (a list of tracks) and :func:`from_faces`
(back to a track when there is one face), so the single-face contract never changes.

Track files (.npz): one face is written exactly as :meth:`FaceTrack.save` writes it; a group holds
``faces`` (the count) and each face's arrays under ``face{j}/`` names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidRequestError
from ..fileio import atomic_path
from .track import FaceTrack


@dataclass
class FaceGroup:
    """Tracks of several faces over the same frames (face j is ``group[j]``), largest face first."""

    tracks: list[FaceTrack] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tracks = list(self.tracks)
        if not self.tracks:
            raise InvalidRequestError("a face group needs at least one face")
        if any(not isinstance(t, FaceTrack) for t in self.tracks):
            raise InvalidRequestError("a face group holds FaceTracks only")
        sizes = {t.size for t in self.tracks}
        lengths = {len(t) for t in self.tracks}
        if len(sizes) != 1 or len(lengths) != 1:
            raise InvalidRequestError(f"the faces of a group must share frame size and length, got sizes "
                                      f"{sorted(sizes)} and lengths {sorted(lengths)}")

    @property
    def count(self) -> int:
        """Number of faces."""
        return len(self.tracks)

    @property
    def frames(self) -> int:
        """Frames of every face's track."""
        return len(self.tracks[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self.tracks[0].size

    @property
    def fps(self) -> float:
        """Frame rate of the tracks."""
        return self.tracks[0].fps

    def __iter__(self) -> Iterator[FaceTrack]:
        return iter(self.tracks)

    def __getitem__(self, j: int) -> FaceTrack:
        return self.tracks[j]


FYEFaces = FaceTrack | FaceGroup
"""What travels as FYE_FACES."""


def faces_of(value: FYEFaces) -> list[FaceTrack]:
    """The tracks of a FYE_FACES value, one per face."""
    if isinstance(value, FaceGroup):
        return list(value.tracks)
    if isinstance(value, FaceTrack):
        return [value]
    raise InvalidRequestError(f"expected face tracks (FYE_FACES), got {type(value).__name__}")


def from_faces(tracks: Sequence[FaceTrack]) -> FYEFaces:
    """One track as itself, several as a FaceGroup."""
    tracks = list(tracks)
    return tracks[0] if len(tracks) == 1 else FaceGroup(tracks)


def single_face(value: FYEFaces, what: str = "this input") -> FaceTrack:
    """The one track of a FYE_FACES value; a clear error when it holds several faces."""
    tracks = faces_of(value)
    if len(tracks) != 1:
        raise InvalidRequestError(f"{what} takes one face, but the faces connected hold {len(tracks)} (from "
                                  "face_index 'all'); pick one face with face_index, or use a node that "
                                  "animates every face")
    return tracks[0]


def save_faces(value: FYEFaces, path: str | os.PathLike) -> Path:
    """Write one face (FaceTrack's own format) or a group of faces to an .npz file, atomically."""
    tracks = faces_of(value)
    if len(tracks) == 1:
        return tracks[0].save(path)
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"faces": np.array(len(tracks))}
    for j, track in enumerate(tracks):
        for name in track.ARRAYS:
            arrays[f"face{j}/{name}"] = getattr(track, name)
        arrays[f"face{j}/size"] = np.array(track.size, dtype=np.int64)
        arrays[f"face{j}/fps"] = np.array(track.fps)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_faces(path: str | os.PathLike) -> FYEFaces:
    """Read a file written by :func:`save_faces` or :meth:`FaceTrack.save`."""
    try:
        with np.load(path) as data:
            if "faces" not in data.files:
                group = None
            else:
                count = int(data["faces"])
                group = []
                for j in range(count):
                    arrays = {k: data[f"face{j}/{k}"] for k in FaceTrack.ARRAYS if f"face{j}/{k}" in data.files}
                    group.append(FaceTrack(**arrays, size=tuple(int(v) for v in data[f"face{j}/size"]),
                                           fps=float(data[f"face{j}/fps"])))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InvalidRequestError(f"'{path}' is not a face track file (.npz written by Save Faces or the "
                                  f"landmarks command): {exc}") from exc
    if group is None:
        return FaceTrack.load(path)
    return from_faces(group)
