"""MediaPipe's canonical face space in numpy: the canonical model, screen↔metric conversion, poses.

MediaPipe's face-geometry pipeline turns the normalised screen landmarks of a face into metric
3D landmarks seen by a virtual perspective camera (63° vertical field of view, near 1, far 10000)
and fits a pose (rotation, translation, scale) that maps its canonical face model onto them. The
research code of Follow-Your-Emoji reads the pipeline's mesh output — the metric landmarks mapped
back into canonical space by the inverse pose — which MediaPipe's Python API no longer exposes.
This module recomputes it from the landmarks and the canonical model stored in the landmarker
bundle, vectorised over frames. The steps follow MediaPipe's ``geometry_pipeline.cc``
(ScreenToMetricSpaceConverter) and ``procrustes_solver.cc``; tests check that the pose found here
equals the facial transformation matrix MediaPipe returns.

Arrays of points are ``[..., N, 3]``; poses are ``[..., 4, 4]`` (column-vector convention:
``metric = pose @ [canonical; 1]``).
"""

from __future__ import annotations

import functools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequestError

FOV_DEGREES = 63.0
NEAR = 1.0
FAR = 10000.0
MESH_POINTS = 468
"""Points of the face mesh; the landmarker adds 10 iris points (468–477) after them."""

GEOMETRY_METADATA = "geometry_pipeline_metadata_landmarks.binarypb"


# -- the canonical model ------------------------------------------------------------------

@dataclass(frozen=True)
class CanonicalModel:
    """MediaPipe's canonical face: 468 vertices (cm), texture coords, triangles, Procrustes weights."""

    vertices: np.ndarray   # [468, 3] float64
    uv: np.ndarray         # [468, 2]
    triangles: np.ndarray  # [T, 3] int
    weights: np.ndarray    # [468] float64, zero outside the Procrustes basis


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def read_protobuf(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field number: [raw values]} (varints as int, others as bytes)."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


def _floats(values: list) -> np.ndarray:
    # A repeated float arrives as fixed32 values, or packed in length-delimited chunks.
    return np.frombuffer(b"".join(values), dtype="<f4").astype(np.float64)


def _uints(values: list) -> np.ndarray:
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
        else:  # packed
            i = 0
            while i < len(v):
                n, i = _varint(v, i)
                out.append(n)
    return np.asarray(out, dtype=np.int64)


def parse_geometry_metadata(buf: bytes) -> CanonicalModel:
    """Parse MediaPipe's GeometryPipelineMetadata (canonical_mesh = 1, procrustes basis = 2)."""
    # Field numbers were checked against the bundled file: 1 canonical_mesh (Mesh3d), 2 repeated
    # WeightedLandmarkRef {1 landmark_id, 2 weight}, 3 input_source (enum).
    meta = read_protobuf(buf)
    mesh = read_protobuf(meta[1][0])
    # Mesh3d: 1 vertex_type (0 = VERTEX_PT: x, y, z, u, v), 2 primitive_type (0 = TRIANGLE),
    # 3 vertex_buffer (float), 4 index_buffer (uint32).
    if mesh.get(1, [0])[0] != 0 or mesh.get(2, [0])[0] != 0:
        raise ValueError("canonical mesh is not a VERTEX_PT triangle mesh")
    vertex_buffer = _floats(mesh[3]).reshape(-1, 5)
    triangles = _uints(mesh[4]).reshape(-1, 3)
    weights = np.zeros(len(vertex_buffer))
    for ref in meta.get(2, []):
        entry = read_protobuf(ref)
        landmark_id = entry.get(1, [0])[0]
        weights[landmark_id] = struct.unpack("<f", entry[2][0])[0] if 2 in entry else 0.0
    return CanonicalModel(vertices=vertex_buffer[:, :3].copy(), uv=vertex_buffer[:, 3:].copy(),
                          triangles=triangles, weights=weights)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> CanonicalModel:
    with zipfile.ZipFile(path) as bundle:
        try:
            buf = bundle.read(GEOMETRY_METADATA)
        except KeyError as exc:
            raise InvalidRequestError(
                f"'{path}' is not MediaPipe's face landmarker bundle: it holds no {GEOMETRY_METADATA}"
            ) from exc
    model = parse_geometry_metadata(buf)
    if len(model.vertices) != MESH_POINTS:
        raise InvalidRequestError(f"canonical mesh in '{path}' has {len(model.vertices)} vertices, "
                                  f"expected {MESH_POINTS}")
    return model


def load_canonical_model(task_path: str | Path) -> CanonicalModel:
    """The canonical face model stored in a face_landmarker.task bundle (cached per file)."""
    path = Path(task_path)
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise InvalidRequestError(f"cannot read face landmarker bundle '{path}': {exc}") from exc
    if not zipfile.is_zipfile(path):
        raise InvalidRequestError(f"'{path}' is not a face landmarker bundle (.task zip file)")
    return _load_cached(str(path.resolve()), mtime)


# -- the virtual camera -------------------------------------------------------------------

def frustum(width: int, height: int) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of MediaPipe's camera at the near plane for a frame of that size."""
    height_at_near = 2.0 * NEAR * np.tan(0.5 * np.deg2rad(FOV_DEGREES))
    width_at_near = width * height_at_near / height
    return -0.5 * width_at_near, 0.5 * width_at_near, -0.5 * height_at_near, 0.5 * height_at_near


def _project_xy(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Normalised screen (origin top-left, y down) -> near-plane coordinates; z in x units.
    left, right, bottom, top = frustum(*size)
    out = np.empty_like(points, dtype=np.float64)
    out[..., 0] = points[..., 0] * (right - left) + left
    out[..., 1] = (1.0 - points[..., 1]) * (top - bottom) + bottom
    out[..., 2] = points[..., 2] * (right - left)
    return out


def _to_metric(projected: np.ndarray, depth_offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # MoveAndRescaleZ, UnprojectXY, ChangeHandedness of MediaPipe's converter.
    out = projected.copy()
    z = (projected[..., 2] - depth_offset[..., None] + NEAR) / scale[..., None]
    out[..., 0] = projected[..., 0] * z / NEAR
    out[..., 1] = projected[..., 1] * z / NEAR
    out[..., 2] = -z
    return out


# -- weighted orthogonal Procrustes --------------------------------------------------------

def procrustes(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Similarity transform [..., 4, 4] minimising sum w·|s·R·source + t − target|² (no reflection)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source, target = np.broadcast_arrays(source, target)
    sqrt_w = np.sqrt(np.asarray(weights, dtype=np.float64))       # [N]
    total = float(np.sum(sqrt_w ** 2))
    a_w = source * sqrt_w[:, None]                                 # [..., N, 3]  A_w
    b_w = target * sqrt_w[:, None]                                 # [..., N, 3]  B_w
    center = np.sum(a_w * sqrt_w[:, None], axis=-2) / total        # [..., 3]     weighted centroid
    centered = a_w - center[..., None, :] * sqrt_w[:, None]        # [..., N, 3]  (I - C) A_w
    design = np.swapaxes(b_w, -1, -2) @ centered                   # [..., 3, 3]  B_wᵀ (I - C) A_w
    u, _, vt = np.linalg.svd(design)
    # Disallow reflections: flip U's last column when det(U)·det(V) < 0.
    flip = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    u = u.copy()
    u[..., :, 2] *= flip[..., None]
    rotation = u @ vt                                              # [..., 3, 3]
    rotated = centered @ np.swapaxes(rotation, -1, -2)             # R (I - C) A_w, as rows
    scale = np.sum(rotated * b_w, axis=(-1, -2)) / np.sum(centered * a_w, axis=(-1, -2))
    residual = b_w - scale[..., None, None] * (a_w @ np.swapaxes(rotation, -1, -2))
    translation = np.sum(residual * sqrt_w[:, None], axis=-2) / total
    out = np.zeros(source.shape[:-2] + (4, 4))
    out[..., :3, :3] = scale[..., None, None] * rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def _estimate_scale(model: CanonicalModel, landmarks: np.ndarray) -> np.ndarray:
    pose = procrustes(model.vertices, landmarks, model.weights)
    return np.linalg.norm(pose[..., :3, 0], axis=-1)


# -- screen <-> metric <-> canonical ------------------------------------------------------

@dataclass
class MetricFit:
    """Screen landmarks in MediaPipe's metric space, with what is needed to go back to the screen."""

    metric: np.ndarray        # [..., N, 3] metric landmarks (cm, camera at the origin looking down -z)
    pose: np.ndarray          # [..., 4, 4] canonical -> metric
    depth_offset: np.ndarray  # [...] mean projected z of the 468 mesh points
    scale: np.ndarray         # [...] total z rescaling (first × second iteration)


def screen_to_metric(points: np.ndarray, size: tuple[int, int], model: CanonicalModel) -> MetricFit:
    """MediaPipe's ScreenToMetricSpaceConverter on normalised landmarks [..., N≥468, 3] of a (w, h) frame."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-2] < MESH_POINTS or points.shape[-1] != 3:
        raise InvalidRequestError(f"expected landmarks [..., >=468, 3], got {points.shape}")
    projected = _project_xy(points, size)
    mesh = projected[..., :MESH_POINTS, :]
    depth_offset = mesh[..., 2].mean(axis=-1)
    # 1st iteration: scale from the projected points with flipped z (unprojecting is unsafe yet).
    first = mesh.copy()
    first[..., 2] *= -1.0
    scale1 = _estimate_scale(model, first)
    # 2nd iteration: unproject with the first scale, estimate again.
    scale2 = _estimate_scale(model, _to_metric(mesh, depth_offset, scale1))
    total = scale1 * scale2
    metric = _to_metric(projected, depth_offset, total)
    pose = procrustes(model.vertices, metric[..., :MESH_POINTS, :], model.weights)
    return MetricFit(metric=metric, pose=pose, depth_offset=depth_offset, scale=total)


def metric_to_screen(metric: np.ndarray, size: tuple[int, int], depth_offset: np.ndarray,
                     scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`screen_to_metric`'s conversion: metric points -> normalised screen [..., N, 3]."""
    metric = np.asarray(metric, dtype=np.float64)
    left, right, bottom, top = frustum(*size)
    z = -metric[..., 2]                                  # distance along the view axis
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    x_near = metric[..., 0] * NEAR / z
    y_near = metric[..., 1] * NEAR / z
    z_projected = z * np.asarray(scale)[..., None] + np.asarray(depth_offset)[..., None] - NEAR
    out = np.empty_like(metric)
    out[..., 0] = (x_near - left) / (right - left)
    out[..., 1] = 1.0 - (y_near - bottom) / (top - bottom)
    out[..., 2] = z_projected / (right - left)
    return out


def depth_calibration(points: np.ndarray, metric: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(depth_offset, scale) that relate one frame's screen z to its metric z (least squares; exact for fitted frames).

    Lets a projection reproduce MediaPipe-like z values without the canonical model at hand.
    """
    left, right, _, _ = frustum(*size)
    z_projected = np.asarray(points, dtype=np.float64)[..., :MESH_POINTS, 2] * (right - left)
    z_metric = np.asarray(metric, dtype=np.float64)[..., :MESH_POINTS, 2]
    # z_projected = -scale * z_metric + (depth_offset - near)
    design = np.stack([-z_metric, np.ones_like(z_metric)], axis=-1)
    (scale, intercept), *_ = np.linalg.lstsq(design, z_projected, rcond=None)
    return float(intercept + NEAR), float(scale)


def apply_pose(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``pose @ [points; 1]`` for points [..., N, 3] and poses [..., 4, 4]."""
    return points @ np.swapaxes(pose[..., :3, :3], -1, -2) + pose[..., None, :3, 3]


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of similarity transforms [..., 4, 4]."""
    return np.linalg.inv(pose)


def project(canonical: np.ndarray, pose: np.ndarray, size: tuple[int, int],
            depth_offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Normalised screen landmarks [..., N, 3] of canonical vertices placed by ``pose`` in a (w, h) frame."""
    return metric_to_screen(apply_pose(pose, canonical), size, depth_offset, scale)


# -- pose helpers --------------------------------------------------------------------------

def pose_scale(pose: np.ndarray) -> np.ndarray:
    """Uniform scale [...] of similarity transforms (cube root of the determinant)."""
    return np.cbrt(np.linalg.det(pose[..., :3, :3]))


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to each 3×3 matrix [..., 3, 3] (drops scale and shear)."""
    u, _, vt = np.linalg.svd(matrix)
    flip = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    u = u.copy()
    u[..., :, 2] *= flip[..., None]
    return u @ vt


def compose_pose(rotation: np.ndarray, translation: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Poses [..., 4, 4] from rotations [..., 3, 3], translations [..., 3] and scales [...]."""
    rotation = np.asarray(rotation, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    out = np.zeros(rotation.shape[:-2] + (4, 4))
    out[..., :3, :3] = rotation * scale[..., None, None]
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def interpolate_poses(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend poses [..., 4, 4] by t [...] in 0..1: translation and scale linear, rotation re-orthonormalised."""
    t = np.asarray(t, dtype=np.float64)[..., None, None]
    sa, sb = pose_scale(a), pose_scale(b)
    ra, rb = a[..., :3, :3] / sa[..., None, None], b[..., :3, :3] / sb[..., None, None]
    rotation = nearest_rotation((1 - t) * ra + t * rb)
    translation = (1 - t[..., 0]) * a[..., :3, 3] + t[..., 0] * b[..., :3, 3]
    scale = (1 - t[..., 0, 0]) * sa + t[..., 0, 0] * sb
    return compose_pose(rotation, translation, scale)
