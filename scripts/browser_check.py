"""Load the example workflows in ComfyUI's real frontend, headless, and report missing nodes (a manual check).

    .venv/bin/python scripts/browser_check.py [GRAPH.json ...]

Starts the host as the host tests do (tests/comfy_server.py), opens its UI in Debian's chromium
(apt-get install chromium) through the DevTools protocol, loads each graph with the frontend's own
app.loadGraphData, and prints, per graph, the node types the frontend does not know, the nodes it
flags with errors, and whether each widget got the saved value. Screenshots go to out/browser/.
Defaults to example_workflows/*.json and the graphs saved by the previous version.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

CHECK = r"""
(async () => {
  const graph = %s;
  const app = window.app || (window.comfyAPI && window.comfyAPI.app.app);
  await app.loadGraphData(graph, true, true, "check");
  await new Promise(r => setTimeout(r, 1500));
  const known = LiteGraph.registered_node_types;
  const nodes = app.graph._nodes || app.graph.nodes;
  const unknown = graph.nodes.filter(n => !(n.type in known)).map(n => n.type);
  const errors = nodes.filter(n => n.has_errors).map(n => n.type);
  const widgets = [];
  for (const saved of graph.nodes) {
    const node = nodes.find(n => n.id === saved.id);
    if (!node) { widgets.push(`node ${saved.id} missing`); continue; }
    const values = (node.widgets || []).map(w => w.value);
    saved.widgets_values.forEach((v, i) => {
      if (typeof v !== "object" && values[i] !== v && !(typeof v === "number" && Math.abs(values[i] - v) < 1e-6))
        widgets.push(`${saved.type}[${i}]: saved ${JSON.stringify(v)}, shown ${JSON.stringify(values[i])}`);
    });
  }
  return JSON.stringify({nodes: nodes.length, unknown, errors, widgets});
})()
"""


CLOSE_DIALOGS = r"""
(async () => {
  for (let i = 0; i < 3; i++) {
    const dialogs = [...document.querySelectorAll('[role="dialog"]')];
    if (!dialogs.length) break;
    for (const d of dialogs) {
      const close = [...d.querySelectorAll('button')].find(b => (b.getAttribute('aria-label') || '').toLowerCase()
          .includes('close') || b.querySelector('.pi-times, .icon-\\[lucide--x\\]'));
      (close || d.querySelector('button')).click();
    }
    await new Promise(r => setTimeout(r, 400));
  }
  return document.querySelectorAll('[role="dialog"]').length;
})()
"""
TEMPLATES = r"""
(async () => {
  const entry = [...document.querySelectorAll('*')].find(e => e.children.length === 0 &&
      e.textContent.trim() === 'ComfyUI-Follow-Your-Emoji');
  if (entry) entry.click();
  await new Promise(r => setTimeout(r, 2000));
  return !!entry;
})()
"""


def cdp(ws, method, params=None, _ids=[0]):
    """One DevTools call and its result."""
    _ids[0] += 1
    ws.send(json.dumps({"id": _ids[0], "method": method, "params": params or {}}))
    while True:
        message = json.loads(ws.recv())
        if message.get("id") == _ids[0]:
            if "error" in message:
                raise RuntimeError(message["error"])
            return message["result"]


def main() -> int:
    import requests
    import websocket

    from comfy_server import ComfyServer, prepare_base

    graphs = [Path(a) for a in sys.argv[1:]] or sorted((REPO / "example_workflows").glob("*.json")) + sorted(
        (REPO / "tests" / "data" / "legacy_workflows").glob("*.json"))
    out = REPO / "out" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="fye_browser_"))
    prepare_base(base)
    server = ComfyServer(base)
    profile = tempfile.mkdtemp(prefix="fye_chromium_")
    browser = None
    failures = 0
    try:
        server.wait_ready()
        browser = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-port=9333", "--window-size=1600,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(60):
            try:
                pages = requests.get("http://127.0.0.1:9333/json", timeout=2).json()
                break
            except requests.RequestException:
                time.sleep(0.5)
        page = next(p for p in pages if p["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120)
        cdp(ws, "Page.navigate", {"url": server.url + "/"})
        for _ in range(120):  # the frontend is ready when its app has a graph
            ready = cdp(ws, "Runtime.evaluate", {"expression": "!!(window.app && window.app.graph)",
                                                  "returnByValue": True})["result"].get("value")
            if ready:
                break
            time.sleep(1)
        time.sleep(3)
        shown = cdp(ws, "Runtime.evaluate", {"expression": TEMPLATES, "awaitPromise": True, "returnByValue": True})
        shot = cdp(ws, "Page.captureScreenshot", {"format": "png"})
        (out / "templates.png").write_bytes(base64.b64decode(shot["data"]))
        print(f"templates browser: the pack's entry {'found' if shown['result'].get('value') else 'not found'}")
        for path in graphs:
            graph = json.loads(path.read_text())
            result = cdp(ws, "Runtime.evaluate", {"expression": CHECK % json.dumps(graph), "awaitPromise": True,
                                                   "returnByValue": True})
            value = json.loads(result["result"].get("value") or "{}")
            # close the dialogs the frontend opens (templates on first start, missing nodes) for the screenshot
            cdp(ws, "Runtime.evaluate", {"expression": CLOSE_DIALOGS, "awaitPromise": True})
            time.sleep(0.5)
            shot = cdp(ws, "Page.captureScreenshot", {"format": "png"})
            (out / f"{path.parent.name}_{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
            bad = value.get("unknown") or value.get("errors") or value.get("widgets") or not value.get("nodes")
            failures += bool(bad)
            print(f"{path.parent.name}/{path.name}: {value}")
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(timeout=30)
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
