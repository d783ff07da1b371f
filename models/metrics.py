"""Top-k ranking metrics, defined exactly as Microsoft Recommenders' ``python_evaluation``.

Inputs are ``recommended``: user -> ranked item ids (best first), and ``relevant``: user -> the
set of items the user interacted with in the test set. Relevance is binary.

Which users count, as in Recommenders:

* a *test user* is a user with at least one relevant item;
* precision, recall and both MAPs average over the test users that also have a non-empty
  recommendation list (Recommenders' ``common_users``: users with rows in both tables);
* NDCG averages over *all* test users, a user without a list scoring zero (Recommenders'
  ``ndcg_at_k`` outer-joins the truth table).

When every test user has a list — as in :mod:`workers.evaluate` — both sets are the test users.
Only the first ``k`` recommended items are looked at; lists must not repeat an item.

Per user, with ``hits`` the relevant items among the first ``k`` (at 1-based ranks ``r_j``,
``j`` counting hits from 1) and ``n_rel`` the number of relevant items:

* precision@k = ``|hits| / k`` (even when fewer than ``k`` items were recommended);
* recall@k = ``|hits| / n_rel``;
* NDCG@k = ``sum_j 1/log(1 + r_j)`` divided by ``sum_{i=1..min(n_rel, k)} 1/log(1 + i)``;
* MAP (:func:`map_score`) = ``sum_j (j / r_j) / n_rel``. This is Recommenders' ``map`` and the
  ``MAP`` column of their MovieLens benchmark table (it was named ``map_at_k`` when that table
  was made): average precision over the top ``k``, normalised by *all* relevant items;
* MAP@k (:func:`map_at_k`) = the same sum normalised by ``min(n_rel, k)`` instead, which is
  Recommenders' current ``map_at_k`` (Spark's ``meanAveragePrecisionAt``).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

User = TypeVar("User", bound=Hashable)
Item = TypeVar("Item", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RankingMetrics:
    """All top-k metrics of one ranking, plus how many users each average is over."""

    k: int
    precision: float
    recall: float
    ndcg: float
    map: float
    map_at_k: float
    users: int
    ndcg_users: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HitTable:
    """Per evaluated user: which of the first ``k`` slots are hits, and ``n_rel``."""

    hits: NDArray[np.bool_]  # [users, k]
    n_relevant: NDArray[np.int64]  # [users]
    has_list: NDArray[np.bool_]  # [users]: False for a test user without a recommendation list


def hit_table(
    recommended: Mapping[User, Sequence[Item]], relevant: Mapping[User, Collection[Item]], k: int
) -> HitTable:
    """Hits of every test user (users with at least one relevant item), in ``relevant`` order."""
    if k <= 0:
        raise ValueError("k must be positive")
    users = [user for user, items in relevant.items() if len(items) > 0]
    hits = np.zeros((len(users), k), dtype=np.bool_)
    n_relevant = np.zeros(len(users), dtype=np.int64)
    has_list = np.zeros(len(users), dtype=np.bool_)
    for row, user in enumerate(users):
        truth = set(relevant[user])
        n_relevant[row] = len(truth)
        ranked = recommended.get(user)
        if not ranked:
            continue
        has_list[row] = True
        top = list(ranked[:k])
        if len(set(top)) != len(top):
            raise ValueError(f"recommendations for user {user!r} repeat an item")
        hits[row, : len(top)] = [item in truth for item in top]
    return HitTable(hits, n_relevant, has_list)


def hit_table_from_arrays(
    top_ids: NDArray[np.integer], relevant_rows: Sequence[NDArray[np.integer]], k: int
) -> HitTable:
    """Hit table from a ``[users, width]`` id array (``-1`` = empty slot) and each user's
    relevant item ids. Users with no relevant item are dropped; a row of only empty slots is a
    user without a list."""
    if k <= 0:
        raise ValueError("k must be positive")
    if top_ids.shape[0] != len(relevant_rows):
        raise ValueError("top_ids and relevant_rows must have one row per user")
    keep = np.array([len(row) > 0 for row in relevant_rows], dtype=np.bool_)
    top = np.asarray(top_ids)[:, :k]
    hits = np.zeros(top.shape, dtype=np.bool_)
    for row in np.flatnonzero(keep).tolist():
        hits[row] = np.isin(top[row], relevant_rows[row]) & (top[row] >= 0)
    if top.shape[1] < k:
        hits = np.pad(hits, ((0, 0), (0, k - top.shape[1])))
    n_relevant = np.array([len(row) for row in relevant_rows], dtype=np.int64)
    has_list = np.asarray((top >= 0).any(axis=1), dtype=np.bool_)
    return HitTable(hits[keep], n_relevant[keep], has_list[keep])


def metrics_from_hits(table: HitTable) -> RankingMetrics:
    """Every metric from one hit table (see the module docstring for the definitions)."""
    hits, n_rel, listed = table.hits, table.n_relevant, table.has_list
    k = hits.shape[1]
    n_users, n_ndcg = int(listed.sum()), len(n_rel)
    n_hits = hits.sum(axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log1p(ranks)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1] if n_ndcg else np.zeros(0)
    dcg = (hits * discount).sum(axis=1)
    average_precision = (np.cumsum(hits, axis=1) * hits / ranks).sum(axis=1)
    return RankingMetrics(
        k=k,
        precision=_mean(n_hits[listed] / k, n_users),
        recall=_mean(n_hits[listed] / n_rel[listed], n_users),
        ndcg=_mean(dcg / ideal if n_ndcg else dcg, n_ndcg),
        map=_mean(average_precision[listed] / n_rel[listed], n_users),
        map_at_k=_mean(average_precision[listed] / np.minimum(n_rel[listed], k), n_users),
        users=n_users,
        ndcg_users=n_ndcg,
    )


def _mean(values: NDArray[np.floating], count: int) -> float:
    return float(values.sum() / count) if count else 0.0


def ranking_metrics(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> RankingMetrics:
    """Precision@k, recall@k, NDCG@k, MAP and MAP@k in one pass."""
    return metrics_from_hits(hit_table(recommended, relevant, k))


def precision_at_k(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> float:
    """Recommenders' ``precision_at_k``: mean over listed test users of ``|hits| / k``."""
    return ranking_metrics(recommended, relevant, k).precision


def recall_at_k(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> float:
    """Recommenders' ``recall_at_k``: mean over listed test users of ``|hits| / n_rel``."""
    return ranking_metrics(recommended, relevant, k).recall


def ndcg_at_k(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> float:
    """Recommenders' ``ndcg_at_k`` with binary relevance, over all test users."""
    return ranking_metrics(recommended, relevant, k).ndcg


def map_score(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> float:
    """Recommenders' ``map`` (the benchmark table's ``MAP``): AP over the top k / ``n_rel``."""
    return ranking_metrics(recommended, relevant, k).map


def map_at_k(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Collection[Item]],
    k: int = 10,
) -> float:
    """Recommenders' current ``map_at_k``: AP over the top k / ``min(n_rel, k)``."""
    return ranking_metrics(recommended, relevant, k).map_at_k
