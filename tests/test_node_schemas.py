"""Every registered node declares a schema that ComfyUI accepts."""

from __future__ import annotations

import pytest

import nodes

HOST_TYPES = {"IMAGE", "MASK", "LATENT", "VAE", "CLIP_VISION", "MODEL", "INT", "FLOAT", "STRING",
              "BOOLEAN", "FYE_FACES", "FYE_MODEL", "FYE_REFERENCE", "FYE_CROP", "FYE_KEYS"}
EXPECTED_IDS = {"FYE_LandmarkExtractor", "FYE_MotionAligner", "FYE_LoadModel", "FYE_ReferenceEncoder",
                "FYE_TemporalSampler", "FYE_ProgressiveLongVideo", "FYE_CropFace", "FYE_PasteBack",
                "FYE_ExpressionEditor", "FYE_SaveFaces", "FYE_LoadFaces"}

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
    assert cls.CATEGORY.startswith("FollowYourEmoji")
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
