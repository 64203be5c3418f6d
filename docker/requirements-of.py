"""Prints the requirements of this project's core and the given extras, one per line.

The images install these first (a layer that changes only when dependencies change),
then the project itself from a wheel, without dependencies::

    python3 requirements-of.py pyproject.toml site > requirements.txt
    python3 requirements-of.py pyproject.toml hub-core,gpu > requirements.txt

Self-references (``gsco[hub-core,cpu]``) are expanded. Standard library only.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The core dependencies and those of ``extras``, self-references expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    name = project["name"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    todo = [name for group in extras for name in group.split(",") if name]
    seen: set[str] = set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra {extra!r} (has: {', '.join(optional)})")
        seen.add(extra)
        for requirement in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", requirement.replace(" ", ""))
            if own:
                todo.extend(own.group(1).split(","))
            else:
                found.append(requirement)
    return sorted(set(found), key=str.lower)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: requirements-of.py PYPROJECT [EXTRA ...]")
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
