"""The landmark command-line tools and nodes, end to end on the real video and portrait."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from emoji_model.__main__ import main
from emoji_model.landmarks import FaceGroup, FaceTrack, eye_aperture, iter_controls, render_controls
from emoji_model.video import read_video
from landmark_inputs import astronaut_track, driving_frames, driving_track


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory, astronaut):
    from PIL import Image

    path = tmp_path_factory.mktemp("inputs") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def video_track_npz(tmp_path_factory, driving_video, face_task):
    """`landmarks` run on the whole driving video (with a render), shared by the align tests."""
    out = tmp_path_factory.mktemp("cli")
    code = main(["landmarks", str(driving_video), "--out", str(out / "driving.npz"),
                 "--render", str(out / "driving.mp4"), "--face-model", str(face_task)])
    assert code == 0
    return out


def test_cli_landmarks_on_the_video(video_track_npz):
    track = FaceTrack.load(video_track_npz / "driving.npz")
    assert len(track) == 97 and track.valid.all() and track.fps == pytest.approx(30)
    np.testing.assert_allclose(track.points, driving_track().points, atol=1e-6)
    frames, fps = read_video(video_track_npz / "driving.mp4")
    assert frames.shape == (97, 512, 512, 3) and fps == pytest.approx(30)
    # the streamed render is the batch render, up to the codec's loss on thin lines
    expected = render_controls(track)
    assert np.abs(frames.astype(np.int16) - expected).mean() < 1.0
    picked = [0, 35, 70]
    error = np.array([[np.abs(frames[i].astype(np.int16) - expected[j]).mean() for j in picked] for i in picked])
    assert (error.argmin(axis=1) == np.arange(len(picked))).all()  # each frame is its own render
    assert np.diag(error).max() < 0.7 * (error + np.eye(len(picked)) * 1e9).min(), error


def test_streamed_controls_equal_the_batch_renders():
    track = driving_track()[30:40]
    for options in ({}, {"include_contour": True, "outer_lips": True}):
        streamed = iter_controls(track, (256, 320), **options)
        assert not isinstance(streamed, np.ndarray)  # drawn one at a time, not held
        np.testing.assert_array_equal(np.stack(list(streamed)), render_controls(track, (256, 320), **options))
    # several faces (a group): every face drawn into each streamed frame, as the batch renders overlaid
    other = track[list(range(len(track)))]
    other.points[..., 0] += 0.15  # beside the first face, overlapping it
    group = FaceGroup([track, other])
    expected = np.maximum(render_controls(track), render_controls(other))
    np.testing.assert_array_equal(np.stack(list(iter_controls(group))), expected)
    assert expected.any() and (expected != render_controls(track)).any()


def test_cli_landmarks_on_an_image(astronaut_png, face_task, tmp_path):
    code = main(["landmarks", str(astronaut_png), "--out", str(tmp_path / "a.npz"),
                 "--render", str(tmp_path / "a.png"), "--contour", "--face-model", str(face_task)])
    assert code == 0
    track = FaceTrack.load(tmp_path / "a.npz")
    np.testing.assert_allclose(track.points, astronaut_track().points, atol=1e-6)
    from emoji_model.video import load_image

    render = load_image(tmp_path / "a.png")
    assert render.shape == (512, 512, 3) and (render == (10, 200, 10)).all(-1).sum() > 100  # contour on


def test_cli_align_onto_the_astronaut(video_track_npz, astronaut_png, face_task, tmp_path):
    code = main(["align", "--reference", str(astronaut_png), "--driving", str(video_track_npz / "driving.npz"),
                 "--out", str(tmp_path / "aligned.npz"), "--render", str(tmp_path / "aligned.mp4"),
                 "--smoothing", "5", "--face-model", str(face_task)])
    assert code == 0
    aligned = FaceTrack.load(tmp_path / "aligned.npz")
    assert len(aligned) == 97 and aligned.size == (512, 512)
    aperture = eye_aperture(aligned.points, aligned.size).mean(1)
    assert aperture[30:40].min() < 0.3 * np.median(aperture)
    frames, _ = read_video(tmp_path / "aligned.mp4")
    assert frames.shape == (97, 512, 512, 3)
    code = main(["align", "--reference", str(astronaut_png), "--driving", str(video_track_npz / "driving.npz"),
                 "--out", str(tmp_path / "still.npz"), "--no-relative-pose", "--no-iris", "--neutral", "first",
                 "--expression-scale", "0", "--face-model", str(face_task)])
    assert code == 0
    still = FaceTrack.load(tmp_path / "still.npz")
    assert np.abs(still.pixels() - astronaut_track().pixels()).max() < 1.0


def test_cli_errors_are_reported_not_raised(tmp_path, face_task, caplog):
    from PIL import Image
    from skimage import data

    cat = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(cat)
    assert main(["landmarks", str(cat), "--out", str(tmp_path / "c.npz"), "--face-model", str(face_task)]) == 2
    assert "No face detected in image 'cat.png'" in caplog.text
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    assert main(["landmarks", str(bad), "--out", str(tmp_path / "b.npz"), "--face-model", str(face_task)]) == 2
    assert main(["align", "--reference", str(cat), "--driving", str(bad), "--out", str(tmp_path / "x.npz"),
                 "--face-model", str(face_task)]) == 2
    assert not list(tmp_path.glob("*.npz"))


def test_cli_demo_landmarks_only_with_a_driving_video(tmp_path, driving_video, face_task, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="emoji_model"):
        code = main(["demo", "--out", str(tmp_path), "--driving", str(driving_video),
                     "--face-model", str(face_task), "--no-generate"])
    assert code == 0
    frames, fps = read_video(tmp_path / "demo.mp4")
    assert frames.shape == (97, 512, 3 * 512, 3) and fps == pytest.approx(30)
    from skimage import data

    assert np.abs(frames[0, :, :512].astype(int) - data.astronaut()).mean() < 6  # the reference panel
    assert "timings:" in caplog.text and "landmarks" in caplog.text
    assert main(["demo", "--out", str(tmp_path), "--driving", str(tmp_path / "nope.mp4")]) == 2


def test_cli_demo_runs_the_whole_chain_with_the_shipped_checkpoint(tmp_path, face_task, caplog, monkeypatch):
    """No weights placed: the demo uses the trainer-made tiny checkpoint and says it is a pipeline check."""
    import logging

    import emoji_model.runtime as rt

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu", models_dir=tmp_path / "models"))
    with caplog.at_level(logging.INFO, logger="emoji_model"):
        code = main(["demo", "--out", str(tmp_path), "--face-model", str(face_task), "--frames", "10",
                     "--steps", "2"])
    assert code == 0
    assert "bundled 64-pixel model" in caplog.text
    frames, fps = read_video(tmp_path / "demo.mp4")
    assert frames.shape == (10, 512, 4 * 512, 3) and fps == pytest.approx(24)
    generated = frames[:, :, 3 * 512:].astype(np.float32)
    assert generated.std() > 10  # decoded images, not an empty panel
    # The keyed motion blinks at frame 8: the aligned landmarks panel changes between frames 0 and 8.
    aligned = frames[:, :, 2 * 512:3 * 512].astype(int)
    assert np.abs(aligned[8] - aligned[0]).sum() > 0
    # Each frame's landmarks are drawn on a fresh copy of the dimmed reference: nothing piles up.
    from skimage import data

    dimmed = (data.astronaut().astype(np.float32) * 0.4).astype(np.uint8).astype(int)
    drawn = [(np.abs(a - dimmed).max(-1) > 40).sum() for a in aligned]
    assert max(drawn) < 1.3 * min(drawn), drawn


def test_cli_demo_animates_the_portrait_it_is_given(tmp_path, face_task, monkeypatch):
    """--reference: the reference panel is that portrait and the generated panel takes after it."""
    from PIL import Image
    from skimage import data

    import emoji_model.runtime as rt

    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu", models_dir=tmp_path / "models"))
    portrait = np.ascontiguousarray(data.astronaut()[:, ::-1])  # the mirror image: a portrait the default is not
    Image.fromarray(portrait).save(tmp_path / "mirror.png")
    assert main(["demo", "--out", str(tmp_path), "--reference", str(tmp_path / "mirror.png"), "--face-model",
                 str(face_task), "--frames", "4", "--steps", "2"]) == 0
    frames, _ = read_video(tmp_path / "demo.mp4")
    assert frames.shape == (4, 512, 4 * 512, 3)
    assert np.abs(frames[0, :, :512].astype(int) - portrait).mean() < 6
    # The generated face is pasted back into that portrait: away from the face it is the portrait itself.
    generated = frames[:, :, 3 * 512:].astype(int)
    assert np.abs(generated[:, 400:, :] - portrait[400:]).mean() < 6
    assert np.abs(generated[:, 80:200, 220:320] - portrait[80:200, 220:320]).mean() > 3  # the face is new


def test_help_lists_the_commands_without_heavy_imports():
    code = ("import sys, io, contextlib\nfrom emoji_model.__main__ import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n    main(['--help'])\n"
            "import json\nprint(json.dumps({'out': buf.getvalue(), 'heavy': [m for m in ('mediapipe', 'cv2', 'av', "
            "'scipy', 'skimage') if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    info = json.loads(out.stdout.splitlines()[-1])
    assert info["heavy"] == []
    for command in ("landmarks", "align", "demo"):
        assert command in info["out"]


# -- nodes -----------------------------------------------------------------------------------------

def _image_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(frames)).float() / 255.0


def test_nodes_run_standalone_on_real_inputs(astronaut):
    from nodes.landmark_nodes import LandmarkExtractor, MotionAligner

    spec = LandmarkExtractor.INPUT_TYPES()
    assert spec["optional"]["face_model"][0][0].endswith("(default)")
    faces, controls, mask = LandmarkExtractor().extract(_image_tensor(astronaut[None]), 0, False, False)
    assert isinstance(faces, FaceTrack) and len(faces) == 1
    np.testing.assert_allclose(faces.points, astronaut_track().points, atol=2e-3)  # uint8 round trip
    assert controls.shape == (1, 512, 512, 3) and controls.dtype == torch.float32
    assert 0 < controls.max() <= 1
    assert mask.shape == (1, 512, 512) and set(mask.unique().tolist()) == {0.0, 1.0}
    x, y = astronaut_track().pixels()[0, 1].astype(int)
    assert mask[0, y, x] == 1 and mask[0, 0, 0] == 0 and mask[0, 500, 500] == 0

    frames, _ = driving_frames()
    driving, driving_controls, _ = LandmarkExtractor().extract(_image_tensor(frames[28:44]), 0, False, False,
                                                               mode="auto", fps=30.0)
    assert len(driving) == 16 and driving.valid.all() and driving_controls.shape == (16, 512, 512, 3)
    aligned, aligned_controls = MotionAligner().align(faces, driving, True, "auto", 0, 1.0, True, 0)
    assert len(aligned) == 16 and aligned.size == (512, 512)
    assert aligned_controls.shape == (16, 512, 512, 3)
    aperture = eye_aperture(aligned.points, aligned.size).mean(1)
    assert aperture[4:10].min() < 0.3 * aperture[:2].mean()  # the blink (frames 32..37) comes through
    _, still_controls = MotionAligner().align(faces, driving, False, "index", 0, 0.0, False, 0)
    assert still_controls.shape == (16, 512, 512, 3)
    np.testing.assert_allclose(still_controls[0], still_controls[-1])
    stills, _, _ = LandmarkExtractor().extract(_image_tensor(np.stack([astronaut, astronaut])), 0, False, True,
                                               mode="image")
    np.testing.assert_allclose(stills.points[0], stills.points[1])


def test_extractor_node_reports_progress_and_stops_on_interrupt(comfy_host):
    import comfy.model_management as mm
    import comfy.utils

    from nodes.landmark_nodes import LandmarkExtractor

    frames, _ = driving_frames()
    batch = _image_tensor(frames[:6])
    comfy.utils.updates.clear()
    LandmarkExtractor().extract(batch, 0, False, False)
    # One bar for the run: extraction, rendering and masks fill it once, in order, and it ends full.
    values = [v for v, _ in comfy.utils.updates]
    totals = {t for _, t in comfy.utils.updates}
    assert len(totals) == 1 and values == sorted(values) and values[-1] == totals.pop()
    assert len([v for v in values if v <= 800]) == 6  # the six frames' detections take the first 80 %
    mm.interrupted = True
    with pytest.raises(mm.InterruptProcessingException):
        LandmarkExtractor().extract(batch, 0, False, False)
