"""The nodes for several faces, reusable tracks, loops and faceless driving frames, standalone and in the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoji_model import InvalidRequestError, NoFaceDetectedError
from emoji_model.align import RELEASED, align_motion
from emoji_model.crop import CropGroup
from emoji_model.landmarks import FaceGroup, FaceTrack, faces_of, load_faces, topology
from landmark_inputs import astronaut_track, driving_frames, driving_track, two_faces


def _image(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(frames)).float() / 255.0


def _ui_text(out) -> str:
    assert isinstance(out, dict) and set(out) == {"ui", "result"}, out
    return "\n".join(out["ui"]["text"])


def test_faceless_driving_frames_are_shown_on_the_node():
    from nodes.landmark_nodes import LandmarkExtractor, MotionAligner

    frames = driving_frames()[0][:24].copy()
    frames[[5, 6, 7, 15]] = 0                        # four black frames: no face
    out = LandmarkExtractor().extract(_image(frames), 0, False, False)
    text = _ui_text(out)
    faces = out["result"][0]
    assert "4 of 24 frames of the driving video" in text and "5-7, 15" in text and "portrait" not in text
    assert faces.valid.sum() == 20 and len(faces) == 24
    aligned = MotionAligner().align(astronaut_track(), faces, True, "auto", 0, 1.0, True, 0)
    assert "driving video" in _ui_text(aligned) and "5-7, 15" in _ui_text(aligned)
    # A portrait with its face says nothing; a clean video neither.
    assert isinstance(LandmarkExtractor().extract(_image(frames[:1]), 0, False, False), tuple)
    assert isinstance(MotionAligner().align(astronaut_track(), driving_track(), True, "auto", 0, 1.0, True, 0),
                      tuple)


def test_faceless_frames_reach_the_ui_through_the_host(comfy_host, monkeypatch):
    import sys
    import types

    sent = []

    class PromptServer:
        instance = None

        def send_progress_text(self, text, node_id):
            sent.append((node_id, text))

    PromptServer.instance = PromptServer()
    server = types.ModuleType("server")
    server.PromptServer = PromptServer
    execution = types.ModuleType("comfy_execution")
    utils = types.ModuleType("comfy_execution.utils")
    utils.get_executing_context = lambda: types.SimpleNamespace(node_id="17", prompt_id="p", list_index=None)
    execution.utils = utils
    for name, module in (("server", server), ("comfy_execution", execution), ("comfy_execution.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    comfy_host.get_runtime().notify("No face in 1 of 3 frames of the driving video (frames 2)")
    assert sent == [("17", "No face in 1 of 3 frames of the driving video (frames 2)")]


def test_two_faces_landmarks_crop_align_edit_and_paste_back_in_one_pass():
    from nodes.edit_nodes import CropFace, ExpressionEditor, PasteBack
    from nodes.landmark_nodes import LandmarkExtractor, MotionAligner

    image = _image(two_faces()[None])
    out = LandmarkExtractor().extract(image, -1, False, False)
    faces, controls, mask = out["result"]
    assert "2 faces" in _ui_text(out)
    assert isinstance(faces, FaceGroup) and faces.count == 2 and faces.size == (640, 320)
    centres = [t.pixels()[0].mean(axis=0) for t in faces]
    assert sorted(c[0] < 320 for c in centres) == [False, True]           # one face in each half
    assert mask[0, :, :320].any() and mask[0, :, 320:].any()              # the mask and controls show both
    assert controls[0, :, :320].max() > 0 and controls[0, :, 320:].max() > 0

    crop_out = CropFace().crop(image, 256, 1.8, "edge", "union", face_index=-1)
    crops, crop_faces, info = crop_out["result"]
    assert crops.shape == (2, 256, 256, 3) and isinstance(info, CropGroup) and crop_faces.count == 2
    # The aligner drives both faces with one driving video; the editor edits both.
    driving = driving_track()[:12]
    aligned, aligned_controls = MotionAligner().align(crop_faces, driving, True, "auto", 0, 1.0, True, 0)
    assert isinstance(aligned, FaceGroup) and aligned.count == 2 and aligned.frames == 12
    assert aligned_controls.shape == (12, 256, 256, 3)
    for j in range(2):
        single = align_motion(crop_faces[j], driving)
        np.testing.assert_allclose(aligned[j].points, single.points, atol=1e-6)
    edited, _ = ExpressionEditor().edit(crop_faces, 6, 25.0, "0: blink=0; 3: blink=1", "linear",
                                        **{n: 0.0 for n in ("blink", "smile", "mouth_open", "brow_raise", "pupil_x",
                                                            "pupil_y", "yaw", "pitch", "roll")})
    assert isinstance(edited, FaceGroup) and edited.frames == 6
    # One driving face per reference face: face j follows driver j.
    per_face, _ = MotionAligner().align(crop_faces, edited, True, "auto", 0, 1.0, True, 0)
    np.testing.assert_allclose(per_face[1].points, align_motion(crop_faces[1], edited[1]).points, atol=1e-6)
    # Paste back: black frames for both faces change both faces' regions in the same output frames.
    original = image
    (pasted,) = PasteBack().paste(torch.zeros(2 * 6, 256, 256, 3), original, info, 0.1, 0.05, faces=edited)
    assert pasted.shape == (6, 320, 640, 3)
    changed = (pasted[0] - original[0]).abs().amax(dim=-1) > 0.05
    for box in info.infos:
        x0, y0, side = box.box
        assert changed[max(y0, 0):y0 + side, max(x0, 0):x0 + side].float().mean() > 0.15
    for track, crop_info in zip(faces_of(crop_faces), info.infos):
        x0, y0, side = crop_info.box
        middle = track.pixels()[0].mean(axis=0) / crop_info.scale + [x0, y0]
        assert pasted[0, int(middle[1]), int(middle[0])].max() < 0.02        # fully replaced on each face
    with pytest.raises(InvalidRequestError, match="2 face"):
        PasteBack().paste(torch.zeros(6, 256, 256, 3), original, info, 0.1, 0.05, faces=edited[0])


def test_aligner_node_modes_match_the_library():
    from nodes.landmark_nodes import MotionAligner

    ast, driving = astronaut_track(), driving_track()[:30]
    released, _ = MotionAligner().align(ast, driving, True, "auto", 0, 1.0, True, 0, head_rotation="absolute",
                                        translation="released", iris="absolute", lids="absolute")
    np.testing.assert_allclose(released.points, align_motion(ast, driving, **RELEASED).points, atol=1e-6)
    mouth, _ = MotionAligner().align(ast, driving, True, "auto", 0, 1.0, True, 0, regions="only mouth", mouth=0.5,
                                     loop=True, translation_strength=0.3)
    expected = align_motion(ast, driving, regions={"preset": "only mouth", "mouth": 0.5}, loop=True,
                            translation_strength=0.3)
    np.testing.assert_allclose(mouth.points, expected.points, atol=1e-6)
    still, _ = MotionAligner().align(ast, driving, False, "auto", 0, 1.0, False, 0)   # an old graph's switches
    np.testing.assert_allclose(still.pose, np.repeat(ast.pose, 30, 0), atol=1e-5)


def test_save_and_load_faces_round_trip(tmp_path, monkeypatch):
    import emoji_model.runtime as rt
    from nodes.track_nodes import LoadFaces, SaveFaces

    monkeypatch.setenv("FYE_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("FYE_INPUT_DIR", str(tmp_path / "output"))   # load what was saved
    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    single = driving_track()
    group = FaceGroup([astronaut_track(), align_motion(astronaut_track(), single[:1])])
    first = SaveFaces().save(single, "motions/talk")
    second = SaveFaces().save(group, "motions/talk")
    assert first["result"] == (single,) and "motions/talk_00001.npz" in _ui_text(first)
    assert "2 face(s)" in _ui_text(second) and "talk_00002.npz" in _ui_text(second)
    choices = LoadFaces.INPUT_TYPES()["required"]["track"][0]
    assert choices == ["motions/talk_00001.npz", "motions/talk_00002.npz"]
    loaded, frames = LoadFaces().load("motions/talk_00001.npz")
    assert isinstance(loaded, FaceTrack) and frames == 97
    for name in FaceTrack.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(single, name), err_msg=name)
    assert loaded.size == single.size and loaded.fps == single.fps
    again, _ = LoadFaces().load("motions/talk_00002.npz")
    assert isinstance(again, FaceGroup) and again.count == 2
    np.testing.assert_array_equal(again[1].points, group[1].points)
    # The command line reads the same files.
    assert isinstance(load_faces(tmp_path / "output" / "motions" / "talk_00002.npz"), FaceGroup)
    assert LoadFaces.VALIDATE_INPUTS("motions/gone.npz") is not True
    assert LoadFaces.IS_CHANGED("motions/talk_00001.npz") != LoadFaces.IS_CHANGED("motions/talk_00002.npz")
    with pytest.raises(InvalidRequestError, match="leaves the output folder"):
        SaveFaces().save(single, "../escape")
    with pytest.raises(InvalidRequestError, match="outside the input folder"):
        LoadFaces().load("../elsewhere.npz")
    # A file written before fitted faces existed still loads.
    old = tmp_path / "old.npz"
    np.savez(old, **{k: getattr(single, k) for k in ("points", "canonical", "pose", "blendshapes", "valid")},
             size=np.array(single.size), fps=np.array(single.fps))
    assert not FaceTrack.load(old).fitted.any()


def test_command_line_several_faces_single_photo_driving_and_loops(tmp_path, face_task):
    from PIL import Image
    from skimage import data

    from emoji_model.__main__ import main
    from landmark_inputs import lfw_image

    Image.fromarray(two_faces()).save(tmp_path / "two.png")
    Image.fromarray(lfw_image(0)).save(tmp_path / "open_mouth.png")
    driving_track()[:20].save(tmp_path / "driving.npz")
    common = ["--face-model", str(face_task)]
    assert main(["landmarks", str(tmp_path / "two.png"), "--face-index", "all", "--out", str(tmp_path / "two.npz"),
                 "--render", str(tmp_path / "two_render.png")] + common) == 0
    group = load_faces(tmp_path / "two.npz")
    assert isinstance(group, FaceGroup) and group.count == 2
    assert main(["align", "--reference", str(tmp_path / "two.npz"), "--driving", str(tmp_path / "driving.npz"),
                 "--out", str(tmp_path / "aligned.npz"), "--regions", "only eyes", "--loop"] + common) == 0
    aligned = load_faces(tmp_path / "aligned.npz")
    assert isinstance(aligned, FaceGroup) and aligned.frames == 20
    np.testing.assert_allclose(aligned[0].points, align_motion(group[0], driving_track()[:20], regions="only eyes",
                                                               loop=True).points, atol=1e-6)
    # A driving photo: its open mouth opens the astronaut's.
    Image.fromarray(data.astronaut()).save(tmp_path / "ast.png")
    assert main(["align", "--reference", str(tmp_path / "ast.png"), "--driving", str(tmp_path / "open_mouth.png"),
                 "--out", str(tmp_path / "photo.npz")] + common) == 0
    photo = load_faces(tmp_path / "photo.npz")
    gap = lambda t: np.linalg.norm(t.pixels()[0, 13] - t.pixels()[0, 14])  # noqa: E731
    assert len(photo) == 1 and gap(photo) > gap(astronaut_track()) + 10
    # The released aligner from the command line.
    assert main(["align", "--reference", str(tmp_path / "ast.png"), "--driving", str(tmp_path / "driving.npz"),
                 "--out", str(tmp_path / "released.npz"), "--released"] + common) == 0
    np.testing.assert_allclose(load_faces(tmp_path / "released.npz").points,
                               align_motion(astronaut_track(), driving_track()[:20], **RELEASED).points, atol=1e-5)
    assert main(["edit", "--reference", str(tmp_path / "ast.png"), "--keys", "0: smile=0; 10: smile=1", "--frames",
                 "20", "--loop", "--out", str(tmp_path / "edit.npz")] + common) == 0
    edited = load_faces(tmp_path / "edit.npz")
    px = edited.pixels()
    assert np.abs(px[-1] - px[0]).max() < np.abs(px[10] - px[0]).max()


def test_every_face_of_a_video_is_followed(face_task):
    from emoji_model.landmarks import extract_video

    image = two_faces()
    frames = np.stack([np.roll(image, 6 * i, axis=1) for i in range(6)])   # both faces move right
    group = extract_video(frames, 25.0, face_index="all", face_model=face_task)
    assert isinstance(group, FaceGroup) and group.count == 2 and group.frames == 6
    for track in group:
        assert track.valid.all()
        x = track.pixels()[:, :, 0].mean(axis=1)
        np.testing.assert_allclose(np.diff(x), 6.0, atol=1.5)                 # each track stays on its face
    assert abs(group[0].pixels()[0, :, 0].mean() - group[1].pixels()[0, :, 0].mean()) > 200


def test_nodes_fit_a_face_mediapipe_misses_from_a_box_or_a_mask(caplog):
    from skimage import data

    from nodes.edit_nodes import CropFace
    from nodes.landmark_nodes import LandmarkExtractor, MotionAligner
    from test_face_search import CAT_FACE

    cat = _image(data.chelsea()[None])
    with pytest.raises(NoFaceDetectedError, match="face_box"):
        LandmarkExtractor().extract(cat, 0, False, False)
    x, y, w, h = CAT_FACE
    with caplog.at_level("WARNING", logger="emoji_model"):
        out = LandmarkExtractor().extract(cat, 0, False, False, face_box=",".join(map(str, CAT_FACE)))
    assert any("fitted" in r.getMessage() for r in caplog.records)          # logged, and shown on the node
    assert "fitted into the face box" in _ui_text(out) and "the portrait" in _ui_text(out)
    faces, controls, mask = out["result"]
    assert faces.fitted.all() and controls.shape == (1, 300, 451, 3)
    oval = faces.pixels()[0][topology().face_oval]
    np.testing.assert_allclose(np.r_[oval.min(0), oval.max(0) - oval.min(0)], [x, y, w, h], atol=1.0)
    assert mask[0, y + h // 2, x + w // 2] > 0.5 and mask[0, 5, 5] == 0     # the mask covers the fitted face
    painted = torch.zeros(1, 300, 451)
    painted[:, y:y + h, x:x + w] = 1.0
    (from_mask, _, _) = LandmarkExtractor().extract(cat, 0, False, False, face_mask=painted)["result"]
    np.testing.assert_allclose(from_mask.points, faces.points, atol=1e-6)   # a mask gives the same face
    crops, crop_faces, info = CropFace().crop(cat, 256, 1.8, "edge", "union", face_mask=painted)["result"]
    assert crops.shape == (1, 256, 256, 3) and crop_faces.fitted.all() and crop_faces.size == (256, 256)
    aligned, _ = MotionAligner().align(crop_faces, driving_track()[:12], True, "auto", 0, 1.0, True, 0)
    assert aligned.fitted.all() and len(aligned) == 12


def test_command_line_rotation_translation_and_region_strengths(tmp_path):
    from emoji_model.__main__ import main

    astronaut_track().save(tmp_path / "ast.npz")
    driving_track()[:24].save(tmp_path / "driving.npz")
    base = ["align", "--reference", str(tmp_path / "ast.npz"), "--driving", str(tmp_path / "driving.npz")]
    cases = {
        "absolute": (["--rotation", "absolute", "--translation", "off"],
                     {"rotation": "absolute", "translation": "off"}),
        "still": (["--rotation", "off", "--translation-strength", "0.4", "--translation-limit", "0.2"],
                  {"rotation": "off", "translation_strength": 0.4, "translation_limit": 0.2}),
        "regions": (["--regions", "expression only", "--mouth", "0.5", "--eyes", "0", "--iris", "absolute",
                     "--lids", "absolute"],
                    {"regions": {"preset": "expression only", "mouth": 0.5, "eyes": 0.0}, "iris": "absolute",
                     "lids": "absolute"}),
    }
    results = {}
    for name, (argv, kwargs) in cases.items():
        assert main(base + ["--out", str(tmp_path / f"{name}.npz")] + argv) == 0
        results[name] = load_faces(tmp_path / f"{name}.npz")
        expected = align_motion(astronaut_track(), driving_track()[:24], **kwargs)
        np.testing.assert_allclose(results[name].points, expected.points, atol=1e-5, err_msg=name)
    # The options change what moves: the absolute rotation is the driver's, off keeps hers.
    np.testing.assert_allclose(results["absolute"].pose[:, :3, :3], driving_track()[:24].pose[:, :3, :3], atol=1e-4)
    np.testing.assert_allclose(results["still"].pose[:, :3, :3], np.repeat(astronaut_track().pose[:, :3, :3], 24, 0),
                               atol=1e-4)
    assert np.abs(results["regions"].pose - astronaut_track().pose).max() < 1e-4
