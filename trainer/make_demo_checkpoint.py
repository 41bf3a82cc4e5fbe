"""Make the small model bundled in emoji_model/assets/ with this trainer (seeded; about two hours on 2 CPU cores).

    python -m trainer.make_demo_checkpoint

1. training data that ships with the pack's dependencies: the shared driving video (its first 80 frames;
   the last 17 are held out for the evaluation logged during training) and the 80 training faces of
   scikit-image's LFW subset as still portraits (faces 80–99, the astronaut and the cameraman are kept
   out of everything: they are evaluation portraits);
2. the frozen encoders (:mod:`trainer.demo_encoders`): a small VAE and a small CLIP image encoder
   fitted to diverse images;
3. stage 1 on single frames and stage 2 on 8-frame clips of the tiny configuration with covered-latent
   inputs, both with the paired augmentations of :mod:`trainer.augment` (the same look, background,
   mirror image and synthetic head motion for a sample's reference and target), so that appearance has
   to come from the reference;
4. stage 2's EMA exported in fp16 beside the VAE (``demo_vae/``) and the image encoder (``demo_clip/``).

Stage 2 is short and gentle (400 steps at lr 1e-4): 1,000 steps at lr 1e-3 made the videos move more but
follow their references less (bench/follow_reference.py: ratio 0.81 / 0.97 against 0.72 / 0.90 for the
astronaut / the stylised astronaut). The committed bundle was made with this recipe in legs: its encoders
were fitted to all 97 frames of the driving video, and stage 1 was resumed at steps 4,000 and 12,000 with a
longer schedule each time (the cosine went on from where it stood), so a run of this script gives a model
like it, not the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from emoji_model.cli import setup_logging
from emoji_model.runtime import PACK_ROOT

log = logging.getLogger("emoji_model.trainer.demo")

SHARED = Path(os.environ.get("FYE_SHARED", PACK_ROOT.parent / "shared"))
HELD_OUT_FROM = 80  # driving-video frames from here on are the held-out evaluation clip
AUGMENT = dict(augment_appearance=0.8, augment_background=0.5, augment_flip=0.5, augment_warp=0.6)


def write_training_inputs(folder: Path, held_out: Path) -> None:
    """The training videos and portraits in ``folder``; the held-out clip in ``held_out``."""
    from PIL import Image

    from emoji_model.video import read_video, write_video

    from .demo_encoders import LFW_TRAIN, lfw_faces

    frames, fps = read_video(SHARED / "data" / "driving_expressions.mp4")
    write_video(folder / "driving_train.mp4", frames[:HELD_OUT_FROM], fps)
    write_video(held_out / "driving_held_out.mp4", frames[HELD_OUT_FROM:], fps)
    (folder / "lfw").mkdir(parents=True, exist_ok=True)
    for i, face in zip(LFW_TRAIN, lfw_faces(LFW_TRAIN)):
        Image.fromarray(face).save(folder / "lfw" / f"face_{i:03d}.png")


def make_demo(out: Path, *, size: int = 64, stage1_steps: int = 20000, stage2_steps: int = 400,
              vae_steps: int = 2400, clip_steps: int = 800, seed: int = 0, work: Path | None = None,
              encoders: Path | None = None) -> list[Path]:
    """Build the bundled files; returns their paths (the model file, the VAE folder, the CLIP folder)."""
    import torch

    from emoji_model.video import read_video

    from .config import TrainConfig
    from .data import PrepareOptions, prepare_dataset
    from .demo_encoders import fit_image_encoder, fit_vae, image_sampler, save_encoders
    from .export import export_checkpoint
    from .train import train

    start = time.perf_counter()
    out = Path(out)
    keep = work is not None
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="fye-demo-"))
    try:
        inputs, held_out = work / "inputs", work / "held_out"
        inputs.mkdir(parents=True, exist_ok=True)
        held_out.mkdir(parents=True, exist_ok=True)
        write_training_inputs(inputs, held_out)
        face_model = str(SHARED / "data" / "face_landmarker.task")
        opts = PrepareOptions(size=size, face_model=face_model)
        prepare_dataset(inputs, work / "data", opts)
        prepare_dataset(held_out, work / "eval", opts)
        if encoders is None:
            frames, _ = read_video(SHARED / "data" / "driving_expressions.mp4")
            vae = fit_vae(image_sampler(frames[:HELD_OUT_FROM], size, seed), vae_steps, seed)
            clip = fit_image_encoder(image_sampler(frames[:HELD_OUT_FROM], size, seed + 1), clip_steps, seed)
            encoders = work / "encoders"
            save_encoders(vae, clip, encoders / "vae", encoders / "clip")
        common = dict(model="tiny", model_overrides={"cover_channels": 5}, image_encoder=str(encoders / "clip"),
                      vae=str(encoders / "vae"), dataset=str(work / "data"), seed=seed, lr_schedule="cosine",
                      warmup_steps=50, ema_decay=0.995, cfg_drop=0.1, resume="never", log_every=50,
                      checkpoint_every=10 ** 6, keep_checkpoints=1, eval_dataset=str(work / "eval"), eval_frames=8,
                      eval_steps=10, **AUGMENT)
        train(TrainConfig.from_dict(dict(common, run_dir=str(work / "stage1"), stage=1, batch_size=8, lr=2e-3,
                                         min_lr=1e-4, max_steps=stage1_steps, eval_every=max(1, stage1_steps // 6))))
        export_checkpoint(work / "stage1", work / "stage1.safetensors", ema=True)
        common["model_overrides"] = {}
        train(TrainConfig.from_dict(dict(common, run_dir=str(work / "stage2"), stage=2, frames=8, batch_size=2,
                                         lr=1e-4, min_lr=1e-5, max_steps=stage2_steps,
                                         eval_every=max(1, stage2_steps // 3),
                                         init_checkpoint=str(work / "stage1.safetensors"))))
        out.parent.mkdir(parents=True, exist_ok=True)
        export_checkpoint(work / "stage2", out, ema=True, dtype=torch.float16)
        vae_dir, clip_dir = out.parent / "demo_vae", out.parent / "demo_clip"
        for src, dst in ((encoders / "vae", vae_dir), (encoders / "clip", clip_dir)):
            if src.resolve() != dst.resolve():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    files = [out, out.parent / "demo_vae", out.parent / "demo_clip"]
    log.info("bundled model in %.0f s: %s", time.perf_counter() - start, ", ".join(map(str, files)))
    return files


def main(argv=None) -> int:
    """`python -m trainer.make_demo_checkpoint`."""
    parser = argparse.ArgumentParser(prog="python -m trainer.make_demo_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(PACK_ROOT / "emoji_model" / "assets" / "demo_tiny.safetensors"),
                        help="model file to write; demo_vae/ and demo_clip/ go beside it")
    parser.add_argument("--size", type=int, default=64, help="training size in pixels (default 64)")
    parser.add_argument("--stage1-steps", type=int, default=20000)
    parser.add_argument("--stage2-steps", type=int, default=400)
    parser.add_argument("--vae-steps", type=int, default=2400)
    parser.add_argument("--clip-steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the dataset and runs in this folder (default: a temporary one)")
    parser.add_argument("--encoders", default=None, metavar="DIR",
                        help="reuse fitted encoders (DIR/vae, DIR/clip) instead of fitting them again")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these small networks train fastest on one thread, "
                             "and more only add overhead on a busy machine)")
    args = parser.parse_args(argv)
    setup_logging(0)
    import torch

    torch.set_num_threads(max(1, args.threads))
    files = make_demo(Path(args.out), size=args.size, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                      vae_steps=args.vae_steps, clip_steps=args.clip_steps, seed=args.seed,
                      work=Path(args.work) if args.work else None,
                      encoders=Path(args.encoders) if args.encoders else None)
    for f in files:
        size = sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        log.info("%s: %.2f MB", f, size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
