"""Real landmark inputs computed once per test session and shared by the landmark test modules."""

from __future__ import annotations

import functools

import numpy as np

from conftest import DRIVING_VIDEO, FACE_TASK, _need

# Frames of driving_expressions.mp4 where both eyes are shut (checked by eye, pinned by the tests).
BLINK_FRAMES = range(30, 40)


@functools.cache
def driving_frames() -> tuple[np.ndarray, float]:
    """The decoded driving video (frames uint8 [97, 512, 512, 3], fps)."""
    from emoji_model.video import read_video

    return read_video(_need(DRIVING_VIDEO))


@functools.cache
def driving_track():
    """FaceTrack of the whole driving video (VIDEO mode)."""
    from emoji_model.landmarks import extract_video

    frames, fps = driving_frames()
    return extract_video(frames, fps, face_model=_need(FACE_TASK))


@functools.cache
def astronaut_track():
    """One-frame FaceTrack of skimage's astronaut."""
    from skimage import data

    from emoji_model.landmarks import extract_image

    return extract_image(data.astronaut(), face_model=_need(FACE_TASK), what="the astronaut")


def mediapipe_matrix(image: np.ndarray) -> np.ndarray:
    """MediaPipe's own facial transformation matrix of the first face in ``image`` (IMAGE mode)."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(_need(FACE_TASK))), num_faces=1,
        output_facial_transformation_matrixes=True)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    return np.asarray(result.facial_transformation_matrixes[0])


def warped(image: np.ndarray, angle: float = 0.0, shear: float = 0.0) -> np.ndarray:
    """A real portrait rotated by ``angle`` degrees (a head tilt) and sheared (a turn), about its centre."""
    import cv2

    h, w = image.shape[:2]
    rotate = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), [0, 0, 1]])
    shear_m = np.array([[1.0, shear, -shear * h / 2], [0, 1, 0], [0, 0, 1]])
    return cv2.warpAffine(image, (rotate @ shear_m)[:2], (w, h), borderMode=cv2.BORDER_REFLECT)


def cameraman() -> np.ndarray:
    """skimage's cameraman (a head turned by about 55 degrees), cropped to his head, 512 pixels, RGB."""
    import cv2
    from skimage import data

    crop = np.ascontiguousarray(np.repeat(data.camera()[20:220, 150:350, None], 3, axis=-1))
    return cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)


def lfw_image(i: int, side: int = 96, pad: int = 32) -> np.ndarray:
    """Image ``i`` of skimage's LFW subset (0-99 faces, 100-199 non-faces), upscaled, padded with black, RGB."""
    import cv2
    from skimage import data

    grey = (data.lfw_subset()[i] * 255).astype(np.uint8)
    big = np.pad(cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC), pad)
    return np.ascontiguousarray(np.repeat(big[..., None], 3, axis=-1))


@functools.cache
def moving_driver() -> tuple[np.ndarray, float]:
    """The driving video moved in its frame, the face kept inside it: panned by ±130 px (up to 0.7 face
    widths), raised by 50 px and zoomed from 0.7× to 0.95×."""
    import cv2

    frames, fps = driving_frames()
    n = len(frames)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        t = i / (n - 1)
        m = cv2.getRotationMatrix2D((256, 256), 0, 0.7 + 0.25 * t)
        m[:, 2] += (130 * np.sin(2 * np.pi * t), -50 * t)
        out[i] = cv2.warpAffine(frame, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    return out, fps


@functools.cache
def moving_driver_track():
    """FaceTrack of :func:`moving_driver` (VIDEO mode)."""
    from emoji_model.landmarks import extract_video

    frames, fps = moving_driver()
    return extract_video(frames, fps, face_model=_need(FACE_TASK))


PORTRAITS = ("astronaut", "tilt25", "tilt-30", "shear0.4", "shear-0.5", "lfw-turned", "lfw-turned-tilt20",
             "cameraman", "cameraman-tilt20")
"""Real portraits, frontal, tilted by rotating (25°, -30°), sheared, turned (an LFW face at -23° yaw,
the cameraman at about 55°) and turned and tilted."""


@functools.cache
def portrait_track(name: str):
    """One-frame FaceTrack of a named test portrait (:data:`PORTRAITS`)."""
    from skimage import data

    from emoji_model.landmarks import extract_image

    ast = data.astronaut()
    images = {"astronaut": lambda: ast, "tilt25": lambda: warped(ast, 25), "tilt-30": lambda: warped(ast, -30),
              "shear0.4": lambda: warped(ast, shear=0.4), "shear-0.5": lambda: warped(ast, shear=-0.5),
              "lfw-turned": lambda: lfw_image(75, 256, 64),
              "lfw-turned-tilt20": lambda: warped(lfw_image(75, 256, 64), 20),
              "cameraman": cameraman, "cameraman-tilt20": lambda: warped(cameraman(), 20)}
    return extract_image(images[name](), face_model=_need(FACE_TASK), what=name)


@functools.cache
def two_faces() -> np.ndarray:
    """Two real faces side by side, 640×320: the astronaut's head (left) and the cameraman's (right, turned)."""
    import cv2
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut()[5:265, 95:355])
    left = cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA)
    right = cv2.resize(cameraman(), (320, 320), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))
