"""MediaPipe's canonical space recomputed in numpy agrees with MediaPipe on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from emoji_model import geometry
from emoji_model.landmarks import neutral_frame
from landmark_inputs import astronaut_track, driving_track, mediapipe_matrix


@pytest.fixture(scope="module")
def model(face_task):
    return geometry.load_canonical_model(face_task)


def test_canonical_model_read_from_the_bundle(model):
    assert model.vertices.shape == (468, 3)
    assert model.triangles.shape == (898, 3)
    assert model.triangles.min() == 0 and model.triangles.max() == 467
    # The nose tip (landmark 1) lies on the symmetry plane, in front of the face.
    assert model.vertices[1, 0] == pytest.approx(0.0, abs=1e-6)
    assert model.vertices[1, 2] > 7.0
    # The face is about 15 cm wide; texture coordinates lie in the unit square.
    assert np.ptp(model.vertices[:, 0]) == pytest.approx(15.49, abs=0.01)
    assert model.uv.min() >= 0 and model.uv.max() <= 1
    # 33 weighted landmarks, mirrored pairs weighted alike (33 and 263 are the outer eye corners).
    basis = np.flatnonzero(model.weights)
    assert len(basis) == 33
    assert model.weights[33] == pytest.approx(model.weights[263]) == pytest.approx(0.0587242, rel=1e-5)


def test_protobuf_reader_handles_packed_and_unpacked_fields():
    # field 1 varint 150, field 2 fixed32 1.5, field 3 packed varints [3, 270], field 4 string "hi"
    buf = bytes([0x08, 0x96, 0x01, 0x15]) + np.float32(1.5).tobytes() + bytes([0x1A, 0x03, 0x03, 0x8E, 0x02,
                                                                               0x22, 0x02]) + b"hi"
    fields = geometry.read_protobuf(buf)
    assert fields[1] == [150]
    assert geometry._floats(fields[2])[0] == 1.5
    assert list(geometry._uints(fields[3])) == [3, 270]
    assert fields[4] == [b"hi"]


def test_procrustes_recovers_a_known_similarity(model):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.linalg.det(q))
    truth = geometry.compose_pose(rotation, [3.0, -2.0, -50.0], 1.3)
    target = geometry.apply_pose(truth, model.vertices)
    np.testing.assert_allclose(geometry.procrustes(model.vertices, target, model.weights), truth, atol=1e-9)


def test_pose_equals_mediapipe_matrix_on_the_astronaut(model, astronaut):
    track = astronaut_track()
    expected = mediapipe_matrix(astronaut)
    np.testing.assert_allclose(track.pose[0], expected, atol=1e-5)  # the track stores MediaPipe's
    fit = geometry.screen_to_metric(track.points[0], track.size, model)
    np.testing.assert_allclose(fit.pose[:3, :3], expected[:3, :3], atol=1e-3)
    np.testing.assert_allclose(fit.pose[:3, 3], expected[:3, 3], rtol=1e-3)
    # She sits about 70 cm from the virtual camera, head tilted ~15° forward.
    assert expected[2, 3] == pytest.approx(-70.05, abs=0.5)
    assert np.degrees(np.arcsin(expected[2, 1])) == pytest.approx(14.9, abs=1.0)


def test_pose_equals_mediapipe_matrix_on_every_driving_frame(model):
    track = driving_track()
    fit = geometry.screen_to_metric(track.points, track.size, model)
    rel = np.abs(fit.pose - track.pose).max(axis=(1, 2)) / np.abs(track.pose).max(axis=(1, 2))
    assert rel.max() < 1e-4, rel.max()  # measured 1.3e-6


def test_canonical_vertices_of_a_neutral_face_match_the_canonical_mesh(model):
    track = driving_track()
    deviation = np.abs(track.canonical[:, :468] - model.vertices).mean(axis=(1, 2))  # cm
    k = neutral_frame(track)
    # The most neutral frame is within ~1.4 mm of the canonical face on average; an expressive
    # frame (the blink, the frowns) deviates more.
    assert deviation[k] < 0.16, deviation[k]
    assert deviation.max() > 0.2
    # The iris points sit inside the eye sockets of canonical space.
    right_eye, left_eye = track.canonical[k, 468], track.canonical[k, 473]
    assert right_eye[0] < 0 < left_eye[0]
    assert right_eye[1] == pytest.approx(model.vertices[159, 1], abs=1.0)


def test_projection_inverts_the_metric_conversion(model):
    track = driving_track()[::10]
    fit = geometry.screen_to_metric(track.points, track.size, model)
    back = geometry.project(track.canonical, track.pose, track.size, fit.depth_offset, fit.scale)
    np.testing.assert_allclose(back, track.points, atol=2e-5)
    offset, scale = geometry.depth_calibration(track.points[0], fit.metric[0], track.size)
    assert offset == pytest.approx(fit.depth_offset[0], abs=1e-5)
    assert scale == pytest.approx(fit.scale[0], rel=1e-4)


def test_frustum_follows_the_aspect_ratio():
    left, right, bottom, top = geometry.frustum(1024, 512)
    assert top - bottom == pytest.approx(2 * np.tan(np.radians(31.5)))
    assert (right - left) / (top - bottom) == pytest.approx(2.0)


def test_interpolate_poses_stays_rigid():
    a = geometry.compose_pose(np.eye(3), [0, 0, -50], 1.0)
    c, s = np.cos(0.4), np.sin(0.4)
    b = geometry.compose_pose([[c, 0, s], [0, 1, 0], [-s, 0, c]], [10, 0, -60], 1.0)
    mid = geometry.interpolate_poses(a, b, np.array(0.5))
    np.testing.assert_allclose(mid[:3, 3], [5, 0, -55])
    np.testing.assert_allclose(mid[:3, :3] @ mid[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.degrees(np.arccos(mid[0, 0])) == pytest.approx(np.degrees(0.2), abs=1e-6)
