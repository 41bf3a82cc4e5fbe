"""ComfyUI nodes of the pack: thin wrappers over emoji_model, one module per feature."""

from __future__ import annotations

from .host import register_model_folders

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _register(module) -> None:
    for cls in module.NODES:
        node_id = cls.NODE_ID
        NODE_CLASS_MAPPINGS[node_id] = cls
        NODE_DISPLAY_NAME_MAPPINGS[node_id] = cls.DISPLAY_NAME


def _load_all() -> None:
    # Feature modules import only light dependencies at module level.
    from importlib import import_module

    for name in FEATURE_MODULES:
        _register(import_module(f"{__name__}.{name}"))


FEATURE_MODULES: list[str] = ["landmark_nodes", "model_nodes", "sampler_nodes", "edit_nodes", "track_nodes"]

register_model_folders()
_load_all()
