"""LeanDelivery and ResumeSoon (stream/transport.py) on a real ``mode`` Service, as Faust's
consumer is one: the fetch loop's delivery step runs inline when it does not wait, and races
the flow being suspended, as Faust's own ``wait_first`` does, when it does; a partition paused
for a full stream buffer is fetched from again as soon as the buffer drains."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from stream.transport import LeanDelivery, ResumeSoon


class Consumer(LeanDelivery, Service):
    """The two parts of Faust's consumer that the delivery step uses."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


async def deliver(queue: asyncio.Queue[int], item: int, ran_in: list[Any]) -> None:
    """Like Faust's on_message: put into the stream's buffer, waiting while it is full."""
    ran_in.append(asyncio.current_task())
    await queue.put(item)


async def step(consumer: Consumer, delivery: Any) -> Any:
    """The fetch loop's call, as ``Consumer._drain_messages`` makes it."""
    return await consumer.wait_first(delivery, consumer.suspend_flow.wait())


async def test_a_delivery_with_room_runs_inline_in_the_fetch_loop() -> None:
    consumer, queue, ran_in = Consumer(), asyncio.Queue[int](maxsize=4), []
    for n in range(3):
        await step(consumer, deliver(queue, n, ran_in))
    assert [queue.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert ran_in == [asyncio.current_task()] * 3  # no task of its own


async def test_a_delivery_that_waits_finishes_once_there_is_room() -> None:
    consumer, queue, ran_in = Consumer(), asyncio.Queue[int](maxsize=1), []
    queue.put_nowait(0)
    fetch_loop = asyncio.ensure_future(step(consumer, deliver(queue, 1, ran_in)))
    await asyncio.sleep(0.05)
    assert not fetch_loop.done(), "the step must wait while the buffer is full"
    assert queue.get_nowait() == 0
    await asyncio.wait_for(fetch_loop, 1)
    assert queue.get_nowait() == 1


async def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer, queue, ran_in = Consumer(), asyncio.Queue[int](maxsize=1), []
    queue.put_nowait(0)
    fetch_loop = asyncio.ensure_future(step(consumer, deliver(queue, 1, ran_in)))
    await asyncio.sleep(0.05)
    consumer.suspend_flow.set()  # a rebalance: the fetch loop must not stay blocked
    await asyncio.wait_for(fetch_loop, 1)
    assert queue.get_nowait() == 0
    await asyncio.sleep(0.05)  # the abandoned delivery was cancelled, not left to finish
    assert queue.empty()


async def test_while_suspended_the_step_is_faust_own() -> None:
    consumer, queue, ran_in = Consumer(), asyncio.Queue[int](maxsize=1), []
    consumer.suspend_flow.set()
    await asyncio.wait_for(step(consumer, deliver(queue, 1, ran_in)), 1)
    assert ran_in and ran_in[0] is not asyncio.current_task()  # a task, as in Faust


async def test_an_error_in_the_delivery_is_raised_in_the_fetch_loop() -> None:
    async def broken() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await step(Consumer(), broken())


async def test_other_waits_are_left_to_mode() -> None:
    consumer, other = Consumer(), asyncio.Event()
    other.set()
    result = await consumer.wait_first(other.wait(), timeout=1)
    assert result.stopped is False and result.results == [True]


# -- ResumeSoon ------------------------------------------------------------------------------------
class FetchingConsumer(Service):
    """What Faust's fetch loop waits on for records, as faust/transport/consumer.py writes it:
    a partition whose stream buffer is full leaves the active set (``on_buffer_full``) until it
    drains (``on_buffer_drop``); ``_wait_next_records`` asks for records of the partitions
    active when it is called and waits up to ``timeout`` for them, or sleeps a second when
    none is active. ``ready`` stands for the broker: records waiting per partition."""

    def __init__(self, partitions: list[str]) -> None:
        super().__init__()
        self.flow_active = True
        self._active = set(partitions)
        self._buffered_partitions: set[str] = set()
        self.ready: dict[str, list[str]] = {tp: [] for tp in partitions}

    def _get_active_partitions(self) -> set[str]:
        return self._active

    def on_buffer_full(self, tp: str) -> None:
        self._active.discard(tp)
        self._buffered_partitions.add(tp)

    def on_buffer_drop(self, tp: str) -> None:
        if tp in self._buffered_partitions:
            self._active.add(tp)
            self._buffered_partitions.discard(tp)

    async def _wait_next_records(self, timeout: float) -> dict[str, list[str]]:
        active = set(self._get_active_partitions())
        if not active:
            await asyncio.sleep(1)
            return {}
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            records = {tp: self.ready[tp] for tp in active if self.ready[tp]}
            if records or asyncio.get_running_loop().time() >= deadline:
                for tp in records:
                    self.ready[tp] = []
                return records
            await asyncio.sleep(0.002)


class ResumingConsumer(ResumeSoon, FetchingConsumer):
    pass


async def seconds_until_fetched(consumer: FetchingConsumer, tp: str) -> float:
    """The fetch loop's wait for records, again and again, until records of ``tp`` come; the
    partition drains 50 ms after the start, with a record waiting for it."""

    async def drain() -> None:
        await asyncio.sleep(0.05)
        consumer.ready[tp].append("record")
        consumer.on_buffer_drop(tp)

    started = asyncio.get_running_loop().time()
    draining = asyncio.ensure_future(drain())
    while tp not in await consumer._wait_next_records(1.0):
        pass
    await draining
    return asyncio.get_running_loop().time() - started


@pytest.mark.parametrize("others", [["idle"], []], ids=["others-idle", "all-paused"])
async def test_a_drained_partition_is_fetched_from_at_once_not_a_second_later(
    others: list[str],
) -> None:
    waited = {}
    for kind in (FetchingConsumer, ResumingConsumer):
        consumer = kind(["busy", *others])
        consumer.on_buffer_full("busy")
        waited[kind] = await seconds_until_fetched(consumer, "busy")
    assert waited[FetchingConsumer] >= 0.9  # Faust's own: the second runs out first
    assert waited[ResumingConsumer] < 0.5


async def test_with_nothing_paused_the_wait_is_faust_own() -> None:
    consumer = ResumingConsumer(["a"])
    started = asyncio.get_running_loop().time()
    assert await consumer._wait_next_records(0.2) == {}
    assert asyncio.get_running_loop().time() - started >= 0.19  # the full timeout, untouched
