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

    def load_vae(self, path, dtype=None):
        """ComfyUI's own VAE object (VAE Decode takes it), from a file or a diffusers folder.

        A diffusers VAE (a folder, or its weights beside config.json) is built from its config, so
        VAEs of other sizes than SD's load too; any other file is read as ComfyUI's VAE Loader reads it.
        """
        import comfy.sd
        import comfy.utils

        weights, config = diffusers_vae_files(Path(path))
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(weights)),
                           config=None if config is None else ldm_vae_config(config, str(path)))
        vae.throw_exception_if_invalid()
        return vae

    def free_memory(self) -> None:
        """Ask ComfyUI to release cached memory."""
        self._mm.soft_empty_cache()

    def make_bar(self, total: int, desc: str = "") -> ProgressBar:
        """A progress bar shown on the running node in ComfyUI's UI (previews go onto the latest one)."""
        self._bar = ComfyProgressBar(total, desc)
        return self._bar

    def preview(self, latents) -> None:
        """Up to four frames of the current estimate, side by side, as the node's preview image.

        Through the host's own previewer, so the user's preview setting (none, latent2rgb, TAESD) holds.
        """
        bar = getattr(self, "_bar", None)
        if bar is None:
            return
        import latent_preview

        method = latent_preview.args.preview_method
        if getattr(self, "_previewer_for", None) != method:
            import comfy.latent_formats

            self._previewer = latent_preview.get_previewer(self.torch_device(), comfy.latent_formats.SD15())
            self._previewer_for = method
        if self._previewer is None:
            return
        import torch

        frames = latents[0].detach()  # [4, F, h, w]
        picks = torch.linspace(0, frames.shape[1] - 1, min(4, frames.shape[1])).round().long().tolist()
        strip = torch.cat([frames[:, i] for i in picks], dim=-1)[None]  # "c f h w -> 1 c h (f w)"
        image = self._previewer.decode_latent_to_preview_image("JPEG", strip.float())
        bar._comfy.update_absolute(bar._comfy.current, bar._comfy.total, image)

    def notify(self, message: str) -> None:
        """The message on the running node in the UI (and in the log)."""
        super().notify(message)
        try:
            from comfy_execution.utils import get_executing_context
            from server import PromptServer

            context = get_executing_context()
            if context is not None and PromptServer.instance is not None:
                PromptServer.instance.send_progress_text(message, context.node_id)
        except ImportError:  # an older host without node texts: the log has it
            pass

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


def diffusers_vae_files(path: Path) -> tuple[Path, dict | None]:
    """(weights file, diffusers AutoencoderKL config or None) of a VAE folder or file."""
    import json

    from emoji_model.errors import CheckpointMismatchError

    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")
                       and p.stem.startswith("diffusion_pytorch_model"))
        if not found:
            raise CheckpointMismatchError(str(path), note="no diffusion_pytorch_model.safetensors in the VAE folder")
        weights, config_file = found[0], path / "config.json"
    else:
        weights, config_file = path, path.parent / "config.json"
        if not path.stem.startswith("diffusion_pytorch_model"):
            return path, None  # a single-file VAE: ComfyUI's own detection
    if not config_file.is_file():
        return weights, None
    config = json.loads(config_file.read_text())
    return weights, config if config.get("_class_name") == "AutoencoderKL" else None


def ldm_vae_config(config: dict, source: str = "the VAE") -> dict:
    """ComfyUI's VAE config (ldm AutoencoderKL ddconfig) for a diffusers AutoencoderKL config.

    ComfyUI's ldm VAE has GroupNorm(32) everywhere, attention in the middle block, a quant conv on
    each side and one resolution step per level; a diffusers VAE that differs cannot be expressed.
    """
    from emoji_model.errors import CheckpointMismatchError

    channels = [int(c) for c in config["block_out_channels"]]
    ch = channels[0]
    latent = int(config.get("latent_channels", 4))
    problems = []
    if int(config.get("norm_num_groups", 32)) != 32:
        problems.append(f"norm_num_groups is {config.get('norm_num_groups')} (ComfyUI's VAE uses 32)")
    if any(c % 32 or c % ch for c in channels):
        problems.append(f"block_out_channels {channels} are not all multiples of 32 and of {ch}")
    if len(channels) != 4:
        problems.append(f"{len(channels)} levels (ComfyUI's VAE of this kind downsamples by 8: 4 levels)")
    if latent != 4:
        problems.append(f"{latent} latent channels (4 expected)")
    if not config.get("mid_block_add_attention", True):
        problems.append("no attention in the middle block")
    if config.get("act_fn", "silu") != "silu":
        problems.append(f"activation {config.get('act_fn')} (silu expected)")
    if not (config.get("use_quant_conv", True) and config.get("use_post_quant_conv", True)):
        problems.append("no quant_conv / post_quant_conv")
    if problems:
        raise CheckpointMismatchError(source, note="this diffusers VAE cannot be built as ComfyUI's VAE: "
                                      + "; ".join(problems))
    ddconfig = {"double_z": True, "z_channels": latent, "resolution": int(config.get("sample_size", 256)),
                "in_channels": int(config.get("in_channels", 3)), "out_ch": int(config.get("out_channels", 3)),
                "ch": ch, "ch_mult": [c // ch for c in channels],
                "num_res_blocks": int(config.get("layers_per_block", 2)), "attn_resolutions": [], "dropout": 0.0}
    return {"params": {"ddconfig": ddconfig, "embed_dim": latent}}


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


# -- values the host defines: blocked outputs, VIDEO, AUDIO, VAE ------------------------------------

def blocked_output(message: str):
    """An output that stops any node consuming it with ``message`` (ComfyUI's ExecutionBlocker); None standalone.

    For outputs that only exist under a condition (decoded frames without a VAE): nothing is
    computed or cached for them, and a node connected to them fails with the message.
    """
    if not comfy_available():
        return None
    from comfy_execution.graph_utils import ExecutionBlocker

    return ExecutionBlocker(message)


def _is_file_video(video) -> bool:
    # A VIDEO made from tensors (VideoFromComponents) would be re-encoded to give a stream source.
    return type(video).__name__ != "VideoFromComponents" and hasattr(video, "get_stream_source")


def video_frames(video):
    """(frames as uint8 RGB [H,W,3] one by one, exact frame rate as a Fraction, frame count) of a VIDEO.

    A file-backed VIDEO (Load Video) is decoded frame by frame as it is consumed, so the whole video
    never sits in memory as an IMAGE batch.
    """
    from fractions import Fraction

    import torch

    rate = Fraction(video.get_frame_rate())
    if _is_file_video(video):
        from emoji_model.video import iter_video, prefetch

        return prefetch(iter_video(video.get_stream_source())), rate, int(video.get_frame_count())
    images = video.get_components().images
    frames = ((im[..., :3].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy() for im in images)
    return frames, rate, len(images)


def video_audio(video, duration: float | None = None):
    """The AUDIO ({"waveform" [1,C,T], "sample_rate"}) of a VIDEO, cut to ``duration`` seconds; None without."""
    import torch

    if not _is_file_video(video):
        audio = video.get_components().audio
        if audio is None or duration is None:
            return audio
        keep = int(round(duration * int(audio["sample_rate"])))
        return {"waveform": audio["waveform"][..., :keep], "sample_rate": audio["sample_rate"]}
    from emoji_model.video import read_audio

    found = read_audio(video.get_stream_source(), duration)
    if found is None:
        return None
    wave, rate = found
    return {"waveform": torch.from_numpy(wave)[None], "sample_rate": rate}


class StandaloneVideo:
    """The VIDEO value outside ComfyUI (tests, scripts): frames, exact frame rate and audio."""

    def __init__(self, images, frame_rate, audio=None):
        self.images, self.frame_rate, self.audio = images, frame_rate, audio

    def get_components(self):
        """The parts, like ComfyUI's VideoComponents."""
        return self

    def get_frame_rate(self):
        """The exact frame rate."""
        return self.frame_rate

    def get_frame_count(self) -> int:
        """Number of frames."""
        return len(self.images)


def make_video(images, frame_rate, audio=None):
    """A VIDEO of IMAGE frames at an exact frame rate (a Fraction) with optional AUDIO."""
    if not comfy_available():
        return StandaloneVideo(images, frame_rate, audio)
    from comfy_api.latest import InputImpl, Types

    return InputImpl.VideoFromComponents(Types.VideoComponents(images=images, audio=audio, frame_rate=frame_rate))
