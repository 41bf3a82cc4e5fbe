"""Expression editor: keyframes, displacement fields and head turns on the real astronaut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoji_model import InvalidRequestError, NoFaceDetectedError, geometry
from emoji_model.__main__ import main
from emoji_model.align import align_motion
from emoji_model.editor import (
    BLENDSHAPE_NAMES,
    CONTROLS,
    Keyframe,
    animate_face,
    control_curves,
    parse_keyframes,
)
from emoji_model.landmarks import LEFT_IRIS, RIGHT_IRIS, FaceTrack, eye_aperture, render_controls, topology
from landmark_inputs import astronaut_track, driving_track


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    r = geometry.nearest_rotation(a[:3, :3].astype(np.float64)) @ geometry.nearest_rotation(
        b[:3, :3].astype(np.float64)).T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_keyframe_text_and_interpolation():
    keys = parse_keyframes("""
        # a blink, then a smile
        0: blink=0 smile=0
        12: blink=1; 24: blink = 0, smile=0.8 yaw=15
        1s: pitch=-10
    """, fps=30)
    assert [k.frame for k in keys] == [0, 12, 24, 30]
    assert keys[2].values == {"blink": 0.0, "smile": 0.8, "yaw": 15.0}
    for mode in ("linear", "smoothstep"):
        c = control_curves(keys, 40, mode)
        assert c["blink"][6] == pytest.approx(0.5) and c["blink"][18] == pytest.approx(0.5)
        assert c["smile"][0] == 0 and c["smile"][30] == pytest.approx(0.8)  # held after the last key
        assert c["pitch"][0] == pytest.approx(-10) and c["roll"].max() == 0  # held before the first; never keyed
    lin, smooth = control_curves(keys, 40, "linear"), control_curves(keys, 40, "smoothstep")
    assert lin["blink"][3] == pytest.approx(0.25) and smooth["blink"][3] == pytest.approx(0.15625)
    step = control_curves(keys, 40, "step")
    assert step["blink"][11] == 0 and step["blink"][12] == 1
    # Constants are added, then clipped to the control's range.
    c = control_curves([Keyframe(0, {"smile": 0.8})], 3, constants={"smile": 0.5, "yaw": 5})
    assert c["smile"][0] == 1.0 and c["yaw"][2] == 5.0


@pytest.mark.parametrize("text,token", [
    ("0: blink=1; 12: blnk=1", "blnk"),
    ("x: blink=1", "'x'"),
    ("12 blink=1", "12 blink=1"),
    ("0: blink=abc", "abc"),
    ("0: blink=3", "blink=3"),
    ("0: blink", "'blink'"),
    ("-4: smile=1", "-4"),
])
def test_malformed_keys_name_the_bad_token(text, token):
    with pytest.raises(InvalidRequestError, match=token):
        parse_keyframes(text)


def test_blendshape_names_are_mediapipes(astronaut, face_task):
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(face_task)),
                                           output_face_blendshapes=True)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(astronaut)))
    assert tuple(c.category_name for c in result.face_blendshapes[0]) == BLENDSHAPE_NAMES


def test_blink_mouth_and_brows_move_the_right_points():
    ast = astronaut_track()
    same = animate_face(ast, "", frames=3)
    assert len(same) == 3 and same.size == ast.size and same.fps == 25.0 and same.valid.all()
    assert np.abs(same.pixels() - ast.pixels()).max() < 0.01  # nothing keyed: her own landmarks
    edited = animate_face(ast, "0: blink=0 mouth_open=0; 12: blink=1; 24: blink=0; 30: mouth_open=1 brow_raise=1",
                          frames=31)
    aperture = eye_aperture(edited.points, edited.size)
    assert (aperture[12] < 0.4 * aperture[0]).all()  # measured 0.05 of the open eye
    np.testing.assert_allclose(aperture[24], aperture[0], atol=1e-4)
    # The fields are linear in the value: halfway between keys is halfway in canonical space.
    halfway = (edited.canonical[0] + edited.canonical[12]) / 2
    np.testing.assert_allclose(edited.canonical[6], halfway, atol=1e-5)
    px = edited.pixels()
    lips = np.linalg.norm(px[:, 13] - px[:, 14], axis=-1)
    assert lips[30] > 3 * lips[0] and lips[30] - lips[0] > 10  # measured 6 -> 21.6 px
    assert px[30, 152, 1] - px[0, 152, 1] > 8                   # the chin drops
    brows = topology().parts["left_eyebrow"].ravel()
    assert (px[30, brows, 1] - ast.pixels()[0, brows, 1]).mean() < -3  # brows up (image y points down),
    np.testing.assert_allclose(px[0, brows], px[30, brows], atol=1e-3)  # held before their only key
    assert np.abs(px[30, 1] - px[0, 1]).max() < 0.5            # the nose tip stays
    b = edited.blendshapes
    eye_blink = [BLENDSHAPE_NAMES.index(n) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
    assert (b[12, eye_blink] > 0.95).all() and (b[0, eye_blink] < 0.1).all()
    assert b[30, BLENDSHAPE_NAMES.index("jawOpen")] > 0.95
    frames = render_controls(edited)
    assert frames.shape == (31, 512, 512, 3) and (frames[12] != frames[0]).any()


def test_smile_and_single_eye():
    ast = astronaut_track()
    edited = animate_face(ast, "0: smile=1 blink_left=1", frames=1)
    d = edited.pixels()[0] - ast.pixels()[0]
    assert d[61, 1] < -2 and d[291, 1] < -2          # corners up
    assert d[61, 0] < -1 and d[291, 0] > 1           # and out
    aperture = eye_aperture(edited.points, edited.size)[0] / eye_aperture(ast.points, ast.size)[0]
    assert aperture[1] < 0.3 and aperture[0] > 0.95  # the subject's left eye (points 263..362) only


def test_head_turns_by_the_requested_angle():
    ast = astronaut_track()
    for name, angle in (("yaw", 20), ("pitch", -15), ("roll", 30)):
        edited = animate_face(ast, f"0: {name}=0; 10: {name}={angle}", frames=11)
        assert _angle(edited.pose[10], ast.pose[0]) == pytest.approx(abs(angle), abs=0.5)
        assert _angle(edited.pose[5], ast.pose[0]) == pytest.approx(abs(angle) / 2, abs=0.5)
        np.testing.assert_allclose(edited.pose[:, :3, 3], np.repeat(ast.pose[:, :3, 3], 11, 0), atol=1e-5)
    d = animate_face(ast, "0: yaw=20", frames=1).pixels()[0] - ast.pixels()[0]
    assert d[1, 0] > 10                                # the nose turns to the image's right
    d = animate_face(ast, "0: pitch=20", frames=1).pixels()[0] - ast.pixels()[0]
    assert d[1, 1] < -10                               # chin up: the nose tip rises
    d = animate_face(ast, "0: roll=20", frames=1).pixels()[0] - ast.pixels()[0]
    assert d[10, 0] > 10                               # clockwise: the forehead goes right


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    import cv2

    return cv2.pointPolygonTest(ring.astype(np.float32), (float(point[0]), float(point[1])), False) > 0


def test_pupils_move_inside_the_eyes():
    ast = astronaut_track()
    topo = topology()
    for value in (1.0, -1.0):
        edited = animate_face(ast, f"0: pupil_x={value}", frames=1)
        px = edited.pixels()[0]
        for iris, ring in ((RIGHT_IRIS, topo.right_eye_ring), (LEFT_IRIS, topo.left_eye_ring)):
            shift = px[iris[0], 0] - ast.pixels()[0, iris[0], 0]
            assert shift * value > 2                   # measured 4.6 px in an 18-pixel eye
            assert _inside(px[iris[0]], px[ring])
            np.testing.assert_allclose(px[list(iris)] - px[iris[0]],
                                       ast.pixels()[0, list(iris)] - ast.pixels()[0, iris[0]], atol=1e-4)
        np.testing.assert_allclose(np.delete(px, list(RIGHT_IRIS + LEFT_IRIS), 0),
                                   np.delete(ast.pixels()[0], list(RIGHT_IRIS + LEFT_IRIS), 0), atol=1e-4)
    up = animate_face(ast, "0: pupil_y=1", frames=1).pixels()[0]
    assert up[468, 1] < ast.pixels()[0, 468, 1] - 0.5


def test_edited_track_is_an_ordinary_track(tmp_path):
    ast = astronaut_track()
    edited = animate_face(ast, "0: smile=0 blink=0 yaw=0; 8: smile=1 blink=1 yaw=10", frames=9, fps=12)
    path = edited.save(tmp_path / "edited.npz")
    again = FaceTrack.load(path)
    assert again.fps == 12 and len(again) == 9
    # As a driving track it drives the astronaut into the same faces (its neutral frame is frame 0).
    aligned = align_motion(ast, again)
    assert np.abs(aligned.pixels() - edited.pixels()).max() < 1.0
    # A video's track is edited frame by frame and keeps its length and frame rate.
    drv = driving_track()[:6]
    smiled = animate_face(drv, "0: smile=1", frames=99)
    assert len(smiled) == 6 and smiled.fps == drv.fps
    assert (smiled.pixels()[:, 61, 1] < drv.pixels()[:, 61, 1] - 1).all()
    with pytest.raises(NoFaceDetectedError):
        animate_face(FaceTrack(ast.points, ast.canonical, ast.pose, ast.blendshapes, [False], ast.size), "")
    with pytest.raises(InvalidRequestError, match="interpolation"):
        animate_face(ast, "", interpolation="cubic")
    assert set(CONTROLS) >= {"blink", "smile", "mouth_open", "brow_raise", "pupil_x", "pupil_y", "yaw", "pitch",
                             "roll"}


def test_cli_edit(tmp_path, astronaut, face_task):
    from PIL import Image

    from emoji_model.video import read_video

    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    code = main(["edit", "--reference", str(tmp_path / "astronaut.png"), "--keys", "0: blink=0; 6: blink=1",
                 "--set", "smile=0.5", "--frames", "13", "--fps", "24", "--out", str(tmp_path / "t.npz"),
                 "--render", str(tmp_path / "t.mp4"), "--face-model", str(face_task)])
    assert code == 0
    track = FaceTrack.load(tmp_path / "t.npz")
    assert len(track) == 13 and track.fps == 24
    assert eye_aperture(track.points, track.size)[6].max() < 0.4 * eye_aperture(astronaut_track().points,
                                                                                 (512, 512))[0].min()
    frames, fps = read_video(tmp_path / "t.mp4")
    assert frames.shape == (13, 512, 512, 3) and fps == pytest.approx(24)
    assert main(["edit", "--reference", str(tmp_path / "t.npz"), "--keys", "0: wink=1",
                 "--out", str(tmp_path / "u.npz")]) == 2
    assert not (tmp_path / "u.npz").exists()


def test_node_expression_editor():
    from nodes.edit_nodes import SLIDERS, ExpressionEditor

    sliders = {name: 0.0 for name in SLIDERS}
    sliders["yaw"] = 10.0
    faces, controls = ExpressionEditor().edit(astronaut_track(), 16, 25.0, "0: blink=0; 8: blink=1", "smoothstep",
                                              **sliders)
    assert isinstance(controls, torch.Tensor) and controls.shape == (16, 512, 512, 3)
    assert len(faces) == 16 and _angle(faces.pose[0], astronaut_track().pose[0]) == pytest.approx(10, abs=0.5)
    with pytest.raises(InvalidRequestError, match="smiel"):
        ExpressionEditor().edit(astronaut_track(), 16, 25.0, "0: smiel=1", "linear", **sliders)
    for name, (lo, hi, _, _) in SLIDERS.items():
        assert (CONTROLS[name].lo, CONTROLS[name].hi) == (lo, hi)
