"""Churn risk in the stream: history and alert state inside each user's state, scoring with
the published churn and segment models, alert documents, and re-scoring everyone when the
event-time clock crosses a UTC day or a new model goes live.

Where things live:

* ``state["churn"]``: the user's :class:`models.churn_features.ChurnHistory` (capped), and
  ``state["alert"]``: their :class:`models.alerts.AlertState`. Both are part of the user's
  internal state, so they commit in the same version-checked Lua script as the rest of the
  batch: an event that was applied is in the history exactly once.
* The profile's ``churn_risk``, ``churn_as_of``, ``segment`` and ``clv``; the sorted set
  ``{ns}:risk`` (user -> risk) and the list ``{ns}:alerts`` (the last
  :data:`stream.store.ALERTS_KEPT` alerts)
  are written by the same scripts.
* The models: :class:`stream.model_store.ChurnModelStore` (JSON, never pickles).

Without a churn model nothing is scored: ``churn_risk`` stays null rather than a made-up number.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.alerts import AlertPolicy, AlertState, alert_id, update_alert
from models.churn import ChurnModel, reasons
from models.churn_features import (
    DAY,
    ChurnHistory,
    HistoryCaps,
    features_as_of,
    is_customer,
)
from models.profile import Interaction, Order, UserRecord
from models.segments import SegmentModel
from shoppulse.errors import ShopPulseError
from shoppulse.settings import Settings
from stream.model_store import ChurnModels, ChurnModelStore
from stream.store import RedisStore

log = logging.getLogger(__name__)


RESCORE_CHUNK = 500
RESCORE_ATTEMPTS = 3  # re-reads of users whose version moved during a re-score
MARKER_TTL_SECONDS = 14 * 86_400


@dataclass(frozen=True, slots=True)
class ChurnConfig:
    """What the stream needs from the settings for churn."""

    caps: HistoryCaps
    policy: AlertPolicy
    horizon_days: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ChurnConfig:
        return cls(
            caps=HistoryCaps(
                orders=settings.churn_orders_cap, click_days=settings.churn_click_days_cap
            ),
            policy=AlertPolicy(
                threshold=settings.churn_alert_threshold,
                margin=settings.churn_alert_margin,
                cooldown_seconds=settings.churn_alert_cooldown_days * DAY,
                alert_on_first_score=settings.churn_alert_on_first_score,
            ),
            horizon_days=settings.churn_horizon_days,
        )


# -- recording events ---------------------------------------------------------------------------


def history_of(record: UserRecord) -> ChurnHistory:
    raw = record.state.get("churn")
    return ChurnHistory.from_dict(raw) if raw is not None else ChurnHistory()


def changes_history(record: UserRecord, event: Interaction | Order) -> bool:
    """Whether ``event``, if the record applies it, belongs in the churn history. Ask *before*
    applying: a second ``placed`` of a known order id and a second cancellation of an order
    pass the event-id dedupe but change nothing (mirrors :class:`UserRecord`)."""
    if isinstance(event, Interaction):
        return True
    return record.order_changes(event)


def record_event(history: ChurnHistory, event: Interaction | Order, caps: HistoryCaps) -> None:
    if isinstance(event, Order):
        history.record_order(event.ts, event.amount, event.status, caps)
    else:
        history.record_click(event.ts, event.kind, event.session_id, caps)


def store_history(record: UserRecord, history: ChurnHistory) -> None:
    record.state["churn"] = history.to_dict()


# -- scoring ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Scores:
    """What scoring some users produced, to be written with their records."""

    risks: list[tuple[str, float]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


def score_records(
    records: Sequence[UserRecord], clock: float, models: ChurnModels, config: ChurnConfig
) -> Scores:
    """Score every customer among ``records`` as of ``clock``: profile fields and alert state
    updated in place; returns the risks and the alerts that fired."""
    scores = Scores()
    rows: list[tuple[UserRecord, dict[str, float]]] = []
    for record in records:
        scored_at = (record.state.get("alert") or {}).get("scored_at")
        if scored_at is not None and scored_at > clock:
            continue  # already scored as of a later moment (a newer event batch)
        features = features_as_of(history_of(record), clock)
        if is_customer(features):
            rows.append((record, features))
    if not rows:
        return scores
    model = models.churn
    risks = model.score_many([features for _, features in rows])
    for (record, features), value in zip(rows, risks, strict=True):
        risk = float(value)
        _write_profile(record, features, risk, clock, model, models.segments)
        scores.risks.append((record.user_id, risk))
        state = AlertState.from_dict(record.state.get("alert") or {})
        state, alert = update_alert(state, risk, clock, config.policy)
        record.state["alert"] = state.to_dict()
        if alert is not None:
            scores.alerts.append(
                {
                    "alert_id": alert_id(record.user_id, alert.as_of),
                    "user_id": record.user_id,
                    "risk": alert.risk,
                    "previous_risk": alert.previous_risk,
                    "threshold": alert.threshold,
                    "as_of": alert.as_of,
                    "model_version": models.version,
                    "reasons": reasons(features, model),
                }
            )
    return scores


def _write_profile(
    record: UserRecord,
    features: dict[str, float],
    risk: float,
    clock: float,
    model: ChurnModel,
    segments: SegmentModel | None,
) -> None:
    profile = record.profile
    profile["churn_risk"] = risk
    profile["churn_as_of"] = clock
    if segments is not None:
        profile["segment"] = segments.segment(features)
        profile["clv"] = round(segments.clv(features, risk, model.horizon_days), 2)


# -- the service in a worker --------------------------------------------------------------------


class ChurnService:
    """Follows the published churn model, and re-scores everyone when the clock crosses a UTC
    day or a new model goes live (one worker per day or version: a SET NX marker decides).

    In a worker the re-scoring runs as a background task beside event processing (each chunk is
    version-checked, so it never overwrites what an event batch wrote); the alerts it fires are
    handed out by :meth:`take_alerts`, which the next batch and a timer of the app call."""

    def __init__(self, store: RedisStore, settings: Settings) -> None:
        self.store = store
        self.config = ChurnConfig.from_settings(settings)
        self.models_store = ChurnModelStore(store.client, store.keys)
        self.models: ChurnModels | None = None
        self.refused_models: set[str] = set()  # versions that failed to decode
        self._day: int | None = None  # the last day this worker checked the marker for
        self.clock = -math.inf  # the highest service clock this worker has seen
        self._task: asyncio.Task[None] | None = None  # the running background re-score
        self._again_at: float | None = None  # re-score again as of this clock when it ends
        self._ready: list[dict[str, Any]] = []  # alerts of background re-scores, not yet out

    async def follow(self) -> bool:
        """Switch to the published churn version if it changed (one GET). True if it did."""
        return await self.follow_version(await self.models_store.current_version())

    async def follow_version(self, version: str | None) -> bool:
        """Switch to churn ``version`` (the current one, as read) unless already scoring with
        it. True if it switched."""
        if version is None or version in self.refused_models:
            return False
        if self.models is not None and self.models.version == version:
            return False
        try:
            models = await self.models_store.load(version)
        except ShopPulseError as exc:
            # A broken version must not stop the stream: keep scoring with the one in hand.
            self.refused_models.add(version)
            serving = self.models.version if self.models is not None else None
            log.error("refusing churn model %s (%s); still scoring with %s", version, exc, serving)
            return False
        if models is None:
            return False
        self.models = models
        log.info("now scoring churn with model %s", version)
        return True

    def score(self, records: Sequence[UserRecord], clock: float) -> Scores:
        if self.models is None:
            return Scores()
        return score_records(records, clock, self.models, self.config)

    async def claim(self, token: str) -> bool:
        """True for the one caller that claims re-scoring for ``token``."""
        marker = self.store.keys.rescore_marker(token)
        claimed = await self.store.client.set(marker, "1", nx=True, ex=MARKER_TTL_SECONDS)
        return bool(claimed)

    def take_alerts(self) -> list[dict[str, Any]]:
        """Alerts that background re-scoring fired since the last call (already in Redis)."""
        alerts, self._ready = self._ready, []
        return alerts

    async def after_batch(self, clock: float, model_changed: bool) -> list[dict[str, Any]]:
        """Start re-scoring everyone in the background if this batch moved the clock into a new
        UTC day, or a new model is live, and this worker claims it; returns the alerts that
        background re-scoring has fired so far."""
        self.clock = max(self.clock, clock)
        if self.models is None:
            return []
        due = False
        if model_changed and await self.claim(f"model-{self.models.version}"):
            due = True
        day = math.floor(clock / DAY)
        if self._day is None or day > self._day:
            self._day = day
            if await self.claim(f"day-{day}"):
                due = True
        if due:
            if self._task is not None and not self._task.done():
                self._again_at = clock  # one more pass, as of the newest clock, when it ends
            else:
                self._task = asyncio.create_task(self._rescore_in_background(clock))
        return self.take_alerts()

    async def _rescore_in_background(self, clock: float) -> None:
        while True:
            try:
                await self.rescore_all(clock, lambda fired: self._ready.extend(fired))
            except Exception:
                # Logged, never dropped silently: the users not reached keep their last score
                # until their next event, the next UTC day or the next model.
                log.exception("re-scoring everyone as of %.0f failed", clock)
            if self._again_at is None:
                return
            clock, self._again_at = self._again_at, None

    async def rescore_all(
        self, clock: float, on_alerts: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Every known customer's risk as of ``clock``, chunk by chunk: one pipelined read and
        one atomic, version-checked write per chunk. A user whose version moved meanwhile (an
        event batch got there first) is re-read and tried again. The alerts that fired are
        returned, and also passed to ``on_alerts`` chunk by chunk as they are written."""
        if self.models is None:
            return []
        alerts: list[dict[str, Any]] = []
        scored = 0
        async for users in self.store.user_chunks(RESCORE_CHUNK):
            pending = users
            for _ in range(RESCORE_ATTEMPTS):
                records, _ = await self.store.load_users(pending, [])
                batch = list(records.values())
                scores = score_records(batch, clock, self.models, self.config)
                scored_users = {user for user, _ in scores.risks}
                changed = [r for r in batch if r.user_id in scored_users]
                stale = await self.store.commit_scores(changed, scores.risks, scores.alerts)
                stale_set = set(stale)
                fired = [a for a in scores.alerts if a["user_id"] not in stale_set]
                alerts += fired
                if on_alerts is not None and fired:
                    on_alerts(fired)
                scored += len(changed) - len(stale_set)
                if not stale:
                    break
                pending = stale
            await asyncio.sleep(0)  # let the worker's other tasks (heartbeats, agents) run
        log.info("re-scored %d customers as of %.0f: %d alerts", scored, clock, len(alerts))
        return alerts


class BatchHistories:
    """The churn histories a batch touches, read from the records once and written back once."""

    def __init__(self, caps: HistoryCaps) -> None:
        self.caps = caps
        self.histories: dict[str, ChurnHistory] = {}

    def record(self, record: UserRecord, event: Interaction | Order) -> None:
        history = self.histories.get(record.user_id)
        if history is None:
            history = self.histories[record.user_id] = history_of(record)
        record_event(history, event, self.caps)

    def write_back(self, records: dict[str, UserRecord]) -> None:
        for user_id, history in self.histories.items():
            store_history(records[user_id], history)
