"""The paper's evaluation (5.3.2, Table 1), offline: frame fidelity, motion, landmarks, identity, LPIPS, FVD.

Self-reenactment (no separate reference): frame 0 of a video is the reference and the following frames
are both the driving motion and the ground truth — ``l1`` (mean absolute error on 0..1 images, as the
paper's Table 1), ``ssim`` and ``psnr`` (scikit-image), ``lpips`` and ``fvd`` when the user has placed
those networks. Cross-reenactment (another portrait): ``landmark_error`` (MediaPipe re-run on the
generated frames against the landmarks they should show, mean distance of the expression points over the
inter-ocular distance), ``face_found`` (the share of frames where MediaPipe found a face), ``eye_corr`` and
``mouth_corr`` (correlation over time of the eye aperture and the mouth opening), ``identity`` (cosine
similarity of a face-recognition embedding to the reference's, when the user supplies such a model) and
``motion_corr`` (correlation between the per-frame change of the generated frames and of the control
images: does the video move when the landmarks do). Every key of :data:`METRIC_KEYS` is always present;
a metric that cannot be computed is ``None`` and its reason is in ``notes``.

Networks are read from files only (nothing is downloaded):

* LPIPS (Zhang et al. 2018, AlexNet variant): torchvision's ImageNet AlexNet weights
  (``alexnet-owt-7be5be79.pth``) and the lpips package's linear heads (``weights/v0.1/alex.pth``);
  the five AlexNet convolutions are rebuilt here so that the pack does not need torchvision.
* FVD (Unterthiner et al. 2019): the TorchScript I3D feature network most FVD code uses
  (``i3d_torchscript.pt``), called as ``net(videos, rescale=False, resize=True, return_features=True)``
  on [B,3,T,H,W] videos in -1..1; the Fréchet distance is between 16-frame clips of both videos.
* identity: a TorchScript (``.pt``) or ONNX (``.onnx``, needs onnxruntime) face-recognition model taking
  [B,3,112,112] RGB in -1..1 (the ArcFace convention) and returning one embedding per face.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidRequestError, MissingModelError

log = logging.getLogger(__name__)

METRIC_KEYS = ("l1", "ssim", "psnr", "lpips", "fvd", "identity", "landmark_error", "face_found", "eye_corr",
               "mouth_corr", "motion_corr", "reference_l1")
MOUTH = (13, 14, 78, 308)    # inner lips: upper middle, lower middle, left corner, right corner
EYE_CORNERS = (33, 263)      # outer eye corners (inter-ocular distance)
ALEXNET_LAYERS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
                  (256, 256, 3, 1, 1))  # torchvision AlexNet features: (in, out, kernel, stride, padding)
ALEXNET_INDEX = (0, 3, 6, 8, 10)     # their indices in torchvision's ``features`` (the lpips slices keep them)


@dataclass
class EvalNetworks:
    """Optional metric networks (paths to files the user placed)."""

    lpips_backbone: str | None = None   # alexnet-owt-7be5be79.pth
    lpips_heads: str | None = None      # lpips' weights/v0.1/alex.pth
    fvd: str | None = None              # i3d_torchscript.pt
    identity: str | None = None         # a face-recognition model (.pt TorchScript or .onnx)


@dataclass
class Report:
    """Metric values (None when not computable), the reasons, and what was evaluated."""

    metrics: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(METRIC_KEYS))
    notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def skip(self, key: str, why: str) -> None:
        """Leave ``key`` at None and say why (logged once)."""
        self.metrics[key] = None
        self.notes[key] = why
        log.info("%s: not computed (%s)", key, why)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: every metric key, then notes and info."""
        return {**{k: self.metrics.get(k) for k in METRIC_KEYS}, "notes": dict(self.notes), **self.info}


# -- per-frame fidelity --------------------------------------------------------------------------

def _float_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    return np.clip(frames.astype(np.float64), 0.0, 1.0)


def frame_fidelity(generated: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """{"l1", "ssim", "psnr"} means over frames of [F,H,W,3] videos (uint8, or float in 0..1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    generated, truth = np.asarray(generated), np.asarray(truth)
    if generated.shape != truth.shape:
        raise InvalidRequestError(f"generated frames {generated.shape} and ground truth {truth.shape} differ in shape")
    ssim, psnr = [], []
    for a, b in zip(generated, truth):  # frame by frame: no float copy of the whole video
        a, b = _float_frames(a), _float_frames(b)
        ssim.append(structural_similarity(a, b, channel_axis=-1, data_range=1.0))
        psnr.append(peak_signal_noise_ratio(b, a, data_range=1.0))
    return {"l1": _mean_abs_difference(generated, truth), "ssim": float(np.mean(ssim)),
            "psnr": float(np.mean(np.minimum(psnr, 100.0)))}  # identical frames: inf, reported as 100 dB


METRIC_CHUNK = 32
"""Frames converted to float at once by the pixel metrics: their memory follows this, not the video."""


def _mean_abs_difference(frames: np.ndarray, other: np.ndarray) -> float:
    """Mean |frames - other| on the 0..1 scale; ``other`` is [F,H,W,3] or one frame [H,W,3] for every frame."""
    frames, other = np.asarray(frames), np.asarray(other)
    total = 0.0
    for s in range(0, len(frames), METRIC_CHUNK):
        b = other if other.ndim == 3 else other[s:s + METRIC_CHUNK]
        total += float(np.abs(_float_frames(frames[s:s + METRIC_CHUNK]) - _float_frames(b)).sum())
    return total / max(frames.size, 1)


def mean_abs_change(frames: np.ndarray) -> np.ndarray:
    """[F-1] mean absolute difference between consecutive frames (0..1 scale)."""
    frames = np.asarray(frames)
    out = []
    for s in range(0, max(len(frames) - 1, 0), METRIC_CHUNK):  # chunks overlapping by one frame
        f = _float_frames(frames[s:s + METRIC_CHUNK + 1])
        out.append(np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation of two series; None when either is constant or they are too short."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# -- landmarks -----------------------------------------------------------------------------------

def mouth_opening(points: np.ndarray) -> np.ndarray:
    """[...] inner-lip gap over the mouth width, from normalised points [..., 478, ≥2] (square frames)."""
    xy = np.asarray(points, dtype=np.float64)[..., :2]
    gap = np.linalg.norm(xy[..., MOUTH[0], :] - xy[..., MOUTH[1], :], axis=-1)
    width = np.linalg.norm(xy[..., MOUTH[2], :] - xy[..., MOUTH[3], :], axis=-1)
    return gap / np.maximum(width, 1e-9)


def landmarks_of_frames(frames: np.ndarray, face_model: str | os.PathLike | None = None, min_side: int = 256,
                        runtime=None) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe on each frame independently (IMAGE mode, frames upscaled to ``min_side``).

    Returns (points [F,478,3] normalised, found [F] bool); frames without a face keep NaN points.
    """
    import cv2

    from .landmarks import NUM_POINTS, FaceLandmarker
    from .runtime import resolve

    rt = resolve(runtime)
    frames = np.asarray(frames)
    points = np.full((len(frames), NUM_POINTS, 3), np.nan)
    found = np.zeros(len(frames), dtype=bool)
    with FaceLandmarker(face_model, video=False, num_faces=1, runtime=rt) as lm:
        for i, frame in enumerate(frames):
            rt.check_interrupt()
            image = (_float_frames(frame) * 255 + 0.5).astype(np.uint8)
            h, w = image.shape[:2]
            if min(h, w) < min_side:
                scale = min_side / min(h, w)
                image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
            faces = lm.detect(image)
            if faces:
                points[i], found[i] = faces[0].points, True
    return points, found


def landmark_agreement(found_points: np.ndarray, found: np.ndarray, target_points: np.ndarray) -> dict[str, float | None]:
    """landmark_error, face_found, eye_corr, mouth_corr of detected points against the target track's."""
    from .landmarks import eye_aperture, topology

    target = np.asarray(target_points, dtype=np.float64)[..., :2]
    out: dict[str, float | None] = {"face_found": float(found.mean()) if len(found) else None}
    if not found.any():
        return {**out, "landmark_error": None, "eye_corr": None, "mouth_corr": None}
    idx = topology().expression_points
    got = found_points[found][..., :2]
    tgt = target[found]
    iod = np.linalg.norm(tgt[:, EYE_CORNERS[0]] - tgt[:, EYE_CORNERS[1]], axis=-1)
    err = np.linalg.norm(got[:, idx] - tgt[:, idx], axis=-1).mean(axis=1) / np.maximum(iod, 1e-9)
    out["landmark_error"] = float(err.mean())
    out["eye_corr"] = correlation(eye_aperture(got).mean(-1), eye_aperture(tgt).mean(-1))
    out["mouth_corr"] = correlation(mouth_opening(got), mouth_opening(tgt))
    return out


# -- LPIPS -----------------------------------------------------------------------------------------

def _lpips_network(backbone: str | os.PathLike, heads: str | os.PathLike):
    """(AlexNet feature stages, linear heads) with the user's weights, as torch modules in eval mode."""
    import torch
    from torch import nn

    from .checkpoints import read_state_dict

    def load(path) -> dict[str, torch.Tensor]:
        path = Path(path)
        if not path.is_file():
            raise MissingModelError(str(path), [str(path)], "torchvision's alexnet-owt-7be5be79.pth and the lpips "
                                    "package's weights/v0.1/alex.pth")
        if path.suffix == ".safetensors":
            return read_state_dict(path)
        return torch.load(path, map_location="cpu", weights_only=True)

    feats, lin = load(backbone), load(heads)
    convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in ALEXNET_LAYERS)
    for conv, index in zip(convs, ALEXNET_INDEX):
        conv.weight.data.copy_(feats[f"features.{index}.weight"])
        conv.bias.data.copy_(feats[f"features.{index}.bias"])
    heads_ = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in ALEXNET_LAYERS)
    for k, head in enumerate(heads_):
        head.weight.data.copy_(lin[f"lin{k}.model.1.weight"])
    return convs.eval(), heads_.eval()


def lpips_distance(generated: np.ndarray, truth: np.ndarray, backbone: str | os.PathLike,
                   heads: str | os.PathLike, chunk: int = 8) -> float:
    """Mean LPIPS (AlexNet, v0.1) over frames of two [F,H,W,3] videos."""
    import torch
    import torch.nn.functional as F

    convs, heads_ = _lpips_network(backbone, heads)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)  # lpips' ScalingLayer
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - shift) / scale
        out = []
        for k, conv in enumerate(convs):
            if k in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    values = []
    g, t = np.asarray(generated), np.asarray(truth)
    with torch.no_grad():
        for s in range(0, len(g), chunk):
            a = torch.from_numpy(_float_frames(g[s:s + chunk])).permute(0, 3, 1, 2).float() * 2 - 1  # f h w c -> f c h w
            b = torch.from_numpy(_float_frames(t[s:s + chunk])).permute(0, 3, 1, 2).float() * 2 - 1
            d = sum(head((fa - fb).square()).mean((2, 3)) for head, fa, fb in zip(heads_, features(a), features(b)))
            values.extend(d.flatten().tolist())
    return float(np.mean(values))


def _load_torchscript(path: Path):
    """A TorchScript module on the CPU (the format the common FVD and face-recognition files come in)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, the files are not
        return torch.jit.load(str(path), map_location="cpu").eval()


# -- FVD -------------------------------------------------------------------------------------------

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets [N,D] and [M,D]."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a + cov_b - 2 * root))


def video_clips(frames: np.ndarray, length: int = 16) -> list[np.ndarray]:
    """Every window of ``length`` frames with a stride of half a window (at least one window)."""
    if len(frames) < length:
        return [frames]
    starts = range(0, len(frames) - length + 1, max(1, length // 2))
    return [frames[s:s + length] for s in starts]


def fvd(generated: np.ndarray, truth: np.ndarray, network: str | os.PathLike, length: int = 16) -> float:
    """FVD between the 16-frame clips of two videos, with a TorchScript I3D feature network."""
    import torch

    path = Path(network)
    if not path.is_file():
        raise MissingModelError(str(path), [str(path)], "the TorchScript I3D network i3d_torchscript.pt")
    net = _load_torchscript(path)

    def feats(frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for clip in video_clips(frames, length):
                x = torch.from_numpy(_float_frames(clip)).float().permute(3, 0, 1, 2)[None] * 2 - 1  # t h w c -> 1 c t h w
                out.append(net(x, rescale=False, resize=True, return_features=True).reshape(1, -1).numpy())
        return np.concatenate(out).astype(np.float64)

    return frechet_distance(feats(generated), feats(truth))


# -- identity --------------------------------------------------------------------------------------

def _identity_embedder(model: str | os.PathLike):
    """A callable [B,3,112,112] float32 in -1..1 → [B,D] embeddings, from a TorchScript or ONNX file."""
    import torch

    path = Path(model)
    if not path.is_file():
        raise MissingModelError(str(path), [str(path)], "a face-recognition model (.pt TorchScript or .onnx)")
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise InvalidRequestError("an .onnx identity model needs onnxruntime (pip install onnxruntime)") from exc
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    net = _load_torchscript(path)

    def embed(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return net(x).reshape(len(x), -1).numpy()

    return embed


def identity_similarity(generated: np.ndarray, reference: np.ndarray, model: str | os.PathLike) -> float:
    """Mean cosine similarity between the embeddings of the generated frames and of the reference."""
    import cv2
    import torch

    embed = _identity_embedder(model)

    def batch(images: np.ndarray) -> torch.Tensor:
        small = np.stack([cv2.resize(_float_frames(im).astype(np.float32), (112, 112), interpolation=cv2.INTER_AREA)
                          for im in images])
        return torch.from_numpy(small).permute(0, 3, 1, 2).contiguous() * 2 - 1  # f h w c -> f c h w

    ref = embed(batch(np.asarray(reference)[None]))
    gen = np.concatenate([embed(batch(generated[s:s + 16])) for s in range(0, len(generated), 16)])
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    gen = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    return float((gen @ ref.T).mean())


# -- one video ---------------------------------------------------------------------------------------

def score_video(generated: np.ndarray, *, controls: np.ndarray, target_points: np.ndarray,
                reference: np.ndarray, truth: np.ndarray | None = None, networks: EvalNetworks | None = None,
                face_model: str | os.PathLike | None = None, landmarks: bool = True, runtime=None) -> Report:
    """Every metric of one generated video [F,H,W,3] (see the module docstring).

    ``controls`` [F,H,W,3] are the control images it was generated from, ``target_points`` [F,478,≥2]
    the landmarks it should show (normalised to its frames), ``reference`` [H,W,3] the portrait at the
    generated size, ``truth`` the ground-truth frames of a self-reenactment.
    """
    networks = networks or EvalNetworks()
    report = Report()
    generated = np.asarray(generated)
    report.info["frames"] = int(len(generated))
    report.metrics["reference_l1"] = _mean_abs_difference(generated, reference)
    if len(generated) > 3:
        report.metrics["motion_corr"] = correlation(mean_abs_change(generated), mean_abs_change(controls))
        if report.metrics["motion_corr"] is None:
            report.notes["motion_corr"] = "the generated frames or the controls do not change over time"
    else:
        report.skip("motion_corr", "needs at least 4 frames")
    if truth is not None:
        report.metrics.update(frame_fidelity(generated, truth))
    else:
        for key in ("l1", "ssim", "psnr", "lpips", "fvd"):
            report.skip(key, "cross-reenactment has no ground-truth frames")
    if truth is not None:
        if networks.lpips_backbone and networks.lpips_heads:
            report.metrics["lpips"] = lpips_distance(generated, truth, networks.lpips_backbone, networks.lpips_heads)
        else:
            report.skip("lpips", "no LPIPS weights given (--lpips-backbone alexnet-owt-7be5be79.pth and "
                        "--lpips-heads alex.pth)")
        if networks.fvd:
            report.metrics["fvd"] = fvd(generated, truth, networks.fvd)
        else:
            report.skip("fvd", "no I3D network given (--fvd-network i3d_torchscript.pt)")
    if networks.identity:
        report.metrics["identity"] = identity_similarity(generated, reference, networks.identity)
    else:
        report.skip("identity", "no face-recognition model given (--identity-model FILE)")
    if landmarks:
        points, found = landmarks_of_frames(generated, face_model, runtime=runtime)
        report.metrics.update(landmark_agreement(points, found, target_points))
        if not found.any():
            report.notes["landmark_error"] = "MediaPipe found no face in any generated frame"
    else:
        for key in ("landmark_error", "face_found", "eye_corr", "mouth_corr"):
            report.skip(key, "landmarks not evaluated")
    return report


# -- generating what is scored -----------------------------------------------------------------------

def generate_frames(model, vae, image_encoder, reference: np.ndarray, controls, settings, *, device=None,
                    dtype=None, runtime=None) -> np.ndarray:
    """uint8 frames [F,S,S,3] for a reference [S,S,3] and control images [F,S,S,3] (or LazyControls)."""
    import torch

    from .pipeline import decode_frames, generate_latents
    from .reference import clip_encoder_from_transformers, encode_reference, vae_encoder_from_diffusers

    size = (int(controls.shape[1]), int(controls.shape[2]))
    device = device or model.weight_device()
    dtype = dtype or torch.float32
    ref = encode_reference(model, reference, vae_encoder_from_diffusers(vae),
                           clip_encoder_from_transformers(image_encoder), size=size, device=device, dtype=dtype)
    latents = generate_latents(model, ref, controls, settings, device=device, dtype=dtype, runtime=runtime)

    def decode(raw):
        return (vae.decode(raw.to(vae.device, vae.dtype)).sample.float().permute(0, 2, 3, 1) + 1) / 2

    return np.concatenate(list(decode_frames(decode, latents, runtime=runtime)))


def self_reenactment(model, vae, image_encoder, frames: np.ndarray, controls: np.ndarray, points: np.ndarray,
                     settings, *, networks: EvalNetworks | None = None, face_model=None, landmarks: bool = True,
                     device=None, dtype=None, runtime=None) -> tuple[Report, np.ndarray]:
    """Frame 0 of a clip is the reference; frames 1.. are generated from their controls and scored against themselves.

    ``frames`` uint8 [F,S,S,3], ``controls`` [F,S,S,3] and ``points`` [F,478,3] (normalised to the frames)
    are framed alike. Returns the report and the generated frames [F-1,S,S,3].
    """
    if len(frames) < 2:
        raise InvalidRequestError("self-reenactment needs at least two frames (a reference and one to generate)")
    generated = generate_frames(model, vae, image_encoder, frames[0], controls[1:], settings, device=device,
                                dtype=dtype, runtime=runtime)
    report = score_video(generated, controls=np.asarray(controls[1:]), target_points=points[1:],
                         reference=frames[0], truth=frames[1:], networks=networks, face_model=face_model,
                         landmarks=landmarks, runtime=runtime)
    report.info["mode"] = "self-reenactment"
    return report, generated


# -- does it follow its reference --------------------------------------------------------------------

def reference_following(model, vae, image_encoder, portraits: dict[str, np.ndarray], settings, *,
                        keys: str, frames: int = 48, size: int = 64, compare_size: int = 64, face_model=None,
                        crop_margin: float | None = 1.6, runtime=None) -> dict[str, Any]:
    """Animate every portrait with the same keyed expression; how much each video takes after its own reference.

    Each portrait is first cropped around its face (``crop_margin`` × the face box, as the Crop Face node
    and the trainer's clips; None animates the whole image).

    ``l1[i][j]``: mean absolute difference (0..1, at ``compare_size``²) between video i and reference j;
    ``ratio[i]`` = l1[i][i] / min over j≠i of l1[i][j] (below 1: closer to its own reference than to any
    other); ``motion_corr[i]``: correlation over time between the per-frame change of video i and of its
    control images.
    """
    import cv2

    from .align import align_motion
    from .editor import animate_face
    from .landmarks import extract_image
    from .pipeline import LazyControls
    from .reference import fit_to_size, image_to_pixels

    def small(images: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(_float_frames(im).astype(np.float32), (compare_size, compare_size),
                                    interpolation=cv2.INTER_AREA) for im in images])

    names, videos, refs, motion = list(portraits), [], [], []
    for name in names:
        image = portraits[name]
        track = extract_image(image, face_model=face_model, what=f"portrait '{name}'", runtime=runtime)
        if crop_margin is not None:  # the landmarks move into the crop with it: no second detection
            from .crop import crop_face

            cropped, _, track = crop_face(image[None], track, margin=crop_margin, size=max(size, 256),
                                          runtime=runtime)
            image = (np.clip(cropped[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        aligned = align_motion(track, animate_face(track, keys, frames=frames, fps=24.0), runtime=runtime)
        controls = LazyControls(aligned, (size, size))
        pixels = fit_to_size(image_to_pixels(image), (size, size))[0].permute(1, 2, 0).numpy()  # c h w -> h w c
        reference = (pixels * 255 + 0.5).astype(np.uint8)
        video = generate_frames(model, vae, image_encoder, reference, controls, settings, runtime=runtime)
        videos.append(small(video))
        refs.append(small(reference[None])[0])
        motion.append(correlation(mean_abs_change(video), mean_abs_change(controls[:])))
    l1 = [[float(np.abs(v - r[None]).mean()) for r in refs] for v in videos]
    ratio = [row[i] / min(x for j, x in enumerate(row) if j != i) for i, row in enumerate(l1)]
    return {"names": names, "l1": l1, "ratio": ratio, "motion_corr": motion}
