"""Sampler figures, tiny config on this machine's CPU (full SD-1.5 figures need a GPU):

1. overhead of the sampler over the bare UNet forward on the same batches (target <= 10%);
2. peak memory of a 256-frame track against a 32-frame track at the same window (target <= 1.5x);
3. frames per second of the whole `animate` job, with its configuration.

Run: python bench/sampler.py [--size 128] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _inputs(frames: int, size: int):
    """Tiny model, reference encoding and real control renders (astronaut aligned to the driving video)."""
    import numpy as np
    from skimage import data

    from emoji_model.align import align_motion
    from emoji_model.pipeline import reference_controls
    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from landmark_inputs import astronaut_track, driving_track
    from tiny_fye import random_model, tiny_clip, tiny_vae

    model, vae = random_model(seed=1), tiny_vae()
    ref = encode_reference(model, data.astronaut(), vae_encoder_from_diffusers(vae),
                           clip_encoder_from_transformers(tiny_clip()), size=(size, size), device="cpu")
    controls = reference_controls(align_motion(astronaut_track(), driving_track()), (size, size))
    reps = -(-frames // len(controls))
    controls = np.concatenate([controls, controls[::-1]] * reps)[:frames]  # ping-pong the real motion
    return model, vae, ref, controls


def overhead(size: int, steps: int, frames: int = 40, repeats: int = 5) -> None:
    """Time generate_latents against replaying exactly its UNet calls."""
    import torch

    from emoji_model.pipeline import generate_latents
    from emoji_model.sampling import SamplerSettings

    torch.manual_seed(0)
    model, _, ref, controls = _inputs(frames, size)
    settings = SamplerSettings(steps=steps, window=16, overlap=4)
    calls = []
    original = model.denoise

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    model.denoise = recording
    generate_latents(model, ref, controls, settings, device="cpu")
    model.denoise = original

    def sampler_run():
        generate_latents(model, ref, controls, settings, device="cpu")

    def bare_run():
        for args, kwargs in calls:
            original(*args, **kwargs)

    # CPU time of the process (not wall time, which a shared VM's steal time makes jitter by +-10%),
    # in pairs whose order alternates; the median of the paired ratios.
    ratios, times = [], []
    with torch.no_grad():
        for r in range(repeats):
            pair = {}
            for name, run in ((("sampler", sampler_run), ("bare", bare_run)) if r % 2 == 0
                              else (("bare", bare_run), ("sampler", sampler_run))):
                t = time.process_time()
                run()
                pair[name] = time.process_time() - t
            ratios.append(pair["sampler"] / pair["bare"])
            times.append(pair)
    ratio = sorted(ratios)[len(ratios) // 2]
    s = sorted(p["sampler"] for p in times)[len(times) // 2]
    b = sorted(p["bare"] for p in times)[len(times) // 2]
    print(f"sampler overhead: {100 * (ratio - 1):.1f}% over the bare UNet forward on the same {len(calls)} batches "
          f"(median of {repeats} paired runs, CPU time {s:.2f} s vs {b:.2f} s; tiny config, {frames} frames at "
          f"{size}px, {steps} steps, window 16/4)")


def progressive_peak(frames: int, size: int, steps: int, model, ref) -> int:
    """Peak bytes of tensors the progressive sampler keeps alive while making ``frames`` frames."""
    from emoji_model.align import align_motion
    from emoji_model.landmarks import FaceTrack
    from emoji_model.pipeline import LazyControls, progressive_latents
    from emoji_model.sampling import SamplerSettings
    from landmark_inputs import astronaut_track, driving_track
    from trainer.memory import PeakTensorMemory

    aligned = align_motion(astronaut_track(), driving_track())
    track = FaceTrack.concat([aligned, aligned[::-1]] * (frames // (2 * len(aligned)) + 1))[:frames]
    controls = LazyControls(track, (size, size))
    with PeakTensorMemory() as meter:
        progressive_latents(model, ref, controls, SamplerSettings(steps=steps, window=16, overlap=4),
                            device="cpu")
    return meter.peak


def memory(size: int, steps: int) -> None:
    """Peak tensor memory of a 256-frame track against a 32-frame track, same model and window."""
    from skimage import data

    from emoji_model.reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers
    from tiny_fye import random_model, tiny_clip, tiny_vae

    model = random_model(seed=1)
    ref = encode_reference(model, data.astronaut(), vae_encoder_from_diffusers(tiny_vae()),
                           clip_encoder_from_transformers(tiny_clip()), size=(size, size), device="cpu")
    peaks = {frames: progressive_peak(frames, size, steps, model, ref) for frames in (32, 256)}
    ratio = peaks[256] / peaks[32]
    print(f"peak memory of the progressive sampler, 256 vs 32 frames at window 16: {ratio:.2f}x "
          f"({peaks[256] / 2**20:.1f} MiB vs {peaks[32] / 2**20:.1f} MiB of live tensors at once while sampling; "
          f"tiny config, {size}px, CPU)")


def animate_fps(size: int, steps: int, frames: int = 48) -> None:
    """Frames per second of the whole job: reference encoding, sampling and decoding."""
    from skimage import data

    from emoji_model.align import align_motion
    from emoji_model.pipeline import animate
    from emoji_model.sampling import SamplerSettings
    from landmark_inputs import astronaut_track, driving_track
    from tiny_fye import random_model, tiny_clip, tiny_vae

    model, vae, clip = random_model(seed=1), tiny_vae(), tiny_clip()
    aligned = align_motion(astronaut_track(), driving_track())[:frames]
    settings = SamplerSettings(steps=steps)
    t = time.perf_counter()
    n = sum(len(c) for c in animate(model, data.astronaut(), aligned, vae, clip, settings=settings,
                                    size=(size, size), device="cpu"))
    took = time.perf_counter() - t
    print(f"animate: {n / took:.2f} frames/s ({n} frames at {size}x{size}, tiny config, {settings.scheduler} "
          f"{steps} steps, cfg {settings.cfg}, window {settings.window}/{settings.overlap}, CPU fp32)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    overhead(args.size, args.steps)
    memory(args.size * 2, 2)
    animate_fps(args.size, args.steps)


if __name__ == "__main__":
    main()
