"""The pack loads the way ComfyUI loads a custom node, with and without the host importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

FAKE_COMFY = Path(__file__).parent / "fake_comfy"

# Mimics ComfyUI's nodes.load_custom_node: a directory module named by its path, loaded by location.
LOADER = r"""
import importlib.util, json, os, sys
path = sys.argv[1]
name = path.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
heavy = [m for m in ("torch", "numpy", "diffusers", "transformers", "mediapipe", "accelerate", "cv2", "av", "skimage")
         if m in sys.modules]
info = {"nodes": sorted(module.NODE_CLASS_MAPPINGS), "names": module.NODE_DISPLAY_NAME_MAPPINGS,
        "heavy": heavy}
try:
    import folder_paths
    info["folders"] = {k: v[0] for k, v in folder_paths.folder_names_and_paths.items()}
    from importlib import import_module
    host = import_module(name + ".nodes.host")
    info["runtime"] = type(host.get_runtime()).__name__
except ImportError:
    info["folders"] = None
print("INFO" + json.dumps(info))
"""


def _load_pack(tmp_path: Path, with_comfy: bool) -> dict:
    # A folder name with dashes, as users clone it into custom_nodes/.
    link = tmp_path / "custom_nodes" / "ComfyUI-Follow-Your-Emoji"
    link.parent.mkdir()
    link.symlink_to(REPO, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if with_comfy:
        env["PYTHONPATH"] = str(FAKE_COMFY)
    out = subprocess.run([sys.executable, "-c", LOADER, str(link)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("INFO")][-1]
    return json.loads(line[4:])


def test_pack_loads_without_comfy(tmp_path):
    info = _load_pack(tmp_path, with_comfy=False)
    assert info["folders"] is None
    assert info["heavy"] == [], f"registration imported heavy modules: {info['heavy']}"
    assert set(info["nodes"]) == set(info["names"])
    assert all(n.startswith("FYE_") for n in info["nodes"])


def test_pack_loads_with_comfy_and_registers_model_folders(tmp_path):
    info = _load_pack(tmp_path, with_comfy=True)
    heavy = [m for m in info["heavy"] if m not in ("torch", "numpy")]  # the host itself brings these two
    assert heavy == [], f"registration imported heavy modules: {heavy}"
    assert info["runtime"] == "ComfyRuntime"
    for folder in ("follow_your_emoji", "mediapipe", "animatediff_models"):
        paths = info["folders"][folder]
        assert any(Path(p).name == folder and Path(p).parent.name == "models" for p in paths), paths


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    # The README shows the test command in a code block right after the "Run the tests" line.
    block = readme.split("Run the tests", 1)[1].split("```", 2)[1]
    command = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith(("bash\n", "#"))]
    command = [c for c in command if c.strip() not in ("bash", "sh", "shell")]
    assert len(command) == 1, command
    assert command[0].strip() in [ln.strip() for ln in ci.splitlines()]


@pytest.mark.parametrize("module", ["emoji_model", "trainer"])
def test_cli_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
