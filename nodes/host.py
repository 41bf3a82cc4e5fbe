"""The one place that talks to ComfyUI: devices, model management, progress, interrupts, folders.

Inside ComfyUI, :func:`get_runtime` returns a :class:`ComfyRuntime` that answers through the host.
Anywhere else (a plain Python process, the tests) it returns the library's standalone runtime, so
node code runs the same way in both modes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from emoji_model.runtime import MODEL_KINDS, ProgressBar, StandaloneRuntime, default_runtime

log = logging.getLogger("emoji_model.host")

# Folders this pack adds under ComfyUI's models directory.
PACK_FOLDERS = ("follow_your_emoji", "mediapipe", "animatediff_models")


def comfy_available() -> bool:
    """True when ComfyUI's modules can be imported (we are running inside the host)."""
    try:
        import comfy.model_management  # noqa: F401
        import folder_paths  # noqa: F401
    except ImportError:
        return False
    return True


class ComfyProgressBar(ProgressBar):
    """A terminal bar that also drives ComfyUI's progress bar on the running node."""

    def __init__(self, total: int, desc: str = ""):
        import comfy.utils

        super().__init__(total, desc)
        self._comfy = comfy.utils.ProgressBar(self.total)

    def _report(self) -> None:
        self._comfy.update_absolute(self.current, self.total)


class ComfyRuntime(StandaloneRuntime):
    """Answers the runtime's questions through ComfyUI's model management and folder_paths."""

    name = "comfyui"

    def __init__(self) -> None:
        super().__init__()
        import comfy.model_management as mm
        import folder_paths

        self._mm = mm
        self._fp = folder_paths

    def torch_device(self):
        """ComfyUI's compute device (respects --cpu, --gpu-only, device selection)."""
        return self._mm.get_torch_device()

    def offload_device(self):
        """Where ComfyUI parks diffusion weights between runs."""
        return self._mm.unet_offload_device()

    def choose_dtype(self, requested: str = "auto"):
        """'auto' follows ComfyUI's own fp16/bf16 decision for the device."""
        import torch

        if requested != "auto":
            return super().choose_dtype(requested)
        dev = self.torch_device()
        if self._mm.should_use_bf16(dev):
            return torch.bfloat16
        if self._mm.should_use_fp16(dev):
            return torch.float16
        return torch.float32

    def manage(self, module: Any) -> Any:
        """Wrap ``module`` so that ComfyUI's model management can load and offload it."""
        import comfy.model_patcher

        return comfy.model_patcher.ModelPatcher(module, load_device=self.torch_device(),
                                                offload_device=self.offload_device())

    def load_model(self, module: Any, device=None, memory_required: int = 0) -> Any:
        """Load a managed model wholly onto the compute device (evicting others first); returns the module.

        A full load, because ComfyUI's partial (low-VRAM) load only moves modules built from its own
        cast-weight layers and would leave ours split across devices; ``memory_required`` (bytes of
        activations) lets the host evict other models instead of the run failing.
        """
        if hasattr(module, "model") and hasattr(module, "load_device"):
            self._mm.load_models_gpu([module], memory_required=memory_required, force_full_load=True)
            return module.model
        return super().load_model(module, device)

    def free_memory(self) -> None:
        """Ask ComfyUI to release cached memory."""
        self._mm.soft_empty_cache()

    def progress(self, total: int, desc: str = "") -> ProgressBar:
        """A progress bar shown on the running node in ComfyUI's UI."""
        return ComfyProgressBar(total, desc)

    def check_interrupt(self) -> None:
        """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
        self._mm.throw_exception_if_processing_interrupted()

    def notify(self, text: str) -> None:
        """Logged, and shown on the running node in ComfyUI's UI (the host's progress text)."""
        super().notify(text)
        try:
            from comfy_execution.utils import get_executing_context
            from server import PromptServer
        except ImportError:
            return
        context = get_executing_context()
        if context is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)

    def output_dir(self) -> Path:
        """ComfyUI's output folder."""
        return Path(self._fp.get_output_directory())

    def input_dir(self) -> Path:
        """ComfyUI's input folder."""
        return Path(self._fp.get_input_directory())

    def model_folders(self, kind: str) -> list[Path]:
        """ComfyUI's folders for ``kind`` (including extra_model_paths.yaml entries)."""
        folder = MODEL_KINDS[kind].folder
        try:
            paths = self._fp.get_folder_paths(folder)
        except KeyError:
            paths = []
        return [Path(p) for p in paths] + super().model_folders(kind)

    def list_models(self, kind: str) -> list[str]:
        """File names of ``kind`` as ComfyUI lists them for combo inputs."""
        try:
            names = list(self._fp.get_filename_list(MODEL_KINDS[kind].folder))
        except KeyError:
            names = []
        return names + [n for n in super().list_models(kind) if n not in names]


def register_model_folders() -> None:
    """Add models/follow_your_emoji, models/mediapipe and models/animatediff_models to ComfyUI."""
    if not comfy_available():
        return
    import folder_paths

    for name in PACK_FOLDERS:
        exts = set(MODEL_KINDS[name].extensions)
        path = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], exts)


_comfy_runtime: ComfyRuntime | None = None


def get_runtime() -> StandaloneRuntime:
    """The runtime for node code: ComfyUI's when inside the host, the standalone one otherwise."""
    global _comfy_runtime
    if comfy_available():
        if _comfy_runtime is None:
            _comfy_runtime = ComfyRuntime()
        return _comfy_runtime
    return default_runtime()
