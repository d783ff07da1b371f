"""A trained ALS model as data: arrays and plain parameters in, arrays out, never a pickle.

:func:`encode_model` turns a :class:`PublishedModel` into flat fields of bytes (raw little-endian
float32 factors, UTF-8 JSON for ids and parameters) that any store can hold;
:func:`decode_model` checks every shape and value before trusting them. :class:`AlsScorer` is
what a stream worker keeps in memory: item factors and their Gram matrix, so that folding in a
user's current interactions costs one small solve. :func:`fold_in_fully` completes a model
trained without some users' latest interactions (the held-back check's) before it is published.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from models.als import TrainingError, fold_in_user
from models.training import UserInteractions, training_value

FORMAT = "shoppulse-als-1"
_DTYPE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """Everything a worker needs to score with a model, and what it was trained with."""

    version: str
    item_ids: list[str]
    item_factors: NDArray[np.float32]
    user_ids: list[str]
    user_factors: NDArray[np.float32]
    params: dict[str, Any] = field(default_factory=dict)


def encode_model(model: PublishedModel) -> dict[str, bytes]:
    """Flat fields of bytes; ``decode_model`` is the inverse."""
    header = {
        "format": FORMAT,
        "version": model.version,
        "factors": int(model.item_factors.shape[1]) if model.item_factors.ndim == 2 else 0,
        "items": len(model.item_ids),
        "users": len(model.user_ids),
        "params": model.params,
    }
    return {
        "header": orjson.dumps(header),
        "item_ids": orjson.dumps(model.item_ids),
        "user_ids": orjson.dumps(model.user_ids),
        "item_factors": np.ascontiguousarray(model.item_factors, dtype=_DTYPE).tobytes(),
        "user_factors": np.ascontiguousarray(model.user_factors, dtype=_DTYPE).tobytes(),
    }


def decode_model(
    fields: dict[bytes, bytes] | dict[str, bytes], with_users: bool = True
) -> PublishedModel:
    """Rebuild a model from ``encode_model``'s fields, refusing anything inconsistent."""
    get = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
    try:
        header = orjson.loads(get["header"])
        item_ids = [str(i) for i in orjson.loads(get["item_ids"])]
        user_ids = [str(u) for u in orjson.loads(get["user_ids"])] if with_users else []
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise TrainingError(f"model fields are incomplete or not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TrainingError("model header is not a JSON object")
    if header.get("format") != FORMAT:
        raise TrainingError(f"unknown model format {header.get('format')!r}")
    missing = [name for name in ("version", "factors", "params") if name not in header]
    if missing:
        raise TrainingError(f"model header lacks {missing}")
    if not isinstance(header["params"], dict):
        raise TrainingError("model params are not a JSON object")
    try:
        factors = int(header["factors"])
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"model factors is not a number: {header['factors']!r}") from exc
    item_factors = _matrix(get.get("item_factors", b""), len(item_ids), factors, "item")
    user_factors = (
        _matrix(get.get("user_factors", b""), len(user_ids), factors, "user")
        if with_users
        else np.zeros((0, factors), dtype=np.float32)
    )
    return PublishedModel(
        str(header["version"]), item_ids, item_factors, user_ids, user_factors, header["params"]
    )


def _matrix(raw: bytes, rows: int, columns: int, name: str) -> NDArray[np.float32]:
    if len(raw) != rows * columns * _DTYPE.itemsize:
        raise TrainingError(f"{name} factors hold {len(raw)} bytes, expected {rows}x{columns}")
    matrix = np.frombuffer(raw, dtype=_DTYPE).reshape(rows, columns).astype(np.float32)
    if not np.isfinite(matrix).all():
        raise TrainingError(f"{name} factors are not all finite")
    return matrix


class AlsScorer:
    """Scores items for a user by folding their current interactions into a trained model."""

    def __init__(self, model: PublishedModel) -> None:
        self.version = model.version
        self.item_ids = model.item_ids
        self.index = {item_id: n for n, item_id in enumerate(model.item_ids)}
        self.item_factors = model.item_factors.astype(np.float64)
        self.regularization = float(model.params.get("regularization", 0.01))
        self.alpha = float(model.params.get("alpha", 1.0))
        half_life = model.params.get("half_life")
        self.half_life = float(half_life) if half_life is not None else None
        factors = self.item_factors.shape[1]
        # YᵀY + λI is shared by every user: compute it once per model.
        self.gram = self.item_factors.T @ self.item_factors + self.regularization * np.eye(factors)

    def user_vector(
        self, interactions: Sequence[tuple[str, float, float]], clock: float
    ) -> NDArray[np.float64] | None:
        """The least-squares user vector for these interactions (None if none is known)."""
        # Summed per item first, as build_matrix does for training: no train/serve skew.
        values: dict[int, float] = {}
        for item, weight, ts in interactions:
            row = self.index.get(item)
            if row is not None:
                value = training_value(weight, ts, clock, self.half_life)
                values[row] = values.get(row, 0.0) + value
        known = [(row, value) for row, value in values.items() if value > 0.0]
        if not known:
            return None
        rows = self.item_factors[[row for row, _ in known]]
        confidence = self.alpha * np.asarray([value for _, value in known])
        a = self.gram + (rows * (confidence - 1.0)[:, None]).T @ rows
        b = rows.T @ confidence
        return np.asarray(np.linalg.solve(a, b), dtype=np.float64)

    def top_items(self, vector: NDArray[np.floating], n: int) -> dict[str, float]:
        """The ``n`` best items for a user vector, as item id -> score."""
        return self.top_items_batch(np.atleast_2d(vector), n)[0]

    def top_items_batch(self, vectors: NDArray[np.floating], n: int) -> list[dict[str, float]]:
        """Best ``n`` items per row of ``vectors``: one matrix product for the whole batch."""
        if len(vectors) == 0:
            return []
        scores = np.asarray(vectors, dtype=np.float64) @ self.item_factors.T
        n = min(n, scores.shape[1])
        best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        return [
            {self.item_ids[i]: float(row_scores[i]) for i in row_best}
            for row_best, row_scores in zip(best, scores, strict=True)
        ]


def trained_through(model: PublishedModel) -> float | None:
    """The event time the model's training data reaches: ``trained_through`` in its parameters
    or, for versions published before that was recorded, the ``clock`` it was trained at; None
    when neither is a finite number."""
    for name in ("trained_through", "clock"):
        value = model.params.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def fold_in_fully(
    model: PublishedModel, interactions: UserInteractions, users: Iterable[str], clock: float
) -> PublishedModel:
    """The model with these users' vectors solved from all their ``interactions`` (ALS's user
    step, item factors fixed), after one ALS item step has added the items only they had.

    For the users whose latest interaction was held back from training: once the model has
    passed the check, it must know that interaction too."""
    rows = {user: n for n, user in enumerate(model.user_ids)}
    chosen = sorted({user for user in users if user in rows})
    extended = _add_items(model, interactions, chosen, rows, clock)
    scorer = AlsScorer(extended)
    user_factors = extended.user_factors.copy()
    for user in chosen:
        vector = scorer.user_vector(interactions.get(user, ()), clock)
        if vector is not None:
            user_factors[rows[user]] = vector
    return replace(extended, user_factors=user_factors)


def _add_items(
    model: PublishedModel,
    interactions: UserInteractions,
    users: Sequence[str],
    rows: dict[str, int],
    clock: float,
) -> PublishedModel:
    """Items the model lacks that these users interacted with, each solved from its users'
    trained vectors (ALS's item step with the user factors fixed), appended to the model."""
    scorer = AlsScorer(model)
    raters: dict[str, dict[int, float]] = {}
    for user in users:
        for item, weight, ts in interactions.get(user, ()):
            if item not in scorer.index:
                values = raters.setdefault(item, {})
                value = training_value(weight, ts, clock, scorer.half_life)
                values[rows[user]] = values.get(rows[user], 0.0) + value
    positive = {
        item: {row: value for row, value in values.items() if value > 0.0}
        for item, values in raters.items()
    }
    new = {item: values for item, values in positive.items() if values}
    if not new:
        return model
    x = model.user_factors.astype(np.float64)
    gram = x.T @ x
    vectors = [
        fold_in_user(
            x, list(values), list(values.values()), scorer.regularization, scorer.alpha, gram
        )
        for values in new.values()
    ]
    return replace(
        model,
        item_ids=[*model.item_ids, *new],
        item_factors=np.vstack([model.item_factors, *vectors]).astype(np.float32),
    )
