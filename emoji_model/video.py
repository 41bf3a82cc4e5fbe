"""Video and image files: decode to RGB uint8 frames, encode H.264 mp4, read stills."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import InvalidRequestError, VideoReadError
from .fileio import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` names a still image (by its suffix)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def probe_video(path: str | os.PathLike) -> tuple[float, int]:
    """(frame rate, frame count as the container states it, 0 if unknown) of the first video stream."""
    import av

    if not Path(path).is_file():
        raise VideoReadError(f"Video file '{path}' does not exist.")
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            return _stream_fps(stream), int(stream.frames or 0)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"Cannot open video '{path}': {exc}") from exc


def iter_video(path: str | os.PathLike | BinaryIO) -> Iterator[np.ndarray]:
    """Yield the frames of a video file (a path or an open binary file) one by one as uint8 RGB [H,W,3].

    VideoReadError if none decode.
    """
    import av

    source, name = _source(path)
    count = 0
    try:
        with av.open(source) as container:
            stream = _video_stream(container, name)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                count += 1
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"Cannot decode video '{name}' (after {count} frames): {exc}") from exc
    if count == 0:
        raise VideoReadError(f"Video '{name}' holds no decodable frame.")


def read_audio(path: str | os.PathLike | BinaryIO, duration: float | None = None) -> tuple[np.ndarray, int] | None:
    """The first audio stream of a media file as float32 [channels, samples] and its sample rate.

    Only the audio packets are decoded (not the video's frames). ``duration`` (seconds) keeps the
    start of it. None when the file has no audio stream.
    """
    import av

    source, name = _source(path)
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = int(stream.sample_rate or stream.codec_context.sample_rate)
            layout = "mono" if stream.codec_context.channels == 1 else "stereo"
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            limit = None if duration is None else int(math.ceil(duration * rate))
            parts: list[np.ndarray] = []
            kept = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray())
                    kept += parts[-1].shape[1]
                if limit is not None and kept >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    parts.append(out.to_ndarray())
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"Cannot decode the audio of '{name}': {exc}") from exc
    if not parts:
        return None
    wave = np.concatenate(parts, axis=1).astype(np.float32)
    return (wave if limit is None else wave[:, :limit]), rate


def _source(path: str | os.PathLike | BinaryIO) -> tuple[str | BinaryIO, str]:
    """What av.open takes, and a name for messages; a path must exist."""
    if hasattr(path, "read"):
        if hasattr(path, "seek"):
            path.seek(0)
        return path, getattr(path, "name", "<in-memory video>")
    if not Path(path).is_file():
        raise VideoReadError(f"Video file '{path}' does not exist.")
    return str(path), str(path)


def prefetch(frames: Iterator[np.ndarray], depth: int = 16) -> Iterator[np.ndarray]:
    """Run ``frames`` (e.g. :func:`iter_video`) in a background thread, ``depth`` frames ahead.

    Decoding releases the GIL, so it overlaps with the consumer's work (landmark detection).
    Errors of the producer are raised in the consumer; stopping early stops the producer.
    """
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # releases the file of a generator left half-way

    worker = threading.Thread(target=produce, name="fye-video-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path``: (frames uint8 [N,H,W,3] RGB, fps)."""
    fps, _ = probe_video(path)
    frames = list(iter_video(path))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"Video '{path}' changes frame size mid-stream ({sorted(shapes)}).")
    return np.stack(frames), fps


def frame_rate_fraction(fps: float) -> Fraction:
    """A frame rate as a Fraction: the NTSC rates (23.976, 29.97, 59.94, ...) exactly, others to 1/1000."""
    for base in (24, 30, 48, 60, 120, 240):
        if abs(fps - base * 1000 / 1001) < 0.005:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray] | np.ndarray, fps: float,
                crf: int = 18) -> Path:
    """Write uint8 RGB frames as an H.264 (yuv420p) mp4, atomically; odd sizes are padded to even."""
    import av

    path = Path(path)
    if not fps or fps <= 0:
        raise InvalidRequestError(f"fps must be positive, got {fps!r}")
    count = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=frame_rate_fraction(fps))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            frame = _even(np.ascontiguousarray(frame, dtype=np.uint8))
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if count == 0:
            raise InvalidRequestError(f"no frame to write to '{path}'")
        for packet in stream.encode():
            container.mux(packet)
    log.debug("wrote %d frames to %s", count, path)
    return path


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a still image file as uint8 RGB [H,W,3] (alpha dropped, grey expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidRequestError(f"Cannot read image '{path}': {exc}") from exc


def _video_stream(container, path):
    if not container.streams.video:
        raise VideoReadError(f"'{path}' has no video stream.")
    return container.streams.video[0]


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


def _even(frame: np.ndarray) -> np.ndarray:
    # yuv420p needs even width and height; pad by repeating the last row/column.
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame
