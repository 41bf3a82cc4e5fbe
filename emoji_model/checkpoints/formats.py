"""Which layout a set of checkpoint files has: load the right way, or describe them from their headers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..constants import RELEASED_FILES
from ..errors import CheckpointMismatchError, InvalidRequestError
from ..networks import COMPONENTS, FollowYourEmoji, FYEConfig
from .config_from_shapes import infer_config
from .ours import is_our_format, load_ours, stored_config
from .reader import TensorFile, expand_paths
from .released import load_released, released_files, released_to_ours


def load_model(paths: str | os.PathLike | Iterable[str | os.PathLike], *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, config: FYEConfig | None = None,
               cover_channels: int | None = None, **overrides: Any) -> FollowYourEmoji:
    """Load our format or the released weights (auto-detected) into a ready model in ``dtype`` on ``device``.

    ``paths``: one merged file, the per-component files, a folder holding either, or the three released
    files (or their folder). ``config`` overrides what the files say or what is inferred from shapes;
    ``cover_channels=5`` adds zero-initialised covered-latent inputs to a checkpoint without them;
    ``overrides`` fill what released shapes cannot tell (see :func:`load_released`).
    """
    files = expand_paths(paths)
    if any(f.stem in RELEASED_FILES for f in files) and not any(is_our_format(f) for f in files):
        return load_released(files, device=device, dtype=dtype, config=config, cover_channels=cover_channels,
                             **overrides)
    if overrides:
        raise InvalidRequestError(f"config overrides {sorted(overrides)} apply to released weights only; "
                                  "our files carry their config")
    return load_ours(files, device=device, dtype=dtype, config=config, cover_channels=cover_channels)


def iter_component_counts(model: FollowYourEmoji) -> Iterator[tuple[str, int]]:
    """(component, parameter count) for each component."""
    for comp in COMPONENTS:
        yield comp, sum(p.numel() for p in getattr(model, comp).parameters())


def describe(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Format, config, parameter count per component and dtype histogram of checkpoint file(s), from headers."""
    files = expand_paths(paths)
    readers = [TensorFile(f) for f in files]
    counts = {c: 0 for c in COMPONENTS}
    dtypes: dict[str, int] = {}
    ours = all("fye_config" in r.metadata for r in readers)
    if ours:
        config = stored_config(readers[0].metadata["fye_config"], readers)
        fmt = "fye-safetensors"
    elif any(r.path.stem in RELEASED_FILES for r in readers):
        found = released_files(files)
        readers = list(found.values())
        config = infer_config({stem: tf.shapes() for stem, tf in found.items()})
        fmt = "released"
    else:
        raise CheckpointMismatchError(", ".join(str(f) for f in files),
                                      note="neither a file of this pack nor the released Follow-Your-Emoji weights")
    for r in readers:
        for k in r.keys():
            if ours:
                comp = r.metadata.get("fye_component", "all")
                name = k if comp == "all" else f"{comp}.{k}"
            else:
                name = released_to_ours(r.path.stem, k)
            key = str(r.dtype(k)).replace("torch.", "")
            dtypes[key] = dtypes.get(key, 0) + 1
            if not name.endswith(".pe"):  # position tables are buffers, not parameters
                counts[name.split(".", 1)[0]] += math.prod(r.shape(k))
    return {"format": fmt, "files": [str(r.path) for r in readers], "config": config.to_dict(),
            "parameters": counts, "dtypes": dtypes}
