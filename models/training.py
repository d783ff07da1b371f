"""From live interaction lists to training data, and the held-back check a new model must pass.

Interactions are what the stream keeps per user: ``(item_id, weight, ts)`` with ``weight`` the
capped sum of event weights. A training value is that weight decayed in event time from its
last interaction to the service's clock, so old tastes fade the same way everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.decay import decay_factor

UserInteractions = Mapping[str, Sequence[tuple[str, float, float]]]


@dataclass(frozen=True, slots=True)
class InteractionMatrix:
    """A users x items CSR matrix of training values, with the ids of its rows and columns."""

    user_ids: list[str]
    item_ids: list[str]
    values: sp.csr_matrix

    def item_index(self) -> dict[str, int]:
        return {item_id: n for n, item_id in enumerate(self.item_ids)}


def training_value(weight: float, ts: float, clock: float, half_life: float | None) -> float:
    """One interaction's value: its weight, decayed from its time to the clock."""
    if half_life is None:
        return weight
    return weight * decay_factor(clock - ts, half_life)


def build_matrix(
    interactions: UserInteractions, clock: float, half_life: float | None
) -> InteractionMatrix:
    """Rows in the order of ``interactions``; columns in order of first appearance."""
    user_ids = list(interactions)
    item_index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    data: list[float] = []
    for row, user_id in enumerate(user_ids):
        for item_id, weight, ts in interactions[user_id]:
            # Judged in float32, the matrix's type: a value that underflows it is a zero.
            value = float(np.float32(training_value(weight, ts, clock, half_life)))
            if value <= 0.0:
                continue
            rows.append(row)
            cols.append(item_index.setdefault(item_id, len(item_index)))
            data.append(value)
    matrix = sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), (rows, cols)),
        shape=(len(user_ids), len(item_index)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    return InteractionMatrix(user_ids, list(item_index), matrix)


@dataclass(frozen=True, slots=True)
class Holdout:
    """Training interactions with each sampled user's latest interaction held back."""

    train: dict[str, list[tuple[str, float, float]]]
    held_out: dict[str, str]  # user -> the item to find again


def hold_out_latest(
    interactions: UserInteractions, max_users: int, min_interactions: int = 3, seed: int = 42
) -> Holdout:
    """Hold back the latest interaction of up to ``max_users`` users who have enough history.

    The held-back item stays out of training entirely for that user, so a model trained on
    ``train`` has never seen the answer."""
    eligible = sorted(u for u, items in interactions.items() if len(items) >= min_interactions)
    chosen = set(random.Random(seed).sample(eligible, min(max_users, len(eligible))))
    train: dict[str, list[tuple[str, float, float]]] = {}
    held_out: dict[str, str] = {}
    for user_id, items in interactions.items():
        ordered = sorted(items, key=lambda entry: (-entry[2], entry[0]))
        if user_id in chosen:
            answer = ordered[0][0]
            held_out[user_id] = answer
            train[user_id] = [entry for entry in ordered if entry[0] != answer]
        else:
            train[user_id] = list(ordered)
    return Holdout(train, held_out)


def hit_rate(ranked: Mapping[str, Sequence[str]], held_out: Mapping[str, str]) -> float:
    """Share of held-out users whose held-back item is among their ranked items."""
    if not held_out:
        return 0.0
    hits = sum(1 for user, item in held_out.items() if item in ranked.get(user, ()))
    return hits / len(held_out)
