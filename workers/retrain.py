"""Retraining: live interactions from Redis -> ALS -> held-back check -> new model version ->
every known user's recommendations recomputed with it.

Nothing is trained from fewer than ``MIN_USERS`` users or ``MIN_ITEMS`` items with interactions
(an empty namespace published an empty model). A model that fails (non-finite factors) or that
the held-back check finds worse than the serving one is not published; the serving version
stays. The check is fair to both models: it holds back only latest interactions *newer than
the serving model's training data* (its ``trained_through``), so neither model has seen them;
both fold the same users in from the same remaining interactions; and the new model is refused
only if it is significantly worse (see :func:`models.training.compare_hits`). Without such a
slice (no serving model yet, or ``SHOPPULSE_HOLDOUT_USERS=0``: published; nothing newer at all:
kept; only users too short to hold back: published if the parameters are the serving model's,
kept otherwise). A published model then gets the held-back users' latest interactions folded in
(:func:`models.serving.fold_in_fully`), so nobody's list lacks them.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from models.als import AlsModel, train_als
from models.serving import AlsScorer, PublishedModel, fold_in_fully, trained_through
from models.training import (
    GATE_P_VALUE,
    Comparison,
    Holdout,
    InteractionMatrix,
    UserInteractions,
    build_matrix,
    compare_hits,
    found_again,
    hold_out_latest,
    latest_time,
)
from shoppulse.kafka import Publisher, encode
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ModelStore
from stream.processor import SECONDS_PER_DAY, Processor
from stream.store import RedisStore, redis_for

log = logging.getLogger(__name__)
HOLDOUT_K = 10
REFRESH_CHUNK = 500
MIN_USERS = 2  # users with at least one positive training value
MIN_ITEMS = 2  # items with at least one positive training value
RECIPE = ("factors", "regularization", "iterations", "alpha", "half_life")


@dataclass(frozen=True, slots=True)
class RetrainResult:
    version: str
    published: bool
    reason: str
    users: int
    items: int
    hit_rate: float | None  # of the new model on the held-back slice (None: no slice)
    previous_version: str | None
    previous_hit_rate: float | None  # of the serving model on the same slice
    held_back: int  # held-back interactions the models were judged on
    train_seconds: float
    refreshed_users: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_version() -> str:
    return f"als-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def show_progress_lines() -> None:
    """Stage lines on stderr where nobody configured logging and stderr is no terminal
    (``docker compose logs``, CI): there ``implicit``'s progress bar is off. Configured
    logging (a handler on the root logger) is left alone."""
    if logging.getLogger().handlers or log.handlers or sys.stderr.isatty():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def holdout_found(scorer: AlsScorer, holdout: Holdout, clock: float) -> set[str]:
    """The held-out users whose held-back item is in a model's top 10 (their seen items left
    out), users folded in from their training part, so every model is judged the same way."""
    vectors, kept = [], []
    for user in holdout.held_out:
        vector = scorer.user_vector(holdout.train[user], clock)
        if vector is not None:
            vectors.append(vector)
            kept.append(user)
    if not vectors:
        return set()
    ranked: dict[str, list[str]] = {}
    for user, scores in zip(kept, scorer.top_items_batch(np.vstack(vectors), 200), strict=True):
        seen = {item for item, _, _ in holdout.train[user]}
        best = sorted((s, i) for i, s in scores.items() if i not in seen)[::-1]
        ranked[user] = [item for _, item in best[:HOLDOUT_K]]
    return found_again(ranked, holdout.held_out)


def holdout_hit_rate(scorer: AlsScorer, holdout: Holdout, clock: float) -> float:
    """HR@10 of a model on the held-back items (see :func:`holdout_found`)."""
    found = holdout_found(scorer, holdout, clock)
    return len(found) / len(holdout.held_out) if holdout.held_out else 0.0


def too_little_data(matrix: InteractionMatrix) -> str | None:
    """Why this matrix is too small to train on (None if it is not)."""
    users = int(np.count_nonzero(matrix.values.getnnz(axis=1)))
    items = int(np.count_nonzero(matrix.values.getnnz(axis=0)))
    if users >= MIN_USERS and items >= MIN_ITEMS:
        return None
    return (
        f"too little data: {users} users and {items} items with interactions; ALS needs at "
        f"least {MIN_USERS} users and {MIN_ITEMS} items"
    )


def same_recipe(serving: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(serving.get(name) == new.get(name) for name in RECIPE)


def verdict(
    comparison: Comparison | None,
    previous: PublishedModel | None,
    params: dict[str, Any],
    newest: float | None,
) -> tuple[bool, str]:
    """Publish or keep the serving version, and why (see the module docstring)."""
    if previous is None:
        return True, "published: no serving model to compare with"
    if comparison is None:
        return True, "published: held-back check off (holdout_users=0)"
    if comparison.users:
        figures = (
            f"held-back HR@{HOLDOUT_K} {comparison.new_rate:.4f} vs serving "
            f"{comparison.serving_rate:.4f} on {comparison.users} interactions newer than "
            f"{previous.version} (only new {comparison.new_only}, only serving "
            f"{comparison.serving_only}, p={comparison.p_value:.3g})"
        )
        if comparison.new_is_worse:
            return False, f"kept {previous.version}: significantly worse, {figures}"
        return True, f"published: not significantly worse (p >= {GATE_P_VALUE}), {figures}"
    through = trained_through(previous)
    if newest is None or (through is not None and newest <= through):
        return False, f"kept {previous.version}: nothing newer than its data, no fair check"
    if same_recipe(previous.params, params):
        return True, "published: no fair held-back slice, same parameters on newer data"
    return False, f"kept {previous.version}: no fair held-back slice and parameters differ"


class Retrainer:
    """One namespace's retraining, against its Redis (and Kafka for publishing recs)."""

    def __init__(
        self, settings: Settings, show_progress: bool = False, publish_to_kafka: bool = True
    ) -> None:
        self.settings = settings
        self.publish_to_kafka = publish_to_kafka
        self.keys = Keys.of(settings)
        self.store = RedisStore(redis_for(settings), self.keys)
        self.models = ModelStore(redis_for(settings, decode=False), self.keys)
        self.show_progress = show_progress
        show_progress_lines()

    async def close(self) -> None:
        await self.store.close()
        await self.models.client.aclose()

    async def load_interactions(self) -> dict[str, list[tuple[str, float, float]]]:
        interactions: dict[str, list[tuple[str, float, float]]] = {}
        async for users in self.store.user_chunks():
            interactions.update(await self.store.interactions(users))
        return interactions

    @property
    def half_life(self) -> float | None:
        days = self.settings.training_half_life_days
        return days * SECONDS_PER_DAY if days else None

    def hold_out(self, interactions: UserInteractions, previous: PublishedModel | None) -> Holdout:
        """The held-back slice: any eligible user's latest interaction without a serving
        model; with one, only those newer than its training data (none if it has no date)."""
        wanted = self.settings.holdout_users
        if previous is None:
            return hold_out_latest(interactions, wanted)
        through = trained_through(previous)
        if through is None:
            return hold_out_latest(interactions, 0)
        return hold_out_latest(interactions, wanted, newer_than=through)

    def params(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "factors": settings.als_factors,
            "regularization": settings.als_regularization,
            "iterations": settings.als_iterations,
            "alpha": settings.als_alpha,
            "half_life": self.half_life,
        }

    def train(self, matrix: InteractionMatrix, clock: float, version: str) -> PublishedModel:
        """Fit ALS on the training matrix (raises TrainingError on a broken model)."""
        params = self.params()
        log.info(
            "training %s: %d factors, regularization %g, %d iterations, alpha %g on %d users x "
            "%d items (%d values)",
            version,
            params["factors"],
            params["regularization"],
            params["iterations"],
            params["alpha"],
            *matrix.values.shape,
            matrix.values.nnz,
        )
        with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS must not
            model: AlsModel = train_als(
                matrix.values,
                factors=params["factors"],
                regularization=params["regularization"],
                iterations=params["iterations"],
                alpha=params["alpha"],
                show_progress=self.show_progress,
            )
        params.update(clock=clock, trained_at=time.time())
        return PublishedModel(
            version,
            matrix.item_ids,
            model.item_factors,
            matrix.user_ids,
            model.user_factors,
            params,
        )

    def compare(
        self, model: PublishedModel, previous: PublishedModel | None, holdout: Holdout, clock: float
    ) -> tuple[float | None, Comparison | None]:
        """The new model's held-back hit rate (None without a slice), and the paired
        comparison with the serving one on the same slice (None: nothing to compare)."""
        new = holdout_found(AlsScorer(model), holdout, clock)
        rate = len(new) / len(holdout.held_out) if holdout.held_out else None
        if previous is None or self.settings.holdout_users == 0:
            return rate, None
        serving = holdout_found(AlsScorer(previous), holdout, clock)
        return rate, compare_hits(holdout.held_out, new, serving)

    async def run_once(self) -> RetrainResult:
        clock = await self.store.clock() or 0.0
        interactions = await self.load_interactions()
        previous = await self.models.load_current()
        log.info(
            "ALS retrain of %s: loaded %d users (%d interactions); serving %s",
            self.settings.namespace,
            len(interactions),
            sum(len(items) for items in interactions.values()),
            previous.version if previous else "none",
        )
        holdout = self.hold_out(interactions, previous)
        matrix = build_matrix(holdout.train, clock, self.half_life)
        result = RetrainResult(
            version=new_version(),
            published=False,
            reason="",
            users=len(matrix.user_ids),
            items=len(matrix.item_ids),
            hit_rate=None,
            previous_version=previous.version if previous else None,
            previous_hit_rate=None,
            held_back=len(holdout.held_out),
            train_seconds=0.0,
            refreshed_users=0,
        )
        short = too_little_data(matrix)
        if short is not None:
            return self.kept(result, short)
        started = time.monotonic()
        model = self.train(matrix, clock, result.version)
        result = replace(result, train_seconds=time.monotonic() - started)
        log.info("trained %s in %.1fs", result.version, result.train_seconds)
        rate, comparison = self.compare(model, previous, holdout, clock)
        publish, reason = verdict(comparison, previous, model.params, latest_time(interactions))
        result = replace(
            result,
            reason=reason,
            hit_rate=rate,
            previous_hit_rate=comparison.serving_rate if comparison and comparison.users else None,
        )
        if not publish:
            return self.kept(result, reason)
        log.info(
            "held-back check of %s (its HR@%d %s on %d held back): %s",
            result.version,
            HOLDOUT_K,
            "n/a" if rate is None else f"{rate:.4f}",
            result.held_back,
            reason,
        )
        return await self.publish(
            fold_in_fully(model, interactions, holdout.held_out, clock), result, interactions, clock
        )

    async def publish(
        self,
        model: PublishedModel,
        result: RetrainResult,
        interactions: UserInteractions,
        clock: float,
    ) -> RetrainResult:
        """Publish the model (held-back users folded in fully), then recompute every list."""
        if result.hit_rate is not None:
            model.params["holdout_hit_rate"] = result.hit_rate
        model.params.update(
            holdout_users=result.held_back,
            trained_through=latest_time(interactions),
            train_seconds=result.train_seconds,  # for the dashboard and /metrics
        )
        await self.models.publish(model)
        log.info(
            "published %s (%d users x %d items); recomputing every list",
            model.version,
            len(model.user_ids),
            len(model.item_ids),
        )
        refreshed = await self.refresh_all(model, clock)
        log.info("recomputed %d users' recommendations with %s", refreshed, model.version)
        return replace(
            result,
            published=True,
            users=len(model.user_ids),
            items=len(model.item_ids),
            refreshed_users=refreshed,
        )

    def kept(self, result: RetrainResult, reason: str) -> RetrainResult:
        log.warning(
            "not publishing %s: %s; serving version stays: %s",
            result.version,
            reason,
            result.previous_version or "none",
        )
        return replace(result, reason=reason)

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
                versions = {user: record.version for user, record in records.items()}
                documents = await processor.refresh_recommendations(
                    list(records.values()), clock, vectors, versions
                )
                if publisher is not None:
                    await publisher.send_many(
                        topic, [(d["user_id"].encode(), encode(d)) for d in documents]
                    )
                refreshed += len(documents)
        return refreshed
