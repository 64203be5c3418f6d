"""The decision rules the site agent scores with and the hub answers with (ordinal tasks)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from protocol import TaskType, decide, mean_absolute_error, quadratic_weighted_kappa, vote

# Grade 4 by the largest probability, grade 2 by the median (the docstring's example).
SPLIT = np.array([[0.40, 0.15, 0.0, 0.45]])


def test_ordinal_decisions_take_the_median_grade() -> None:
    assert decide(SPLIT, TaskType.MULTICLASS).tolist() == [3]
    assert decide(SPLIT, TaskType.ORDINAL).tolist() == [1]
    # the median is the grade with the least expected distance in grades
    grades = np.arange(4)
    expected = [(SPLIT[0] * np.abs(grades - g)).sum() for g in grades]
    assert int(np.argmin(expected)) == 1


def test_a_median_on_the_boundary_and_unnormalised_rows() -> None:
    assert decide(np.array([[0.5, 0.5, 0.0]]), TaskType.ORDINAL).tolist() == [0]
    assert decide(np.array([[2.0, 1.0, 7.0]]), TaskType.ORDINAL).tolist() == [2]


def test_decide_refuses_what_is_not_a_distribution_table() -> None:
    with pytest.raises(ValueError, match=r"\[N, K>=2\]"):
        decide(np.array([0.2, 0.8]), TaskType.ORDINAL)


def test_ordinal_votes_are_the_median_and_plurality_votes_break_ties_by_the_ensemble() -> None:
    tie_break = np.array([0.2, 0.3, 0.5])
    assert vote([0, 1, 2], 3, TaskType.MULTICLASS, tie_break) == 2  # a three-way tie
    assert vote([0, 1, 2], 3, TaskType.ORDINAL, tie_break) == 1
    assert vote([0, 0, 2, 2], 3, TaskType.ORDINAL, tie_break) == 0  # the lower median
    assert vote([0, 0, 0, 2, 2], 3, TaskType.ORDINAL, tie_break) == 0
    assert vote([0, 2, 2], 3, TaskType.ORDINAL, tie_break) == 2
    with pytest.raises(ValueError, match="at least one"):
        vote([], 3, TaskType.ORDINAL, tie_break)
    with pytest.raises(ValueError, match="outside"):
        vote([3], 3, TaskType.ORDINAL, tie_break)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=2, max_size=60
            ),
        )
    )
)
def test_quadratic_weighted_kappa_matches_sklearn(case: tuple[int, list[tuple[int, int]]]) -> None:
    k, pairs = case
    truth = np.array([t for t, _ in pairs])
    predicted = np.array([p for _, p in pairs])
    ours = quadratic_weighted_kappa(truth, predicted, k)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn says so where kappa is undefined
        theirs = cohen_kappa_score(truth, predicted, labels=list(range(k)), weights="quadratic")
    if np.isfinite(theirs):
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert -1.0 <= ours <= 1.0


def test_kappa_and_mae_on_known_cases() -> None:
    truth = np.array([0, 1, 2, 3])
    assert quadratic_weighted_kappa(truth, truth, 4) == 1.0
    assert mean_absolute_error(truth, truth) == 0.0
    assert mean_absolute_error(truth, np.array([1, 1, 2, 0])) == pytest.approx(1.0)
    # off by one everywhere is punished less than reversed
    near = quadratic_weighted_kappa(truth, np.array([1, 2, 3, 2]), 4)
    reversed_ = quadratic_weighted_kappa(truth, truth[::-1], 4)
    assert reversed_ < 0 < near < 1
    assert quadratic_weighted_kappa(np.array([1, 1]), np.array([1, 1]), 3) == 1.0  # one class
