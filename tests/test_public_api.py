"""Each package's ``__init__`` is its contract: ``__all__`` lists exactly what is public."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest

PACKAGES = [
    "gsco",
    "gsco.cli",
    "protocol",
    "signing",
    "site_agent",
    "site_agent.data",
    "site_agent.train",
    "site_agent.export",
    "site_agent.index",
    "site_agent.deid",
    "hub",
    "hub.web",
    "generalist",
    "registry",
    "simulations",
    "audit",
    "fedapp",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "duplicates in __all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what does not exist: {missing}"
    public = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and not isinstance(value, types.ModuleType)
        and item != "annotations"
    }
    assert public <= exported, f"{name} exposes names missing from __all__: {public - exported}"


#: Every package's errors module, found on disk: a new package cannot be left out.
ERROR_MODULES = sorted(
    f"{path.parent.name}.errors"
    for path in Path(__file__).resolve().parents[1].glob("*/errors.py")
    if (path.parent / "__init__.py").is_file()
)


def test_every_package_with_errors_is_covered() -> None:
    assert {"hub.errors", "simulations.errors", "site_agent.errors"} <= set(ERROR_MODULES)


@pytest.mark.parametrize("name", ERROR_MODULES)
def test_error_trees_hang_from_gsco_error(name: str) -> None:
    from protocol.errors import GscoError

    module = importlib.import_module(name)
    for item in module.__all__:
        error = getattr(module, item)
        if item == "RejectCode":  # the registry's rejection codes live beside its errors
            continue
        assert item.endswith("Error")
        assert issubclass(error, GscoError), item
