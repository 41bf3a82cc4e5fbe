"""Shared command-line plumbing: subcommands as modules, one logging setup."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from .errors import FYEError


def setup_logging(verbosity: int) -> None:
    """Send the package loggers to stderr at INFO (-v: DEBUG, -q: WARNING)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("PIL", "matplotlib", "absl", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(prog: str, description: str, command_modules: Sequence[str],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; each module has NAME, HELP, configure(p) and run(args).

    Errors of the pack (FYEError) print their message and exit with status 2, not a traceback.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name in command_modules:
        mod = import_module(name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.configure(p)
        runners[mod.NAME] = mod.run
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0 if runners else 1
    setup_logging(args.verbose - args.quiet)
    try:
        return int(runners[args.command](args) or 0)
    except FYEError as exc:
        logging.getLogger(prog).error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logging.getLogger(prog).error("interrupted")
        return 130


def main_exit(code: int) -> None:
    """Exit the process with ``code`` (kept separate so tests can call run_cli directly)."""
    sys.exit(code)
