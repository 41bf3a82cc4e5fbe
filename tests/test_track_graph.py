"""Reusable tracks in a graph: the shipped landmarks-only workflow saves the driving motion (Save Faces), and a
second graph loads it (Load Faces) in place of the video and aligns the same motion, run node by node in-process
as ComfyUI runs an API prompt (links resolved, VALIDATE_INPUTS asked, ui/result outputs unwrapped)."""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import torch

import nodes
from conftest import REPO
from landmark_inputs import driving_frames

FRAMES = 16  # driving frames the stand-in of LoadVideo returns: enough motion, a short run


def _core_nodes(sink: dict) -> dict:
    """Stand-ins for the ComfyUI core nodes of the workflow, on the real test inputs."""
    from skimage import data

    class LoadImage:
        FUNCTION = "load"

        def load(self, image, upload=None):
            assert image == "astronaut.png"
            return (torch.from_numpy(data.astronaut()).float()[None] / 255.0, torch.zeros(1, 512, 512))

    class LoadVideo:
        FUNCTION = "load"

        def load(self, file, upload=None):
            from fractions import Fraction

            from nodes.host import StandaloneVideo

            frames, fps = driving_frames()
            images = torch.from_numpy(frames[:FRAMES]).float() / 255.0
            return (StandaloneVideo(images, Fraction(fps).limit_denominator(1001)),)

    class GetVideoComponents:
        FUNCTION = "get"

        def get(self, video):
            return (torch.from_numpy(video["frames"]).float() / 255.0, None, float(video["fps"]))

    class CreateVideo:
        FUNCTION = "create"

        def create(self, images, fps, audio=None):
            return ({"frames": images, "fps": fps},)

    class SaveVideo:
        FUNCTION = "save"

        def save(self, video, filename_prefix, format, codec):
            if not isinstance(video, dict):  # Video with Driving Audio's VIDEO
                parts = video.get_components()
                video = {"frames": parts.images, "fps": parts.frame_rate}
            sink.setdefault("videos", []).append(video)
            return ()

    class PreviewImage:
        FUNCTION = "preview"

        def preview(self, images):
            return ()

    return {c.__name__: c for c in (LoadImage, LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, PreviewImage)}


def run_prompt(prompt: dict, core: dict) -> tuple[dict, dict]:
    """Run an API-format prompt in dependency order: each node's outputs by id, and the ui each node showed."""
    pending = {k: v for k, v in prompt.items() if not k.startswith("_")}
    outputs, shown = {}, {}
    while pending:
        ready = [k for k, v in pending.items()
                 if all(x[0] in outputs for x in v["inputs"].values() if isinstance(x, list))]
        assert ready, f"a cycle or a missing node among {sorted(pending)}"
        key = ready[0]
        node = pending.pop(key)
        cls = core.get(node["class_type"]) or nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        inputs = {name: outputs[v[0]][v[1]] if isinstance(v, list) else v for name, v in node["inputs"].items()}
        if hasattr(cls, "VALIDATE_INPUTS"):
            wanted = inspect.signature(cls.VALIDATE_INPUTS).parameters
            verdict = cls.VALIDATE_INPUTS(**{n: v for n, v in inputs.items() if n in wanted})
            assert verdict is True, f"node {key} ({node['class_type']}): {verdict}"
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        if isinstance(out, dict):
            shown[key] = out.get("ui")
            out = out["result"]
        outputs[key] = out
    return outputs, shown


def test_saved_driving_motion_is_loaded_in_another_graph_and_drives_the_same(tmp_path, monkeypatch):
    import emoji_model.runtime as rt
    from emoji_model.landmarks import FaceTrack
    from nodes.track_nodes import LoadFaces

    monkeypatch.setenv("FYE_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("FYE_INPUT_DIR", str(tmp_path / "output"))    # the user moved the file to input/
    monkeypatch.setattr(rt, "_default", rt.StandaloneRuntime(device="cpu"))
    prompt = json.loads((REPO / "tests" / "workflows" / "landmarks_only.api.json").read_text())
    save = [k for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") == "FYE_SaveFaces"]
    assert len(save) == 1, "the landmarks-only workflow saves the driving motion"
    sink: dict = {}
    outputs, shown = run_prompt(prompt, _core_nodes(sink))
    saved = "FollowYourEmoji/driving_faces_00001.npz"
    assert saved in "\n".join(shown[save[0]]["text"])
    assert LoadFaces.INPUT_TYPES()["required"]["track"][0] == [saved]
    first = sink["videos"][0]["frames"]
    assert first.shape == (FRAMES, 512, 512, 3) and first.max() > 0.5

    # The second graph: the video and its extraction replaced by Load Faces of the saved file.
    driving_key = prompt[save[0]]["inputs"]["faces"][0]
    aligner = next(k for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") == "FYE_MotionAligner")
    reuse = copy.deepcopy(prompt)
    for key in [k for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type")
                in ("LoadVideo", "GetVideoComponents", "FYE_SaveFaces")] + [driving_key]:
        reuse.pop(key, None)
    for node in reuse.values():                      # the video's rate: a widget value now
        if isinstance(node, dict) and node.get("class_type") == "FYE_MakeVideo":
            node["inputs"].pop("driving", None)
            node["inputs"]["fps"] = 25.0
    reuse["20"] = {"class_type": "FYE_LoadFaces", "inputs": {"track": saved}}
    reuse[aligner]["inputs"]["driving"] = ["20", 0]
    for node in reuse.values():                      # the fps came from the video: a widget value now
        if isinstance(node, dict) and isinstance(node.get("inputs", {}).get("fps"), list):
            node["inputs"]["fps"] = 25.0
    sink.clear()
    again, _ = run_prompt(reuse, _core_nodes(sink))
    loaded = again["20"][0]
    assert isinstance(loaded, FaceTrack) and again["20"][1] == FRAMES
    np.testing.assert_array_equal(loaded.points, outputs[driving_key][0].points)
    np.testing.assert_allclose(again[aligner][0].points, outputs[aligner][0].points, atol=1e-6)
    second = sink["videos"][0]["frames"]
    assert torch.equal(second, first)                # the same aligned controls, without the video


def test_save_and_load_faces_use_comfyuis_output_and_input_folders(comfy_host):
    import shutil
    from pathlib import Path

    import folder_paths

    from landmark_inputs import driving_track
    from nodes.track_nodes import LoadFaces, SaveFaces

    track = driving_track()[:8]
    out = SaveFaces().save(track, "fye/motion")
    written = Path(folder_paths.get_output_directory()) / "fye" / "motion_00001.npz"
    assert written.is_file() and "fye/motion_00001.npz" in out["ui"]["text"][0]
    assert LoadFaces.VALIDATE_INPUTS("fye/motion_00001.npz") is not True        # not in input/ yet
    target = Path(folder_paths.get_input_directory()) / "motions" / "talk.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(written, target)
    assert "motions/talk.npz" in LoadFaces.INPUT_TYPES()["required"]["track"][0]
    assert LoadFaces.VALIDATE_INPUTS("motions/talk.npz") is True
    loaded, frames = LoadFaces().load("motions/talk.npz")
    assert frames == 8
    np.testing.assert_array_equal(loaded.points, track.points)
