"""Every workflow in workflows/ is a valid graph: known nodes, typed links, valid widgets, matching twins.

UI-format files (``NAME.json``, as the ComfyUI frontend saves them) and their API-format twins
(``NAME.api.json``, as posted to /prompt) are checked against our node classes and against
tests/comfy_core_nodes.json, a copy of ComfyUI's /object_info for the core nodes the workflows
use (CI has no ComfyUI). A workflow added later is covered without touching this file; a core
node it needs is added to that JSON from a running server's /object_info.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import nodes
from conftest import REPO

WORKFLOWS = REPO / "workflows"
CORE = json.loads((Path(__file__).parent / "comfy_core_nodes.json").read_text())
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")

UI_FILES = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".api.json"))
API_FILES = sorted(WORKFLOWS.glob("*.api.json"))


@dataclass
class Input:
    name: str
    kind: str                   # a type name, or COMBO
    options: dict
    choices: list | None = None
    required: bool = True

    @property
    def is_widget(self) -> bool:
        return self.kind in WIDGET_TYPES


@dataclass
class Schema:
    inputs: dict[str, Input]
    outputs: list[str]


def _input(name: str, spec, required: bool) -> Input:
    kind = spec[0]
    options = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):  # classic combo: the list of choices
        return Input(name, "COMBO", options, list(kind), required)
    if kind == "COMBO":         # schema-style combo: choices in the options
        return Input(name, "COMBO", options, list(options.get("options", [])), required)
    return Input(name, kind, options, None, required)


def schema(node_type: str) -> Schema:
    """Inputs (widgets in the frontend's order) and output types of a node type; KeyError if unknown."""
    if node_type in nodes.NODE_CLASS_MAPPINGS:
        cls = nodes.NODE_CLASS_MAPPINGS[node_type]
        spec, outputs = cls.INPUT_TYPES(), list(cls.RETURN_TYPES)
    else:
        spec, outputs = CORE[node_type]["input"], list(CORE[node_type]["output"])
    order = CORE.get(node_type, {}).get("input_order", {})  # the JSON's keys are sorted; this is not
    inputs = {}
    for section in ("required", "optional"):
        items = spec.get(section, {})
        for name in order.get(section, list(items)):
            inputs[name] = _input(name, items[name], section == "required")
    return Schema(inputs, outputs)


def widget_layout(s: Schema) -> list[str | None]:
    """Names of the entries of a UI node's widgets_values; None for values the frontend adds (buttons, controls)."""
    layout: list[str | None] = []
    for inp in s.inputs.values():
        if not inp.is_widget:
            continue
        layout.append(inp.name)
        if inp.kind == "COMBO" and any(inp.options.get(k) for k in UPLOAD_OPTIONS):
            layout.append(None)  # the upload button's value ("image")
        if inp.kind == "INT" and (inp.options.get("control_after_generate") or inp.name in ("seed", "noise_seed")):
            layout.append(None)  # "fixed" / "randomize" ...
    return layout


def check_value(where: str, inp: Input, value) -> None:
    """A widget value the node accepts: a listed choice, a number within bounds, the right type."""
    if inp.kind == "COMBO":
        assert value in inp.choices, f"{where}: {value!r} is not one of {inp.choices}"
    elif inp.kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif inp.kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a FLOAT"
    elif inp.kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    elif inp.kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    if inp.kind in ("INT", "FLOAT"):
        lo, hi = inp.options.get("min"), inp.options.get("max")
        assert lo is None or value >= lo, f"{where}: {value} < min {lo}"
        assert hi is None or value <= hi, f"{where}: {value} > max {hi}"


def _types_match(output: str, wanted: str) -> bool:
    return output == wanted or "*" in (output, wanted)


def ui_to_api(ui: dict) -> dict:
    """The API prompt a UI-format workflow stands for (as the frontend's 'Export (API)' writes it)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue  # muted or bypassed nodes are not sent
        s = schema(node["type"])
        inputs = {}
        values = node.get("widgets_values", [])
        for name, value in zip(widget_layout(s), values):
            if name is not None:
                inputs[name] = value
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, source, slot, _, _, _ = links[entry["link"]]
                inputs[entry["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def check_api(prompt: dict, name: str) -> None:
    """Every node known, required inputs given, links typed, widget values valid."""
    graph = {k: v for k, v in prompt.items() if not k.startswith("_")}
    assert graph, f"{name}: empty workflow"
    for node_id, node in graph.items():
        node_type = node["class_type"]
        assert node_type in nodes.NODE_CLASS_MAPPINGS or node_type in CORE, (
            f"{name}: node {node_id} has unknown type {node_type} (add core nodes to tests/comfy_core_nodes.json)")
        s = schema(node_type)
        for input_name, value in node["inputs"].items():
            where = f"{name}: node {node_id} ({node_type}).{input_name}"
            assert input_name in s.inputs, f"{where}: no such input"
            inp = s.inputs[input_name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source, slot = value
                assert source in graph, f"{where}: links to missing node {source}"
                out_types = schema(graph[source]["class_type"]).outputs
                assert 0 <= slot < len(out_types), f"{where}: node {source} has no output {slot}"
                assert _types_match(out_types[slot], inp.kind), (
                    f"{where}: {out_types[slot]} output connected to a {inp.kind} input")
            else:
                assert inp.is_widget, f"{where}: a {inp.kind} input needs a link, got {value!r}"
                check_value(where, inp, value)
        for inp in s.inputs.values():
            if inp.required:
                assert inp.name in node["inputs"], f"{name}: node {node_id} ({node_type}) lacks input {inp.name}"


def check_ui(ui: dict, name: str) -> None:
    """The UI graph's own consistency: links typed and mirrored on both ends, widget lists complete."""
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in ui, f"{name}: missing '{key}'"
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert len(by_id) == len(ui["nodes"]), f"{name}: repeated node ids"
    assert ui["last_node_id"] >= max(by_id) and ui["last_link_id"] >= max((ln[0] for ln in ui["links"]), default=0)
    for node in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"{name}: node {node.get('id')} lacks '{key}'"
        s = schema(node["type"])
        layout = widget_layout(s)
        assert len(node["widgets_values"]) == len(layout), (
            f"{name}: node {node['id']} ({node['type']}) has {len(node['widgets_values'])} widget values, "
            f"expected {len(layout)} for {layout}")
        assert [o["type"] for o in node["outputs"]] == s.outputs, f"{name}: node {node['id']} outputs"
        for i, out in enumerate(node["outputs"]):
            assert out.get("slot_index", i) == i
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        where = f"{name}: link {link_id}"
        assert src in by_id and dst in by_id, f"{where}: joins a missing node"
        out = by_id[src]["outputs"][src_slot]
        entry = by_id[dst]["inputs"][dst_slot]
        assert link_id in (out["links"] or []), f"{where}: not listed on node {src}'s output"
        assert entry["link"] == link_id, f"{where}: not listed on node {dst}'s input {entry['name']}"
        wanted = schema(by_id[dst]["type"]).inputs[entry["name"]].kind
        assert _types_match(out["type"], link_type) and _types_match(link_type, wanted), (
            f"{where}: {out['type']} -> {link_type} -> {entry['name']} ({wanted})")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_workflows_and_each_has_its_twin():
    assert (WORKFLOWS / "landmarks_only.json").exists()
    ui_names = {p.name[:-len(".json")] for p in UI_FILES}
    api_names = {p.name[:-len(".api.json")] for p in API_FILES}
    assert ui_names == api_names, f"UI without API twin: {ui_names - api_names}; API without UI: {api_names - ui_names}"


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_api_workflow_is_valid(path):
    check_api(_load(path), path.name)


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_is_valid_and_matches_its_twin(path):
    ui = _load(path)
    check_ui(ui, path.name)
    converted = ui_to_api(ui)
    check_api(converted, path.name + " (as API)")
    twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
            for k, v in _load(path.with_name(path.name[:-len(".json")] + ".api.json")).items()
            if not k.startswith("_")}
    assert converted.keys() == twin.keys(), f"{path.name}: nodes differ from the API twin"
    for node_id in converted:
        assert converted[node_id] == twin[node_id], f"{path.name}: node {node_id} differs from the API twin"


def test_the_checks_catch_broken_graphs():
    ui = _load(WORKFLOWS / "landmarks_only.json")
    api = ui_to_api(ui)
    broken = json.loads(json.dumps(api))
    aligner = next(k for k, v in broken.items() if v["class_type"] == "FYE_MotionAligner")
    broken[aligner]["inputs"]["expression_scale"] = 5.0
    with pytest.raises(AssertionError, match="max"):
        check_api(broken, "broken")
    broken[aligner]["inputs"]["expression_scale"] = 1.0
    broken[aligner]["inputs"]["neutral_frame"] = "middle"
    with pytest.raises(AssertionError, match="not one of"):
        check_api(broken, "broken")
    broken[aligner]["inputs"]["neutral_frame"] = "auto"
    loader = next(k for k, v in broken.items() if v["class_type"] == "LoadImage")
    broken[aligner]["inputs"]["driving"] = [loader, 0]  # an IMAGE into an FYE_FACES input
    with pytest.raises(AssertionError, match="IMAGE output connected to a FYE_FACES input"):
        check_api(broken, "broken")
    del broken[aligner]["inputs"]["driving"]
    with pytest.raises(AssertionError, match="lacks input driving"):
        check_api(broken, "broken")
    broken[aligner]["class_type"] = "FYE_NoSuchNode"
    with pytest.raises(AssertionError, match="unknown type"):
        check_api(broken, "broken")
