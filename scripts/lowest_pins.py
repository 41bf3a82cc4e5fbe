"""Print a pin at the lower bound of every runtime dependency of pyproject.toml (scripts/lowest_versions.sh).

A bound of one or two components (``numpy>=1.24``) pins that release series (``numpy==1.24.*``: its
newest patch release, which is what "1.24" means to a user); a longer one pins exactly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def lowest_pins(pyproject: Path = PYPROJECT) -> list[str]:
    """One pin per dependency at its ``>=`` bound; a dependency without one is an error."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*(?:\[.*\])?\s*(.*)$", dep)
        name, spec = match.group(1), match.group(2)
        lower = re.search(r">=\s*([0-9][^,;\s]*)", spec)
        if lower is None:
            raise SystemExit(f"{dep!r} has no lower bound (>=): add one, the lowest-versions test installs it")
        bound = lower.group(1)
        pins.append(f"{name}=={bound}.*" if bound.count(".") < 2 else f"{name}=={bound}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("\n".join(lowest_pins()) + "\n")
