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
