"""`demo`: the whole chain on a portrait (default: skimage's astronaut) animated by a keyed expression.

Panels of out/demo.mp4: reference | driving landmarks | aligned landmarks | generated frames. With
real weights placed in the model folders it uses them; without, it uses the small model bundled with the
pack (emoji_model/assets/, made by this pack's trainer), and says so. Frames are streamed to the video
writer: memory follows the panel size, not the length of the motion.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

NAME = "demo"
HELP = ("the whole chain on a portrait (default: skimage's astronaut) with a keyed expression (or --driving "
        "VIDEO) -> out/demo.mp4 (reference | driving | aligned | generated)")

log = logging.getLogger(__name__)

REAL = ("fye_sd15.safetensors", "sd-vae-ft-mse", "image_encoder")
# A blink, a smile with the mouth opening, a look aside and a head turn: two seconds at 24 fps.
DEMO_KEYS = ("0: blink=0 smile=0 yaw=0; 8: blink=1; 12: blink=0; 20: smile=0.8 mouth_open=0.4 pupil_x=0.6; "
             "32: yaw=18 pitch=-6 smile=0.3 mouth_open=0; 40: blink=1; 44: blink=0; 47: yaw=0 pitch=0 pupil_x=0")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `demo`."""
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--reference", default=None, help="the portrait to animate (default: skimage's astronaut)")
    parser.add_argument("--driving", default=None,
                        help="a driving video instead of the bundled expression-editor track")
    parser.add_argument("--keys", default=DEMO_KEYS, help="expression-editor keys of the bundled motion")
    parser.add_argument("--frames", type=int, default=48, help="frames of the keyed motion (default 48)")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default: 30, or 20 for the bundled model)")
    parser.add_argument("--weights", default=None,
                        help=f"Follow-Your-Emoji weights (default: models/follow_your_emoji/{REAL[0]} when "
                             "present, else the bundled model)")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="landmarks only: skip the diffusion networks")
    parser.add_argument("--face-model", metavar="PATH", default=None, help="MediaPipe face_landmarker.task")


def _networks(args: argparse.Namespace, runtime):
    """(model, vae, image encoder, size, is_real, device, dtype): the user's weights if placed, else the bundled ones."""
    from ..bundled import BUNDLED_NOTICE, BUNDLED_SIZE, load_bundled
    from ..checkpoints import load_clip_vision, load_model, load_vae
    from ..errors import MissingModelError

    device = runtime.torch_device()
    dtype = runtime.choose_dtype("auto")
    try:
        paths = (runtime.find_model("follow_your_emoji", args.weights or REAL[0]),
                 runtime.find_model("vae", REAL[1]), runtime.find_model("clip_vision", REAL[2]))
    except MissingModelError as exc:
        if args.weights:
            raise
        log.warning("No Follow-Your-Emoji weights found (%s). Using %s; place SD-1.5-size weights as the README "
                    "says for full-size results.", str(exc).splitlines()[0], BUNDLED_NOTICE)
        model, vae, encoder = load_bundled(device=device)
        return model, vae, encoder, BUNDLED_SIZE, False, device, runtime.choose_dtype("fp32")
    model = load_model(paths[0], device=device, dtype=dtype)
    vae = load_vae(paths[1], device=device, dtype=dtype)
    encoder = load_clip_vision(paths[2], device=device, dtype=dtype)
    return model, vae, encoder, 512, True, device, dtype


def run(args: argparse.Namespace) -> int:
    """Landmarks, motion, alignment, generation; stream demo.mp4 and write the three tracks."""
    import itertools

    import numpy as np
    from skimage import data

    from ..align import align_motion
    from ..bundled import BUNDLED_CROP_MARGIN, BUNDLED_SAMPLING, CROP_MARGIN
    from ..crop import crop_face, paste_back
    from ..editor import animate_face
    from ..landmarks import extract_image, extract_video, render_frame
    from ..pipeline import animate
    from ..runtime import default_runtime
    from ..sampling import SamplerSettings
    from ..video import iter_video, load_image, probe_video, write_video

    rt = default_runtime()
    out = Path(args.out)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t
        t = now

    reference = load_image(args.reference) if args.reference else data.astronaut()
    what = f"the reference '{args.reference}'" if args.reference else "the astronaut"
    ref_track = extract_image(reference, face_model=args.face_model, what=what)
    dimmed_ref = (reference.astype(np.float32) * 0.4).astype(np.uint8)
    if args.driving:
        fps = probe_video(args.driving)[0]
        drv_track = extract_video(iter_video(args.driving), fps, face_model=args.face_model,
                                  what=f"driving video '{Path(args.driving).name}'")
        backgrounds = ((frame.astype(np.float32) * 0.4).astype(np.uint8) for frame in iter_video(args.driving))
    else:
        fps = 24.0
        drv_track = animate_face(ref_track, args.keys, frames=args.frames, fps=fps)
        backgrounds = itertools.repeat(dimmed_ref, len(drv_track))
    lap("landmarks")
    aligned = align_motion(ref_track, drv_track)
    lap("alignment")

    generated = itertools.repeat(None)
    real = False
    if args.generate:
        model, vae, encoder, size, real, device, dtype = _networks(args, rt)
        lap("load")
        tuned = {} if real else dict(BUNDLED_SAMPLING)
        settings = SamplerSettings(**{**tuned, "steps": args.steps or tuned.get("steps", 30)},
                                   window=min(16, model.max_frames), overlap=4)
        # As the example graphs do: crop the face (the bundled model was trained on face crops of 1.6× the
        # face box), animate the crop, paste it back into the portrait with a mask that follows the face.
        margin = CROP_MARGIN if real else BUNDLED_CROP_MARGIN
        crop, info, crop_track = crop_face(reference[None], ref_track, margin=margin, size=size, runtime=rt)
        crop_image = (np.clip(crop[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        moving = align_motion(crop_track, drv_track)
        chunks = animate(model, crop_image, moving, vae, encoder, settings=settings, size=(size, size),
                         device=device, dtype=dtype, runtime=rt)

        def pasted():
            start = 0
            for chunk in chunks:
                faces = moving[np.arange(start, start + len(chunk))]
                full = paste_back(chunk, reference, info, faces, runtime=rt)
                start += len(chunk)
                yield from (np.clip(full, 0, 1) * 255 + 0.5).astype(np.uint8)

        generated = pasted()
    h, w = reference.shape[:2]

    def panels():
        for i, (background, frame) in enumerate(zip(backgrounds, generated)):
            row = [reference, _fit(render_frame(drv_track.points[i], drv_track.size, image=background.copy()), (w, h)),
                   render_frame(aligned.points[i], aligned.size, image=dimmed_ref.copy())]
            if frame is not None:
                row.append(frame)
            yield np.concatenate(row, axis=1)

    video = write_video(out / "demo.mp4", panels(), fps)
    lap("generate and write" if args.generate else "render and write")
    ref_track.save(out / "reference.npz")
    drv_track.save(out / "driving.npz")
    aligned.save(out / "aligned.npz")
    log.info("demo: %d frames -> %s%s", len(aligned), video,
             "" if real or not args.generate else " (the bundled 64-pixel model)")
    log.info("timings: %s", ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return 0


def _fit(image, size):
    """Resize ``image`` to (w, h), keeping the aspect ratio and padding with black."""
    import cv2
    import numpy as np

    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    mode = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=mode)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = resized
    return out
