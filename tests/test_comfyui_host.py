"""The pack inside a real ComfyUI 0.8.0, as its users run it (CI runs these; nothing is skipped).

One server for the session (tests/comfy_server.py): ../shared/comfyui (or COMFYUI_DIR) in its own venv
(.venv-comfyui, scripts/setup_comfyui.sh), started with --cpu on 127.0.0.1, with this checkout in
custom_nodes/ under the README's install name. Every API graph of tests/workflows/ is posted exactly
as it is shipped and must finish with output; the diffusion graphs run on the bundled model. Time
and peak memory of each run are printed at the end of the test session (set FYE_HOST_OUTPUT to a
folder to keep the outputs, e.g. for the templates' thumbnails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from comfy_server import COMFYUI_DIR, COMFYUI_PYTHON, FIGURES, PACK_NAME, ComfyServer, missing_host, prepare_base, \
    video_info
from conftest import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

API_DIR = Path(__file__).parent / "workflows"
API_WORKFLOWS = sorted(API_DIR.glob("*.api.json"))
DIFFUSION = API_DIR / "follow_your_emoji.api.json"
SAMPLER, ENCODER, CROP = "11", "10", "2"  # node ids in the diffusion graphs


def _workflow(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    why = missing_host()
    if why:
        pytest.fail(why)
    base = tmp_path_factory.mktemp("comfy_base")
    prepare_base(base)
    srv = ComfyServer(base, ("--preview-method", "latent2rgb"))
    try:
        seconds = srv.wait_ready()
    except RuntimeError as exc:
        srv.stop()
        pytest.fail(str(exc))
    rss, _ = srv.memory_mib()
    srv.idle_mib = rss
    FIGURES.append(f"ComfyUI {COMFYUI_DIR.name} started in {seconds:.1f} s, {rss:.0f} MiB resident when idle")
    yield srv
    srv.stop()


def test_the_pack_registers_under_its_install_name(server):
    import nodes

    info = server.get("/object_info").json()
    missing = sorted(set(nodes.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered in ComfyUI: {missing}\n{server.log()}"
    for node_id in nodes.NODE_CLASS_MAPPINGS:
        assert info[node_id]["category"] in ("FollowYourEmoji/landmarks", "FollowYourEmoji/sampling",
                                             "FollowYourEmoji/compose"), info[node_id]["category"]
        assert info[node_id]["python_module"] == f"custom_nodes.{PACK_NAME}"
    lines = [ln for ln in server.log(tail=10**7).splitlines() if ln.endswith(f"custom_nodes/{PACK_NAME}")]
    assert lines and all("IMPORT FAILED" not in ln for ln in lines), lines
    # our schedulers do not pass for the host's samplers
    ksampler = info["KSampler"]["input"]["required"]
    host_names = set(ksampler["sampler_name"][0]) | set(ksampler["scheduler"][0])
    ours = info["FYE_TemporalSampler"]["input"]["required"]["scheduler"][0]
    assert not host_names & set(ours), host_names & set(ours)


def _host_check(*args: str) -> dict:
    """Run tests/host_checks.py in the host's Python (cwd: the ComfyUI source); its RESULT."""
    why = missing_host()
    if why:
        pytest.fail(why)
    out = subprocess.run([str(COMFYUI_PYTHON), str(Path(__file__).parent / "host_checks.py"), *args],
                         cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    assert out.returncode == 0 and line, out.stderr[-3000:]
    return json.loads(line[-1][6:])


def test_the_pack_imports_fast_and_light_at_host_start(server):
    result = _host_check("import-time", str(server.base / "custom_nodes" / PACK_NAME))
    FIGURES.append(f"pack import at host start: {result['ms']:.0f} ms, heavy modules added: "
                   f"{result['heavy_added'] or 'none'}")
    assert result["heavy_added"] == [], result
    import nodes

    assert result["nodes"] == len(nodes.NODE_CLASS_MAPPINGS) and result["ms"] < 500, result


def test_the_vae_loader_gives_the_hosts_own_vae(tmp_path):
    """Load VAE (Follow-Your-Emoji) builds comfy.sd.VAE from a diffusers folder; it decodes as diffusers does."""
    result = _host_check("vae", str(REPO), str(tmp_path))
    assert result["type"] == "comfy.sd.VAE"
    assert result["decode_max_diff"] < 1e-4 * max(1.0, result["decode_scale"]), result
    assert result["encode_max_diff"] < 1e-4 * max(1.0, result["encode_scale"]), result


def test_comfyuis_own_parser_reads_the_packs_metadata():
    result = _host_check("config", str(REPO))
    assert result["license"] == "Apache-2.0" and result["homepage"].startswith("https://")
    assert result["requires_comfyui"] == ">=0.8.0" and result["os"] == ["OS Independent"]
    assert result["accelerators"] == ["GPU :: NVIDIA CUDA", "GPU :: Apple Metal"]
    assert result["publisher"] and result["display_name"] == "Follow-Your-Emoji"
    assert (REPO / result["icon"]).is_file()


def _keep(name: str, files: list[Path]) -> None:
    keep = os.environ.get("FYE_HOST_OUTPUT")
    if keep:
        target = Path(keep) / name
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, target / f.name)


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=[p.name.split(".")[0] for p in API_WORKFLOWS])
def test_shipped_workflow_runs_as_shipped(server, path):
    prompt = _workflow(path)  # posted exactly as shipped
    ws = server.websocket()
    try:
        run = server.run(prompt, timeout=900, ws=ws)
    finally:
        ws.close()
    assert run.ok, f"{path.name}: {run.error()}\n{server.log()}"
    assert run.outputs, f"{path.name} finished but wrote no output"
    name = path.name.split(".")[0]
    slowest = sorted(run.node_seconds().items(), key=lambda kv: -kv[1])[:3]
    FIGURES.append(f"workflow {name}: {run.seconds:.1f} s in the host, peak {run.peak_mib:.0f} MiB resident, "
                   f"+{run.peak_mib - run.start_mib:.0f} MiB over its start (idle server {server.idle_mib:.0f} MiB); "
                   "slowest nodes: "
                   + ", ".join(f"{prompt[n]['class_type']} {t:.1f} s" for n, t in slowest if n in prompt))
    _keep(name, run.outputs)
    videos = [p for p in run.outputs if p.suffix == ".mp4"]
    assert videos, f"{path.name}: no video written ({run.outputs})"
    uses_driving = any(n["class_type"] == "LoadVideo" for n in prompt.values())
    for video in videos:
        info = video_info(video)
        if uses_driving:
            # one frame per driving frame, at its exact rate, with its audio for the same duration
            assert info["frames"] == 97 and info["rate"] == 30, info
            assert info["audio"] is not None, f"{video.name}: the driving audio was dropped"
            assert abs(info["audio"] - 97 / 30) < 0.1, info
        else:
            assert info["frames"] >= 2


def _running_sampler(server, prompt: dict, on_preview):
    """Run ``prompt`` while watching the websocket; call ``on_preview(time)`` at the first sampler preview."""
    ws = server.websocket()
    try:
        response = server.post(prompt)
        assert response.ok, response.text
        prompt_id = response.json()["prompt_id"]
        running = None
        events = []
        deadline = time.time() + 900
        while time.time() < deadline:
            from comfy_server import _receive

            now, kind, data = _receive(ws)
            events.append((now, kind, data))
            if kind == "executing" and isinstance(data, dict):
                running = data.get("node")
                if running is None and data.get("prompt_id") == prompt_id:
                    break
            if kind.startswith("binary:") and running == SAMPLER:
                on_preview(now)
            if kind in ("execution_interrupted", "execution_error") and data.get("prompt_id") == prompt_id:
                break
        return events
    finally:
        ws.close()


def test_sampler_shows_previews_and_cancel_stops_it_within_a_block(server):
    prompt = _workflow(DIFFUSION)
    prompt[SAMPLER]["inputs"]["steps"] = 200  # long enough to cancel half-way
    prompt[SAMPLER]["inputs"]["seed"] = 7  # not the cached result of the shipped run
    state = {}

    def on_preview(now):
        state.setdefault("previews", 0)
        state["previews"] += 1
        if state["previews"] == 2 and "cancel" not in state:
            state["cancel"] = time.time()
            server.interrupt()

    events = _running_sampler(server, prompt, on_preview)
    assert state.get("previews", 0) >= 2, "no preview image from the sampler while it ran"
    stopped = [t for t, kind, _ in events if kind == "execution_interrupted"]
    assert stopped, f"Cancel did not stop the run: {[k for _, k, _ in events][-10:]}"
    latency = stopped[0] - state["cancel"]
    FIGURES.append(f"cancel latency while sampling (bundled model, 64 px): {latency * 1000:.0f} ms")
    assert latency < 2.0, latency


def test_bad_inputs_are_refused_where_they_are_entered(server):
    prompt = _workflow(DIFFUSION)
    prompt[ENCODER]["inputs"]["width"] = 500  # not a multiple of 8: refused when queued
    response = server.post(prompt)
    assert response.status_code == 400, response.text
    errors = json.dumps(response.json()["node_errors"])
    assert ENCODER in response.json()["node_errors"] and "multiple of 8" in errors, errors
    # a square crop at a non-square size: refused by the encoder, before any sampling
    prompt[ENCODER]["inputs"]["width"] = 72
    run = server.run(prompt, timeout=600)
    assert not run.ok
    error = run.error()
    assert error.startswith("FYE_ReferenceEncoder") and "square" in error, error
    sampled = server.get(f"/history/{run.prompt_id}").json()[run.prompt_id].get("outputs", {})
    assert SAMPLER not in sampled


def test_no_images_without_a_vae(server):
    """Nothing is made for the sampler's images output without a VAE; a node wired to it says why."""
    prompt = _workflow(DIFFUSION)
    prompt["90"] = {"class_type": "PreviewImage", "inputs": {"images": [SAMPLER, 1]}}
    ws = server.websocket()
    try:
        run = server.run(prompt, timeout=900, ws=ws)
    finally:
        ws.close()
    errors = [d for _, kind, d in run.messages if kind == "execution_error"]
    assert errors and errors[0]["node_id"] == "90", [k for _, k, _ in run.messages]
    assert "needs a VAE" in errors[0]["exception_message"], errors[0]
    assert run.outputs  # the rest of the graph ran: its videos were written


def test_templates_load_with_no_missing_node_and_help_pages_are_served(server):
    templates = server.get("/workflow_templates").json()
    shipped = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(templates.get(PACK_NAME, [])) == shipped, templates
    from test_workflows import FRONTEND_ONLY

    known = set(server.get("/object_info").json()) | FRONTEND_ONLY
    for name in shipped:
        graph = server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert graph.ok and graph.json()["nodes"], name
        missing = {n["type"] for n in graph.json()["nodes"]} - known  # what the UI would draw as missing
        assert not missing, f"{name}: node types this ComfyUI does not have: {sorted(missing)}"
        thumb = server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert thumb.ok and thumb.content[:2] == b"\xff\xd8", name
    import nodes

    for node_id in nodes.NODE_CLASS_MAPPINGS:
        page = server.get(f"/extensions/{PACK_NAME}/docs/{node_id}.md")
        assert page.ok and page.text.startswith("# "), node_id


def test_a_graph_saved_by_the_previous_version_still_runs(server):
    from test_workflows import LEGACY, ui_to_api

    prompt = ui_to_api(json.loads((LEGACY / "landmarks_only.json").read_text()))
    run = server.run(prompt, timeout=600)
    assert run.ok, run.error()
    assert run.outputs

