"""The Faust app: thin agents that hand micro-batches to the :class:`Processor`.

One agent reads clicks and orders together (both keyed by user, so one user's events are
handled by one worker, in order); another reads the catalog. Each batch is stored (one commit
script plus a few pipelined reads), then its users' lists are refreshed (in a process of their
own, stream/refresher.py, unless configured otherwise) and published while the next batch is
stored (stream/pipeline.py). Kafka offsets are acknowledged only after both, so a crash means
redelivery, which dedupe turns into no-ops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import faust
import orjson

from shoppulse.settings import Settings
from stream.keys import Topics
from stream.metrics import METRICS, Metrics, record_batch
from stream.pipeline import CoalescingPipeline
from stream.processor import (
    AppliedBatch,
    BatchOutcome,
    Processor,
    RawEvent,
    build_processor,
    dead_letter,
)
from stream.refresher import RefreshProcess, refresh_isolated
from stream.runtime import RETRYABLE, tune_garbage_collection, with_retry
from stream.transport import acknowledge, faust_app, faust_worker, take_batches
from stream.web import register_web

log = logging.getLogger(__name__)

OUTBOX_SWEEP_SECONDS = 5.0

# A stored batch on its way to the refresh: what it produced, its Faust events (to ack), and
# when its work began (``time.perf_counter()``, for the metrics).
StoredBatch = tuple[AppliedBatch, list[Any], float]


def raw_event(event: Any) -> RawEvent:
    message = event.message
    value = message.value if message.value is not None else b""
    return RawEvent(message.topic, message.partition, message.offset, message.key, value)


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
    refresher = RefreshProcess(settings) if settings.refresh_process else None

    def processor() -> Processor:
        # Created on first use, inside the worker's event loop, which the Redis pool binds to.
        if "processor" not in state:
            state["processor"] = build_processor(settings)
        return state["processor"]

    async def refresh_lists(applied: AppliedBatch) -> None:
        if refresher is None:
            await refresh_isolated(processor(), applied)
        else:
            records, clock = applied.records, applied.clock
            applied.outcome.recommendations = await refresher.refresh(records, clock)

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
        events, then refreshing its users' lists, publishing and acking, over every batch
        stored while the previous refresh ran. The next batch is stored while that happens
        (always when the refresh has a process of its own, else under a backlog only: see
        stream/pipeline.py)."""

        async def finish(stored: Sequence[StoredBatch]) -> None:
            merged = AppliedBatch(BatchOutcome())
            for applied, _, _ in stored:
                merged.merge(applied)  # each user's latest record: one refresh per user
            if refresh:
                await refresh_lists(merged)
            events = [event for _, batch_events, _ in stored for event in batch_events]
            record_batch(agent, events, merged.outcome, stored[0][2])
            await publish(merged.outcome)
            await acknowledge(stream, events)

        pipeline: CoalescingPipeline[StoredBatch] = CoalescingPipeline(finish)
        try:
            async for events in take_batches(stream, settings.batch_size, settings.batch_window):
                batch = [raw_event(event) for event in events]
                started = time.perf_counter()

                async def first(
                    batch: list[RawEvent] = batch,
                    events: list[Any] = events,
                    started: float = started,
                ) -> StoredBatch:
                    return await isolate_failures(batch, store), events, started

                backlog = len(events) >= settings.batch_size
                await pipeline.submit(first, overlap=backlog or refresher is not None)
            await pipeline.join()
        finally:
            await pipeline.close()

    @app.agent(user_events, name="user-events")
    async def process_user_events(stream: Any) -> None:
        if refresher is not None:
            refresher.start()  # it imports and connects while the worker joins its group
        try:
            await run_batches(stream, "user-events", processor().apply_user_events, refresh=True)
        finally:
            if refresher is not None:
                refresher.close()

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


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the stream worker in this process until it is stopped (SIGINT/SIGTERM)."""
    app = create_app(settings)
    worker = faust_worker(app, loglevel)
    tune_garbage_collection()
    worker.execute_from_commandline()
