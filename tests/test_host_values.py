"""What the nodes take from and give to the host: VIDEO and AUDIO, checked sizes, recorded portraits.

Standalone (no ComfyUI imported); the VIDEO stand-ins answer the calls ComfyUI's VideoInput has.
The real host runs the same paths in tests/test_comfyui_host.py.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import emoji_model.runtime as rt
from emoji_model.errors import InvalidRequestError
from landmark_inputs import astronaut_track, driving_frames, driving_track
from nodes.host import StandaloneVideo


class FileVideo:
    """Like ComfyUI's VideoFromFile: a file, its exact frame rate and frame count from the container."""

    def __init__(self, path):
        import av

        self.path = str(path)
        with av.open(self.path) as c:
            stream = c.streams.video[0]
            self.rate, self.count = Fraction(stream.average_rate), stream.frames

    def get_stream_source(self):
        return self.path

    def get_frame_rate(self):
        return self.rate

    def get_frame_count(self):
        return self.count


class VideoFromComponents(StandaloneVideo):
    """Like ComfyUI's VideoFromComponents: tensors in memory (named like it: the nodes tell them apart so)."""


@pytest.fixture()
def standalone(monkeypatch):
    runtime = rt.StandaloneRuntime(device="cpu")
    monkeypatch.setattr(rt, "_default", runtime)
    return runtime


def test_landmarks_of_a_video_input_equal_those_of_its_frames(standalone, driving_video):
    from nodes.landmark_nodes import LandmarkExtractor

    faces, controls, mask = LandmarkExtractor().extract(video=FileVideo(driving_video), face_index=0)
    expected = driving_track()
    assert len(faces) == 97 and faces.fps == 30.0
    np.testing.assert_allclose(faces.points, expected.points, atol=1e-6)
    assert controls.shape == (97, 512, 512, 3) and mask.shape == (97, 512, 512)
    # an in-memory VIDEO gives the same track
    frames, _ = driving_frames()
    memory = VideoFromComponents(torch.from_numpy(frames[:12]).float() / 255, Fraction(30000, 1001))
    faces12, _, _ = LandmarkExtractor().extract(video=memory)
    np.testing.assert_allclose(faces12.points, expected.points[:12], atol=2e-3)
    assert faces12.fps == pytest.approx(29.97, abs=1e-3)
    with pytest.raises(InvalidRequestError, match="not both"):
        LandmarkExtractor().extract(torch.zeros(1, 64, 64, 3), video=memory)
    with pytest.raises(InvalidRequestError, match="neither"):
        LandmarkExtractor().extract()


def test_video_node_carries_the_driving_audio_at_the_exact_rate(standalone, driving_video):
    from emoji_model.video import read_audio
    from nodes.edit_nodes import MakeVideo

    frames = torch.rand(40, 64, 64, 3)
    (video,) = MakeVideo().make(frames, True, driving=FileVideo(driving_video))
    parts = video.get_components()
    assert parts.frame_rate == Fraction(30) and isinstance(parts.frame_rate, Fraction)
    full, sr = read_audio(driving_video)
    wave = parts.audio["waveform"]
    assert parts.audio["sample_rate"] == sr and wave.shape[:2] == (1, full.shape[0])
    assert abs(wave.shape[-1] - round(40 / 30 * sr)) <= 1  # cut to the 40 frames' duration
    np.testing.assert_allclose(wave[0].numpy(), full[:, :wave.shape[-1]], atol=1e-6)
    assert float(wave.abs().max()) > 1e-3  # real sound, not silence
    (silent,) = MakeVideo().make(frames, False, driving=FileVideo(driving_video))
    assert silent.get_components().audio is None
    # no driving video: the fps input (29.97 kept as 30000/1001) and an audio input, cut too
    audio = {"waveform": torch.ones(1, 2, 48000 * 5), "sample_rate": 48000}
    (other,) = MakeVideo().make(frames, True, fps=29.97, audio=audio)
    assert other.get_components().frame_rate == Fraction(30000, 1001)
    assert other.get_components().audio["waveform"].shape[-1] == round(40 * 1001 / 30000 * 48000)
    # an in-memory driving VIDEO brings its own audio
    memory = VideoFromComponents(frames, Fraction(25), audio)
    (third,) = MakeVideo().make(frames[:10], True, driving=memory)
    assert third.get_components().audio["waveform"].shape[-1] == round(10 / 25 * 48000)


def test_audio_of_a_video_without_sound_is_none(tmp_path):
    from emoji_model.video import read_audio, write_video

    path = write_video(tmp_path / "silent.mp4", np.zeros((4, 32, 32, 3), np.uint8), 10)
    assert read_audio(path) is None


def test_encoder_refuses_sizes_paste_back_cannot_use_before_any_work(standalone):
    from nodes.model_nodes import FYEModel, ReferenceEncoder

    class NoVAE:
        def encode(self, images):
            raise AssertionError("the VAE ran before the size was checked")

    fye = FYEModel(handle=None, config=None, dtype=torch.float32, source="test")
    square = torch.rand(1, 512, 512, 3)
    with pytest.raises(InvalidRequestError, match="square"):
        ReferenceEncoder().encode(fye, square, NoVAE(), 512, 768, image_encoder="bundled/demo_clip")
    with pytest.raises(InvalidRequestError, match="multiple of 8"):
        ReferenceEncoder().encode(fye, square, NoVAE(), 500, 500, image_encoder="bundled/demo_clip")
    # refused when the prompt is queued, in ComfyUI: VALIDATE_INPUTS
    assert ReferenceEncoder.VALIDATE_INPUTS(512, 512) is True
    assert "multiple of 8" in ReferenceEncoder.VALIDATE_INPUTS(500, 512)
    assert "within 64..2048" in ReferenceEncoder.VALIDATE_INPUTS(4096, 512)


def test_sampler_refuses_a_track_aligned_to_another_portrait(astronaut):
    import cv2
    from skimage import data

    from emoji_model.align import align_motion
    from emoji_model.pipeline import check_track_matches_reference
    from emoji_model.provenance import image_signature

    aligned = align_motion(astronaut_track(), driving_track()[:4])
    assert aligned.source == image_signature(astronaut)  # carried from the portrait's track

    class Ref:
        def __init__(self, image, size):
            self.source, self.size = image_signature(image), size

    check_track_matches_reference(aligned, Ref(astronaut, (64, 64)))
    # the same portrait resized (the encoder or the user scaled it) is the same portrait
    check_track_matches_reference(aligned, Ref(cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA),
                                               (64, 64)))
    with pytest.raises(InvalidRequestError, match="another portrait"):
        check_track_matches_reference(aligned, Ref(cv2.resize(data.chelsea(), (512, 512)), (64, 64)))
    # another framing of it: the full image on one side, a crop on the other
    with pytest.raises(InvalidRequestError, match="another portrait"):
        check_track_matches_reference(aligned, Ref(astronaut[100:400, 150:450], (64, 64)))
    with pytest.raises(InvalidRequestError, match="aspect"):
        check_track_matches_reference(aligned, Ref(astronaut, (64, 96)))


def test_sampler_node_checks_the_track_before_loading_the_model(astronaut):
    import cv2
    from skimage import data

    from emoji_model.align import align_motion
    from emoji_model.provenance import image_signature
    from nodes.model_nodes import FYEModel
    from nodes.sampler_nodes import TemporalSampler

    class Unloadable:
        def module(self, runtime=None):
            raise AssertionError("the model was loaded before the track was checked")

    class Ref:
        size = (64, 64)
        source = image_signature(cv2.resize(data.chelsea(), (512, 512)))

    aligned = align_motion(astronaut_track(), driving_track()[:4])
    fye = Unloadable()
    assert not isinstance(fye, FYEModel)
    with pytest.raises(InvalidRequestError, match="another portrait"):
        TemporalSampler().sample(fye, Ref(), aligned, 2, 3.5, 0, "DDIM (diffusers)", 8, 2, "pyramid")


def test_crop_face_tracks_belong_to_the_crop(astronaut):
    from emoji_model.crop import crop_face
    from emoji_model.provenance import image_signature

    crops, _, track = crop_face(astronaut.astype(np.float32) / 255, astronaut_track(), size=128)
    assert track.source == image_signature(crops[0])
    assert track.source.differences(image_signature(astronaut))  # not the full image


def test_load_vae_node_reads_the_bundled_vae_standalone(standalone):
    from emoji_model.reference import PixelVAE
    from nodes.model_nodes import LoadVAE

    assert "bundled/demo_vae" in LoadVAE.INPUT_TYPES()["required"]["vae_name"][0]
    (vae,) = LoadVAE().load("bundled/demo_vae")
    assert isinstance(vae, PixelVAE)
    latents = vae.encode(torch.rand(2, 64, 64, 3))
    assert latents.shape == (2, 4, 8, 8)
    images = vae.decode(latents)
    assert images.shape == (2, 64, 64, 3) and 0 <= images.min() and images.max() <= 1


def test_ldm_vae_config_follows_the_diffusers_config():
    from emoji_model.errors import CheckpointMismatchError
    from nodes.host import ldm_vae_config

    cfg = {"block_out_channels": [64, 128, 128, 256], "layers_per_block": 2, "latent_channels": 4,
           "norm_num_groups": 32, "sample_size": 256}
    dd = ldm_vae_config(cfg)["params"]["ddconfig"]
    assert dd["ch"] == 64 and dd["ch_mult"] == [1, 2, 2, 4] and dd["num_res_blocks"] == 2 and dd["z_channels"] == 4
    with pytest.raises(CheckpointMismatchError, match="norm_num_groups is 8"):
        ldm_vae_config(dict(cfg, norm_num_groups=8))
    with pytest.raises(CheckpointMismatchError, match="multiples of 32"):
        ldm_vae_config(dict(cfg, block_out_channels=[48, 96, 96, 96]))


def _one_bar(updates) -> bool:
    """The host's bar was driven by one run: one total, values always rising (a second bar restarts), ending full."""
    values = [v for v, _ in updates]
    rising = all(a < b for a, b in zip(values, values[1:]))
    return len({t for _, t in updates}) == 1 and rising and values[-1] == updates[-1][1]


def test_nodes_with_several_stages_fill_one_bar(comfy_host, astronaut):
    import comfy.utils

    from nodes.edit_nodes import CropFace, ExpressionEditor

    image = torch.from_numpy(astronaut).float()[None] / 255
    comfy.utils.updates.clear()
    _, faces, _ = CropFace().crop(image, 256, 1.8, "edge", "union")  # the face search, then the crop's landmarks
    assert len(comfy.utils.updates) >= 2 and _one_bar(comfy.utils.updates), comfy.utils.updates
    comfy.utils.updates.clear()
    sliders = {name: 0.0 for name in ("blink", "smile", "mouth_open", "brow_raise", "pupil_x", "pupil_y", "yaw",
                                      "pitch", "roll")}
    ExpressionEditor().edit(faces, 12, 12.0, "0: blink=0; 6: blink=1", "linear", **sliders)  # fields, then renders
    assert len(comfy.utils.updates) > 2 and _one_bar(comfy.utils.updates), comfy.utils.updates
