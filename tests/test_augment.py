"""Paired training augmentations (trainer/augment.py) and still portraits in the dataset, on real faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_inputs import astronaut_track

SIZE = 64


@pytest.fixture(scope="module")
def face():
    """The astronaut's face cropped to 64 px with its landmarks mapped into the crop."""
    from skimage import data

    from trainer.data import clip_box, crop_frame, points_in_box

    track = astronaut_track()
    image = data.astronaut()
    box = clip_box(track.points, track.size, 1.6)
    return crop_frame(image, box, SIZE), points_in_box(track.points, track.size, box)[0]


def test_plans_are_seeded_and_always_draw_alike():
    from trainer.augment import AugmentOptions, draw_plan

    opts = AugmentOptions(appearance=0.5, background=0.5, flip=0.5, warp=0.5)
    a, b = draw_plan(np.random.default_rng(7), opts), draw_plan(np.random.default_rng(7), opts)
    assert a == b
    states = []
    for o in (AugmentOptions(), opts, AugmentOptions(appearance=1, background=1, flip=1, warp=1)):
        rng = np.random.default_rng(3)
        draw_plan(rng, o)
        states.append(rng.random())
    assert states[0] == states[1] == states[2]  # the same number of draws, whatever is chosen
    everything = draw_plan(np.random.default_rng(1), AugmentOptions(appearance=1, background=1, flip=1, warp=1))
    assert everything.looks and everything.background and everything.flip and everything.ref_warp
    nothing = draw_plan(np.random.default_rng(1), AugmentOptions())
    assert not (nothing.looks or nothing.background or nothing.flip or nothing.ref_warp)
    assert draw_plan(np.random.default_rng(1), AugmentOptions(), still=True).ref_warp is not None


def test_a_warp_moves_pixels_and_landmarks_together(face):
    from trainer.augment import warp

    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    points = np.zeros((478, 3), np.float32)
    points[:3, :2] = [(0.3, 0.3), (0.7, 0.4), (0.5, 0.75)]
    for x, y in points[:3, :2] * SIZE:
        image[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255
    moved, pts = warp(image, points, (20.0, 1.1, 0.05, -0.04), SIZE)
    for x, y in pts[:3, :2] * SIZE:
        assert moved[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 150
    assert not np.allclose(pts[:3], points[:3])
    assert pts[0, 2] == pytest.approx(points[0, 2] * 1.1)
    still, same = warp(image, points, (0.0, 1.0, 0.0, 0.0), SIZE)
    assert np.array_equal(still, image) and np.allclose(same, points)


def test_a_flip_mirrors_the_face_and_keeps_left_and_right_labels(face):
    from emoji_model.landmarks import LEFT_IRIS, RIGHT_IRIS, topology
    from trainer.augment import flip, mirror_permutation

    image, points = face
    perm = mirror_permutation()
    assert np.array_equal(perm[perm], np.arange(478)) and perm[LEFT_IRIS[0]] == RIGHT_IRIS[0]
    flipped, pts = flip(image, points)
    assert np.array_equal(flipped, image[:, ::-1])
    topo = topology()
    # The subject's left eye (points 263..362) is on the image's right in the original and, being the
    # mirror image's left eye too, on the right again after the flip: the labels follow the anatomy.
    for p in (points, pts):
        assert p[topo.left_eye_ring, 0].mean() > p[topo.right_eye_ring, 0].mean()
    # The flipped left eye sits where the original right eye was, mirrored.
    np.testing.assert_allclose(pts[topo.left_eye_ring, 0].mean(), 1 - points[topo.right_eye_ring, 0].mean(),
                               atol=1e-6)
    back, again = flip(flipped, pts)
    assert np.array_equal(back, image) and np.allclose(again, points)


@pytest.mark.parametrize("look", ["colour", "grey", "tint", "stylise", "cartoon", "sketch"])
def test_every_look_changes_reference_and_frames_alike(face, look):
    from trainer.augment import AugmentOptions, Plan, _look_params, apply_plan

    image, points = face
    params = _look_params(look, np.full(6, 0.4))
    plan = Plan(looks=[(look, params)])
    frames, pts, ref, ref_pts = apply_plan(plan, np.stack([image, image]), np.stack([points, points]), image, points)
    assert np.array_equal(frames[0], ref) and np.array_equal(frames[1], ref)
    assert np.abs(ref.astype(int) - image).mean() > 3  # a visible change
    assert np.array_equal(pts[0], points) and ref.dtype == np.uint8 and ref.shape == image.shape
    AugmentOptions(appearance=1).validate()


def test_the_background_changes_around_the_head_only(face):
    from trainer.augment import Plan, apply_plan, head_alpha

    image, points = face
    alpha = head_alpha(points, SIZE)
    nose = np.round(points[1, :2] * SIZE).astype(int)
    assert alpha[nose[1], nose[0]] > 0.99 and alpha[0, 0] < 0.01 and alpha[-1, -1] < 0.05
    _, _, ref, _ = apply_plan(Plan(background=(0, 0.2, 0.3, 0.8)), image[None], points[None], image, points)
    diff = np.abs(ref.astype(int) - image).sum(-1)
    assert diff[nose[1], nose[0]] < 3 and diff[:6, :6].mean() > 20


def test_still_portraits_become_moving_samples(tmp_path, face_task):
    from PIL import Image
    from skimage import data

    from emoji_model.errors import InvalidRequestError
    from trainer.augment import AugmentOptions
    from trainer.data import ClipDataset, PrepareOptions, load_index, prepare_dataset

    folder = tmp_path / "portraits"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")  # no face: skipped and reported
    summary = prepare_dataset(folder, tmp_path / "data", PrepareOptions(size=SIZE, face_model=str(face_task)))
    assert (summary["done"], summary["skipped"], summary["clips"]) == (1, 1, 1)
    assert summary["skipped_reasons"]["coffee.jpg"] == "no face found"
    clip = load_index(tmp_path / "data")["clips"][0]
    assert clip["still"] and clip["length"] == 1

    ds = ClipDataset(tmp_path / "data", frames=4, seed=0, augment=AugmentOptions())
    assert len(ds) == 1
    item = ds[0]
    pixels = (item["pixels"] + 1) / 2  # [3,F,S,S]
    ref = item["reference"]
    for f in range(4):
        assert (pixels[:, f] - ref).abs().mean() > 0.02  # never the reference itself
    assert (pixels[:, 0] - pixels[:, 3]).abs().mean() > 0.01  # the synthetic motion moves over the window
    # the controls were drawn again from the moved landmarks: they differ between the first and last frame
    assert not torch.equal(item["control"][:, 0], item["control"][:, 3])
    assert item["control"].amax() > 0.5
    with pytest.raises(InvalidRequestError, match="synthetic head"):
        ClipDataset(tmp_path / "data", frames=4, augment=AugmentOptions(rotation=0, scale=0, shift=0))
