"""Checkpoint IO: our safetensors format, the released Follow-Your-Emoji weights, and base weights.

Loading reads as a recipe: read tensors → detect the layout from the keys → map names to ours →
check every name and shape against the network → assign the tensors onto a meta-device model in the
target dtype and device → verify nothing stayed uninitialised. A mismatch raises
:class:`~emoji_model.errors.CheckpointMismatchError` listing missing, unexpected and mis-shaped tensors;
nothing is dropped silently.

Formats
-------
* **Ours**: ``.safetensors`` whose metadata holds ``fye_format`` and the :class:`FYEConfig` as JSON
  (``fye_config``). Either one merged file with keys prefixed ``appearance.``, ``unet.``, ``guider.``,
  ``image_prompt.``, or one file per component (``fye_component`` names it; keys carry no prefix).
* **Released**: ``referencenet.pth``, ``unet.pth``, ``lmk_guider.pth`` (or ``.safetensors`` repacks with
  the same stems), mapped by :func:`released_to_ours`.
* **Base weights** for training or personalisation: SD-1.5 single files (ldm layout,
  ``model.diffusion_model.*``) or diffusers UNet files into the appearance net and the UNet's spatial
  layers; AnimateDiff motion modules into the temporal layers; the CLIP image encoder and the VAE.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointMismatchError, InvalidRequestError, MissingModelError
from .fileio import atomic_path
from .networks import COMPONENTS, FollowYourEmoji, FYEConfig, build_model

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
RELEASED_FILES = {"referencenet": "appearance", "unet": "unet", "lmk_guider": "guider"}
LDM_UNET_PREFIX = "model.diffusion_model."
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")

# -------------------------------------------------------------------------------------------------
# Reading tensors without holding two copies of a file in memory
# -------------------------------------------------------------------------------------------------
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class TensorFile:
    """A checkpoint file read one tensor at a time: safetensors (read in place) or .pth/.ckpt/.bin.

    Safetensors data is read straight into each tensor's storage with ``readinto`` (no memory map, no
    second copy); torch files go through ``torch.load(weights_only=True, mmap=True)``. A truncated or
    corrupt file raises CheckpointMismatchError naming it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingModelError(self.path.name, [str(self.path.parent)], "check the path you gave")
        self.metadata: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._torch: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            self._read_safetensors_header()
        else:
            self._torch = _torch_load(self.path)

    def _read_safetensors_header(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointMismatchError(str(self.path), note="not a safetensors file: shorter than its header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointMismatchError(str(self.path), note=f"not a safetensors file or truncated: header "
                                                                   f"length {n} for a file of {size} bytes")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointMismatchError(str(self.path), note=f"corrupt safetensors header: {exc}") from None
        self.metadata = dict(header.pop("__metadata__", None) or {})
        data_start = 8 + n
        end_max = 0
        for name, info in header.items():
            dtype = _ST_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointMismatchError(str(self.path),
                                              note=f"tensor {name} has unsupported dtype {info.get('dtype')}")
            b, e = info["data_offsets"]
            self._entries[name] = _Entry(dtype, tuple(info["shape"]), data_start + b, data_start + e)
            end_max = max(end_max, e)
        if data_start + end_max > size:
            raise CheckpointMismatchError(
                str(self.path), note=f"the file is truncated: its header declares {data_start + end_max} bytes, "
                                     f"the file has {size}. Download or copy it again.")

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries) if self._torch is None else list(self._torch)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` without reading it."""
        return self._entries[name].shape if self._torch is None else tuple(self._torch[name].shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """All names and shapes."""
        return {k: self.shape(k) for k in self.keys()}

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype of tensor ``name``."""
        return self._entries[name].dtype if self._torch is None else self._torch[name].dtype

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` on the CPU in its stored dtype."""
        if self._torch is not None:
            return self._torch[name]
        entry = self._entries[name]
        nbytes = entry.end - entry.start
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            with open(self.path, "rb") as f:
                f.seek(entry.start)
                got = f.readinto(memoryview(buf.numpy()))
            if got != nbytes:
                raise CheckpointMismatchError(str(self.path), note=f"the file is truncated inside tensor {name}")
        return buf.view(entry.dtype).reshape(entry.shape)

    def close(self) -> None:
        """Drop references to tensors of a loaded torch file."""
        if self._torch is not None:
            self._torch = {}


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure to read becomes one named error
        raise CheckpointMismatchError(
            str(path), note=f"cannot read it as a weights-only torch checkpoint ({type(exc).__name__}: {exc}). "
                            "The file may be truncated, or hold pickled objects other than tensors.") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(str(path), note=f"expected a dict of tensors, found {type(obj).__name__}")
    out = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if skipped:
        log.info("%s: ignoring %d non-tensor entries (%s…)", path.name, len(skipped), skipped[0])
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, on the CPU in its stored dtype."""
    tf = TensorFile(path)
    return {k: tf.read(k) for k in tf.keys()}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other formats)."""
    return TensorFile(path).metadata if Path(path).suffix.lower() == ".safetensors" else {}


# -------------------------------------------------------------------------------------------------
# Assigning tensors onto a meta-device model
# -------------------------------------------------------------------------------------------------
Source = Callable[[], torch.Tensor]


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


def _materialise_defaults(model: torch.nn.Module, names: Iterable[str], device, dtype) -> None:
    """Give still-missing tensors their deterministic defaults (the temporal layers' sinusoid tables)."""
    for name in names:
        module, attr = _module_and_attr(model, name)
        if attr == "pe":
            from diffusers.models.embeddings import SinusoidalPositionalEmbedding

            dim, length = module._buffers["pe"].shape[-1], module._buffers["pe"].shape[-2]
            value = SinusoidalPositionalEmbedding(dim, length).pe
            _assign(model, name, value.to(device=device, dtype=dtype))
        else:
            raise CheckpointMismatchError(str(name), missing=[name])


def _zero_pad_conv_in(cfg: FYEConfig) -> Adapter:
    """conv_in of a checkpoint without the covered-latent channels gets zero weights for them."""

    def fits(name: str, stored: tuple[int, ...], want: tuple[int, ...]) -> bool:
        return (name.endswith("unet.conv_in.weight") and len(stored) == 4 and stored[1] == cfg.in_channels
                and want[1] == cfg.unet_in_channels and stored[0] == want[0] and stored[2:] == want[2:])

    def apply(name: str, tensor: torch.Tensor, want: tuple[int, ...]) -> torch.Tensor:
        pad = tensor.new_zeros(want[0], want[1] - tensor.shape[1], *tensor.shape[2:])
        log.info("conv_in has no covered-latent channels: adding %d zero input channels", pad.shape[1])
        return torch.cat([tensor, pad], dim=1)

    return Adapter(fits, apply)


def _is_position_table(name: str) -> bool:
    return name.endswith(".pos_embed.pe")


# -------------------------------------------------------------------------------------------------
# Our format
# -------------------------------------------------------------------------------------------------
def save_model(model: FollowYourEmoji, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
               components: Iterable[str] = COMPONENTS, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write one merged safetensors file (keys prefixed by component) with the config in its metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for comp in components:
        for k, v in getattr(model, comp).state_dict().items():
            tensors[f"{comp}.{k}"] = _for_saving(v, dtype)
    meta = {"fye_format": FORMAT_VERSION, "fye_config": model.config.to_json(), "fye_component": "all"}
    meta.update(extra_metadata or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def save_components(model: FollowYourEmoji, directory: str | os.PathLike, *,
                    dtype: torch.dtype | None = None) -> list[Path]:
    """Write ``appearance.safetensors``, ``unet.safetensors``, ``guider.safetensors``, ``image_prompt.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for comp in COMPONENTS:
        tensors = {k: _for_saving(v, dtype) for k, v in getattr(model, comp).state_dict().items()}
        meta = {"fye_format": FORMAT_VERSION, "fye_config": model.config.to_json(), "fye_component": comp}
        path = directory / f"{comp}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        out.append(path)
    return out


def _for_saving(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to("cpu").contiguous()


def is_our_format(path: str | os.PathLike) -> bool:
    """True for a safetensors file written by :func:`save_model` / :func:`save_components`."""
    p = Path(path)
    return p.suffix.lower() == ".safetensors" and "fye_config" in TensorFile(p).metadata


def load_model(paths: str | os.PathLike | Iterable[str | os.PathLike], *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, config: FYEConfig | None = None,
               cover_channels: int | None = None, **overrides: Any) -> FollowYourEmoji:
    """Load our format or the released weights (auto-detected) into a ready model in ``dtype`` on ``device``.

    ``paths``: one merged file, the per-component files, a folder holding either, or the three released
    files (or their folder). ``config`` overrides what the files say or what is inferred from shapes;
    ``cover_channels=5`` adds zero-initialised covered-latent inputs to a checkpoint without them;
    ``overrides`` fill what released shapes cannot tell (see :func:`load_released`).
    """
    files = _expand(paths)
    if any(f.stem in RELEASED_FILES for f in files) and not any(is_our_format(f) for f in files):
        return load_released(files, device=device, dtype=dtype, config=config, cover_channels=cover_channels,
                             **overrides)
    if overrides:
        raise InvalidRequestError(f"config overrides {sorted(overrides)} apply to released weights only; "
                                  "our files carry their config")
    return load_ours(files, device=device, dtype=dtype, config=config, cover_channels=cover_channels)


def _expand(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in CHECKPOINT_SUFFIXES)
            if not found:
                raise CheckpointMismatchError(str(p), note="the folder holds no checkpoint files")
            files += found
        else:
            files.append(p)
    return files


def load_ours(files: Iterable[str | os.PathLike], *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, config: FYEConfig | None = None,
              cover_channels: int | None = None) -> FollowYourEmoji:
    """Load our safetensors format (merged or per component)."""
    readers = [TensorFile(f) for f in files]
    for r in readers:
        if "fye_config" not in r.metadata:
            raise CheckpointMismatchError(str(r.path), note="no Follow-Your-Emoji config in its metadata: not a file "
                                                            "written by this pack (convert released weights with "
                                                            "`python -m emoji_model convert`)")
    if config is None:
        configs = {r.metadata["fye_config"] for r in readers}
        if len(configs) > 1:
            raise CheckpointMismatchError(", ".join(str(r.path) for r in readers),
                                          note="the component files were saved with different configs")
        config = FYEConfig.from_json(configs.pop())
    if cover_channels is not None and cover_channels != config.cover_channels:
        config = config.replace(cover_channels=cover_channels)
    sources: dict[str, Source] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, str] = {}
    for r in readers:
        comp = r.metadata.get("fye_component", "all")
        prefix = "" if comp == "all" else f"{comp}."
        if comp != "all" and comp not in COMPONENTS:
            raise CheckpointMismatchError(str(r.path), note=f"unknown component {comp!r}")
        for k in r.keys():
            name = prefix + k
            if name in sources:
                raise CheckpointMismatchError(str(r.path), note=f"tensor {name} is also in {owner[name]}")
            sources[name] = (lambda r=r, k=k: r.read(k))
            shapes[name] = r.shape(k)
            owner[name] = str(r.path)
    label = ", ".join(str(r.path) for r in readers)
    model = build_model(config, "meta", dtype)
    defaults = assign_tensors(model, sources, shapes, label, device=device, dtype=dtype,
                              optional=_is_position_table, adapter=_zero_pad_conv_in(config))
    _finish(model, defaults, label, device, dtype)
    return model


def _finish(model: FollowYourEmoji, defaults: list[str], label: str, device, dtype) -> None:
    _materialise_defaults(model, defaults, device, dtype)
    check_initialised(model, label)
    model.eval()


# -------------------------------------------------------------------------------------------------
# The released weights
# -------------------------------------------------------------------------------------------------
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


def _released_files(files: Iterable[Path]) -> dict[str, TensorFile]:
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
    found = _released_files(_expand(paths))
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
                              optional=_is_position_table, adapter=_zero_pad_conv_in(config))
    _finish(model, defaults, label, device, dtype)
    for tf in found.values():
        tf.close()
    return model


# -------------------------------------------------------------------------------------------------
# Inferring the architecture from tensor shapes
# -------------------------------------------------------------------------------------------------
def infer_config(shapes: Mapping[str, Mapping[str, tuple[int, ...]]], base: FYEConfig | None = None,
                 **overrides: Any) -> FYEConfig:
    """An FYEConfig from released-layout shapes ``{"referencenet": {...}, "unet": {...}, "lmk_guider": {...}}``.

    Shapes fix channels, depth, attention levels, cross-attention and CLIP widths, temporal length,
    guider widths and covered-latent channels. Head counts and GroupNorm groups leave no trace in
    shapes: they come from ``base`` (SD-1.5 defaults) or ``overrides``.
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


# -------------------------------------------------------------------------------------------------
# Base weights: SD-1.5 UNets, AnimateDiff motion modules, CLIP image encoder, VAE
# -------------------------------------------------------------------------------------------------
def _sd_unet_state(tf: TensorFile, cfg: FYEConfig) -> dict[str, str]:
    """Map diffusers-UNet names → file keys for an ldm single file or a diffusers UNet file."""
    keys = tf.keys()
    if any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        # Convert names only: run diffusers' converter over the key names themselves.
        named = {k: k for k in keys if k.startswith(LDM_UNET_PREFIX)}
        converted = convert_ldm_unet_checkpoint(named, {"layers_per_block": cfg.layers_per_block})
        return dict(converted)
    if any(k.startswith("down_blocks.") for k in keys):
        return {k: k for k in keys}
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
    mapping = _sd_unet_state(tf, cfg)
    base_tf = TensorFile(base) if base is not None else None
    base_map = _sd_unet_state(base_tf, cfg) if base_tf is not None else None
    targets = {"appearance": model.appearance, "unet": model.unet}
    updated: list[str] = []
    for comp in into:
        if comp not in targets:
            raise InvalidRequestError(f"load_sd_unet can fill 'appearance' and 'unet', not {comp!r}")
        net = targets[comp]
        expected = expected_tensors(net)
        spatial = {k for k in expected if ".motion_modules." not in f".{k}" and not k.startswith("image_prompt.")}
        unexpected = sorted(k for k in mapping if k not in expected and not _sd_only(k, comp))
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
                if name == "conv_in.weight" and value.shape[1] < current.shape[1]:
                    value = torch.cat([value, value.new_zeros(value.shape[0], current.shape[1] - value.shape[1],
                                                              *value.shape[2:])], 1)
                if tuple(value.shape) != tuple(current.shape):
                    mismatched.append(f"{comp}.{name}: file {tuple(value.shape)} vs network {tuple(current.shape)}")
                    continue
                value = value.to(device=current.device, dtype=torch.float32)
                if base_tf is not None:
                    ref = base_tf.read(base_map[name]).to(device=current.device, dtype=torch.float32)
                    if name == "conv_in.weight" and ref.shape[1] < current.shape[1]:
                        ref = torch.cat([ref, ref.new_zeros(ref.shape[0], current.shape[1] - ref.shape[1],
                                                            *ref.shape[2:])], 1)
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


def load_motion_module(model: FollowYourEmoji, path: str | os.PathLike) -> list[str]:
    """Load AnimateDiff motion modules (e.g. mm_sd_v15_v2.ckpt) into the UNet's temporal layers.

    Position tables of a different length are cut or extended with the same sinusoid. Returns our
    names of the updated tensors.
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
    mismatched = []
    updated = []
    tensors = net.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, key in sources.items():
            current = tensors[name]
            value = tf.read(key)
            if name.endswith(".pe") and value.shape != current.shape:
                from diffusers.models.embeddings import SinusoidalPositionalEmbedding

                value = SinusoidalPositionalEmbedding(current.shape[-1], current.shape[-2]).pe
            if tuple(value.shape) != tuple(current.shape):
                mismatched.append(f"{name}: file {tuple(value.shape)} vs network {tuple(current.shape)}")
                continue
            current.copy_(value.to(device=current.device, dtype=current.dtype))
            updated.append(f"unet.{name}")
    if mismatched:
        raise CheckpointMismatchError(str(tf.path), mismatched=mismatched)
    return updated


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
    "scaling_factor": 0.18215,
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
    reshape = Adapter(lambda n, stored, want: _numel(stored) == _numel(want), lambda n, t, want: t.reshape(want))
    assign_tensors(model, sources, {k: tuple(v.shape) for k, v in fixed.items()}, str(p), device=device,
                   dtype=dtype, adapter=reshape)
    return model.eval()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def iter_component_counts(model: FollowYourEmoji) -> Iterator[tuple[str, int]]:
    """(component, parameter count) for each component."""
    for comp in COMPONENTS:
        yield comp, sum(p.numel() for p in getattr(model, comp).parameters())


def describe(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Format, config, parameter count per component and dtype histogram of checkpoint file(s), from headers."""
    files = _expand(paths)
    readers = [TensorFile(f) for f in files]
    counts = {c: 0 for c in COMPONENTS}
    dtypes: dict[str, int] = {}
    ours = all("fye_config" in r.metadata for r in readers)
    if ours:
        config = FYEConfig.from_json(readers[0].metadata["fye_config"])
        fmt = "fye-safetensors"
    elif any(r.path.stem in RELEASED_FILES for r in readers):
        found = _released_files(files)
        readers = list(found.values())
        config = infer_config({stem: tf.shapes() for stem, tf in found.items()})
        fmt = "released"
    else:
        raise CheckpointMismatchError(", ".join(str(f) for f in files),
                                      note="neither a file of this pack nor the released Follow-Your-Emoji weights")
    for r in readers:
        for k in r.keys():
            if ours:
                comp = r.metadata.get("fye_component", "all")
                name = k if comp == "all" else f"{comp}.{k}"
            else:
                name = released_to_ours(r.path.stem, k)
            key = str(r.dtype(k)).replace("torch.", "")
            dtypes[key] = dtypes.get(key, 0) + 1
            if not name.endswith(".pe"):  # position tables are buffers, not parameters
                counts[name.split(".", 1)[0]] += _numel(r.shape(k))
    return {"format": fmt, "files": [str(r.path) for r in readers], "config": config.to_dict(),
            "parameters": counts, "dtypes": dtypes}
