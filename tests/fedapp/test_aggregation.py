"""Every FedAvg survives one poisoned update: real Flower ``Message``s, Flower's strategies.

The ServerApp's strategies (``fedapp._aggregation``) get replies as
Flower delivers them. One site of three sends an update scaled by 10^6, NaN
or infinite values, a claimed 10^9 examples, a negative or nonsensical
count: the aggregate stays where the honest sites put it, and the run goes
on without a crash.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from fedapp._aggregation import (
    AGGREGATIONS,
    Screening,
    default_aggregation,
    robust_strategy,
)
from fedapp.errors import JobError

SITES = {1: "hospital-01", 2: "hospital-02", 3: "hospital-03"}
DECLARED = {1: 100, 2: 120, 3: 110}
GLOBAL = {"a": np.zeros((4, 3), np.float32), "b": np.zeros(5, np.float32)}


def _honest(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _reply(node: int, arrays: dict[str, np.ndarray], examples: Any = None) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"m-{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train.adapter",
    )
    count = DECLARED[node] if examples is None else examples
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": count, "train-loss": 0.5}),
        }
    )
    return Message(content=content, metadata=metadata)


def _aggregate(replies: list[Message], aggregation: str | None = None) -> tuple[Any, Screening]:
    screening = Screening(SITES, DECLARED)
    strategy = robust_strategy("adapter", list(SITES), screening, aggregation=aggregation)
    strategy._global = ArrayRecord({k: Array(np.asarray(v)) for k, v in GLOBAL.items()})
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}, screening


def _honest_aggregate(aggregation: str) -> dict[str, np.ndarray]:
    found, _ = _aggregate([_reply(n, _honest(n)) for n in (1, 2)], aggregation)
    return found


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


def _poisoned(kind: str) -> dict[str, np.ndarray]:
    honest = _honest(3)
    if kind == "scaled-1e6":
        return {k: GLOBAL[k] + 1e6 * (v - GLOBAL[k]) for k, v in honest.items()}
    if kind == "nan":
        return {k: np.full_like(v, np.nan) for k, v in honest.items()}
    if kind == "one-inf":
        poisoned = {k: v.copy() for k, v in honest.items()}
        poisoned["a"][0, 0] = np.inf
        return poisoned
    if kind == "1e30":
        return {k: np.full_like(v, 1e30) for k, v in honest.items()}
    raise AssertionError(kind)


def test_three_sites_get_a_robust_strategy_by_default() -> None:
    assert default_aggregation(3) == "trimmed-mean"
    assert default_aggregation(2) == "fedavg"
    with pytest.raises(JobError, match="unknown aggregation"):
        robust_strategy("adapter", [1, 2, 3], Screening(SITES, DECLARED), aggregation="mean")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("kind", ["scaled-1e6", "nan", "one-inf", "1e30"])
def test_one_poisoned_update_does_not_move_the_aggregate(aggregation: str, kind: str) -> None:
    replies = [_reply(1, _honest(1)), _reply(2, _honest(2)), _reply(3, _poisoned(kind))]
    found, screening = _aggregate(replies, aggregation)
    assert all(np.isfinite(v).all() for v in found.values())
    # No further from the honest sites' own aggregate than an honest update is from it.
    honest = _honest_aggregate(aggregation)
    spread = max(_distance(_honest(n), honest) for n in (1, 2, 3))
    assert _distance(found, honest) <= spread + 1e-6, (aggregation, kind)
    assert screening.events["hospital-03"]  # named, with what was done


@pytest.mark.parametrize("claimed", [10**9, 10**30, 1e300])
def test_an_inflated_example_count_counts_as_what_the_site_declared(claimed: Any) -> None:
    replies = [_reply(1, _honest(1)), _reply(2, _honest(2)), _reply(3, _honest(3), claimed)]
    found, screening = _aggregate(replies, "fedavg")
    fair, _ = _aggregate([_reply(n, _honest(n)) for n in (1, 2, 3)], "fedavg")
    assert _distance(found, fair) < 1e-6  # as if it had claimed the 110 it declared
    assert "counted as the 110 it declared" in screening.events["hospital-03"][0]


# What a MetricRecord can carry (it refuses bools and strings itself); None: the key missing.
@pytest.mark.parametrize("claimed", [-5, 0, float("nan"), float("-inf"), [100, 100], None])
def test_a_nonsensical_example_count_refuses_the_update_and_nothing_crashes(claimed: Any) -> None:
    replies = [_reply(1, _honest(1)), _reply(2, _honest(2)), _reply(3, _honest(3), claimed)]
    if claimed is None:
        replies[2].content["metrics"] = MetricRecord({"train-loss": 0.5})
    found, screening = _aggregate(replies, "fedavg")
    honest = _honest_aggregate("fedavg")
    assert _distance(found, honest) < 1e-6  # the other two, as if the third had not answered
    assert "refused" in screening.events["hospital-03"][0]


def test_an_update_of_another_shape_is_refused() -> None:
    other = {"a": np.zeros((3, 3), np.float32), "b": np.zeros(5, np.float32)}
    found, screening = _aggregate(
        [_reply(1, _honest(1)), _reply(2, _honest(2)), _reply(3, other)], "fedavg"
    )
    assert _distance(found, _honest_aggregate("fedavg")) < 1e-6
    assert "another shape" in screening.events["hospital-03"][0]


def test_the_dp_wrapper_still_screens() -> None:
    screening = Screening(SITES, DECLARED)
    strategy = robust_strategy(
        "adapter", list(SITES), screening, aggregation="fedavg", dp_noise=0.1, dp_clip=1.0
    )
    inner = strategy.strategy
    inner._global = ArrayRecord({k: Array(np.asarray(v)) for k, v in GLOBAL.items()})
    strategy.current_arrays = inner._global
    replies = [_reply(1, _honest(1)), _reply(2, _honest(2)), _reply(3, _poisoned("nan"))]
    for reply in replies:  # DP needs equal weights
        reply.content["metrics"]["num-examples"] = 100
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert all(np.isfinite(v.numpy()).all() for v in arrays.values())
    assert screening.events["hospital-03"]
