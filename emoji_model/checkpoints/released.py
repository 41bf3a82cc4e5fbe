"""The released Follow-Your-Emoji weights: their names ↔ ours, and loading the three files into our model.

The released ``referencenet.pth``, ``unet.pth`` and ``lmk_guider.pth`` (or ``.safetensors`` repacks with
the same stems) hold diffusers-named spatial layers, AnimateDiff-named temporal layers (mapped to
diffusers' BasicTransformerBlock names) and the guider; the architecture is inferred from their shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..constants import RELEASED_FILES
from ..errors import CheckpointMismatchError, InvalidRequestError
from ..networks import FollowYourEmoji, FYEConfig, build_model
from .assign import Source, assign_tensors, finish, is_position_table, zero_pad_conv_in
from .config_from_shapes import infer_config
from .reader import TensorFile, expand_paths

_MOTION_RENAMES = (
    (".temporal_transformer.", "."),
    (".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe"),
    (".attention_blocks.1.pos_encoder.pe", ".pos_embed.pe"),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
)


def motion_to_ours(name: str) -> str:
    """AnimateDiff / released motion-module key → ours (diffusers' BasicTransformerBlock names)."""
    if ".motion_modules." not in f".{name}":
        return name
    for old, new in _MOTION_RENAMES:
        name = name.replace(old, new)
    return name


def released_to_ours(component: str, name: str) -> str:
    """Name of a tensor of a released file (``referencenet``, ``unet``, ``lmk_guider``) in our model."""
    if component == "referencenet":
        if name.startswith("clip_fc."):
            return "appearance.image_prompt." + name
        return "appearance." + name
    if component == "unet":
        if name.startswith("clip_fc."):
            return "image_prompt." + name
        return "unet." + motion_to_ours(name)
    if component == "lmk_guider":
        return "guider." + name
    raise InvalidRequestError(f"unknown released component {component!r}; expected {sorted(RELEASED_FILES)}")


def ours_to_released(name: str) -> tuple[str, list[str]]:
    """Inverse of :func:`released_to_ours`: (released file stem, released names) for one of our tensors."""
    comp, rest = name.split(".", 1)
    if comp == "appearance":
        return "referencenet", [rest[len("image_prompt."):] if rest.startswith("image_prompt.") else rest]
    if comp == "image_prompt":
        return "unet", [rest]
    if comp == "guider":
        return "lmk_guider", [rest]
    if comp == "unet":
        if ".motion_modules." not in f".{rest}":
            return "unet", [rest]
        head, tail = rest.split(".motion_modules.", 1)
        idx, tail = tail.split(".", 1)
        base = f"{head}.motion_modules.{idx}.temporal_transformer."
        if tail.endswith(".pos_embed.pe"):
            block = tail[: -len(".pos_embed.pe")]
            return "unet", [f"{base}{block}.attention_blocks.{i}.pos_encoder.pe" for i in (0, 1)]
        for new, old in ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                         (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")):
            tail = tail.replace(new, old)
        return "unet", [base + tail]
    raise InvalidRequestError(f"{name} belongs to no released file")


def released_state_dicts(model_or_state: FollowYourEmoji | Mapping[str, torch.Tensor],
                         ) -> dict[str, dict[str, torch.Tensor]]:
    """Our tensors rearranged into the three released files' layouts (for tests and round trips)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in RELEASED_FILES}
    for name, t in state.items():
        if name.startswith("image_prompt.") and not name.startswith("image_prompt.clip_fc."):
            raise InvalidRequestError("the released layout has only the linear clip_fc image prompt")
        stem, names = ours_to_released(name)
        for n in names:
            out[stem][n] = t
    return out


def released_files(files: Iterable[Path]) -> dict[str, TensorFile]:
    """One reader per released file stem; CheckpointMismatchError naming a duplicate or a missing file."""
    found: dict[str, TensorFile] = {}
    for f in files:
        if f.stem in RELEASED_FILES:
            if f.stem in found:
                raise CheckpointMismatchError(str(f), note=f"two files for {f.stem}: {found[f.stem].path} and {f}")
            found[f.stem] = TensorFile(f)
    lacking = [s for s in RELEASED_FILES if s not in found]
    if lacking:
        where = sorted({str(Path(f).parent) for f in files}) or ["(no files)"]
        raise CheckpointMismatchError(", ".join(where), note="missing released file(s): "
                                      + ", ".join(f"{s}.pth" for s in lacking))
    return found


def load_released(paths: str | os.PathLike | Iterable[str | os.PathLike], *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, config: FYEConfig | None = None,
                  cover_channels: int | None = None, **overrides: Any) -> FollowYourEmoji:
    """Load ``referencenet``, ``unet`` and ``lmk_guider`` (.pth or safetensors repacks) into our model.

    The architecture is inferred from the tensor shapes unless ``config`` is given; ``overrides``
    (e.g. ``attention_heads``, ``norm_num_groups``, ``motion_heads``) set what shapes cannot tell.
    """
    found = released_files(expand_paths(paths))
    if config is None:
        config = infer_config({stem: tf.shapes() for stem, tf in found.items()}, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if cover_channels is not None:
        config = config.replace(cover_channels=cover_channels)
    sources: dict[str, Source] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    seen_pe: dict[str, tuple[str, str]] = {}
    for stem, tf in found.items():
        for k in tf.keys():
            ours = released_to_ours(stem, k)
            if ours.endswith(".pos_embed.pe") and ours in seen_pe:
                first = seen_pe[ours]
                if not torch.equal(tf.read(k), found[first[0]].read(first[1])):
                    raise CheckpointMismatchError(str(tf.path), mismatched=[k],
                                                  note="the two position tables of one temporal block differ")
                continue
            if ours in sources:
                raise CheckpointMismatchError(str(tf.path), note=f"two released tensors map to {ours}")
            seen_pe[ours] = (stem, k)
            sources[ours] = (lambda tf=tf, k=k: tf.read(k))
            shapes[ours] = tf.shape(k)
    label = ", ".join(str(tf.path) for tf in found.values())
    model = build_model(config, "meta", dtype)
    defaults = assign_tensors(model, sources, shapes, label, device=device, dtype=dtype,
                              optional=is_position_table, adapter=zero_pad_conv_in(config))
    finish(model, defaults, label, device, dtype)
    for tf in found.values():
        tf.close()
    return model
