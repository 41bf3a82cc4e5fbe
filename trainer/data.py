"""Training data: talking-head videos → face-cropped clips with control renders and FFG masks, and back.

``prepare_dataset`` writes a dataset folder::

    DATASET/index.json                  options, per-video status, the clips, the summary
    DATASET/shards/<video id>/<k>.npz   one clip: frames, controls, packed masks, points, crop box

Each video is decoded twice with PyAV (once for MediaPipe's VIDEO-mode tracking on the full frames,
once to crop), so memory holds one clip at a time whatever the video length. Every clip gets one
square crop box: the union of its per-frame face boxes (all 478 landmarks), scaled by ``scale``
around its centre, padded by edge replication where it leaves the frame. The landmarks are mapped into
the crop, so controls and masks are drawn at the output size, never resized.

Writes are atomic (a temporary file in the same folder, then ``os.replace``) and the index is rewritten
after every video, so an interrupted run loses at most the video it was on and a second run skips the
videos already done (identified by relative path, size and modification time).

:class:`ClipDataset` reads it back for training: items are windows of ``frames`` consecutive frames of
a clip, a reference frame drawn from the same clip, controls and both masks on the latent grid.
:class:`EpochBatches` fixes the order: epoch ``e`` is a seeded permutation of the items, cut into
batches dealt round-robin to the processes, so a run resumes from (epoch, batches consumed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoji_model.errors import InvalidRequestError, NoFaceDetectedError, VideoReadError
from emoji_model.fileio import atomic_path
from emoji_model.video import is_image_file

log = logging.getLogger("emoji_model.trainer.data")

INDEX_NAME = "index.json"
DATASET_FORMAT = "fye-dataset-1"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
# Options that fix what a dataset's clips look like; a second run must use the same ones.
LAYOUT_KEYS = ("size", "clip_length", "fps", "scale")


# -------------------------------------------------------------------------------------------------
# Atomic files
# -------------------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=1, sort_keys=False).encode()
    return atomic_write_bytes(path, lambda f: f.write(text))


# -------------------------------------------------------------------------------------------------
# Geometry of the crop
# -------------------------------------------------------------------------------------------------
def clip_box(points: np.ndarray, frame_size: tuple[int, int], scale: float) -> tuple[int, int, int]:
    """One square crop (x0, y0, side) in source pixels for a clip's landmarks [F,478,≥2] (normalised).

    The box is the union of the per-frame landmark boxes, made square on its longer side, scaled by
    ``scale`` around its centre. It may extend past the frame (the crop pads there).
    """
    w, h = frame_size
    xy = np.asarray(points, dtype=np.float64)[..., :2] * np.array([w, h])
    lo = xy.reshape(-1, 2).min(0)
    hi = xy.reshape(-1, 2).max(0)
    centre = (lo + hi) / 2
    side = max(2, int(round(scale * float(max(hi - lo)))))
    x0 = int(round(centre[0] - side / 2))
    y0 = int(round(centre[1] - side / 2))
    return x0, y0, side


def crop_frame(frame: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` (x0, y0, side) out of an RGB frame, padding by edge replication, and resize to ``size``²."""
    import cv2

    x0, y0, side = box
    h, w = frame.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - h), max(0, x0 + side - w)
    if top or left or bottom or right:
        frame = cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + left, y0 + top
    crop = frame[y0:y0 + side, x0:x0 + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interpolation))


def points_in_box(points: np.ndarray, frame_size: tuple[int, int], box: tuple[int, int, int]) -> np.ndarray:
    """Landmarks [...,478,3] normalised to the frame → normalised to the crop (z scaled like x)."""
    w, h = frame_size
    x0, y0, side = box
    out = np.array(points, dtype=np.float32, copy=True)
    out[..., 0] = (points[..., 0] * w - x0) / side
    out[..., 1] = (points[..., 1] * h - y0) / side
    out[..., 2] = points[..., 2] * w / side
    return out


def frame_selector(source_fps: float, target_fps: float | None):
    """A predicate on source frame indices keeping ``target_fps`` of ``source_fps`` (all when not lower)."""
    if not target_fps or target_fps >= source_fps:
        return lambda i: True
    ratio = target_fps / source_fps
    # Keep frame i when it starts a new output slot: floor(i·r) steps up between i-1 and i.
    return lambda i: i == 0 or int(np.floor(i * ratio)) > int(np.floor((i - 1) * ratio))


def _selected_frames(path: Path, keep) -> Iterator[tuple[int, np.ndarray]]:
    """(source index, frame) of the frames ``keep`` selects, decoded one by one."""
    from emoji_model.video import iter_video

    for i, frame in enumerate(iter_video(path)):
        if keep(i):
            yield i, frame


# -------------------------------------------------------------------------------------------------
# Shards
# -------------------------------------------------------------------------------------------------
def write_shard(path: Path, *, frames: np.ndarray, controls: np.ndarray, expression: np.ndarray,
                facial: np.ndarray, points: np.ndarray, box: tuple[int, int, int], source_frames: np.ndarray,
                compress: bool = True) -> Path:
    """Write one clip atomically: frames/controls uint8 [F,S,S,3], masks bit-packed along the rows."""
    arrays = {
        "frames": np.ascontiguousarray(frames, dtype=np.uint8),
        "controls": np.ascontiguousarray(controls, dtype=np.uint8),
        "expression": np.packbits(expression.astype(bool), axis=-1),
        "facial": np.packbits(facial.astype(bool), axis=-1),
        "points": points.astype(np.float32),
        "box": np.asarray(box, dtype=np.int64),
        "source_frames": np.asarray(source_frames, dtype=np.int64),
    }
    save = np.savez_compressed if compress else np.savez
    return atomic_write_bytes(path, lambda f: save(f, **arrays))


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a clip, masks unpacked to bool [F,S,S]."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    size = out["frames"].shape[2]
    for name in ("expression", "facial"):
        out[name] = np.unpackbits(out[name], axis=-1, count=size).astype(bool)
    return out


# -------------------------------------------------------------------------------------------------
# The index
# -------------------------------------------------------------------------------------------------
def load_index(root: str | os.PathLike) -> dict[str, Any]:
    """The dataset's index.json; InvalidRequestError when the folder is not a prepared dataset."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise InvalidRequestError(f"'{root}' is not a prepared dataset (no {INDEX_NAME}); run "
                                  "`python -m trainer prepare --videos DIR --out DATASET` first")
    data = json.loads(path.read_text())
    if data.get("format") != DATASET_FORMAT:
        raise InvalidRequestError(f"'{path}' has format {data.get('format')!r}, expected {DATASET_FORMAT!r}")
    return data


def _video_id(rel: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).stem)[:40] or "video"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _file_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def find_videos(root: Path) -> list[Path]:
    """Video files and still portraits under ``root`` (recursively, by suffix), sorted."""
    from emoji_model.video import IMAGE_SUFFIXES

    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InvalidRequestError(f"videos folder '{root}' does not exist")
    suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


# -------------------------------------------------------------------------------------------------
# Preparing
# -------------------------------------------------------------------------------------------------
@dataclass
class PrepareOptions:
    """What `prepare` makes of each video."""

    size: int = 512              # side of the square clips in pixels (a multiple of 8)
    clip_length: int = 16        # frames per clip; shorter tails are dropped
    fps: float | None = None     # resample to this frame rate (only ever lower); None keeps the source rate
    scale: float = 1.6           # crop side = scale × the longer side of the clip's union face box
    face_model: str | None = None  # MediaPipe face_landmarker.task
    compress: bool = True        # zlib-compress shards (frames shrink ~2x, controls and masks ~50x)
    retry_skipped: bool = False  # reprocess videos skipped before (e.g. after installing a codec)

    def layout(self) -> dict[str, Any]:
        """The options that fix the clips' layout."""
        return {"size": self.size, "clip_length": self.clip_length, "fps": self.fps, "scale": self.scale}


class _Skip(Exception):
    """A video that is logged and skipped (unreadable, faceless, too short)."""


def prepare_dataset(videos: str | os.PathLike, out: str | os.PathLike, options: PrepareOptions | None = None,
                    runtime=None) -> dict[str, Any]:
    """Prepare (or continue preparing) a dataset from every video under ``videos``; returns the summary."""
    opts = options or PrepareOptions()
    if opts.size % 8 or opts.size < 8:
        raise InvalidRequestError(f"size must be a positive multiple of 8, got {opts.size}")
    if opts.clip_length < 1:
        raise InvalidRequestError(f"clip_length must be at least 1, got {opts.clip_length}")
    videos, out = Path(videos), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    if index_path.is_file():
        index = load_index(out)
        old = {k: index.get(k) for k in LAYOUT_KEYS}
        if old != opts.layout():
            raise InvalidRequestError(f"'{out}' was prepared with {old}, this run asks for {opts.layout()}; "
                                      "use the same options or a new output folder")
    else:
        index = {"format": DATASET_FORMAT, **opts.layout(), "videos": {}, "clips": [], "summary": {}}

    files = find_videos(videos)
    base = videos if videos.is_dir() else videos.parent
    run = {"found": len(files), "processed": 0, "already_done": 0, "skipped": {}, "clips_written": 0,
           "clips_dropped": 0, "seconds": 0.0}
    start = time.perf_counter()
    for path in files:
        rel = path.relative_to(base).as_posix()
        key = _file_key(path)
        entry = index["videos"].get(rel)
        if entry and entry.get("key") == key and (entry["status"] == "done" or not opts.retry_skipped):
            run["already_done"] += 1
            continue
        run["processed"] += 1
        t0 = time.perf_counter()
        try:
            prepare_one = _prepare_still if is_image_file(path) else _prepare_video
            clips, dropped, info = prepare_one(path, rel, out, opts, runtime)
            entry = {"key": key, "status": "done", "reason": None, **info, "clips": len(clips),
                     "clips_dropped": dropped}
            run["clips_written"] += len(clips)
            run["clips_dropped"] += dropped
            log.info("%s: %d clips (%d dropped) in %.1f s", rel, len(clips), dropped, time.perf_counter() - t0)
        except _Skip as exc:
            clips = []
            entry = {"key": key, "status": "skipped", "reason": str(exc)}
            run["skipped"][rel] = str(exc)
            log.warning("skipping %s: %s", rel, exc)
        index["clips"] = [c for c in index["clips"] if c["video"] != rel] + clips
        index["videos"][rel] = entry
        index["summary"] = _summary(index, run, time.perf_counter() - start)
        atomic_write_json(index_path, index)  # after every video: an interruption loses one video at most
        _remove_stale_shards(out, rel, {c["shard"] for c in clips})
    index["summary"] = _summary(index, run, time.perf_counter() - start)
    atomic_write_json(index_path, index)
    s = index["summary"]
    log.info("dataset %s: %d videos (%d done, %d skipped), %d clips, %d frames; this run processed %d "
             "(%d already done), wrote %d clips", out, s["videos"], s["done"], s["skipped"], s["clips"],
             s["frames"], run["processed"], run["already_done"], run["clips_written"])
    for rel, why in s["skipped_reasons"].items():
        log.info("  skipped %s: %s", rel, why)
    return s


def _remove_stale_shards(out: Path, rel: str, keep: set[str]) -> None:
    """Delete shards of a reprocessed video that its new entry no longer lists (after the index is written)."""
    folder = out / "shards" / _video_id(rel)
    for f in folder.glob("*.npz") if folder.is_dir() else []:
        if f.relative_to(out).as_posix() not in keep:
            f.unlink()


def _summary(index: dict[str, Any], run: dict[str, Any], seconds: float) -> dict[str, Any]:
    videos = index["videos"]
    skipped = {k: v["reason"] for k, v in videos.items() if v["status"] == "skipped"}
    return {
        "videos": len(videos),
        "done": sum(v["status"] == "done" for v in videos.values()),
        "skipped": len(skipped),
        "skipped_reasons": skipped,
        "clips": len(index["clips"]),
        "frames": sum(c["length"] for c in index["clips"]),
        "last_run": {**run, "seconds": round(seconds, 2)},
    }


def _prepare_video(path: Path, rel: str, out: Path, opts: PrepareOptions,
                   runtime) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Landmarks, crop boxes and shards of one video: (clip entries, clips dropped, video info)."""
    from emoji_model.landmarks import extract_video
    from emoji_model.video import prefetch, probe_video

    try:
        source_fps, _ = probe_video(path)
        keep = frame_selector(source_fps, opts.fps)
        fps = min(source_fps, opts.fps) if opts.fps else source_fps
        # Pass 1: track the face through every kept frame (VIDEO mode: temporal tracking, full frames).
        frames = prefetch(frame for _, frame in _selected_frames(path, keep))
        track = extract_video(frames, fps, face_model=opts.face_model, what=f"video '{rel}'", runtime=runtime)
    except VideoReadError as exc:
        raise _Skip(f"unreadable: {exc}") from None
    except NoFaceDetectedError:
        raise _Skip("no face found in any frame") from None
    except InvalidRequestError as exc:
        raise _Skip(str(exc)) from None

    n = len(track)
    count = n // opts.clip_length
    if count == 0:
        raise _Skip(f"{n} frames, shorter than one clip of {opts.clip_length}")
    plans = []
    dropped = 0
    for k in range(count):
        span = slice(k * opts.clip_length, (k + 1) * opts.clip_length)
        if not track.valid[span].all():
            dropped += 1  # a clip must have a detected face in every frame: masks need real landmarks
            continue
        plans.append((k, span, clip_box(track.points[span], track.size, opts.scale)))
    if not plans:
        raise _Skip(f"no clip of {opts.clip_length} frames with a face in every frame")

    # Pass 2: decode again; crop the frames of each planned clip, render its controls and masks, write it.
    vid = _video_id(rel)
    starts = {span.start: (k, span, box) for k, span, box in plans}
    entries: list[dict[str, Any]] = []
    clip, pending, sources = None, [], []
    try:
        for kept, (source_i, frame) in enumerate(_selected_frames(path, keep)):
            if kept in starts:
                clip, pending, sources = starts[kept], [], []
            if clip is None:
                continue
            pending.append(crop_frame(frame, clip[2], opts.size))
            sources.append(source_i)
            if len(pending) == opts.clip_length:
                entries.append(_write_clip(out, vid, rel, *clip, track, np.stack(pending), sources, fps, opts,
                                           runtime))
                clip = None
                if len(entries) == len(plans):
                    break
    except VideoReadError as exc:
        raise _Skip(f"unreadable on the second pass: {exc}") from None
    if len(entries) != len(plans):
        raise _Skip(f"the second decoding pass ended before clip {len(entries)} of {len(plans)}")
    return entries, dropped, {"frames": n, "fps": fps, "source_fps": source_fps, "size": list(track.size)}


def _prepare_still(path: Path, rel: str, out: Path, opts: PrepareOptions,
                   runtime) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """A still portrait as a one-frame clip (training moves it with synthetic warps, trainer.augment)."""
    from emoji_model.landmarks import extract_image
    from emoji_model.video import load_image

    try:
        image = load_image(path)
        track = extract_image(image, face_model=opts.face_model, what=f"image '{rel}'", runtime=runtime)
    except NoFaceDetectedError:
        raise _Skip("no face found") from None
    except InvalidRequestError as exc:
        raise _Skip(f"unreadable: {exc}") from None
    box = clip_box(track.points, track.size, opts.scale)
    frames = crop_frame(image, box, opts.size)[None]
    entry = _write_clip(out, _video_id(rel), rel, 0, slice(0, 1), box, track, frames, [0], 0.0, opts, runtime)
    entry["still"] = True
    return [entry], 0, {"frames": 1, "fps": 0.0, "source_fps": 0.0, "size": list(track.size)}


def _write_clip(out: Path, vid: str, rel: str, k: int, span: slice, box: tuple[int, int, int], track,
                frames: np.ndarray, source_frames: list[int], fps: float, opts: PrepareOptions,
                runtime) -> dict[str, Any]:
    """Controls and masks of one cropped clip from its landmarks mapped into the crop; the shard; its entry."""
    from dataclasses import replace

    from emoji_model.landmarks import face_masks, render_controls

    sub = track[np.arange(span.start, span.stop)]
    sub = replace(sub, points=points_in_box(sub.points, track.size, box), size=(opts.size, opts.size))
    controls = render_controls(sub, (opts.size, opts.size), runtime=runtime)
    expression, facial = face_masks(sub, (opts.size, opts.size), runtime=runtime)
    shard = Path("shards") / vid / f"{k:05d}.npz"
    write_shard(out / shard, frames=frames, controls=controls, expression=expression, facial=facial,
                points=sub.points, box=box, source_frames=np.asarray(source_frames), compress=opts.compress)
    return {"id": f"{vid}/{k:05d}", "video": rel, "start": int(span.start), "length": int(span.stop - span.start),
            "shard": shard.as_posix(), "fps": fps, "box": [int(v) for v in box]}


# -------------------------------------------------------------------------------------------------
# Reading for training
# -------------------------------------------------------------------------------------------------
def downsample_mask(mask: np.ndarray, factor: int = 8, mode: str = "max") -> np.ndarray:
    """bool masks [...,H,W] → float32 [...,H/f,W/f] on the latent grid.

    ``max``: a latent cell is in the mask when any of its f×f pixels is (keeps thin expression strokes);
    ``area``: when at least half of its pixels are.
    """
    *lead, h, w = mask.shape
    if h % factor or w % factor:
        raise InvalidRequestError(f"mask size {w}x{h} is not a multiple of {factor}")
    cells = mask.reshape(*lead, h // factor, factor, w // factor, factor)
    if mode == "max":
        return cells.any(axis=(-3, -1)).astype(np.float32)
    if mode == "area":
        return (cells.mean(axis=(-3, -1)) >= 0.5).astype(np.float32)
    raise InvalidRequestError(f"mask downsampling must be 'max' or 'area', got {mode!r}")


class ClipDataset:
    """Training samples from a prepared dataset (a map-style torch Dataset).

    Item ``epoch·N + i`` is window ``i``: ``frames`` consecutive frames of one clip (every video clip is
    cut into ``clip_length // frames`` windows; a still portrait is one window of its single frame
    repeated) with a reference frame drawn from the same clip, by a generator seeded with
    (seed, epoch, i) — so an item is the same in any process, worker or resumed run. With ``augment``
    one draw of :mod:`trainer.augment` changes the reference and the window alike; stills always get a
    synthetic head motion, so their reference is never the target itself. A sample holds ``pixels``
    [3,F,S,S] in -1..1, ``reference`` [3,S,S] in 0..1, ``control`` [3,F,S,S] in 0..1 and ``masks``
    [2,F,S/8,S/8] (expression, facial) on the latent grid.
    """

    def __init__(self, root: str | os.PathLike, frames: int, seed: int = 0, max_clips: int | None = None,
                 mask_downsample: str = "max", augment=None):
        from .augment import AugmentOptions

        self.root = Path(root)
        index = load_index(self.root)
        self.clip_length = int(index["clip_length"])
        self.size = int(index["size"])
        self.clips = list(index["clips"])[:max_clips] if max_clips else list(index["clips"])
        if not self.clips:
            raise InvalidRequestError(f"dataset '{root}' holds no clip (see the skipped videos in its index.json)")
        if frames > self.clip_length:
            raise InvalidRequestError(f"{frames} frames per sample exceed the dataset's clips of {self.clip_length}")
        self.frames = int(frames)
        self.augment = augment or AugmentOptions()
        self.augment.validate()
        windows = self.clip_length // self.frames
        # (clip, first frame, still) of every item of an epoch
        self.items = [(c, 0 if clip.get("still") else w * self.frames, bool(clip.get("still")))
                      for c, clip in enumerate(self.clips) for w in range(1 if clip.get("still") else windows)]
        if any(still for *_, still in self.items) and not (self.augment.rotation or self.augment.scale or
                                                          self.augment.shift):
            raise InvalidRequestError("the dataset has still portraits, which train only with synthetic head "
                                      "motion: set a non-zero augment_rotation, augment_scale or augment_shift")
        self.seed = int(seed)
        self.mask_downsample = mask_downsample

    def __len__(self) -> int:
        """Items per epoch."""
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, Any]:
        import torch

        from .augment import apply_plan, draw_plan

        epoch, i = divmod(int(item), len(self))
        c, start, still = self.items[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        length = 1 if still else self.clip_length
        window = np.arange(start, start + self.frames) if not still else np.zeros(self.frames, dtype=np.int64)
        others = np.setdiff1d(np.arange(length), window)
        ref = int(rng.choice(others if len(others) else window))
        plan = draw_plan(rng, self.augment, still=still)
        data = read_shard(self.root / self.clips[c]["shard"])
        frames, ref_image = data["frames"][window], data["frames"][ref]
        controls, expression, facial = data["controls"][window], data["expression"][window], data["facial"][window]
        if plan.looks or plan.background or plan.flip or plan.ref_warp:
            frames, points, ref_image, _ = apply_plan(plan, frames, data["points"][window], ref_image,
                                                      data["points"][ref])
            if plan.flip or plan.ref_warp:  # the geometry moved: draw the controls and masks again
                controls, expression, facial = _redraw(points, self.size)
        pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # f h w c -> c f h w
        reference = torch.from_numpy(ref_image).permute(2, 0, 1).float() / 255.0
        control = torch.from_numpy(np.ascontiguousarray(controls)).permute(3, 0, 1, 2).float() / 255.0
        masks = np.stack([downsample_mask(expression, 8, self.mask_downsample),
                          downsample_mask(facial, 8, self.mask_downsample)])
        return {"pixels": pixels, "reference": reference, "control": control, "masks": torch.from_numpy(masks),
                "item": torch.tensor(int(item))}


def _redraw(points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Controls uint8 [F,S,S,3] and expression / facial masks bool [F,S,S] from landmarks [F,478,3]."""
    from emoji_model.landmarks import expression_mask, facial_mask, render_frame

    controls = np.zeros((len(points), size, size, 3), dtype=np.uint8)
    for k, p in enumerate(points):
        render_frame(p, (size, size), image=controls[k])
    expression = np.stack([expression_mask(p, (size, size)) for p in points])
    facial = np.stack([facial_mask(p, (size, size)) for p in points])
    return controls, expression, facial


class EpochBatches:
    """The deterministic batch order: per epoch a seeded permutation cut into batches, dealt to processes.

    Global batch ``j`` of an epoch holds items ``perm[j·B:(j+1)·B]`` and goes to process ``j % world``;
    a micro-step consumes ``world`` global batches. An epoch has ``len // B`` batches rounded down to a
    multiple of ``world``. The data position of a run is (epoch, global batches consumed).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.num_items, self.batch_size, self.seed = int(num_items), int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world)
        self.per_epoch = (self.num_items // self.batch_size) // self.world * self.world
        if self.per_epoch == 0:
            raise InvalidRequestError(
                f"the dataset has {num_items} items, fewer than one batch of {batch_size} for each of "
                f"{world} processes; lower batch_size or add data")

    def permutation(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``."""
        return np.random.default_rng([self.seed, 7919, int(epoch)]).permutation(self.num_items)

    def batches(self, epoch: int, position: int = 0) -> list[list[int]]:
        """This process's batches of ``epoch`` from global batch ``position`` on (item ids epoch·N + i)."""
        perm = self.permutation(epoch)
        out = []
        for j in range(position + self.rank, self.per_epoch, self.world):
            out.append([epoch * self.num_items + int(k) for k in perm[j * self.batch_size:(j + 1) * self.batch_size]])
        return out


def batch_stream(dataset: ClipDataset, order: EpochBatches, epoch: int, position: int,
                 num_workers: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Endless (epoch, position after this batch, batch) from the data position (epoch, position)."""
    from torch.utils.data import DataLoader

    while True:
        batches = order.batches(epoch, position)
        if batches:
            loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                persistent_workers=False, pin_memory=False)
            for batch in loader:
                position += order.world
                yield epoch, position, batch
        epoch, position = epoch + 1, 0
