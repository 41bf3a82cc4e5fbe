"""Assigning checked tensors onto a meta-device model, one at a time, in the target dtype and device."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointMismatchError
from ..networks import FYEConfig

log = logging.getLogger(__name__)

Source = Callable[[], torch.Tensor]
"""A zero-argument reader of one stored tensor (read only when the tensor is assigned)."""


def _module_and_attr(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    *path, attr = name.split(".")
    module = root
    for p in path:
        module = getattr(module, p)
    return module, attr


def _assign(root: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module, attr = _module_and_attr(root, name)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        raise KeyError(name)


def expected_tensors(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every parameter and persistent buffer of ``model``."""
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


@dataclass(frozen=True)
class Adapter:
    """A tolerated shape difference: ``fits(name, stored_shape, wanted_shape)`` and ``apply(name, tensor, wanted)``."""

    fits: Callable[[str, tuple[int, ...], tuple[int, ...]], bool]
    apply: Callable[[str, torch.Tensor, tuple[int, ...]], torch.Tensor]


def assign_tensors(model: torch.nn.Module, sources: Mapping[str, Source], shapes: Mapping[str, tuple[int, ...]],
                   source_name: str, *, device: torch.device | str, dtype: torch.dtype,
                   optional: Callable[[str], bool] = lambda name: False, adapter: Adapter | None = None,
                   ) -> list[str]:
    """Assign tensors (by our names) onto a meta-device ``model``; check all names and shapes first.

    ``sources`` maps our names to zero-argument readers and ``shapes`` gives their stored shapes, so
    that every problem is reported at once before anything is read, and then one tensor at a time is
    materialised, converted to ``dtype`` and moved to ``device``. Tensors for which ``optional(name)``
    holds may be absent; their names are returned for the caller to fill. ``adapter`` tolerates a known
    shape difference (conv_in without the covered-latent channels).
    """
    expected = expected_tensors(model)
    unexpected = sorted(k for k in sources if k not in expected)
    missing = sorted(k for k in expected if k not in sources and not optional(k))
    mismatched = []
    for name in sorted(k for k in sources if k in expected):
        stored, want = tuple(shapes[name]), expected[name]
        if stored != want and not (adapter is not None and adapter.fits(name, stored, want)):
            mismatched.append(f"{name}: file {stored} vs network {want}")
    if unexpected or missing or mismatched:
        raise CheckpointMismatchError(source_name, missing=missing, unexpected=unexpected, mismatched=mismatched)
    device = torch.device(device)
    for name, read in sources.items():
        tensor = read()
        want = expected[name]
        if tuple(tensor.shape) != want:
            tensor = adapter.apply(name, tensor, want)
        target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
        _assign(model, name, tensor.to(device=device, dtype=target_dtype, copy=False))
        del tensor
    return sorted(k for k in expected if k not in sources)


def check_initialised(model: torch.nn.Module, source_name: str) -> None:
    """Raise CheckpointMismatchError if any parameter or buffer is still on the meta device."""
    left = [k for k, v in model.state_dict(keep_vars=True).items() if v.is_meta]
    left += [f"{m}.{k}" for m, mod in model.named_modules() for k, b in mod._buffers.items()
             if b is not None and b.is_meta and f"{m}.{k}" not in left]
    if left:
        raise CheckpointMismatchError(source_name, missing=left,
                                      note="these tensors were not in the checkpoint and have no default")


def sinusoid_table(like: torch.Tensor) -> torch.Tensor:
    """The temporal layers' position table [1, length, dim] for a table of ``like``'s shape (AnimateDiff's)."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    return SinusoidalPositionalEmbedding(like.shape[-1], like.shape[-2]).pe


def materialise_defaults(model: torch.nn.Module, names: Iterable[str], device, dtype) -> None:
    """Give still-missing tensors their deterministic defaults (the temporal layers' sinusoid tables)."""
    for name in names:
        module, attr = _module_and_attr(model, name)
        if attr != "pe":
            raise CheckpointMismatchError(str(name), missing=[name])
        _assign(model, name, sinusoid_table(module._buffers["pe"]).to(device=device, dtype=dtype))


def finish(model: torch.nn.Module, defaults: list[str], label: str, device, dtype) -> None:
    """Fill the defaults, check that nothing stayed on the meta device, switch to eval mode."""
    materialise_defaults(model, defaults, device, dtype)
    check_initialised(model, label)
    model.eval()


def zero_pad_conv_in(cfg: FYEConfig) -> Adapter:
    """conv_in of a checkpoint without the covered-latent channels gets zero weights for them."""

    def fits(name: str, stored: tuple[int, ...], want: tuple[int, ...]) -> bool:
        return (name.endswith("unet.conv_in.weight") and len(stored) == 4 and stored[1] == cfg.in_channels
                and want[1] == cfg.unet_in_channels and stored[0] == want[0] and stored[2:] == want[2:])

    def apply(name: str, tensor: torch.Tensor, want: tuple[int, ...]) -> torch.Tensor:
        log.info("conv_in has no covered-latent channels: adding %d zero input channels", want[1] - tensor.shape[1])
        return pad_input_channels(tensor, want[1])

    return Adapter(fits, apply)


def pad_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A conv weight [O, I, k, k] with zero input channels appended up to ``channels`` (unchanged if it has them)."""
    if weight.shape[1] >= channels:
        return weight
    pad = weight.new_zeros(weight.shape[0], channels - weight.shape[1], *weight.shape[2:])
    return torch.cat([weight, pad], dim=1)


def is_position_table(name: str) -> bool:
    """True for the temporal layers' sinusoid tables, which a checkpoint may leave out."""
    return name.endswith(".pos_embed.pe")
