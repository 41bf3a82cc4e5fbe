"""This pack's format: safetensors with the FYEConfig in the metadata, merged or one file per component."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointMismatchError
from ..fileio import atomic_path
from ..networks import COMPONENTS, MOTION_NORM_GROUPS, FollowYourEmoji, FYEConfig, build_model
from .assign import Source, assign_tensors, finish, is_position_table, zero_pad_conv_in
from .reader import TensorFile

FORMAT_VERSION = "1"

log = logging.getLogger(__name__)


def save_model(model: FollowYourEmoji, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
               components: Iterable[str] = COMPONENTS, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write one merged safetensors file (keys prefixed by component) with the config in its metadata."""
    tensors = {}
    for comp in components:
        for k, v in getattr(model, comp).state_dict().items():
            tensors[f"{comp}.{k}"] = _for_saving(v, dtype)
    meta = {"fye_format": FORMAT_VERSION, "fye_config": model.config.to_json(), "fye_component": "all"}
    meta.update(extra_metadata or {})
    return _write(Path(path), tensors, meta)


def save_components(model: FollowYourEmoji, directory: str | os.PathLike, *,
                    dtype: torch.dtype | None = None) -> list[Path]:
    """Write ``appearance.safetensors``, ``unet.safetensors``, ``guider.safetensors``, ``image_prompt.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for comp in COMPONENTS:
        tensors = {k: _for_saving(v, dtype) for k, v in getattr(model, comp).state_dict().items()}
        meta = {"fye_format": FORMAT_VERSION, "fye_config": model.config.to_json(), "fye_component": comp}
        out.append(_write(directory / f"{comp}.safetensors", tensors, meta))
    return out


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _for_saving(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to("cpu").contiguous()


def is_our_format(path: str | os.PathLike) -> bool:
    """True for a safetensors file written by :func:`save_model` / :func:`save_components`."""
    p = Path(path)
    return p.suffix.lower() == ".safetensors" and "fye_config" in TensorFile(p).metadata


def stored_config(text: str, readers: Iterable[TensorFile] = ()) -> FYEConfig:
    """The FYEConfig of a file's metadata; a config stored without ``motion_norm_groups`` gets its UNet's count.

    Files this pack wrote before the field existed came from its own trainer, whose temporal layers used
    ``norm_num_groups``. A file converted from released weights then recorded no trace of their 32
    groups either; where the two readings differ and the file carries no training record, say so.
    """
    data = json.loads(text)
    config = FYEConfig.from_dict(data)
    readers = list(readers)
    trained = any("fye_trained_steps" in r.metadata for r in readers)
    if "motion_norm_groups" not in data and config.motion_norm_groups != MOTION_NORM_GROUPS and not trained:
        log.warning("%s records no motion_norm_groups: loading its temporal layers with norm_num_groups=%d, as this "
                    "pack's trainer made them. If it was converted from released Follow-Your-Emoji or AnimateDiff "
                    "weights, those use %d groups: convert them again (`python -m emoji_model convert`) to record it.",
                    ", ".join(str(r.path) for r in readers) or "the config", config.motion_norm_groups,
                    MOTION_NORM_GROUPS)
    return config


def load_ours(files: Iterable[str | os.PathLike], *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, config: FYEConfig | None = None,
              cover_channels: int | None = None) -> FollowYourEmoji:
    """Load our safetensors format (merged or per component)."""
    readers = [TensorFile(f) for f in files]
    for r in readers:
        if "fye_config" not in r.metadata:
            raise CheckpointMismatchError(str(r.path), note="no Follow-Your-Emoji config in its metadata: not a file "
                                                            "written by this pack (convert released weights with "
                                                            "`python -m emoji_model convert`)")
    if config is None:
        configs = {r.metadata["fye_config"] for r in readers}
        if len(configs) > 1:
            raise CheckpointMismatchError(", ".join(str(r.path) for r in readers),
                                          note="the component files were saved with different configs")
        config = stored_config(configs.pop(), readers)
    if cover_channels is not None and cover_channels != config.cover_channels:
        config = config.replace(cover_channels=cover_channels)
    sources: dict[str, Source] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, str] = {}
    for r in readers:
        comp = r.metadata.get("fye_component", "all")
        prefix = "" if comp == "all" else f"{comp}."
        if comp != "all" and comp not in COMPONENTS:
            raise CheckpointMismatchError(str(r.path), note=f"unknown component {comp!r}")
        for k in r.keys():
            name = prefix + k
            if name in sources:
                raise CheckpointMismatchError(str(r.path), note=f"tensor {name} is also in {owner[name]}")
            sources[name] = (lambda r=r, k=k: r.read(k))
            shapes[name] = r.shape(k)
            owner[name] = str(r.path)
    label = ", ".join(str(r.path) for r in readers)
    model = build_model(config, "meta", dtype)
    defaults = assign_tensors(model, sources, shapes, label, device=device, dtype=dtype,
                              optional=is_position_table, adapter=zero_pad_conv_in(config))
    finish(model, defaults, label, device, dtype)
    return model
