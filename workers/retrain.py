"""Retraining: live interactions from Redis -> ALS -> held-back check -> new model version ->
every known user's recommendations recomputed with it.

A model that fails (non-finite factors) or scores worse than the serving one on the same
held-back interactions is not published; the serving version stays.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from models.als import AlsModel, train_als
from models.serving import AlsScorer, PublishedModel
from models.training import Holdout, build_matrix, hit_rate, hold_out_latest
from shoppulse.kafka import Publisher, encode
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ModelStore
from stream.processor import SECONDS_PER_DAY, Processor
from stream.store import RedisStore, connect

log = logging.getLogger(__name__)
HOLDOUT_K = 10
REFRESH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RetrainResult:
    version: str
    published: bool
    reason: str
    users: int
    items: int
    hit_rate: float | None  # of the new model on the held-back slice
    previous_version: str | None
    previous_hit_rate: float | None
    train_seconds: float
    refreshed_users: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_version() -> str:
    return f"als-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def holdout_hit_rate(scorer: AlsScorer, holdout: Holdout, clock: float) -> float:
    """HR@10 of a model on the held-back items, users folded in from their training part, so
    the new and the serving model are judged the same way."""
    users = list(holdout.held_out)
    vectors, kept = [], []
    for user in users:
        vector = scorer.user_vector(holdout.train[user], clock)
        if vector is not None:
            vectors.append(vector)
            kept.append(user)
    if not vectors:
        return 0.0
    ranked: dict[str, list[str]] = {}
    for user, scores in zip(kept, scorer.top_items_batch(np.vstack(vectors), 200), strict=True):
        seen = {item for item, _, _ in holdout.train[user]}
        best = sorted((s, i) for i, s in scores.items() if i not in seen)[::-1]
        ranked[user] = [item for _, item in best[:HOLDOUT_K]]
    return hit_rate(ranked, holdout.held_out)


class Retrainer:
    """One namespace's retraining, against its Redis (and Kafka for publishing recs)."""

    def __init__(
        self, settings: Settings, show_progress: bool = False, publish_to_kafka: bool = True
    ) -> None:
        self.settings = settings
        self.publish_to_kafka = publish_to_kafka
        self.keys = Keys(settings.namespace)
        self.store = RedisStore(connect(settings.redis_dsn), self.keys)
        self.models = ModelStore(connect(settings.redis_dsn, decode=False), self.keys)
        self.show_progress = show_progress

    async def close(self) -> None:
        await self.store.close()
        await self.models.client.aclose()

    async def load_interactions(self) -> dict[str, list[tuple[str, float, float]]]:
        interactions: dict[str, list[tuple[str, float, float]]] = {}
        async for users in self.store.user_chunks():
            interactions.update(await self.store.interactions(users))
        return interactions

    def train(self, holdout: Holdout, clock: float, version: str) -> PublishedModel:
        """Fit ALS on the training part (raises TrainingError on a broken model)."""
        settings = self.settings
        half_life = (
            settings.training_half_life_days * SECONDS_PER_DAY
            if settings.training_half_life_days
            else None
        )
        matrix = build_matrix(holdout.train, clock, half_life)
        with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS must not
            model: AlsModel = train_als(
                matrix.values,
                factors=settings.als_factors,
                regularization=settings.als_regularization,
                iterations=settings.als_iterations,
                alpha=settings.als_alpha,
                show_progress=self.show_progress,
            )
        params = {
            "factors": settings.als_factors,
            "regularization": settings.als_regularization,
            "iterations": settings.als_iterations,
            "alpha": settings.als_alpha,
            "half_life": half_life,
            "clock": clock,
            "trained_at": time.time(),
        }
        return PublishedModel(
            version,
            matrix.item_ids,
            model.item_factors,
            matrix.user_ids,
            model.user_factors,
            params,
        )

    async def run_once(self) -> RetrainResult:
        clock = await self.store.clock() or 0.0
        interactions = await self.load_interactions()
        holdout = hold_out_latest(interactions, self.settings.holdout_users)
        version = new_version()
        started = time.monotonic()
        model = self.train(holdout, clock, version)
        train_seconds = time.monotonic() - started
        new_rate = holdout_hit_rate(AlsScorer(model), holdout, clock)
        previous = await self.models.load_current()
        old_rate = holdout_hit_rate(AlsScorer(previous), holdout, clock) if previous else None
        model.params["holdout_hit_rate"] = new_rate
        model.params["train_seconds"] = train_seconds  # for the dashboard and /metrics
        result = RetrainResult(
            version=version,
            published=False,
            reason="",
            users=len(model.user_ids),
            items=len(model.item_ids),
            hit_rate=new_rate,
            previous_version=previous.version if previous else None,
            previous_hit_rate=old_rate,
            train_seconds=train_seconds,
            refreshed_users=0,
        )
        if old_rate is not None and new_rate < old_rate:
            reason = f"held-back HR@{HOLDOUT_K} {new_rate:.4f} < serving {old_rate:.4f}"
            log.warning("not publishing %s: %s", version, reason)
            return replace(result, reason=reason)
        await self.models.publish(model)
        refreshed = await self.refresh_all(model, clock)
        return replace(result, published=True, reason="published", refreshed_users=refreshed)

    async def refresh_all(self, model: PublishedModel, clock: float) -> int:
        """Every known user's recommendations from the new model: trained user vectors in
        batched matrix products, chunk by chunk; each document also goes to the topic."""
        processor = Processor(self.store, self.settings)
        processor.use_model(model)
        rows = {user: n for n, user in enumerate(model.user_ids)}
        refreshed = 0
        topic = Topics(self.settings.namespace).recommendations
        async with AsyncExitStack() as stack:
            publisher = (
                await stack.enter_async_context(Publisher(self.settings.kafka_bootstrap))
                if self.publish_to_kafka
                else None
            )
            async for users in self.store.user_chunks(REFRESH_CHUNK):
                records, _ = await self.store.load_users(users, [])
                vectors: dict[str, NDArray[np.floating]] = {
                    user: model.user_factors[rows[user]] for user in users if user in rows
                }
                documents = await processor.refresh_recommendations(
                    list(records.values()), clock, vectors
                )
                if publisher is not None:
                    await publisher.send_many(
                        topic, [(d["user_id"].encode(), encode(d)) for d in documents]
                    )
                refreshed += len(documents)
        return refreshed
