"""Atomic file writes: a temporary name in the destination's folder, renamed over it when complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Readers (ComfyUI listing a models folder, a resumed run) never see a half-written file. The
    result gets the permissions of a newly created file (some writers create 0600 files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def numbered_path(root: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """The first free ``root/prefix_NNNNN{suffix}`` (numbers from 00001); ``prefix`` may hold subfolders.

    A prefix that would leave ``root`` (an absolute path, "..") is refused.
    """
    from .errors import InvalidRequestError

    root = Path(root).resolve()
    prefix = (prefix or "faces").strip().replace("\\", "/")
    target = (root / prefix).resolve()
    if root != target and root not in target.parents:
        raise InvalidRequestError(f"filename prefix '{prefix}' leaves the output folder; use a relative name")
    folder, stem = target.parent, target.name
    taken = {p.name for p in folder.glob(f"{stem}_*{suffix}")} if folder.is_dir() else set()
    n = 1
    while f"{stem}_{n:05d}{suffix}" in taken:
        n += 1
    return folder / f"{stem}_{n:05d}{suffix}"
