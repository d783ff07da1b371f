"""The agents' two-stage pipeline (stream/pipeline.py): order, overlap, failures, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from stream.pipeline import TwoStagePipeline


class Log:
    """Stage steps as they happen: ("first" | "second", batch, "start" | "end")."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int, str]] = []

    def stages(
        self, batch: int, first_seconds: float = 0.0, second_seconds: float = 0.01
    ) -> tuple[Callable[[], Awaitable[int]], Callable[[int], Awaitable[None]]]:
        async def first() -> int:
            self.steps.append(("first", batch, "start"))
            await asyncio.sleep(first_seconds)
            self.steps.append(("first", batch, "end"))
            return batch

        async def second(result: int) -> None:
            assert result == batch
            self.steps.append(("second", batch, "start"))
            await asyncio.sleep(second_seconds)
            self.steps.append(("second", batch, "end"))

        return first, second

    def order(self, stage: str, step: str) -> list[int]:
        return [batch for s, batch, st in self.steps if (s, st) == (stage, step)]


async def test_stages_keep_batch_order_and_the_second_overlaps_the_next_first() -> None:
    log, pipeline = Log(), TwoStagePipeline[int]()
    for batch in range(6):
        # Uneven durations: a later batch's quick stage must still wait its turn.
        first, second = log.stages(batch, 0.005 * (batch % 3), 0.02 - 0.003 * batch)
        await pipeline.submit(first, second)
    await pipeline.join()
    assert log.order("first", "end") == list(range(6))
    assert log.order("second", "end") == list(range(6))
    steps = log.steps
    for batch in range(6):
        # A batch's second stage starts after its own first stage ended ...
        assert steps.index(("second", batch, "start")) > steps.index(("first", batch, "end"))
        # ... and never before the previous second stage ended (one in flight at most).
        if batch:
            assert steps.index(("second", batch, "start")) > steps.index(
                ("second", batch - 1, "end")
            )
    # Overlap: some first stage started while the previous batch's second stage was running.
    assert any(
        steps.index(("first", b + 1, "start")) < steps.index(("second", b, "end")) for b in range(5)
    )


async def test_a_failed_second_stage_stops_the_pipeline_and_is_raised() -> None:
    log, pipeline = Log(), TwoStagePipeline[int]()

    async def broken(result: int) -> None:
        raise ValueError("publishing failed")

    first, _ = log.stages(0)
    await pipeline.submit(first, broken)
    await asyncio.sleep(0.01)
    first, second = log.stages(1)
    with pytest.raises(ValueError, match="publishing failed"):
        await pipeline.submit(first, second)
    with pytest.raises(ValueError):
        await pipeline.join()
    assert log.order("second", "start") == []  # batch 1 never got to its second stage


async def test_a_failed_first_stage_is_raised_at_once() -> None:
    pipeline = TwoStagePipeline[int]()

    async def broken() -> int:
        raise RuntimeError("store failed")

    async def second(result: int) -> None:
        raise AssertionError("no second stage after a failed first")

    with pytest.raises(RuntimeError, match="store failed"):
        await pipeline.submit(broken, second)
    await pipeline.join()


async def test_close_cancels_the_second_stage_in_flight() -> None:
    log, pipeline = Log(), TwoStagePipeline[int]()
    first, second = log.stages(0, second_seconds=10.0)
    await pipeline.submit(first, second)
    await asyncio.sleep(0.01)
    assert log.order("second", "start") == [0]
    await asyncio.wait_for(pipeline.close(), timeout=1.0)
    assert log.order("second", "end") == []  # cut short: its batch is left unacked
