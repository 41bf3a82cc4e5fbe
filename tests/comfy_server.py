"""A real ComfyUI for the host tests: found, started on 127.0.0.1, asked over HTTP and websocket, measured.

The ComfyUI source is COMFYUI_DIR (default ../shared/comfyui beside the checkout, as in CI) and its
Python COMFYUI_PYTHON (default .venv-comfyui, made by scripts/setup_comfyui.sh). The server runs with
a temporary base directory whose custom_nodes/ holds this checkout under the name users clone it as,
so no real ComfyUI folder is touched; only loopback addresses are used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from conftest import DRIVING_VIDEO, FACE_TASK, REPO, SHARED

PACK_NAME = "ComfyUI-Follow-Your-Emoji"  # the README's install name: not a Python identifier
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or SHARED / "comfyui")
COMFYUI_PYTHON = Path(os.environ.get("COMFYUI_PYTHON") or REPO / ".venv-comfyui" / "bin" / "python")
START_TIMEOUT = 300

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

# What the terminal summary prints at the end of the run (tests/conftest.py).
FIGURES: list[str] = []


def missing_host() -> str | None:
    """Why the host tests cannot run here, or None."""
    if not (COMFYUI_DIR / "main.py").is_file():
        return (f"no ComfyUI source at {COMFYUI_DIR}: ../shared/comfyui must sit beside the checkout "
                "(or set COMFYUI_DIR)")
    if not COMFYUI_PYTHON.is_file():
        return (f"no ComfyUI Python at {COMFYUI_PYTHON}: run `bash scripts/bootstrap.sh test` "
                "(or scripts/setup_comfyui.sh), or set COMFYUI_PYTHON")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> None:
    """A ComfyUI base directory with the pack, MediaPipe's bundle and the test inputs."""
    from PIL import Image
    from skimage import data

    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    (base / "models" / "mediapipe").mkdir(parents=True)
    shutil.copy(FACE_TASK, base / "models" / "mediapipe" / "face_landmarker.task")
    (base / "input").mkdir()
    shutil.copy(DRIVING_VIDEO, base / "input" / DRIVING_VIDEO.name)
    Image.fromarray(data.astronaut()).save(base / "input" / "astronaut.png")


@dataclass
class Run:
    """One prompt's end: its status, how long it ran in the host, the server's peak memory meanwhile."""

    prompt_id: str
    status: dict
    seconds: float
    peak_mib: float
    start_mib: float  # resident memory when the prompt was queued (the host's caches of earlier prompts included)
    outputs: list[Path] = field(default_factory=list)
    messages: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the prompt finished successfully."""
        return self.status.get("status_str") == "success"

    def node_seconds(self) -> dict[str, float]:
        """Seconds each node ran, from the websocket's "executing" events (needs ``ws`` in :meth:`ComfyServer.run`)."""
        times: dict[str, float] = {}
        current, since = None, None
        for now, kind, data in self.messages:
            if kind == "executing" and isinstance(data, dict):
                if current is not None:
                    times[current] = times.get(current, 0.0) + now - since
                current, since = data.get("node"), now
        return times

    def error(self) -> str:
        """The host's error message, if the prompt failed."""
        for kind, data in self.status.get("messages", []):
            if kind == "execution_error":
                return f"{data.get('node_type')}: {data.get('exception_message')}"
        return json.dumps(self.status)[-2000:]


class ComfyServer:
    """A ComfyUI process started on a free loopback port with ``base`` as its base directory."""

    def __init__(self, base: Path, extra_args: tuple[str, ...] = ()):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "w")
        args = [str(COMFYUI_PYTHON), "-c", LAUNCHER, "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(base), "--database-url", "sqlite:///:memory:", *extra_args]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["HF_HUB_OFFLINE"] = "1"
        self.started = time.time()
        self.proc = subprocess.Popen(args, cwd=COMFYUI_DIR, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.client_id = uuid.uuid4().hex

    def log(self, tail: int = 4000) -> str:
        """The end of the server's log."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds until /object_info answers; raises RuntimeError when the server dies or is too slow."""
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/object_info", timeout=10).ok:
                    return time.time() - self.started
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"ComfyUI did not start within {timeout} s:\n{self.log()}")

    def get(self, path: str, **kw):
        """GET a server path."""
        import requests

        return requests.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, prompt: dict):
        """POST a prompt exactly as given; the HTTP response."""
        import requests

        return requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=60)

    def interrupt(self) -> None:
        """What the UI's Cancel button sends."""
        import requests

        requests.post(self.url + "/interrupt", timeout=30).raise_for_status()

    def websocket(self):
        """A websocket connection that receives this client's events (progress, previews, status)."""
        import websocket

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=600)
        return ws

    # -- memory ---------------------------------------------------------------------------------
    def reset_peak(self) -> None:
        """Restart the process's peak-RSS counter (Linux: clear_refs 5), so that a run's peak is its own."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def memory_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS since the last reset) of the server process in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    # -- running prompts ------------------------------------------------------------------------
    def outputs(self) -> set[Path]:
        """Files under the output folder now."""
        out = self.base / "output"
        return {p for p in out.rglob("*") if p.is_file()} if out.exists() else set()

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry once it has finished, else None."""
        hist = self.get(f"/history/{prompt_id}", timeout=30).json()
        return hist.get(prompt_id)

    def run(self, prompt: dict, timeout: float = 900, ws=None) -> Run:
        """Queue ``prompt`` and wait for its end; time in the host, peak memory, new output files.

        With ``ws`` (from :meth:`websocket`) the events received meanwhile are kept in ``messages``
        as (arrival time, kind, data): JSON events as dicts, binary ones (previews) as bytes.
        """
        before = self.outputs()
        self.reset_peak()
        start_mib, _ = self.memory_mib()
        response = self.post(prompt)
        if not response.ok:
            raise AssertionError(f"POST /prompt refused the prompt: {response.status_code} {response.text[:3000]}")
        prompt_id = response.json()["prompt_id"]
        messages: list = []
        deadline = time.time() + timeout
        entry = None
        while time.time() < deadline:
            if ws is not None:
                ws.settimeout(1.0)
                try:
                    messages.append(_receive(ws))
                    kind, data = messages[-1][1], messages[-1][2]
                    if kind == "executing" and isinstance(data, dict) and data.get("node") is None \
                            and data.get("prompt_id") == prompt_id:
                        entry = self.history(prompt_id)
                except Exception as exc:  # noqa: BLE001 — websocket timeouts: poll the history instead
                    if type(exc).__name__ not in ("WebSocketTimeoutException", "TimeoutError"):
                        raise
            if entry is None:
                entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            if ws is None:
                time.sleep(0.5)
        else:
            raise AssertionError(f"the prompt did not finish within {timeout} s:\n{self.log()}")
        status = entry["status"]
        _, peak = self.memory_mib()
        stamps = {kind: data.get("timestamp") for kind, data in status.get("messages", [])}
        start = stamps.get("execution_start")
        end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
        seconds = (end - start) / 1000 if start and end else float("nan")
        return Run(prompt_id, status, seconds, peak, start_mib, sorted(self.outputs() - before), messages)

    def stop(self) -> None:
        """Terminate the server (and its log)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def _receive(ws) -> tuple[float, str, object]:
    """One websocket event: (arrival time, kind, data); binary events are ('binary:<type>', payload)."""
    import websocket

    opcode, payload = ws.recv_data()
    now = time.time()
    if opcode == websocket.ABNF.OPCODE_BINARY:
        (kind,) = struct.unpack(">I", payload[:4])
        return now, f"binary:{kind}", payload[4:]
    message = json.loads(payload)
    return now, message.get("type", ""), message.get("data", {})


def video_info(path: Path) -> dict:
    """Frame count, exact frame rate, and the audio stream's duration (None without audio) of a video file."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        info = {"frames": frames, "rate": video.average_rate, "size": (video.width, video.height), "audio": None}
        if container.streams.audio:
            audio = container.streams.audio[0]
            container.seek(0)
            samples = sum(f.samples for f in container.decode(audio))
            info["audio"] = samples / audio.sample_rate
    return info
