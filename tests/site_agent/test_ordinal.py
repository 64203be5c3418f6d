"""Ordinal tasks at the site: the cumulative-link head, graded metrics in metrics.json, the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol import SpecialistCard, TaskType
from site_agent.train import CumulativeLinkHead, HeadKind, build_specialist, default_zoo, evaluate
from tests.site_agent.conftest import GRADED_TASK, graded_arrays, write_npz
from tests.test_cli import gsco


def test_the_cumulative_link_head_starts_at_chance_and_stays_a_distribution() -> None:
    head = CumulativeLinkHead(in_features=16, num_classes=5)
    with torch.no_grad():
        head.score.weight.zero_()
        head.score.bias.zero_()
    start = head(torch.randn(3, 16)).exp()
    assert torch.allclose(start, torch.full_like(start, 0.2), atol=1e-5)  # first loss ln 5
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 3)
    probs = head(torch.randn(64, 16) * 10).exp()
    assert torch.allclose(probs.sum(dim=1), torch.ones(64), atol=1e-5)
    assert bool((probs >= 0).all())
    cuts = head.cut_points()
    assert bool((cuts[1:] > cuts[:-1]).all())  # ordered, whatever the weights


def test_a_specialist_with_the_ordinal_head_outputs_log_probabilities() -> None:
    spec = default_zoo().get("resnet18")
    net, _, _ = build_specialist(spec, 4, 1, 28, head=HeadKind.CUMULATIVE_LINK)
    assert net.head is HeadKind.CUMULATIVE_LINK
    logits, embedding = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 4)
    assert embedding.shape == (2, net.embedding_dim)
    assert torch.allclose(logits.exp().sum(dim=1), torch.ones(2), atol=1e-5)


def test_ordinal_metrics_score_the_median_grade() -> None:
    # Grade 1 by the median, grade 3 by the largest probability; the truth is grade 1.
    probs = np.array([[0.40, 0.15, 0.0, 0.45], [0.0, 0.1, 0.1, 0.8]])
    truth = np.array([1, 3])
    graded = evaluate(probs, truth, ("a", "b", "c", "d"), TaskType.ORDINAL)
    assert graded.accuracy == 1.0
    assert graded.mean_absolute_error == 0.0
    assert graded.quadratic_weighted_kappa == pytest.approx(1.0)
    assert "quadratic_weighted_kappa" in graded.as_dict()
    flat = evaluate(probs, truth, ("a", "b", "c", "d"), TaskType.MULTICLASS)
    assert flat.accuracy == 0.5
    assert flat.quadratic_weighted_kappa is None
    assert "quadratic_weighted_kappa" not in flat.as_dict()


@pytest.mark.slow
def test_an_ordinal_task_trains_with_its_own_head_and_reports_graded_metrics(
    tmp_path: Path,
) -> None:
    data = write_npz(tmp_path / "knee.npz", **graded_arrays(grades=4, per_grade=40))
    (tmp_path / "knee.yaml").write_text(GRADED_TASK)
    out = tmp_path / "bundle"
    result = gsco(
        "site", "train", "--site-id", "st-marys", "--task-file", str(tmp_path / "knee.yaml"),
        "--data", str(data), "--out", str(out), "--backbone", "resnet18",
        "--weights", "scratch", "--head", "cumulative-link", "--epochs", "3",
        "--index-k", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "QWK" in result.stdout and "MAE" in result.stdout  # noqa: PT018
    metrics = json.loads((out / "metrics.json").read_text())
    assert -1.0 <= metrics["test"]["quadratic_weighted_kappa"] <= 1.0
    assert metrics["test"]["mean_absolute_error"] >= 0.0
    assert metrics["training"]["config"]["head"] == "cumulative-link"
    card = SpecialistCard.parse((out / "card.json").read_bytes())
    assert card.task_type is TaskType.ORDINAL
    assert card.metrics.quadratic_weighted_kappa == metrics["test"]["quadratic_weighted_kappa"]
    assert card.metrics.mean_absolute_error == metrics["test"]["mean_absolute_error"]
    assert card.training_recipe is not None
    assert card.training_recipe.head == "cumulative-link"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "pneumonia-cxr", "--head", "cumulative-link"], "is for ordinal tasks"),
        (
            ["--task", "pneumonia-cxr", "--head", "cumulative-link", "--dp-epsilon", "8"],
            "cannot be trained with DP-SGD",
        ),
    ],
    ids=["not-ordinal", "with-dp"],
)
def test_the_ordinal_head_is_refused_where_it_cannot_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = gsco("site", "train", "--site-id", "st-marys", *args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
