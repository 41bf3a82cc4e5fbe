"""`export`: a training checkpoint → one safetensors file in the pack's own format (FYE_LoadModel reads it)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

NAME = "export"
HELP = "write a run's latest (or a given) checkpoint as one model file in the pack's format, optionally its EMA"

log = logging.getLogger("emoji_model.trainer.export")

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `export`."""
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder (its latest checkpoint) or one checkpoint folder")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="the model file to write")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of the trained parameters")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor dtype (default fp32)")


def run(args: argparse.Namespace) -> int:
    """Export and log where it went."""
    import torch

    path = export_checkpoint(args.run, args.out, ema=args.ema, dtype=getattr(torch, DTYPES[args.dtype]))
    log.info("exported -> %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0


def export_checkpoint(run: str | os.PathLike, out: str | os.PathLike, *, ema: bool = False, dtype=None) -> Path:
    """Write ``run``'s checkpoint as ``out`` (save_model: config in the metadata), atomically.

    With ``ema`` the trained parameters take their EMA values; the others are the checkpoint's own.
    The training step, stage and whether EMA was used are added to the metadata.
    """
    import torch

    from emoji_model.checkpoints import load_model, read_state_dict, save_model
    from emoji_model.errors import CheckpointMismatchError, InvalidRequestError

    from .checkpointing import read_state, resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    state = read_state(ckpt)
    model = load_model(ckpt / "model.safetensors", device="cpu", dtype=torch.float32)
    if ema:
        ema_file = ckpt / "ema.safetensors"
        if not ema_file.is_file():
            raise InvalidRequestError(f"checkpoint '{ckpt}' has no EMA (the run had ema_decay: 0); export without --ema")
        shadows = read_state_dict(ema_file)
        params = dict(model.named_parameters())
        unexpected = sorted(k for k in shadows if k not in params)
        if unexpected:
            raise CheckpointMismatchError(str(ema_file), unexpected=unexpected)
        with torch.no_grad():
            for k, v in shadows.items():
                params[k].copy_(v)
    out = Path(out)
    meta = {"fye_trained_steps": str(state["step"]), "fye_stage": str(state.get("stage", "")),
            "fye_ema": "1" if ema else "0"}
    resolution = _training_size(state.get("train_config", {}).get("dataset"))
    if resolution:
        meta["fye_resolution"] = str(resolution)  # the size `evaluate` and the demo generate at by default
    save_model(model, out, dtype=dtype, extra_metadata=meta)  # written atomically
    log.info("step %d of %s%s", state["step"], ckpt, " (EMA)" if ema else "")
    return out


def _training_size(dataset: str | None) -> int | None:
    """The side of the training clips, from the run's dataset index (None when it is not at hand)."""
    from emoji_model.errors import InvalidRequestError

    from .data import load_index

    if not dataset:
        return None
    try:
        return int(load_index(dataset)["size"])
    except (InvalidRequestError, OSError, KeyError, ValueError):
        return None
