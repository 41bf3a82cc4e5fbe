"""Subcommands of `python -m emoji_model`, one module each (NAME, HELP, configure, run)."""

COMMANDS: list[str] = ["landmarks", "align", "animate", "demo", "convert", "inspect", "edit", "evaluate"]
