"""Ranking metrics: hand-computed answers, Recommenders' user conventions, array/dict agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    hit_table_from_arrays,
    map_at_k,
    map_score,
    metrics_from_hits,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# u1: top-3 is [a, b, c], one hit (b) at rank 2, four relevant items (d is ranked 4th: ignored).
# u2: hit at rank 1, its only relevant item.
# u3: an empty list and u4: no list at all -> out of P/R/MAP, zero in NDCG.
# u5: not a test user; u6: an empty truth set -> not a test user either.
RECOMMENDED: dict[str, list[str]] = {
    "u1": ["a", "b", "c", "d"],
    "u2": ["x", "y", "z"],
    "u3": [],
    "u5": ["a"],
}
RELEVANT: dict[str, set[str]] = {
    "u1": {"b", "d", "e", "f"},
    "u2": {"x"},
    "u3": {"a"},
    "u4": {"a", "b"},
    "u6": set(),
}


def test_precision_divides_hits_by_k_over_users_with_a_list() -> None:
    assert precision_at_k(RECOMMENDED, RELEVANT, k=3) == pytest.approx((1 / 3 + 1 / 3) / 2)


def test_recall_divides_hits_by_all_relevant_items() -> None:
    assert recall_at_k(RECOMMENDED, RELEVANT, k=3) == pytest.approx((1 / 4 + 1) / 2)


def test_ndcg_averages_over_every_test_user_and_caps_the_ideal_at_k() -> None:
    ideal_u1 = 1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)  # min(4 relevant, k=3)
    u1 = (1 / math.log(3)) / ideal_u1
    # u1, u2 (perfect), u3 and u4 (no list: 0) -> 4 users
    assert ndcg_at_k(RECOMMENDED, RELEVANT, k=3) == pytest.approx((u1 + 1.0) / 4)


def test_map_normalises_by_all_relevant_items_and_map_at_k_by_min_relevant_k() -> None:
    # u1: one hit, the 1st hit at rank 2 -> 1/2; u2: 1/1
    assert map_score(RECOMMENDED, RELEVANT, k=3) == pytest.approx((0.5 / 4 + 1.0) / 2)
    assert map_at_k(RECOMMENDED, RELEVANT, k=3) == pytest.approx((0.5 / 3 + 1.0) / 2)


def test_average_precision_counts_hits_so_far_over_rank() -> None:
    # hits at ranks 1 and 3: 1/1 + 2/3, over 3 relevant items
    got = ranking_metrics({"u": ["p", "q", "r", "s"]}, {"u": {"p", "r", "t"}}, k=4)
    assert got.map == pytest.approx((1 + 2 / 3) / 3)
    assert got.map_at_k == pytest.approx((1 + 2 / 3) / 3)
    assert got.precision == pytest.approx(2 / 4)
    ideal = 1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)
    assert got.ndcg == pytest.approx((1 / math.log(2) + 1 / math.log(4)) / ideal)


def test_counts_of_users_behind_each_average() -> None:
    got = ranking_metrics(RECOMMENDED, RELEVANT, k=3)
    assert (got.users, got.ndcg_users) == (2, 4)


def test_short_lists_still_divide_precision_by_k() -> None:
    assert precision_at_k({"u": ["a"]}, {"u": {"a"}}, k=10) == pytest.approx(0.1)


def test_no_test_users_gives_zeros() -> None:
    got = ranking_metrics({"u": ["a"]}, {"u": set()}, k=5)
    assert (got.precision, got.recall, got.ndcg, got.map, got.map_at_k) == (0, 0, 0, 0, 0)


def test_repeated_items_and_bad_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="repeat"):
        ranking_metrics({"u": ["a", "a"]}, {"u": {"a"}}, k=2)
    with pytest.raises(ValueError):
        ranking_metrics({"u": ["a"]}, {"u": {"a"}}, k=0)


def test_array_form_agrees_with_dict_form() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, k = 40, 30, 5
    top = np.array([rng.permutation(n_items)[:8] for _ in range(n_users)])
    top[::6, 3:] = -1  # short lists
    top[::9] = -1  # users without a list
    truth = [rng.choice(n_items, size=rng.integers(0, 6), replace=False) for _ in range(n_users)]
    from_arrays = metrics_from_hits(hit_table_from_arrays(top, truth, k))
    recommended = {u: [int(i) for i in row if i >= 0] for u, row in enumerate(top)}
    relevant = {u: set(row.tolist()) for u, row in enumerate(truth)}
    from_dicts = ranking_metrics(recommended, relevant, k)
    assert from_arrays.users == from_dicts.users
    assert from_arrays.ndcg_users == from_dicts.ndcg_users
    for name in ("precision", "recall", "ndcg", "map", "map_at_k"):
        assert getattr(from_arrays, name) == pytest.approx(getattr(from_dicts, name)), name
