"""Landmark extraction, FaceTrack, control renders and masks on the real driving video and portraits."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from emoji_model import InvalidRequestError, NoFaceDetectedError, VideoReadError
from emoji_model.landmarks import (
    HEAD_OVAL,
    CONTOUR_COLOR,
    LEFT_IRIS,
    PART_COLORS,
    PUPIL_COLOR,
    RIGHT_IRIS,
    FaceTrack,
    expression_mask,
    extract_file,
    extract_image,
    extract_video,
    eye_aperture,
    face_masks,
    facial_mask,
    fill_invalid,
    render_controls,
    render_frame,
    topology,
)
from emoji_model.video import read_video, write_video
from landmark_inputs import BLINK_FRAMES, astronaut_track, driving_frames, driving_track


def _inside(polygon: np.ndarray, point: np.ndarray) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32), (float(point[0]), float(point[1])), False) > 0


# -- extraction on the driving video -----------------------------------------------------------

def test_every_driving_frame_has_a_face():
    track = driving_track()
    assert len(track) == 97 and track.size == (512, 512) and track.fps == pytest.approx(30.0)
    assert track.valid.all()
    assert track.points.shape == (97, 478, 3) and track.canonical.shape == (97, 478, 3)
    assert track.pose.shape == (97, 4, 4) and track.blendshapes.shape == (97, 52)
    # The face fills the middle of the frame: nose tip near the centre, face ~250 px wide.
    nose = track.pixels()[:, 1]
    assert np.all((nose > 150) & (nose < 400))
    oval_width = np.ptp(track.pixels()[:, topology().face_oval, 0], axis=1)
    assert 200 < np.median(oval_width) < 330


def test_blinks_close_the_eyes():
    track = driving_track()
    aperture = eye_aperture(track.points, track.size)  # [97, 2]
    blink = np.zeros(len(track), bool)
    blink[list(BLINK_FRAMES)] = True
    opened = np.median(aperture[~blink], axis=0)
    shut = np.median(aperture[blink], axis=0)
    assert np.all(opened == pytest.approx(0.40, abs=0.03))
    assert np.all(shut < 0.5 * opened)
    assert np.all(aperture[32:39] < 0.1)
    # The blink is also what MediaPipe's blendshapes say (eyeBlinkLeft = 9, eyeBlinkRight = 10).
    assert track.blendshapes[blink][:, 9:11].mean() > 3 * track.blendshapes[~blink][:, 9:11].mean()


def test_iris_points_lie_inside_the_eye_contour():
    track = driving_track()
    topo = topology()
    aperture = eye_aperture(track.points, track.size).min(axis=1)
    px = track.pixels()
    for i in np.flatnonzero(aperture > 0.3):
        assert _inside(px[i, topo.right_eye_ring], px[i, RIGHT_IRIS[0]]), i
        assert _inside(px[i, topo.left_eye_ring], px[i, LEFT_IRIS[0]]), i


def test_astronaut_landmarks_are_pinned(astronaut, face_task):
    track = astronaut_track()
    assert len(track) == 1 and track.valid.all() and track.size == (512, 512) and track.fps == 0
    np.testing.assert_allclose(track.pixels()[0, 1], [223.5, 131.1], atol=2.0)  # nose tip
    assert eye_aperture(track.points, track.size).mean() == pytest.approx(0.35, abs=0.03)
    grey = np.repeat(astronaut.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    grey_track = extract_image(grey[..., 0], face_model=face_task)
    np.testing.assert_allclose(grey_track.pixels()[0, 1], track.pixels()[0, 1], atol=4.0)


def test_largest_face_is_chosen_and_face_index_picks_another(astronaut, face_task):
    # The astronaut's face twice: full size on the left, at 0.75 on the right.
    crop = astronaut[20:260, 100:340]
    small = cv2.resize(crop, (180, 180), interpolation=cv2.INTER_AREA)
    canvas = np.full((240, 440, 3), 255, np.uint8)
    canvas[:, :240] = crop
    canvas[30:210, 260:440] = small
    first = extract_image(canvas, face_model=face_task)
    second = extract_image(canvas, face_model=face_task, face_index=1)
    assert first.pixels()[0, 1, 0] < 240 < second.pixels()[0, 1, 0]
    width = lambda t: np.ptp(t.pixels()[0, topology().face_oval, 0])  # noqa: E731
    assert width(second) == pytest.approx(0.75 * width(first), rel=0.1)
    with pytest.raises(NoFaceDetectedError, match="Only 2 face"):
        extract_image(canvas, face_model=face_task, face_index=2)


@pytest.mark.parametrize("name", ["cat", "blank", "tiny", "noise"])
def test_faceless_images_raise_no_face_detected(name, face_task):
    from skimage import data

    image = {"cat": data.chelsea(), "blank": np.zeros((256, 256, 3), np.uint8),
             "tiny": np.full((1, 1, 3), 128, np.uint8),
             "noise": np.random.default_rng(0).integers(0, 255, (128, 96, 3), dtype=np.uint8)}[name]
    try:
        track = extract_image(image, face_model=face_task, what=f"the {name} image")
    except NoFaceDetectedError as exc:
        assert f"the {name} image" in str(exc)
    else:  # a face found where there is none must still be a well-formed track
        assert track.valid.all() and np.isfinite(track.canonical).all()
    if name in ("cat", "blank"):
        with pytest.raises(NoFaceDetectedError):
            extract_image(image, face_model=face_task)


def test_a_mediapipe_failure_is_not_reported_as_no_face(astronaut, face_task):
    """An error inside MediaPipe surfaces as LandmarkerError with its cause, not as a faceless frame."""
    from emoji_model import LandmarkerError
    from emoji_model.landmarks import FaceLandmarker

    class Broken:
        def detect(self, image):
            raise RuntimeError("CalculatorGraph::Run() failed")

        def close(self):
            pass

    with FaceLandmarker(face_task) as lm:
        assert len(lm.detect(astronaut)) == 1
        real, lm._landmarker = lm._landmarker, Broken()
        try:
            with pytest.raises(LandmarkerError, match="CalculatorGraph") as err:
                lm.detect(astronaut)
        finally:
            lm._landmarker = real
    assert isinstance(err.value.__cause__, RuntimeError)


def test_a_video_without_any_face_raises(face_task):
    blank = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(NoFaceDetectedError, match="any of the 4 frames of the blank video"):
        extract_video(blank, 25, face_model=face_task, what="the blank video")


def test_frames_without_a_face_are_interpolated_and_counted(face_task, caplog):
    frames, fps = driving_frames()
    frames = frames[:30].copy()
    blanked = [0, 12, 13, 14, 29]
    frames[blanked] = 0
    with caplog.at_level(logging.WARNING, logger="emoji_model"):
        track = extract_video(frames, fps, face_model=face_task, what="the test clip")
    assert list(np.flatnonzero(~track.valid)) == blanked
    assert "no face in 5 of 30 frames of the test clip" in caplog.text
    reference = driving_track()[:30]
    px, ref = track.pixels(), reference.pixels()
    # Held at the ends, linear in between: within a few pixels of what was really there.
    np.testing.assert_allclose(px[0], px[1], atol=1e-3)
    np.testing.assert_allclose(px[29], px[28], atol=1e-3)
    np.testing.assert_allclose(px[13], 0.5 * (px[12 - 1] + px[15]), atol=1e-2)
    assert np.abs(px[12:15] - ref[12:15]).mean() < 3.0
    assert np.isfinite(track.canonical).all() and np.isfinite(track.pose).all()
    rotation = track.pose[13, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)


def test_fill_invalid_keeps_valid_frames():
    track = driving_track()[:10]
    broken = track[np.arange(10)]
    broken.valid[[3, 4]] = False
    filled = fill_invalid(broken)
    np.testing.assert_array_equal(filled.points[broken.valid], track.points[broken.valid])
    assert np.allclose(filled.points[3], (2 * track.points[2] + track.points[5]) / 3, atol=1e-6)
    assert list(filled.valid) == list(broken.valid)


def test_face_track_round_trips_through_npz(tmp_path):
    track = driving_track()[::7]
    path = track.save(tmp_path / "track.npz")
    with np.load(path) as data:
        assert {"points", "canonical", "pose", "blendshapes", "valid", "size"} <= set(data.files)
    loaded = FaceTrack.load(path)
    assert loaded.size == track.size and loaded.fps == track.fps and len(loaded) == len(track)
    for name in FaceTrack.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(track, name))
    both = FaceTrack.concat([loaded, track[:2]])
    assert len(both) == len(track) + 2
    with pytest.raises(InvalidRequestError):
        FaceTrack.load(tmp_path / "missing.npz")


# -- video files ---------------------------------------------------------------------------------

def test_unreadable_or_empty_video_raises_video_read_error(tmp_path, face_task):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (garbage, empty, tmp_path / "missing.mp4"):
        with pytest.raises(VideoReadError):
            read_video(path)
        with pytest.raises(VideoReadError):
            extract_file(path, face_model=face_task)


def test_a_video_with_no_frame_raises_video_read_error(tmp_path):
    import av

    path = tmp_path / "no_frames.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 64
    with pytest.raises(VideoReadError):
        read_video(path)


def test_prefetch_passes_frames_errors_and_stops_early(driving_video, tmp_path):
    import threading

    from emoji_model.video import iter_video, prefetch

    frames, _ = driving_frames()
    fetched = list(prefetch(iter_video(driving_video), depth=4))
    assert len(fetched) == 97 and all((a == b).all() for a, b in zip(fetched[::20], frames[::20]))
    stream = prefetch(iter_video(driving_video), depth=2)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "fye-video-prefetch"]
    with pytest.raises(VideoReadError):
        list(prefetch(iter_video(tmp_path / "missing.mp4")))


def test_write_video_round_trips_odd_sizes(tmp_path):
    frames = np.zeros((5, 33, 47, 3), np.uint8)
    frames[:, 10:20, 10:30] = (200, 40, 40)
    path = write_video(tmp_path / "sub" / "clip.mp4", frames, 12.5)
    back, fps = read_video(path)
    assert back.shape == (5, 34, 48, 3) and fps == pytest.approx(12.5)
    assert np.abs(back[:, 12:18, 12:28].astype(int) - (200, 40, 40)).mean() < 12
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temporary file left


# -- control renders -------------------------------------------------------------------------

def _oval_polyline(points: np.ndarray, size, thickness=1) -> np.ndarray:
    w, h = size
    canvas = np.zeros((h, w), np.uint8)
    px = np.minimum(np.floor(points[topology().face_oval, :2] * [w, h]), [w - 1, h - 1]).astype(np.int32)
    cv2.polylines(canvas, [px], True, 1, thickness)
    return canvas.astype(bool)


def test_render_has_no_contour_and_draws_the_pupils():
    track = driving_track()[::8]
    renders = render_controls(track)
    assert renders.shape == (len(track), 512, 512, 3) and renders.dtype == np.uint8
    allowed = {tuple(c) for c in PART_COLORS.values()} | {PUPIL_COLOR, (0, 0, 0)}
    for points, image in zip(track.points, renders):
        on_oval = _oval_polyline(points, track.size)
        assert not image[on_oval].any(), "a pixel of the face contour was drawn"
        colors = {tuple(c) for c in np.unique(image.reshape(-1, 3), axis=0)}
        assert colors <= allowed
        for centre in (RIGHT_IRIS[0], LEFT_IRIS[0]):
            x, y = np.floor(points[centre, :2] * 512).astype(int)
            assert (image[y - 3:y + 3, x - 3:x + 3] == PUPIL_COLOR).all()  # 6×6 dot at 512 px
        assert (image == PUPIL_COLOR).all(axis=-1).sum() == 72
        # Eyes, brows and inner lips are drawn, the outer lips are not.
        for part in ("left_eye", "right_eyebrow", "inner_lips_upper_left"):
            assert (image == PART_COLORS[part]).all(axis=-1).sum() > 5, part
        assert not (image == PART_COLORS["outer_lips_lower_left"]).all(axis=-1).any()


def test_contour_and_outer_lips_toggles():
    points = driving_track().points[0]
    image = render_frame(points, (512, 512), include_contour=True, outer_lips=True)
    on_oval = _oval_polyline(points, (512, 512))
    assert (image[on_oval] == CONTOUR_COLOR).all(axis=-1).mean() > 0.9
    assert (image == PART_COLORS["outer_lips_lower_left"]).all(axis=-1).sum() > 5


def test_render_scales_with_resolution():
    points = driving_track().points[40]
    small = render_frame(points, (512, 512))
    large = render_frame(points, (1024, 1024))
    wide = render_frame(points, (768, 384))
    assert large.shape == (1024, 1024, 3) and wide.shape == (384, 768, 3)
    assert (large == PUPIL_COLOR).all(axis=-1).sum() == 4 * (small == PUPIL_COLOR).all(axis=-1).sum()
    ratio = (large.any(-1).sum() - 2 * 144 * 4) / (small.any(-1).sum() - 2 * 36)
    assert 3.0 < ratio < 4.5  # lines twice as long and twice as thick


def test_points_outside_the_frame_are_skipped():
    points = driving_track().points[0].copy()
    points[:, 0] += 0.45  # the eye on the image's right leaves the frame
    eye = topology().parts["left_eye"].ravel()
    assert (points[eye, 0] > 1.01).all()
    image = render_frame(points, (512, 512))
    assert image.any()
    assert not (image == PART_COLORS["left_eye"]).all(axis=-1).any()
    assert not image[:, -2:].any()  # nothing clamped onto the border


# -- masks ---------------------------------------------------------------------------------------

def test_masks_cover_the_face_and_not_the_background():
    track = astronaut_track()
    points, size = track.points[0], track.size
    facial = facial_mask(points, size)
    expression = expression_mask(points, size)
    px = track.pixels()[0]
    polygon = px[list(HEAD_OVAL)]  # the released head polygon: temple to temple around the chin
    x, y = polygon[:, 0], polygon[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    assert facial.sum() == pytest.approx(area, rel=0.03)
    # No forehead: the top of the face oval (point 10) and the points just below it stay outside.
    for forehead in (10, 151):
        x, y = px[forehead].astype(int)
        assert not facial[y, x], forehead
    for landmark in (1, 13, 159, 386, RIGHT_IRIS[0], LEFT_IRIS[0]):  # nose, lips, lids, pupils
        x, y = px[landmark].astype(int)
        assert facial[y, x] and (landmark == 1 or expression[y, x]), landmark
    assert not expression[int(px[1, 1]), int(px[1, 0])]  # the nose tip is not an expression point
    assert not facial[:40].any() and not facial[:, :120].any() and not facial[300:].any()
    # The expression mask stays inside the (slightly dilated) face box and is a fraction of the face.
    ys, xs = np.nonzero(expression)
    lo, hi = px[topology().face_oval].min(0), px[topology().face_oval].max(0)
    assert xs.min() >= lo[0] - 5 and xs.max() <= hi[0] + 5 and ys.min() >= lo[1] - 5 and ys.max() <= hi[1] + 5
    assert 0.15 < expression.sum() / facial.sum() < 0.8
    expr_all, facial_all = face_masks(driving_track()[:3], size=(256, 256))
    assert expr_all.shape == facial_all.shape == (3, 256, 256) and expr_all.dtype == bool
