"""The Faust app: thin agents that hand micro-batches to the :class:`Processor`.

One agent reads clicks and orders together (both keyed by user, so one user's events are
handled by one worker, in order); another reads the catalog. Each batch is stored (one commit
script plus a few pipelined reads), then its users' lists are refreshed and published while the
next batch is stored (stream/pipeline.py). Kafka offsets are
acknowledged only after both, so a crash means redelivery, which dedupe turns into no-ops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import faust
import orjson
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.metrics import METRICS, Metrics, record_batch
from stream.model_store import ModelStore
from stream.pipeline import TwoStagePipeline
from stream.processor import AppliedBatch, BatchOutcome, Processor, RawEvent, dead_letter
from stream.store import RedisStore, redis_for
from stream.transport import acknowledge, faust_app, faust_worker, take_batches
from stream.web import register_web

log = logging.getLogger(__name__)

R = TypeVar("R")

RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError)
MAX_BACKOFF = 5.0
OUTBOX_SWEEP_SECONDS = 5.0
# Allocations between young-generation collections (CPython's default is 700). A batch makes
# hundreds of thousands of short-lived dicts, lists and tuples that reference counting frees;
# at the default, the cyclic collector ran thousands of times a batch over the worker's whole
# young heap: a quarter of the worker's CPU (measured in-process on the bench load).
GC_YOUNG_THRESHOLD = 50_000


def raw_event(event: Any) -> RawEvent:
    message = event.message
    value = message.value if message.value is not None else b""
    return RawEvent(message.topic, message.partition, message.offset, message.key, value)


async def with_retry(work: Callable[[], Awaitable[R]]) -> R:
    """Run ``work`` until Redis lets it finish: an outage delays a batch, never drops it."""
    delay = 0.1
    while True:
        try:
            return await work()
        except RETRYABLE as exc:
            METRICS.redis_failure(exc)
            log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


async def isolate_failures(
    batch: Sequence[RawEvent], handle: Callable[[Sequence[RawEvent]], Awaitable[AppliedBatch]]
) -> AppliedBatch:
    """Store a batch; if that fails for a reason other than Redis being away, store its events
    one by one so a single poisonous event is dead-lettered instead of the batch."""
    try:
        return await with_retry(partial(handle, batch))
    except Exception:
        log.exception("batch of %d events failed; isolating the culprit", len(batch))
    total = AppliedBatch(BatchOutcome())
    for raw in batch:
        try:
            part = await with_retry(partial(handle, [raw]))
        except Exception as exc:
            log.exception("event %s[%d]@%d failed", raw.topic, raw.partition, raw.offset)
            part = AppliedBatch(
                BatchOutcome(dead_letters=[dead_letter(raw, f"internal error: {exc!r}")])
            )
        total.merge(part)
    return total


async def refresh_isolated(processor: Processor, applied: AppliedBatch) -> None:
    """Refresh a stored batch's lists; if that fails for a reason other than Redis being away,
    refresh its users one by one, so one user's failure costs only that user's list (their
    events are stored; their next event refreshes it)."""
    try:
        await with_retry(partial(processor.refresh_applied, applied))
        return
    except Exception:
        log.exception("refreshing %d users failed; isolating the culprit", len(applied.records))
    documents: list[dict[str, Any]] = []
    for record in applied.records:
        alone = AppliedBatch(BatchOutcome(), [record], applied.clock)
        try:
            await with_retry(partial(processor.refresh_applied, alone))
        except Exception:
            log.exception("refreshing user %s failed; their list is left as it was", record.user_id)
        documents += alone.outcome.recommendations
    applied.outcome.recommendations = documents


async def send_alerts(
    alerts: Sequence[dict[str, Any]],
    send: Callable[[dict[str, Any]], Awaitable[Awaitable[Any]]],
    confirm: Callable[[Sequence[dict[str, Any]]], Awaitable[None]],
    metrics: Metrics = METRICS,
) -> bool:
    """Send alerts (``send`` returns a future of the broker's ack), wait for the acks, take
    them out of the outbox (``confirm``) and count them; False if any step failed. An alert
    whose writer dies before that is sent again by whichever worker claims it, and counted
    then: every path that emits alerts (batches, background re-scoring, the outbox sweep)
    comes through here, so each confirmed alert is counted once."""
    if not alerts:
        return True
    try:
        sent = [await send(alert) for alert in alerts]
        await asyncio.gather(*sent)
        await confirm(alerts)
    except Exception as exc:  # kept in the outbox, sent again after its lease
        log.warning("%d churn alerts not confirmed (%r); the outbox resends them", len(alerts), exc)
        return False
    metrics.alerts_sent(len(alerts))
    return True


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for one namespace (the app id, and so the consumer group)."""
    topics = Topics(settings.namespace)
    app = faust_app(settings.namespace, settings)
    user_events = app.topic(topics.clicks, topics.orders, key_type=bytes, value_type=bytes)
    catalog_events = app.topic(topics.catalog, key_type=bytes, value_type=bytes)
    churn_alerts = app.topic(topics.churn_alerts, key_type=bytes, value_type=bytes)
    state: dict[str, Processor] = {}

    def processor() -> Processor:
        # Created on first use, inside the worker's event loop, which the Redis pool binds to.
        if "processor" not in state:
            keys = Keys.of(settings)
            store = RedisStore(redis_for(settings), keys)
            models = ModelStore(redis_for(settings, decode=False), keys)
            state["processor"] = Processor(store, settings, models)
        return state["processor"]

    async def publish(outcome: BatchOutcome) -> None:
        # Straight to the producer (topic.send wraps every message in Faust's message objects
        # and sensors first: a tenth of the worker's time with a list per user per batch).
        # Like topic.send, this waits until the message is buffered, not for the broker's ack.
        producer = await app.maybe_start_producer()
        for document in outcome.recommendations:
            key, value = document["user_id"].encode(), orjson.dumps(document)
            await producer.send(topics.recommendations, key, value, None, None, None)
        for document in outcome.dead_letters:
            await producer.send(topics.deadletter, None, orjson.dumps(document), None, None, None)
        await publish_alerts(outcome.alerts)

    async def send_alert(alert: dict[str, Any]) -> Awaitable[Any]:
        return await churn_alerts.send(key=alert["user_id"].encode(), value=orjson.dumps(alert))

    async def confirm_alerts(alerts: Sequence[dict[str, Any]]) -> None:
        await processor().store.confirm_alerts(alerts)

    async def publish_alerts(alerts: list[dict[str, Any]]) -> None:
        await send_alerts(alerts, send_alert, confirm_alerts)

    async def run_batches(
        stream: Any,
        agent: str,
        store: Callable[[Sequence[RawEvent]], Awaitable[AppliedBatch]],
        refresh: bool,
    ) -> None:
        """Take micro-batches and run each through two stages (stream/pipeline.py): storing its
        events, then refreshing its users' lists, publishing and acking; the next batch is
        stored while the previous one finishes."""
        pipeline: TwoStagePipeline[AppliedBatch] = TwoStagePipeline()
        try:
            async for events in take_batches(stream, settings.batch_size, settings.batch_window):
                batch = [raw_event(event) for event in events]
                started = time.perf_counter()

                async def finish(
                    applied: AppliedBatch, events: list[Any] = events, started: float = started
                ) -> None:
                    if refresh:
                        await refresh_isolated(processor(), applied)
                    record_batch(agent, events, applied.outcome, started)
                    await publish(applied.outcome)
                    await acknowledge(stream, events)

                await pipeline.submit(partial(isolate_failures, batch, store), finish)
            await pipeline.join()
        finally:
            await pipeline.close()

    @app.agent(user_events, name="user-events")
    async def process_user_events(stream: Any) -> None:
        await run_batches(stream, "user-events", processor().apply_user_events, refresh=True)

    @app.agent(catalog_events, name="catalog")
    async def process_catalog(stream: Any) -> None:
        async def store(batch: Sequence[RawEvent]) -> AppliedBatch:
            return AppliedBatch(await processor().process_catalog(batch))

        await run_batches(stream, "catalog", store, refresh=False)

    @app.timer(1.0)  # type: ignore[untyped-decorator]  # faust leaves timer untyped
    async def publish_churn_alerts() -> None:
        """Alerts of background re-scoring (silence, a new churn model) when no batch came."""
        if "processor" in state:
            await publish_alerts(state["processor"].churn.take_alerts())

    @app.timer(OUTBOX_SWEEP_SECONDS)  # type: ignore[untyped-decorator]
    async def send_unconfirmed_alerts() -> None:
        """Alerts that a crashed worker (or a retrain) wrote but never confirmed on Kafka."""
        try:
            due = await processor().store.claim_due_alerts()
        except RETRYABLE as exc:  # Redis away: the next sweep tries again
            log.warning("alert outbox not swept (%s)", exc)
            return
        await publish_alerts(due)

    register_web(app, settings)
    return app


def tune_garbage_collection() -> None:
    """Collect less often, and never again scan what start-up made (modules, the app):
    ``gc.freeze`` moves it out of the collector's generations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the stream worker in this process until it is stopped (SIGINT/SIGTERM)."""
    app = create_app(settings)
    worker = faust_worker(app, loglevel)
    tune_garbage_collection()
    worker.execute_from_commandline()
