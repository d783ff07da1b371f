"""Two stages per batch, the second overlapping the next batch's first.

A batch of user events is worked on in two stages: storing its events (decode, compute, one
commit script) and refreshing its users' recommendations (one read script, ranking, one write
script, publishing, acking). Run one after the other, the worker's CPU idles while Redis runs
a script and Redis idles while the worker computes. :class:`TwoStagePipeline` runs batch N's
second stage in the background while the agent takes batch N+1 and runs its first stage, and
keeps everything else as if batches ran one at a time:

* first stages run in the agent itself, one after the other, so the next batch is stored only
  after the previous one is (a user's events are applied in the order Kafka delivered them);
* at most one second stage is in flight, so lists are published, and batches acked, in batch
  order; the next batch's second stage waits for it (back-pressure);
* the agent takes the next batch only once the previous first stage is done, so a batch is
  whatever arrived meanwhile, as without the overlap (batches grow with the load);
* a second stage that raises stops the pipeline: the error is raised by the next ``submit``
  (or ``join``), as it would have been raised by the agent itself, and no later batch goes on.

The agent overlaps every batch, not only full ones: at half the maximum rate the worker's
event loop still waited on Redis a third of the time, and overlapping there cut the bench's
p99 click-to-recommendation time from 509-529 ms to 423-424 ms in two runs (later runs of the
same code at the same load gave up to 501 ms: docs/throughput-journal.md). A lone
click loses nothing by it: its second stage runs while the agent waits for the next event.

Pure asyncio: no Kafka, Faust or Redis here, so it is unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TwoStagePipeline(Generic[T]):
    """``submit(first, second)``: runs ``first()`` now, then ``second(result)`` in the
    background once the previous batch's second stage is done."""

    def __init__(self) -> None:
        self._previous: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def submit(
        self,
        first: Callable[[], Awaitable[T]],
        second: Callable[[T], Awaitable[None]],
    ) -> None:
        """Run a batch's first stage, then queue its second; raises the error of a failed
        second stage (or of this first stage)."""
        self._raise_failure()
        result = await first()
        await self.join()  # one second stage in flight at most
        self._previous = asyncio.ensure_future(self._second(result, second))

    async def join(self) -> None:
        """Wait for the last second stage; raises the error of a failed one."""
        if self._previous is not None:
            await asyncio.wait([self._previous])
        self._raise_failure()

    async def close(self) -> None:
        """Cancel the second stage in flight (shutdown: its batch is delivered again)."""
        previous = self._previous
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.wait([previous])

    async def _second(self, result: T, second: Callable[[T], Awaitable[None]]) -> None:
        try:
            await second(result)
        except Exception as exc:
            log.error("a batch's second stage failed (%r); the pipeline stops", exc)
            self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
