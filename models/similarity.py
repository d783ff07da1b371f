"""Item-item similarity from incrementally maintained co-occurrence.

With ``r[u, i]`` the (capped) interaction weight of user ``u`` on item ``i``, we keep

* ``C[i, j] = sum_u r[u, i] * r[u, j]`` (co-occurrence, capped to the strongest pairs per item)
* ``N[i]    = sum_u r[u, i] ** 2``     (the squared norm of item ``i``'s column)

and score ``cosine(i, j) = C[i, j] / sqrt(N[i] * N[j])``, shrunk by its support
``C / (C + shrinkage)``. Cosine, because it is the item-kNN measure that stays honest for both
popular and niche items (raw counts favour popular items; Jaccard ignores how strong an
interaction was); shrinkage, because a pair of rare items seen together once otherwise gets a
perfect 1.0 and crowds out well-supported neighbours.

When ``r[u, i]`` grows by ``delta``, ``C[i, j]`` grows by ``delta * r[u, j]`` for every other
item ``j`` the user has, and ``N[i]`` by ``(r + delta) ** 2 - r ** 2``: that is all an event
changes, so the update is O(user's recent items), independent of history length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def add_cooccurrence(
    counts: MutableMapping[tuple[str, str], float],
    item_id: str,
    delta: float,
    user_items: Iterable[Sequence[Any]],
) -> None:
    """Add to ``counts`` (a ``defaultdict(float)`` keyed ``(i, j)``) what the user's weight on
    ``item_id`` growing by ``delta`` does to ``C``: ``delta * r[u, j]`` to both ``(item_id, j)``
    and ``(j, item_id)`` for every other item ``j``.

    ``user_items`` are the user's items as ``(j, r[u, j], ...)`` sequences (a profile's
    ``[item, weight, ts]`` entries as they are); ``item_id`` itself is skipped if present, and
    so are items without weight. In place, without a list of increments in between: a batch
    runs this for every event, a few dozen pairs each, and it is the worker's busiest loop.
    """
    if delta <= 0.0:
        return
    for entry in user_items:
        other_id, other_weight = entry[0], entry[1]
        if other_weight <= 0.0 or other_id == item_id:
            continue
        amount = delta * other_weight
        counts[item_id, other_id] += amount
        counts[other_id, item_id] += amount


def norm_increment(old_weight: float, new_weight: float) -> float:
    """Change of ``N[i]`` when one user's weight on ``i`` goes from old to new."""
    return new_weight * new_weight - old_weight * old_weight


def cosine_similarities(
    cooccurrence: Mapping[str, float],
    item_norm: float,
    norms: Mapping[str, float],
    shrinkage: float,
) -> dict[str, float]:
    """Shrunk cosine of one item with each co-occurring item.

    Items with no known norm, or a non-positive count or norm, are left out.
    """
    similarities: dict[str, float] = {}
    if item_norm <= 0.0:
        return similarities
    for other_id, count in cooccurrence.items():
        other_norm = norms.get(other_id, 0.0)
        if count <= 0.0 or other_norm <= 0.0:
            continue
        cosine = count / math.sqrt(item_norm * other_norm)
        similarities[other_id] = min(cosine, 1.0) * count / (count + shrinkage)
    return similarities


def shrunk_cosine_array(
    counts: NDArray[np.float64],
    item_norms: NDArray[np.float64],
    other_norms: NDArray[np.float64],
    shrinkage: float,
) -> NDArray[np.float64]:
    """:func:`cosine_similarities` for many pairs at once: pair ``n`` has count ``counts[n]``
    and norms ``item_norms[n]``, ``other_norms[n]``. Pairs that function leaves out (a
    non-positive or missing (NaN) count or norm) get 0.0, every other pair a positive value."""
    usable = (counts > 0.0) & (item_norms > 0.0) & (other_norms > 0.0)
    result = np.zeros(len(counts), dtype=np.float64)
    c = counts[usable]
    cosine = np.minimum(c / np.sqrt(item_norms[usable] * other_norms[usable]), 1.0)
    result[usable] = cosine * c / (c + shrinkage)
    return result


def top_k(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` highest scores, best first; ties broken by id so results are reproducible."""
    ranked = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:k]
