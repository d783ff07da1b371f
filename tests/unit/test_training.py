"""Training data from live interaction lists: decayed values, the CSR matrix, the held-back
slice and its hit rate. Every expected number is worked out by hand in a comment."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest

from models.training import (
    GATE_P_VALUE,
    Holdout,
    InteractionMatrix,
    build_matrix,
    compare_hits,
    found_again,
    hit_rate,
    hold_out_latest,
    latest_time,
    training_value,
)

# -- training_value ---------------------------------------------------------------------------


def test_training_value_without_half_life_is_the_weight() -> None:
    # No decay at all, however old the interaction is.
    assert training_value(3.5, 0.0, 1_000_000.0, None) == 3.5
    assert training_value(3.5, 2_000_000.0, 1_000_000.0, None) == 3.5
    assert training_value(-2.0, 0.0, 10.0, None) == -2.0


@pytest.mark.parametrize(
    ("weight", "ts", "clock", "half_life", "expected"),
    [
        (4.0, 90.0, 100.0, 10.0, 2.0),  # one half-life: 4 * 1/2 = 2
        (4.0, 80.0, 100.0, 10.0, 1.0),  # two half-lives: 4 * 1/4 = 1
        (4.0, 70.0, 100.0, 10.0, 0.5),  # three half-lives: 4 * 1/8 = 0.5
        (4.0, 95.0, 100.0, 10.0, 2.0 * math.sqrt(2.0)),  # half a half-life: 4 / sqrt(2)
        (3.0, 0.0, 86_400.0 * 180, 86_400.0 * 180, 1.5),  # 180 days old, 180-day half-life
        (4.0, 100.0, 100.0, 10.0, 4.0),  # no time elapsed: untouched
        (4.0, 130.0, 100.0, 10.0, 4.0),  # event after the clock: never grows
    ],
)
def test_training_value_decays_by_half_lives(
    weight: float, ts: float, clock: float, half_life: float, expected: float
) -> None:
    assert training_value(weight, ts, clock, half_life) == pytest.approx(expected, rel=1e-12)


# -- build_matrix -----------------------------------------------------------------------------


def _dense(matrix: InteractionMatrix) -> np.ndarray:
    return np.asarray(matrix.values.toarray())


def test_build_matrix_orders_rows_and_columns_and_sums_duplicates() -> None:
    interactions = {
        "u2": [("c", 3.0, 0.0), ("a", 4.0, 0.0), ("c", 1.0, 0.0)],  # c twice: 3 + 1 = 4
        "u1": [("a", 1.0, 0.0), ("b", 2.0, 0.0)],
        "u3": [("d", 0.0, 0.0), ("e", -1.0, 0.0)],  # nothing positive: an empty row
        "u4": [("b", 5.0, 0.0)],
    }
    matrix = build_matrix(interactions, clock=0.0, half_life=None)
    # Rows in the dict's order, columns in order of first (kept) appearance: c, a, b.
    # d and e never have a positive value, so they get no column at all.
    assert matrix.user_ids == ["u2", "u1", "u3", "u4"]
    assert matrix.item_ids == ["c", "a", "b"]
    assert matrix.item_index() == {"c": 0, "a": 1, "b": 2}
    assert matrix.values.shape == (4, 3)
    assert matrix.values.dtype == np.float32
    expected = np.array(
        [
            [4.0, 4.0, 0.0],  # u2: c = 3 + 1, a = 4
            [0.0, 1.0, 2.0],  # u1: a = 1, b = 2
            [0.0, 0.0, 0.0],  # u3: zero and negative dropped
            [0.0, 0.0, 5.0],  # u4: b = 5
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(_dense(matrix), expected)
    # Duplicates are merged into one stored entry: 5 non-zeros, canonical CSR.
    assert matrix.values.nnz == 5
    assert matrix.values.has_canonical_format


def test_build_matrix_drops_items_whose_only_values_are_not_positive() -> None:
    interactions = {"u1": [("x", -3.0, 0.0), ("a", 2.0, 0.0), ("y", 0.0, 0.0)]}
    matrix = build_matrix(interactions, clock=0.0, half_life=None)
    assert matrix.item_ids == ["a"]
    np.testing.assert_array_equal(_dense(matrix), [[2.0]])
    # A negative entry does not cancel a positive one for the same item: it is dropped first.
    both = build_matrix({"u1": [("a", 2.0, 0.0), ("a", -1.0, 0.0)]}, 0.0, None)
    np.testing.assert_array_equal(_dense(both), [[2.0]])


def test_build_matrix_decays_values_to_the_clock() -> None:
    interactions = {
        "u1": [("a", 8.0, 90.0), ("b", 8.0, 80.0)],  # a: 8/2 = 4, b: 8/4 = 2
        "u2": [("b", 1.0, 100.0), ("a", 2.0, 70.0), ("a", 1.0, 100.0)],  # b: 1; a: 2/8 + 1
    }
    matrix = build_matrix(interactions, clock=100.0, half_life=10.0)
    assert matrix.item_ids == ["a", "b"]
    np.testing.assert_allclose(_dense(matrix), [[4.0, 2.0], [1.25, 1.0]], rtol=1e-6)


def test_build_matrix_of_nothing_is_empty() -> None:
    matrix = build_matrix({}, clock=0.0, half_life=None)
    assert matrix.user_ids == [] and matrix.item_ids == []
    assert matrix.values.shape == (0, 0)
    users_only = build_matrix({"u1": [], "u2": []}, clock=0.0, half_life=None)
    assert users_only.values.shape == (2, 0)


def test_build_matrix_stores_no_explicit_zeros_after_float32_underflow() -> None:
    # 1.0 decayed over 1000 half-lives = 2**-1000 ~ 9e-302: > 0 in float64, 0 in float32.
    interactions = {"u1": [("old", 1.0, 0.0), ("new", 1.0, 10_000.0)]}
    matrix = build_matrix(interactions, clock=10_000.0, half_life=10.0)
    assert (matrix.values.data > 0).all()
    assert matrix.item_ids == ["new"]


# -- hold_out_latest --------------------------------------------------------------------------

INTERACTIONS: dict[str, list[tuple[str, float, float]]] = {
    "u1": [("a", 1.0, 10.0), ("b", 2.0, 30.0), ("c", 3.0, 20.0)],  # latest: b (ts 30)
    "u2": [("d", 1.0, 5.0), ("e", 1.0, 50.0), ("f", 1.0, 40.0), ("g", 1.0, 1.0)],  # latest: e
    "u3": [("a", 1.0, 100.0), ("b", 1.0, 2.0)],  # only 2 interactions: never eligible
    "u4": [("y", 1.0, 7.0), ("x", 1.0, 7.0), ("z", 1.0, 3.0)],  # tie at ts 7: x < y wins
}


def _items(entries: list[tuple[str, float, float]]) -> Counter[tuple[str, float, float]]:
    return Counter(entries)


def test_hold_out_latest_holds_back_the_latest_item_of_every_eligible_user() -> None:
    before = copy.deepcopy(INTERACTIONS)
    holdout = hold_out_latest(INTERACTIONS, max_users=10)
    assert isinstance(holdout, Holdout)
    assert holdout.held_out == {"u1": "b", "u2": "e", "u4": "x"}
    # The chosen users lose exactly their latest entry, nothing else.
    assert _items(holdout.train["u1"]) == _items([("a", 1.0, 10.0), ("c", 3.0, 20.0)])
    assert _items(holdout.train["u2"]) == _items(
        [("d", 1.0, 5.0), ("f", 1.0, 40.0), ("g", 1.0, 1.0)]
    )
    assert _items(holdout.train["u4"]) == _items([("y", 1.0, 7.0), ("z", 1.0, 3.0)])
    # u3 (too short) keeps everything; every user is still in train.
    assert _items(holdout.train["u3"]) == _items(INTERACTIONS["u3"])
    assert set(holdout.train) == set(INTERACTIONS)
    # The held item is gone from that user's training list.
    for user, item in holdout.held_out.items():
        assert item not in {i for i, _, _ in holdout.train[user]}
    assert before == INTERACTIONS  # the input is not modified


def test_hold_out_latest_respects_min_interactions() -> None:
    # Only u2 has 4 or more interactions.
    holdout = hold_out_latest(INTERACTIONS, max_users=10, min_interactions=4)
    assert holdout.held_out == {"u2": "e"}
    for user in ("u1", "u3", "u4"):
        assert _items(holdout.train[user]) == _items(INTERACTIONS[user])
    # With min_interactions=2, u3 qualifies too and loses a (ts 100).
    holdout = hold_out_latest(INTERACTIONS, max_users=10, min_interactions=2)
    assert holdout.held_out == {"u1": "b", "u2": "e", "u3": "a", "u4": "x"}
    assert holdout.train["u3"] == [("b", 1.0, 2.0)]


def test_hold_out_latest_takes_at_most_max_users() -> None:
    eligible = {"u1", "u2", "u4"}
    for max_users in (0, 1, 2, 3):
        holdout = hold_out_latest(INTERACTIONS, max_users=max_users)
        assert len(holdout.held_out) == max_users
        assert set(holdout.held_out) <= eligible
        expected_latest = {"u1": "b", "u2": "e", "u4": "x"}
        for user, item in holdout.held_out.items():
            assert item == expected_latest[user]
        for user in set(INTERACTIONS) - set(holdout.held_out):
            assert _items(holdout.train[user]) == _items(INTERACTIONS[user])
            assert len(holdout.train[user]) == len(INTERACTIONS[user])


def _many_users(n: int) -> dict[str, list[tuple[str, float, float]]]:
    # user k: items i0..i3 at ts k, k+1, k+2, k+3, so the latest is always i3
    return {f"user{k:02d}": [(f"i{j}", 1.0, float(k + j)) for j in range(4)] for k in range(n)}


def test_hold_out_latest_is_deterministic_for_a_seed() -> None:
    interactions = _many_users(30)
    first = hold_out_latest(interactions, max_users=5, seed=7)
    second = hold_out_latest(interactions, max_users=5, seed=7)
    assert first == second
    # The choice depends on the set of users, not on the dict's order.
    reordered = dict(reversed(list(interactions.items())))
    assert hold_out_latest(reordered, max_users=5, seed=7).held_out == first.held_out
    assert all(item == "i3" for item in first.held_out.values())
    # Different seeds do pick different users (C(30, 5) choices; 10 seeds all equal is absurd).
    choices = {
        frozenset(hold_out_latest(interactions, max_users=5, seed=s).held_out) for s in range(10)
    }
    assert len(choices) > 1


def test_hold_out_latest_removes_every_entry_of_the_held_item() -> None:
    interactions = {"u1": [("a", 1.0, 10.0), ("b", 1.0, 5.0), ("a", 2.0, 1.0)]}
    holdout = hold_out_latest(interactions, max_users=1)
    assert holdout.held_out == {"u1": "a"}
    assert "a" not in {i for i, _, _ in holdout.train["u1"]}


def test_hold_out_latest_newer_than_keeps_only_interactions_a_model_could_not_have_seen() -> None:
    # Latest times: u1 30, u2 50, u4 7 (u3 is too short). A model trained through 20 has seen
    # u4's latest (7) but not u1's (30) nor u2's (50); through 30, only u2's is new (strictly).
    assert hold_out_latest(INTERACTIONS, 10, newer_than=20.0).held_out == {"u1": "b", "u2": "e"}
    assert hold_out_latest(INTERACTIONS, 10, newer_than=30.0).held_out == {"u2": "e"}
    only_new = hold_out_latest(INTERACTIONS, 10, newer_than=50.0)
    assert only_new.held_out == {}
    assert only_new.train == {
        u: sorted(v, key=lambda e: (-e[2], e[0])) for u, v in INTERACTIONS.items()
    }
    # None: every eligible user, as before.
    assert hold_out_latest(INTERACTIONS, 10, newer_than=None).held_out == {
        "u1": "b",
        "u2": "e",
        "u4": "x",
    }


def test_latest_time() -> None:
    assert latest_time(INTERACTIONS) == 100.0  # u3's a
    assert latest_time({}) is None
    assert latest_time({"u": []}) is None


# -- compare_hits -----------------------------------------------------------------------------


def test_compare_hits_counts_per_user_and_ignores_users_outside_the_slice() -> None:
    users = ["u1", "u2", "u3", "u4", "u5"]
    comparison = compare_hits(users, new={"u1", "u2", "u9"}, serving={"u2", "u3", "u4"})
    assert (comparison.users, comparison.new_hits, comparison.serving_hits) == (5, 2, 3)
    assert (comparison.new_only, comparison.serving_only) == (1, 2)  # u1; u3, u4
    assert comparison.new_rate == 0.4 and comparison.serving_rate == 0.6
    # P(X >= 2 | X ~ Binomial(3, 1/2)) = (3 + 1) / 8
    assert comparison.p_value == pytest.approx(0.5)
    assert not comparison.new_is_worse


@pytest.mark.parametrize(
    ("serving_only", "new_only", "p_value", "worse"),
    [
        (9, 1, 11 / 1024, True),  # P(X >= 9 | 10) = (C(10,9) + C(10,10)) / 2^10
        (8, 2, 56 / 1024, False),  # (45 + 10 + 1) / 2^10 = 0.0547: could be luck
        (4, 0, 1 / 16, False),  # four users are no evidence
        (6, 0, 1 / 64, True),  # six out of six is
        (0, 5, 1.0, False),  # the new model is the better one
        (0, 0, 1.0, False),  # they agree on every user
    ],
)
def test_compare_hits_refuses_only_a_significantly_worse_model(
    serving_only: int, new_only: int, p_value: float, worse: bool
) -> None:
    both = [f"b{n}" for n in range(30)]  # found by both: no evidence either way
    serving = [f"s{n}" for n in range(serving_only)]
    new = [f"n{n}" for n in range(new_only)]
    users = [*both, *serving, *new, "neither1", "neither2"]
    comparison = compare_hits(users, new=[*both, *new], serving=[*both, *serving])
    assert comparison.p_value == pytest.approx(p_value, rel=1e-9)
    assert comparison.new_is_worse is worse
    assert GATE_P_VALUE == 0.025


def test_compare_hits_lets_noise_through_but_not_a_real_drop() -> None:
    # 1000 held-back users, serving HR 0.300. The new model loses 20 users and gains 12 (HR
    # 0.292): p = P(X >= 20 | 32) = 0.108, published. Loses 60, gains 20 (HR 0.260): refused.
    base = [f"u{n}" for n in range(1000)]
    serving = set(base[:300])
    noisy = compare_hits(base, new=(serving - set(base[:20])) | set(base[300:312]), serving=serving)
    assert noisy.new_rate == pytest.approx(0.292) and not noisy.new_is_worse
    assert noisy.p_value == pytest.approx(0.1077, abs=1e-4)
    drop = compare_hits(base, new=(serving - set(base[:60])) | set(base[300:320]), serving=serving)
    assert drop.new_rate == pytest.approx(0.26) and drop.new_is_worse


def test_compare_hits_of_no_users() -> None:
    comparison = compare_hits([], new=[], serving=[])
    assert comparison.users == 0 and comparison.new_rate == 0.0 and comparison.serving_rate == 0.0
    assert comparison.p_value == 1.0 and not comparison.new_is_worse


# -- hit_rate ---------------------------------------------------------------------------------


def test_hit_rate_on_a_known_case() -> None:
    ranked = {"u1": ["a", "b"], "u2": ["c"], "u3": ["e", "f"], "u8": ["q"], "u9": ["z"]}
    held_out = {"u1": "b", "u2": "d", "u3": "e", "u4": "z"}
    # u1 hit (b), u2 miss (d not in [c]), u3 hit (e), u4 not ranked at all: miss.
    # u8, u9 are ranked but not held out: ignored (z for u9 is not u4's hit).
    # 2 hits / 4 held-out users = 0.5 (not 2 / 5 ranked users = 0.4)
    assert hit_rate(ranked, held_out) == 0.5
    assert hit_rate({}, held_out) == 0.0
    assert hit_rate({"u1": ["b"]}, {"u1": "b"}) == 1.0


def test_hit_rate_of_no_held_out_users_is_zero() -> None:
    assert hit_rate({"u1": ["a"]}, {}) == 0.0
    assert hit_rate({}, {}) == 0.0


def test_found_again_is_the_hit_users() -> None:
    ranked = {"u1": ["a", "b"], "u2": ["c"], "u3": ["e", "f"]}
    assert found_again(ranked, {"u1": "b", "u2": "d", "u3": "e", "u4": "z"}) == {"u1", "u3"}
    assert found_again(ranked, {}) == set()
