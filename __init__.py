"""ComfyUI entry point of the Follow-Your-Emoji pack: registers the nodes, nothing else."""

import os
import sys

# The library (emoji_model) sits beside this file; make it importable by its own name so the
# nodes, the CLI and the trainer share one copy of it. Appended, so ComfyUI's modules win.
_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
