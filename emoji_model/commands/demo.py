"""`demo`: the whole chain on a bundled default — the astronaut animated by an expression-editor track.

Panels of out/demo.mp4: reference | driving landmarks | aligned landmarks | generated frames. With
real weights placed in the model folders it uses them; without, it uses the small checkpoint made by
this pack's own trainer (emoji_model/assets/), which checks the pipeline and is not a quality model.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..runtime import PACK_ROOT

NAME = "demo"
HELP = ("the whole chain on skimage's astronaut with a keyed expression (or --driving VIDEO) -> "
        "out/demo.mp4 (reference | driving | aligned | generated)")

log = logging.getLogger(__name__)

ASSETS = PACK_ROOT / "emoji_model" / "assets"
DEMO_WEIGHTS = (ASSETS / "demo_tiny.safetensors", ASSETS / "demo_vae", ASSETS / "demo_clip")
DEMO_SIZE = 64  # what the demo checkpoint was trained at
REAL = ("fye_sd15.safetensors", "sd-vae-ft-mse", "image_encoder")
# A blink, a smile with the mouth opening, a look aside and a head turn: two seconds at 24 fps.
DEMO_KEYS = ("0: blink=0 smile=0 yaw=0; 8: blink=1; 12: blink=0; 20: smile=0.8 mouth_open=0.4 pupil_x=0.6; "
             "32: yaw=18 pitch=-6 smile=0.3 mouth_open=0; 40: blink=1; 44: blink=0; 47: yaw=0 pitch=0 pupil_x=0")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `demo`."""
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--driving", default=None,
                        help="a driving video instead of the bundled expression-editor track")
    parser.add_argument("--keys", default=DEMO_KEYS, help="expression-editor keys of the bundled motion")
    parser.add_argument("--frames", type=int, default=48, help="frames of the keyed motion (default 48)")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default: 30, or 20 for the demo model)")
    parser.add_argument("--weights", default=None,
                        help=f"Follow-Your-Emoji weights (default: models/follow_your_emoji/{REAL[0]} when "
                             "present, else the demo checkpoint)")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="landmarks only: skip the diffusion networks")
    parser.add_argument("--face-model", metavar="PATH", default=None, help="MediaPipe face_landmarker.task")


def _networks(args: argparse.Namespace, runtime):
    """(model, vae, image encoder, size, is_real): the user's SD-1.5 weights if placed, else the demo's."""
    from ..checkpoints import load_clip_vision, load_model, load_vae
    from ..errors import MissingModelError

    device = runtime.torch_device()
    dtype = runtime.choose_dtype("auto")
    try:
        paths = (runtime.find_model("follow_your_emoji", args.weights or REAL[0]),
                 runtime.find_model("vae", REAL[1]), runtime.find_model("clip_vision", REAL[2]))
        real, size = True, 512
    except MissingModelError as exc:
        if args.weights:
            raise
        log.warning("No Follow-Your-Emoji weights found (%s). Using the tiny demo checkpoint made by this "
                    "pack's trainer (%d px, trained on one video): this is a pipeline check, not a quality "
                    "model. Place the real weights as the README says to animate for real.",
                    str(exc).splitlines()[0], DEMO_SIZE)
        paths, real, size, dtype = DEMO_WEIGHTS, False, DEMO_SIZE, runtime.choose_dtype("fp32")
    model = load_model(paths[0], device=device, dtype=dtype)
    vae = load_vae(paths[1], device=device, dtype=dtype)
    encoder = load_clip_vision(paths[2], device=device, dtype=dtype)
    return model, vae, encoder, size, real, device, dtype


def run(args: argparse.Namespace) -> int:
    """Landmarks, motion, alignment, generation; write demo.mp4 and the three tracks."""
    import numpy as np
    from skimage import data

    from ..align import align_motion
    from ..editor import animate_face
    from ..landmarks import extract_image, extract_video, render_frame
    from ..pipeline import animate
    from ..runtime import default_runtime
    from ..sampling import SamplerSettings
    from ..video import read_video, write_video

    rt = default_runtime()
    out = Path(args.out)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = now - t
        t = now

    reference = data.astronaut()
    ref_track = extract_image(reference, face_model=args.face_model, what="the astronaut")
    dimmed_ref = (reference.astype(np.float32) * 0.4).astype(np.uint8)
    if args.driving:
        frames, fps = read_video(args.driving)
        drv_track = extract_video(frames, fps, face_model=args.face_model, what=f"video '{Path(args.driving).name}'")
        backgrounds = (frame.astype(np.float32) * 0.4 for frame in frames)
    else:
        fps = 24.0
        drv_track = animate_face(ref_track, args.keys, frames=args.frames, fps=fps)
        backgrounds = (dimmed_ref for _ in range(len(drv_track)))
    lap("landmarks")
    aligned = align_motion(ref_track, drv_track)
    lap("alignment")

    h, w = reference.shape[:2]
    panels = np.zeros((len(aligned), h, (4 if args.generate else 3) * w, 3), dtype=np.uint8)
    panels[:, :, :w] = reference
    for i, background in enumerate(backgrounds):
        drawn = render_frame(drv_track.points[i], drv_track.size, image=background.astype(np.uint8))
        panels[i, :, w:2 * w] = _fit(drawn, (w, h))
    for i in range(len(aligned)):
        panels[i, :, 2 * w:3 * w] = render_frame(aligned.points[i], aligned.size, image=dimmed_ref)
    lap("render")

    if args.generate:
        model, vae, encoder, size, real, device, dtype = _networks(args, rt)
        lap("load")
        settings = SamplerSettings(steps=args.steps or (30 if real else 20), window=min(16, model.max_frames),
                                   overlap=4)
        generated = np.concatenate(list(animate(model, reference, aligned, vae, encoder, settings=settings,
                                                size=(size, size), device=device, dtype=dtype, runtime=rt)))
        for i, frame in enumerate(generated):
            panels[i, :, 3 * w:] = _fit(frame, (w, h), nearest=not real)
        lap("generate")
        log.info("generated %d frames at %dx%d with %s (%d steps)", len(generated), size, size,
                 "the real weights" if real else "the demo checkpoint (pipeline check, not a quality model)",
                 settings.steps)
    video = write_video(out / "demo.mp4", panels, fps)
    ref_track.save(out / "reference.npz")
    drv_track.save(out / "driving.npz")
    aligned.save(out / "aligned.npz")
    lap("write")
    log.info("demo: %d frames -> %s", len(panels), video)
    log.info("timings: %s", ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return 0


def _fit(image, size, nearest: bool = False):
    """Resize ``image`` to (w, h), keeping the aspect ratio and padding with black."""
    import cv2
    import numpy as np

    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    mode = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    resized = cv2.resize(image, (nw, nh), interpolation=mode)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = resized
    return out
