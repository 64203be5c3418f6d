"""Running code as an image would: only the distributions of one extra importable.

The suite's environment has every extra (``[all,dev]``), so an import of a
module outside an image's extra passes here and fails in the image. This
computes, from the installed distributions' own metadata, which distributions
an extra brings (the project's core, the extra's requirements, and theirs,
markers and nested extras evaluated), and runs Python in a subprocess whose
path holds only those distributions' files: every other module is simply not
installed there, as in the image (test tools such as pytest included).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "gsco"
#: The project's own top-level packages (an editable install does not list them).
OWN_PACKAGES = frozenset(
    {
        "gsco",
        "protocol",
        "signing",
        "site_agent",
        "hub",
        "generalist",
        "registry",
        "simulations",
        "audit",
        "federation",
    }
)

#: What each image installs (``docker/*.Dockerfile``'s ``requirements-of.py`` line).
IMAGE_EXTRAS: dict[str, tuple[str, ...]] = {
    "site": ("site",),
    "federation": ("site",),
    "hub": ("hub-core", "cpu"),
    "registry": ("registry",),
    "generalist": ("generalist",),
}


def _requirements(name: str, extras: Iterable[str]) -> list[Requirement]:
    try:
        declared = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return []
    wanted: list[Requirement] = []
    for text in declared:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None:
            wanted.append(requirement)
            continue
        # A requirement of an extra carries the marker ``extra == "..."``.
        for extra in ("", *extras):
            if marker.evaluate({"extra": extra}):
                wanted.append(requirement)
                break
    return wanted


@cache
def distributions(extras: tuple[str, ...]) -> frozenset[str]:
    """The canonical names of the distributions ``pip install gsco[extras]`` brings."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(PROJECT, frozenset(extras))]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        seen.add(canonicalize_name(name))
        for requirement in _requirements(name, wanted):
            todo.append((requirement.name, frozenset(requirement.extras)))
    return frozenset(seen)


@cache
def blocked_modules(extras: tuple[str, ...]) -> frozenset[str]:
    """Top-level modules installed here that ``gsco[extras]`` would not have."""
    allowed = distributions(extras)
    blocked: set[str] = set()
    for module, owners in metadata.packages_distributions().items():
        if module in OWN_PACKAGES or (module.startswith("_") and module != "_pytest"):
            continue
        if not any(canonicalize_name(owner) in allowed for owner in owners):
            blocked.add(module)
    return frozenset(blocked)


def site_packages(extras: tuple[str, ...], where: Path) -> Path:
    """A folder with exactly the installed files of ``gsco[extras]``'s distributions.

    Each distribution's top-level entries (packages, modules, its ``.dist-info``)
    are linked in, so imports and ``importlib.metadata`` both see what the image
    would have; a folder two distributions share (a namespace package) is made
    and filled with each allowed distribution's own entries. Made once per ``where``.
    """
    target = where / ("site-packages-" + "-".join(extras))
    if target.is_dir():
        return target
    building = target.with_name(target.name + ".partial")
    allowed = distributions(extras)
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        if name not in allowed or name == PROJECT:  # the project itself: from ROOT
            continue
        base = Path(str(distribution.locate_file("")))
        for name in distribution.files or ():
            parts = Path(name).parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
                continue
            top = parts[0]
            link = building / top
            if link.is_symlink() and len(parts) > 1 and link.resolve() != (base / top).resolve():
                # another distribution's files in the same folder: a namespace package
                previous = link.resolve()
                link.unlink()
                link.mkdir()
                for entry in previous.iterdir():
                    (link / entry.name).symlink_to(entry)
            if link.is_dir() and not link.is_symlink() and len(parts) > 1:
                inner = link / parts[1]
                if not inner.exists() and (base / top / parts[1]).exists():
                    inner.symlink_to(base / top / parts[1])
                continue
            if not link.exists() and (base / top).exists():
                building.mkdir(parents=True, exist_ok=True)
                link.symlink_to(base / top)
    building.rename(target)
    return target


def run_isolated(
    extras: Sequence[str],
    code: str,
    *,
    where: Path,
    timeout_s: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter that has only ``gsco[extras]`` installed.

    ``python -S``: the environment's site-packages is not on the path; a folder
    of the extra's distributions (:func:`site_packages`) and the project are.
    """
    environment = dict(os.environ)
    packages = site_packages(tuple(extras), where)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(packages)])
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=environment,
        cwd=ROOT,
        check=False,
    )
