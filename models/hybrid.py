"""Vectorised hybrid ranking for batches of users, and the non-personal candidate sources.

:func:`blend_top_k` is :func:`models.recommend.blend` for a whole batch at once: every source
is a ``[users, items]`` score array (or an ``[items]`` array shared by all users, such as
popularity); per user, each source is clipped at zero and divided by its best score among the
items the user may still get, weighted, and summed. Excluded (seen) items are never returned,
nor are items no weighted source scores above zero. Ties are broken by the lower item index,
and each returned item carries the source whose weighted part of its score was largest (ties:
the first source in name order, as in ``blend``).

The one difference from ``blend``: ``blend`` divides by a source's best score *before* removing
excluded items, this divides by the best *eligible* score, so a source whose top scores are all
on items the user already has is not flattened (a seen item's item-kNN score is usually the
largest of all).

Sources defined here:

* :func:`popularity_scores` — interaction mass per item, the same for every user;
* :func:`category_affinity_scores` — the user's category (genre) distribution times each
  category's popularity: ``max_c share_u(c) * pop(i) / max_{j in c} pop(j)`` over the categories
  ``c`` of item ``i``, which is :func:`models.recommend.category_scores` with the user's share of
  interactions in ``c`` as the affinity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.als import mask_rows, top_k_rows


@dataclass(frozen=True, slots=True)
class BlendedTopK:
    """Top-k per user: item ids (``-1`` = empty slot), blended scores, and the index into
    ``names`` of the source that contributed most to each item (``-1`` = empty slot)."""

    ids: NDArray[np.int64]
    scores: NDArray[np.float32]
    sources: NDArray[np.int64]
    names: tuple[str, ...]

    def source_names(self) -> list[list[str]]:
        """Per user, the contributing source's name for each non-empty slot."""
        return [[self.names[s] for s in row if s >= 0] for row in self.sources.tolist()]


def normalise_per_user(
    scores: NDArray[np.floating], exclude: Any | None, n_users: int
) -> NDArray[np.float32]:
    """``max(score, 0) / best eligible score`` per user; excluded items and all-zero rows -> 0.

    ``scores`` is ``[users, items]`` or ``[items]`` (broadcast to ``n_users`` rows).
    """
    matrix = np.asarray(scores, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = np.broadcast_to(matrix, (n_users, matrix.shape[0]))
    result = np.maximum(matrix, 0.0).astype(np.float32)
    if exclude is not None:
        coo = sp.coo_matrix(exclude)
        result[coo.row, coo.col] = 0.0
    best = result.max(axis=1, keepdims=True)
    np.divide(result, best, out=result, where=best > 0.0)
    return result


def blend_top_k(
    sources: Mapping[str, NDArray[np.floating]],
    weights: Mapping[str, float],
    exclude: Any | None,
    k: int,
) -> BlendedTopK:
    """Blend sources into each user's top ``k`` (see the module docstring).

    Sources without a positive weight are ignored. ``exclude`` is a users x items CSR matrix of
    items never to return (what the user already has), or ``None``.
    """
    names = tuple(name for name in sorted(sources) if weights.get(name, 0.0) > 0.0)
    if not names:
        raise ValueError("no source has a positive weight")
    n_users, _ = _batch_shape(sources, names, exclude)
    parts = [
        np.float32(weights[name]) * normalise_per_user(sources[name], exclude, n_users)
        for name in names
    ]
    total = np.zeros_like(parts[0])
    for part in parts:
        total += part
    # An item no source scores positively is not a candidate, seen or not.
    total[total <= 0.0] = -np.inf
    if exclude is not None:
        mask_rows(total, exclude)
    ids, scores = top_k_rows(total, k)
    return BlendedTopK(ids, scores, _main_source(parts, ids), names)


def _batch_shape(
    sources: Mapping[str, NDArray[np.floating]], names: tuple[str, ...], exclude: Any | None
) -> tuple[int, int]:
    personal = [np.shape(sources[name]) for name in names if np.ndim(sources[name]) == 2]
    n_items = int(np.shape(sources[names[0]])[-1])
    n_users = personal[0][0] if personal else (exclude.shape[0] if exclude is not None else 1)
    for name in names:
        shape = np.shape(sources[name])
        if shape[-1] != n_items or (len(shape) == 2 and shape[0] != n_users):
            raise ValueError(f"source {name!r} has shape {shape}, expected ({n_users}, {n_items})")
    if exclude is not None and exclude.shape != (n_users, n_items):
        raise ValueError("exclude must be users x items")
    return int(n_users), n_items


def _main_source(parts: list[NDArray[np.float32]], ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of the largest weighted part behind each chosen item (first one on ties)."""
    rows = np.arange(ids.shape[0])[:, None]
    safe = np.where(ids >= 0, ids, 0)
    chosen = np.stack([part[rows, safe] for part in parts])  # [sources, users, k]
    main = np.asarray(np.argmax(chosen, axis=0), dtype=np.int64)
    main[ids < 0] = -1
    return main


def popularity_scores(user_items: Any) -> NDArray[np.float32]:
    """Total interaction weight per item (the number of interactions for 0/1 data)."""
    x = sp.csr_matrix(user_items, dtype=np.float32)
    return np.asarray(x.sum(axis=0), dtype=np.float32).ravel()


def category_affinity_scores(user_items: Any, item_categories: Any) -> NDArray[np.float32]:
    """``[users, items]``: the user's category shares times each category's item popularity.

    ``item_categories`` is an items x categories 0/1 matrix (an item may have several).
    ``share_u(c)`` is the user's interaction weight on items of ``c`` over their weight on items
    of any category, and ``pop`` is :func:`popularity_scores`.
    """
    x = sp.csr_matrix(user_items, dtype=np.float32)
    membership = sp.csc_matrix(item_categories, dtype=np.float32)
    if membership.shape[0] != x.shape[1]:
        raise ValueError("item_categories must have one row per item")
    mass = np.asarray((x @ membership).toarray(), dtype=np.float32)
    totals = mass.sum(axis=1, keepdims=True)
    shares = np.divide(mass, totals, out=np.zeros_like(mass), where=totals > 0.0)
    popularity = popularity_scores(x)
    scores = np.zeros(x.shape, dtype=np.float32)
    for category in range(membership.shape[1]):
        members = membership.indices[membership.indptr[category] : membership.indptr[category + 1]]
        best = popularity[members].max() if len(members) else 0.0
        if best <= 0.0:
            continue
        relative = popularity[members] / best
        scores[:, members] = np.maximum(scores[:, members], shares[:, category, None] * relative)
    return scores
