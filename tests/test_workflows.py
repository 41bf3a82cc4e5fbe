"""Every shipped workflow is a valid graph: known nodes, typed links, valid widgets, matching twins.

UI-format graphs (``example_workflows/NAME.json``, as the ComfyUI frontend saves them; ComfyUI serves
that folder as the pack's templates, with ``NAME.jpg`` as the thumbnail) and their API-format twins
(``tests/workflows/NAME.api.json``, posted exactly as they are to a real ComfyUI by
tests/test_comfyui_host.py) are checked against our node classes and against
tests/comfy_core_nodes.json, a copy of ComfyUI's /object_info for the core nodes the workflows use.
A workflow added later is covered without touching this file; a core node it needs is added to that
JSON from a running server's /object_info. ``python tests/test_workflows.py`` rewrites the twins from
the UI graphs.

An API graph holds nothing but nodes. Combos that list model files accept any file name here (what a
machine has installed varies); the shipped graphs name only the bundled model's files, so they run
anywhere, and say in a Note node which real weights to pick. The UI graphs saved by earlier versions
(tests/data/legacy_workflows) must still load: same node ids, widgets in the same places, values the
nodes accept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from unittest import mock

import pytest

from conftest import REPO  # first: it puts the checkout on sys.path for `nodes` (also when run as a script)

import nodes  # noqa: E402

WORKFLOWS = REPO / "example_workflows"
API_DIR = Path(__file__).parent / "workflows"
LEGACY = Path(__file__).parent / "data" / "legacy_workflows"
CORE = json.loads((Path(__file__).parent / "comfy_core_nodes.json").read_text())
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
# Core inputs whose combo lists files from a model folder (VAELoader, CLIPVisionLoader, checkpoint loaders).
CORE_MODEL_FILE_INPUTS = {"ckpt_name", "vae_name", "clip_name"}

UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted(API_DIR.glob("*.api.json"))
LEGACY_FILES = sorted(LEGACY.glob("*.json"))


@dataclass
class Input:
    name: str
    kind: str                   # a type name, or COMBO
    options: dict
    choices: list | None = None
    required: bool = True
    model_files: bool = False   # a combo of files in a model folder: any file name is accepted
    fixed: list = field(default_factory=list)  # its choices that are not files ("none", a default)

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


_FILE = "<a model file>"  # what every model folder lists while our nodes' file inputs are probed


@cache
def _our_model_file_inputs(node_type: str) -> dict[str, list]:
    """Our node's inputs whose choices come from a model folder, each with its choices that are not files.

    Found by asking the node for its inputs while every folder lists one made-up file: the combos
    that then offer it list files (FYE_LoadModel.checkpoint, the face landmarker bundles, ...).
    """
    from nodes.host import get_runtime

    runtime = get_runtime()
    with mock.patch.object(type(runtime), "list_models", lambda self, kind: [_FILE]):
        spec = nodes.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    found = {}
    for section in ("required", "optional"):
        for name, item in spec.get(section, {}).items():
            inp = _input(name, item, True)
            if inp.kind == "COMBO" and _FILE in inp.choices:
                found[name] = [c for c in inp.choices if c != _FILE]
    return found


def schema(node_type: str) -> Schema:
    """Inputs (widgets in the frontend's order) and output types of a node type; KeyError if unknown."""
    if node_type in nodes.NODE_CLASS_MAPPINGS:
        cls = nodes.NODE_CLASS_MAPPINGS[node_type]
        spec, outputs = cls.INPUT_TYPES(), list(cls.RETURN_TYPES)
        file_inputs = _our_model_file_inputs(node_type)
    else:
        spec, outputs = CORE[node_type]["input"], list(CORE[node_type]["output"])
        file_inputs = None
    order = CORE.get(node_type, {}).get("input_order", {})  # the JSON's keys are sorted; this is not
    inputs = {}
    for section in ("required", "optional"):
        items = spec.get(section, {})
        for name in order.get(section, list(items)):
            inp = inputs[name] = _input(name, items[name], section == "required")
            if file_inputs is not None and name in file_inputs:
                inp.model_files, inp.fixed = True, file_inputs[name]
            elif file_inputs is None and inp.kind == "COMBO" and name in CORE_MODEL_FILE_INPUTS:
                # the copy comes from a server without model files: what it lists is built in ("pixel_space")
                inp.model_files, inp.fixed = True, list(inp.choices)
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
    """A widget value the node accepts: a listed choice (any file name for model files), a number within
    bounds, the right type."""
    if inp.model_files:
        assert isinstance(value, str) and value.strip(), f"{where}: {value!r} is not a file name"
    elif inp.kind == "COMBO":
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
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
            continue  # muted or bypassed nodes and notes are not sent
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


def custom_validation(node_type: str, inputs: dict) -> tuple[set[str], object]:
    """(inputs our node validates itself, its verdict) — as ComfyUI does with VALIDATE_INPUTS.

    ComfyUI skips its own range and list checks for the inputs a node's VALIDATE_INPUTS takes, and
    calls it with their values; True passes, a string is the error.
    """
    import inspect

    cls = nodes.NODE_CLASS_MAPPINGS.get(node_type)
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return set(), True
    names = [p for p in inspect.signature(fn).parameters if p not in ("cls", "self")]
    values = {n: inputs[n] for n in names if n in inputs and not isinstance(inputs[n], list)}
    return set(names), fn(**values) if len(values) == len(names) else True


def check_api(prompt: dict, name: str) -> None:
    """Nothing but nodes; every node known, required inputs given, links typed, widget values valid."""
    graph = prompt
    assert graph, f"{name}: empty workflow"
    for node_id, node in graph.items():
        assert node_id.isdigit() and isinstance(node, dict) and "class_type" in node, (
            f"{name}: top-level entry {node_id!r} is not a node (an API graph holds nothing else)")
        node_type = node["class_type"]
        assert node_type in nodes.NODE_CLASS_MAPPINGS or node_type in CORE, (
            f"{name}: node {node_id} has unknown type {node_type} (add core nodes to tests/comfy_core_nodes.json)")
        s = schema(node_type)
        own, verdict = custom_validation(node_type, node["inputs"])
        assert verdict is True, f"{name}: node {node_id} ({node_type}) refuses its inputs: {verdict}"
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
                if input_name not in own:
                    check_value(where, inp, value)
        for inp in s.inputs.values():
            if inp.required:
                assert inp.name in node["inputs"], f"{name}: node {node_id} ({node_type}) lacks input {inp.name}"


def model_files(prompt: dict) -> set[str]:
    """The model files an API prompt names (values of model-file combos that are not built-in choices)."""
    found = set()
    for node in prompt.values():
        s = schema(node["class_type"])
        for input_name, value in node["inputs"].items():
            inp = s.inputs.get(input_name)
            if inp is not None and inp.model_files and isinstance(value, str) and value not in inp.fixed:
                found.add(value)
    return found


def check_ui(ui: dict, name: str, saved_before: bool = False) -> None:
    """The UI graph's own consistency: links typed and mirrored on both ends, widget lists complete.

    ``saved_before``: a graph saved by an earlier version, which may lack widgets added at the end since.
    """
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in ui, f"{name}: missing '{key}'"
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert len(by_id) == len(ui["nodes"]), f"{name}: repeated node ids"
    assert ui["last_node_id"] >= max(by_id) and ui["last_link_id"] >= max((ln[0] for ln in ui["links"]), default=0)
    for node in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"{name}: node {node.get('id')} lacks '{key}'"
        if node["type"] in FRONTEND_ONLY:
            assert not node["inputs"] and not node["outputs"], f"{name}: note {node['id']} has sockets"
            assert len(node["widgets_values"]) == 1 and isinstance(node["widgets_values"][0], str)
            continue
        s = schema(node["type"])
        layout = widget_layout(s)
        count = len(node["widgets_values"])
        if saved_before and count < len(layout):
            # The frontend sets widgets by position and leaves later ones at their defaults: a widget
            # added at the end since (an optional input) is fine, any other change is not.
            for missing in layout[count:]:
                assert missing is None or not s.inputs[missing].required, (
                    f"{name}: node {node['id']} ({node['type']}) lacks the value of required widget {missing}")
        else:
            assert count == len(layout), (
                f"{name}: node {node['id']} ({node['type']}) has {count} widget values, "
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


def twin_path(ui_path: Path) -> Path:
    """Where the API twin of a UI graph lives."""
    return API_DIR / (ui_path.stem + ".api.json")


def test_there_are_workflows_and_each_has_its_twin():
    assert (WORKFLOWS / "landmarks_only.json").exists()
    assert not (REPO / "workflows").exists(), "ComfyUI would serve workflows/*.json as templates too"
    ui_names = {p.stem for p in UI_FILES}
    api_names = {p.name[:-len(".api.json")] for p in API_FILES}
    assert ui_names == api_names, f"UI without API twin: {ui_names - api_names}; API without UI: {api_names - ui_names}"
    assert not list(WORKFLOWS.glob("*.api.json")), "API graphs are not templates: they live in tests/workflows"


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_api_workflow_is_valid(path):
    prompt = _load(path)
    check_api(prompt, path.name)
    # the shipped graphs run anywhere: the only model files they name are the bundled model's
    from emoji_model.bundled import BUNDLED_NAMES

    assert model_files(prompt) <= set(BUNDLED_NAMES.values()), model_files(prompt)


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_is_valid_and_matches_its_twin(path):
    ui = _load(path)
    check_ui(ui, path.name)
    converted = ui_to_api(ui)
    check_api(converted, path.name + " (as API)")
    twin = _load(twin_path(path))
    assert converted.keys() == twin.keys(), f"{path.name}: nodes differ from the API twin"
    for node_id in converted:
        assert converted[node_id] == twin[node_id], f"{path.name}: node {node_id} differs from the API twin"


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_says_what_it_needs_in_a_note(path):
    ui = _load(path)
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in FRONTEND_ONLY]
    assert notes, f"{path.name}: no Note node saying which weights it needs"
    readme = (REPO / "README.md").read_text()
    assert f"`{path.stem}`" in readme, f"README does not describe {path.stem}"
    if any(n["type"] == "FYE_LoadModel" for n in ui["nodes"]):
        for real in ("fye_sd15.safetensors", "sd-vae-ft-mse", "sd-image-variations", "bundled"):
            assert real in notes[0], f"{path.name}: its note does not name {real}"


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_has_a_thumbnail_made_from_its_output(path):
    import numpy as np
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"no thumbnail {thumb.name} for the templates browser"
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and min(img.size) >= 128 and thumb.stat().st_size < 200_000
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and pixels.max() > 100, f"{thumb.name} looks blank"


@pytest.mark.parametrize("path", LEGACY_FILES, ids=[p.stem for p in LEGACY_FILES])
def test_graphs_saved_by_earlier_versions_still_load(path):
    """Today's node ids, widget positions and values: a graph saved before still loads and validates."""
    ui = _load(path)
    check_ui(ui, path.name, saved_before=True)
    check_api(ui_to_api(ui), path.name + " (as API)")


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
    # anything but nodes at the top level (what POST /prompt refuses)
    extra = dict(api, _requires=["models/x.safetensors"])
    with pytest.raises(AssertionError, match="not a node"):
        check_api(extra, "extra")


def test_model_file_combos_accept_any_file_and_custom_validation_is_used():
    prompt = _load(API_DIR / "follow_your_emoji.api.json")
    check_api(prompt, "ok")
    nodes_of = {v["class_type"]: k for k, v in prompt.items()}
    # which inputs list model files: core loaders by input name, ours by what the folders list
    assert schema("VAELoader").inputs["vae_name"].model_files
    assert schema("CLIPVisionLoader").inputs["clip_name"].model_files
    load = schema("FYE_LoadModel").inputs
    assert load["checkpoint"].model_files and load["motion_module"].model_files
    assert load["motion_module"].fixed == ["none"] and not load["dtype"].model_files
    assert not schema("FYE_TemporalSampler").inputs["scheduler"].model_files
    assert model_files(prompt) == {"bundled/demo_tiny.safetensors", "bundled/demo_vae", "bundled/demo_clip"}
    # any file name passes; an empty one, or a wrong type, does not; other combos stay strict
    broken = json.loads(json.dumps(prompt))
    broken[nodes_of["FYE_LoadModel"]]["inputs"]["checkpoint"] = "my_finetune.safetensors"
    check_api(broken, "renamed")
    broken[nodes_of["FYE_LoadModel"]]["inputs"]["checkpoint"] = ""
    with pytest.raises(AssertionError, match="not a file name"):
        check_api(broken, "broken")
    broken[nodes_of["FYE_LoadModel"]]["inputs"]["checkpoint"] = "fye_sd15.safetensors"
    broken[nodes_of["FYE_LoadModel"]]["inputs"]["dtype"] = "fp8"
    with pytest.raises(AssertionError, match="not one of"):
        check_api(broken, "broken")
    # a node's own VALIDATE_INPUTS decides for the inputs it takes, as in ComfyUI
    broken = json.loads(json.dumps(prompt))
    sampler = broken[nodes_of["FYE_TemporalSampler"]]["inputs"]
    sampler["scheduler"] = "ddim"  # the name graphs saved before the labels hold
    check_api(broken, "old scheduler name")
    sampler["scheduler"] = "uni_pc"  # ComfyUI's sampler name: not ours
    with pytest.raises(AssertionError, match="refuses its inputs"):
        check_api(broken, "broken")
    sampler["scheduler"] = "DDIM (diffusers)"
    broken[nodes_of["FYE_ReferenceEncoder"]]["inputs"]["width"] = 500
    with pytest.raises(AssertionError, match="multiple of 8"):
        check_api(broken, "broken")


def write_twins() -> None:
    """Rewrite tests/workflows/*.api.json from the UI graphs (what the frontend's Export (API) writes)."""
    for path in UI_FILES:
        twin_path(path).write_text(json.dumps(ui_to_api(_load(path)), indent=1) + "\n")


if __name__ == "__main__":
    write_twins()
