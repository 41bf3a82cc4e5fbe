"""ComfyUI entry point of the Follow-Your-Emoji pack: registers the nodes, nothing else."""

import os
import sys

# The library (emoji_model) sits beside this file; make it importable by its own name so the
# nodes, the CLI and the trainer share one copy of it. Appended, so ComfyUI's modules win.
_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

# Help pages (web/docs/<node id>.md) for the frontend's node documentation panel.
WEB_DIRECTORY = "./web"

if __package__:
    # How ComfyUI loads a custom node folder: as a package, whatever the folder is called.
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Imported as a plain module: a test runner collecting a checkout whose folder name is not a
    # Python identifier (ComfyUI-Follow-Your-Emoji). The node package is then found by its own name.
    from importlib import import_module

    _nodes = import_module("nodes")
    if os.path.dirname(os.path.dirname(os.path.abspath(_nodes.__file__))) != _PACK_DIR:
        raise ImportError(f"'nodes' resolved to {_nodes.__file__}, not this pack's nodes/ in {_PACK_DIR}")
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _nodes.NODE_CLASS_MAPPINGS, _nodes.NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
