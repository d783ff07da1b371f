"""Churn risk through the running service, scored against the simulator's truth.

The same protocol as the offline evaluation (:mod:`workers.churn_eval`), but every number comes
from the live path: the simulated shop's events up to the cutoff go through Kafka into a real
stream worker (histories kept in Redis), ``shoppulse retrain``'s logic trains ALS, the churn
model and the segments from what is in Redis and re-scores every customer, and the risks are
read back from ``{ns}:risk`` and the alerts from the ``{ns}.alerts.churn`` topic. Then the next
``alert_weeks`` weeks of events are published day by day (waiting for the worker each day, as
if lived), so alerts come from the worker re-scoring silent customers as the clock moves.

Baselines (recency alone, frequency alone) are fitted in the same run on training rows built
from the same histories read back from Redis.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from rich.console import Console

from models.als import TrainingError
from models.churn import build_training_set, training_cutoffs
from models.churn_features import DAY, FEATURE_NAMES, ChurnHistory, features_as_of
from shoppulse import localstack
from shoppulse.errors import ShopPulseError
from shoppulse.kafka import Publisher, ensure_topics
from shoppulse.replay import ShopEvents, shop_events
from shoppulse.settings import Settings
from shoppulse.simulator import PUBLISHED_SEEDS, ShopConfig, SimulatedShop, simulate_shop
from stream.keys import Keys, Topics
from stream.store import RedisStore, redis_for
from workers.churn_eval import Row, _single_feature, customer_subsets, metric_row
from workers.churn_train import ChurnTrainer
from workers.live_eval import broker_for, evaluation_settings, settings_env, wait_for
from workers.retrain import Retrainer

ALERT_WEEKS = 8
IDLE_SECONDS = 3.0


class LiveChurnError(ShopPulseError):
    """The live churn evaluation could not run (no model could be trained, a worker died)."""


@dataclass(frozen=True, slots=True)
class LiveChurnResult:
    namespace: str
    seed: int
    mode: str
    cutoff: float
    customers: int
    churn_rate: float
    model_version: str
    rows: list[Row]
    alerts: dict[str, Any]
    events_to_cutoff: int
    later_events: int
    ingest_seconds: float
    retrain_seconds: float
    later_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_live_churn(
    base: Settings,
    console: Console,
    log_dir: Path,
    seed: int = PUBLISHED_SEEDS[0],
    clickstream: bool = False,
    customers: int | None = None,
    alert_weeks: int = ALERT_WEEKS,
) -> LiveChurnResult:
    config = ShopConfig(clickstream=clickstream)
    if customers is not None:
        config = ShopConfig(customers=customers, prospects=customers // 5, clickstream=clickstream)
    shop = simulate_shop(seed, config)
    horizon = base.churn_horizon_days
    cutoff = math.floor((shop.end_ts - (horizon + 7 * alert_weeks) * DAY) / DAY) * DAY
    stream = shop_events(shop.orders, shop.clicks)
    before = [e for e in stream.events if e[1] <= cutoff]
    later = [e for e in stream.events if cutoff < e[1] <= cutoff + 7 * alert_weeks * DAY]
    namespace = f"churn{uuid.uuid4().hex[:8]}"
    with broker_for(base) as bootstrap:
        settings = evaluation_settings(base, namespace, bootstrap)
        topics = Topics(namespace)
        await ensure_topics(
            bootstrap,
            [topics.clicks, topics.orders, topics.catalog, topics.recommendations],
            settings.partitions,
        )
        await ensure_topics(bootstrap, [topics.churn_alerts, topics.deadletter], 1)
        store = RedisStore(redis_for(settings), Keys.of(settings))
        try:
            log_path = log_dir / f"worker-{namespace}.log"
            with localstack.worker_process(settings_env(settings), log_path, "warning") as process:
                started = time.monotonic()
                with console.status(f"publishing {len(before):,} events up to the cutoff"):
                    await _publish(settings, topics, stream, before, catalog=True)
                    await wait_for(store, len(before), process)
                ingest_seconds = time.monotonic() - started
                started = time.monotonic()
                with console.status("shoppulse retrain: ALS, churn model, segments, re-scoring"):
                    version = await _retrain(settings)
                retrain_seconds = time.monotonic() - started
                clock = await store.clock() or cutoff
                risks = await _risks(store)
                first = await read_alerts(bootstrap, topics.churn_alerts)
                rows, users, truth = await _score(store, settings, shop, risks, clock, cutoff)
                started = time.monotonic()
                with console.status(f"living through {alert_weeks} more weeks, day by day"):
                    seen = len(before)
                    for day in _by_day(later):
                        await _publish(settings, topics, stream, day)
                        seen += len(day)
                        await wait_for(store, seen, process)
                all_alerts = await read_alerts(bootstrap, topics.churn_alerts)
                later_seconds = time.monotonic() - started
        finally:
            async for key in store.client.scan_iter(store.keys.pattern(), count=1000):
                await store.client.delete(key)
            await store.close()
    alerts = _alert_figures(shop, horizon, clock, users, truth, first, all_alerts)
    return LiveChurnResult(
        namespace=namespace,
        seed=seed,
        mode="clickstream" if clickstream else "orders-only",
        cutoff=cutoff,
        customers=len(users),
        churn_rate=float(truth.mean()) if len(truth) else math.nan,
        model_version=version,
        rows=rows,
        alerts=alerts,
        events_to_cutoff=len(before),
        later_events=len(later),
        ingest_seconds=ingest_seconds,
        retrain_seconds=retrain_seconds,
        later_seconds=later_seconds,
    )


async def _publish(
    settings: Settings,
    topics: Topics,
    stream: ShopEvents,
    events: Sequence[tuple[str, float, Any]],
    catalog: bool = False,
) -> None:
    async with Publisher(settings.kafka_bootstrap) as publisher:
        if catalog:
            await publisher.send_many(topics.catalog, stream.catalog)
        for kind in ("orders", "clicks"):
            messages = [message for k, _, message in events if k == kind]
            if messages:
                await publisher.send_many(getattr(topics, kind), messages)


def _by_day(events: Sequence[tuple[str, float, Any]]) -> list[list[tuple[str, float, Any]]]:
    days: dict[int, list[tuple[str, float, Any]]] = {}
    for event in events:
        days.setdefault(math.floor(event[1] / DAY), []).append(event)
    return [days[day] for day in sorted(days)]


async def _retrain(settings: Settings) -> str:
    """What ``shoppulse retrain`` does: ALS, then churn and segments (which must publish)."""
    retrainer = Retrainer(settings, publish_to_kafka=True)
    try:
        await retrainer.run_once()
    except TrainingError:
        pass  # recommendations are not what is evaluated here
    finally:
        await retrainer.close()
    trainer = ChurnTrainer(settings)
    try:
        result = await trainer.run_once()
    finally:
        await trainer.close()
    if not result.published:
        raise LiveChurnError(f"no churn model could be trained: {result.reason}")
    return result.version


async def _risks(store: RedisStore) -> dict[str, float]:
    pairs: Any = await store.client.zrange(store.keys.risk(), 0, -1, withscores=True)
    return {str(user): float(score) for user, score in pairs}


async def read_alerts(bootstrap: str, topic: str, idle: float = IDLE_SECONDS) -> list[Any]:
    """Every document on the topic so far (reads until nothing new came for ``idle`` s)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    documents: list[Any] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                documents += [orjson.loads(r.value) for r in records if r.value is not None]
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return documents


async def _score(
    store: RedisStore,
    settings: Settings,
    shop: SimulatedShop,
    risks: dict[str, float],
    clock: float,
    cutoff: float,
) -> tuple[list[Row], list[str], np.ndarray[Any, np.dtype[np.bool_]]]:
    """The risks read from Redis, and the baselines fitted on the histories in Redis, against
    true churn in the horizon after the cutoff."""
    histories: dict[str, ChurnHistory] = {}
    async for chunk in store.user_chunks():
        for user, raw in (await store.churn_histories(chunk)).items():
            histories[user] = ChurnHistory.from_dict(raw)
    horizon = settings.churn_horizon_days
    cutoffs = training_cutoffs(
        clock, horizon, settings.churn_training_cutoffs, settings.churn_cutoff_spacing_days
    )
    training = build_training_set(histories, cutoffs, horizon, data_end=clock)
    users = sorted(risks)
    x = np.asarray(
        [[features_as_of(histories[u], clock)[n] for n in FEATURE_NAMES] for u in users]
    ).reshape(len(users), len(FEATURE_NAMES))
    truth = np.asarray([shop.churned(u, cutoff, horizon) for u in users], dtype=np.bool_)
    active, repeat = customer_subsets(x)
    scorers = {
        "ShopPulse live (risk read from Redis)": np.asarray([risks[u] for u in users]),
        "recency alone": _single_feature(training, x, "recency_days"),
        "frequency alone": _single_feature(training, x, "orders_365d"),
    }
    rows = [metric_row(name, truth, p, active, repeat) for name, p in scorers.items()]
    return rows, users, truth


def _alert_figures(
    shop: SimulatedShop,
    horizon: float,
    clock: float,
    users: list[str],
    truth: np.ndarray[Any, np.dtype[np.bool_]],
    first: list[dict[str, Any]],
    everything: list[dict[str, Any]],
) -> dict[str, Any]:
    churners = {u for u, churned in zip(users, truth, strict=True) if churned}
    at_cutoff = {a["user_id"] for a in first if a["as_of"] <= clock}
    later = [a for a in everything if a["as_of"] > clock]
    per_user: dict[str, int] = {}
    for alert in everything:
        per_user[alert["user_id"]] = per_user.get(alert["user_id"], 0) + 1
    right_later = [shop.churned(a["user_id"], a["as_of"], horizon) for a in later]
    missed = churners - at_cutoff
    return {
        "at_cutoff": len(at_cutoff),
        "at_cutoff_precision": len(at_cutoff & churners) / len(at_cutoff) if at_cutoff else None,
        "at_cutoff_recall": len(at_cutoff & churners) / len(churners) if churners else None,
        "later": len(later),
        "later_precision": sum(right_later) / len(right_later) if right_later else None,
        "max_per_user": max(per_user.values(), default=0),
        "missed_churners": len(missed),
        "missed_caught_later": len(missed & {a["user_id"] for a in later}),
        "duplicates_on_topic": len(everything) - len({a["alert_id"] for a in everything}),
    }


def markdown(result: LiveChurnResult) -> str:
    a = result.alerts
    lines = [
        f"# Churn risk through the live service ({result.mode}, seed {result.seed})",
        "",
        f"{result.events_to_cutoff:,} events through Kafka into a worker, `shoppulse retrain`,"
        f" risks read from Redis for {result.customers} customers"
        f" ({result.churn_rate:.1%} churn in the next 90 days); model {result.model_version}.",
        "",
        "| scorer | ROC-AUC | PR-AUC | Brier | active ROC-AUC | active PR-AUC | active Brier |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.model} | {r.roc_auc:.4f} | {r.pr_auc:.4f} | {r.brier:.4f} |"
            f" {r.active_roc_auc:.4f} | {r.active_pr_auc:.4f} | {r.active_brier:.4f} |"
        )
    lines += [
        "",
        f"Alerts on the topic: {a['at_cutoff']} at the cutoff (precision"
        f" {_f(a['at_cutoff_precision'])}, recall {_f(a['at_cutoff_recall'])}); {a['later']} in"
        f" the following weeks from silence re-scoring (precision {_f(a['later_precision'])});"
        f" at most {a['max_per_user']} per user; {a['missed_caught_later']} of"
        f" {a['missed_churners']} churners missed at the cutoff were alerted later.",
        "",
        f"Timings (s): ingest {result.ingest_seconds:.0f}, retrain {result.retrain_seconds:.0f},"
        f" later weeks {result.later_seconds:.0f}.",
    ]
    return "\n".join(lines) + "\n"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
