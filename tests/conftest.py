"""Shared fixtures: the real test inputs (../shared/data, skimage) and the pack location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The node package (nodes/) is not pip-installed; tests import it from the checkout.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FYE_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
DRIVING_VIDEO = DATA / "driving_expressions.mp4"
FACE_TASK = DATA / "face_landmarker.task"
FAKE_COMFY_DIR = Path(__file__).resolve().parent / "fake_comfy"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test input {path} is missing: ../shared must sit beside the repository "
                    "(or set FYE_SHARED)")
    return path


@pytest.fixture(scope="session")
def driving_video() -> Path:
    return _need(DRIVING_VIDEO)


@pytest.fixture(scope="session")
def face_task() -> Path:
    return _need(FACE_TASK)


@pytest.fixture(scope="session")
def astronaut():
    from skimage import data

    return data.astronaut()


def _host_modules() -> list[str]:
    import sys

    fakes = {"comfy", "comfy_execution", "folder_paths", "server", "latent_preview"}
    return [m for m in sys.modules if m.split(".")[0] in fakes]


@pytest.fixture()
def comfy_host(monkeypatch):
    """nodes/host.py in host mode, over the recorded stand-in of ComfyUI's modules (tests/fake_comfy)."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(FAKE_COMFY_DIR))
    for m in _host_modules():
        monkeypatch.delitem(sys.modules, m)
    import nodes.host as host

    host = importlib.reload(host)
    host.register_model_folders()
    yield host
    for m in _host_modules():
        del sys.modules[m]
    importlib.reload(host)  # back to standalone mode for the tests that follow


def pytest_terminal_summary(terminalreporter):
    """The figures measured in the real host (tests/test_comfyui_host.py): time, memory, latency."""
    import sys

    server = sys.modules.get("comfy_server")
    if server is not None and server.FIGURES:
        terminalreporter.section("measured in the real ComfyUI")
        for line in server.FIGURES:
            terminalreporter.write_line(line)
