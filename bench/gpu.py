"""Sampling speed and peak memory at SD-1.5 size on an accelerator: seconds per frame and peak VRAM.

    python bench/gpu.py [--size 512] [--frames 16,64,256] [--dtypes fp16,bf16] [--modes windowed,progressive]
                        [--steps 10] [--released DIR --released-python PY] [--json OUT]
    python bench/gpu.py --smoke        # the same code paths at a tiny size on the CPU (a test runs this)

The networks are SD-1.5-size (``FYEConfig.sd15()``) with random weights, written in this pack's format and
loaded back with ``load_model`` (the path real weights take). The reference is a random latent and random
CLIP tokens (257 × 1024, ViT-L/14's shape); the controls are blank renders (the cost does not depend on
what they show). For every frame count, dtype and mode (``windowed``: one noise schedule, fused context
windows of 16 frames overlapping by 4; ``progressive``: keyframes then gaps, paper 4.3) it prints the
seconds per generated frame (sampling only, synchronised) and the peak memory the accelerator allocated.
With ``--released`` (a checkout of mayuelala/FollowYourEmoji) and a Python that runs it, the released
``VideoPipeline`` runs the same windowed configuration (its own context windows of 16, one pass of
its VAE decoder included) in a separate process, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class BlankControls:
    """Control renders of ``frames`` black frames, drawn on demand (LazyControls' interface)."""

    def __init__(self, frames: int, size: int):
        self.shape = (frames, size, size, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        import numpy as np

        count = len(range(self.shape[0])[index]) if isinstance(index, slice) else len(index)
        return np.zeros((count, *self.shape[1:]), dtype=np.uint8)


def device_and_sync():
    """(torch device, a function that waits for it, peak-memory reset, peak-memory read)."""
    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        return dev, torch.cuda.synchronize, torch.cuda.reset_peak_memory_stats, torch.cuda.max_memory_allocated
    return torch.device("cpu"), (lambda: None), (lambda: None), (lambda: 0)


def ours(args: argparse.Namespace) -> list[dict]:
    """Our sampler on every (frames, dtype, mode); one result dict each."""
    import torch

    sys.path.insert(0, str(REPO))
    from emoji_model.checkpoints import load_model, save_model
    from emoji_model.networks import FYEConfig, build_model
    from emoji_model.pipeline import generate_latents, progressive_latents
    from emoji_model.reference import encode_reference
    from emoji_model.sampling import SamplerSettings

    device, sync, reset_peak, peak = device_and_sync()
    config = FYEConfig.tiny() if args.smoke else FYEConfig.sd15()
    tokens = 5 if args.smoke else 257
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = save_model(build_model(config, "cpu"), Path(tmp) / "random.safetensors", dtype=torch.float16)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, DTYPES[dtype_name])
            model = load_model(path, device=device, dtype=dtype)
            g = torch.Generator().manual_seed(1)
            latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=g)
            clip = torch.randn(1, tokens, config.clip_dim, generator=g)
            ref = encode_reference(model, torch.zeros(args.size, args.size, 3), lambda p: latent, lambda p: clip,
                                   size=(args.size, args.size), device=device, dtype=dtype)
            for frames in (int(f) for f in args.frames.split(",")):
                for mode in args.modes.split(","):
                    settings = SamplerSettings(steps=args.steps, window=min(16, model.max_frames), overlap=4)
                    run = progressive_latents if mode == "progressive" else generate_latents
                    controls = BlankControls(frames, args.size)
                    sync()
                    reset_peak()
                    start = time.perf_counter()
                    out = run(model, ref, controls, settings, device=device, dtype=dtype)
                    sync()
                    took = time.perf_counter() - start
                    if not torch.isfinite(out).all():
                        raise SystemExit(f"non-finite latents: {frames} frames, {dtype_name}, {mode}")
                    results.append({"side": "ours", "frames": frames, "dtype": dtype_name, "mode": mode,
                                    "s_per_frame": took / frames, "peak_gib": peak() / 2**30})
                    print(_line(results[-1], args), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def released(args: argparse.Namespace) -> list[dict]:
    """The released VideoPipeline on the windowed configuration (run in its own process)."""
    import torch

    sys.path[:0] = [str(REPO / "tests" / "fixtures")]
    import record_released_fye as rec

    rec.import_released(args.released)

    device, sync, reset_peak, peak = device_and_sync()
    if args.smoke:
        unet_config = dict(rec.TINY_UNET_CONFIG)
    else:
        unet_config = dict(rec.TINY_UNET_CONFIG, block_out_channels=[320, 640, 1280, 1280], norm_num_groups=32,
                           sample_size=args.size // 8)
    rec.TINY_UNET_CONFIG.update(unet_config)
    config, referencenet, unet, guider = rec.build_released(args.released)
    if not args.smoke:
        from models.guider import Guider

        guider = Guider(conditioning_embedding_channels=320, block_out_channels=(16, 32, 96, 256)).eval()
        rec.TINY_VAE.update(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, layers_per_block=2)
    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dtype_name])
        clip = torch.randn(1, 5 if args.smoke else 257, 1024, device=device, dtype=dtype)
        pipe, _ = rec.released_pipeline(config, referencenet, unet, guider, clip)
        pipe.to(device, dtype)
        for frames in (int(f) for f in args.frames.split(",")):
            import numpy as np

            reference = np.zeros((args.size, args.size, 3), np.uint8)
            controls = np.zeros((frames, args.size, args.size, 3), np.uint8)
            sync()
            reset_peak()
            start = time.perf_counter()
            with torch.no_grad():
                from PIL import Image

                pipe(ref_image=Image.fromarray(reference), lmk_images=[Image.fromarray(c) for c in controls],
                     width=args.size, height=args.size, video_length=frames, num_inference_steps=args.steps,
                     guidance_scale=3.5, generator=torch.Generator(device=device).manual_seed(0),
                     clip_image=torch.zeros(3, 32, 32), context_frames=16, context_overlap=4)
            sync()
            results.append({"side": "released", "frames": frames, "dtype": dtype_name, "mode": "windowed",
                            "s_per_frame": (time.perf_counter() - start) / frames, "peak_gib": peak() / 2**30})
            print(_line(results[-1], args), flush=True)
    return results


def _line(r: dict, args: argparse.Namespace) -> str:
    peak = f"peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] else "peak VRAM n/a (CPU)"
    return (f"{r['side']:<9} {r['mode']:<12} {r['dtype']:<5} {r['frames']:>4} frames: {r['s_per_frame']:.3f} s/frame, "
            f"{peak} ({args.size}px, {args.steps} steps, CFG 3.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", default="16,64,256")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--modes", default="windowed,progressive")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny config, 64 px, 4 and 20 frames, 2 steps, CPU")
    parser.add_argument("--released", type=Path, default=None, help="a checkout of mayuelala/FollowYourEmoji")
    parser.add_argument("--released-python", default=None, help="a Python that runs the released code")
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--side", choices=["ours", "released"], default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.size, args.steps = 64, 2
        args.frames = "4,20" if args.frames == "16,64,256" else args.frames
        args.dtypes = "fp32,bf16" if args.dtypes == "fp16,bf16" else args.dtypes
    if args.side == "released":
        results = released(args)
    else:
        results = ours(args)
        if args.released is not None and (args.released / "models" / "video_pipeline.py").is_file():
            cmd = [args.released_python or sys.executable, str(Path(__file__).resolve()), "--side", "released",
                   "--released", str(args.released), "--size", str(args.size), "--frames", args.frames,
                   "--dtypes", args.dtypes, "--steps", str(args.steps)] + (["--smoke"] if args.smoke else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore"))
            print(done.stdout, end="")
            if done.returncode:
                print(f"the released pipeline failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        elif args.released is not None:
            print(f"no released code at {args.released}: ours only")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
