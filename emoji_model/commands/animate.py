"""`animate`: a reference portrait driven by a video (or a face track), written as an mp4."""

from __future__ import annotations

import argparse
import logging
import time

from ._common import add_face_options, track_from_path
from .align import add_align_options

NAME = "animate"
HELP = "animate a portrait with a driving video's expressions and head motion"

log = logging.getLogger(__name__)


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """Sampler settings shared by the commands that generate frames."""
    from ..sampling import SCHEDULERS

    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale (default 3.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS))
    parser.add_argument("--window", type=int, default=16, help="frames per temporal window (default 16)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by neighbouring windows")
    parser.add_argument("--fusion", default="pyramid", choices=["pyramid", "flat"])
    parser.add_argument("--noise-share", type=float, default=None, metavar="S",
                        help="share of the starting noise common to all frames, 0..1 (0 as released: each frame "
                             "its own; 1: one noise for all, least flicker; default 0, 1 for the bundled model)")
    parser.add_argument("--size", type=int, default=0,
                        help="square output size in pixels, a multiple of 8 (default: the size the checkpoint "
                             "was trained at, 512 when it does not say)")
    parser.add_argument("--long", action="store_true",
                        help="progressive long-video strategy: keyframes first, then the gaps between them")
    parser.add_argument("--keyframe-stride", type=int, default=0, help="frames between keyframes (0: window-1)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `animate`."""
    parser.add_argument("--reference", required=True, help="the portrait to animate (an image)")
    parser.add_argument("--driving", required=True, help="driving motion: a video or a face track .npz")
    parser.add_argument("--weights", default=None,
                        help="Follow-Your-Emoji weights: our .safetensors, or the released files' folder "
                             "(default: the bundled 64-pixel model, with its own VAE and image encoder)")
    parser.add_argument("--vae", default="sd-vae-ft-mse",
                        help="VAE folder or file (a name is looked up in models/vae)")
    parser.add_argument("--image-encoder", default="image_encoder",
                        help="CLIP image encoder folder or file (a name is looked up in models/clip_vision)")
    parser.add_argument("--out", required=True, help="the video to write (.mp4)")
    parser.add_argument("--fps", type=float, default=0.0, help="output frame rate (default: the driving video's)")
    add_face_options(parser, " of the reference")
    add_align_options(parser)
    add_sampler_options(parser)


def settings_from_args(args: argparse.Namespace):
    """SamplerSettings from the shared sampler options."""
    from ..sampling import SamplerSettings

    return SamplerSettings(steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, seed=args.seed,
                           window=args.window, overlap=args.overlap, fusion=args.fusion,
                           noise_share=args.noise_share or 0.0)


def load_networks(args: argparse.Namespace, runtime):
    """(model, VAE, image encoder, device, dtype, trained size) named on the command line, or the bundled model."""
    from ..bundled import BUNDLED_NOTICE, BUNDLED_SIZE, is_bundled, load_bundled
    from ..checkpoints import load_clip_vision, load_model, load_vae, read_metadata

    device = runtime.torch_device()
    weights = runtime.find_model("follow_your_emoji", args.weights) if args.weights else None
    if weights is None or is_bundled(weights):
        log.info("running on %s", BUNDLED_NOTICE)
        model, vae, encoder = load_bundled(device=device)
        return model, vae, encoder, device, model.dtype, BUNDLED_SIZE
    dtype = runtime.choose_dtype(args.dtype)
    model = load_model(weights, device=device, dtype=dtype)
    vae = load_vae(runtime.find_model("vae", args.vae), device=device, dtype=dtype)
    encoder = load_clip_vision(runtime.find_model("clip_vision", args.image_encoder), device=device, dtype=dtype)
    trained = read_metadata(weights).get("fye_resolution") if weights.is_file() else None
    return model, vae, encoder, device, dtype, int(trained) if trained else None


def run(args: argparse.Namespace) -> int:
    """Landmarks → alignment → sampling → decoding, streamed into an mp4 written atomically."""
    from ..align import align_motion
    from ..bundled import is_bundled
    from ..landmarks import extract_image
    from ..pipeline import animate
    from ..runtime import default_runtime
    from ..video import load_image, write_video

    rt = default_runtime()
    start = time.perf_counter()
    image = load_image(args.reference)
    reference = extract_image(image, face_index=args.face_index, face_model=args.face_model,
                              what=f"the reference '{args.reference}'")
    driving = track_from_path(args.driving, 0, args.face_model)
    aligned = align_motion(reference, driving, relative_pose=args.relative_pose, neutral=args.neutral,
                           expression_scale=args.expression_scale, iris_tracking=args.iris_tracking,
                           smoothing=args.smoothing)
    model, vae, encoder, device, dtype, trained = load_networks(args, rt)
    size = args.size or trained or 512
    settings = settings_from_args(args)
    if args.noise_share is None and (args.weights is None or is_bundled(rt.find_model("follow_your_emoji",
                                                                                       args.weights))):
        from dataclasses import replace

        from ..bundled import BUNDLED_SAMPLING

        settings = replace(settings, noise_share=BUNDLED_SAMPLING["noise_share"])
    frames = animate(model, image, aligned, vae, encoder, settings=settings, size=(size, size),
                     long=args.long, keyframe_stride=args.keyframe_stride or None, device=device, dtype=dtype,
                     runtime=rt)
    fps = args.fps or aligned.fps or 25.0
    write_video(args.out, (f for chunk in frames for f in chunk), fps)
    took = time.perf_counter() - start
    log.info("animated %d frames at %dx%d in %.1f s (%.2f frames/s; %s, %d steps, cfg %.1f, window %d, %s) -> %s",
             len(aligned), size, size, took, len(aligned) / took, settings.scheduler, settings.steps,
             settings.cfg, settings.window, "progressive" if args.long else "windows", args.out)
    return 0
