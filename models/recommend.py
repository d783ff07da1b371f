"""Candidate sources and the blend that turns them into one ranked, filtered list.

Each source maps item ids to non-negative scores on its own scale. :func:`blend` rescales every
source to [0, 1] by its best score, weights it, sums per item, and labels each item with the
source that contributed most. New sources (ALS, anything else) plug in by name: the blend only
needs their scores and a weight.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from models.decay import decay_factor

_SCORE_DIGITS = 6


class Recommendation(NamedTuple):
    """One recommended item (a named tuple: a batch builds thousands of them)."""

    item_id: str
    score: float
    source: str


class Neighbours(Mapping[str, Sequence[tuple[str, float]]]):
    """Items' neighbours with their similarities, as flat arrays: item ``sources[k]`` has the
    pairs ``starts[k]`` to ``starts[k + 1]``, pair ``p`` naming neighbour ``ids[neighbour[p]]``
    with ``similarities[p]``. Each neighbour id is held once however many items keep it (a
    batch has tens of thousands of pairs over a few thousand neighbours), so per-pair work is
    array work. Reads as a mapping ``item -> [(neighbour, similarity)]``; :func:`rank_batch`
    uses the arrays as they are (one CSR matrix, no per-pair Python objects)."""

    def __init__(
        self,
        sources: Sequence[str],
        starts: NDArray[np.int64],
        ids: Sequence[str],
        neighbour: NDArray[np.int64],
        similarities: NDArray[np.float64],
    ) -> None:
        self.sources = list(sources)
        self.starts = starts
        self.ids = list(ids)
        self.neighbour = neighbour
        self.similarities = similarities
        self.position = {item_id: k for k, item_id in enumerate(self.sources)}

    @classmethod
    def of(cls, pairs: Mapping[str, Sequence[tuple[str, float]]]) -> Neighbours:
        if isinstance(pairs, Neighbours):
            return pairs
        sources = list(pairs)
        lengths = [len(pairs[item_id]) for item_id in sources]
        starts = np.zeros(len(sources) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        at: dict[str, int] = {}
        neighbour = [at.setdefault(other, len(at)) for i in sources for other, _ in pairs[i]]
        values = [value for item_id in sources for _, value in pairs[item_id]]
        return cls(
            sources,
            starts,
            list(at),
            np.asarray(neighbour, dtype=np.int64),
            np.asarray(values, dtype=np.float64),
        )

    def __getitem__(self, item_id: str) -> list[tuple[str, float]]:
        k = self.position[item_id]
        start, stop = int(self.starts[k]), int(self.starts[k + 1])
        others = [self.ids[n] for n in self.neighbour[start:stop].tolist()]
        return list(zip(others, self.similarities[start:stop].tolist(), strict=True))

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.position

    def pairs_of(self, rows: Sequence[int]) -> NDArray[np.bool_]:
        """Which pairs belong to the source items at these positions (of ``sources``)."""
        used = np.zeros(len(self.sources), dtype=bool)
        used[list(rows)] = True
        return np.repeat(used, np.diff(self.starts))


def itemknn_scores(
    recent: Sequence[tuple[str, float, float]],
    neighbours: Mapping[str, Sequence[tuple[str, float]]],
    half_life: float,
) -> dict[str, float]:
    """Item-kNN: sum over the user's recent items ``j`` of ``r[u, j] * recency(j) * sim(j, i)``.

    ``recent`` is ``(item_id, weight, ts)``; recency decays each item's vote with the time
    between its last interaction and the user's latest one, so the latest interest leads.
    """
    scores: dict[str, float] = defaultdict(float)
    if not recent:
        return scores
    latest = max(ts for _, _, ts in recent)
    for item_id, weight, ts in recent:
        vote = weight * decay_factor(latest - ts, half_life)
        for other_id, similarity in neighbours.get(item_id, ()):
            scores[other_id] += vote * similarity
    return scores


def log_scores_to_relative(log_scores: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Log forward-decayed scores as weights relative to the best (which becomes 1.0)."""
    pairs = list(log_scores)
    if not pairs:
        return {}
    best = max(score for _, score in pairs)
    return {item_id: math.exp(score - best) for item_id, score in pairs}


def category_scores(
    affinities: Sequence[tuple[str, float]],
    category_items: Mapping[str, Iterable[tuple[str, float]]],
) -> dict[str, float]:
    """Popular items of the user's favourite categories: ``affinity(c) * popularity_in_c(i)``.

    ``category_items`` holds each category's items as log forward-decayed popularity scores.
    """
    scores: dict[str, float] = defaultdict(float)
    for category, affinity in affinities:
        if affinity <= 0.0:
            continue
        for item_id, relative in log_scores_to_relative(category_items.get(category, ())).items():
            scores[item_id] = max(scores[item_id], affinity * relative)
    return scores


def blend(
    sources: Mapping[str, Mapping[str, float]],
    weights: Mapping[str, float],
    exclude: set[str],
    n: int,
) -> list[Recommendation]:
    """Blend candidate sources into the top ``n`` items not in ``exclude``.

    Sources without a weight, or with weight 0, are ignored. Ties are broken by item id.
    """
    totals: dict[str, float] = defaultdict(float)
    best_part: dict[str, tuple[float, str]] = {}
    for name in sorted(sources):
        weight = weights.get(name, 0.0)
        scores = sources[name]
        if weight <= 0.0 or not scores:
            continue
        # Rescale by the best item that may be recommended: excluded items (often the top of
        # item-kNN, which are the user's own) must not shrink the rest of their source.
        eligible = {i: s for i, s in scores.items() if i not in exclude and s > 0.0}
        if not eligible:
            continue
        top = max(eligible.values())
        for item_id, score in eligible.items():
            part = weight * score / top
            totals[item_id] += part
            if item_id not in best_part or part > best_part[item_id][0]:
                best_part[item_id] = (part, name)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [
        Recommendation(item_id, round(total, _SCORE_DIGITS), best_part[item_id][1])
        for item_id, total in ranked
    ]


# -- the same blend for a whole batch of users, vectorised ------------------------------------
@dataclass(frozen=True, slots=True)
class UserCandidates:
    """What one user brings to :func:`rank_batch`."""

    recent: Sequence[tuple[str, float, float]]  # (item_id, weight, ts) for item-kNN
    favourites: Sequence[tuple[str, float]]  # (category, affinity)
    als: Mapping[str, float]  # item -> ALS score (empty without a model)
    exclude: AbstractSet[str]


@dataclass(slots=True)
class SourceScores:
    """One source's scores for the batch as parallel arrays: user row, candidate column, value."""

    users: NDArray[np.int64]
    cols: NDArray[np.int64]
    values: NDArray[np.float64]


def rank_batch(
    users: Sequence[UserCandidates],
    neighbours: Mapping[str, Sequence[tuple[str, float]]],
    category_items: Mapping[str, Sequence[tuple[str, float]]],
    popularity: Sequence[tuple[str, float]],
    weights: Mapping[str, float],
    n: int,
    half_life: float,
    unavailable: AbstractSet[str] = frozenset(),
) -> list[list[Recommendation]]:
    """Every user's :func:`blend` of ALS, :func:`itemknn_scores`, :func:`category_scores` and
    popularity (:func:`log_scores_to_relative`), computed with array operations over the
    (user, candidate) cells the sources score instead of per-user dictionaries. Same
    definition, same ranking and ties (by item id); item-kNN sums may differ in the last bits
    (summation order).

    ``category_items`` and ``popularity`` hold log forward-decayed scores, as stored.
    ``unavailable`` items (out of stock) are excluded for every user, like ``exclude``."""
    neighbours = Neighbours.of(neighbours)
    ids = _candidate_ids(users, neighbours, category_items, popularity)
    if not ids or n <= 0:
        return [[] for _ in users]
    index = {item_id: k for k, item_id in enumerate(ids)}  # column order is id order
    builders: dict[str, Callable[[], SourceScores]] = {
        "als": lambda: _als_scores(users, index),
        "category": lambda: _category_scores(users, category_items, index),
        "itemknn": lambda: _itemknn_scores(users, neighbours, index, half_life),
        "popularity": lambda: _popularity_scores(len(users), popularity, index),
    }
    scored = {name: build() for name, build in builders.items() if weights.get(name, 0.0) > 0.0}
    excluded = _excluded_cells(users, index, unavailable)
    return blend_scored(scored, weights, excluded, len(users), n, ids)


def blend_scored(
    sources: Mapping[str, SourceScores],
    weights: Mapping[str, float],
    excluded: tuple[NDArray[np.int64], NDArray[np.bool_]],
    user_count: int,
    n: int,
    ids: Sequence[str],
) -> list[list[Recommendation]]:
    """:func:`blend` for many users over sparse per-source scores: the seam more candidate
    sources plug into by name. ``excluded`` is (sorted cell keys ``user * len(ids) + col``
    never to recommend, per-column mask of items excluded for everyone)."""
    width = len(ids)
    excluded_keys, excluded_cols = excluded
    keys_parts, part_parts, source_parts = [], [], []
    names = sorted(sources)
    for rank, name in enumerate(names):  # in name order: the order blend adds in
        scores = sources[name]
        keys = scores.users * width + scores.cols
        eligible = (scores.values > 0.0) & ~excluded_cols[scores.cols]
        if len(excluded_keys):
            eligible &= ~_members_of(keys, excluded_keys)
        rows, keys, values = scores.users[eligible], keys[eligible], scores.values[eligible]
        if not len(keys):
            continue
        # Rescale by each user's best eligible item of this source, as blend does.
        top = _row_maxima(rows, values, user_count)
        keys_parts.append(keys)
        part_parts.append(weights[name] * values / top[rows])
        source_parts.append(np.full(len(keys), rank, dtype=np.int64))
    if not keys_parts:
        return [[] for _ in range(user_count)]
    keys, parts = np.concatenate(keys_parts), np.concatenate(part_parts)
    source = np.concatenate(source_parts)
    cells, cell_of = np.unique(keys, return_inverse=True)
    # bincount adds in input order, which is name order: the same floats as blend's sums.
    totals = np.bincount(cell_of, weights=parts, minlength=len(cells))
    # Each cell's source is the one with the largest part; a tie keeps the first by name.
    best_part = np.zeros(len(cells))
    np.maximum.at(best_part, cell_of, parts)
    at_best = parts == best_part[cell_of]
    best_source = np.full(len(cells), len(names), dtype=np.int64)
    np.minimum.at(best_source, cell_of[at_best], source[at_best])
    # Per user: the n best cells with a positive total, ties by item id (column order).
    positive = totals > 0.0
    positive &= _within_top(cells // width, totals, user_count, n)
    cells, totals, best_source = cells[positive], totals[positive], best_source[positive]
    # Cells come sorted by (row, col): two stable sorts order them by row, then best total,
    # keeping column (item id) order among equal totals.
    order = np.argsort(-totals, kind="stable")
    order = order[np.argsort(cells[order] // width, kind="stable")]
    cells, totals, best_source = cells[order], totals[order], best_source[order]
    rows = cells // width
    starts = np.searchsorted(rows, np.arange(user_count + 1)).tolist()
    # Python values once for the batch, not three array slices per user.
    cell_items = list(map(ids.__getitem__, (cells % width).tolist()))
    cell_scores = [round(total, _SCORE_DIGITS) for total in totals.tolist()]
    cell_sources = list(map(names.__getitem__, best_source.tolist()))
    ranked: list[list[Recommendation]] = []
    for user in range(user_count):
        start, stop = starts[user], min(starts[user + 1], starts[user] + n)
        ranked.append(
            list(
                map(
                    Recommendation,
                    cell_items[start:stop],
                    cell_scores[start:stop],
                    cell_sources[start:stop],
                )
            )
        )
    return ranked


def _within_top(
    rows: NDArray[np.int64], totals: NDArray[Any], row_count: int, n: int
) -> NDArray[np.bool_]:
    """Which cells can be among their row's ``n`` best: those whose total reaches the row's
    n-th largest (all of a row's cells if it has at most n; every cell tied with the n-th
    stays, for the sort to break the tie by item id). ``rows`` is sorted. A partition per row
    instead of sorting every scored cell: a batch scores hundreds per user and keeps ten."""
    if n <= 0:
        return np.zeros(len(rows), dtype=bool)
    starts = np.searchsorted(rows, np.arange(row_count + 1)).tolist()
    within = np.ones(len(rows), dtype=bool)
    for row in range(row_count):
        start, stop = starts[row], starts[row + 1]
        if stop - start > n:
            row_totals = totals[start:stop]
            nth = np.partition(row_totals, stop - start - n)[stop - start - n]
            within[start:stop] = row_totals >= nth
    return within


def _members_of(keys: NDArray[np.int64], sorted_keys: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which ``keys`` are in ``sorted_keys`` (sorted, distinct, not empty)."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.asarray(sorted_keys[at] == keys)


def _row_maxima(
    rows: NDArray[np.int64], values: NDArray[np.float64], row_count: int
) -> NDArray[np.float64]:
    """Each row's largest value (0 for rows without any); one pass over row-sorted input,
    which every source builds."""
    if np.any(rows[1:] < rows[:-1]):
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
    firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    maxima = np.zeros(row_count)
    maxima[rows[firsts]] = np.maximum.reduceat(values, firsts)
    return maxima


def _candidate_ids(
    users: Sequence[UserCandidates],
    neighbours: Neighbours,
    category_items: Mapping[str, Sequence[tuple[str, float]]],
    popularity: Sequence[tuple[str, float]],
) -> list[str]:
    ids = {item_id for item_id, _ in popularity}
    sources: set[str] = set()
    categories: set[str] = set()
    for user in users:
        ids.update(user.als)
        sources.update(item_id for item_id, _, _ in user.recent)
        categories.update(category for category, _ in user.favourites)
    rows = [neighbours.position[i] for i in sources if i in neighbours]
    kept = np.unique(neighbours.neighbour[neighbours.pairs_of(rows)])
    ids.update(map(neighbours.ids.__getitem__, kept.tolist()))
    for category in categories:
        ids.update(item_id for item_id, _ in category_items.get(category, ()))
    return sorted(ids)


def _excluded_cells(
    users: Sequence[UserCandidates], index: Mapping[str, int], unavailable: AbstractSet[str]
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    width = len(index)
    keys: list[int] = []
    known, column_of = index.__contains__, index.__getitem__  # map/filter: no bytecode per item
    for row, user in enumerate(users):
        offset = row * width
        keys += [offset + col for col in map(column_of, filter(known, user.exclude))]
    columns = np.zeros(width, dtype=bool)
    columns[_ints([index[i] for i in unavailable if i in index])] = True
    return np.unique(_ints(keys)), columns


def _als_scores(users: Sequence[UserCandidates], index: Mapping[str, int]) -> SourceScores:
    rows = [row for row, user in enumerate(users) for _ in user.als]
    cols = [index[item_id] for user in users for item_id in user.als]
    values = [score for user in users for score in user.als.values()]
    return SourceScores(_ints(rows), _ints(cols), np.asarray(values, dtype=np.float64))


def _itemknn_scores(
    users: Sequence[UserCandidates],
    neighbours: Neighbours,
    index: Mapping[str, int],
    half_life: float,
) -> SourceScores:
    """Votes (users x source items) times similarities (source items x candidates)."""
    position = neighbours.position
    vote_rows, vote_cols, votes = [], [], []
    for row, user in enumerate(users):
        if not user.recent:
            continue
        latest = max(ts for _, _, ts in user.recent)
        for item_id, weight, ts in user.recent:
            if item_id in position:
                vote_rows.append(row)
                vote_cols.append(position[item_id])
                votes.append(weight * decay_factor(latest - ts, half_life))
    if not votes:
        return SourceScores(_ints([]), _ints([]), np.zeros(0))
    # Only the rows of sources some user votes for have all their neighbours among the
    # candidates; the others' columns are left empty.
    pair_used = neighbours.pairs_of(vote_cols)
    column_of = _ints([index.get(item_id, 0) for item_id in neighbours.ids])
    cols = np.where(pair_used, column_of[neighbours.neighbour], 0)
    values = np.where(pair_used, neighbours.similarities, 0.0)
    similarity = sp.csr_matrix(
        (values, cols, neighbours.starts), shape=(len(neighbours.sources), len(index))
    )
    shape = (len(users), len(neighbours.sources))
    vote_matrix = sp.csr_matrix((votes, (vote_rows, vote_cols)), shape=shape)
    product = (vote_matrix @ similarity).tocoo()
    return SourceScores(product.row.astype(np.int64), product.col.astype(np.int64), product.data)


def _category_scores(
    users: Sequence[UserCandidates],
    category_items: Mapping[str, Sequence[tuple[str, float]]],
    index: Mapping[str, int],
) -> SourceScores:
    """Per user and item, the best ``affinity * relative popularity in the category``."""
    relative: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = {}
    pair_rows: list[int] = []  # one (user, favourite category) pair each
    pair_affinities: list[float] = []
    col_parts, value_parts = [], []
    for row, user in enumerate(users):
        for category, affinity in user.favourites:
            if affinity <= 0.0 or not category_items.get(category):
                continue
            if category not in relative:
                scores = log_scores_to_relative(category_items[category])
                relative[category] = (
                    _ints([index[i] for i in scores]),
                    np.fromiter(scores.values(), dtype=np.float64, count=len(scores)),
                )
            cols, values = relative[category]
            pair_rows.append(row)
            pair_affinities.append(affinity)
            col_parts.append(cols)
            value_parts.append(values)
    if not pair_rows:
        return SourceScores(_ints([]), _ints([]), np.zeros(0))
    lengths = [len(cols) for cols in col_parts]
    rows = np.repeat(_ints(pair_rows), lengths)
    cols = np.concatenate(col_parts)
    values = np.repeat(np.asarray(pair_affinities), lengths) * np.concatenate(value_parts)
    listed = [cols for cols, _ in relative.values()]
    if sum(map(len, listed)) == len(np.unique(np.concatenate(listed))):
        return SourceScores(rows, cols, values)  # no item in two categories: nothing to merge
    # An item in two favourite categories keeps its better score (a max, not a sum).
    order = np.lexsort((-values, cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return SourceScores(rows[first], cols[first], values[first])


def _popularity_scores(
    user_count: int, popularity: Sequence[tuple[str, float]], index: Mapping[str, int]
) -> SourceScores:
    scores = log_scores_to_relative(popularity)
    cols = _ints([index[i] for i in scores])
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    rows = np.repeat(np.arange(user_count, dtype=np.int64), len(cols))
    return SourceScores(rows, np.tile(cols, user_count), np.tile(values, user_count))


def _ints(values: Sequence[int]) -> NDArray[np.int64]:
    return np.asarray(values, dtype=np.int64)
