"""`convert`: the released Follow-Your-Emoji weights → one self-describing safetensors file."""

from __future__ import annotations

import argparse
import logging

NAME = "convert"
HELP = ("convert the released referencenet.pth, unet.pth and lmk_guider.pth (or their safetensors repacks) "
        "into one .safetensors file of this pack, with the network config in its metadata")

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `convert`."""
    parser.add_argument("--released", required=True, metavar="DIR",
                        help="folder holding referencenet, unet and lmk_guider (.pth or .safetensors)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="stored precision (default fp16)")
    parser.add_argument("--split", action="store_true",
                        help="write one file per component into --out (a folder) instead of one merged file")
    parser.add_argument("--cover-channels", type=int, choices=(0, 5), default=None,
                        help="add zero-initialised covered-latent inputs (5) for progressive-strategy training")
    hidden = parser.add_argument_group("sizes that tensor shapes do not reveal (SD-1.5 defaults)")
    hidden.add_argument("--heads", type=int, default=None, help="spatial attention heads (8)")
    hidden.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups of the spatial layers (32)")
    hidden.add_argument("--motion-norm-groups", type=int, default=None,
                        help="GroupNorm groups of the temporal layers (32 in the released code at every size)")
    hidden.add_argument("--motion-heads", type=int, default=None, help="temporal attention heads (8)")


def run(args: argparse.Namespace) -> int:
    """Load, verify and write."""
    import torch

    from ..checkpoints import iter_component_counts, load_released, save_components, save_model

    overrides = {k: v for k, v in (("attention_heads", args.heads), ("norm_num_groups", args.norm_groups),
                                   ("motion_heads", args.motion_heads),
                                   ("motion_norm_groups", args.motion_norm_groups)) if v is not None}
    model = load_released(args.released, device="cpu", dtype=torch.float32, cover_channels=args.cover_channels,
                          **overrides)
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.split:
        paths = save_components(model, args.out, dtype=dtype)
        log.info("wrote %s", ", ".join(str(p) for p in paths))
    else:
        path = save_model(model, args.out, dtype=dtype)
        log.info("wrote %s", path)
    for comp, n in iter_component_counts(model):
        log.info("  %-12s %12d parameters", comp, n)
    return 0
