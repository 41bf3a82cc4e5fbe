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


def test_tests_run_from_a_checkout_named_as_users_install_it(tmp_path):
    """The README's install name is no Python identifier: pytest must still collect the root __init__.py."""
    import shutil

    from conftest import SHARED

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    checkout = tmp_path / "ComfyUI-Follow-Your-Emoji"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, checkout / rel)
    env = dict(os.environ, FYE_SHARED=str(SHARED))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_node_schemas.py::test_nodes_are_registered_under_fixed_ids"],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout


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


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_requirements_txt_matches_pyproject():
    """ComfyUI-Manager installs requirements.txt; pip installs pyproject's dependencies: the same ones."""
    deps = [d for d in _pyproject()["project"]["dependencies"] if not d.startswith("torch")]
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert sorted(lines) == sorted(deps)
    assert "diffusers>=0.30,<1" in deps  # 0.29 lacks AnimateDiffTransformer3D: the networks fail to import


def test_lowest_pins_cover_every_runtime_dependency():
    sys.path.insert(0, str(REPO / "scripts"))
    from lowest_pins import lowest_pins

    pins = lowest_pins()
    names = [p.split("==")[0] for p in pins]
    assert names == [d.split(">")[0].split("<")[0] for d in _pyproject()["project"]["dependencies"]]
    assert "diffusers==0.30.*" in pins and "mediapipe==0.10.14" in pins
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/lowest_versions.sh" in ci.splitlines()


def test_the_ecosystems_metadata():
    meta = _pyproject()
    project, comfy = meta["project"], meta["tool"]["comfy"]
    license_text = (REPO / "LICENSE").read_text()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert project["urls"]["Homepage"].startswith("https://")
    classifiers = project["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    assert {c for c in classifiers if c.startswith("Environment ::")} <= {
        "Environment :: GPU :: NVIDIA CUDA", "Environment :: GPU :: AMD ROCm", "Environment :: GPU :: Intel Arc",
        "Environment :: NPU :: Huawei Ascend", "Environment :: GPU :: Apple Metal"}  # what ComfyUI's parser takes
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert comfy["requires-comfyui"] == ">=0.8.0"
    icon = REPO / comfy["Icon"]
    from PIL import Image

    with Image.open(icon) as img:
        assert img.format == "PNG" and img.size[0] == img.size[1] >= 128
