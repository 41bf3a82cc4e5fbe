"""Our whole generation against the released pipeline's, on the same tiny released weights (goal: ≤ 0.7×).

    python bench/released_speed.py [--released /tmp/released-src] [--released-python /tmp/released-venv/bin/python]
                                   [--rounds 5] [--repeat 3] [--top 20]

Both sides run the job of the released ``VideoPipeline.__call__``: encode the reference (a seeded tiny VAE,
CLIP tokens given), landmark-guider features, the referencenet, 5 DDIM steps of the UNet at CFG 3.5 and
the VAE decoding, for 16 control frames at 64×64, with the tiny released-layout weights of
tests/fixtures/released_tiny and one thread. The released code needs its own environment (its vendored
diffusers, transformers 4.36; see tests/fixtures/record_released_fye.py), so each side runs in its own
process: ``--rounds`` pairs of processes run back to back, their order alternating; each times ``--repeat``
runs after a warm-up, in CPU time (``time.process_time``; the machine is shared). Prints the median of
the paired ratios (ours / released), both medians, and the top entries of our run's profile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT_RELEASED = Path(os.environ.get("FYE_RELEASED", "/tmp/released-src"))
DEFAULT_RELEASED_PYTHON = Path(os.environ.get("FYE_RELEASED_PYTHON", "/tmp/released-venv/bin/python"))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _timed(run, repeat: int) -> list[float]:
    """CPU seconds of ``repeat`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return times


def ours_job():
    """A callable doing our whole generation (reference encoding, sampling, decoding) on the fixture's inputs."""
    sys.path[:0] = [str(REPO), str(REPO / "tests"), str(FIXTURES)]
    import torch
    from diffusers import AutoencoderKL

    from emoji_model.checkpoints import load_model
    from emoji_model.pipeline import decode_frames, generate_latents
    from emoji_model.reference import encode_reference, vae_encoder_from_diffusers
    from emoji_model.sampling import SamplerSettings
    from record_released_fye import CFG, SIZE, STEPS, TINY_VAE
    from released_fixture import HIDDEN, inputs, outputs, write_released

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(write_released(Path(tmp)), **HIDDEN)
    torch.manual_seed(3)
    vae = AutoencoderKL(**TINY_VAE).eval()
    clip = outputs()["clip_tokens"]
    reference, controls = inputs()["reference"], inputs()["controls"]
    settings = SamplerSettings(steps=STEPS, cfg=CFG, window=len(controls), overlap=4)

    def decode(raw):
        return (vae.decode(raw).sample.permute(0, 2, 3, 1) + 1) / 2  # b c h w -> b h w c

    def run():
        with torch.no_grad():
            ref = encode_reference(model, reference, vae_encoder_from_diffusers(vae), lambda pixels: clip,
                                   size=(SIZE, SIZE), device="cpu")
            latents = generate_latents(model, ref, controls, settings, device="cpu")
            return [chunk for chunk in decode_frames(decode, latents)]

    return run


def released_job(released: Path):
    """A callable doing one whole call of the released VideoPipeline on the same weights and inputs."""
    sys.path[:0] = [str(REPO / "tests"), str(FIXTURES)]
    import torch

    import record_released_fye as rec
    from released_fixture import inputs, outputs, released_tensors

    config, referencenet, unet, guider = rec.build_released(released)
    for stem, net in (("referencenet", referencenet), ("unet", unet), ("lmk_guider", guider)):
        net.load_state_dict(released_tensors()[stem])
    pipe, _ = rec.released_pipeline(config, referencenet, unet, guider, outputs()["clip_tokens"])
    reference, controls = inputs()["reference"], inputs()["controls"]

    def run():
        with torch.no_grad():
            return rec.run_released(pipe, reference, controls)

    return run


def worker(args: argparse.Namespace) -> None:
    """One process: time the job of one side and print {"times": [...]} (or the profile) on stdout."""
    import torch

    torch.set_num_threads(1)
    run = ours_job() if args.worker == "ours" else released_job(args.released)
    if args.profile:
        import cProfile
        import io
        import pstats

        run()
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.top)
        lines = [ln for ln in text.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        print(json.dumps({"profile": lines[start:start + args.top + 1]}))
        return
    print(json.dumps({"times": _timed(run, args.repeat)}))


def _launch(side: str, args: argparse.Namespace, profile: bool = False) -> dict:
    python = sys.executable if side == "ours" else str(args.released_python)
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--released", str(args.released),
           "--repeat", str(args.repeat), "--top", str(args.top)] + (["--profile"] if profile else [])
    return worker_json(cmd, f"the {side} worker", **ONE_THREAD)


def worker_json(cmd: list[str], what: str, **env: str) -> dict:
    """Run a worker process and return the last JSON line it printed (exit with its stderr if it failed)."""
    env = dict(os.environ, **env, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), None)
    if done.returncode or line is None:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", type=Path, default=DEFAULT_RELEASED, help="a checkout of mayuelala/FollowYourEmoji")
    parser.add_argument("--released-python", type=Path, default=DEFAULT_RELEASED_PYTHON,
                        help="a Python that runs the released code (see tests/fixtures/record_released_fye.py)")
    parser.add_argument("--rounds", type=int, default=5, help="pairs of processes, order alternating")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per process after a warm-up")
    parser.add_argument("--top", type=int, default=20, help="profile entries to print")
    parser.add_argument("--worker", choices=["ours", "released"], help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.released / "models" / "video_pipeline.py").is_file() or not args.released_python.is_file():
        sys.exit(f"the released code ({args.released}) or its Python ({args.released_python}) is missing; "
                 "see tests/fixtures/record_released_fye.py for the environment")
    medians = {"ours": [], "released": []}
    for r in range(args.rounds):
        for side in (("ours", "released") if r % 2 == 0 else ("released", "ours")):
            medians[side].append(statistics.median(_launch(side, args)["times"]))
    ratios = [o / r for o, r in zip(medians["ours"], medians["released"])]
    ours, released = statistics.median(medians["ours"]), statistics.median(medians["released"])
    print(f"whole generation, ours / released: {statistics.median(ratios):.2f}x (median of {args.rounds} paired "
          f"process runs, alternating; CPU time {ours:.2f} s vs {released:.2f} s per video; 16 frames 64x64, 5 DDIM "
          f"steps, CFG 3.5, one thread, the tiny released weights of tests/fixtures/released_tiny)")
    print(f"paired ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"top {args.top} of our profile (tottime):")
    for line in _launch("ours", args, profile=True)["profile"]:
        print("  " + line)


if __name__ == "__main__":
    main()
