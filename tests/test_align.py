"""Motion alignment: the astronaut driven by herself and by the real driving video."""

from __future__ import annotations

import numpy as np
import pytest

from emoji_model import InvalidRequestError, NoFaceDetectedError
from emoji_model.align import RELEASED, align_motion, resolve_neutral, smooth_track
from emoji_model.landmarks import (
    LEFT_IRIS,
    RIGHT_IRIS,
    FaceTrack,
    eye_aperture,
    neutral_frame,
    render_controls,
    topology,
)
from landmark_inputs import BLINK_FRAMES, astronaut_track, driving_track


def _face_box(track: FaceTrack, frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
    px = track.pixels()[frame, topology().face_oval]
    return px.min(axis=0), px.max(axis=0)


def test_driven_by_herself_the_astronaut_keeps_her_points():
    ast = astronaut_track()
    driving = FaceTrack.concat([ast, ast, ast])
    aligned = align_motion(ast, driving)
    assert len(aligned) == 3 and aligned.size == ast.size
    assert np.abs(aligned.pixels() - ast.pixels()).max() < 1.0  # measured 2e-5 px
    np.testing.assert_allclose(aligned.points[..., 2], np.repeat(ast.points[..., 2], 3, 0), atol=1e-4)
    np.testing.assert_allclose(aligned.canonical, np.repeat(ast.canonical, 3, 0), atol=1e-5)
    np.testing.assert_allclose(aligned.pose, np.repeat(ast.pose, 3, 0), atol=1e-4)
    for options in ({"relative_pose": False}, {"iris_tracking": False}, {"neutral": "first"},
                    {"smoothing": 3}, {"expression_scale": 2.0}, RELEASED, {"rotation": "off"},
                    {"translation": "released"}, {"iris": "off"}, {"regions": "only mouth"}, {"loop": True},
                    {"neutral": "blendshapes", "regions": "only eyes"}):
        again = align_motion(ast, driving, **options)
        assert np.abs(again.pixels() - ast.pixels()).max() < 1.0, options


def test_driving_video_on_the_astronaut_stays_in_her_face_and_blinks():
    ast, driving = astronaut_track(), driving_track()
    aligned = align_motion(ast, driving)
    assert len(aligned) == len(driving) == 97 and aligned.size == (512, 512)
    assert aligned.fps == driving.fps and aligned.valid.all()
    lo, hi = _face_box(ast)
    margin = 0.15 * (hi - lo)
    px = aligned.pixels()
    inner = px[:, topology().expression_points]  # eyes, brows, lips, irises
    assert (inner >= lo - margin).all() and (inner <= hi + margin).all()
    # The eyes follow the driving blinks.
    ours = eye_aperture(aligned.points, aligned.size).mean(axis=1)
    theirs = eye_aperture(driving.points, driving.size).mean(axis=1)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95  # measured 0.998
    blink = list(BLINK_FRAMES)
    opened = np.median(np.delete(ours, blink))
    assert opened == pytest.approx(eye_aperture(ast.points, ast.size).mean(), abs=0.05)
    assert ours[blink].min() < 0.25 * opened and np.median(ours[blink]) < 0.5 * opened
    # At the neutral driving frame with relative pose off, she is herself again.
    still = align_motion(ast, driving, relative_pose=False, iris_tracking=False)
    k = neutral_frame(driving)
    assert np.abs(still.pixels()[k] - ast.pixels()[0]).max() < 1.0


def test_iris_stays_at_its_relative_place_in_the_eye():
    ast, driving = astronaut_track(), driving_track()
    absolute = align_motion(ast, driving, iris="absolute")
    relative_gaze = align_motion(ast, driving)  # default: her gaze, moved as the driver's moves
    topo = topology()
    k = neutral_frame(driving)

    def relative(track, iris, ring):
        xy = track.points[:, :, :2]
        lo, hi = xy[:, ring].min(1), xy[:, ring].max(1)
        return (xy[:, iris[0]] - lo) / (hi - lo)

    for iris, ring in ((RIGHT_IRIS, topo.right_eye_ring), (LEFT_IRIS, topo.left_eye_ring)):
        theirs = relative(driving, iris, ring)
        np.testing.assert_allclose(relative(absolute, iris, ring), theirs, atol=1e-5)
        np.testing.assert_allclose(relative(relative_gaze, iris, ring),
                                   relative(ast, iris, ring) + theirs - theirs[k], atol=1e-5)
    fixed = align_motion(ast, driving, iris_tracking=False)
    rel = (fixed.points[:, 468, 0] - fixed.points[:, topo.right_eye_ring, 0].min(1)) / \
        np.ptp(fixed.points[:, topo.right_eye_ring, 0], axis=1)
    assert np.ptp(rel) < 1e-5


def test_relative_pose_off_keeps_the_reference_pose_and_expression_scale_zero_keeps_her_face():
    ast, driving = astronaut_track(), driving_track()
    no_pose = align_motion(ast, driving, relative_pose=False)
    np.testing.assert_allclose(no_pose.pose, np.repeat(ast.pose, len(driving), 0), atol=1e-5)
    with_pose = align_motion(ast, driving)
    # The driving head turns: the posed version moves, the unposed one keeps the nose in place.
    assert np.ptp(with_pose.pixels()[:, 1, 0]) > 3 * np.ptp(no_pose.pixels()[:, 1, 0])
    frozen = align_motion(ast, driving, relative_pose=False, expression_scale=0.0, iris_tracking=False)
    assert np.abs(frozen.pixels() - ast.pixels()).max() < 1.0
    stronger = align_motion(ast, driving, relative_pose=False, expression_scale=2.0)
    delta1 = np.abs(no_pose.canonical - ast.canonical).mean()
    delta2 = np.abs(stronger.canonical - ast.canonical).mean()
    assert delta2 == pytest.approx(2 * delta1, rel=1e-4)


def test_smoothing_reduces_jitter_without_lag():
    ast, driving = astronaut_track(), driving_track()
    raw = align_motion(ast, driving)
    smooth = align_motion(ast, driving, smoothing=7)
    jitter = lambda t: np.abs(np.diff(t.pixels(), n=2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < 0.7 * jitter(raw)
    assert np.abs(smooth.pixels() - raw.pixels()).mean() < 1.5
    smoothed = smooth_track(driving, 7)
    rotation = smoothed.pose[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, 1, 2), np.broadcast_to(np.eye(3), rotation.shape),
                               atol=1e-5)
    short = driving[:2]  # shorter than the window: returned unchanged
    kept = smooth_track(short, 7)
    assert len(kept) == 2
    for name in short.ARRAYS:
        np.testing.assert_array_equal(getattr(kept, name), getattr(short, name), err_msg=name)


def test_reference_and_driving_sizes_may_differ(astronaut, face_task):
    from emoji_model.landmarks import extract_image

    # The astronaut in a 3:2 frame (padded on the right), driven by the square video.
    wide_image = np.zeros((512, 768, 3), np.uint8)
    wide_image[:, :512] = astronaut
    wide = extract_image(wide_image, face_model=face_task)
    driving = driving_track()[:20]
    aligned = align_motion(wide, driving)
    assert aligned.size == (768, 512)
    assert render_controls(aligned).shape == (20, 512, 768, 3)
    # Her face stays where it is in pixels, not stretched to the wider frame.
    np.testing.assert_allclose(aligned.pixels()[:, 1], np.repeat(wide.pixels()[:, 1], 20, 0), atol=25)
    assert np.abs(wide.pixels()[0, 1] - astronaut_track().pixels()[0, 1]).max() < 3
    k = neutral_frame(driving)
    frozen = align_motion(wide, driving, relative_pose=False, iris_tracking=False)
    assert np.abs(frozen.pixels()[k] - wide.pixels()[0]).max() < 1.0


def test_neutral_choices_and_bad_requests():
    driving = driving_track()
    assert resolve_neutral(driving, "auto") == neutral_frame(driving) == 3
    assert resolve_neutral(driving, "blendshapes") == 3  # head pose and gaze are measured from it
    assert resolve_neutral(driving, "first") == 0
    assert resolve_neutral(driving, 12) == resolve_neutral(driving, "12") == 12
    ast = astronaut_track()
    with pytest.raises(InvalidRequestError):
        resolve_neutral(driving, 500)
    with pytest.raises(InvalidRequestError):
        align_motion(ast, driving, expression_scale=3.0)
    for bad in ({"rotation": "sideways"}, {"translation": "frame0"}, {"iris": "on"}, {"translation_strength": 1.5},
                {"translation_limit": -0.1}, {"regions": "only nose"}, {"regions": {"mouth": 3.0}},
                {"regions": {"ears": 1.0}}):
        with pytest.raises(InvalidRequestError):
            align_motion(ast, driving, **bad)
    faceless = ast[[0]]
    faceless.valid[:] = False
    with pytest.raises(NoFaceDetectedError):
        align_motion(faceless, driving)
    with pytest.raises(NoFaceDetectedError, match="driving video") as err:
        align_motion(ast, faceless)
    assert "portrait" not in str(err.value)


def test_alignment_in_chunks_equals_one_pass(monkeypatch):
    import emoji_model.align as al

    # The older switches, and issue 11's modes: regions, lids, the released aligner, loops, blendshapes.
    choices = [{"iris_tracking": True}, {"iris_tracking": False}, RELEASED,
               {"regions": "only mouth", "lids": "absolute", "translation": "off"},
               {"loop": True, "iris": "off", "rotation": "absolute"},
               {"neutral": "blendshapes", "regions": "only eyes"}]
    whole = [al.align_motion(astronaut_track(), driving_track(), smoothing=5, **c) for c in choices]
    monkeypatch.setattr(al, "ALIGN_CHUNK", 10)  # 97 frames: ten chunks, the last one short
    for c, expected in zip(choices, whole):
        chunked = al.align_motion(astronaut_track(), driving_track(), smoothing=5, **c)
        for name in ("points", "canonical", "pose"):
            np.testing.assert_array_equal(getattr(chunked, name), getattr(expected, name), err_msg=f"{c} {name}")
