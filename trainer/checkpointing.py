"""Training checkpoints: everything a resumed run needs, committed atomically, the last N kept.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_XXXXXXXX/``:

* ``model.safetensors`` — the whole model in the pack's own format (save_model: FYEConfig in the
  metadata), fp32; ``emoji_model.checkpoints.load_model`` reads it as it is.
* ``ema.safetensors`` — the EMA shadows of the trained parameters (when EMA is on).
* ``optimizer.pt`` — the optimizer's state_dict (tensors and numbers only: read with weights_only).
* ``scaler.pt`` — the fp16 gradient scaler's state, when mixed precision is fp16.
* ``rng_<rank>.pt`` — per process: Python, NumPy, torch CPU/CUDA generator states and the noise generator.
* ``state.json`` — format, step, data position (epoch, global batches consumed), the training config,
  the FYEConfig, number of processes, EMA updates; written last.

All files are written into ``.step_XXXXXXXX.tmp/`` by every process, then the main process renames the
folder into place (an atomic rename on one filesystem): a folder named ``step_*`` is always complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoji_model.errors import CheckpointMismatchError, InvalidRequestError

log = logging.getLogger("emoji_model.trainer.checkpointing")

TRAIN_FORMAT = "fye-train-1"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and
             (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from itself or from a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    found = list_checkpoints(p)
    if not found:
        raise InvalidRequestError(f"'{path}' is neither a training checkpoint (no state.json) nor a run folder "
                                  "with checkpoints/step_*")
    return found[-1]


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint, checked for its format."""
    path = Path(checkpoint) / "state.json"
    state = json.loads(path.read_text())
    if state.get("format") != TRAIN_FORMAT:
        raise CheckpointMismatchError(str(path), note=f"format {state.get('format')!r}, expected {TRAIN_FORMAT!r}")
    return state


# -- random states ---------------------------------------------------------------------------------
def rng_state(noise: torch.Generator) -> dict[str, Any]:
    """This process's random states, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "noise": noise.get_state(),
        "noise_device": str(noise.device),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: dict[str, Any], noise: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    noise.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- saving ----------------------------------------------------------------------------------------
def save_checkpoint(accelerator, run_dir: str | os.PathLike, step: int, *, model, optimizer, ema, noise,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` from every process, commit it atomically, prune to the last ``keep``."""
    from emoji_model.checkpoints import save_model
    from safetensors.torch import save_file

    root = checkpoints_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(noise), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_model(model, tmp / "model.safetensors", extra_metadata={"fye_train_step": str(step)})
        if ema is not None:
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"), metadata={"fye_ema_updates": str(ema.updates)})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        scaler = getattr(accelerator, "scaler", None)  # fp16 loss scaling: its scale must survive a resume
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "state.json").write_text(json.dumps({"format": TRAIN_FORMAT, "step": step, **state}, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step written again (a resumed run that stopped where it began)
            trash = root / f".step_{step:08d}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
        log.info("checkpoint step %d -> %s", step, final)
    accelerator.wait_for_everyone()
    return final


# -- loading ---------------------------------------------------------------------------------------
def load_optimizer_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer state_dict of a checkpoint (weights-only load)."""
    return torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)


def load_scaler_state(accelerator, checkpoint: Path) -> None:
    """Restore the fp16 gradient scaler's scale and growth tracker, when the run uses one."""
    scaler = getattr(accelerator, "scaler", None)
    path = checkpoint / "scaler.pt"
    if scaler is not None and path.is_file():
        scaler.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_rng_state(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    """The random states process ``rank`` saved, or None when that process did not exist then."""
    path = checkpoint / f"rng_{rank}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
