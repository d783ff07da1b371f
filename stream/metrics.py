"""Prometheus metrics of a stream worker: every series is prefixed ``shoppulse_``.

The worker records into one :data:`METRICS` (its own registry, so tests can build fresh
:class:`Metrics` objects); ``/metrics`` on the worker's web server (stream/web.py) serves it.
Label values are bounded: topics are the namespace's topics, dead-letter reasons are mapped to
a few classes by :func:`reason_class`, model versions are the last few published.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import SecretStr

from stream.privacy import user_key

__all__ = [
    "CONTENT_TYPE",
    "METRICS",
    "REASON_CLASSES",
    "Metrics",
    "reason_class",
    "record_batch",
]

#: Prometheus text exposition format 0.0.4 (UTF-8; the web driver refuses a charset here).
CONTENT_TYPE = "text/plain; version=0.0.4"

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: Dead-letter reason classes (the ``reason`` label); anything else is ``other``.
REASON_CLASSES = ("invalid_json", "not_an_object", "validation", "internal", "unexpected_topic")


def reason_class(reason: str) -> str:
    """Map a readable dead-letter reason to one of a few label values."""
    if reason.startswith("not valid JSON"):
        return "invalid_json"
    if reason.startswith("expected a JSON object"):
        return "not_an_object"
    if reason.startswith("internal error"):
        return "internal"
    if reason.startswith("unexpected topic"):
        return "unexpected_topic"
    # Validation reasons name a field first: "user_id: must not be empty; ts: ...".
    head = reason.split(":", 1)[0]
    if ":" in reason and head and " " not in head.strip():
        return "validation"
    return "other"


def split_outcome(
    topics: Sequence[str], dead_topics: Iterable[str], applied: int
) -> dict[tuple[str, str], int]:
    """Per (topic, outcome) counts of a batch.

    Every event of the batch that was not dead-lettered was either applied or skipped as a
    ``duplicate`` (an event id seen before, or a catalog upsert older than what is stored). A
    batch's outcome counts them in total; they are attributed to the topics in proportion
    (exact when the batch holds one topic, which is the common case)."""
    valid = Tally(topics)
    valid.subtract(Tally(dead_topics))
    per_topic = {topic: n for topic, n in valid.items() if n > 0}
    total = sum(per_topic.values())
    counts: dict[tuple[str, str], int] = {}
    if total == 0:
        return counts
    left = applied
    ordered = sorted(per_topic.items())
    for n, (topic, events) in enumerate(ordered):
        share = left if n == len(ordered) - 1 else round(applied * events / total)
        share = max(0, min(share, events, left))
        left -= share
        counts[(topic, "applied")] = share
        counts[(topic, "duplicate")] = 0
    missing = total - sum(counts.values())
    for topic, events in ordered:  # duplicates fill what each topic has left
        room = events - counts[(topic, "applied")]
        take = max(0, min(room, missing))
        counts[(topic, "duplicate")] += take
        missing -= take
    return {key: value for key, value in counts.items() if value}


class Metrics:
    """All ShopPulse series, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "shoppulse_events_processed",
            "Input events taken in, by topic and outcome (applied, duplicate).",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "shoppulse_events_dead_lettered",
            "Input events sent to the dead-letter topic, by source topic and reason class.",
            ["topic", "reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "shoppulse_batch_duration_seconds",
            "Time to process one micro-batch (decode, Redis commit, recommendation refresh).",
            ["agent"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "shoppulse_batch_events",
            "Events per micro-batch.",
            ["agent"],
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.click_to_recs = Histogram(
            "shoppulse_click_to_recommendation_seconds",
            "From an event's Kafka timestamp to its user's recommendations written to Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refreshes = Counter(
            "shoppulse_recommendation_refreshes",
            "Recommendation lists recomputed and written.",
            registry=r,
        )
        self.alerts = Counter(
            "shoppulse_alerts_emitted",
            "Churn alerts emitted: on Kafka (acknowledged) and taken out of the outbox.",
            ["kind"],
            registry=r,
        )
        self.model_info = Gauge(
            "shoppulse_model_info",
            "The model version this worker serves (value 1; label version).",
            ["kind", "version"],
            registry=r,
        )
        self.model_published = Gauge(
            "shoppulse_model_published_timestamp_seconds",
            "When the served model version was published (epoch seconds).",
            ["kind"],
            registry=r,
        )
        self.training_seconds = Gauge(
            "shoppulse_model_training_seconds",
            "How long training the served model version took.",
            ["kind"],
            registry=r,
        )
        self.model_holdout = Gauge(
            "shoppulse_model_holdout_hit_rate",
            "Held-back HR@10 of the served model version, measured when it was trained.",
            ["kind"],
            registry=r,
        )
        self.redis_errors = Counter(
            "shoppulse_redis_errors",
            "Redis operations that failed, by error class.",
            ["error"],
            registry=r,
        )
        self.redis_retries = Counter(
            "shoppulse_redis_retries", "Batches retried after a Redis failure.", registry=r
        )
        self.consumer_lag = Gauge(
            "shoppulse_consumer_lag",
            "Events behind the end of the log on this worker's partitions, by topic.",
            ["topic"],
            registry=r,
        )
        self.up = Gauge(
            "shoppulse_worker_start_timestamp_seconds",
            "When this worker process started (epoch seconds).",
            registry=r,
        )
        self.up.set(time.time())
        self._models: dict[str, str] = {}  # kind -> served version
        self._pseudonymise_key: SecretStr | None = None

    def use_pseudonyms(self, key: SecretStr | None) -> None:
        """Recommendations carry pseudonymised user ids when the worker has this key
        (SHOPPULSE_PSEUDONYMISE_KEY), while message keys stay the shop's ids."""
        self._pseudonymise_key = key

    # -- recording --------------------------------------------------------------------------
    def batch(
        self,
        agent: str,
        topics: Sequence[str],
        outcome: Any,
        seconds: float,
        timestamps: Mapping[str, Sequence[float]] | None = None,
        now: float | None = None,
    ) -> None:
        """Record one processed batch: ``outcome`` is a BatchOutcome; ``timestamps`` maps user
        ids as sent (message keys) to the Kafka timestamps of their events in the batch."""
        self.batch_seconds.labels(agent).observe(seconds)
        self.batch_events.labels(agent).observe(len(topics))
        dead = [str(d.get("source_topic", "")) for d in outcome.dead_letters]
        for (topic, kind), count in split_outcome(topics, dead, outcome.applied).items():
            self.events.labels(topic, kind).inc(count)
        for document in outcome.dead_letters:
            reason = reason_class(str(document.get("reason", "")))
            self.dead_letters.labels(str(document.get("source_topic", "")), reason).inc()
        self.refreshes.inc(len(outcome.recommendations))
        # A batch's alerts are not counted here: they count once sent (alerts_sent).
        if timestamps:
            self._latency(outcome.recommendations, timestamps, time.time() if now is None else now)

    def _latency(
        self,
        recommendations: Iterable[Mapping[str, Any]],
        timestamps: Mapping[str, Sequence[float]],
        written: float,
    ) -> None:
        """Event-to-recommendation latency of each event whose user got a new list."""
        stored = {user_key(user, self._pseudonymise_key): ts for user, ts in timestamps.items()}
        for document in recommendations:
            for ts in stored.get(str(document.get("user_id")), ()):
                self.click_to_recs.observe(max(0.0, written - ts))

    def alerts_sent(self, count: int, kind: str = "churn") -> None:
        """Alerts the broker acknowledged and the outbox let go of: whether a batch, the
        background re-scoring or the outbox sweep produced them, each is counted here once."""
        if count:
            self.alerts.labels(kind).inc(count)

    def redis_failure(self, exc: BaseException, retried: bool = True) -> None:
        self.redis_errors.labels(type(exc).__name__).inc()
        if retried:
            self.redis_retries.inc()

    def serving(
        self, version: str, kind: str = "als", header: Mapping[str, Any] | None = None
    ) -> None:
        """The served model version of this kind (and what its header says about training)."""
        previous = self._models.get(kind)
        if previous != version:
            if previous is not None:
                self.model_info.remove(kind, previous)
            self._models[kind] = version
            self.model_info.labels(kind, version).set(1)
        params = (header or {}).get("params") or {}
        published = (header or {}).get("published_at")
        if isinstance(published, int | float):
            self.model_published.labels(kind).set(published)
        seconds = params.get("train_seconds")
        if isinstance(seconds, int | float):
            self.training_seconds.labels(kind).set(seconds)
        hit_rate = params.get("holdout_hit_rate")
        if isinstance(hit_rate, int | float):
            self.model_holdout.labels(kind).set(hit_rate)

    def lag(self, per_topic: Mapping[str, int]) -> None:
        for topic, behind in per_topic.items():
            self.consumer_lag.labels(topic).set(behind)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()


def batch_origin(events: Sequence[Any]) -> tuple[list[str], dict[str, list[float]]]:
    """The topics of a batch of Faust events, and per message key (the user id on user topics)
    the Kafka timestamps (seconds) of its events."""
    topics: list[str] = []
    timestamps: dict[str, list[float]] = {}
    for event in events:
        message = event.message
        topics.append(str(message.topic))
        ts = getattr(message, "timestamp", None)
        if isinstance(ts, int | float) and message.key is not None:
            key = (
                message.key.decode("utf-8", "replace")
                if isinstance(message.key, bytes)
                else str(message.key)
            )
            timestamps.setdefault(key, []).append(float(ts))
    return topics, timestamps


def record_batch(
    agent: str, events: Sequence[Any], outcome: Any, started: float, metrics: Metrics = METRICS
) -> None:
    """Record a finished batch whose work began at ``started`` (``time.perf_counter()``): the
    agents' one hook."""
    topics, timestamps = batch_origin(events)
    metrics.batch(agent, topics, outcome, time.perf_counter() - started, timestamps)
