"""DP-SGD training (Opacus): the per-example gradients, the budget, the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from protocol import SpecialistCard
from site_agent.errors import TrainingError
from site_agent.train import DPConfig, default_zoo, prepare_for_dp
from site_agent.train._dp import _grouped_conv_grad_sample
from site_agent.train._zoo import build_specialist
from tests.site_agent.conftest import medmnist_dir
from tests.test_cli import gsco


@pytest.mark.parametrize(("groups", "stride", "padding"), [(4, 1, 1), (8, 2, 2)])
def test_grouped_conv_per_example_gradients_match_autograd(
    groups: int, stride: int, padding: int
) -> None:
    """The fast sampler for grouped/depthwise convolutions equals one backward per example."""
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 8, 3 if padding == 1 else 5, stride, padding, groups=groups)
    x = torch.randn(5, 8, 11, 11)
    out = layer(x)
    upstream = torch.randn_like(out)
    fast = _grouped_conv_grad_sample(layer, [x], upstream)
    for n in range(len(x)):
        layer.zero_grad()
        (layer(x[n : n + 1]) * upstream[n : n + 1]).sum().backward()
        assert layer.weight.grad is not None
        assert layer.bias is not None
        torch.testing.assert_close(fast[layer.weight][n], layer.weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast[layer.bias][n], layer.bias.grad, atol=1e-5, rtol=1e-4)


def test_batchnorm_becomes_groupnorm_and_keeps_the_activation() -> None:
    from opacus.validators import ModuleValidator

    net, _, _ = build_specialist(default_zoo().get("tf_efficientnet_lite0"), 2, 1, 32)
    # timm's BatchNormAct2d subclasses BatchNorm2d; Opacus's validator misses it by type,
    # but it still mixes examples within a batch.
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    replaced = prepare_for_dp(net, "all")
    assert replaced > 10
    assert not ModuleValidator.validate(net, strict=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    # timm's BatchNormAct2d carried the ReLU6: it is still there, after the norm.
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) > 10
    assert not any(getattr(m, "inplace", False) for m in net.modules())


def test_head_mode_freezes_the_backbone_and_keeps_its_function() -> None:
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    net, _, _ = build_specialist(default_zoo().get("tf_efficientnet_lite0"), 2, 1, 32)
    net.train()
    net(torch.randn(8, 1, 32, 32))  # give BatchNorm running statistics of its own
    net.eval()
    image = torch.randn(3, 1, 32, 32)
    before_logits, before_embedding = net(image)
    assert prepare_for_dp(net, "head") > 10
    assert not net.classifier.weight.any()  # the probe starts from zero
    before_logits = torch.zeros_like(before_logits)
    net.train()  # a frozen norm ignores the mode: training looks at no other example
    assert not ModuleValidator.validate(net, strict=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(net.classifier.weight), id(net.classifier.bias)}
    for module in net.modules():  # only dropout would differ between the modes
        if isinstance(module, nn.Dropout) or "drop" in type(module).__name__.lower():
            module.eval()
    after_logits, after_embedding = net(image)
    torch.testing.assert_close(after_embedding, before_embedding, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after_logits, before_logits, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) > 10


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(TrainingError, match="positive"):
        DPConfig(epsilon=0, delta=1e-5)
    with pytest.raises(TrainingError, match="between 0 and 1"):
        DPConfig(epsilon=8, delta=1.5)
    with pytest.raises(TrainingError, match="not below 1/n"):
        DPConfig(epsilon=8, delta=0.05).check_delta(100)
    with pytest.raises(TrainingError, match="'head' or 'all'"):
        DPConfig(epsilon=8, delta=1e-5, layers="middle")  # type: ignore[arg-type]


@pytest.mark.slow
def _dp_train(tmp_path: Path, *args: str) -> tuple[Any, Path]:
    """``gsco site train`` at epsilon 8 on a PneumoniaMNIST subset; (result, bundle folder)."""
    home = tmp_path / "home"
    assert gsco("site", "init", "--site-id", "st-marys", home=home).returncode == 0
    out = tmp_path / "bundle"
    result = gsco(
        "site", "train", "--task", "pneumonia-cxr",
        "--data", str(medmnist_dir() / "pneumoniamnist.npz"), "--out", str(out),
        "--epochs", "1", "--max-eval-images", "24", "--input-size", "32", "--dp-epsilon", "8",
        *args,
        home=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, out


def test_dp_training_through_the_cli_records_the_budget(tmp_path: Path) -> None:
    result, out = _dp_train(tmp_path, "--max-train-images", "64", "--batch-size", "32", "--sign")
    assert "DP-SGD: epsilon" in result.stdout
    assert "epsilon covers the weights, not the retrieval index" in result.stdout
    card = SpecialistCard.parse((out / "card.json").read_bytes())
    privacy = card.training_privacy
    assert privacy is not None
    assert 0 < privacy.epsilon <= 8.0 + 1e-6  # what one epoch of the planned one spent
    assert privacy.delta == pytest.approx(0.1 / 64)  # default: 1/(10 n)
    assert privacy.accountant == "opacus-rdp"
    assert privacy.noise_multiplier > 0
    assert privacy.max_grad_norm == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["differential_privacy"]["target_epsilon"] == 8.0
    assert metrics["training"]["differential_privacy"]["trained_layers"] == "head"
    assert metrics["export"]["max_abs_diff_probabilities"] < 1e-4  # frozen norms export fine


def test_empty_poisson_batches_are_steps_and_the_budget_is_spent_as_planned(
    tmp_path: Path,
) -> None:
    """At a sample rate of 2/128, about a third of the 64 Poisson batches draw nobody.

    Each is a step of noise alone, as the accountant assumes: skipping them
    spent (and reported) less than the planned epsilon.
    """
    _, out = _dp_train(tmp_path, "--max-train-images", "128", "--batch-size", "2")
    card = SpecialistCard.parse((out / "card.json").read_bytes())
    assert card.training_privacy is not None
    assert card.training_privacy.epsilon == pytest.approx(8.0, abs=0.1)


def test_a_failed_dp_run_still_takes_opacus_off_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step strategy is a context manager: a run that fails mid-epoch leaves no hooks."""
    import site_agent.train._loop as loop
    import site_agent.train._steps as steps
    from site_agent.data import default_catalog
    from site_agent.data._medmnist import load_medmnist

    closed: list[bool] = []

    class Recording(steps.DPSession):  # type: ignore[misc, valid-type]
        def close(self) -> None:
            closed.append(True)
            super().close()

    class Failing:
        def on_start(self, epochs: int, steps_per_epoch: int) -> None:
            pass

        def on_step(self, epoch: int, step: int, loss: float) -> None:
            raise RuntimeError("the disk filled up")  # anything, mid-epoch

        def on_epoch(self, report: object) -> None:
            pass

    monkeypatch.setattr(steps, "DPSession", Recording)
    task = default_catalog().get("pneumonia-cxr").task
    dataset = load_medmnist(medmnist_dir() / "pneumoniamnist.npz", task).subsample(64, 16)
    config = loop.TrainConfig(
        epochs=1, input_size=32, batch_size=32, dp=DPConfig(epsilon=8.0, delta=1e-3)
    )
    with pytest.raises(RuntimeError, match="disk filled up"):
        loop.train_specialist(dataset, config, default_zoo(), observer=Failing())  # type: ignore[arg-type]
    assert closed == [True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dp-epsilon", "8", "--dp-delta", "0.5"], "not below 1/n"),
        (["--dp-delta", "1e-5"], "--dp-delta needs --dp-epsilon"),
        (["--dp-epsilon", "-1"], "positive"),
        (
            ["--dp-epsilon", "8", "--weights", "scratch"],
            "--dp-layers head trains only the classifier on pretrained features",
        ),
    ],
)
def test_bad_dp_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = gsco(
        "site", "train", "--site-id", "st-marys", "--task", "pneumonia-cxr",
        "--data", str(medmnist_dir() / "pneumoniamnist.npz"), "--out", str(tmp_path / "b"),
        "--epochs", "1", "--max-train-images", "32", "--max-eval-images", "16", *args,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_backbone_opacus_cannot_handle_is_one_clear_line(tmp_path: Path) -> None:
    """timm's ResNet adds its shortcut in place, which Opacus's backward hooks refuse."""
    result = gsco(
        "site", "train", "--site-id", "st-marys", "--task", "pneumonia-cxr",
        "--data", str(medmnist_dir() / "pneumoniamnist.npz"), "--out", str(tmp_path / "b"),
        "--backbone", "resnet18", "--input-size", "32", "--batch-size", "16",
        "--epochs", "1", "--max-train-images", "32", "--max-eval-images", "16",
        "--dp-epsilon", "8", "--dp-layers", "all",
    )  # fmt: skip
    assert result.returncode == 1
    assert "resnet18 cannot be trained with DP-SGD" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
