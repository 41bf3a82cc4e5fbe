"""Every registered node declares a schema that ComfyUI accepts, with the ecosystem's conventions.

Conventions: a sub-category (landmarks / sampling / compose), a tooltip on every input and output,
a help page in web/docs/<node id>.md (the frontend's node documentation), and scheduler names that
do not pass for ComfyUI's samplers.
"""

from __future__ import annotations

import re

import pytest

import nodes
from conftest import REPO

HOST_TYPES = {"IMAGE", "MASK", "LATENT", "VAE", "CLIP_VISION", "MODEL", "INT", "FLOAT", "STRING",
              "BOOLEAN", "VIDEO", "AUDIO", "FYE_FACES", "FYE_MODEL", "FYE_REFERENCE", "FYE_CROP", "FYE_KEYS"}
EXPECTED_IDS = {"FYE_LandmarkExtractor", "FYE_MotionAligner", "FYE_LoadModel", "FYE_LoadVAE",
                "FYE_ReferenceEncoder", "FYE_TemporalSampler", "FYE_ProgressiveLongVideo", "FYE_CropFace",
                "FYE_PasteBack", "FYE_ExpressionEditor", "FYE_MakeVideo", "FYE_SaveFaces",
                "FYE_LoadFaces"}
SUB_CATEGORIES = {"FollowYourEmoji/landmarks", "FollowYourEmoji/sampling", "FollowYourEmoji/compose"}
# ComfyUI's sampler and scheduler names (comfy.samplers.KSampler.SAMPLERS / SCHEDULERS, 0.8.0).
COMFY_SAMPLER_NAMES = {"euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
                       "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                       "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ipndm", "deis",
                       "res_multistep", "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                       "ddim", "uni_pc", "uni_pc_bh2", "normal", "karras", "exponential", "sgm_uniform",
                       "simple", "ddim_uniform", "beta", "linear_quadratic", "kl_optimal"}

ALL = sorted(nodes.NODE_CLASS_MAPPINGS.items())


def test_nodes_are_registered_under_fixed_ids():
    assert ALL, "no node registered"
    assert set(nodes.NODE_CLASS_MAPPINGS) <= EXPECTED_IDS
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


def _check_input(node_id: str, name: str, spec) -> None:
    assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, f"{node_id}.{name}: {spec!r}"
    kind = spec[0]
    opts = spec[1] if len(spec) == 2 else {}
    assert isinstance(opts, dict)
    if isinstance(kind, list):  # combo
        assert kind, f"{node_id}.{name}: empty combo"
        if "default" in opts:
            assert opts["default"] in kind, f"{node_id}.{name}: default {opts['default']!r} not in {kind}"
        return
    assert kind in HOST_TYPES, f"{node_id}.{name}: unknown type {kind}"
    if kind in ("INT", "FLOAT"):
        lo, hi, default = opts.get("min"), opts.get("max"), opts.get("default")
        assert default is not None, f"{node_id}.{name}: numeric input without default"
        assert lo is None or default >= lo, f"{node_id}.{name}: default {default} < min {lo}"
        assert hi is None or default <= hi, f"{node_id}.{name}: default {default} > max {hi}"
        assert lo is None or hi is None or lo <= hi
        if kind == "INT":
            assert all(isinstance(v, int) for v in (lo, hi, default, opts.get("step", 1)) if v is not None)
    if kind == "BOOLEAN":
        assert isinstance(opts.get("default"), bool), f"{node_id}.{name}: boolean without default"
    if kind == "STRING" and "default" in opts:
        assert isinstance(opts["default"], str)


@pytest.mark.parametrize("node_id,cls", ALL, ids=[n for n, _ in ALL])
def test_node_schema_is_valid(node_id, cls):
    assert cls.NODE_ID == node_id
    assert cls.CATEGORY in SUB_CATEGORIES, cls.CATEGORY
    assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            _check_input(node_id, name, spec)
    assert isinstance(cls.RETURN_TYPES, tuple)
    assert all(t in HOST_TYPES for t in cls.RETURN_TYPES), cls.RETURN_TYPES
    names = getattr(cls, "RETURN_NAMES", None)
    if names is not None:
        assert len(names) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION, None)), f"{node_id}: FUNCTION {cls.FUNCTION} missing"
    tips = getattr(cls, "OUTPUT_TOOLTIPS", None)
    if tips is not None:
        assert len(tips) == len(cls.RETURN_TYPES)


@pytest.mark.parametrize("node_id,cls", ALL, ids=[n for n, _ in ALL])
def test_every_input_and_output_has_a_tooltip(node_id, cls):
    inputs = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            opts = spec[1] if len(spec) == 2 else {}
            assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, f"{node_id}.{name}: no tooltip"
    tips = getattr(cls, "OUTPUT_TOOLTIPS", None)
    assert tips is not None and all(isinstance(t, str) and t for t in tips), f"{node_id}: outputs lack tooltips"


@pytest.mark.parametrize("node_id,cls", ALL, ids=[n for n, _ in ALL])
def test_every_node_has_a_help_page(node_id, cls):
    source = (REPO / "__init__.py").read_text()
    web = re.search(r'^WEB_DIRECTORY = "(.+)"$', source, re.M).group(1)
    page = REPO / web / "docs" / f"{node_id}.md"
    assert page.is_file(), f"no help page {page}"
    text = page.read_text()
    assert text.startswith("# " + cls.DISPLAY_NAME.split(" (")[0]), f"{page.name}: title is not the node's name"
    inputs = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name in inputs.get(section, {}):
            assert f"`{name}`" in text, f"{page.name} does not describe input {name}"
    for name in getattr(cls, "RETURN_NAMES", ()):
        assert f"`{name}`" in text, f"{page.name} does not describe output {name}"


def test_help_pages_belong_to_nodes():
    pages = {p.stem for p in (REPO / "web" / "docs").glob("*.md")}
    assert pages == set(nodes.NODE_CLASS_MAPPINGS), pages ^ set(nodes.NODE_CLASS_MAPPINGS)


def test_scheduler_names_do_not_pass_for_comfyuis():
    from emoji_model.constants import SCHEDULER_LABELS
    from emoji_model.sampling import SCHEDULERS
    from nodes.sampler_nodes import SCHEDULER_KEYS, SCHEDULER_NAMES, TemporalSampler

    assert set(SCHEDULER_LABELS) == set(SCHEDULERS)
    shown = TemporalSampler.INPUT_TYPES()["required"]["scheduler"][0]
    assert shown == SCHEDULER_NAMES
    for label in shown:
        assert label not in COMFY_SAMPLER_NAMES and label.lower().replace(" ", "_") not in COMFY_SAMPLER_NAMES
        assert "(diffusers)" in label
    # graphs saved before the labels hold the library's names: still accepted, and mapped
    assert TemporalSampler.VALIDATE_INPUTS("ddim") is True and SCHEDULER_KEYS["ddim"] == "ddim"
    assert TemporalSampler.VALIDATE_INPUTS("DDIM (diffusers)") is True
    assert SCHEDULER_KEYS["DDIM (diffusers)"] == "ddim"
    assert isinstance(TemporalSampler.VALIDATE_INPUTS("uni_pc"), str)
