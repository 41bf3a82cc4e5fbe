"""AnimateDiff motion modules (e.g. ``mm_sd_v15_v2.ckpt``) into the denoising UNet's temporal layers."""

from __future__ import annotations

import logging
import os

import torch

from ..errors import CheckpointMismatchError, InvalidRequestError
from ..networks import MOTION_NORM_GROUPS, FollowYourEmoji
from .assign import expected_tensors, sinusoid_table
from .reader import TensorFile
from .released import motion_to_ours

log = logging.getLogger(__name__)


def load_motion_module(model: FollowYourEmoji, path: str | os.PathLike) -> list[str]:
    """Load AnimateDiff motion modules (e.g. mm_sd_v15_v2.ckpt) into the UNet's temporal layers.

    Position tables of a different length are cut or extended with the same sinusoid. AnimateDiff's
    modules normalise with 32 GroupNorm groups; a model whose temporal layers use another count is
    switched to 32 (``config.motion_norm_groups``), with a warning. Returns our names of the updated tensors.
    """
    tf = TensorFile(path)
    net = model.unet
    expected = expected_tensors(net)
    temporal = {k for k in expected if ".motion_modules." in f".{k}"}
    sources: dict[str, str] = {}
    unexpected = []
    for k in tf.keys():
        ours = motion_to_ours(k)
        if ours not in temporal:
            unexpected.append(k)
        elif ours not in sources:
            sources[ours] = k
    missing = sorted(k for k in temporal if k not in sources)
    if unexpected or missing:
        note = ""
        if missing and not any(k.startswith("mid_block.") for k in sources) and model.config.motion_mid_block:
            note = "the file has no mid-block motion module (AnimateDiff v1); only v2-style modules fit"
        raise CheckpointMismatchError(str(tf.path), missing=missing, unexpected=unexpected, note=note)
    before = model.config.motion_norm_groups
    if before != MOTION_NORM_GROUPS:
        try:
            model.set_motion_norm_groups(MOTION_NORM_GROUPS)
        except InvalidRequestError as exc:
            raise CheckpointMismatchError(str(tf.path), note=f"AnimateDiff motion modules normalise with "
                                          f"{MOTION_NORM_GROUPS} groups, which these channels cannot hold: {exc}"
                                          ) from exc
        log.warning("%s: temporal layers switched from %d to %d GroupNorm groups, the count AnimateDiff's motion "
                    "modules were trained with", tf.path.name, before, MOTION_NORM_GROUPS)
    mismatched = []
    updated = []
    tensors = net.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, key in sources.items():
            current = tensors[name]
            value = tf.read(key)
            if name.endswith(".pe") and value.shape != current.shape:
                value = sinusoid_table(current)
            if tuple(value.shape) != tuple(current.shape):
                mismatched.append(f"{name}: file {tuple(value.shape)} vs network {tuple(current.shape)}")
                continue
            current.copy_(value.to(device=current.device, dtype=current.dtype))
            updated.append(f"unet.{name}")
    if mismatched:
        raise CheckpointMismatchError(str(tf.path), mismatched=mismatched)
    return updated
