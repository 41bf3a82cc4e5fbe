"""The `evaluate` metrics pinned on fixed inputs, and the command on the bundled and a converted checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_inputs import driving_frames, driving_track

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def crop():
    """A 128-pixel crop of the astronaut's face, float 0..1."""
    from skimage import data

    return data.astronaut()[100:228, 180:308].astype(np.float32) / 255


def test_frame_fidelity_on_identical_shifted_and_blurred_frames(crop):
    import cv2

    from emoji_model.evaluate import frame_fidelity

    frames = np.stack([crop, crop[::-1]])
    same = frame_fidelity(frames, frames)
    assert same == {"l1": 0.0, "ssim": pytest.approx(1.0), "psnr": 100.0}
    grey = np.full_like(frames, 0.5)
    lifted = frame_fidelity(grey + 0.1, grey)
    assert lifted["l1"] == pytest.approx(0.1, abs=1e-6)
    assert lifted["psnr"] == pytest.approx(20.0, abs=1e-3)  # MSE 0.01 -> 20 dB
    blurred = [frame_fidelity(np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in frames]), frames) for s in (1, 3)]
    assert 1.0 > blurred[0]["ssim"] > blurred[1]["ssim"] > 0.2
    assert 0 < blurred[0]["l1"] < blurred[1]["l1"] < 0.2
    as_uint8 = frame_fidelity((frames * 255).round().astype(np.uint8), frames)
    assert as_uint8["l1"] < 0.002


def test_correlation_and_motion_change():
    from emoji_model.evaluate import correlation, mean_abs_change

    assert correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert correlation([1, 1, 1, 1], [1, 2, 3, 4]) is None
    frames = np.zeros((4, 8, 8, 3), np.float32)
    frames[1:] += 0.5
    frames[3] = 1.0
    np.testing.assert_allclose(mean_abs_change(frames), [0.5, 0.0, 0.5])


def test_pixel_metrics_in_chunks_equal_the_whole_video_formulas(monkeypatch):
    import emoji_model.evaluate as ev

    frames = driving_frames()[0][:45, ::8, ::8]  # 45 real frames, 64 px, over several chunks of 8
    other = frames[::-1].copy()
    whole = {"l1": np.abs(frames / 255.0 - other / 255.0).mean(),
             "change": np.abs(np.diff(frames / 255.0, axis=0)).reshape(44, -1).mean(1),
             "ref": np.abs(frames / 255.0 - frames[0][None] / 255.0).mean()}
    monkeypatch.setattr(ev, "METRIC_CHUNK", 8)
    assert ev.frame_fidelity(frames, other)["l1"] == pytest.approx(whole["l1"], rel=1e-12)
    np.testing.assert_allclose(ev.mean_abs_change(frames), whole["change"], rtol=1e-12)
    assert ev._mean_abs_difference(frames, frames[0]) == pytest.approx(whole["ref"], rel=1e-12)
    assert len(ev.mean_abs_change(frames[:1])) == 0


def test_landmark_agreement_in_inter_ocular_units():
    from emoji_model.evaluate import EYE_CORNERS, landmark_agreement

    track = driving_track()
    target = track.points[:20]
    found = np.ones(20, dtype=bool)
    same = landmark_agreement(target, found, target)
    assert same["landmark_error"] == 0.0 and same["face_found"] == 1.0
    assert same["eye_corr"] == pytest.approx(1.0) and same["mouth_corr"] == pytest.approx(1.0)
    iod = np.linalg.norm(target[:, EYE_CORNERS[0], :2] - target[:, EYE_CORNERS[1], :2], axis=-1)
    moved = target.copy()
    moved[..., 0] += 0.1 * iod[:, None]  # every point a tenth of the inter-ocular distance to the right
    assert landmark_agreement(moved, found, target)["landmark_error"] == pytest.approx(0.1, rel=1e-4)
    half = found.copy()
    half[::2] = False
    assert landmark_agreement(target, half, target)["face_found"] == 0.5
    none = landmark_agreement(target, np.zeros(20, bool), target)
    assert none["landmark_error"] is None and none["face_found"] == 0.0


def test_mediapipe_finds_the_landmarks_again_in_small_frames(face_task):
    """The driving video downscaled to 64 px: re-detection lands within a few percent of the inter-ocular distance."""
    import cv2

    from emoji_model.evaluate import landmark_agreement, landmarks_of_frames

    frames, _ = driving_frames()
    small = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames[:8]])
    points, found = landmarks_of_frames(small, face_task)
    scores = landmark_agreement(points, found, driving_track().points[:8])
    assert scores["face_found"] == 1.0
    assert scores["landmark_error"] < 0.12


def test_lpips_equals_the_lpips_package(tmp_path):
    """LPIPS v0.1 (AlexNet) against outputs recorded with the lpips package 0.1.4 itself.

    Recorded with torchvision 0.28 and lpips 0.1.4: ``torch.manual_seed(0)`` then
    ``lpips.LPIPS(net='alex', pretrained=True, pnet_rand=True)`` (a seeded random AlexNet, rebuilt below
    from the same seed), its linear heads replaced by the random non-negative ones stored in the fixture;
    inputs are the astronaut crop against itself, shifted 3 px and blurred (σ 2).
    """
    import cv2
    from torch import nn

    from emoji_model.evaluate import ALEXNET_INDEX, ALEXNET_LAYERS, lpips_distance

    ref = np.load(DATA / "lpips_reference.npz")
    torch.manual_seed(0)  # torchvision's AlexNet draws its convolutions first, in this order
    convs = [nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in ALEXNET_LAYERS]
    tmp = tmp_path
    torch.save({f"features.{i}.{n}": getattr(c, n).detach() for c, i in zip(convs, ALEXNET_INDEX)
                for n in ("weight", "bias")}, tmp / "alexnet.pth")
    torch.save({k.replace("__", "."): torch.from_numpy(ref[k]) for k in ref.files if k.startswith("lin")},
               tmp / "heads.pth")
    from skimage import data

    img = data.astronaut()[100:228, 180:308].astype(np.float32) / 255
    others = [img, np.roll(img, 3, axis=1), cv2.GaussianBlur(img, (0, 0), 2)]
    got = [lpips_distance(o[None], img[None], tmp / "alexnet.pth", tmp / "heads.pth") for o in others]
    np.testing.assert_allclose(got, ref["distances"], rtol=1e-5, atol=1e-7)
    assert got[0] == 0.0 and got[1] > got[2] > 0


def test_frechet_distance_and_fvd_with_a_torchscript_feature_network(tmp_path):
    from emoji_model.evaluate import frechet_distance, fvd

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    b = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=1e-6)  # same covariance: |Δμ|²

    class Features(torch.nn.Module):
        """Stands in for i3d_torchscript.pt: same call, 8 features per clip (mean colour and motion stats)."""

        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                    return_features: bool = True) -> torch.Tensor:
            motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((2, 3, 4))
            return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4)), motion[:, :2]], 1)

    net = tmp_path / "i3d.pt"
    torch.jit.script(Features()).save(str(net))
    video = rng.random((48, 16, 16, 3)).astype(np.float32)
    assert fvd(video, video, net) == pytest.approx(0.0, abs=1e-6)
    assert fvd(np.clip(video + 0.2, 0, 1), video, net) > 0.01


def test_identity_similarity_with_a_torchscript_embedder(tmp_path, crop):
    from emoji_model.errors import MissingModelError
    from emoji_model.evaluate import identity_similarity

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, 4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(16))
    net(torch.zeros(1, 3, 112, 112))
    torch.jit.trace(net, torch.zeros(1, 3, 112, 112)).save(str(tmp_path / "id.pt"))
    frames = np.stack([crop, crop])
    assert identity_similarity(frames, crop, tmp_path / "id.pt") == pytest.approx(1.0, abs=1e-5)
    other = identity_similarity(frames[:, ::-1, ::-1], crop, tmp_path / "id.pt")
    assert other < 0.999
    with pytest.raises(MissingModelError):
        identity_similarity(frames, crop, tmp_path / "missing.onnx")


def test_every_key_is_always_reported_with_reasons(crop):
    from emoji_model.evaluate import METRIC_KEYS, score_video

    frames = np.stack([crop] * 5)
    controls = np.stack([np.roll(crop, k, axis=1) for k in range(5)])
    points = np.tile(driving_track().points[:1], (5, 1, 1))
    cross = score_video(frames, controls=controls, target_points=points, reference=crop, landmarks=False).as_dict()
    assert all(k in cross for k in METRIC_KEYS)
    assert cross["l1"] is None and "ground-truth" in cross["notes"]["l1"]
    assert cross["identity"] is None and "identity" in cross["notes"]
    assert cross["reference_l1"] == 0.0
    assert cross["motion_corr"] is None  # the generated frames do not move while the controls do
    self_ = score_video(frames, controls=controls, target_points=points, reference=crop, truth=frames,
                        landmarks=False).as_dict()
    assert self_["l1"] == 0.0 and self_["lpips"] is None and "LPIPS" in self_["notes"]["lpips"]
    assert json.loads(json.dumps(self_)) == self_


def test_evaluate_command_on_the_bundled_and_a_converted_released_checkpoint(tmp_path, driving_video, astronaut):
    from PIL import Image

    from emoji_model.__main__ import main
    from emoji_model.evaluate import METRIC_KEYS
    from tiny_fye import random_model, tiny_clip, tiny_vae, write_released

    out = tmp_path / "bundled.json"
    assert main(["evaluate", "--driving", str(driving_video), "--frames", "4", "--steps", "2", "--json", str(out),
                 "--video", str(tmp_path / "bundled.mp4")]) == 0
    report = json.loads(out.read_text())
    assert all(k in report for k in METRIC_KEYS) and report["mode"] == "self-reenactment"
    assert report["weights"] == "bundled" and report["size"] == 64 and report["frames"] == 4
    assert 0 < report["l1"] < 0.5 and 0 < report["ssim"] < 1 and report["psnr"] > 5
    assert report["face_found"] is not None and (tmp_path / "bundled.mp4").stat().st_size > 0

    released = write_released(random_model(seed=3), tmp_path / "released")
    converted = tmp_path / "converted.safetensors"
    assert main(["convert", "--released", str(released[0].parent), "--out", str(converted), "--heads", "2",
                 "--norm-groups", "8", "--motion-heads", "2"]) == 0
    tiny_vae().save_pretrained(tmp_path / "vae")
    tiny_clip().save_pretrained(tmp_path / "clip")
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    cross = tmp_path / "cross.json"
    assert main(["evaluate", "--driving", str(driving_video), "--reference", str(tmp_path / "astronaut.png"),
                 "--weights", str(converted), "--vae", str(tmp_path / "vae"), "--image-encoder",
                 str(tmp_path / "clip"), "--size", "64", "--frames", "4", "--steps", "1", "--no-landmarks",
                 "--json", str(cross)]) == 0
    report = json.loads(cross.read_text())
    assert report["mode"] == "cross-reenactment" and report["l1"] is None and report["reference_l1"] > 0
    assert report["crop_margin"] == 1.8  # the face crop a full-size model animates, as the demo does
    assert all(k in report for k in METRIC_KEYS) and report["landmark_error"] is None
