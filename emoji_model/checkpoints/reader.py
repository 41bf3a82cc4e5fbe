"""Reading checkpoint files one tensor at a time: safetensors through ``safe_open``, torch files weights-only."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointMismatchError, MissingModelError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")

# safetensors' dtype names (the header's "dtype" field) → torch dtypes.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorFile:
    """A checkpoint file read one tensor at a time: safetensors or .pth/.pt/.ckpt/.bin.

    Safetensors files are opened with ``safetensors.safe_open``: names, shapes and dtypes come from the
    header, and each tensor is read only when asked for, copied out of the memory-mapped file into its
    own storage. Torch files go through ``torch.load(weights_only=True, mmap=True)``. A truncated or
    corrupt file raises CheckpointMismatchError naming it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingModelError(self.path.name, [str(self.path.parent)], "check the path you gave")
        self.metadata: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._safe = None
        self._bounds: tuple[int, int] | None = None  # of the file's map in this process (Linux)
        self._torch: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            self._open_safetensors()
        else:
            self._torch = _torch_load(self.path)
            self._shapes = {k: tuple(v.shape) for k, v in self._torch.items()}
            self._dtypes = {k: v.dtype for k, v in self._torch.items()}

    def _open_safetensors(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            self._safe = safe_open(str(self.path), framework="pt", device="cpu")
            stored = {}
            for k in self._safe.keys():
                piece = self._safe.get_slice(k)
                stored[k] = piece.get_dtype()
                self._shapes[k] = tuple(piece.get_shape())
            self.metadata = dict(self._safe.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise CheckpointMismatchError(
                str(self.path), note=f"cannot read it as safetensors ({exc}): the file is truncated or corrupt. "
                                     "Download or copy it again.") from exc
        unsupported = sorted(k for k, d in stored.items() if d not in _ST_DTYPES)
        if unsupported:
            raise CheckpointMismatchError(str(self.path), note=f"tensor {unsupported[0]} has unsupported dtype "
                                                               f"{stored[unsupported[0]]}; expected one of "
                                                               f"{sorted(_ST_DTYPES)}")
        self._dtypes = {k: _ST_DTYPES[d] for k, d in stored.items()}

    def keys(self) -> list[str]:
        """Tensor names."""
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` without reading it."""
        return self._shapes[name]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """All names and shapes."""
        return dict(self._shapes)

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype of tensor ``name``."""
        return self._dtypes[name]

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` on the CPU in its stored dtype."""
        if self._torch is not None:
            return self._torch[name]
        if self._safe is None:
            raise CheckpointMismatchError(str(self.path), note=f"tensor {name} was asked for after the file was closed")
        view = self._safe.get_tensor(name)
        # A copy in its own storage: a view into the map would keep the map's pages resident with the
        # weights, and its 8-byte alignment sends some CPU kernels down other (not bit-identical) paths.
        tensor = view.clone()
        if _MADVISE is not None and view.nbytes:
            if self._bounds is None:
                self._bounds = _map_bounds(view.data_ptr(), self.path.stat().st_ino)
            _release_pages(view, self._bounds)
        return tensor

    def close(self) -> None:
        """Let go of the file (tensors already read stay valid)."""
        if self._torch is not None:
            self._torch = {}
        self._safe = None


def _load_madvise():
    """libc's madvise on Linux (where /proc/self/maps tells the map's bounds), else None."""
    if not os.path.exists("/proc/self/maps"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _load_madvise()
_MADV_DONTNEED = 4
_FOLIO = 1 << 21  # the largest page-cache folio a fault maps (a PMD on x86-64 and arm64)


def _map_bounds(address: int, inode: int) -> tuple[int, int]:
    """(start, end) of this process's map of the file with ``inode`` that holds ``address``; (0, 0) if none."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end and len(fields) >= 6 and int(fields[4]) == inode:
                    return start, end
    except (OSError, ValueError):
        pass
    return 0, 0


def _release_pages(view: torch.Tensor, bounds: tuple[int, int]) -> None:
    """Drop the pages around a tensor just copied out of the file's map from this process's resident set.

    The map is private and never written, so the kernel re-reads a page from the page cache if it
    is touched again; without this every page read stays resident until the map closes, and loading
    would hold the weights twice (their copies and the map). A page fault may map a whole page-cache
    folio (up to 2 MiB) around the address, so the window covers the tensor's 2 MiB-aligned blocks,
    clipped to the map's ``bounds``.
    """
    start = max(view.data_ptr() // _FOLIO * _FOLIO, bounds[0])
    end = min(-(-(view.data_ptr() + view.nbytes) // _FOLIO) * _FOLIO, bounds[1])
    if end > start:
        _MADVISE(start, end - start, _MADV_DONTNEED)  # advisory: a failure only costs memory


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure to read becomes one named error, cause kept
        raise CheckpointMismatchError(
            str(path), note=f"cannot read it as a weights-only torch checkpoint ({type(exc).__name__}: {exc}). "
                            "The file may be truncated, or hold pickled objects other than tensors.") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(str(path), note=f"expected a dict of tensors, found {type(obj).__name__}")
    out = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if skipped:
        log.info("%s: ignoring %d non-tensor entries (%s…)", path.name, len(skipped), skipped[0])
    return out


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files named by a path, a folder (its checkpoint files) or several of either."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in CHECKPOINT_SUFFIXES)
            if not found:
                raise CheckpointMismatchError(str(p), note="the folder holds no checkpoint files")
            files += found
        else:
            files.append(p)
    return files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, on the CPU in its stored dtype."""
    tf = TensorFile(path)
    return {k: tf.read(k) for k in tf.keys()}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other formats)."""
    return TensorFile(path).metadata if Path(path).suffix.lower() == ".safetensors" else {}
