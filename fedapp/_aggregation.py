"""Aggregation that survives a poisoned update: every FedAvg of the project goes through here.

A site's update is untrusted input to every other site. Before Flower's
strategy aggregates a round, each reply is screened:

- an update holding a NaN or an infinity, or arrays of another shape, is
  refused (the round goes on with the others);
- its ``num-examples`` must be a positive number, and counts for no more than
  the site declared before training began (its examples query, or its own
  training set), which the run itself bounds;
- its update (its weights minus the round's global weights) is clipped to
  ``clip_factor`` times the median norm of the round's updates, so that no
  site moves the average further than a typical one (FLTrust's
  normalisation); with DP on, Flower's server-side fixed clipping comes first.

Then a robust strategy of Flower's aggregates (:data:`AGGREGATIONS`):
``trimmed-mean`` (``FedTrimmedAvg``, at least one site trimmed at each end),
``median`` (``FedMedian``), ``krum`` (``Krum``), or plain ``fedavg``; the
default is ``trimmed-mean`` from three sites up (:func:`default_aggregation`).
What was refused or clipped is recorded per site (:class:`Screening`) for
the run's outcome and report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
)

from fedapp.errors import JobError
from protocol import AGGREGATIONS

__all__ = [
    "AGGREGATIONS",
    "Screening",
    "default_aggregation",
    "robust_strategy",
]

#: The aggregations a run may choose (Flower's strategies).
#: An update's norm is clipped to this many times the round's median norm.
CLIP_FACTOR = 1.0


def default_aggregation(sites: int) -> str:
    """``trimmed-mean`` from three sites up (one can be trimmed each end), else ``fedavg``."""
    return "trimmed-mean" if sites >= 3 else "fedavg"


@dataclass
class Screening:
    """What the screening did, per site and round: refusals, clamped counts, clipped norms."""

    site_of: Mapping[int, str]
    declared: Mapping[int, int]  # node -> examples it declared before training
    events: dict[str, list[str]] = field(default_factory=dict)

    def note(self, node: int, server_round: int, what: str) -> None:
        site = self.site_of.get(node, f"node-{node}")
        self.events.setdefault(site, []).append(f"round {server_round}: {what}")
        log(WARNING, "gsco: %s, round %d: %s", site, server_round, what)


def _finite_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Screened:
    """Screens each round's replies (see the module docstring), then aggregates as its base."""

    action: str
    screening: Screening
    clip_factor: float
    _global: ArrayRecord | None

    def _construct_messages(  # type: ignore[no-untyped-def]
        self, record, node_ids, message_type
    ):
        if message_type == MessageType.TRAIN:
            message_type = f"{MessageType.TRAIN}.{self.action}"
        return super()._construct_messages(record, node_ids, message_type)  # type: ignore[misc]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc,no-any-return]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self.screen(server_round, list(replies))
        return super().aggregate_train(server_round, kept)  # type: ignore[misc,no-any-return]

    def screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies that may be aggregated, their counts bounded and their updates clipped."""
        reference = self._global.to_numpy_ndarrays() if self._global is not None else None
        keys = list(self._global.keys()) if self._global is not None else None
        kept: list[tuple[Message, list[np.ndarray], float]] = []
        for reply in replies:
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            content = reply.content
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                self.screening.note(
                    node, server_round, "refused: not one array and one metric record"
                )
                continue
            record = next(iter(content.array_records.values()))
            if keys is not None and list(record.keys()) != keys:
                self.screening.note(node, server_round, "refused: other arrays than the round's")
                continue
            arrays = [np.asarray(a, dtype=np.float64) for a in record.to_numpy_ndarrays()]
            if reference is not None and any(
                a.shape != r.shape for a, r in zip(arrays, reference, strict=True)
            ):
                self.screening.note(node, server_round, "refused: arrays of another shape")
                continue
            if not all(np.isfinite(a).all() for a in arrays):
                self.screening.note(node, server_round, "refused: the update holds NaN or infinity")
                continue
            metrics = next(iter(content.metric_records.values()))
            count = _finite_number(metrics.get("num-examples"))
            declared = self.screening.declared.get(node)
            if count is None or count <= 0 or declared is None:
                self.screening.note(
                    node, server_round, f"refused: num-examples {metrics.get('num-examples')!r}"
                )
                continue
            if count > declared:
                self.screening.note(
                    node,
                    server_round,
                    f"claimed {count:.3g} examples, counted as the {declared} it declared",
                )
                metrics["num-examples"] = declared
            loss = _finite_number(metrics.get("train-loss", 0.0))
            if loss is None:
                metrics["train-loss"] = 0.0
            norm = (
                math.sqrt(
                    sum(float(((a - r) ** 2).sum()) for a, r in zip(arrays, reference, strict=True))
                )
                if reference is not None
                else 0.0
            )
            kept.append((reply, arrays, norm))
        if reference is not None and kept:
            median = float(np.median([norm for _, _, norm in kept]))
            limit = self.clip_factor * median
            for reply, arrays, norm in kept:
                if norm > limit > 0 or (limit == 0 and norm > 0):
                    scale = limit / norm if norm > 0 else 0.0
                    if norm > 2 * limit:
                        self.screening.note(
                            reply.metadata.src_node_id,
                            server_round,
                            f"update clipped from norm {norm:.3g} to {limit:.3g} "
                            "(the round's median)",
                        )
                    clipped = [r + scale * (a - r) for a, r in zip(arrays, reference, strict=True)]
                    name = next(iter(reply.content.array_records))
                    originals = next(iter(reply.content.array_records.values()))
                    reply.content[name] = ArrayRecord(
                        {
                            key: Array(np.asarray(value, dtype=original.numpy().dtype))
                            for (key, original), value in zip(
                                originals.items(), clipped, strict=True
                            )
                        }
                    )
        log(
            INFO,
            "gsco: round %d: %d of %d updates aggregated",
            server_round,
            len(kept),
            len(replies),
        )
        return [reply for reply, _, _ in kept] + [r for r in replies if r.has_error()]


class _ScreenedFedAvg(_Screened, FedAvg):
    pass


class _ScreenedTrimmedAvg(_Screened, FedTrimmedAvg):
    pass


class _ScreenedMedian(_Screened, FedMedian):
    pass


class _ScreenedKrum(_Screened, Krum):
    pass


def robust_strategy(
    action: str,
    nodes: list[int],
    screening: Screening,
    *,
    aggregation: str | None = None,
    dp_noise: float = 0.0,
    dp_clip: float = 1.0,
    clip_factor: float = CLIP_FACTOR,
) -> Any:
    """The strategy of one FedAvg stage over ``nodes``, training through ``train.ACTION``.

    Raises:
        JobError: an unknown aggregation.
    """
    chosen = aggregation or default_aggregation(len(nodes))
    n = max(1, len(nodes))
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": n,
        "min_available_nodes": n,
    }
    strategy: Any
    if chosen == "fedavg":
        strategy = _ScreenedFedAvg(**common)
    elif chosen == "trimmed-mean":
        # Trim at least one site at each end where there are three or more.
        beta = min(0.49, max(0.2, 1.0 / n + 1e-9)) if n >= 3 else 0.0
        strategy = _ScreenedTrimmedAvg(**common, beta=beta)
    elif chosen == "median":
        strategy = _ScreenedMedian(**common)
    elif chosen == "krum":
        strategy = _ScreenedKrum(**common, num_malicious_nodes=max(0, (n - 3) // 2))
    else:
        raise JobError(f"unknown aggregation {chosen!r}: use one of {', '.join(AGGREGATIONS)}")
    strategy.action = action
    strategy.screening = screening
    strategy.clip_factor = clip_factor
    strategy._global = None
    log(INFO, "gsco: %s over %d sites: %s, updates screened and clipped", action, n, chosen)
    if dp_noise > 0:  # Flower's DP wrapper: the server clips each site's update and adds noise
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, dp_noise, dp_clip, num_sampled_clients=n
        )
    return strategy
