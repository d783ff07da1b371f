"""The agents' coalescing pipeline (stream/pipeline.py): order, overlap, coalescing,
back-pressure, failures, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from stream.pipeline import CoalescingPipeline


class Log:
    """Stage steps as they happen: ("first" | "second", batches, "start" | "end"); a second
    stage's entry names every batch it was given."""

    def __init__(self, second_seconds: float = 0.01) -> None:
        self.steps: list[tuple[str, tuple[int, ...], str]] = []
        self.second_seconds = second_seconds

    def first(self, batch: int, seconds: float = 0.0) -> Callable[[], Awaitable[int]]:
        async def first() -> int:
            self.steps.append(("first", (batch,), "start"))
            await asyncio.sleep(seconds)
            self.steps.append(("first", (batch,), "end"))
            return batch

        return first

    async def second(self, batches: Sequence[int]) -> None:
        self.steps.append(("second", tuple(batches), "start"))
        await asyncio.sleep(self.second_seconds)
        self.steps.append(("second", tuple(batches), "end"))

    def seconds(self, step: str = "end") -> list[tuple[int, ...]]:
        return [batches for stage, batches, st in self.steps if (stage, st) == ("second", step)]

    def index(self, stage: str, batch: int, step: str) -> int:
        return next(
            n
            for n, (s, batches, st) in enumerate(self.steps)
            if (s, st) == (stage, step) and batch in batches
        )


async def test_every_batch_is_finished_once_in_order_after_its_first_stage() -> None:
    log = Log(second_seconds=0.02)
    pipeline = CoalescingPipeline[int](log.second)
    for batch in range(8):
        await pipeline.submit(log.first(batch, 0.004 * (batch % 3)))
    await pipeline.join()
    finished = [batch for batches in log.seconds() for batch in batches]
    assert finished == list(range(8))  # each once, in batch order
    for batch in range(8):
        assert log.index("second", batch, "start") > log.index("first", batch, "end")
    # Overlap: some first stage ran while a second stage was running.
    assert any(log.index("first", b + 1, "start") < log.index("second", b, "end") for b in range(7))


async def test_batches_stored_during_a_second_stage_are_finished_together() -> None:
    log = Log(second_seconds=0.05)
    pipeline = CoalescingPipeline[int](log.second)
    for batch in range(4):
        await pipeline.submit(log.first(batch, 0.005))
    await pipeline.join()
    # Batch 0 alone; 1-3 were stored while its second stage ran, and go together.
    assert log.seconds() == [(0,), (1, 2, 3)]


async def test_at_most_max_waiting_batches_wait_for_a_second_stage() -> None:
    log = Log(second_seconds=0.05)
    pipeline = CoalescingPipeline[int](log.second, max_waiting=2)
    for batch in range(7):
        await pipeline.submit(log.first(batch))
    await pipeline.join()
    assert [batch for batches in log.seconds() for batch in batches] == list(range(7))
    assert max(len(batches) for batches in log.seconds()) <= 2


async def test_a_failed_second_stage_stops_the_pipeline_and_is_raised() -> None:
    log = Log()

    async def broken(batches: Sequence[int]) -> None:
        raise ValueError("publishing failed")

    pipeline = CoalescingPipeline[int](broken)
    await pipeline.submit(log.first(0))
    await asyncio.sleep(0.01)
    with pytest.raises(ValueError, match="publishing failed"):
        await pipeline.submit(log.first(1))
    with pytest.raises(ValueError):
        await pipeline.join()
    assert log.steps[-1] == ("first", (0,), "end")  # batch 1 was not even stored


async def test_a_failed_first_stage_is_raised_at_once() -> None:
    async def second(batches: Sequence[int]) -> None:
        raise AssertionError("no second stage after a failed first")

    async def broken() -> int:
        raise RuntimeError("store failed")

    pipeline = CoalescingPipeline[int](second)
    with pytest.raises(RuntimeError, match="store failed"):
        await pipeline.submit(broken)
    await pipeline.join()


async def test_close_cancels_the_second_stage_in_flight() -> None:
    log = Log(second_seconds=10.0)
    pipeline = CoalescingPipeline[int](log.second)
    await pipeline.submit(log.first(0))
    await asyncio.sleep(0.01)
    assert log.seconds("start") == [(0,)]
    await asyncio.wait_for(pipeline.close(), timeout=1.0)
    assert log.seconds("end") == []  # cut short: its batch is left unacked


async def test_without_overlap_a_batch_is_finished_before_submit_returns() -> None:
    log = Log()
    pipeline = CoalescingPipeline[int](log.second)
    for batch in range(3):
        await pipeline.submit(log.first(batch, 0.002), overlap=False)
        assert log.steps[-1] == ("second", (batch,), "end")  # nothing left in flight
    assert log.seconds() == [(0,), (1,), (2,)]
