"""Every image does its job with exactly the extra it installs.

The suite installs every extra, so it cannot see an import that an image lacks:
these run each image's entry points, and the site's adapter tuning and policy
scoring, in a subprocess where only that image's distributions are importable
(:mod:`tests.isolation`).
"""

from __future__ import annotations

import ast
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.adapters import model_dir
from tests.conftest import SiteKeys
from tests.hub.conftest import publish
from tests.isolation import IMAGE_EXTRAS, ROOT, blocked_modules, run_isolated
from tests.servers import RunningRegistry, start_registry

#: What each image runs: the ``gsco`` commands (CLI module, commands; None: all of them)
#: and the modules that Flower or the entry point load beside them.
ENTRY_POINTS: dict[str, tuple[tuple[tuple[str, tuple[str, ...] | None], ...], tuple[str, ...]]] = {
    "site": (
        (("gsco.cli._site", None), ("gsco.cli._federation", ("health",))),
        ("gsco_app.apps", "fedapp._tune_job", "site_agent.adapter"),
    ),
    "federation": (
        (("gsco.cli._federation", None),),
        ("gsco_app.apps", "fedapp._tune"),
    ),
    "hub": ((("gsco.cli._hub", None),), ("hub.web",)),
    "registry": ((("gsco.cli._registry", None),), ()),
    "generalist": ((("gsco.cli._generalist", None),), ()),
}


def _commands(tree: ast.Module, names: tuple[str, ...] | None) -> Iterator[ast.FunctionDef]:
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        commands = [
            d
            for d in node.decorator_list
            if isinstance(d, ast.Call) and ast.unparse(d.func).endswith(".command")
        ]
        if commands and (names is None or node.name in names):
            yield node


def entry_imports(module: str, names: tuple[str, ...] | None) -> list[str]:
    """``import`` statements of a CLI module and of its commands' bodies, as source lines."""
    path = ROOT / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    statements = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    found = 0
    for command in _commands(tree, names):
        found += 1
        statements += [n for n in ast.walk(command) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert found, f"no commands {names} in {module}"
    lines = [
        ast.unparse(s) for s in statements if not isinstance(s, ast.ImportFrom) or s.level == 0
    ]
    return [line for line in lines if line != "from __future__ import annotations"]


def _import_script(image: str) -> str:
    commands, modules = ENTRY_POINTS[image]
    lines: list[str] = []
    for module, names in commands:
        lines += entry_imports(module, names)
    lines += [f"import {module}" for module in modules]
    # Each command's --help (the whole Typer app loads) and every import above.
    groups = sorted({module.rsplit("_", 1)[-1] for module, _ in commands})
    body = "\n".join(dict.fromkeys(lines))
    helps = "\n".join(
        """
try:
    main()
except SystemExit as exit:
    assert exit.code == 0, exit.code
""".replace("main()", f"sys.argv = ['gsco', {group!r}, '--help']; main()")
        for group in groups
    )
    flower_app = str(ROOT / "fedapp" / "flower_app")
    return (
        f"import sys\nsys.path.insert(0, {flower_app!r})\n{body}\n"
        f"from gsco.cli import main\n{helps}\nprint('imported')\n"
    )


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the images' package folders are made (once for this module)."""
    return tmp_path_factory.mktemp("isolation")


@pytest.mark.parametrize("image", sorted(ENTRY_POINTS))
def test_each_image_imports_every_entry_point_it_runs(image: str, where: Path) -> None:
    result = run_isolated(IMAGE_EXTRAS[image], _import_script(image), where=where, timeout_s=300)
    assert result.returncode == 0, f"{image}: {result.stderr[-3000:]}"
    assert result.stdout.strip().endswith("imported")


def test_an_import_outside_the_extra_is_caught(tmp_path: Path, where: Path) -> None:
    # The web stack's metrics are the hub image's, not the site's: a site module importing them
    # (as site_agent once did through hub) fails in the site's isolation and not in the hub's.
    assert "prometheus_client" in blocked_modules(IMAGE_EXTRAS["site"])
    assert "prometheus_client" not in blocked_modules(IMAGE_EXTRAS["hub"])
    (tmp_path / "leaky_site_module.py").write_text("import hub.web\n")
    code = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport leaky_site_module\n"
    site = run_isolated(IMAGE_EXTRAS["site"], code, where=where)
    assert site.returncode != 0
    assert "No module named 'prometheus_client'" in site.stderr
    assert run_isolated(IMAGE_EXTRAS["hub"], code, where=where).returncode == 0
    # And a module none of the extras has (a test tool) is refused to every image.
    for extras in IMAGE_EXTRAS.values():
        assert "pytest" in blocked_modules(extras)


# -- the site role's adapter tuning and policy scoring, in the site image's environment ----

_TUNE = """
import json
from fedapp._tune_job import (
    TuneJob, adapter_examples, adapter_initial_state, adapter_update, policy_answer,
    policy_evidence,
)
job = TuneJob.from_json({job!r})
examples = adapter_examples(job)
state = adapter_initial_state(job)
state, count, loss = adapter_update(job, state, 1)
task, cases = policy_evidence(job, state, "adapter-pneumonia-cxr")
answer = policy_answer(job, {{"what": "counts"}})
print(json.dumps({{"examples": len(examples), "count": count, "loss": loss, "cases": cases,
                  "task": json.loads(task)["task_id"], "answer": sorted(answer)}}))
"""


@pytest.fixture
def tuning_world(tmp_path: Path, site_a: SiteKeys) -> Iterator[tuple[RunningRegistry, Path]]:
    server = start_registry(tmp_path / "registry")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
    publish(server, site_a, tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "site-a.npz"
    np.savez(
        data,
        val_images=rng.integers(0, 256, (24, 28, 28), dtype=np.uint8),
        val_labels=np.array([0, 1] * 12, dtype=np.int64).reshape(-1, 1),
    )
    yield server, data
    server.stop()


@pytest.mark.slow
def test_the_site_image_tunes_the_adapter_and_scores_the_policy(
    tuning_world: tuple[RunningRegistry, Path], tmp_path: Path, where: Path
) -> None:
    server, data = tuning_world
    job = {
        "site_id": "site-a",
        "home": str(tmp_path / "home"),
        "data": str(data),
        "rows": list(range(8)),
        "policy_rows": list(range(8, 20)),
        "task_id": "pneumonia-cxr",
        "registry": server.address,
        "trusted_root": str(server.root / "tuf" / "metadata" / "1.root.json"),
        "model_dir": str(model_dir()),
        "base_model": "smollm2-135m-instruct",
        "out_dir": str(tmp_path / "out"),
        "recipe": {"last_layers": 1, "batch_size": 8, "seed": 1},
    }
    result = run_isolated(
        IMAGE_EXTRAS["site"],
        textwrap.dedent(_TUNE.format(job=json.dumps(job))),
        where=where,
        timeout_s=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["examples"] == outcome["count"] == 8
    assert np.isfinite(outcome["loss"])
    assert (outcome["cases"], outcome["task"]) == (12, "pneumonia-cxr")
    assert outcome["answer"]  # sums and counts, no error
