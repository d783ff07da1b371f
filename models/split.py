"""Train/test splits for offline evaluation.

:func:`stratified_split` is the Microsoft Recommenders ``python_stratified_split`` protocol (the
one behind their MovieLens benchmark table), on plain arrays instead of a DataFrame:

1. draw one uniform random number per row, in the rows' input order, from a generator seeded
   with ``seed`` (``np.random.RandomState(seed).rand(n)`` — the same numbers as Recommenders'
   ``np.random.seed(seed); np.random.rand(n)``);
2. group the rows by item (or by user) and order each group by its random numbers;
3. a row whose 1-based position in its group divided by the group's size is ``<= ratio`` goes
   to training, the rest to test. A group of ``n`` rows therefore puts ``floor(ratio * n)``
   rows in training (up to float rounding of ``position / n``, done exactly as Recommenders
   does it), and a group of one row goes entirely to test.

Given the rows in the same order as Recommenders' DataFrame (for MovieLens-100k, the order of
``u.data``, which is also the order of RecBole's ``ml-100k.inter``), the split is row for row
the one Recommenders makes.

Deviations, on purpose: only a single ratio is supported (no multi-way split), there is no
``min_rating`` filter (the benchmark uses ``min_rating=1``, which filters nothing), and the
global numpy random state is left alone (a private ``RandomState`` gives the same numbers).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray


def stratified_split(
    users: ArrayLike,
    items: ArrayLike,
    ratio: float = 0.75,
    seed: int = 42,
    by: Literal["user", "item"] = "item",
) -> NDArray[np.bool_]:
    """Boolean mask over the rows: ``True`` for training, ``False`` for test.

    ``users`` and ``items`` are the rows' user and item ids (any sortable dtype), same length.
    Use ``np.flatnonzero(mask)`` / ``np.flatnonzero(~mask)`` for index arrays.

    >>> stratified_split([1, 2, 3, 4, 5], ["a", "a", "a", "a", "b"]).tolist()
    [True, False, True, True, False]
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError("ratio must be strictly between 0 and 1")
    if by not in ("user", "item"):
        raise ValueError("by must be 'user' or 'item'")
    user_arr, item_arr = np.asarray(users), np.asarray(items)
    if user_arr.shape != item_arr.shape or user_arr.ndim != 1:
        raise ValueError("users and items must be 1-d arrays of the same length")
    groups = item_arr if by == "item" else user_arr
    randoms = np.random.RandomState(seed).rand(len(groups))
    position_fraction = _position_fraction(groups, randoms)
    return position_fraction <= ratio


def _position_fraction(
    groups: NDArray[np.generic], keys: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Each row's 1-based rank by ``keys`` within its group, divided by the group's size."""
    # lexsort is stable, so the (practically impossible) tie of two random keys keeps row order,
    # as Recommenders' multi-column sort_values does.
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_groups)])
    ranks = np.arange(1, len(sorted_groups) + 1) - np.repeat(starts, sizes)
    fraction = np.empty(len(groups), dtype=np.float64)
    fraction[order] = ranks / np.repeat(sizes, sizes)
    return fraction
