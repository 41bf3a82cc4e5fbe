"""An FYEConfig inferred from the tensor shapes of released-layout files."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointMismatchError
from ..networks import FYEConfig
from ..networks.config import MOTION_NORM_GROUPS

log = logging.getLogger(__name__)


def infer_config(shapes: Mapping[str, Mapping[str, tuple[int, ...]]], base: FYEConfig | None = None,
                 **overrides: Any) -> FYEConfig:
    """An FYEConfig from released-layout shapes ``{"referencenet": {...}, "unet": {...}, "lmk_guider": {...}}``.

    Shapes fix channels, depth, attention levels, cross-attention and CLIP widths, temporal length,
    guider widths and covered-latent channels. Head counts and GroupNorm groups leave no trace in
    shapes: they come from ``base`` (SD-1.5 defaults) or ``overrides``, except the temporal layers'
    groups, which the released code fixes at 32 whatever the UNet's (``motion_norm_groups``).
    """
    unet = shapes.get("unet")
    if not unet:
        raise CheckpointMismatchError("unet", note="no unet tensors to infer the architecture from")
    levels = 0
    while f"down_blocks.{levels}.resnets.0.conv1.weight" in unet:
        levels += 1
    if levels == 0:
        raise CheckpointMismatchError("unet", missing=["down_blocks.0.resnets.0.conv1.weight"],
                                      note="not a Follow-Your-Emoji / SD UNet layout")
    boc = tuple(unet[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels))
    lpb = 0
    while f"down_blocks.0.resnets.{lpb}.conv1.weight" in unet:
        lpb += 1
    attn_levels = tuple(f"down_blocks.{i}.attentions.0.proj_in.weight" in unet for i in range(levels))
    proj_in = unet.get("mid_block.attentions.0.proj_in.weight")
    cross = unet.get("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    conv_in = unet["conv_in.weight"]
    pe = [v for k, v in unet.items() if k.endswith("pos_encoder.pe")]
    clip_fc = unet.get("clip_fc.weight")
    guider = shapes.get("lmk_guider") or {}
    guider_channels = None
    if guider:
        blocks = sorted((int(k.split(".")[1]), v) for k, v in guider.items()
                        if k.startswith("blocks.") and k.endswith(".weight"))
        guider_channels = (guider["conv_in.weight"][0], *[v[0] for i, v in blocks if i % 2 == 1])
    cfg = (base or FYEConfig.sd15()).to_dict()
    cfg.update(
        block_out_channels=boc,
        layers_per_block=lpb,
        attention_levels=attn_levels,
        use_linear_projection=proj_in is not None and len(proj_in) == 2,
        in_channels=4,
        cover_channels=conv_in[1] - 4,
        out_channels=unet.get("conv_out.weight", (4,))[0],
        motion_mid_block=any(k.startswith("mid_block.motion_modules.") for k in unet),
        # The released motion modules (AnimateDiff's) never receive the UNet's group count.
        motion_norm_groups=MOTION_NORM_GROUPS,
    )
    if cross is not None:
        cfg["cross_attention_dim"] = cross[1]
    if clip_fc is not None:
        cfg["clip_dim"] = clip_fc[1]
        cfg["cross_attention_dim"] = clip_fc[0]
        cfg["image_prompt"] = "linear"
    if pe:
        cfg["motion_max_len"] = pe[0][1]
    if guider_channels:
        cfg["guider_channels"] = guider_channels
        cfg["guider_in_channels"] = guider["conv_in.weight"][1]
    ref = shapes.get("referencenet") or {}
    cfg["appearance_own_prompt"] = "clip_fc.weight" in ref
    if base is None and boc != FYEConfig.sd15().block_out_channels:
        unset = [k for k in ("attention_heads", "norm_num_groups", "motion_heads") if k not in overrides]
        if unset:
            log.warning("non-SD-1.5 sizes %s: %s taken from SD-1.5 defaults (shapes do not tell them)",
                        boc, ", ".join(unset))
    cfg.update(overrides)
    return FYEConfig.from_dict(cfg)
