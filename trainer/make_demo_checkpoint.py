"""Make the small demo checkpoint shipped in emoji_model/assets/ with this trainer (a few minutes on a CPU).

    python -m trainer.make_demo_checkpoint --out emoji_model/assets/demo_tiny.safetensors

1. prepare the shared driving video (``../shared/data/driving_expressions.mp4``) at ``--size`` pixels;
2. fit a tiny VAE (diffusers AutoencoderKL, ÷8 latents) to those frames as an autoencoder, then rescale
   its latent space exactly (encoder output and decoder input convolutions) so that latents × 0.18215
   have unit standard deviation, the convention of the SD-1.5 VAE that the pack's pipeline assumes;
3. keep a tiny CLIP vision encoder at its seeded random weights (a fixed random feature map of the
   reference is enough for the image prompt to learn from);
4. train the tiny Follow-Your-Emoji config with covered-latent inputs: stage 1 on single frames, then
   stage 2 on 8-frame clips initialised from stage 1's EMA;
5. export stage 2's EMA in fp16 to ``--out`` and save the VAE and CLIP as ``demo_vae/`` and
   ``demo_clip/`` (save_pretrained folders) beside it.

Everything is seeded; the result is a plumbing demo (one subject, 64 px), not a useful animator.
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
from emoji_model.constants import LATENT_SCALE
from emoji_model.runtime import PACK_ROOT

log = logging.getLogger("emoji_model.trainer.demo")

SHARED = Path(os.environ.get("FYE_SHARED", PACK_ROOT.parent / "shared"))
# The tiny VAE and CLIP of the tests' tiny configuration: ÷8 latents with 4 channels; 17 tokens of 48
# (the tiny FYEConfig's clip_dim) for 32-pixel CLIP inputs in 8-pixel patches.
DEMO_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
                latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=LATENT_SCALE)
DEMO_CLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8, projection_dim=16, hidden_act="quick_gelu")


def fit_vae(frames, steps: int, seed: int):
    """A tiny AutoencoderKL fitted to uint8 frames [N,S,S,3] (MSE + a small KL), latents rescaled to unit std."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**DEMO_VAE).train()
    data = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # n h w c -> n c h w
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        batch = data[torch.randint(0, len(data), (16,), generator=gen)]
        dist = vae.encode(batch).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        loss = (recon - batch).square().mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d: reconstruction loss %.4f", step + 1, steps, loss.item())
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(data[s:s + 32]).latent_dist.mean for s in range(0, len(data), 32)])
        # z' = a·z with a chosen so that std(0.18215·z') = 1: scale the posterior mean (quant_conv's first
        # half), shift its log-variance by 2·log(a), and undo the scale at the decoder's input.
        a = 1.0 / (DEMO_VAE["scaling_factor"] * mean.std().item())
        c = DEMO_VAE["latent_channels"]
        vae.quant_conv.weight[:c] *= a
        vae.quant_conv.bias[:c] *= a
        vae.quant_conv.bias[c:] += 2 * float(np.log(a))
        vae.post_quant_conv.weight /= a
        check = torch.cat([vae.encode(data[s:s + 32]).latent_dist.mean for s in range(0, len(data), 32)])
    log.info("vae latents rescaled by %.3f: std of scaled latents %.3f", a, (check * DEMO_VAE["scaling_factor"]).std())
    return vae


def make_demo(out: Path, *, size: int = 64, stage1_steps: int = 600, stage2_steps: int = 150,
              vae_steps: int = 400, seed: int = 0, work: Path | None = None) -> list[Path]:
    """Build the demo files; returns their paths (the model file, the VAE folder, the CLIP folder)."""
    import numpy as np
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .config import TrainConfig
    from .data import PrepareOptions, load_index, prepare_dataset, read_shard
    from .export import export_checkpoint
    from .train import train

    start = time.perf_counter()
    out = Path(out)
    keep = work is not None
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="fye-demo-"))
    try:
        video = SHARED / "data" / "driving_expressions.mp4"
        prepare_dataset(video, work / "data", PrepareOptions(size=size, face_model=str(SHARED / "data" /
                                                                                     "face_landmarker.task")))
        index = load_index(work / "data")
        frames = np.concatenate([read_shard(work / "data" / c["shard"])["frames"] for c in index["clips"]])
        vae_dir, clip_dir = out.parent / "demo_vae", out.parent / "demo_clip"
        fit_vae(frames, vae_steps, seed).save_pretrained(work / "vae")
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(CLIPVisionConfig(**DEMO_CLIP)).eval().save_pretrained(work / "clip")

        common = dict(model="tiny", model_overrides={"cover_channels": 5}, image_encoder=str(work / "clip"),
                      vae=str(work / "vae"), dataset=str(work / "data"), seed=seed, lr_schedule="cosine",
                      warmup_steps=20, ema_decay=0.99, cfg_drop=0.1, resume="never", log_every=50,
                      checkpoint_every=10 ** 6, keep_checkpoints=1)
        train(TrainConfig.from_dict(dict(common, run_dir=str(work / "stage1"), stage=1, batch_size=8, lr=2e-3,
                                         min_lr=1e-4, max_steps=stage1_steps)))
        export_checkpoint(work / "stage1", work / "stage1.safetensors", ema=True)
        common["model_overrides"] = {}
        train(TrainConfig.from_dict(dict(common, run_dir=str(work / "stage2"), stage=2, frames=8, batch_size=2,
                                         lr=1e-3, min_lr=1e-4, max_steps=stage2_steps,
                                         init_checkpoint=str(work / "stage1.safetensors"))))
        out.parent.mkdir(parents=True, exist_ok=True)
        export_checkpoint(work / "stage2", out, ema=True, dtype=torch.float16)
        for src, dst in ((work / "vae", vae_dir), (work / "clip", clip_dir)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            for f in dst.iterdir():
                f.chmod(0o644)  # safetensors writes 0600; these files ship with the pack
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    files = [out, vae_dir, clip_dir]
    log.info("demo checkpoint in %.0f s: %s", time.perf_counter() - start, ", ".join(map(str, files)))
    return files


def main(argv=None) -> int:
    """`python -m trainer.make_demo_checkpoint`."""
    parser = argparse.ArgumentParser(prog="python -m trainer.make_demo_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(PACK_ROOT / "emoji_model" / "assets" / "demo_tiny.safetensors"),
                        help="model file to write; demo_vae/ and demo_clip/ go beside it")
    parser.add_argument("--size", type=int, default=64, help="clip size in pixels (default 64)")
    parser.add_argument("--stage1-steps", type=int, default=600)
    parser.add_argument("--stage2-steps", type=int, default=150)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the dataset and runs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    setup_logging(0)
    files = make_demo(Path(args.out), size=args.size, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                      vae_steps=args.vae_steps, seed=args.seed, work=Path(args.work) if args.work else None)
    for f in files:
        size = sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        log.info("%s: %.2f MB", f, size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
