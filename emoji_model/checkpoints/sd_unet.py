"""SD-1.5 UNet weights (ldm single files or diffusers UNet files) into the appearance net and the UNet.

An ldm single file (``model.diffusion_model.*``, the layout of ``v1-5-pruned.safetensors`` and of
personalised fine-tunes) names its blocks by position (``input_blocks.N``, ``middle_block.N``,
``output_blocks.N``); :func:`ldm_unet_names` builds the table from those positions to diffusers' names
once per configuration, from the UNet's structure alone (``tests/test_checkpoints.py`` pins it against
ComfyUI's table for SD-1.5, recorded in ``tests/fixtures/sd15_ldm_unet_keys.json``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from ..errors import CheckpointMismatchError, InvalidRequestError
from ..networks import FollowYourEmoji, FYEConfig
from .assign import expected_tensors, pad_input_channels
from .reader import TensorFile

LDM_UNET_PREFIX = "model.diffusion_model."

# Layers inside an ldm ResBlock → diffusers' ResnetBlock2D.
_LDM_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_LDM_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
            "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}


def ldm_unet_blocks(cfg: FYEConfig) -> dict[str, tuple[str, bool]]:
    """ldm module path → (diffusers module path, is a resnet) for every block of the UNet of ``cfg``.

    ldm numbers the down path's modules 1.. in order (``layers_per_block`` resnet[+attention] pairs per
    level, then the downsampler), the middle block 0..2, and the up path from the lowest resolution,
    ``layers_per_block + 1`` pairs per level, the upsampler sitting in the level's last module.
    """
    per = cfg.layers_per_block + 1
    table = {k: (v, False) for k, v in _LDM_TOP.items()}
    for i, attn in enumerate(cfg.attention_levels):
        for j in range(cfg.layers_per_block):
            n = 1 + i * per + j
            table[f"input_blocks.{n}.0"] = (f"down_blocks.{i}.resnets.{j}", True)
            if attn:
                table[f"input_blocks.{n}.1"] = (f"down_blocks.{i}.attentions.{j}", False)
        if i < cfg.levels - 1:
            table[f"input_blocks.{(i + 1) * per}.0.op"] = (f"down_blocks.{i}.downsamplers.0.conv", False)
    table["middle_block.0"] = ("mid_block.resnets.0", True)
    table["middle_block.1"] = ("mid_block.attentions.0", False)
    table["middle_block.2"] = ("mid_block.resnets.1", True)
    for b, attn in enumerate(reversed(cfg.attention_levels)):
        for j in range(per):
            n = b * per + j
            table[f"output_blocks.{n}.0"] = (f"up_blocks.{b}.resnets.{j}", True)
            if attn:
                table[f"output_blocks.{n}.1"] = (f"up_blocks.{b}.attentions.{j}", False)
        if b < cfg.levels - 1:
            table[f"output_blocks.{b * per + per - 1}.{2 if attn else 1}.conv"] = (f"up_blocks.{b}.upsamplers.0.conv",
                                                                                False)
    return table


def ldm_unet_names(keys: Iterable[str], cfg: FYEConfig) -> tuple[dict[str, str], list[str]]:
    """({diffusers name: ldm key}, ldm keys that fit no block) for the ``model.diffusion_model.*`` keys of a file."""
    blocks = ldm_unet_blocks(cfg)
    names: dict[str, str] = {}
    unmapped: list[str] = []
    for key in keys:
        if not key.startswith(LDM_UNET_PREFIX):
            continue  # the text encoder and the VAE of a full SD checkpoint
        parts = key[len(LDM_UNET_PREFIX):].split(".")
        for n in range(len(parts) - 1, 0, -1):  # the longest block path that names this tensor
            found = blocks.get(".".join(parts[:n]))
            if found is not None:
                target, resnet = found
                rest = ".".join(parts[n:])
                if resnet:
                    rest = _resnet_layer(rest)
                names[f"{target}.{rest}"] = key
                break
        else:
            unmapped.append(key)
    return names, unmapped


def _resnet_layer(rest: str) -> str:
    for old, new in _LDM_RESNET.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def sd_unet_names(tf: TensorFile, cfg: FYEConfig) -> tuple[dict[str, str], list[str]]:
    """({diffusers-UNet name: file key}, file keys that name no UNet tensor) of an ldm single file or diffusers UNet."""
    keys = tf.keys()
    if any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return ldm_unet_names(keys, cfg)
    if any(k.startswith("down_blocks.") for k in keys):
        return {k: k for k in keys}, []
    raise CheckpointMismatchError(str(tf.path), note="neither an SD single-file checkpoint (model.diffusion_model.*) "
                                                     "nor a diffusers UNet")


def load_sd_unet(model: FollowYourEmoji, path: str | os.PathLike, *, into: Iterable[str] = ("appearance", "unet"),
                 base: str | os.PathLike | None = None, weight: float = 1.0) -> list[str]:
    """Load an SD-1.5 UNet (ldm single file or diffusers layout) into the appearance net / UNet spatial layers.

    Without ``base`` the spatial weights are replaced (training from SD or a personalised model). With
    ``base`` (the SD-1.5 the personalised model was tuned from) the difference is added instead:
    w ← w + weight·(w_personal − w_base), keeping what Follow-Your-Emoji learned. The temporal layers,
    guider and image prompts are not touched. Returns the names of our tensors that were updated.
    """
    cfg = model.config
    tf = TensorFile(path)
    mapping, unmapped = sd_unet_names(tf, cfg)
    base_tf = TensorFile(base) if base is not None else None
    base_map = sd_unet_names(base_tf, cfg)[0] if base_tf is not None else None
    targets = {"appearance": model.appearance, "unet": model.unet}
    updated: list[str] = []
    for comp in into:
        if comp not in targets:
            raise InvalidRequestError(f"load_sd_unet can fill 'appearance' and 'unet', not {comp!r}")
        net = targets[comp]
        expected = expected_tensors(net)
        spatial = {k for k in expected if ".motion_modules." not in f".{k}" and not k.startswith("image_prompt.")}
        unexpected = sorted([k for k in mapping if k not in expected and not _sd_only(k, comp)] + unmapped)
        missing = sorted(k for k in spatial if k not in mapping)
        if unexpected or missing:
            raise CheckpointMismatchError(str(tf.path), missing=[f"{comp}.{k}" for k in missing],
                                          unexpected=unexpected)
        mismatched = []
        tensors = net.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in sorted(spatial):
                current = tensors[name]
                value = tf.read(mapping[name])
                if name == "conv_in.weight":
                    value = pad_input_channels(value, current.shape[1])
                if tuple(value.shape) != tuple(current.shape):
                    mismatched.append(f"{comp}.{name}: file {tuple(value.shape)} vs network {tuple(current.shape)}")
                    continue
                value = value.to(device=current.device, dtype=torch.float32)
                if base_tf is not None:
                    ref = base_tf.read(base_map[name]).to(device=current.device, dtype=torch.float32)
                    if name == "conv_in.weight":
                        ref = pad_input_channels(ref, current.shape[1])
                    value = current.float() + weight * (value - ref)
                current.copy_(value.to(current.dtype))
                updated.append(f"{comp}.{name}")
        if mismatched:
            raise CheckpointMismatchError(str(tf.path), mismatched=mismatched)
    return updated


def _sd_only(name: str, comp: str) -> bool:
    """SD tensors that the appearance net does not have (its head and last block's unused layers)."""
    if comp != "appearance":
        return False
    if name.startswith(("conv_norm_out.", "conv_out.")):
        return True
    return ".transformer_blocks." in name and not name.endswith((".norm1.weight", ".norm1.bias")) \
        and name.startswith("up_blocks.")
