"""`inspect`: what a checkpoint file holds — config, parameters per component, dtypes."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "inspect"
HELP = "show the network config, parameter counts per component and dtypes of a checkpoint"


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `inspect`."""
    parser.add_argument("path", nargs="+", metavar="FILE",
                        help="a .safetensors of this pack (merged or per component) or the released files / folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    """Read headers (and released shapes) without loading the weights."""
    from ..checkpoints import describe

    info = describe(args.path)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return 0
    out = sys.stdout
    out.write(f"format: {info['format']}\n")
    for f in info["files"]:
        out.write(f"file: {f}\n")
    out.write("parameters:\n")
    for comp, n in info["parameters"].items():
        out.write(f"  {comp:<13}{n:>14,}\n")
    out.write(f"  {'total':<13}{sum(info['parameters'].values()):>14,}\n")
    out.write("dtypes: " + ", ".join(f"{k} ×{v}" for k, v in info["dtypes"].items()) + "\n")
    out.write("config:\n")
    for k, v in info["config"].items():
        out.write(f"  {k}: {v}\n")
    return 0
