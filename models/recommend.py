"""Candidate sources and the blend that turns them into one ranked, filtered list.

Each source maps item ids to non-negative scores on its own scale. :func:`blend` rescales every
source to [0, 1] by its best score, weights it, sums per item, and labels each item with the
source that contributed most. New sources (ALS, anything else) plug in by name: the blend only
needs their scores and a weight.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from models.decay import decay_factor

_SCORE_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Recommendation:
    item_id: str
    score: float
    source: str


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
