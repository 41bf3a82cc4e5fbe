"""Counted tensor memory: the peak bytes of tensors alive at once, on real or meta tensors.

Used by ``trainer plan`` (forward and backward on the meta device: shapes only, nothing allocated),
by the test that checks the plan against a real training step, and by the benches. Counting tensors
through a dispatch mode is exact where RSS is not (allocator caches, shared pages, other threads).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class PeakTensorMemory:
    """Peak bytes of tensor storage alive at once among tensors created inside the block.

    A TorchDispatchMode sees every tensor an operation creates; storages are counted once (views share
    them) and released when the last tensor made on them is collected. Tensors made before the block
    (weights, inputs) are not counted: this is the memory the block adds. Meta tensors count their
    would-be size, so a meta run measures without allocating.
    """

    def __init__(self):
        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        meter._track(t)
                return out

        self.mode = Mode()
        self.live = self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage -> [tensors alive, bytes]

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage._cdata, storage.nbytes()  # the storage's identity, for meta tensors too
        if size == 0:
            return
        entry = self.refs.get(key)
        if entry is None:
            entry = self.refs[key] = [0, size]
            self.live += size
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.live

    def __enter__(self) -> PeakTensorMemory:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
