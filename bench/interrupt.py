"""Cancel latency of the sampler: how long after Cancel sampling stops, with and without the per-block checks.

    .venv/bin/python bench/interrupt.py [--size 256] [--frames 12] [--trials 3]

SD-1.5's UNet structure (4 levels, 2 layers per block, attention on three levels, temporal layers)
at a fifth of its widths, on CPU; Cancel is pressed at a random moment of sampling from another
thread, as ComfyUI's server thread does. "Before" is the sampler checking only between windows (the
pack before issue 12); "after" also checks after every resnet, transformer and motion module (the UNet walk's on_block).
Prints one line: the median latencies and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class Cancelled(Exception):
    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()

    import numpy as np
    import torch

    import emoji_model.pipeline as pipeline
    from emoji_model.networks import FYEConfig
    from emoji_model.reference import ReferenceEncoding
    from emoji_model.runtime import StandaloneRuntime
    from emoji_model.sampling import SamplerSettings
    from tiny_fye import random_model

    config = FYEConfig(block_out_channels=(64, 128, 256, 256), attention_heads=4, cross_attention_dim=64,
                       motion_heads=4, guider_channels=(16, 16, 32, 64), clip_dim=48, motion_max_len=32)
    model = random_model(config, seed=0)
    h = w = args.size // 8
    with torch.no_grad():
        latent = torch.randn(1, 4, h, w)
        clip = torch.randn(1, 5, config.clip_dim)
        prompt = model.encode_image_prompt(clip)
        banks = model.appearance_banks(latent, prompt, clip_tokens=clip)
    ref = ReferenceEncoding(latent=latent, clip_tokens=clip, prompt_tokens=prompt,
                            prompt_tokens_uncond=model.encode_image_prompt(torch.zeros_like(clip)), banks=banks,
                            banks_uncond=None, size=(args.size, args.size))
    control = np.zeros((args.frames, args.size, args.size, 3), np.uint8)
    settings = SamplerSettings(steps=50, window=args.frames, overlap=0)

    class CancelRuntime(StandaloneRuntime):
        def __init__(self):
            super().__init__(device="cpu")
            self.pressed = None

        def check_interrupt(self):
            if self.pressed is not None:
                raise Cancelled()

    def latency(checks: bool, delay: float) -> float:
        runtime = CancelRuntime()

        def press():
            time.sleep(delay)
            runtime.pressed = time.perf_counter()

        original = pipeline.block_checks
        if not checks:
            pipeline.block_checks = lambda rt: None  # the UNet walk then calls nothing between its blocks
        try:
            threading.Thread(target=press, daemon=True).start()
            pipeline.generate_latents(model, ref, control, settings, device="cpu", runtime=runtime)
        except Cancelled:
            return time.perf_counter() - runtime.pressed
        finally:
            pipeline.block_checks = original
        raise RuntimeError("sampling ended before Cancel was pressed: raise --trials' delays or the steps")

    # one step's time (one window: one evaluation), for scale
    start = time.perf_counter()
    pipeline.generate_latents(model, ref, control, SamplerSettings(steps=1, window=args.frames, overlap=0),
                              device="cpu", runtime=StandaloneRuntime(device="cpu"))
    step = time.perf_counter() - start
    random.seed(0)
    results = {True: [], False: []}
    for _ in range(args.trials):
        for checks in (False, True):
            results[checks].append(latency(checks, step * (1.0 + 2.0 * random.random())))
    before, after = statistics.median(results[False]), statistics.median(results[True])
    print(f"cancel latency: {after * 1000:.0f} ms with per-block checks vs {before * 1000:.0f} ms checking "
          f"between windows only ({before / after:.0f}x; median of {args.trials}; SD-1.5 structure at 1/5 width, "
          f"{args.frames} frames at {args.size} px, cfg on, CPU; one step {step:.1f} s)")


if __name__ == "__main__":
    main()
