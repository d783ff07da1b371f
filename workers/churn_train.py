"""Churn and segment retraining from the service's own history in Redis.

Every known user's churn history (``state["churn"]``) is read chunk by chunk; training
examples are their features as of ``SHOPPULSE_CHURN_TRAINING_CUTOFFS`` past cutoffs,
``SHOPPULSE_CHURN_CUTOFF_SPACING_DAYS`` apart, labelled with what happened in the
``SHOPPULSE_CHURN_HORIZON_DAYS`` after each (only cutoffs whose horizon is over by the clock);
segments are K-means on the customers' RFM features as of the clock. Both are published as one
version of JSON documents (:class:`stream.model_store.ChurnModelStore`), and then every
customer is re-scored with it and the alerts that fire are published.

Too little history (too few examples of either class) is not an error of the service: the
training is skipped with the reason, and the serving version (or none) stays.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from threadpoolctl import threadpool_limits

from models.churn import ChurnModelError, build_training_set, fit_churn_model, training_cutoffs
from models.churn_features import ChurnHistory, features_as_of, is_customer
from models.segments import SegmentModel, SegmentModelError, fit_segments
from shoppulse.kafka import Publisher, encode
from shoppulse.settings import Settings
from stream.churn import ChurnService
from stream.keys import Keys, Topics
from stream.model_store import ChurnModels, ChurnModelStore
from stream.store import RedisStore, redis_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChurnTrainResult:
    version: str
    published: bool
    reason: str
    users: int
    customers: int
    training_rows: int
    training_churn_rate: float | None
    cutoffs: list[float]
    validation: dict[str, float]  # out-of-fold figures of the new model
    segments: list[str]
    train_seconds: float
    rescored_alerts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_version() -> str:
    return f"churn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def train_models(
    histories: dict[str, ChurnHistory], clock: float, settings: Settings, version: str
) -> tuple[ChurnModels | None, ChurnTrainResult]:
    """Fit the churn model and segments (pure: no I/O). ``None`` with the reason when the
    history cannot support a churn model yet."""
    started = time.monotonic()
    horizon = settings.churn_horizon_days
    cutoffs = training_cutoffs(
        clock, horizon, settings.churn_training_cutoffs, settings.churn_cutoff_spacing_days
    )
    customers = [
        f for f in (features_as_of(h, clock) for h in histories.values()) if is_customer(f)
    ]
    training = build_training_set(histories, cutoffs, horizon, data_end=clock)
    result = ChurnTrainResult(
        version=version,
        published=False,
        reason="",
        users=len(histories),
        customers=len(customers),
        training_rows=len(training),
        training_churn_rate=float(training.labels.mean()) if len(training) else None,
        cutoffs=list(training.used_cutoffs),
        validation={},
        segments=[],
        train_seconds=0.0,
        rescored_alerts=0,
    )
    if not training.used_cutoffs:
        reason = f"no cutoff has a whole {horizon:g}-day horizon of history before the clock yet"
        return None, _with(result, reason=reason)
    with threadpool_limits(limits=1):
        try:
            churn = fit_churn_model(training, version)
        except ChurnModelError as exc:
            return None, _with(result, reason=str(exc))
        segments: SegmentModel | None
        try:
            segments = fit_segments(customers, version, k=settings.segments)
        except SegmentModelError as exc:
            log.warning("no segments in %s: %s", version, exc)
            segments = None
    validation = dict(churn.params.get("validation", {}))
    seconds = time.monotonic() - started
    return ChurnModels(version, churn, segments, seconds), _with(
        result,
        validation={k: float(v) for k, v in validation.items()},
        segments=list(segments.labels) if segments else [],
        train_seconds=seconds,
    )


def _with(result: ChurnTrainResult, **changes: Any) -> ChurnTrainResult:
    return ChurnTrainResult(**{**asdict(result), **changes})


class ChurnTrainer:
    """One namespace's churn retraining, against its Redis (and Kafka for the alerts)."""

    def __init__(self, settings: Settings, publish_to_kafka: bool = True) -> None:
        self.settings = settings
        self.publish_to_kafka = publish_to_kafka
        self.keys = Keys.of(settings)
        self.store = RedisStore(redis_for(settings), self.keys)
        self.models = ChurnModelStore(self.store.client, self.keys)

    async def close(self) -> None:
        await self.store.close()

    async def load_histories(self) -> dict[str, ChurnHistory]:
        histories: dict[str, ChurnHistory] = {}
        async for users in self.store.user_chunks():
            for user, raw in (await self.store.churn_histories(users)).items():
                histories[user] = ChurnHistory.from_dict(raw)
        return histories

    async def run_once(self) -> ChurnTrainResult:
        clock = await self.store.clock()
        version = new_version()
        histories = await self.load_histories()
        if clock is None or not histories:
            empty = ChurnTrainResult(
                version, False, "no history yet", 0, 0, 0, None, [], {}, [], 0, 0
            )
            return empty
        models, result = train_models(histories, clock, self.settings, version)
        if models is None:
            log.warning("churn model not trained: %s; the serving version stays", result.reason)
            return result
        # Claim the re-scoring of this version before it goes live, so workers leave it to us.
        service = ChurnService(self.store, self.settings)
        await service.claim(f"model-{version}")
        await self.models.publish(models)
        await service.follow()
        alerts = await service.rescore_all(clock)
        await self._publish_alerts(alerts)
        return _with(result, published=True, reason="published", rescored_alerts=len(alerts))

    async def _publish_alerts(self, alerts: list[dict[str, Any]]) -> None:
        if not self.publish_to_kafka:  # evaluation: nobody subscribes, nothing to resend
            await self.store.confirm_alerts(alerts)
            return
        if not alerts:
            return
        topic = Topics(self.settings.namespace).churn_alerts
        async with AsyncExitStack() as stack:
            publisher = await stack.enter_async_context(Publisher(self.settings.kafka_bootstrap))
            await publisher.send_many(topic, [(a["user_id"].encode(), encode(a)) for a in alerts])
        await self.store.confirm_alerts(alerts)  # on Kafka now: out of the outbox
