"""`python -m emoji_model`: the pack's command line (landmarks, align, convert, animate, demo, ...)."""

from __future__ import annotations

from collections.abc import Sequence

from .cli import main_exit, run_cli
from .commands import COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m emoji_model`."""
    return run_cli("emoji_model", "Follow-Your-Emoji portrait animation.",
                   [f"emoji_model.commands.{c}" for c in COMMANDS], argv)


if __name__ == "__main__":
    main_exit(main())
