"""Per-group stratified split: known answer, proportions, determinism, a naive reference."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.split import stratified_split


def test_known_answer_for_seed_42() -> None:
    # RandomState(42).rand(5) = .375 .951 .732 .599 .156
    # item a (rows 0-3) ranked by those numbers: row0 1st, row3 2nd, row2 3rd, row1 4th;
    # positions / 4 = .25 1.0 .75 .5 -> rows 0, 2, 3 train (<= .75); item b (row 4): 1/1 -> test
    mask = stratified_split(["u1", "u2", "u3", "u4", "u5"], ["a", "a", "a", "a", "b"])
    assert mask.tolist() == [True, False, True, True, False]


def test_each_group_puts_floor_of_ratio_times_size_in_training() -> None:
    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 4, 5, 7, 8, 10, 13, 40]
    items = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(items)
    users = np.arange(len(items))
    mask = stratified_split(users, items, ratio=0.75, seed=3)
    for item, size in enumerate(sizes):
        assert mask[items == item].sum() == math.floor(0.75 * size)


def test_by_user_stratifies_on_users() -> None:
    users = np.repeat([10, 20], [8, 4])
    items = np.arange(12)
    mask = stratified_split(users, items, ratio=0.5, seed=1, by="user")
    assert mask[users == 10].sum() == 4
    assert mask[users == 20].sum() == 2


def test_same_seed_same_split_other_seed_other_split() -> None:
    users = np.arange(400) % 37
    items = np.arange(400) % 23
    first = stratified_split(users, items, seed=42)
    assert np.array_equal(first, stratified_split(users, items, seed=42))
    assert not np.array_equal(first, stratified_split(users, items, seed=43))


def test_leaves_the_global_random_state_alone() -> None:
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    stratified_split(np.arange(10), np.arange(10) % 3, seed=42)
    assert np.random.rand() == expected


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        stratified_split([1, 2], [1, 2], ratio=1.0)
    with pytest.raises(ValueError):
        stratified_split([1, 2], [1])
    with pytest.raises(ValueError):
        stratified_split([1, 2], [1, 2], by="session")  # type: ignore[arg-type]


def _naive_split(groups: list[int], ratio: float, seed: int) -> list[bool]:
    """The Recommenders recipe spelled out: random key per row, rank within group, cut."""
    keys = np.random.RandomState(seed).rand(len(groups))
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    train = [False] * len(groups)
    for rows in members.values():
        ranked = sorted(rows, key=lambda row: (keys[row], row))
        for position, row in enumerate(ranked, start=1):
            train[row] = position / len(ranked) <= ratio
    return train


@settings(max_examples=50, deadline=None)
@given(
    groups=st.lists(st.integers(min_value=0, max_value=6), max_size=60),
    ratio=st.sampled_from([0.5, 0.75, 0.8, 0.9]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_matches_the_naive_recipe(groups: list[int], ratio: float, seed: int) -> None:
    got = stratified_split(list(range(len(groups))), groups, ratio=ratio, seed=seed)
    assert got.tolist() == _naive_split(groups, ratio, seed)
