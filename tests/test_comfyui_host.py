"""Opt-in: the pack inside a real ComfyUI (set COMFYUI_DIR to a checkout; COMFYUI_PYTHON to its Python).

The server runs on 127.0.0.1 with a temporary base directory whose custom_nodes/ links this
checkout, so the user's own ComfyUI folders are never touched. Each API-format workflow in
workflows/ is posted and must finish and write its output.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import DRIVING_VIDEO, FACE_TASK, REPO

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")]

# The registry's torchvision for torch 2.13 is a CUDA build whose nms/qnms schemas are never
# defined under the CPU torch; defining them lets it import. Harmless where torchvision works.
LAUNCHER = r"""
import runpy, sys, torch
try:
    import torchvision  # noqa: F401
except Exception:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
sys.path.insert(0, ".")
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import requests

    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-Follow-Your-Emoji").symlink_to(REPO, target_is_directory=True)
    (base / "models" / "mediapipe").mkdir(parents=True)
    shutil.copy(FACE_TASK, base / "models" / "mediapipe" / "face_landmarker.task")
    (base / "input").mkdir()
    shutil.copy(DRIVING_VIDEO, base / "input" / DRIVING_VIDEO.name)
    from skimage import data
    from PIL import Image

    Image.fromarray(data.astronaut()).save(base / "input" / "astronaut.png")
    port = _free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([python, "-c", LAUNCHER, "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base)], cwd=COMFYUI_DIR, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited: {(base / 'server.log').read_text()[-3000:]}")
        try:
            if requests.get(url + "/object_info", timeout=5).ok:
                break
        except requests.RequestException:
            time.sleep(2)
    else:
        proc.kill()
        pytest.fail("ComfyUI did not start within 240 s")
    yield {"url": url, "base": base, "log": base / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_every_node_is_registered(server):
    import requests

    import nodes

    info = requests.get(server["url"] + "/object_info", timeout=30).json()
    missing = sorted(set(nodes.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered in ComfyUI: {missing}; log: {server['log'].read_text()[-2000:]}"
    for node_id in nodes.NODE_CLASS_MAPPINGS:
        assert info[node_id]["category"].startswith("FollowYourEmoji")


API_WORKFLOWS = sorted((REPO / "workflows").glob("*.api.json"))


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_api_workflow_runs(server, path):
    import requests

    prompt = json.loads(path.read_text())
    needs = prompt.pop("_requires", [])
    for rel in needs:  # weights a workflow needs, placed under the temporary base by the test
        if not (server["base"] / rel).exists():
            pytest.skip(f"{path.name} needs {rel}")
    before = set((server["base"] / "output").rglob("*")) if (server["base"] / "output").exists() else set()
    r = requests.post(server["url"] + "/prompt", json={"prompt": prompt}, timeout=30)
    assert r.ok, r.text
    pid = r.json()["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:
        hist = requests.get(f"{server['url']}/history/{pid}", timeout=30).json()
        if pid in hist:
            status = hist[pid]["status"]
            assert status.get("status_str") == "success", json.dumps(status)[-3000:]
            break
        time.sleep(2)
    else:
        pytest.fail(f"{path.name} did not finish in 600 s")
    after = set((server["base"] / "output").rglob("*"))
    new_files = [p for p in after - before if p.is_file()]
    assert new_files, f"{path.name} finished but wrote no output"
