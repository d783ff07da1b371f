"""From live interaction lists to training data, and the held-back check a new model must pass.

Interactions are what the stream keeps per user: ``(item_id, weight, ts)`` with ``weight`` the
capped sum of event weights. A training value is that weight decayed in event time from its
last interaction to the service's clock, so old tastes fade the same way everywhere.

The check (:func:`compare_hits`) is paired: both models are asked about the same held-back
interactions, and a new model is refused only when it misses significantly more of them than
the serving one finds (one-sided exact sign test on the users where the two disagree).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import binom

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
    interactions: UserInteractions,
    max_users: int,
    min_interactions: int = 3,
    seed: int = 42,
    newer_than: float | None = None,
) -> Holdout:
    """Hold back the latest interaction of up to ``max_users`` users who have enough history.

    The held-back item stays out of training entirely for that user, so a model trained on
    ``train`` has never seen the answer. With ``newer_than``, only users whose latest
    interaction is later than that time are eligible: a model trained on data up to that time
    has not seen the answer either, so the two can be compared fairly."""
    eligible = sorted(
        user
        for user, items in interactions.items()
        if len(items) >= min_interactions
        and (newer_than is None or max(ts for _, _, ts in items) > newer_than)
    )
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
    return len(found_again(ranked, held_out)) / len(held_out)


def found_again(ranked: Mapping[str, Sequence[str]], held_out: Mapping[str, str]) -> set[str]:
    """The held-out users whose held-back item is among their ranked items."""
    return {user for user, item in held_out.items() if item in ranked.get(user, ())}


def latest_time(interactions: UserInteractions) -> float | None:
    """The event time of the newest interaction (None if there is none)."""
    times = [ts for items in interactions.values() for _, _, ts in items]
    return max(times) if times else None


GATE_P_VALUE = 0.025  # refuse a new model only if it is worse with >= 97.5% confidence


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two models on the same held-back interactions, user by user."""

    users: int
    new_hits: int
    serving_hits: int
    new_only: int  # users only the new model found
    serving_only: int  # users only the serving model found
    p_value: float  # P(serving_only or more | the disagreements are coin flips)

    @property
    def new_rate(self) -> float:
        return self.new_hits / self.users if self.users else 0.0

    @property
    def serving_rate(self) -> float:
        return self.serving_hits / self.users if self.users else 0.0

    @property
    def new_is_worse(self) -> bool:
        """Significantly worse: noise (a handful of users either way) never blocks it."""
        return self.p_value < GATE_P_VALUE


def compare_hits(users: Iterable[str], new: Iterable[str], serving: Iterable[str]) -> Comparison:
    """Paired comparison of the users each model found again (``new``, ``serving``) among
    ``users``: an exact one-sided sign test (McNemar's) on the users where they disagree."""
    everyone = set(users)
    new_found, serving_found = set(new) & everyone, set(serving) & everyone
    new_only = len(new_found - serving_found)
    serving_only = len(serving_found - new_found)
    discordant = new_only + serving_only
    p_value = float(binom.sf(serving_only - 1, discordant, 0.5)) if discordant else 1.0
    return Comparison(
        len(everyone), len(new_found), len(serving_found), new_only, serving_only, p_value
    )
