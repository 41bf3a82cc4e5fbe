"""Checks run inside a real ComfyUI's Python (started by tests/test_comfyui_host.py, cwd = the ComfyUI source).

    python host_checks.py import-time PACK_DIR   the pack's import time at host start, and what it adds
    python host_checks.py vae PACK_DIR OUT_DIR   the pack's VAE loader against diffusers, on a VAE it builds
    python host_checks.py config PACK_DIR        what ComfyUI's own parser reads from the pack's pyproject.toml

Each prints one JSON line starting with RESULT. The pack is loaded exactly as ComfyUI's
nodes.load_custom_node loads a custom-node folder (by file location, under its path as module name).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

HEAVY = ("diffusers", "transformers", "mediapipe", "accelerate", "cv2", "skimage", "scipy", "einops")


def _host_modules() -> None:
    """Import what ComfyUI has imported when it reaches the custom nodes."""
    import torch

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 — the CPU torch with the registry's CUDA torchvision (see the launcher)
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    sys.path.insert(0, os.getcwd())
    import comfy.options

    sys.argv = [sys.argv[0], "--cpu"]  # as the host tests start ComfyUI
    comfy.options.enable_args_parsing(True)
    import comfy.model_management  # noqa: F401
    import folder_paths  # noqa: F401
    import nodes  # noqa: F401  (ComfyUI's own nodes.py)


def _load_pack(pack_dir: str):
    name = pack_dir.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, name


def import_time(pack_dir: str) -> dict:
    """Milliseconds the pack's registration takes once the host is up, and the heavy modules it adds."""
    _host_modules()
    before = set(sys.modules)
    start = time.perf_counter()
    module, _ = _load_pack(pack_dir)
    ms = (time.perf_counter() - start) * 1000
    added = set(sys.modules) - before
    return {"ms": ms, "nodes": len(module.NODE_CLASS_MAPPINGS),
            "heavy_added": sorted(m for m in added if m.split(".")[0] in HEAVY),
            "host_had": sorted(m for m in HEAVY if m in before)}


def vae(pack_dir: str, out_dir: str) -> dict:
    """Decode and encode through the pack's loader (ComfyUI's VAE) and through diffusers: max differences."""
    _host_modules()
    import torch
    from diffusers import AutoencoderKL

    _, name = _load_pack(pack_dir)
    host = sys.modules[name + ".nodes.host"]
    torch.manual_seed(0)
    # The shape of VAE ComfyUI's ldm AutoencoderKL can hold: 32-group norms, 4 levels (÷8), 4 latents.
    ref = AutoencoderKL(block_out_channels=[32, 32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=32, sample_size=64).eval()
    with torch.no_grad():
        for p in ref.parameters():  # away from the zero-ish init, so that every layer matters
            p.add_(0.05 * torch.randn_like(p))
    folder = os.path.join(out_dir, "tiny_vae")
    ref.save_pretrained(folder)
    loaded = host.get_runtime().load_vae(folder)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_dec = ((ref.decode(latents).sample.movedim(1, -1) + 1) / 2).clamp(0, 1)
        want_enc = ref.encode(images.movedim(-1, 1) * 2 - 1).latent_dist.mean
        got_dec = loaded.decode(latents).reshape(want_dec.shape).float()
        got_enc = loaded.encode(images).float()
    return {"type": f"{type(loaded).__module__}.{type(loaded).__name__}",
            "decode_max_diff": float((got_dec - want_dec).abs().max()),
            "encode_max_diff": float((got_enc - want_enc).abs().max()),
            "decode_scale": float(want_dec.std()), "encode_scale": float(want_enc.std())}


def config(pack_dir: str) -> dict:
    """The pack's configuration as ComfyUI (and its registry tooling) parses it."""
    sys.path.insert(0, os.getcwd())
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(pack_dir)
    project, comfy = cfg.project, cfg.tool_comfy
    return {"name": project.name, "license": project.license.text or project.license.file,
            "homepage": project.urls.homepage, "requires_comfyui": project.supported_comfyui_version,
            "os": project.supported_os, "accelerators": project.supported_accelerators,
            "publisher": comfy.publisher_id, "display_name": comfy.display_name, "icon": comfy.icon,
            "requires_python": project.requires_python}


if __name__ == "__main__":
    check, args = sys.argv[1], sys.argv[2:]
    result = {"import-time": import_time, "vae": vae, "config": config}[check](*args)
    print("RESULT" + json.dumps(result), flush=True)
