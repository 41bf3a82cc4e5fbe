"""The frozen encoders beside the networks: the CLIP image encoder (transformers) and the SD VAE (diffusers).

Their configs ship with the pack, so that nothing is fetched from the Hugging Face hub.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..constants import LATENT_SCALE
from ..errors import CheckpointMismatchError
from .assign import Adapter, assign_tensors, expected_tensors
from .reader import TensorFile, read_state_dict

log = logging.getLogger(__name__)

# Configs shipped with the pack so that nothing is fetched from the Hugging Face hub.
CLIP_VIT_L14_VISION_CONFIG: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "projection_dim": 768,
}

SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": LATENT_SCALE,
}


def load_clip_vision(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, config: Mapping[str, Any] | None = None):
    """transformers CLIPVisionModelWithProjection from a local folder (config.json + weights) or one file.

    A single ``.safetensors``/``.bin`` uses ``config``, else a ``config.json`` beside it (the layout of
    sd-image-variations' ``image_encoder/``), else the shipped ViT-L/14 config. Keys of the
    sd-image-variations ``image_encoder`` files load as they are.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointMismatchError(str(p), note="an image-encoder folder needs config.json beside its weights")
        model = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype)
        return model.to(device).eval()
    if config is None and (p.parent / "config.json").is_file():
        config = json.loads((p.parent / "config.json").read_text())
        config = config.get("vision_config", config)
        log.info("image encoder %s: using %s", p.name, p.parent / "config.json")
    cfg = CLIPVisionConfig(**{k: v for k, v in dict(config or CLIP_VIT_L14_VISION_CONFIG).items()
                              if not k.startswith("_") and k not in ("architectures", "transformers_version")})
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    tf = TensorFile(p)
    names = {k: k for k in tf.keys()}
    expected = expected_tensors(model)
    # Some exports omit the (non-persistent in newer transformers) position ids; others prefix nothing.
    sources = {k: (lambda k=k: tf.read(k)) for k in names if k in expected}
    unexpected = sorted(k for k in names if k not in expected and not k.endswith("position_ids"))
    if unexpected:
        raise CheckpointMismatchError(str(p), unexpected=unexpected)
    assign_tensors(model, sources, {k: tf.shape(k) for k in sources}, str(p), device=device, dtype=dtype)
    _fix_nonpersistent_buffers(model, device)
    return model.eval()


def _fix_nonpersistent_buffers(model: torch.nn.Module, device) -> None:
    """Recreate non-persistent buffers left on the meta device (CLIP's position_ids)."""
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "position_ids":
                    mod._buffers[name] = torch.arange(buf.shape[-1], device=device).expand(buf.shape)
                else:
                    raise CheckpointMismatchError(type(mod).__name__, missing=[name])


def load_vae(path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             config: Mapping[str, Any] | None = None):
    """diffusers AutoencoderKL from a local folder, a diffusers-layout file, or an ldm single file (SD VAE)."""
    from diffusers import AutoencoderKL

    p = Path(path)
    if p.is_dir():
        return AutoencoderKL.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype).to(device).eval()
    cfg = dict(config or SD_VAE_CONFIG)
    with torch.device("meta"):
        model = AutoencoderKL(**cfg)
    state = read_state_dict(p)  # a VAE is small (~330 MB in fp32); convert with real tensors
    if not any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, cfg)
    renames = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0."))
    fixed = {}
    for k, v in state.items():
        for old, new in renames:
            k = k.replace(old, new)
        fixed[k] = v
    sources = {k: (lambda v=v: v) for k, v in fixed.items()}
    reshape = Adapter(lambda n, stored, want: math.prod(stored) == math.prod(want), lambda n, t, want: t.reshape(want))
    assign_tensors(model, sources, {k: tuple(v.shape) for k, v in fixed.items()}, str(p), device=device,
                   dtype=dtype, adapter=reshape)
    return model.eval()
