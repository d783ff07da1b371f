"""Incremental co-occurrence and shrunk cosine: hand-computed answers and a batch cross-check."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.similarity import (
    add_cooccurrence,
    cosine_similarities,
    norm_increment,
    shrunk_cosine_array,
    top_k,
)

# -- add_cooccurrence -------------------------------------------------------------------------


def increments(
    item_id: str, delta: float, user_items: list[tuple[str, float]]
) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = defaultdict(float)
    add_cooccurrence(counts, item_id, delta, user_items)
    return dict(counts)


def test_increments_go_both_directions_and_scale_with_the_other_weight() -> None:
    # delta 2 on A; the user has B (weight 3) and C (weight 0.5): 2*3 = 6, 2*0.5 = 1
    got = increments("A", 2.0, [("B", 3.0), ("C", 0.5)])
    assert got == {("A", "B"): 6.0, ("B", "A"): 6.0, ("A", "C"): 1.0, ("C", "A"): 1.0}


def test_increments_add_to_what_is_there() -> None:
    counts: dict[tuple[str, str], float] = defaultdict(float, {("A", "B"): 1.5})
    add_cooccurrence(counts, "A", 1.0, [["B", 2, 1_700_000_000.0]])  # a profile's entry as is
    assert dict(counts) == {("A", "B"): 3.5, ("B", "A"): 2.0}


def test_increments_skip_the_item_itself() -> None:
    assert increments("A", 1.0, [("A", 4.0), ("B", 2.0)]) == {("A", "B"): 2.0, ("B", "A"): 2.0}


def test_increments_skip_zero_or_negative_delta() -> None:
    assert increments("A", 0.0, [("B", 2.0)]) == {}
    assert increments("A", -1.0, [("B", 2.0)]) == {}


def test_increments_skip_other_items_without_weight() -> None:
    assert increments("A", 1.0, [("B", 0.0), ("C", -2.0)]) == {}


def test_increments_with_no_other_items() -> None:
    assert increments("A", 5.0, []) == {}


# -- norm_increment ---------------------------------------------------------------------------


def test_norm_increment_is_difference_of_squares() -> None:
    assert norm_increment(0.0, 3.0) == 9.0  # 9 - 0
    assert norm_increment(2.0, 5.0) == 21.0  # 25 - 4
    assert norm_increment(4.0, 4.0) == 0.0
    assert norm_increment(3.0, 1.0) == -8.0  # 1 - 9


# -- cosine_similarities ----------------------------------------------------------------------
#
# Tiny user x item matrix (rows users, columns A, B, C):
#   u1: A=1, B=2
#   u2: A=2,       C=2
#   u3:       B=1, C=1
# C[A,B] = 1*2 = 2;  C[A,C] = 2*2 = 4;  C[B,C] = 1*1 = 1
# N[A] = 1 + 4 = 5;  N[B] = 4 + 1 = 5;  N[C] = 4 + 1 = 5
# cos(A,B) = 2/5 = 0.4;  cos(A,C) = 4/5 = 0.8;  cos(B,C) = 1/5 = 0.2

NORMS = {"A": 5.0, "B": 5.0, "C": 5.0}


def test_cosine_of_a_tiny_matrix_without_shrinkage() -> None:
    sims = cosine_similarities({"B": 2.0, "C": 4.0}, NORMS["A"], NORMS, shrinkage=0.0)
    assert sims == pytest.approx({"B": 0.4, "C": 0.8}, rel=1e-12)
    sims_b = cosine_similarities({"A": 2.0, "C": 1.0}, NORMS["B"], NORMS, shrinkage=0.0)
    assert sims_b == pytest.approx({"A": 0.4, "C": 0.2}, rel=1e-12)


def test_cosine_with_shrinkage() -> None:
    # cos * C / (C + s), s = 1:  A-B 0.4 * 2/3 = 0.2666...;  A-C 0.8 * 4/5 = 0.64
    sims = cosine_similarities({"B": 2.0, "C": 4.0}, NORMS["A"], NORMS, shrinkage=1.0)
    assert sims == pytest.approx({"B": 0.8 / 3.0, "C": 0.64}, rel=1e-12)


def test_shrinkage_lets_a_well_supported_pair_beat_a_rare_perfect_pair() -> None:
    # rare pair: seen together once, each item seen once: cos = 1 / sqrt(1 * 1) = 1.0
    # solid pair: C = 9, N = 10 and 10: cos = 9 / sqrt(10 * 10) = 0.9
    rare_plain = cosine_similarities({"r": 1.0}, 1.0, {"r": 1.0}, 0.0)["r"]
    solid_plain = cosine_similarities({"s": 9.0}, 10.0, {"s": 10.0}, 0.0)["s"]
    assert rare_plain == pytest.approx(1.0, rel=1e-12)
    assert solid_plain == pytest.approx(0.9, rel=1e-12)

    # shrinkage 4: rare 1.0 * 1/(1+4) = 0.2;  solid 0.9 * 9/(9+4) = 8.1/13 = 0.623...
    rare_shrunk = cosine_similarities({"r": 1.0}, 1.0, {"r": 1.0}, 4.0)["r"]
    solid_shrunk = cosine_similarities({"s": 9.0}, 10.0, {"s": 10.0}, 4.0)["s"]
    assert rare_shrunk == pytest.approx(0.2, rel=1e-12)
    assert solid_shrunk == pytest.approx(8.1 / 13.0, rel=1e-12)
    assert rare_plain > solid_plain
    assert solid_shrunk > rare_shrunk


def test_cosine_leaves_out_unknown_zero_and_negative_entries() -> None:
    sims = cosine_similarities(
        {"known": 2.0, "no_norm": 3.0, "zero_norm": 1.0, "zero_count": 0.0, "neg": -1.0},
        4.0,
        {"known": 1.0, "zero_norm": 0.0, "zero_count": 1.0, "neg": 1.0},
        shrinkage=0.0,
    )
    # known: 2 / sqrt(4 * 1) = 1.0
    assert sims == pytest.approx({"known": 1.0})


def test_cosine_of_an_item_without_norm_is_empty() -> None:
    assert cosine_similarities({"B": 2.0}, 0.0, {"B": 1.0}, 0.0) == {}


def test_cosine_is_capped_at_one() -> None:
    # capped counters can leave C above sqrt(Ni * Nj): 3 / sqrt(1 * 4) = 1.5 -> 1.0
    sims = cosine_similarities({"B": 3.0}, 1.0, {"B": 4.0}, shrinkage=0.0)
    assert sims == {"B": 1.0}


# -- incremental == batch ---------------------------------------------------------------------

ITEMS = ("i0", "i1", "i2", "i3")
CAP = 6.0

interaction_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # user
        st.integers(min_value=0, max_value=len(ITEMS) - 1),  # item
        st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]),  # weight of the event
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(interaction_events, st.sampled_from([0.0, 1.0, 5.0]))
def test_incremental_updates_reproduce_batch_cosine(
    events: list[tuple[int, int, float]], shrinkage: float
) -> None:
    r: dict[int, dict[str, float]] = defaultdict(dict)
    cooc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    norms: dict[str, float] = defaultdict(float)
    for user, item_index, weight in events:
        item = ITEMS[item_index]
        old = r[user].get(item, 0.0)
        new = min(old + weight, CAP)
        others = [(j, w) for j, w in r[user].items() if j != item]
        pairs: dict[tuple[str, str], float] = defaultdict(float)
        add_cooccurrence(pairs, item, new - old, others)
        for (i, j), amount in pairs.items():
            cooc[i][j] += amount
        norms[item] += norm_increment(old, new)
        r[user][item] = new

    matrix = np.array([[r[u].get(i, 0.0) for i in ITEMS] for u in sorted(r)])
    gram = matrix.T @ matrix  # C off the diagonal, N on it

    for a, item_a in enumerate(ITEMS):
        assert norms.get(item_a, 0.0) == pytest.approx(gram[a, a], abs=1e-9)
        for b, item_b in enumerate(ITEMS):
            if a != b:
                assert cooc[item_a].get(item_b, 0.0) == pytest.approx(gram[a, b], abs=1e-9)

    for a, item_a in enumerate(ITEMS):
        sims = cosine_similarities(cooc[item_a], norms.get(item_a, 0.0), norms, shrinkage)
        for b, item_b in enumerate(ITEMS):
            if a == b:
                continue
            count = gram[a, b]
            if count <= 1e-12:
                assert item_b not in sims
                continue
            expected = count / math.sqrt(gram[a, a] * gram[b, b]) * count / (count + shrinkage)
            assert sims[item_b] == pytest.approx(expected, rel=1e-9)


# -- top_k ------------------------------------------------------------------------------------


def test_top_k_orders_best_first_and_limits() -> None:
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7}
    assert top_k(scores, 2) == [("b", 0.9), ("d", 0.7)]
    assert top_k(scores, 10) == [("b", 0.9), ("d", 0.7), ("c", 0.5), ("a", 0.1)]


def test_top_k_breaks_ties_by_id() -> None:
    scores = {"z": 0.5, "m": 0.5, "a": 0.5, "best": 0.8}
    assert top_k(scores, 3) == [("best", 0.8), ("a", 0.5), ("m", 0.5)]


def test_top_k_of_nothing() -> None:
    assert top_k({}, 5) == []
    assert top_k({"a": 1.0}, 0) == []


def test_shrunk_cosine_array_is_cosine_similarities_pair_by_pair() -> None:
    norms = {"a": 4.0, "b": 9.0, "c": 0.0, "d": 1.0}
    cooccurrence = {"b": 3.0, "c": 2.0, "d": 0.0, "e": 5.0}  # c: no norm, d: no count, e: unknown
    expected = cosine_similarities(cooccurrence, norms["a"], norms, shrinkage=2.0)
    others = list(cooccurrence)
    values = shrunk_cosine_array(
        np.array([cooccurrence[j] for j in others]),
        np.full(len(others), norms["a"]),
        np.array([norms.get(j, 0.0) for j in others]),
        shrinkage=2.0,
    )
    assert {j: v for j, v in zip(others, values.tolist(), strict=True) if v > 0} == expected
    # By hand: C = 3, N = 4 and 9: cosine 3 / 6 = 0.5, shrunk by 3 / 5.
    assert expected == {"b": pytest.approx(0.3)}


def test_shrunk_cosine_array_caps_the_cosine_and_drops_missing_counts() -> None:
    values = shrunk_cosine_array(
        np.array([8.0, np.nan]), np.array([4.0, 4.0]), np.array([4.0, 4.0]), shrinkage=0.0
    )
    assert values.tolist() == [1.0, 0.0]  # 8 / sqrt(16) = 2 is not a cosine: capped at 1
