"""The released code's recorded outputs at a tiny size (tests/fixtures/released_tiny, see record_released_fye.py).

``weights.npz`` holds the released-layout tensors of ``referencenet``, ``unet`` and ``lmk_guider`` as int8
codes with a power-of-two scale (exact in fp16 and fp32); :func:`write_released` turns them back into the
three released files. ``outputs.npz`` holds the inputs and what the released networks and pipeline
computed from them; ``recording.json`` the configuration they ran with.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "released_tiny"
# What the tiny UNet config says and tensor shapes do not: sd-image-variations' attention_head_dim (8 heads
# in this diffusers generation), its norm_num_groups (8 here) and infer.yaml's 8 temporal heads.
HIDDEN = {"attention_heads": 8, "norm_num_groups": 8, "motion_heads": 8}


@functools.cache
def recording() -> dict:
    """The configuration the released code ran with."""
    return json.loads((FIXTURE / "recording.json").read_text())


@functools.cache
def released_tensors() -> dict[str, dict[str, torch.Tensor]]:
    """{released file stem: {released name: float32 tensor}}."""
    out: dict[str, dict[str, torch.Tensor]] = {"referencenet": {}, "unet": {}, "lmk_guider": {}}
    with np.load(FIXTURE / "weights.npz") as data:
        for key in data.files:
            kind, stem, name = key.split("/", 2)
            if kind == "codes":
                scale, offset = data[f"scale/{stem}/{name}"]
                out[stem][name] = torch.from_numpy(offset + scale * data[key].astype(np.float32)).float()
            elif kind == "buffer":
                out[stem][name] = torch.from_numpy(data[key]).float()
    return out


@functools.cache
def outputs() -> dict[str, torch.Tensor]:
    """Inputs and recorded outputs (see record_released_fye.py for each name)."""
    with np.load(FIXTURE / "outputs.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@functools.cache
def inputs() -> dict[str, np.ndarray]:
    """The reference portrait uint8 [64,64,3] and the control renders uint8 [16,64,64,3] the run was given."""
    with np.load(FIXTURE / "inputs.npz") as data:
        return {k: data[k] for k in data.files}


def write_released(directory: Path, fmt: str = "pth") -> Path:
    """The three released files (``torch.save`` .pth, or safetensors repacks) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, tensors in released_tensors().items():
        if fmt == "pth":
            torch.save(dict(tensors), directory / f"{stem}.pth")
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / f"{stem}.safetensors"))
    return directory


def banks() -> list[torch.Tensor]:
    """The referencenet's recorded banks [2, L_i, C_i] (uncond, cond), in UNet order."""
    out = outputs()
    return [out[f"forward_bank_{i}"] for i in range(sum(k.startswith("forward_bank_") for k in out))]
