"""Face crop and paste-back: small faces in large frames, padding at the borders, exact round trips."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from emoji_model import InvalidRequestError, NoFaceDetectedError
from emoji_model.crop import CropInfo, crop_face, crop_images, face_boxes, paste_back, paste_mask, square_box
from emoji_model.landmarks import extract_image
from landmark_inputs import astronaut_track, driving_frames, driving_track

OFFSET = (1200, 900)  # where the 512-pixel astronaut sits on the 2048-pixel canvas (x, y)
GREY = 1.0 / 255.0


@functools.cache
def canvas() -> np.ndarray:
    """The astronaut on a 2048×2048 grey canvas: her face is about 110 pixels wide, 5% of the frame."""
    from skimage import data

    out = np.full((2048, 2048, 3), 90, np.uint8)
    out[OFFSET[1]:OFFSET[1] + 512, OFFSET[0]:OFFSET[0] + 512] = data.astronaut()
    return out


@functools.cache
def canvas_crop():
    return crop_face(canvas())


def test_whole_frame_detection_misses_the_small_face_and_the_crop_finds_it(face_task):
    with pytest.raises(NoFaceDetectedError):
        extract_image(canvas(), face_model=face_task)
    crops, info, track = canvas_crop()
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == np.float32
    assert info.source_size == (2048, 2048) and info.output_size == 512 and info.padding == (0, 0, 0, 0)
    # The box is 1.8 times her face (measured on the 512 image) around it.
    lo, hi = np.split(face_boxes(astronaut_track())[0], 2)
    lo, hi = lo + OFFSET, hi + OFFSET
    x0, y0, side = info.box
    assert side == pytest.approx(1.8 * max(hi - lo), rel=0.05)
    centre = np.array([x0 + side / 2, y0 + side / 2])
    np.testing.assert_allclose(centre, (lo + hi) / 2, atol=0.03 * side)
    # Landmarks extracted in the crop agree with those of the plain portrait, moved into the crop.
    expected = (astronaut_track().pixels()[0] + OFFSET - [x0, y0]) * info.scale
    error = np.linalg.norm(track.pixels()[0] - expected, axis=-1)
    assert track.size == (512, 512) and track.valid.all()
    assert np.median(error) < 0.01 * 512 and error.max() < 0.04 * 512  # measured 1.6 and 9 px


def test_round_trip_gives_the_source_back_and_leaves_the_rest_untouched():
    crops, info, track = canvas_crop()
    source = canvas().astype(np.float32) / 255.0
    out = paste_back(crops, canvas(), info, track)
    assert out.shape == (1, 2048, 2048, 3) and out.dtype == np.float32
    assert np.abs(out[0] - source).max() < 1.0 * GREY  # measured 0.81 grey levels
    # A black frame shows the mask: inside the crop box, over the face, zero at the box edge.
    black = paste_back(np.zeros_like(crops), canvas(), info, track)[0]
    changed = np.abs(black - source).max(axis=-1) > 0
    x0, y0, side = info.box
    outside = np.ones_like(changed)
    outside[y0:y0 + side, x0:x0 + side] = False
    assert not changed[outside].any()
    np.testing.assert_array_equal(black[outside], source[outside])  # exactly, not approximately
    nose = np.round(astronaut_track().pixels()[0, 1] + OFFSET).astype(int)
    assert black[nose[1], nose[0]].max() < 0.01  # fully replaced over the face
    assert not changed[y0, x0:x0 + side].any() and not changed[y0 + side - 1, x0:x0 + side].any()
    oval = paste_mask(track.points[0], 512) > 0
    assert 0.2 < oval.mean() < 0.6


def test_border_padding_and_batches_share_one_box(astronaut, face_task):
    ast = astronaut_track()
    crops, info, track = crop_face(astronaut, ast, margin=3.5, size=256, pad_mode="edge")
    left, top, right, bottom = info.padding
    face = face_boxes(ast)[0]
    assert top > 0 and info.box[2] == pytest.approx(3.5 * (face[2:] - face[:2]).max(), abs=1)
    # Edge padding repeats the first row of the image; black padding is black.
    padded = crops[0, : int(top * info.scale) - 1]
    assert len(padded) > 10 and np.abs(padded - padded[:1]).max() < 1e-5
    black, _, _ = crop_face(astronaut, ast, margin=3.5, size=256, pad_mode="black")
    assert np.abs(black[0, : int(top * info.scale) - 2]).max() < 1e-6
    # The faces moved into the crop: the same landmarks, relative to the box and scaled.
    x0, y0, side = info.box
    np.testing.assert_allclose(track.pixels()[0], (ast.pixels()[0] - [x0, y0]) * 256 / side, atol=1e-3)
    assert track.size == (256, 256) and track.valid.all()
    # Canonical vertices and pose are refitted for the crop's camera (the face is now on its axis):
    # they agree with MediaPipe run on the crop itself.
    crops512, _, moved = crop_face(astronaut, ast)
    fresh = extract_image(crops512[0], face_model=face_task)
    assert np.median(np.abs(moved.canonical - fresh.canonical)) < 0.05  # cm; measured 0.022
    assert np.median(np.abs(moved.canonical - ast.canonical)) > 0.1    # measured 0.26: refitting matters
    # A shrunk crop round trip is only as good as the shrink; outside the box it is exact.
    out = paste_back(crops, astronaut, info, track)
    assert np.abs(out[0] - astronaut / 255.0).mean() < 2 * GREY

    frames, _ = driving_frames()
    drv = driving_track()
    crops, info, track = crop_face(frames, drv, margin=1.5, size=256)
    assert crops.shape == (97, 256, 256, 3) and len(track) == 97
    boxes = face_boxes(drv)
    x0, y0, side = info.box
    assert (boxes[:, :2] >= [x0, y0]).all() and (boxes[:, 2:] <= [x0 + side, y0 + side]).all()  # union
    median = square_box(boxes, 1.5, "median")
    assert median[2] < side
    # A video pasted back frame by frame, the first frame repeated as original.
    out = paste_back(crops, frames[:1], info, track)
    assert out.shape == (97, 512, 512, 3)


def test_bad_inputs_fail_with_a_message(astronaut):
    crops, info, track = crop_face(astronaut, astronaut_track())
    with pytest.raises(InvalidRequestError, match="2 original frames"):
        paste_back(np.repeat(crops, 3, 0), np.stack([astronaut] * 2), info)
    with pytest.raises(InvalidRequestError, match="cropped"):
        paste_back(crops, astronaut[:300], info)
    with pytest.raises(InvalidRequestError, match="square"):
        paste_back(crops[:, :200], astronaut, info)
    with pytest.raises(InvalidRequestError, match="margin"):
        crop_face(astronaut, astronaut_track(), margin=9)
    with pytest.raises(InvalidRequestError, match="multiple of 8"):
        crop_face(astronaut, astronaut_track(), size=500)
    with pytest.raises(InvalidRequestError, match="1024x1024"):
        crop_face(np.zeros((1024, 1024, 3), np.uint8), astronaut_track())
    with pytest.raises(NoFaceDetectedError):
        crop_face(np.full((600, 800, 3), 128, np.uint8))
    with pytest.raises(InvalidRequestError, match="does not overlap"):
        crop_images(astronaut, CropInfo((512, 512), (600, 600, 100), 64))


def test_nodes_crop_and_paste_back(astronaut):
    from nodes.edit_nodes import CropFace, PasteBack

    image = torch.from_numpy(astronaut).float()[None] / 255.0
    crop, faces, info = CropFace().crop(image, 512, 1.8, "edge", "union")
    assert crop.shape == (1, 512, 512, 3) and len(faces) == 1 and faces.size == (512, 512)
    (out,) = PasteBack().paste(crop, image, info, 0.1, 0.05, faces=faces)
    assert out.shape == (1, 512, 512, 3) and (out - image).abs().max() < 1.0 * GREY
    (square,) = PasteBack().paste(crop.repeat(2, 1, 1, 1), image, info, 0.1, 0.05)
    assert square.shape == (2, 512, 512, 3) and (square - image).abs().max() < 1.0 * GREY
    with pytest.raises(InvalidRequestError, match="face track of 3 frames"):
        PasteBack().paste(crop.repeat(2, 1, 1, 1), image, info, 0.1, 0.05,
                          faces=faces.concat([faces, faces, faces]))
