"""`python -m trainer`: prepare → train → export."""

from __future__ import annotations

from collections.abc import Sequence

from emoji_model.cli import main_exit, run_cli

COMMANDS: list[str] = ["prepare", "train", "plan", "export"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m trainer`."""
    return run_cli("trainer", "Train Follow-Your-Emoji checkpoints.",
                   [f"trainer.{c}" for c in COMMANDS], argv)


if __name__ == "__main__":
    main_exit(main())
