"""`evaluate`: the paper's metrics (5.3.2) for a checkpoint, offline — self- or cross-reenactment."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

NAME = "evaluate"
HELP = ("score a checkpoint: self-reenactment on a video (L1, SSIM, PSNR, LPIPS, FVD, landmarks) or "
        "cross-reenactment with --reference (landmark error, eye/mouth correlation, identity)")

log = logging.getLogger(__name__)

# Default file names looked up in the model folder `metrics/` when no path is given.
METRIC_FILES = {"lpips_backbone": "alexnet-owt-7be5be79.pth", "lpips_heads": "lpips_alex.pth",
                "fvd": "i3d_torchscript.pt", "identity": "identity.onnx"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `evaluate`."""
    parser.add_argument("--driving", required=True, help="a video: the driving motion (and the ground truth "
                        "of a self-reenactment, whose reference is its frame 0)")
    parser.add_argument("--reference", default=None, help="a portrait for cross-reenactment (default: none, "
                        "self-reenactment)")
    parser.add_argument("--weights", default=None, help="Follow-Your-Emoji weights (default: the bundled model)")
    parser.add_argument("--vae", default="sd-vae-ft-mse", help="VAE folder or file, with --weights")
    parser.add_argument("--image-encoder", default="image_encoder", help="CLIP image encoder, with --weights")
    parser.add_argument("--frames", type=int, default=16, help="frames to generate (default 16)")
    parser.add_argument("--size", type=int, default=0, help="square size in pixels (default: the checkpoint's "
                        "training size, 64 for the bundled model, else 512)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--cfg", type=float, default=None,
                        help="classifier-free guidance (default 3.5; the bundled model's own setting for it)")
    parser.add_argument("--noise-share", type=float, default=None,
                        help="share of the starting noise common to all frames (default 0; 1 for the bundled model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-margin", type=float, default=None,
                        help="cross-reenactment: animate a square crop of the reference's face, its side this "
                             "many face heights (default 1.6 for the bundled model, else 1.8; 0: the whole portrait)")
    parser.add_argument("--window", type=int, default=16, help="frames per temporal window (default 16)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the metrics here")
    parser.add_argument("--video", default=None, metavar="OUT.mp4",
                        help="also write reference | generated | ground truth or controls, side by side")
    parser.add_argument("--face-model", default=None, metavar="PATH", help="MediaPipe face_landmarker.task")
    parser.add_argument("--no-landmarks", dest="landmarks", action="store_false",
                        help="skip the MediaPipe re-run on the generated frames")
    parser.add_argument("--lpips-backbone", default=None, metavar="PATH",
                        help=f"torchvision's AlexNet weights for LPIPS (default: models/metrics/"
                             f"{METRIC_FILES['lpips_backbone']})")
    parser.add_argument("--lpips-heads", default=None, metavar="PATH",
                        help="the lpips package's weights/v0.1/alex.pth (default: models/metrics/"
                             f"{METRIC_FILES['lpips_heads']})")
    parser.add_argument("--fvd-network", default=None, metavar="PATH",
                        help=f"TorchScript I3D for FVD (default: models/metrics/{METRIC_FILES['fvd']})")
    parser.add_argument("--identity-model", default=None, metavar="PATH",
                        help="face-recognition model, .pt (TorchScript) or .onnx, [B,3,112,112] in -1..1 "
                             f"(default: models/metrics/{METRIC_FILES['identity']})")


def metric_networks(args: argparse.Namespace, runtime):
    """EvalNetworks from the options, else from files present in the model folder ``metrics/``."""
    from ..errors import MissingModelError
    from ..evaluate import EvalNetworks

    def pick(explicit: str | None, key: str) -> str | None:
        if explicit:
            return str(runtime.find_model("metrics", explicit))
        try:
            return str(runtime.find_model("metrics", METRIC_FILES[key]))
        except MissingModelError:
            return None

    return EvalNetworks(lpips_backbone=pick(args.lpips_backbone, "lpips_backbone"),
                        lpips_heads=pick(args.lpips_heads, "lpips_heads"), fvd=pick(args.fvd_network, "fvd"),
                        identity=pick(args.identity_model, "identity"))


def load_for_evaluation(args: argparse.Namespace, runtime):
    """(model, vae, image encoder, size, bundled) for --weights, or the bundled model."""
    from ..bundled import is_bundled
    from .animate import load_networks

    model, vae, encoder, _, _, trained = load_networks(args, runtime)
    bundled = args.weights is None or is_bundled(runtime.find_model("follow_your_emoji", args.weights))
    return model, vae, encoder, args.size or trained or 512, bundled


def _first_frames(path: str, count: int, keep=None):
    """The first ``count`` frames of a video, one at a time (decoding stops there); ``keep(frame)`` sees each."""
    import itertools

    from ..video import iter_video, prefetch

    # Decoded on prefetch's thread, as extract_file does: interleaved with MediaPipe's allocations on
    # this thread, the decoder's frames fragment the heap and the process grows with the video.
    for frame in itertools.islice(prefetch(iter_video(path)), count):
        if keep is not None:
            keep(frame)
        yield frame


def run(args: argparse.Namespace) -> int:
    """Generate, score, log a summary and write the JSON (and the side-by-side video)."""
    import numpy as np
    import torch

    from ..align import align_motion
    from ..bundled import BUNDLED_CROP_MARGIN, BUNDLED_SAMPLING, CROP_MARGIN
    from ..evaluate import generate_frames, score_video, self_reenactment
    from ..landmarks import extract_image, extract_video
    from ..pipeline import LazyControls
    from ..reference import fit_to_size, image_to_pixels
    from ..runtime import default_runtime
    from ..sampling import SamplerSettings
    from ..video import load_image, probe_video, write_video

    rt = default_runtime()
    start = time.perf_counter()
    model, vae, encoder, size, bundled = load_for_evaluation(args, rt)
    dtype = rt.choose_dtype(args.dtype) if not bundled else torch.float32
    tuned = BUNDLED_SAMPLING if bundled else {"cfg": 3.5, "noise_share": 0.0}
    settings = SamplerSettings(steps=args.steps, cfg=tuned["cfg"] if args.cfg is None else args.cfg,
                               noise_share=tuned["noise_share"] if args.noise_share is None else args.noise_share,
                               seed=args.seed, window=min(args.window, model.max_frames),
                               overlap=min(4, args.window // 4))
    networks = metric_networks(args, rt)
    cross = args.reference is not None

    def framed(images: np.ndarray) -> np.ndarray:
        pixels = torch.cat([fit_to_size(image_to_pixels(im), (size, size)) for im in images])
        return (pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)  # b c h w -> b h w c

    # The driving frames stream through the landmarker; a self-reenactment keeps them only at the model's size.
    kept: list[np.ndarray] = []
    fps, _ = probe_video(args.driving)
    frames = _first_frames(args.driving, args.frames + (0 if cross else 1),
                           keep=None if cross else (lambda frame: kept.append(framed(frame[None])[0])))
    driving = extract_video(frames, fps, face_model=args.face_model, what=f"driving video '{args.driving}'",
                            runtime=rt)

    if cross:
        portrait = load_image(args.reference)
        ref_track = extract_image(portrait, face_model=args.face_model, what=f"the reference '{args.reference}'")
        margin = args.crop_margin if args.crop_margin is not None else (BUNDLED_CROP_MARGIN if bundled else CROP_MARGIN)
        if margin > 0:  # as the demo and the example graphs do; the landmarks move into the crop with it
            from ..crop import crop_face

            cropped, _, ref_track = crop_face(portrait[None], ref_track, margin=margin, size=max(size, 256),
                                              runtime=rt)
            portrait = (np.clip(cropped[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        aligned = align_motion(ref_track, driving, runtime=rt)
        controls = LazyControls(aligned, (size, size))
        reference = framed(portrait[None])[0]
        generated = generate_frames(model, vae, encoder, reference, controls, settings, dtype=dtype, runtime=rt)
        report = score_video(generated, controls=controls[:], target_points=controls.track.points,
                             reference=reference, networks=networks, face_model=args.face_model,
                             landmarks=args.landmarks, runtime=rt)
        report.info["mode"] = "cross-reenactment"
        report.info["crop_margin"] = margin
        third = controls[:]
    else:
        controls = LazyControls(driving, (size, size))
        truth = np.stack(kept)
        report, generated = self_reenactment(model, vae, encoder, truth, controls[:], controls.track.points,
                                             settings, networks=networks, face_model=args.face_model,
                                             landmarks=args.landmarks, dtype=dtype, runtime=rt)
        reference, third = truth[0], truth[1:]
    report.info.update({"weights": "bundled" if bundled else str(args.weights), "size": size,
                        "steps": settings.steps, "cfg": settings.cfg, "noise_share": settings.noise_share,
                        "seed": settings.seed,
                        "driving": str(args.driving), "reference": args.reference,
                        "seconds": round(time.perf_counter() - start, 2)})
    result = report.as_dict()
    shown = {k: v for k, v in result.items() if isinstance(v, float)}
    log.info("%s on %d frames at %d px: %s", report.info["mode"], len(generated), size,
             ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if args.json:
        from ..fileio import atomic_path

        with atomic_path(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
        log.info("metrics -> %s", args.json)
    if args.video:
        panels = (np.concatenate([reference, g, t], axis=1) for g, t in zip(generated, third))
        write_video(args.video, panels, fps or 25.0)
    return 0
