"""The Faust app's Kafka side: one place for the options every ShopPulse Faust app shares (the
stream worker and the bench's bare baseline), and a transport with a configurable fetch wait.

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` written into the
driver, with no setting to change it. A fetch that finds no new data is held by the broker for
up to that long; Apache Kafka answers early when data arrives, but some Kafka-compatible
brokers (Tansu, which the local stack and the tests use) hold the fetch for the whole wait, so a
click arriving just after a fetch waited up to 1.5 s before any worker saw it. ShopPulse keeps
every Faust default except this one: ``SHOPPULSE_KAFKA_FETCH_MAX_WAIT_MS`` (100 ms by default),
at the cost of at most ten empty fetches a second per broker on an idle topic.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from shoppulse.kafka import faust_credentials
from shoppulse.settings import Settings


def faust_datadir(app_id: str) -> Path:
    """Faust keeps table data on disk; ShopPulse keeps all state in Redis, so keep Faust's
    (empty) data folder out of the working directory."""
    return Path(tempfile.gettempdir()) / f"shoppulse-faust-{app_id}"


def faust_app(app_id: str, settings: Settings) -> faust.App:
    """A Faust app with ShopPulse's options (raw bytes in and out: agents decode themselves)."""
    app = faust.App(
        app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(faust_datadir(app_id)),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=settings.kafka_rebalance_timeout,
        broker_session_timeout=max(settings.kafka_rebalance_timeout, 10.0),
        broker_heartbeat_interval=1.0,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        key_serializer="raw",
        value_serializer="raw",
    )
    use_fetch_wait(app, settings.kafka_fetch_max_wait_ms)
    return app


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """A Faust worker for ``app`` without the terminal spinner: with the spinner, Faust sets the
    root logger to DEBUG at any level from WARNING up (so the spinner spins on every record),
    and every debug call of aiokafka then builds a log record nobody reads, a few percent of
    the worker's CPU under load."""
    worker = faust.Worker(app, loglevel=loglevel)
    worker.spinner = None
    return worker


def _thread_class(fetch_max_wait_ms: int) -> type[driver.AIOKafkaConsumerThread]:
    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it builds its fetcher; the consumer is not
            # started yet, so this is the value every fetch uses.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    return ConsumerThread


def use_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Give ``app`` a Kafka transport whose consumer waits at most ``fetch_max_wait_ms`` per
    fetch. Call it before the app declares its first topic (topics bind the transport)."""
    thread_class = _thread_class(fetch_max_wait_ms)

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return thread_class(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)


async def take_batches(stream: Any, max_events: int, within: float) -> AsyncIterator[list[Any]]:
    """Batches of up to ``max_events`` events of a Faust stream, for the caller to
    :func:`acknowledge` once it is done with each (two can be in flight: stream/pipeline.py).

    Faust's own ``Stream.take_events`` stops taking events in while the caller works on a
    batch, then waits up to ``within`` for the next one to fill: under a backlog every batch is
    what Faust delivers in ``within`` (about 100 events in 10 ms on 2 cores), however long the
    work took, so per-batch costs were paid every 100 events. Here events keep arriving during
    the work, and the next batch is whatever came meanwhile, at once: batches grow with the
    load by themselves, up to ``max_events`` under a backlog, and stay small and quick when
    events trickle in (a first event waits at most ``within`` for company). Built like
    ``take_events``, on the same stream hooks (a processor that buffers each event, passive
    iteration of the channel, acks turned off and left to the caller: a batch whose work was
    cut short (cancelled at shutdown, or failed) stays unacked, so it is delivered again and
    dedupe makes that harmless, where Faust's take_events acks it on the way out)."""
    pending: list[Any] = []
    arrived, full, room = asyncio.Event(), asyncio.Event(), asyncio.Event()
    room.set()

    async def buffer(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches found no current event")
        pending.append(event)
        arrived.set()
        if len(pending) >= max_events:
            full.set()
            room.clear()
            await stream.wait(room)  # back-pressure: never more than one batch waiting
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(buffer)
    stream._enable_passive(stream.channel.__aiter__())
    try:
        while not stream.should_stop:
            if not pending:
                await stream.wait_for_stopped(arrived)
                if within and not full.is_set():
                    await stream.wait_for_stopped(full, timeout=within)
            if not pending:
                continue
            batch = pending[:max_events]
            del pending[:max_events]
            if not pending:
                arrived.clear()
            full.clear()
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(buffer)


async def acknowledge(stream: Any, events: list[Any]) -> None:
    """Ack a batch from :func:`take_batches`: its offsets may be committed now."""
    for event in events:
        await stream.ack(event)
