"""What a new user ran into (issue 16, item 6), each fixed and kept fixed."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from site_agent.data import load_task_file
from site_agent.train import (
    WeightsPolicy,
    build_specialist,
    default_zoo,
    fit_temperature,
)
from site_agent.train._metrics import temperature_warning
from tests.site_agent.conftest import ROOT, medmnist_dir

ZOO = default_zoo()


def test_the_docs_show_a_task_file_example_that_loads(tmp_path: Path) -> None:
    section = (ROOT / "docs" / "tutorial" / "your-own-task.md").read_text()
    (example,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    (tmp_path / "task.yaml").write_text(example)
    entry = load_task_file(tmp_path / "task.yaml")
    for field in ("task_id", "modality", "labels", "task_type", "mirroring", "synonyms"):
        assert field in section, field
    assert entry.task.labels


@pytest.mark.parametrize("backbone", ["resnet18", "tf_efficientnet_lite0", "efficientnet_b4"])
def test_backbones_train_at_28_px(backbone: str) -> None:
    spec = ZOO.get(backbone)
    assert spec.min_input_size <= 28
    net, _, _ = build_specialist(spec, 2, 1, 28, WeightsPolicy.SCRATCH)
    logits, _ = net(torch.randn(2, 1, 28, 28))
    logits.sum().backward()  # type: ignore[no-untyped-call]
    assert logits.shape == (2, 2)


def test_a_new_head_on_pretrained_features_starts_near_chance() -> None:
    with np.load(medmnist_dir() / "pneumoniamnist.npz", allow_pickle=False) as archive:
        images = archive["train_images"][:64]
    spec = ZOO.get("tf_efficientnet_lite0")
    net, mean, std = build_specialist(spec, 5, 1, 64, WeightsPolicy.DEFAULT)
    x = torch.from_numpy(images).float().div(255)[:, None]
    x = torch.nn.functional.interpolate(x, size=64, mode="bilinear")
    x = (x - mean[0]) / std[0]
    net.eval()
    with torch.no_grad():
        logits, _ = net(x)
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(64, dtype=torch.long))
    assert abs(float(loss) - math.log(5)) < 0.01  # was about 5 against ln 2 = 0.69


def test_temperature_scaling_says_when_it_stops_at_its_bound() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 50, (300, 2))  # confident and unrelated to the labels
    labels = rng.integers(0, 2, 300)
    temperature = fit_temperature(logits, labels)
    warning = temperature_warning(temperature)
    assert warning is not None and "upper bound" in warning  # noqa: PT018
    assert temperature_warning(1.3) is None


def test_a_bad_task_file_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("task_id: x\nlabels: [a]\n")
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from gsco.cli import app\n"
        f"r = CliRunner().invoke(app, ['site', 'train', '--site-id', 's', '--task-file', "
        f"{str(tmp_path / 't.yaml')!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        "print(r.exit_code, 'torch' in sys.modules)\n"
        "print(repr(r.exception))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    first, _, output = result.stdout.partition("\n")
    assert first.split() == ["1", "False"], result.stdout + result.stderr
    assert "t.yaml" in output


def _help_texts() -> list[tuple[str, str]]:
    from typer.testing import CliRunner

    from gsco.cli import app

    runner = CliRunner()
    commands = [
        [], ["site"], ["site", "train"], ["site", "init"], ["site", "publish"], ["simulate"],
        ["demo"], ["hub"], ["registry"], ["audit"], ["generalist"],
    ]  # fmt: skip
    env = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    return [(" ".join(c), runner.invoke(app, [*c, "--help"], env=env).output) for c in commands]


def test_no_help_text_ends_in_a_stray_dot() -> None:
    for command, text in _help_texts():
        assert "Usage" in text, command
        stray = [line for line in text.splitlines() if re.search(r"\s\.(\s|│|$)", line)]
        assert not stray, f"gsco {command} --help: {stray}"
