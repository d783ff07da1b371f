"""The Faust app's Kafka side: one place for the options every ShopPulse Faust app shares (the
stream worker and the bench's bare baseline), and a transport with a configurable fetch wait.

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` written into the
driver, with no setting to change it. A fetch that finds no new data is held by the broker for
up to that long; Apache Kafka answers early when data arrives, but some Kafka-compatible
brokers (Tansu, which the local stack and the tests use) hold the fetch for the whole wait, so a
click arriving just after a fetch waited up to 1.5 s before any worker saw it. ShopPulse keeps
every Faust default except this one: ``SHOPPULSE_KAFKA_FETCH_MAX_WAIT_MS`` (100 ms by default),
at the cost of at most ten empty fetches a second per broker on an idle topic.

The stream worker's transport also hands each fetched message to the streams without Faust's
per-message ``wait_first`` (:class:`LeanDelivery`), and fetches again soon from a partition
whose stream buffer has drained (:class:`ResumeSoon`); the bench's bare baseline keeps Faust's
consumer as it is.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Coroutine, Generator
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


def faust_app(app_id: str, settings: Settings, lean_delivery: bool = True) -> faust.App:
    """A Faust app with ShopPulse's options (raw bytes in and out: agents decode themselves);
    ``lean_delivery=False`` keeps Faust's own per-message delivery (the bench's baseline)."""
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
    use_fetch_wait(app, settings.kafka_fetch_max_wait_ms, lean_delivery)
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


class _Resumed:
    """Awaitable that carries on a coroutine which has already run up to its first wait
    (``pending``, what it yielded there), so that a task can take it over from that point."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro, self._pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._pending
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, passed on to the coroutine
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _carry_on(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Resumed(coro, pending)


class LeanDelivery:
    """Consumer mixin: hand a fetched message to the streams without four tasks per message.

    Faust's fetch loop (``Consumer._drain_messages``) delivers every message with
    ``wait_first(callback(message), suspend_flow.wait())``: the delivery races the flow being
    suspended for a rebalance, so a delivery stuck on a full stream buffer is abandoned then.
    That makes four tasks and an ``asyncio.wait`` per message (24 µs of CPU each measured here:
    a third of what the bare Faust worker spends per event). Almost every delivery finishes
    without waiting (the buffer has room, flow is on), so this runs the delivery up to its
    first wait inline; only a delivery that does wait becomes a task, raced against the
    suspension exactly as Faust does. A suspended flow takes Faust's own path."""

    suspend_flow: asyncio.Event

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        if timeout is not None or len(coros) != 2 or not _is_suspend_wait(coros[1], self):
            return await super().wait_first(*coros, timeout=timeout)  # type: ignore[misc]
        delivery, suspended = coros
        if self.suspend_flow.is_set():
            return await super().wait_first(delivery, suspended)  # type: ignore[misc]
        try:
            pending = delivery.send(None)
        except StopIteration:
            suspended.close()
            return None  # the fetch loop ignores the result
        except BaseException:  # raised by the delivery: Faust's wait_first raises it too
            suspended.close()
            raise
        # The delivery waits (a full stream buffer, flow control, the producer's buffer).
        rest = asyncio.ensure_future(_carry_on(delivery, pending))
        return await super().wait_first(rest, suspended)  # type: ignore[misc]


# How long a fetch waits for the partitions still active while others are paused for a full
# stream buffer: the longest a drained partition waits to be fetched from again.
RESUME_POLL_SECONDS = 0.01


class ResumeSoon:
    """Consumer mixin: a partition paused for a full stream buffer is fetched from again as
    soon as its buffer drains, not up to a second later.

    Faust pauses a partition whose stream buffer passes its high-water mark and resumes it when
    the buffer drains (``on_buffer_full`` / ``on_buffer_drop``). Its fetch loop asks the
    consumer for records of the partitions active at that moment and waits up to a second for
    them, or sleeps a second when none is active; a partition resumed meanwhile waits for that
    second to end. The stream worker holds its stream while it works on a batch, so under a
    backlog its busy partitions pause often while the others (an idle topic, the catalog) have
    nothing to give: measured on the bench's full drain with the events only decoded, 5-7
    stalls of 0.8-0.9 s with the worker idle, a quarter of the drain, gone with this
    (8,500-8,800 -> 11,400 events/s; the bare Faust worker never fills its buffer and never
    stalls)."""

    _drained: asyncio.Event | None = None

    def _drained_event(self) -> asyncio.Event:
        if self._drained is None:  # created on first use, inside the consumer's event loop
            self._drained = asyncio.Event()
        return self._drained

    def on_buffer_drop(self, tp: Any) -> None:
        super().on_buffer_drop(tp)  # type: ignore[misc]
        self._drained_event().set()

    async def _wait_next_records(self, timeout: float) -> Any:
        drained = self._drained_event()
        while (  # every partition paused: wait for a buffer to drain, not a fixed second
            self.flow_active  # type: ignore[attr-defined]
            and not self.should_stop  # type: ignore[attr-defined]
            and self._buffered_partitions  # type: ignore[attr-defined]
            and not self._get_active_partitions()  # type: ignore[attr-defined]
        ):
            drained.clear()
            await self.wait(drained, timeout=timeout)  # type: ignore[attr-defined]
        if self._buffered_partitions:  # type: ignore[attr-defined]
            timeout = min(timeout, RESUME_POLL_SECONDS)
        return await super()._wait_next_records(timeout)  # type: ignore[misc]


def _is_suspend_wait(coro: Any, consumer: Any) -> bool:
    """Whether ``coro`` is ``consumer.suspend_flow.wait()``: the fetch loop's delivery step."""
    if getattr(coro, "cr_code", None) is not _EVENT_WAIT_CODE:
        return False
    return bool(coro.cr_frame.f_locals.get("self") is consumer.suspend_flow)


_EVENT_WAIT_CODE = asyncio.Event.wait.__code__


def use_fetch_wait(app: faust.App, fetch_max_wait_ms: int, lean_delivery: bool = True) -> None:
    """Give ``app`` a Kafka transport whose consumer waits at most ``fetch_max_wait_ms`` per
    fetch (and delivers messages with :class:`LeanDelivery` and :class:`ResumeSoon` unless
    told not to). Call it
    before the app declares its first topic (topics bind the transport)."""
    thread_class = _thread_class(fetch_max_wait_ms)

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return thread_class(self, loop=self.loop, beacon=self.beacon)

    class LeanConsumer(ResumeSoon, LeanDelivery, Consumer):
        pass

    class Transport(driver.Transport):
        pass

    Transport.Consumer = LeanConsumer if lean_delivery else Consumer
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
