"""What a consortium asks its sites to do in one run, declared once.

:class:`TrainingRequest` (each site's own specialist), :class:`FedAvgRequest`
(one shared specialist, co-trained), :class:`TuneRequest` (the generalist's
adapter) and :class:`RunRequest` (the run around them). ``gsco federation
run`` builds them from its options; the run carries them as Flower's run
config (:meth:`RunRequest.to_config`: flat keys, the ones the Flower app's
``pyproject.toml`` declares); the ServerApp and every site read them back
with the same strict schema (:meth:`RunRequest.from_config`), never by
parsing strings: a count must be an integer, a rate a number.

Flower's records have no null: an optional value travels as ``0`` or ``""``
and reads back as ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import UnionType
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import Field, StringConstraints, ValidationError

from protocol._base import Identifier, ModelName, StrictModel, _problems
from protocol._diagnosis import Mode
from protocol.errors import SchemaError

__all__ = [
    "AGGREGATIONS",
    "FedAvgRequest",
    "FlowerValue",
    "RunRequest",
    "TrainingRequest",
    "TuneRequest",
]

#: A value in Flower's run config.
FlowerValue = int | float | str | bool
#: How a FedAvg may combine the sites' updates (Flower's strategies; see fedapp).
AGGREGATIONS = ("fedavg", "trimmed-mean", "median", "krum")
Aggregation = Literal["fedavg", "trimmed-mean", "median", "krum"]
Backbone = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.]{0,63}$")]


class _FlowerRecord(StrictModel):
    """A schema that travels as flat keys of Flower's run config."""

    #: field -> the run config's key
    KEYS: ClassVar[dict[str, str]] = {}

    def to_config(self) -> dict[str, FlowerValue]:
        """This request as run config keys (None as 0 or "", a tuple comma-joined)."""
        return _flat(self, self.KEYS)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        """The request a run config carries (keys it lacks take their defaults).

        Raises:
            SchemaError: a value of the wrong type or out of bounds (a string where a
                count is due, a negative count, an unknown mode).
        """
        return _validated(cls, _document(cls, cls.KEYS, config), cls.KEYS)


_Model = TypeVar("_Model", bound=StrictModel)


def _flat(model: StrictModel, keys: Mapping[str, str]) -> dict[str, FlowerValue]:
    """``model``'s fields as run config keys (None as 0 or "", a tuple comma-joined)."""
    config: dict[str, FlowerValue] = {}
    for name, key in keys.items():
        value = getattr(model, name)
        if isinstance(value, tuple):
            value = ",".join(str(getattr(v, "value", v)) for v in value)
        elif value is None:
            kind, _ = _kind(type(model).model_fields[name].annotation)
            value = 0 if kind in (int, float) else ""
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        config[key] = value
    return config


def _document(
    model: type[StrictModel], keys: Mapping[str, str], config: Mapping[str, object]
) -> dict[str, Any]:
    """The fields of ``model`` a run config holds, each of the plain type its field wants.

    Raises:
        SchemaError: a value of another type (no coercion: ``"5"`` is not a count).
    """
    document: dict[str, Any] = {}
    problems: list[str] = []
    for name, key in keys.items():
        if key not in config:
            continue
        value = config[key]
        kind, optional = _kind(model.model_fields[name].annotation)
        if optional and (value == 0 or value == "") and type(value) is not bool:
            value = None
        elif kind in (tuple, dict):
            if not isinstance(value, str):
                problems.append(f"{key}: expected a string, got {type(value).__name__}")
                continue
            value = _collection(key, value, tuple_of=kind is tuple)
        elif not _plain_type(kind, value):
            problems.append(f"{key}: {type(value).__name__} {value!r:.40} is not {kind.__name__}")
            continue
        document[name] = value
    if problems:
        raise SchemaError(model.__name__, problems)
    return document


def _validated(model: type[_Model], document: dict[str, Any], keys: Mapping[str, str]) -> _Model:
    """``model`` from ``document``; its problems named by the run config's keys."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = [_with_key(problem, keys) for problem in _problems(exc)]
        raise SchemaError(model.__name__, problems) from exc


def _kind(annotation: Any) -> tuple[type, bool]:
    """The plain type a field holds, and whether it may be None.

    ``Annotated``, ``Literal`` and ``| None`` are taken off.
    """
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            annotation = args[0]
        elif origin is Literal:
            return str, optional
        elif origin in (tuple, dict):
            return origin, optional
        else:
            return annotation, optional


def _plain_type(kind: type, value: object) -> bool:
    """Whether ``value`` has the run config type ``kind`` wants (no coercion)."""
    if type(value) is bool:
        return kind is bool
    if kind is float:
        return type(value) in (int, float)
    if kind is int:
        return type(value) is int
    return isinstance(value, str)


def _collection(key: str, text: str, *, tuple_of: bool) -> Any:
    """A comma-separated tuple, or a JSON object, from its run config text."""
    if tuple_of:
        return tuple(part for part in text.split(",") if part)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError("run config", [f"{key}: not JSON ({exc})"]) from exc


def _with_key(problem: str, keys: Mapping[str, str]) -> str:
    """A schema problem named by the run config's key rather than the field."""
    where, _, rest = problem.partition(":")
    field, dot, index = where.strip().partition(".")
    return f"{keys.get(field, field)}{dot}{index}:{rest}"


class TrainingRequest(_FlowerRecord):
    """What each site trains for its own specialist (the site agent's recipe decides the rest)."""

    KEYS: ClassVar[dict[str, str]] = {
        "task_id": "task",
        "backbone": "backbone",
        "epochs": "epochs",
        "max_minutes": "max-minutes",
        "batch_size": "batch-size",
        "learning_rate": "learning-rate",
        "input_size": "input-size",
        "max_eval_images": "max-eval-images",
        "seed": "seed",
    }

    task_id: Identifier | None = None
    backbone: Backbone = "tf_efficientnet_lite0"
    epochs: int = Field(default=5, strict=True, ge=0, le=10_000)
    max_minutes: float | None = Field(default=None, gt=0, le=7 * 24 * 60)
    batch_size: int = Field(default=32, strict=True, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    input_size: Annotated[int, Field(strict=True, ge=8, le=2048)] | None = None
    max_eval_images: Annotated[int, Field(strict=True, ge=1, le=10**9)] | None = None
    seed: int = Field(default=0, strict=True, ge=0, lt=2**31)


class FedAvgRequest(_FlowerRecord):
    """The sites co-train one shared specialist after their own (0 rounds: none)."""

    KEYS: ClassVar[dict[str, str]] = {
        "rounds": "fedavg-rounds",
        "local_epochs": "fedavg-local-epochs",
        "dp_noise_multiplier": "dp-noise-multiplier",
        "dp_clipping_norm": "dp-clipping-norm",
        "dp_delta": "dp-delta",
        "aggregation": "aggregation",
    }

    rounds: int = Field(default=0, strict=True, ge=0, le=1000)
    local_epochs: int = Field(default=1, strict=True, ge=1, le=1000)
    dp_noise_multiplier: float = Field(default=0.0, ge=0, le=100)  # 0: no DP
    dp_clipping_norm: float = Field(default=1.0, gt=0, le=1e6)
    dp_delta: float = Field(default=1e-5, gt=0, lt=1)
    #: None: trimmed-mean from three sites up, else fedavg.
    aggregation: Aggregation | None = None


class TuneRequest(_FlowerRecord):
    """The sites tune the generalist's LoRA adapter and fit its policy (0 rounds: none)."""

    KEYS: ClassVar[dict[str, str]] = {
        "rounds": "tune-rounds",
        "local_epochs": "tune-local-epochs",
        "examples_per_site": "tune-examples-per-site",
        "policy_cases_per_site": "tune-policy-cases-per-site",
        "modes": "tune-modes",
        "recipe": "tune-recipe",
        "base_model": "tune-base-model",
        "dp_noise_multiplier": "tune-dp-noise-multiplier",
        "dp_clipping_norm": "tune-dp-clipping-norm",
    }

    rounds: int = Field(default=0, strict=True, ge=0, le=1000)
    local_epochs: int = Field(default=1, strict=True, ge=1, le=1000)
    examples_per_site: int = Field(default=120, strict=True, ge=1, le=100_000)
    policy_cases_per_site: int = Field(default=0, strict=True, ge=0, le=100_000)  # 0: no policy
    modes: tuple[Mode, ...] = Field(default=(Mode.GSCO,), min_length=1, max_length=len(Mode))
    #: The adapter recipe's fields (site_agent.adapter.AdapterRecipe); None: its defaults.
    recipe: dict[str, Any] | None = None
    #: The base model's served name; None: the embedded generalist's.
    base_model: ModelName | None = None
    dp_noise_multiplier: float = Field(default=0.0, ge=0, le=100)
    dp_clipping_norm: float = Field(default=1.0, gt=0, le=1e6)


class RunRequest(StrictModel):
    """One federated run: how many sites, how long, and what they do."""

    min_sites: int = Field(default=1, strict=True, ge=1, le=100_000)
    wait_s: float = Field(default=120.0, gt=0, le=7 * 24 * 3600)
    timeout_s: float = Field(default=3600.0, gt=0, le=30 * 24 * 3600)
    training: TrainingRequest = TrainingRequest()
    fedavg: FedAvgRequest = FedAvgRequest()
    tune: TuneRequest = TuneRequest()

    _KEYS: ClassVar[dict[str, str]] = {
        "min_sites": "min-sites",
        "wait_s": "wait-s",
        "timeout_s": "timeout-s",
    }

    def to_config(self) -> dict[str, FlowerValue]:
        """The run as Flower's run config."""
        return {
            **_flat(self, self._KEYS),
            **self.training.to_config(),
            **self.fedavg.to_config(),
            **self.tune.to_config(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RunRequest:
        """The run a run config carries.

        Raises:
            SchemaError: a value of the wrong type or out of bounds.
        """
        run = _validated(cls, _document(cls, cls._KEYS, config), cls._KEYS)
        return run.model_copy(
            update={
                "training": TrainingRequest.from_config(config),
                "fedavg": FedAvgRequest.from_config(config),
                "tune": TuneRequest.from_config(config),
            }
        )
